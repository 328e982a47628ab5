"""The embedded :class:`~gateway.stores.StateStore`: one SQLite file in WAL mode.

Invariants this module keeps, beyond the protocol's:

* **One thread owns the write connection.** Each store has a single-thread writer
  executor; the write connection is created on that thread and every write runs there,
  reached from async code through ``loop.run_in_executor``. The event loop never waits
  on an fsync or a lock, and the connection is never touched by two threads (``sqlite3``
  would refuse anyway: ``check_same_thread`` stays on).
* **Reads never queue behind writes.** Reads run on a small pool of reader threads,
  each with its own connection. In WAL mode a reader sees the last committed snapshot
  and is not blocked by a writer (nor blocks one), so a read waits neither for an fsync
  nor for the write queue. A read that starts after a write returned sees that write:
  the write's future resolves only after its COMMIT.
* **Small reads run on the event loop's own thread.** ``get``, ``get_many`` of up to
  :data:`INLINE_READ_MAX_KEYS` keys and ``list`` of up to :data:`INLINE_LIST_MAX_KEYS`
  keys first try a connection of the calling thread whose busy timeout is zero: it never
  waits for a lock (a busy file sends the read to the reader threads, which may wait),
  and values larger than :data:`INLINE_READ_MAX_BYTES` (a blob's chunks, read ahead
  concurrently) or longer listings are left to the reader threads too. Handing a 5 KB
  read to a thread and back cost about ten times the read itself (about 140 µs against
  15 µs), and a migration makes some thirty reads.
* **Concurrent writes share commits (group commit).** Writes that arrive while a commit
  is in flight wait for it and then go together into the next transaction: one read of
  all their ETags, each caller's preconditions checked in turn (seeing the writes of the
  callers before it), one write of those that passed, and the group's single COMMIT
  (one fsync) makes them all durable at once. One caller's failed precondition refuses
  that caller only; a write SQLite itself refuses rolls the transaction back, and a new
  one applies the callers one by one, each in its own SAVEPOINT. A caller
  is answered only after the COMMIT that holds its write returned, so durability per
  caller is exactly that of one transaction per call; the group is as atomic as each
  of its members (all of a caller's operations or none).
* **The writer thread drives the groups.** It takes the next group itself as soon as a
  COMMIT returns and hands the callers' answers to their event loop
  (``call_soon_threadsafe``, one callback per group); the loop is not a step between
  two groups. A busy loop (a migration's CPU) used to delay the next group's start by
  its own turn, after the fsync had already returned.
* **Checkpoints run beside the writer, not in its commits.** The writer's connection
  asks SQLite for an automatic checkpoint only past :data:`_WRITER_AUTOCHECKPOINT`
  pages of WAL (a bound, should the checkpointer fall behind); about every
  :data:`CHECKPOINT_PAGES` pages it writes, it asks a thread of its own (one
  connection) for a passive checkpoint instead, and goes on with the next group. A
  group of P5's cycles writes more than SQLite's default of 1,000 pages, so every
  COMMIT copied the whole WAL into the file and synced both (in a replay of groups of
  512 cycles, about 4 of the COMMIT's 8 ms of CPU and 20 of its 30 ms of wall,
  session 42), while callers waited. Durability is untouched: a COMMIT still returns only once
  the WAL is synced, and a checkpoint only copies what is already durable.
* **A write that returned is on disk.** ``journal_mode=WAL`` with ``synchronous=FULL``
  fsyncs the WAL at every commit, so a returned :meth:`SqliteStore.transact` survives a
  SIGKILL of the process and a power loss. (``NORMAL`` would only survive the former.)
* **Preconditions are checked under the write lock.** Every write transaction starts
  with ``BEGIN IMMEDIATE``, which takes the database's single write lock *before* the
  ETags are read; no other connection, in this process or another, can write between
  the check and the write. A failed check rolls back and writes nothing.
* **Several processes may share one file** (a CLI next to a running server): SQLite's
  file locks serialize writers, and ``busy_timeout`` makes a writer wait for the lock
  instead of failing at once. WAL needs shared memory between the processes, so the
  file must be on a local file system, not NFS or SMB.
* **Keys compare as UTF-8 bytes** (SQLite's ``BINARY`` collation is ``memcmp``), which
  is the same order as Python's code-point order of ``str``; :meth:`SqliteStore.list`
  relies on this for its range query.
"""

from __future__ import annotations

import asyncio
import builtins
import collections
import contextlib
import functools
import itertools
import json
import operator
import os
import secrets
import sqlite3
import struct
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from gateway import observability
from gateway._gc import drop_traceback
from gateway.errors import (
    ConcurrencyError,
    ConfigError,
    GatewayError,
    StoreError,
    StoreUnavailableError,
)
from gateway.stores import (
    ENTRY_ID_BYTES,
    Delete,
    Expect,
    Item,
    Operation,
    Put,
    PutEntries,
    check_listable,
    check_start_after,
    listable,
)

__all__ = ["SqliteStore"]

_T = TypeVar("_T")
_K = TypeVar("_K", str, int)

#: A caller's write waiting for its group: its operations, the future it awaits and the
#: loop that future belongs to.
_Write = tuple[tuple[Operation, ...], "asyncio.Future[None]", asyncio.AbstractEventLoop]
#: A caller's future and its outcome: ``None`` (durable) or the error to raise.
_Answer = tuple["asyncio.Future[None]", BaseException | None]

#: Bumped when the table layout changes; a file from a newer gateway is refused, and
#: one from an older gateway is brought up to date when opened (:func:`_ensure_schema`).
#: 2 (session 38): values written as a head and entry rows (:class:`PutEntries`).
_SCHEMA_VERSION = 2

#: Keys per ``IN (...)`` query; far below SQLite's bound-parameter limit (32766 since 3.32,
#: 999 before), so statements stay small whatever the build. One of :data:`_SIZES`.
_CHUNK = 512

_DEFAULT_BUSY_TIMEOUT = 10.0

#: Reader threads (each with its own connection). Two cover a host's concurrent reads on
#: the small machines this runs on; more would only contend for the GIL.
_READERS = 2

#: Largest value a ``get`` returns from the event loop's thread; larger ones are read
#: on a reader thread (copying a MiB on the loop would stall every other task).
INLINE_READ_MAX_BYTES = 64 << 10

#: Page size of a new file (an existing file keeps its own: changing it needs a VACUUM
#: outside WAL mode). SQLite's default, 4 KiB: a small migration's commits write a few
#: KB each, and larger pages cost them more (5-key commits of about 16 KB took 0.23-0.24
#: ms at 4 KiB and 0.24-0.29 ms at 16 KiB on the development VM; 1.1 ms at 32 KiB).
#: 16 KiB (sessions before 24) helped only 1 MiB blob chunks written through the WAL,
#: and blobs are files beside the store now (ADR 0009).
PAGE_SIZE = 4 << 10

#: Most keys a ``get_many`` reads on the event loop's thread.
INLINE_READ_MAX_KEYS = 32
#: Most keys a ``list`` returns from the event loop's thread; a longer listing (a scan
#: of every object) is read again on a reader thread.
INLINE_LIST_MAX_KEYS = 256


#: A value kept as a head and entry rows is read on a reader thread (its rows are a
#: second statement, and a snapshot of both needs a transaction): NULL here too.
_INLINE_GET = (
    "SELECT key, CASE WHEN length(value) <= ? AND length(entry_rows) = 0 THEN value END, etag"
    " FROM items WHERE key IN ({})"
)

#: What an inline read answers when the value must be read on a reader thread.
_ELSEWHERE = object()

#: Callers whose writes may share one commit; a bound on one transaction's size and on
#: how long the first caller of a group waits for the last one's work.
_MAX_GROUP = 64

# SQLite result codes (primary code = extended code & 0xFF) that mean "the file cannot be
# used right now" rather than "the file is wrong": a caller may retry these later.
_UNAVAILABLE_CODES = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PERM,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_PROTOCOL,
    }
)

_HINTS = {
    sqlite3.SQLITE_BUSY: (
        "another process held the write lock longer than the busy timeout; "
        "retry, or look for a stuck process using the same file"
    ),
    sqlite3.SQLITE_LOCKED: "another connection in this process holds a conflicting lock; retry",
    sqlite3.SQLITE_IOERR: "the disk reported an I/O error; check the device and the kernel log",
    sqlite3.SQLITE_FULL: "the file system is full; free space and retry",
    sqlite3.SQLITE_CANTOPEN: "check that the path exists, is a file and is writable",
    sqlite3.SQLITE_PERM: "check the file's permissions",
    sqlite3.SQLITE_READONLY: "the file or its directory is read-only; the store needs to write",
    sqlite3.SQLITE_CORRUPT: "the file is damaged; restore it from a backup",
    sqlite3.SQLITE_NOTADB: "the path points at something that is not an SQLite database",
}


@observability.metered_store
class SqliteStore:
    """A :class:`~gateway.stores.StateStore` kept in one SQLite file.

    Make one with :meth:`open`; release it with ``await store.close()`` or use it as
    ``async with SqliteStore.open(path) as store:``. Calls from several coroutines are
    fine (they queue on the store's worker thread); calls from several event loops at
    once are not.
    """

    __slots__ = (
        "_busy_timeout",
        "_checkpoint_connection",
        "_checkpointer",
        "_checkpointing",
        "_closed",
        "_connection",
        "_cursor",
        "_draining",
        "_entry_list_bytes",
        "_entry_lists",
        "_executor",
        "_local",
        "_path",
        "_pending",
        "_pending_lock",
        "_reader_connections",
        "_reader_lock",
        "_readers",
        "_unbinding",
        "_wal_pages",
    )

    def __init__(
        self,
        *,
        path: Path,
        executor: ThreadPoolExecutor,
        connection: sqlite3.Connection,
        cursor: sqlite3.Cursor,
        busy_timeout: float = _DEFAULT_BUSY_TIMEOUT,
    ) -> None:
        # Use open(): the connection must have been made on the executor's only thread.
        self._path = path
        self._executor = executor
        self._connection = connection
        #: The writer's statements run on this one cursor: ``Connection.execute`` makes
        #: (and frees) a cursor per statement, about 1.4k instructions each.
        self._cursor = cursor
        self._busy_timeout = busy_timeout
        self._closed = False
        self._readers = ThreadPoolExecutor(
            max_workers=_READERS, thread_name_prefix=f"sqlite-reader:{path}"
        )
        self._local = threading.local()
        self._reader_connections: builtins.list[sqlite3.Connection] = []
        self._reader_lock = threading.Lock()
        #: Writes waiting for the next group commit, each with the future its caller
        #: awaits and that caller's loop; shared with the writer thread (under the lock).
        self._pending: collections.deque[_Write] = collections.deque()
        self._pending_lock = threading.Lock()
        #: Whether a drain of the pending writes is queued or running on the writer
        #: thread (under the lock): one at a time, so groups commit in arrival order.
        self._draining = False
        #: Upserts of the group being committed that bound many bytes of values, with
        #: their parameter counts: unbound once the group's callers are answered (writer
        #: thread only; see _unbind).
        self._unbinding: builtins.list[tuple[str, int]] = []
        #: key -> (ETag, entry row numbers, entry ids) of values this writer kept as
        #: rows, least recently written first (writer thread only; see _state_in).
        self._entry_lists: collections.OrderedDict[str, tuple[str, bytes, bytes]] = (
            collections.OrderedDict()
        )
        self._entry_list_bytes = 0
        #: The thread that checkpoints the WAL (see the module docstring), its
        #: connection (made on it when first needed) and whether a checkpoint is
        #: queued or running (set by the writer thread, cleared by the checkpointer;
        #: no lock: a stale read only moves the next request by one group).
        self._checkpointer = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"sqlite-checkpoint:{path}"
        )
        self._checkpoint_connection: sqlite3.Connection | None = None
        self._checkpointing = False
        #: WAL pages the writer's commits wrote since it last asked for a checkpoint, as
        #: estimated by :meth:`_upsert` and :meth:`_write` (writer thread only).
        self._wal_pages = 0

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        create: bool = False,
        busy_timeout: float = _DEFAULT_BUSY_TIMEOUT,
    ) -> SqliteStore:
        """Open the store at ``path``; with ``create``, make it first if it is missing.

        Without ``create`` a missing file is a :class:`~gateway.errors.ConfigError`: a
        mistyped path must not quietly become a new, empty store (only ``gateway init``
        and test worlds create). With it, missing parent directories, the file and its
        schema are created. ``busy_timeout`` is how many seconds a write waits for another
        process to release the file's write lock before failing with
        :class:`~gateway.errors.StoreUnavailableError`.

        Blocks the calling thread while the file is opened; call it at start-up.
        """
        if busy_timeout < 0:
            raise ValueError(f"busy_timeout must not be negative, got {busy_timeout}")
        file = Path(path)
        if not create and not file.exists():
            raise ConfigError(
                f"the SQLite store {file} does not exist",
                hint="check store.sqlite in the host configuration; `gateway init` creates "
                "a new host with its store",
            )
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailableError(
                f"cannot create the directory of the SQLite store {file}: {exc.strerror}",
                hint="check the path and the permissions of its parent directories",
            ) from exc
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sqlite-store:{file}")
        try:
            connection = executor.submit(_connect, file, busy_timeout).result()
            cursor = executor.submit(connection.cursor).result()
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(
            path=file,
            executor=executor,
            connection=connection,
            cursor=cursor,
            busy_timeout=busy_timeout,
        )

    @property
    def path(self) -> Path:
        """The SQLite file this store keeps its state in."""
        return self._path

    @property
    def blob_directory(self) -> Path:
        """Where large object data is kept, as one file per blob beside this file (ADR 0009,
        gateway/blobs.py): 1 MiB values written through the WAL were the stream's limit."""
        return self._path.with_name(self._path.name + ".blobs")

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<SqliteStore {str(self._path)!r} {state}>"

    async def __aenter__(self) -> SqliteStore:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- the StateStore protocol -----------------------------------------------------

    async def get(self, key: str) -> Item | None:
        """The current value and ETag, or ``None`` if the key does not exist."""
        _check_key(key)
        if not self._closed:
            found = self._get_inline(key)
            if found is not _ELSEWHERE:
                return found  # type: ignore[return-value]
        return await self._read(f"read {key!r}", functools.partial(self._get, key))

    def _get_inline(self, key: str) -> Item | object | None:
        """``get`` on this thread's non-waiting connection; :data:`_ELSEWHERE` when the
        value is large, the file is busy or anything went wrong (the reader threads then
        read it, waiting for locks and reporting errors as every read does)."""
        found = self._inline(functools.partial(self._get_many_inline, [key]))
        if not isinstance(found, dict):
            return _ELSEWHERE
        item: Item | None = found.get(key)
        return item

    def _inline(self, job: Callable[[sqlite3.Connection], _T]) -> _T | object:
        """``job`` on this thread's connection that never waits for a lock; :data:`_ELSEWHERE`
        if it answered so, or the file was busy, or anything else went wrong."""
        connection: sqlite3.Connection | None = getattr(self._local, "inline", None)
        try:
            if connection is None:
                connection = self._connect_reader(busy_timeout=0.0)
                self._local.inline = connection
            return job(connection)
        except sqlite3.Error:
            return _ELSEWHERE

    @staticmethod
    def _get_many_inline(
        keys: Sequence[str], connection: sqlite3.Connection
    ) -> dict[str, Item] | object:
        found: dict[str, Item] = {}
        sql, padded = _listed(_INLINE_GET, keys)
        for key, value, etag in connection.execute(sql, (INLINE_READ_MAX_BYTES, *padded)):
            if value is None:
                return _ELSEWHERE  # larger than INLINE_READ_MAX_BYTES (never NULL)
            found[key] = Item(key=key, value=value, etag=etag)
        return found

    @staticmethod
    def _list_inline(
        prefix: str, start_after: str | None, limit: int | None, connection: sqlite3.Connection
    ) -> builtins.list[str] | object:
        # The bound counts rows, listable or not: counting only the listed keys would take
        # a range with unlisted keys in it (fences under t/<tenant>/) for a short one and
        # answer it without the keys past the bound.
        keys: builtins.list[str] = []
        scanned = 0
        for key in _keys_in_range(connection, prefix, start_after, bound=INLINE_LIST_MAX_KEYS + 1):
            scanned += 1
            if listable(key):
                keys.append(key)
                if len(keys) == limit:
                    return keys
        if scanned > INLINE_LIST_MAX_KEYS:
            return _ELSEWHERE  # a long listing: on a reader thread
        return keys

    async def get_many(self, keys: Sequence[str]) -> dict[str, Item]:
        """The items that exist among ``keys``, in the order asked (missing keys left out)."""
        if isinstance(keys, str):  # a str is a Sequence[str] too: one key per character
            raise TypeError("get_many() takes a sequence of keys, not one str")
        wanted = list(dict.fromkeys(keys))
        for key in wanted:
            _check_key(key)
        if not wanted:
            return {}
        if len(wanted) <= INLINE_READ_MAX_KEYS and not self._closed:
            inline = self._inline(functools.partial(self._get_many_inline, wanted))
            if isinstance(inline, dict):
                return {key: inline[key] for key in wanted if key in inline}
        found = await self._read(
            f"read {len(wanted)} keys", functools.partial(self._get_many, wanted)
        )
        return {key: found[key] for key in wanted if key in found}

    async def transact(self, operations: Sequence[Operation]) -> dict[str, str]:
        """Apply all operations atomically; returns the new ETag of every key a
        :class:`~gateway.stores.Put` wrote (chosen before the write, see :class:`_Writes`).

        Raises :class:`~gateway.errors.ConcurrencyError` naming the first key (in the
        order given) whose precondition failed, and then nothing is written.
        A transaction naming one key twice is refused with
        :class:`~gateway.errors.StoreError`: the outcome would depend on an order the
        protocol does not promise.

        The transaction runs on the worker thread to its end even if the awaiting task
        is cancelled, so a cancelled call may still have committed: re-read to find out.
        Concurrent calls share one commit (see the module docstring); each returns only
        once its own writes are durable.
        """
        checked = tuple(operations)
        _check_operations(checked)
        if not checked:
            return {}
        ops = _Writes(checked)
        if self._closed:
            raise StoreUnavailableError(
                f"cannot {_describe(ops)}: the SQLite store {self._path} is closed",
                hint="the gateway is shutting down; retry against a running instance",
            )
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        with self._pending_lock:
            self._pending.append((ops, done, loop))
            start = not self._draining
            self._draining = True
        if start:
            try:
                self._executor.submit(self._drain)
            except RuntimeError as exc:  # the worker was shut down: nothing was written
                with self._pending_lock:
                    self._draining = False
                    self._pending.clear()
                closed = StoreUnavailableError(
                    f"cannot {_describe(ops)}: the SQLite store {self._path} is closed"
                )
                raise _caused(closed, exc) from exc
        try:
            await done
        finally:
            # A refusal's traceback holds this frame, whose `done` holds the refusal: a
            # reference cycle keeping the caller's writes until a middle collection.
            del done
        return ops.etags

    async def put(self, key: str, value: bytes, *, etag: str | Expect) -> None:
        """A transaction of one :class:`~gateway.stores.Put`."""
        await self.transact([Put(key=key, value=value, etag=etag)])

    async def delete(self, key: str, *, etag: str | Expect) -> None:
        """A transaction of one :class:`~gateway.stores.Delete`."""
        await self.transact([Delete(key=key, etag=etag)])

    async def list(
        self, prefix: str, *, limit: int | None = None, start_after: str | None = None
    ) -> list[str]:
        """Keys starting with ``prefix`` (taken literally), ascending; at most ``limit``;
        only those greater than ``start_after`` when it is given (one range on the primary
        key either way: a page costs what it returns, not what lies before it)."""
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be str, got {type(prefix).__name__}")
        _check_encodable(prefix, "prefix")
        check_start_after(start_after)
        if limit is not None and limit < 0:
            raise ValueError(f"limit must not be negative, got {limit}")
        check_listable(prefix)
        if limit == 0:
            return []
        if not self._closed:
            inline = self._inline(functools.partial(self._list_inline, prefix, start_after, limit))
            if isinstance(inline, builtins.list):
                return inline
        return await self._read(
            f"list keys under {prefix!r}",
            functools.partial(self._list, prefix, start_after, limit),
        )

    async def close(self) -> None:
        """Close the connection and stop the worker thread; later calls fail.

        Calls already queued finish first (the worker runs them in order). Closing
        twice is harmless.
        """
        if self._closed:
            return
        self._closed = True
        try:
            # Writes already accepted are committed (or fail) before the close: the
            # worker runs jobs in order, and a drain queued or running ends only once
            # nothing is pending (nothing more can be, the store being closed).
            await self._on_worker("close the store", self._connection.close)
        finally:
            # The close above was the last job queued, so the thread is idle and exits.
            self._executor.shutdown(wait=True)
            self._readers.shutdown(wait=True)
            # After the writer: its last group may have asked for a checkpoint.
            self._checkpointer.shutdown(wait=True)
            if self._checkpoint_connection is not None:
                self._checkpoint_connection.close()
            with self._reader_lock:
                for connection in self._reader_connections:
                    connection.close()
                self._reader_connections.clear()

    # --- plumbing ----------------------------------------------------------------------

    async def _on_worker(self, action: str, job: Callable[[], _T]) -> _T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, job)
        except sqlite3.Error as exc:
            raise _store_error(exc, self._path, action) from exc

    async def _read(self, action: str, job: Callable[[sqlite3.Connection], _T]) -> _T:
        if self._closed:
            raise StoreUnavailableError(
                f"cannot {action}: the SQLite store {self._path} is closed",
                hint="the gateway is shutting down; retry against a running instance",
            )
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._readers, self._on_reader, job)
        except sqlite3.Error as exc:
            raise _store_error(exc, self._path, action) from exc

    def _on_reader(self, job: Callable[[sqlite3.Connection], _T]) -> _T:
        """Runs ``job`` with this reader thread's own connection (opened on first use)."""
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._connect_reader(busy_timeout=self._busy_timeout)
            self._local.connection = connection
        return job(connection)

    def _connect_reader(self, *, busy_timeout: float) -> sqlite3.Connection:
        """A read-only connection for the calling thread, closed by :meth:`close`."""
        connection = sqlite3.connect(
            self._path,
            timeout=busy_timeout,
            isolation_level=None,
            # Closed from close() after the reader pool has stopped; never used by
            # two threads at once.
            check_same_thread=False,
        )
        try:
            connection.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            connection.execute("PRAGMA query_only = ON")
        except BaseException:
            connection.close()
            raise
        with self._reader_lock:
            self._reader_connections.append(connection)
        return connection

    def _drain(self) -> None:
        """On the writer thread: commit groups of pending writes until none is left.

        Each group's callers are answered (on their loop) as soon as its COMMIT returned,
        and the next group starts right away, on this thread. A caller whose future is
        already cancelled when its group forms is left out (nothing of it is written);
        one cancelled later may still be committed, as :meth:`transact` says."""
        try:
            self._drain_groups()
        except BaseException:
            # Never expected (every outcome is caught above): let a later write start a
            # new drain rather than wait for this one forever.
            with self._pending_lock:
                self._draining = False
            raise

    def _drain_groups(self) -> None:
        while True:
            with self._pending_lock:
                if not self._pending:
                    self._draining = False
                    return
                group = [
                    self._pending.popleft() for _ in range(min(_MAX_GROUP, len(self._pending)))
                ]
            group = [write for write in group if not write[1].cancelled()]
            if not group:
                continue
            outcomes: builtins.list[BaseException | None]
            try:
                outcomes = self._commit_group([ops for ops, _done, _loop in group])
            except BaseException as failure:  # every caller of the group gets it
                # BEGIN or COMMIT failed: nothing of the group was written.
                outcomes = [failure] * len(group)
            answers: dict[asyncio.AbstractEventLoop, builtins.list[_Answer]] = {}
            for (ops, done, loop), outcome in zip(group, outcomes, strict=True):
                if isinstance(outcome, sqlite3.Error):
                    outcome = _caused(_store_error(outcome, self._path, _describe(ops)), outcome)
                if isinstance(outcome, GatewayError):
                    # A refusal's traceback runs through this thread's frames up to here, where
                    # `outcomes` holds it again: a reference cycle keeping every write of
                    # the group alive until a middle collection (docs/benchmarks.md,
                    # session 35). The caller re-raises it with its own traceback; an
                    # unexpected error (a bug) keeps its own, for whoever reads it.
                    drop_traceback(outcome)
                answers.setdefault(loop, []).append((done, outcome))
            for loop, answered in answers.items():
                # A closed loop has no caller left to answer.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_answer, answered)
            # After the answers: the callers do not wait for it. (Before the next group:
            # a write that returned has had its values unbound once the next one returns.)
            unbinding, self._unbinding = self._unbinding, []
            for sql, count in unbinding:
                _unbind(self._cursor, sql, count)
            if self._wal_pages >= CHECKPOINT_PAGES and not self._checkpointing:
                self._ask_for_checkpoint()

    def _ask_for_checkpoint(self) -> None:
        """On the writer thread: queue a checkpoint on the checkpointer thread."""
        self._wal_pages = 0
        self._checkpointing = True
        try:
            self._checkpointer.submit(self._checkpoint)
        except RuntimeError:  # shut down: the store is closing, and its close checkpoints
            self._checkpointing = False

    def _checkpoint(self) -> None:
        """On the checkpointer thread: copy the WAL's committed pages into the file.

        PASSIVE: it takes no lock a writer or reader waits for, and copies what no reader
        still needs. A failure loses nothing (every commit is in the synced WAL) and is
        left to the next checkpoint, the writer's own at :data:`_WRITER_AUTOCHECKPOINT`
        pages among them."""
        try:
            connection = self._checkpoint_connection
            if connection is None:
                connection = self._checkpoint_connection = _connect_checkpointer(
                    self._path, self._busy_timeout
                )
            connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error:
            pass
        finally:
            self._checkpointing = False

    # Everything below runs on the worker thread only.

    # Reads run on a reader thread, with that thread's connection.

    def _get(self, key: str, connection: sqlite3.Connection) -> Item | None:
        return self._get_many([key], connection).get(key)

    def _get_many(self, keys: Sequence[str], connection: sqlite3.Connection) -> dict[str, Item]:
        # Heads, then the entry rows of those kept as rows, and more than one chunk of
        # keys is more than one statement: all in one transaction, so that the answer is
        # a single snapshot, as one query would be. One chunk of heads none of which has
        # rows is one statement, its own snapshot: it needs no transaction (BEGIN and
        # ROLLBACK would be two statements more for every read of journals, events and
        # whole records). When a head has rows, a writer may have replaced it (and
        # dropped its rows) since: everything is read again inside a transaction.
        if len(keys) <= _CHUNK:
            heads = connection.execute(*_listed(_GET_HEADS, keys)).fetchall()
            if not any(numbers for _key, _etag, _value, _at, numbers, _ids in heads):
                return _assembled(self._path, connection, heads)
        with _read_transaction(connection):
            return _assembled(self._path, connection, _select_chunked(connection, _GET_HEADS, keys))

    @staticmethod
    def _list(
        prefix: str, start_after: str | None, limit: int | None, connection: sqlite3.Connection
    ) -> builtins.list[str]:
        """Listable keys under ``prefix`` after ``start_after``, at most ``limit``."""
        # Filtered here, not in SQL; the cursor is lazy, so islice stops reading at limit.
        rows = (k for k in _keys_in_range(connection, prefix, start_after) if listable(k))
        return builtins.list(itertools.islice(rows, limit))

    # Writes run on the writer thread, with the write connection.

    def _commit_group(
        self, group: builtins.list[tuple[Operation, ...]]
    ) -> builtins.list[BaseException | None]:
        """Apply each caller's operations, then COMMIT once.

        Returns one outcome per caller: ``None`` (written, durable once this returns) or
        the error that refused that caller's writes. Raises (writing nothing) if the
        transaction itself cannot begin or commit.
        """
        connection, cursor = self._connection, self._cursor
        cursor.execute("BEGIN IMMEDIATE")
        try:
            if len(group) == 1:
                # One caller (every commit of a quiet host): the transaction is its
                # savepoint; a failure rolls it all back, which is all its writes.
                outcomes: builtins.list[BaseException | None] = [None]
                try:
                    self._apply(group[0])
                except (ConcurrencyError, sqlite3.Error) as exc:
                    _rollback(connection)
                    return [exc]
            else:
                outcomes = self._apply_together(group)
            cursor.execute("COMMIT")
        except BaseException:
            _rollback(connection)
            raise
        return outcomes

    def _apply_together(
        self, group: builtins.list[tuple[Operation, ...]]
    ) -> builtins.list[BaseException | None]:
        """The callers' writes in as few statements as one caller's: one read of every
        caller's ETags, each caller's preconditions checked in turn against them (each
        seeing the writes of the callers before it, as separate transactions would),
        then the writes of those that passed. Why: every statement lets go of the GIL
        for its step and must take it back from the event loop's thread, which keeps it
        for up to the switch interval (5 ms) while it computes; with a savepoint, a read,
        a write and a release per caller, a group of eight cycle batches waited for the
        loop some forty times per commit, and the writer thread, not its CPU, bounded
        P5. A statement that fails (SQLite refusing a write, not a precondition) undoes
        the transaction, and a new one applies each caller in its own savepoint, so
        that only its own writes are refused."""
        connection = self._connection
        keys = builtins.list(dict.fromkeys(op.key for ops in group for op in ops))
        seen, stored = self._state_in(keys)
        outcomes: builtins.list[BaseException | None] = []
        #: key -> the last passing write of it: the put and the ETag it leaves, or None
        final: dict[str, tuple[Put, str] | None] = {}
        for ops in group:
            try:
                _check_preconditions(ops, seen)
            except ConcurrencyError as exc:
                outcomes.append(exc)
                continue
            outcomes.append(None)
            etags = _etags_of(ops)
            for op in ops:
                key = op.key
                if isinstance(op, Put):
                    etag = etags[key]
                    seen[key] = etag
                    final[key] = (op, etag)
                else:
                    seen.pop(key, None)
                    final[key] = None
        try:
            self._write(
                [(key, *kept) for key, kept in final.items() if kept is not None],
                [key for key, kept in final.items() if kept is None],
                stored,
            )
        except sqlite3.Error:
            # Rare (nothing of the group is written yet, and a savepoint around the
            # write would cost two statements every time): start again, each caller in
            # a savepoint of its own, its preconditions checked again.
            _rollback(connection)
            self._cursor.execute("BEGIN IMMEDIATE")
            return [self._apply_caller(ops) for ops in group]
        return outcomes

    def _apply_caller(self, ops: tuple[Operation, ...]) -> BaseException | None:
        """One caller's writes in a savepoint of their own, or the error that refused
        them (rolled back to that savepoint)."""
        cursor = self._cursor
        cursor.execute("SAVEPOINT caller")
        try:
            self._apply(ops)
        except (ConcurrencyError, sqlite3.Error) as exc:
            cursor.execute("ROLLBACK TO caller")
            cursor.execute("RELEASE caller")
            return exc
        cursor.execute("RELEASE caller")
        return None

    def _apply(self, ops: tuple[Operation, ...]) -> None:
        # Few statements, each of one step, whatever the number of keys: sqlite3 lets go
        # of the GIL for every step (every row fetched, every row of an executemany) and
        # must take it back from the event loop's thread, which holds it for up to the
        # switch interval (5 ms) while it computes. A caller's 40 puts as 40 steps waited
        # for the loop 40 times; as one statement, once.
        current, stored = self._state_in([op.key for op in ops])
        # Check every precondition before the first write: a failure then leaves nothing
        # to undo in this caller's savepoint.
        _check_preconditions(ops, current)
        # No key appears twice in a transaction, so the order of puts and deletes does
        # not matter.
        etags = _etags_of(ops)
        puts: builtins.list[tuple[str, Put, str]] = []
        gone: builtins.list[str] = []
        for op in ops:
            key = op.key
            if isinstance(op, Put):
                puts.append((key, op, etags[key]))
            elif key in current:
                gone.append(key)
        self._write(puts, gone, stored)

    def _write(
        self,
        puts: builtins.list[tuple[str, Put, str]],
        gone: builtins.list[str],
        stored: _Stored,
    ) -> None:
        """Upsert ``puts`` (key, put, ETag; no key twice) and delete ``gone``, given what
        :func:`_state_in` read of their keys (``stored``): a :class:`PutEntries` writes
        its head and the entry rows the key does not hold yet, and every row the key
        held that the new value does not list is deleted, in this same transaction."""
        cursor = self._cursor
        held, number = stored.rows, stored.top
        remembered = self._entry_lists
        whole: builtins.list[tuple[str, bytes, str]] = []
        heads: builtins.list[tuple[str, str, bytes, int, bytes, bytes]] = []
        added: builtins.list[tuple[int, bytes, bytes]] = []
        dropped: builtins.list[int] = []
        for key, op, etag in puts:
            old = held.get(key)
            split = None
            if type(op) is PutEntries:
                split = _entry_rows(op, old, number + 1, added, dropped)
            if split is None:
                whole.append((key, op.value, etag))
                if old is not None:
                    dropped += _numbers(old[0])
                if key in remembered:
                    self._forget_entry_list(key)
            else:
                head, at, numbers, ids, number = split
                heads.append((key, etag, head, at, numbers, ids))
                self._remember_entry_list(key, etag, numbers, ids)
        for key in gone:
            if key in held:
                dropped += _numbers(held[key][0])
            if key in remembered:
                self._forget_entry_list(key)
        for start in range(0, len(whole), _UPSERT_ROWS):
            self._upsert(_UPSERT, "(?, ?, ?)", whole[start : start + _UPSERT_ROWS], 1)
        for start in range(0, len(heads), _UPSERT_ROWS):
            self._upsert(_UPSERT_HEAD, "(?, ?, ?, ?, ?, ?)", heads[start : start + _UPSERT_ROWS], 2)
        for start in range(0, len(added), _UPSERT_ROWS):
            self._upsert(_ADD_ENTRIES, "(?, ?, ?)", added[start : start + _UPSERT_ROWS], 2)
        for start in range(0, len(dropped), _CHUNK):
            cursor.execute(*_listed(_DROP_ENTRIES, dropped[start : start + _CHUNK]))
        for start in range(0, len(gone), _CHUNK):
            cursor.execute(*_listed(_DELETE, gone[start : start + _CHUNK]))
        self._wal_pages += len(dropped) + len(gone)

    def _state_in(self, keys: Sequence[str]) -> tuple[dict[str, str], _Stored]:
        """The ETags of the existing keys among ``keys`` (as :func:`_etags_in`), and what
        the file holds of those kept as a head and entry rows: the store decides from
        this, never from a writer's belief, which rows a new value keeps, adds and drops.

        Each key kept as rows is read as its ETag alone when this writer remembers the
        value it wrote under that ETag (ETags are never reused for a key, so that value
        is the stored one; another process's write changes the ETag): a cycle's
        object then costs no read of its rows' list (about 4 KB of hex, parsed, for 60
        entries). The others' lists are read by a second statement."""
        cursor = self._cursor
        found: dict[str, str] = {}
        rows: dict[str, tuple[bytes, bytes]] = {}
        unknown: builtins.list[str] = []
        top = 0
        remembered = self._entry_lists
        for start in range(0, len(keys), _CHUNK):
            chunk = keys if len(keys) <= _CHUNK else keys[start : start + _CHUNK]
            largest, document, split = cursor.execute(*_listed(_STATE_AS_JSON, chunk)).fetchone()
            top = largest or 0
            etags: dict[str, str] = _json_object(document)
            if found:
                found.update(etags)
            else:
                found = etags
            if split != "[]":  # keys kept as rows (none, for most writes)
                for key in _scan_json(split, 0)[0]:
                    known = remembered.get(key)
                    if known is not None and known[0] == etags[key]:
                        rows[key] = known[1:]
                    else:
                        unknown.append(key)
        for start in range(0, len(unknown), _CHUNK):
            (document,) = cursor.execute(
                *_listed(_ENTRY_LISTS_AS_JSON, unknown[start : start + _CHUNK])
            ).fetchone()
            for key, (numbers, ids) in _json_object(document).items():
                numbers, ids = bytes.fromhex(numbers), bytes.fromhex(ids)
                if len(numbers) * ENTRY_ID_BYTES != len(ids) * _NUMBER_BYTES:
                    raise _damaged(self._path, key, "its entry rows and ids do not pair up")
                rows[key] = (numbers, ids)
        return found, _Stored(rows, top)

    def _remember_entry_list(self, key: str, etag: str, numbers: bytes, ids: bytes) -> None:
        """Remember what ``key`` holds once this write commits (if it does not, its ETag
        is never the stored one, and the entry is never used)."""
        self._forget_entry_list(key)
        self._entry_lists[key] = (etag, numbers, ids)
        self._entry_list_bytes += len(numbers) + len(ids)
        while self._entry_list_bytes > ENTRY_LISTS_MEMO_BYTES:
            _key, (_etag, old_numbers, old_ids) = self._entry_lists.popitem(last=False)
            self._entry_list_bytes -= len(old_numbers) + len(old_ids)

    def _forget_entry_list(self, key: str) -> None:
        known = self._entry_lists.pop(key, None)
        if known is not None:
            self._entry_list_bytes -= len(known[1]) + len(known[2])

    def _upsert(
        self, template: str, item: str, chunk: builtins.list[tuple[Any, ...]], value: int
    ) -> None:
        """One upsert of ``chunk``'s rows (their column ``value`` the bytes to weigh)."""
        # Padded to one of _SIZES with the chunk's smallest row again: the same row
        # written twice in one statement is written once (its second upsert sets the
        # same values), and statements of a few sizes stay prepared.
        missing = _size_for(len(chunk)) - len(chunk)
        if missing:
            chunk = chunk + [min(chunk, key=lambda row: len(row[value]))] * missing
        parameters: builtins.list[object] = []
        for row in chunk:
            parameters += row
        sql = _statement(template, len(chunk), item)
        self._cursor.execute(sql, parameters)
        weight = sum(len(row[value]) for row in chunk)
        # A row's leaf page at least, and its value's overflow pages.
        self._wal_pages += len(chunk) + weight // PAGE_SIZE
        if weight >= _UNBIND_BYTES:
            self._unbinding.append((sql, len(parameters)))

    # ETags alone (added in session 24; public, but kept here at the end of the class).

    async def get_etags(self, keys: Sequence[str]) -> dict[str, str]:
        """The current ETag of each key that exists among ``keys``, in the order asked,
        without the values (none is copied, see :data:`_ETAGS_AS_JSON`). On the event
        loop's thread for one statement's worth of keys (an ETag is 32 bytes), else on a
        reader thread."""
        if isinstance(keys, str):  # a str is a Sequence[str] too: one key per character
            raise TypeError("get_etags() takes a sequence of keys, not one str")
        wanted = list(dict.fromkeys(keys))
        for key in wanted:
            _check_key(key)
        if not wanted:
            return {}
        found: dict[str, str] | object = _ELSEWHERE
        if len(wanted) <= _CHUNK and not self._closed:
            found = self._inline(functools.partial(self._get_etags, wanted))
        if not isinstance(found, dict):
            found = await self._read(
                f"read the ETags of {len(wanted)} keys", functools.partial(self._get_etags, wanted)
            )
        return {key: found[key] for key in wanted if key in found}

    @staticmethod
    def _get_etags(keys: Sequence[str], connection: sqlite3.Connection) -> dict[str, str]:
        # One row per statement, not one per key (see _apply: on the event loop's thread
        # too, every step lets another thread take the GIL). More than one chunk: one
        # snapshot, as in _get_many.
        with _read_transaction(connection) if len(keys) > _CHUNK else contextlib.nullcontext():
            return _etags_in(connection, keys)


def _answer(answered: Sequence[_Answer]) -> None:
    """On a caller's loop: settle each future of a committed (or failed) group."""
    for done, outcome in answered:
        if done.done():  # cancelled meanwhile
            continue
        if outcome is None:
            done.set_result(None)
        else:
            done.set_exception(outcome)


def _caused(error: StoreError, cause: BaseException) -> StoreError:
    """``error`` chained to ``cause``, as ``raise error from cause`` would (it is handed
    to a future, not raised here)."""
    error.__cause__ = cause
    return error


#: Rows per upsert statement (of items: six parameters each, of entries three: under
#: the 32766 parameters of SQLite since 3.32; _require_features asks for 3.38).
_UPSERT_ROWS = 256
#: A value kept whole: its entry columns emptied (a new row takes their defaults), so
#: its parameters are the three they always were.
_UPSERT = (
    "INSERT INTO items (key, value, etag) VALUES {}"
    " ON CONFLICT (key) DO UPDATE SET value = excluded.value, etag = excluded.etag,"
    " entries_at = 0, entry_rows = x'', entry_ids = x''"
)
#: A value kept as a head and entry rows.
_UPSERT_HEAD = (
    "INSERT INTO items (key, etag, value, entries_at, entry_rows, entry_ids) VALUES {}"
    " ON CONFLICT (key) DO UPDATE SET value = excluded.value, etag = excluded.etag,"
    " entries_at = excluded.entries_at, entry_rows = excluded.entry_rows,"
    " entry_ids = excluded.entry_ids"
)
_DELETE = "DELETE FROM items WHERE key IN ({})"
#: Entry rows get numbers never held by a row at the time (above the largest), so an
#: insert never meets an existing row; the upsert only makes a padded repeat harmless.
_ADD_ENTRIES = (
    "INSERT INTO entries (number, id, value) VALUES {}"
    " ON CONFLICT (number) DO UPDATE SET id = excluded.id, value = excluded.value"
)
_DROP_ENTRIES = "DELETE FROM entries WHERE number IN ({})"
_GET_HEADS = (
    "SELECT key, etag, value, entries_at, entry_rows, entry_ids FROM items WHERE key IN ({})"
)
_GET_ENTRIES = "SELECT number, id, value FROM entries WHERE number IN ({})"

#: Values written by one upsert statement from which on the statement is made to let go
#: of them (:func:`_unbind`). A migration's commits (a few KB) stay under it; a cycle's
#: batch of objects (200 of up to 60 KB in the soak) does not. Bounds what the write
#: connection's upserts hold between commits to 64 KiB per size, 1 MiB in all.
_UNBIND_BYTES = 64 << 10

#: sqlite3 binds an exact ``int``, ``float``, ``str`` or ``bytearray`` as it is, but
#: first asks its adapter registry about any other parameter, ``bytes`` included; with
#: no adapter registered that lookup falls through to asking the protocol for
#: ``__adapt__`` (an attribute error built and dropped) and then binds the value itself.
#: Every value written is ``bytes`` (an object, an outbox event): about 3,300
#: instructions each, two or more per cycle, 8 % of the writer thread's instructions
#: per P5 cycle (session 37). Registered: ``bytes.__bytes__``, which answers the very
#: same object for an exact ``bytes`` (the registry is keyed by exact type), so what is
#: bound is what was bound before. The registry is sqlite3's, for the process; a
#: ``bytes`` adapter registered by anyone else would have applied before too.
sqlite3.register_adapter(bytes, bytes.__bytes__)

#: What no SQLite parameter can be (see _unbind).
_UNBINDABLE = object()


def _unbind(cursor: sqlite3.Cursor, sql: str, count: int) -> None:
    """Make the prepared statement ``sql`` (of ``count`` parameters) drop the values
    last bound to it.

    Why: SQLite copies every bound value (Python binds with ``SQLITE_TRANSIENT``) and
    keeps the copy until the statement is bound again or finalized, and Python's
    sqlite3 never calls ``sqlite3_clear_bindings``: it resets a statement after its run
    and keeps it in the connection's cache. So each size of upsert (:data:`_SIZES`)
    held the last rows written with it: in the soak, about 8 MiB of object values on
    the write connection, growing as larger sizes and larger objects came along (the
    per-server SQLite heap of 17-23 MiB that page caches did not explain; session 32).

    How, with nothing but the public API: bind ``0`` to all parameters but the last
    and something no parameter can be to the last. sqlite3 binds in order, so each
    earlier parameter's copy is freed, then refuses the last before anything runs: no
    step, no lock, nothing written, and the statement stays prepared in the cache. An
    ``int``, not ``None``: sqlite3 binds an exact ``int``, ``float``, ``str`` or
    ``bytearray`` as it is, but first asks its adapter registry about anything else,
    and for ``None`` that lookup fails through two attribute errors, each formatted and
    dropped (about 3,300 instructions a parameter, three a row: a fifth of the writer
    thread's instructions per cycle, session 36). Runs on the writer thread once the
    group's callers are answered. A sqlite3 that checked every parameter before binding any
    would make this a no-op (tests/test_sqlite_bound_values.py measures the heap)."""
    try:
        cursor.execute(sql, [*itertools.repeat(0, count - 1), _UNBINDABLE])
    except sqlite3.ProgrammingError:  # the refusal of the last parameter, as intended
        return
    raise AssertionError("sqlite3 bound an object() as a parameter")  # pragma: no cover


# No covering index of (key, etag): it cost every commit that creates keys 25-40 us
# (its pages written and synced too; measured, session 24). A new file stores the ETag
# before the value instead (_ensure_schema), so that reading it touches the row's
# first page only: in a file whose value comes first, SQLite walks every overflow page
# of the value to reach the ETag. After commits (which leave a reader's page cache
# cold), 128 ETags of 24 KB rows took 11-12 us a key value-first and 4.0-4.2 us
# ETag-first (session 28). Every commit reads its keys' ETags (the preconditions), and
# a cycle's batch reads its objects' ETags on the event loop's thread (get_etags).
_ETAGS_AS_JSON = "SELECT json_group_object(key, etag) FROM items WHERE key IN ({})"


#: ``json.loads`` of a JSON object SQLite made (no whitespace around it): the decoder's
#: scanner called at once, without ``loads``'s and ``decode``'s checks and two regular
#: expression matches around it.
_scan_json: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def _json_object(document: str) -> dict[str, Any]:
    found: dict[str, Any] = _scan_json(document, 0)[0]
    return found


def _etags_in(connection: sqlite3.Connection, keys: Sequence[str]) -> dict[str, str]:
    """The ETags of the existing keys among ``keys``, as one row per statement (a JSON object) rather than a row per key: see ``_apply``."""
    found: dict[str, str] = {}
    for start in range(0, len(keys), _CHUNK):
        (document,) = connection.execute(
            *_listed(_ETAGS_AS_JSON, keys[start : start + _CHUNK])
        ).fetchone()
        found.update(json.loads(document))
    return found


#: What the writer reads of the keys it writes, one row per statement (see _apply): the
#: largest entry row number, each key's ETag, and the keys of values kept as a head and
#: entry rows (a JSON array, ``[]`` for most writes: the ETags' object is then taken as
#: it was decoded, with no Python step per key).
_STATE_AS_JSON = (
    "SELECT (SELECT max(number) FROM entries), json_group_object(key, etag),"
    " json_group_array(key) FILTER (WHERE length(entry_rows))"
    " FROM items WHERE key IN ({})"
)
#: The entry rows' numbers and the entries' ids of values kept as rows, as hex.
_ENTRY_LISTS_AS_JSON = (
    "SELECT json_group_object(key, json_array(hex(entry_rows), hex(entry_ids)))"
    " FROM items WHERE length(entry_rows) AND key IN ({})"
)
#: Bytes of entry lists (row numbers and ids, 40 bytes an entry) the writer remembers of
#: the values it kept as rows (SqliteStore._state_in): 1,000 objects of 100 entries.
ENTRY_LISTS_MEMO_BYTES = 4 << 20

#: An entry row's number in a head's list (8 bytes, big-endian).
_NUMBER = struct.Struct(">q")
_NUMBER_BYTES = _NUMBER.size


class _Stored:
    """What :func:`_state_in` read for the writer."""

    __slots__ = ("rows", "top")

    def __init__(self, rows: dict[str, tuple[bytes, bytes]], top: int) -> None:
        #: key -> (its entry rows' numbers, its entries' ids), for values kept as rows
        self.rows = rows
        #: the largest entry row number in the file (0 if none)
        self.top = top


def _numbers(packed: bytes) -> tuple[int, ...]:
    return struct.unpack(f">{len(packed) // _NUMBER_BYTES}q", packed)


def _entry_rows(
    op: PutEntries,
    old: tuple[bytes, bytes] | None,
    number: int,
    added: builtins.list[tuple[int, bytes, bytes]],
    dropped: builtins.list[int],
) -> tuple[bytes, int, bytes, bytes, int] | None:
    """How ``op``'s value is stored as a head and entry rows, given the rows its key
    holds (``old``: their numbers and ids, or None): the head, where the entries go in
    it, the rows' numbers and the entries' ids in order, and the largest number used (new rows are numbered
    from ``number``). Appends the rows to insert to ``added`` and the numbers of rows
    to delete to ``dropped``. A stored row is kept for an entry of equal id (once per
    occurrence), every other entry gets a new row, and every stored row left over is
    dropped. None when the parts do not describe the value (then it is written whole,
    its bytes being what counts)."""
    value, at, ends, ids = op.value, op.entries_at, op.entry_ends, op.entry_ids
    count = len(ends)
    if not (
        count
        and type(ids) is bytes
        and len(ids) == count * ENTRY_ID_BYTES
        and type(at) is int
        and at >= 0
        and ends[0] >= 0
        and at + ends[-1] <= len(value)
    ):
        return None
    old_numbers, old_ids = old if old is not None else (b"", b"")
    width = ENTRY_ID_BYTES
    reusable: dict[bytes, builtins.list[int]] | None = None
    if ids.startswith(old_ids):
        # The value appends to what the key holds (a cycle): every row stays.
        numbers = bytearray(old_numbers)
        first = len(old_ids) // width
    else:
        # Anything else (a compaction dropped the oldest entries, a fold rewrote the
        # last one, another history altogether): matched id by id.
        reusable = {}
        for index, held in enumerate(_numbers(old_numbers)):
            reusable.setdefault(old_ids[index * width : (index + 1) * width], []).append(held)
        numbers = bytearray()
        first = 0
    # The entries cut out of the value must not overlap: their ends (from the last kept
    # one's on) must not decrease. Only those: kept entries are not cut out again.
    cut = ends[first - 1 :] if first else ends
    if not all(map(operator.le, cut, cut[1:])):
        return None
    begin = ends[first - 1] if first else 0
    start = first * width
    if reusable is None:
        # Every row stays: each new entry gets a new row (no id to match, a cycle's
        # case, the loop below without its look-up per entry).
        for end in ends[first:]:
            numbers += _NUMBER.pack(number)
            added.append((number, ids[start : start + width], value[at + begin : at + end]))
            number += 1
            start += width
            begin = end
    else:
        for end in ends:
            entry_id = ids[start : start + width]
            same = reusable.get(entry_id)
            if same:
                numbers += _NUMBER.pack(same.pop())
            else:
                numbers += _NUMBER.pack(number)
                added.append((number, entry_id, value[at + begin : at + end]))
                number += 1
            start += width
            begin = end
        for left in reusable.values():
            dropped += left
    return value[:at] + value[at + ends[-1] :], at, bytes(numbers), ids, number - 1


def _assembled(file: Path, connection: sqlite3.Connection, heads: Iterable[Any]) -> dict[str, Item]:
    """The items of ``heads`` (rows of :data:`_GET_HEADS`), each value whole again: a
    head kept with entry rows gets its entries back, read by number, each checked
    against the id its head lists (a row of another id is never served), and those ids
    with it (:attr:`Item.entry_ids`)."""
    found: dict[str, Item] = {}
    split: builtins.list[tuple[str, str, bytes, int, tuple[int, ...], bytes]] = []
    for key, etag, value, at, numbers, ids in heads:
        if numbers:
            split.append((key, etag, value, at, _numbers(numbers), ids))
        else:
            found[key] = Item(key=key, value=value, etag=etag)
    if not split:
        return found
    wanted = [number for *_, numbers, _ids in split for number in numbers]
    rows: dict[int, tuple[bytes, bytes]] = {}
    for start in range(0, len(wanted), _CHUNK):
        for number, entry_id, entry in connection.execute(
            *_listed(_GET_ENTRIES, wanted[start : start + _CHUNK])
        ):
            rows[number] = (entry_id, entry)
    width = ENTRY_ID_BYTES
    for key, etag, head, at, numbers, ids in split:
        parts = [head[:at]]
        for index, number in enumerate(numbers):
            row = rows.get(number)
            if row is None or row[0] != ids[index * width : (index + 1) * width]:
                raise _damaged(file, key, f"its entry row {number} is missing or not its own")
            parts.append(row[1])
        parts.append(head[at:])
        found[key] = Item(key=key, value=b"".join(parts), etag=etag, entry_ids=ids)
    return found


def _damaged(file: Path, key: str, problem: str) -> StoreError:
    return StoreError(
        f"the SQLite store {file} is damaged: key {key!r}: {problem}",
        hint="restore the file from a backup",
    )


def _select_chunked(connection: sqlite3.Connection, sql: str, keys: Sequence[str]) -> Iterator[Any]:
    for start in range(0, len(keys), _CHUNK):
        yield from connection.execute(*_listed(sql, keys[start : start + _CHUNK]))


#: The sizes a statement's list of keys or rows comes in (powers of two and one and a
#: half times them, up to :data:`_CHUNK`). Why: sqlite3 keeps the last 128 statements
#: prepared per connection, and a statement per size seen (1 to 512 keys, 1 to 256 rows)
#: filled that cache slowly with statements of up to about 100 KB each, about 13 MiB
#: per connection and four connections per store: a served host's RSS crept for its
#: first twenty minutes of the soak (docs/benchmarks.md), and every size evicted from
#: the cache was prepared again (a 128-row upsert: about 310 us; a 128-key select:
#: about 95 us). With these sizes a list is padded by at most half, and a connection
#: holds at most 18 statements per kind, all prepared once.
_SIZES = tuple(sorted({1 << n for n in range(10)} | {3 << n for n in range(8)}))


@functools.lru_cache(maxsize=1024)
def _size_for(count: int) -> int:
    """The smallest of :data:`_SIZES` that holds ``count`` (at most :data:`_CHUNK`)."""
    return next(size for size in _SIZES if size >= count)


def _listed(template: str, keys: Sequence[_K]) -> tuple[str, Sequence[_K]]:
    """``template``'s statement for ``keys`` (at least one, at most :data:`_CHUNK`) and
    its parameters: the keys, the last one repeated up to a size of :data:`_SIZES` (a
    key listed twice in ``IN (...)`` matches its row once)."""
    missing = _size_for(len(keys)) - len(keys)
    if not missing:
        return _statement(template, len(keys)), keys
    padded = builtins.list(keys)
    padded.extend(itertools.repeat(keys[-1], missing))
    return _statement(template, len(padded)), padded


@functools.lru_cache(maxsize=256)
def _statement(template: str, size: int, item: str = "?") -> str:
    """``template`` with ``size`` items (``?`` or a row of them) in its list."""
    return template.format(", ".join([item] * size))


@contextlib.contextmanager
def _read_transaction(connection: sqlite3.Connection) -> Iterator[None]:
    connection.execute("BEGIN DEFERRED")
    try:
        yield
    finally:
        _rollback(connection)


# --- helpers (pure, or run on the worker thread) ------------------------------------


def _connect(file: Path, busy_timeout: float) -> sqlite3.Connection:
    """Open ``file`` and make it ready; runs on the store's worker thread."""
    try:
        # isolation_level=None: no implicit transactions; this module issues BEGIN
        # IMMEDIATE / COMMIT itself so that it knows exactly when the write lock is held.
        connection = sqlite3.connect(file, timeout=busy_timeout, isolation_level=None)
    except sqlite3.Error as exc:
        raise _store_error(exc, file, "open the store") from exc
    try:
        _configure(connection, file, busy_timeout)
    except BaseException:
        connection.close()
        raise
    return connection


#: WAL pages (estimated, 4 KiB each) the writer writes between two checkpoints on the
#: checkpointer thread: SQLite's default auto-checkpoint size, so the WAL stays as
#: short as before (a long WAL makes every read of a page of the file search more of
#: the WAL's index: with none, P5 lost 10-20 % of its rate within seconds, session 42).
CHECKPOINT_PAGES = 1000
#: The writer connection's own automatic checkpoint (in its COMMIT): a bound on the WAL.
#: Needed even when the checkpointer keeps up: SQLite starts the WAL again from its
#: beginning only when a write transaction begins with every frame copied, and a
#: writer that takes its next group at once always begins before the checkpoint of
#: the last one has ended. So the WAL grows to this size, the writer copies what the
#: checkpointer has not (its last group or so) and the next group starts it again.
_WRITER_AUTOCHECKPOINT = 4 * CHECKPOINT_PAGES


def _connect_checkpointer(file: Path, busy_timeout: float) -> sqlite3.Connection:
    """The checkpointer thread's connection: it runs nothing but checkpoints, which sync
    the WAL before copying it and the file after, as the writer's did (FULL)."""
    # Closed from close() once the checkpointer thread has stopped.
    connection = sqlite3.connect(
        file, timeout=busy_timeout, isolation_level=None, check_same_thread=False
    )
    try:
        connection.execute("PRAGMA synchronous = FULL")
    except BaseException:
        connection.close()
        raise
    return connection


def _enable_wal(connection: sqlite3.Connection, busy_timeout: float) -> str:
    """Switch the file to WAL. Switching takes an exclusive lock and SQLite does not run
    the busy handler for it, so two processes opening a new file at once can get
    "database is locked" immediately: wait and retry within the busy timeout."""
    from gateway._retry import locked_file  # tenacity only where a store is opened

    for attempt in locked_file(busy_timeout, locked=lambda exc: "locked" in str(exc)):
        with attempt:
            (mode,) = connection.execute("PRAGMA journal_mode = WAL").fetchone()
            return str(mode)
    raise AssertionError("tenacity returns or raises")


def _configure(connection: sqlite3.Connection, file: Path, busy_timeout: float) -> None:
    try:
        connection.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        # Before anything is written (a no-op on an existing file): see PAGE_SIZE.
        connection.execute(f"PRAGMA page_size = {PAGE_SIZE}")
        mode = _enable_wal(connection, busy_timeout)
        if str(mode).lower() != "wal":
            raise StoreError(
                f"the SQLite store {file} cannot use write-ahead logging"
                f" (journal mode stayed {mode!r})",
                hint="put the state file on a local file system",
            )
        # Per connection, not stored in the file: every connection must set it.
        connection.execute("PRAGMA synchronous = FULL")
        connection.execute(f"PRAGMA wal_autocheckpoint = {_WRITER_AUTOCHECKPOINT}")
        # The writer's connection keeps SQLite's default page cache (2,000 KiB), as the readers
        # do. Session 42 gave it 8 MiB: a group commit of P5's cycles dirties more pages than
        # 2,000 KiB hold, and P5 ran about 5 % faster with it (session 43, alternating pairs).
        # But a connection drops its whole page cache when it begins a transaction after
        # another *process* committed to the file, and beside a running server that is every
        # `gateway migrate` (the library's Host.migrate on the source's own store). In the soak
        # the writer's cache was dropped about every 1.6 s, holding 0.1-8.4 MiB: no gain there,
        # and up to 8 MiB of pages freed and made again on the writer's heap each time. Soaks
        # with it read RSS slopes of 1.15, 1.05 and 1.66 MiB/min, without it 0.70 and 0.92,
        # against a must of < 1 (docs/benchmarks.md, session 43).
        _require_features(connection)
        created = _ensure_schema(connection, file)
    except sqlite3.Error as exc:
        raise _store_error(exc, file, "open the store") from exc
    if created:
        # SQLite fsyncs the file's contents but not the directory entry that makes a
        # new file findable after a power loss; do that once, when the file is new.
        _fsync_directory(file.parent)


#: What the store's statements need of the SQLite library Python was built with: an
#: upsert (3.24), the JSON functions (``_ETAGS_AS_JSON``; built in since 3.38, an
#: option before) and an aggregate's FILTER clause (3.30, ``_STATE_AS_JSON``). Tried
#: once per connection, so a library without them is named at open time rather than
#: failing the first commit.
_FEATURE_PROBE = "SELECT json_group_object('key', 'etag'), json_group_array('key') FILTER (WHERE 1)"


def _require_features(connection: sqlite3.Connection) -> None:
    try:
        connection.execute(_FEATURE_PROBE).fetchone()
    except sqlite3.OperationalError as exc:
        raise StoreError(
            f"this Python's SQLite library ({sqlite3.sqlite_version}) lacks what the "
            f"store needs: {exc}",
            hint="use a Python built with SQLite 3.38 or later (or with the JSON1 "
            "extension), or the Dapr state store",
        ) from exc
    if sqlite3.sqlite_version_info < (3, 24):
        raise StoreError(
            f"this Python's SQLite library ({sqlite3.sqlite_version}) has no upsert",
            hint="use a Python built with SQLite 3.38 or later, or the Dapr state store",
        )


def _ensure_schema(connection: sqlite3.Connection, file: Path) -> bool:
    """Create the table in a new file; returns whether it did."""
    # IMMEDIATE so that two processes opening a new file at once do not both create.
    connection.execute("BEGIN IMMEDIATE")
    try:
        (version,) = connection.execute("PRAGMA user_version").fetchone()
        created = False
        if version == 0:
            (tables,) = connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
            if tables:
                raise StoreError(
                    f"{file} is an SQLite database the gateway did not create",
                    hint="point the gateway at a new file or at its own state file",
                )
            # A rowid table, not WITHOUT ROWID: values may be megabytes, and SQLite
            # advises WITHOUT ROWID only for small rows. The ETag before the value: a
            # row stores its columns in this order, and a value larger than a page
            # spills into overflow pages, so an ETag after it is read by walking them
            # (see _ETAGS_AS_JSON). Every statement names its columns, so a file made
            # with the value first (before session 28) is read and written as before.
            # The entry rows' columns before the value too (read with the ETag by every
            # write of such a value, see _state_in).
            connection.execute(
                "CREATE TABLE items ("
                " key TEXT PRIMARY KEY NOT NULL,"
                " etag TEXT NOT NULL,"
                f" {_ENTRY_COLUMNS},"
                " value BLOB NOT NULL)"
            )
            connection.execute(_CREATE_ENTRIES)
            connection.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
            created = True
        elif version == 1:
            # A file of an earlier gateway: its values stay single rows (empty entry
            # columns), read as before; new columns go last, which every statement allows
            # (each names its columns). Once it is version 2 that gateway refuses it,
            # as it must: it would read a head as the whole value.
            for column in _ENTRY_COLUMNS.split(", "):
                connection.execute(f"ALTER TABLE items ADD COLUMN {column}")
            connection.execute(_CREATE_ENTRIES)
            connection.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
        elif version != _SCHEMA_VERSION:
            raise StoreError(
                f"the SQLite store {file} has schema version {version};"
                f" this gateway understands version {_SCHEMA_VERSION}",
                hint="run the gateway version that wrote the file, or restore a backup",
            )
        connection.execute("COMMIT")
    except BaseException:
        _rollback(connection)
        raise
    return created


#: A value's entry rows (schema version 2): where in the head its entries go, their rows'
#: numbers (8 bytes each, in order) and their ids; all empty for a value kept whole.
_ENTRY_COLUMNS = (
    "entries_at INTEGER NOT NULL DEFAULT 0, entry_rows BLOB NOT NULL DEFAULT x'',"
    " entry_ids BLOB NOT NULL DEFAULT x''"
)
#: Entry rows by number, in the order they were written: a cycle's new entries go to the
#: table's last pages together (keyed by object and position, each went to a page of
#: its own: twice the pages written per commit in a simulation, session 38).
_CREATE_ENTRIES = (
    "CREATE TABLE entries (number INTEGER PRIMARY KEY, id BLOB NOT NULL, value BLOB NOT NULL)"
)


def _fsync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform can open a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _rollback(connection: sqlite3.Connection) -> None:
    # SQLite may already have rolled back by itself (after an I/O error, for one); the
    # error being raised matters more than a failed ROLLBACK.
    if connection.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            connection.execute("ROLLBACK")


def _new_etag() -> str:
    # 128 random bits rather than a counter kept in the file. A counter rewinds when
    # the file is restored from a backup or recreated, and would then hand out ETags
    # that callers may still hold from before, letting a stale writer's precondition
    # pass. Random tokens never depend on the file's history; a repeat is negligible
    # (about 2**-64 after 2**32 writes) and needs no shared row for every commit.
    return secrets.token_hex(16)


class _Writes(tuple[Operation, ...]):
    """One caller's operations, with the ETag each of its puts writes.

    The ETags are chosen when the call is made, on the caller's thread, so that
    :meth:`SqliteStore.transact` can return them without reading the keys again (a cycle
    then knows the ETag of the object it wrote, and its next cycle needs no read of the
    value to tell that nothing else wrote it since). A write that does not commit used
    an ETag nobody ever sees. The operations travel through the writer thread's group
    commit unchanged, as the tuple they are."""

    etags: dict[str, str]

    def __new__(cls, operations: Iterable[Operation]) -> _Writes:
        writes = super().__new__(cls, operations)
        writes.etags = {op.key: _pooled_etag() for op in writes if isinstance(op, Put)}
        return writes


#: Random bytes drawn at once for the ETags :class:`_Writes` chooses, per thread.
_ETAG_POOL_BYTES = 4096
_etag_pool = threading.local()


def _fresh_etag_pool() -> None:
    # A forked child must not hand out the ETags its parent has yet to use.
    global _etag_pool
    _etag_pool = threading.local()


os.register_at_fork(after_in_child=_fresh_etag_pool)


def _pooled_etag() -> str:
    """What :func:`_new_etag` gives (128 bits from the OS's random source, as hex), the
    bytes drawn 4 KiB at a time. ETags are chosen on the event loop's thread, and
    os.urandom lets go of the GIL for its system call: under P5 each one cost the loop
    about 5 us waiting to take the GIL back from the writer thread (one ETag per
    object written), against one call per 256 ETags here. The 256 are written out as
    hex at once and handed out from a list: reading and setting a thread-local
    position and slicing for each cost about 4,000 instructions an ETag (session 37)."""
    etags: builtins.list[str] | None = getattr(_etag_pool, "etags", None)
    if not etags:
        text = os.urandom(_ETAG_POOL_BYTES).hex()
        etags = _etag_pool.etags = [text[at : at + 32] for at in range(0, len(text), 32)]
    return etags.pop()


#: Enum members read for every operation written, bound once: in Python 3.11 ``EnumType`` defines
#: ``__getattr__``, so each ``Kind.MEMBER`` read goes through the class's attribute hook
#: (about 420 instructions against about 40 for a module global; session 37).
_ANY = Expect.ANY
_ABSENT = Expect.ABSENT


def _check_precondition(op: Operation, found: str | None) -> None:
    """Raise :class:`ConcurrencyError` if ``op``'s precondition fails on ``found``."""
    verb = "put" if isinstance(op, Put) else "delete"
    expected = op.etag
    if expected is _ANY:
        return
    if expected is _ABSENT:
        if found is None:
            return
        problem = "expected the key to be absent but it exists"
    elif found is None:
        problem = f"expected ETag {expected!r} but the key does not exist"
    elif found != expected:
        # The current ETag is left out on purpose: reasons can cross the wire, and the
        # caller must re-read the value anyway before it may use the new ETag.
        problem = f"ETag mismatch: expected {expected!r} but the key has a different ETag"
    else:
        return
    raise ConcurrencyError(
        f"{verb} of key {op.key!r} refused: {problem}",
        hint="somebody else wrote first; read the key again and decide whether to retry",
    )


def _check_preconditions(ops: tuple[Operation, ...], found: dict[str, str]) -> None:
    """:func:`_check_precondition` of each of ``ops`` against ``found`` (key -> ETag of
    the keys that exist), in order; those that pass at a glance (no precondition, the
    ETag found, absent as expected: nearly every one) without a call each."""
    get = found.get
    for op in ops:
        expected, current = op.etag, get(op.key)
        if expected is _ANY or expected == current or (expected is _ABSENT and current is None):
            continue  # an ETag str equals a str only; an Expect equals nothing found
        _check_precondition(op, current)


def _etags_of(ops: tuple[Operation, ...]) -> dict[str, str]:
    """key -> the ETag each put of ``ops`` writes: those :class:`_Writes` chose, or new
    ones (a tuple of operations that did not come through :meth:`SqliteStore.transact`)."""
    if isinstance(ops, _Writes):
        return ops.etags
    return {op.key: _new_etag() for op in ops if isinstance(op, Put)}


def _check_operations(ops: tuple[Operation, ...]) -> None:
    seen: set[str] = set()
    for op in ops:
        # What passes every check below, told by exact types first (every cycle's
        # batch checks a few hundred operations; the checks one by one cost about
        # 2,000 instructions each): a non-empty ASCII str key (ASCII always encodes),
        # a str or Expect ETag, bytes for a put's value, a key not seen yet. Anything
        # else takes the checks, which say what is wrong.
        kind = type(op)
        if kind is Put or kind is Delete or kind is PutEntries:
            key, etag = op.key, op.etag
            if (
                type(key) is str
                and key
                and key.isascii()
                and (type(etag) is str or type(etag) is Expect)
                and (kind is Delete or type(getattr(op, "value", None)) is bytes)
                and key not in seen
            ):
                seen.add(key)
                continue
        if not isinstance(op, Put | Delete):
            raise TypeError(f"a transaction takes Put and Delete, got {type(op).__name__}")
        _check_key(op.key)
        if not isinstance(op.etag, str | Expect):
            raise TypeError(
                f"the etag of key {op.key!r} must be a str or Expect, got {type(op.etag).__name__}"
            )
        if isinstance(op, Put) and not isinstance(op.value, bytes):
            raise TypeError(
                f"the value of key {op.key!r} must be bytes, got {type(op.value).__name__}"
            )
        if op.key in seen:
            raise StoreError(
                f"the transaction names key {op.key!r} more than once",
                hint="merge the operations on that key into one",
            )
        seen.add(op.key)


def _check_key(key: str) -> None:
    if type(key) is str and key and key.isascii():
        return  # what the checks below find of it: ASCII always encodes as UTF-8
    if not isinstance(key, str):
        raise TypeError(f"keys are str, got {type(key).__name__}")
    if not key:
        raise ValueError("keys must not be empty")
    _check_encodable(key, "key")


def _check_encodable(text: str, what: str) -> None:
    # Lone surrogates cannot be stored as UTF-8 text and would break the ordering.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{what} {text!r} is not valid Unicode text: {exc.reason}") from exc


def _keys_in_range(
    connection: sqlite3.Connection,
    prefix: str,
    start_after: str | None,
    *,
    bound: int | None = None,
) -> Iterator[str]:
    """Every key under ``prefix`` (listable or not) greater than ``start_after``,
    ascending; at most ``bound`` of them."""
    sql, params = _range_query(prefix, start_after, bound)
    return (key for (key,) in connection.execute(sql, params))


def _range_query(
    prefix: str, start_after: str | None, bound: int | None
) -> tuple[str, builtins.list[str]]:
    """The SELECT of :func:`_keys_in_range`: one range on the primary key, not LIKE/GLOB
    ('%', '_', '*' and '?' in a prefix are ordinary characters here, and the index serves
    the scan). Its lower end is the greater of the prefix (included) and the cursor
    (excluded); Python's str order is SQLite's (see the module docstring)."""
    if start_after is not None and start_after >= prefix:
        sql = "SELECT key FROM items WHERE key > ?"
        params = [start_after]
    else:
        sql = "SELECT key FROM items WHERE key >= ?"
        params = [prefix]
    upper = _prefix_successor(prefix)
    if upper is not None:
        sql += " AND key < ?"
        params.append(upper)
    sql += " ORDER BY key"
    if bound is not None:
        sql += f" LIMIT {int(bound)}"
    return sql, params


def _prefix_successor(prefix: str) -> str | None:
    """The smallest string greater than every string that starts with ``prefix``.

    ``None`` when there is none (empty prefix, or only U+10FFFF characters): then the
    range has no upper bound. Code-point order equals SQLite's UTF-8 byte order, so the
    bound is computed on code points; surrogates are skipped because they have no UTF-8
    form (after U+D7FF comes U+E000).
    """
    chars = list(prefix)
    while chars:
        last = ord(chars.pop())
        if last < 0x10FFFF:
            following = last + 1
            if 0xD800 <= following <= 0xDFFF:
                following = 0xE000
            return "".join(chars) + chr(following)
    return None


def _describe(ops: tuple[Operation, ...]) -> str:
    if len(ops) == 1:
        verb = "put" if isinstance(ops[0], Put) else "delete"
        return f"{verb} key {ops[0].key!r}"
    return f"apply a transaction of {len(ops)} operations"


def _store_error(exc: sqlite3.Error, file: Path, action: str) -> StoreError:
    """The gateway error for an ``sqlite3`` failure, naming the file and the action."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
    reason = f"cannot {action} in the SQLite store {file}: {exc} ({name})"
    hint = _HINTS.get(primary) if primary is not None else None
    if primary in _UNAVAILABLE_CODES:
        return StoreUnavailableError(reason, hint=hint)
    return StoreError(reason, hint=hint)
