"""The stand-in's one SQLite file: state, pub/sub messages with their deliveries, jobs.

The file plays the part of the infrastructure behind daprd (the state database, the
broker, the Scheduler's etcd); a stand-in process is only the sidecar. So a process can
be SIGKILLed and restarted on the same file, and two stand-ins (two app ids) can share
one file the way two sidecars share one Redis.

Invariants:

* ``journal_mode=WAL`` + ``synchronous=FULL``: a call that returned is on disk.
* Every write runs in ``BEGIN IMMEDIATE``: preconditions (ETags, "absent", job
  revisions, delivery leases) are checked under the database's write lock, so no other
  connection, in this process or another, can write between check and write.
* ETags come from one counter in the file, so an ETag is never handed out twice, even
  for a key deleted and written again (state.postgresql v1 behaves the same way with
  its ``xmin`` ETags). ETags are decimal strings; anything else is "invalid".
* One thread uses this object (the server runs it in a one-thread executor).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

__all__ = [
    "AlreadyExistsError",
    "Claimed",
    "ETagInvalidError",
    "ETagMismatchError",
    "FirstWriteLostError",
    "StateOp",
    "Storage",
    "StoredJob",
]

_T = TypeVar("_T")

_SCHEMA = """
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('etag_seq', 0), ('schema', 1);

CREATE TABLE IF NOT EXISTS state (
    store TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    etag TEXT NOT NULL,
    expires_at REAL,
    PRIMARY KEY (store, key)
);

CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    pubsub TEXT NOT NULL,
    topic TEXT NOT NULL,
    body BLOB NOT NULL,
    raw INTEGER NOT NULL,
    published_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_topic ON messages (pubsub, topic, seq);

CREATE TABLE IF NOT EXISTS consumer_groups (
    pubsub TEXT NOT NULL,
    topic TEXT NOT NULL,
    grp TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (pubsub, topic, grp)
);

CREATE TABLE IF NOT EXISTS deliveries (
    pubsub TEXT NOT NULL,
    topic TEXT NOT NULL,
    grp TEXT NOT NULL,
    seq INTEGER NOT NULL,
    status TEXT NOT NULL,          -- pending | leased | done | dropped
    attempts INTEGER NOT NULL DEFAULT 0,
    available_at REAL NOT NULL,
    lease_owner TEXT,
    lease_until REAL,
    PRIMARY KEY (pubsub, topic, grp, seq)
);

CREATE TABLE IF NOT EXISTS jobs (
    app_id TEXT NOT NULL,
    name TEXT NOT NULL,
    job BLOB NOT NULL,             -- dapr.proto.runtime.v1.Job, as GetJob returns it
    revision INTEGER NOT NULL,
    created_at REAL NOT NULL,
    count INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    last_trigger REAL,
    next_at REAL NOT NULL,
    lease_owner TEXT,
    lease_until REAL,
    PRIMARY KEY (app_id, name)
);
COMMIT;
"""


class ETagMismatchError(Exception):
    """``state.ETagMismatch``: the ETag is not the key's current one (or the key is
    absent), or first-write found the key present."""

    def __str__(self) -> str:
        return "possible etag mismatch. error from state store"


class FirstWriteLostError(ETagMismatchError):
    """``first-write`` without an ETag found the key present. Most components report it
    as an ETag mismatch; the server words it per component type (``_component_error``)."""


class ETagInvalidError(Exception):
    """``state.ETagInvalid``: the ETag is not one this store could have issued."""

    def __init__(self, etag: str) -> None:
        super().__init__(etag)
        self.etag = etag

    def __str__(self) -> str:
        reason = "value out of range" if self.etag.isdigit() else "invalid syntax"
        return f'invalid etag value: strconv.ParseUint: parsing "{self.etag}": {reason}'


class AlreadyExistsError(Exception):
    """A job with that name exists and ``overwrite`` was false."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StateOp:
    """One upsert or delete on a stored (already prefixed) key."""

    key: str
    delete: bool = False
    value: bytes = b""
    etag: str | None = None  # None or "" means "no ETag", as state.SetRequest.HasETag
    first_write: bool = False
    ttl_seconds: int | None = None


@dataclass(frozen=True, slots=True)
class Claimed:
    """A message leased to one subscriber stream."""

    seq: int
    body: bytes
    raw: bool
    attempts: int


@dataclass(frozen=True, slots=True)
class StoredJob:
    """A job leased for triggering."""

    name: str
    revision: int
    job: bytes
    created_at: float
    count: int
    attempts: int
    last_trigger: float | None
    next_at: float


def _check_etag(etag: str) -> None:
    if not etag.isdigit() or not etag.isascii() or int(etag) >= 2**64:
        raise ETagInvalidError(etag)


class Storage:
    """Synchronous access to the file; call from one thread only."""

    def __init__(self, path: Path, *, busy_timeout: float = 10.0) -> None:
        self.path = path
        self._db = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _next_etag(self) -> str:
        row = self._db.execute(
            "UPDATE meta SET value = value + 1 WHERE key = 'etag_seq' RETURNING value"
        ).fetchone()
        return str(row[0])

    # --- state -------------------------------------------------------------------

    def get(self, store: str, key: str, now: float) -> tuple[bytes, str, float | None] | None:
        row = self._db.execute(
            "SELECT value, etag, expires_at FROM state WHERE store = ? AND key = ?"
            " AND (expires_at IS NULL OR expires_at > ?)",
            (store, key, now),
        ).fetchone()
        return None if row is None else (bytes(row[0]), row[1], row[2])

    def _apply(self, store: str, op: StateOp, now: float) -> None:
        has_etag = bool(op.etag)
        if has_etag:
            assert op.etag is not None
            _check_etag(op.etag)
        live = "(expires_at IS NULL OR expires_at > ?)"
        if op.delete:
            if has_etag:
                cursor = self._db.execute(
                    f"DELETE FROM state WHERE store = ? AND key = ? AND etag = ? AND {live}",
                    (store, op.key, op.etag, now),
                )
                if cursor.rowcount == 0:
                    raise ETagMismatchError
            else:
                self._db.execute("DELETE FROM state WHERE store = ? AND key = ?", (store, op.key))
            return
        expires = now + op.ttl_seconds if op.ttl_seconds and op.ttl_seconds > 0 else None
        etag = self._next_etag()
        if has_etag:
            cursor = self._db.execute(
                f"UPDATE state SET value = ?, etag = ?, expires_at = ?"
                f" WHERE store = ? AND key = ? AND etag = ? AND {live}",
                (op.value, etag, expires, store, op.key, op.etag, now),
            )
            if cursor.rowcount == 0:
                raise ETagMismatchError
            return
        if op.first_write:
            # components-contrib #995: first-write without an ETag inserts only if the
            # key is absent (an expired row counts as absent).
            present = self._db.execute(
                f"SELECT 1 FROM state WHERE store = ? AND key = ? AND {live}",
                (store, op.key, now),
            ).fetchone()
            if present is not None:
                raise FirstWriteLostError
        self._db.execute(
            "INSERT OR REPLACE INTO state (store, key, value, etag, expires_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (store, op.key, op.value, etag, expires),
        )

    def apply_each(self, store: str, ops: Sequence[StateOp], now: float) -> list[Exception | None]:
        """Each op in its own transaction (SaveState / DeleteBulkState: not atomic)."""
        results: list[Exception | None] = []
        for op in ops:
            try:
                with self._write():
                    self._apply(store, op, now)
            except (ETagMismatchError, ETagInvalidError) as exc:
                results.append(exc)
            else:
                results.append(None)
        return results

    def transact(self, store: str, ops: Sequence[StateOp], now: float) -> None:
        """All ops or none (ExecuteStateTransaction); raises the first op's error."""
        with self._write():
            for op in ops:
                self._apply(store, op, now)

    # --- pub/sub -----------------------------------------------------------------

    def publish(self, pubsub: str, topic: str, body: bytes, *, raw: bool, now: float) -> int:
        with self._write() as db:
            seq = db.execute(
                "INSERT INTO messages (pubsub, topic, body, raw, published_at)"
                " VALUES (?, ?, ?, ?, ?) RETURNING seq",
                (pubsub, topic, body, int(raw), now),
            ).fetchone()[0]
            db.execute(
                "INSERT INTO deliveries (pubsub, topic, grp, seq, status, available_at)"
                " SELECT pubsub, topic, grp, ?, 'pending', ? FROM consumer_groups"
                " WHERE pubsub = ? AND topic = ?",
                (seq, now, pubsub, topic),
            )
        return int(seq)

    def ensure_group(self, pubsub: str, topic: str, group: str, now: float) -> None:
        """Create the consumer group if new, reading the topic from its start (as
        pubsub.redis does with ``XGROUP CREATE ... 0``)."""
        with self._write() as db:
            created = db.execute(
                "INSERT OR IGNORE INTO consumer_groups (pubsub, topic, grp, created_at)"
                " VALUES (?, ?, ?, ?)",
                (pubsub, topic, group, now),
            ).rowcount
            if created:
                db.execute(
                    "INSERT OR IGNORE INTO deliveries (pubsub, topic, grp, seq, status, available_at)"
                    " SELECT pubsub, topic, ?, seq, 'pending', ? FROM messages"
                    " WHERE pubsub = ? AND topic = ?",
                    (group, now, pubsub, topic),
                )

    def claim(
        self,
        pubsub: str,
        topic: str,
        group: str,
        *,
        owner: str,
        limit: int,
        now: float,
        lease: float,
    ) -> list[Claimed]:
        """Lease up to ``limit`` deliverable messages, oldest first: pending ones whose
        time has come, and leased ones whose lease ran out (a subscriber that never
        answered, or a sidecar that died)."""
        if limit <= 0:
            return []
        # Look before taking the write lock: an idle subscriber polls this often.
        ready = "((status = 'pending' AND available_at <= ?) OR (status = 'leased' AND lease_until <= ?))"
        if not self._db.execute(
            f"SELECT 1 FROM deliveries WHERE pubsub = ? AND topic = ? AND grp = ? AND {ready} LIMIT 1",
            (pubsub, topic, group, now, now),
        ).fetchone():
            return []
        with self._write() as db:
            rows = db.execute(
                "SELECT d.seq, m.body, m.raw, d.attempts FROM deliveries d"
                " JOIN messages m ON m.seq = d.seq"
                " WHERE d.pubsub = ? AND d.topic = ? AND d.grp = ?"
                " AND ((d.status = 'pending' AND d.available_at <= ?)"
                "      OR (d.status = 'leased' AND d.lease_until <= ?))"
                " ORDER BY d.seq LIMIT ?",
                (pubsub, topic, group, now, now, limit),
            ).fetchall()
            for seq, _, _, _ in rows:
                db.execute(
                    "UPDATE deliveries SET status = 'leased', attempts = attempts + 1,"
                    " lease_owner = ?, lease_until = ?"
                    " WHERE pubsub = ? AND topic = ? AND grp = ? AND seq = ?",
                    (owner, now + lease, pubsub, topic, group, seq),
                )
        return [
            Claimed(seq, bytes(body), bool(raw), attempts + 1) for seq, body, raw, attempts in rows
        ]

    def settle(
        self,
        pubsub: str,
        topic: str,
        group: str,
        seq: int,
        *,
        owner: str,
        status: str,
        available_at: float = 0.0,
    ) -> bool:
        """Record a subscriber's answer; False if the lease was lost meanwhile."""
        with self._write() as db:
            return (
                db.execute(
                    "UPDATE deliveries SET status = ?, available_at = ?, lease_owner = NULL,"
                    " lease_until = NULL WHERE pubsub = ? AND topic = ? AND grp = ? AND seq = ?"
                    " AND status = 'leased' AND lease_owner = ?",
                    (status, available_at, pubsub, topic, group, seq, owner),
                ).rowcount
                == 1
            )

    def release(self, owner: str, now: float) -> None:
        """Give back every message leased by ``owner`` (its stream ended)."""
        with self._write() as db:
            db.execute(
                "UPDATE deliveries SET status = 'pending', available_at = ?, lease_owner = NULL,"
                " lease_until = NULL WHERE status = 'leased' AND lease_owner = ?",
                (now, owner),
            )

    def release_app(self, app_id: str, now: float) -> None:
        """At sidecar start: leases held by a previous process of this app are void."""
        with self._write() as db:
            db.execute(
                "UPDATE deliveries SET status = 'pending', available_at = ?, lease_owner = NULL,"
                " lease_until = NULL WHERE status = 'leased' AND grp = ?",
                (now, app_id),
            )
            db.execute(
                "UPDATE jobs SET lease_owner = NULL, lease_until = NULL WHERE app_id = ?",
                (app_id,),
            )

    def message(self, seq: int) -> tuple[bytes, bool]:
        row = self._db.execute("SELECT body, raw FROM messages WHERE seq = ?", (seq,)).fetchone()
        return bytes(row[0]), bool(row[1])

    # --- jobs --------------------------------------------------------------------

    def put_job(
        self,
        app_id: str,
        name: str,
        job: bytes,
        *,
        overwrite: bool,
        now: float,
        start: Callable[[], tuple[int, int, float | None, float] | None],
    ) -> None:
        """Store a job and its fresh counter (``start()`` gives count, attempts, last,
        next; None means it will never fire, so nothing is kept)."""
        with self._write() as db:
            row = db.execute(
                "SELECT revision FROM jobs WHERE app_id = ? AND name = ?", (app_id, name)
            ).fetchone()
            if row is not None and not overwrite:
                raise AlreadyExistsError(name)
            revision = (row[0] if row is not None else 0) + 1
            counter = start()
            if counter is None:
                db.execute("DELETE FROM jobs WHERE app_id = ? AND name = ?", (app_id, name))
                return
            count, attempts, last, next_at = counter
            db.execute(
                "INSERT OR REPLACE INTO jobs (app_id, name, job, revision, created_at, count,"
                " attempts, last_trigger, next_at, lease_owner, lease_until)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL)",
                (app_id, name, job, revision, now, count, attempts, last, next_at),
            )

    def get_job(self, app_id: str, name: str) -> bytes | None:
        row = self._db.execute(
            "SELECT job FROM jobs WHERE app_id = ? AND name = ?", (app_id, name)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def delete_job(self, app_id: str, name: str) -> None:
        with self._write() as db:
            db.execute("DELETE FROM jobs WHERE app_id = ? AND name = ?", (app_id, name))

    def list_jobs(self, app_id: str) -> list[bytes]:
        return [
            bytes(row[0])
            for row in self._db.execute(
                "SELECT job FROM jobs WHERE app_id = ? ORDER BY name", (app_id,)
            )
        ]

    def next_job_time(self, app_id: str, now: float) -> float | None:
        row = self._db.execute(
            "SELECT min(CASE WHEN lease_until IS NOT NULL AND lease_until > ? THEN lease_until"
            " ELSE next_at END) FROM jobs WHERE app_id = ?",
            (now, app_id),
        ).fetchone()
        return None if row[0] is None else float(row[0])

    def claim_job(self, app_id: str, *, owner: str, now: float, lease: float) -> StoredJob | None:
        due = self._db.execute(
            "SELECT 1 FROM jobs WHERE app_id = ? AND next_at <= ?"
            " AND (lease_until IS NULL OR lease_until <= ?) LIMIT 1",
            (app_id, now, now),
        ).fetchone()
        if due is None:
            return None
        with self._write() as db:
            row = db.execute(
                "SELECT name, revision, job, created_at, count, attempts, last_trigger, next_at"
                " FROM jobs WHERE app_id = ? AND next_at <= ?"
                " AND (lease_until IS NULL OR lease_until <= ?) ORDER BY next_at LIMIT 1",
                (app_id, now, now),
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET lease_owner = ?, lease_until = ? WHERE app_id = ? AND name = ?",
                (owner, now + lease, app_id, row[0]),
            )
        return StoredJob(row[0], row[1], bytes(row[2]), row[3], row[4], row[5], row[6], row[7])

    def finish_job(
        self,
        app_id: str,
        name: str,
        revision: int,
        counter: tuple[int, int, float | None, float] | None,
    ) -> None:
        """Store the counter after a trigger, or delete the finished job; a job that was
        overwritten meanwhile (new revision) is left alone."""
        with self._write() as db:
            if counter is None:
                db.execute(
                    "DELETE FROM jobs WHERE app_id = ? AND name = ? AND revision = ?",
                    (app_id, name, revision),
                )
                return
            count, attempts, last, next_at = counter
            db.execute(
                "UPDATE jobs SET count = ?, attempts = ?, last_trigger = ?, next_at = ?,"
                " lease_owner = NULL, lease_until = NULL"
                " WHERE app_id = ? AND name = ? AND revision = ?",
                (count, attempts, last, next_at, app_id, name, revision),
            )


def now() -> float:
    return time.time()
