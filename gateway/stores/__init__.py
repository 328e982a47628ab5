"""The state store seam: what the gateway needs from durable storage, and nothing more.

Semantics every implementation keeps (the contract tests in ``tests/stores`` check them):

* **ETags are made by the store.** Every successful write gives the key a new ETag that
  was never used for that key before; callers treat it as an opaque string.
* **First write wins.** Each write states its precondition explicitly: the ETag it read
  (:class:`Put`/:class:`Delete` with ``etag="..."``), that the key must not exist yet
  (``etag=Expect.ABSENT``), or, only for data nobody races on, ``Expect.ANY``. A failed
  precondition raises :class:`~gateway.errors.ConcurrencyError` and writes nothing.
* **Transactions are all or nothing.** :meth:`StateStore.transact` applies every
  operation or none; one failed precondition fails the whole transaction.
* **A write that returned is durable**: it survives a crash of the process right after.
* **Keys are plain strings**; :meth:`StateStore.list` returns them in ascending order
  (code-point order, which is UTF-8 byte order), and ``start_after`` resumes a listing
  after the last key a previous page returned, so a caller that looks at a bounded batch
  at a time can walk the whole prefix instead of seeing its first keys only.
* **Only listable keys are listed.** Keys matching :data:`UNLISTED` are read and written
  by exact key only: the gateway never enumerates them, so a store may keep no listing
  index for them (the Dapr store keeps none), and every store leaves them out of
  :meth:`StateStore.list` and refuses a prefix that lies inside them
  (:func:`check_listable`). The embedded store refuses too, so code that starts listing
  such keys fails its tests there, not only on Dapr.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

#: Keys never listed: custody records (``custody/<object>``, read by object id) and a
#: tenant's fence, hold and usage records (``t/<tenant>/fence/…``, ``held/…``, ``usage``),
#: each read by exact key, and lineage archive segments (``t/<tenant>/archive/…``, found
#: through their object's archive index, gateway/runtime/compaction.py). On Dapr every listable create or delete also rewrites an index
#: leaf; these are written on every handoff and never enumerated. Blob chunks stay
#: listable: chunks orphaned by a crash can only be found by listing them.
UNLISTED = re.compile(r"custody/|t/[^/]+/(?:fence/|held/|usage$|archive/)")


def listable(key: str) -> bool:
    """Whether ``key`` is one that :meth:`StateStore.list` returns."""
    return UNLISTED.match(key) is None


def check_listable(prefix: str) -> None:
    """Refuse a listing of a prefix inside :data:`UNLISTED` (nothing there is listed, so
    the answer would be wrong, not empty)."""
    if UNLISTED.match(prefix):
        from gateway.errors import StoreError

        raise StoreError(
            f"keys under {prefix!r} are never listed",
            hint="read them by exact key; gateway.stores.UNLISTED names the unlisted keys",
        )


def check_start_after(start_after: str | None) -> None:
    """Refuse a listing cursor that is not text a store can order: the same rule as for a
    key (a lone surrogate has no UTF-8 form, so it has no place in the stores' order)."""
    if start_after is None:
        return
    if not isinstance(start_after, str):
        raise TypeError(f"start_after must be str or None, got {type(start_after).__name__}")
    try:
        start_after.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"start_after {start_after!r} is not valid Unicode text: {exc.reason}"
        ) from exc


class Expect(enum.Enum):
    """A precondition that is not an ETag."""

    ABSENT = "absent"  #: the key must not exist (create)
    ANY = "any"  #: no precondition (last write wins); never for protocol state


@dataclass(frozen=True, slots=True, kw_only=True)
class Item:
    """A stored value and the ETag it was read with.

    ``entry_ids``: the ids the value's lineage entries were written with
    (:attr:`PutEntries.entry_ids`), when the store kept them (the embedded store, for a
    value it holds as a head and entry rows), else empty. A reader that decodes the
    value and writes it back with entries appended gives them back for the entries it
    kept, instead of hashing each of those entries again: they are the ids the store
    holds for those very rows, so equal ids still mean equal bytes."""

    key: str
    value: bytes
    etag: str
    entry_ids: bytes = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class Put:
    """Write ``value`` at ``key`` if the precondition holds."""

    key: str
    value: bytes
    etag: str | Expect


@dataclass(frozen=True, slots=True, kw_only=True)
class Delete:
    """Remove ``key`` if the precondition holds (``Expect.ANY`` also accepts a missing key)."""

    key: str
    etag: str | Expect


#: Bytes of one entry's id in :class:`PutEntries`.
ENTRY_ID_BYTES = 32


@dataclass(frozen=True, slots=True, kw_only=True)
class PutEntries(Put):
    """A :class:`Put` whose value is also told as parts: ``value[:entries_at]``, then its
    entries in order (entry ``i`` is ``value[entries_at + entry_ends[i - 1] :
    entries_at + entry_ends[i]]``, the first starting at ``entries_at``), then the rest.

    ``value`` is the whole value, what every read returns, so a store may ignore the
    parts (the Dapr store does). The embedded store keeps the entries as rows of their
    own, so that writing an object whose record grew by one lineage entry writes a
    head and that entry, not the whole record again (docs/storage.md).
    ``entry_ids`` holds :data:`ENTRY_ID_BYTES` per entry, a collision-resistant digest
    of that entry's bytes (the lineage's leaf hash): a store keeps a row it already
    holds for the key under an equal id instead of writing it again, so equal ids must
    mean equal bytes. Which rows it holds it decides from what it stored, never from
    what the writer believes was stored."""

    entries_at: int
    entry_ends: Sequence[int]
    entry_ids: bytes


Operation = Put | Delete


@runtime_checkable
class StateStore(Protocol):
    """Durable key/value state with ETags, transactions and prefix listing."""

    async def get(self, key: str) -> Item | None:
        """The current value and ETag, or ``None`` if the key does not exist."""
        ...

    async def get_many(self, keys: Sequence[str]) -> dict[str, Item]:
        """The items that exist among ``keys`` (missing keys are left out)."""
        ...

    async def get_etags(self, keys: Sequence[str]) -> dict[str, str]:
        """The current ETag of each key that exists among ``keys`` (missing keys are left
        out): :meth:`get_many` without the values, for a caller that holds a value it
        read or wrote under some ETag and only needs to know whether it is still the
        current one (ETags are never reused for a key, so an equal ETag means the same
        value). A store that cannot read ETags alone reads the values and drops them."""
        ...

    async def transact(self, operations: Sequence[Operation]) -> dict[str, str] | None:
        """Apply all operations atomically.

        Returns the new ETag of every key a :class:`Put` wrote, when the store knows
        them (the embedded store does), or ``None`` when it does not (Dapr's state API
        returns no ETags): then read the key to learn its new ETag.

        Raises :class:`~gateway.errors.ConcurrencyError` (naming the first key whose
        precondition failed) and changes nothing if any precondition fails.
        """
        ...

    async def put(self, key: str, value: bytes, *, etag: str | Expect) -> None:
        """A transaction of one :class:`Put`."""
        ...

    async def delete(self, key: str, *, etag: str | Expect) -> None:
        """A transaction of one :class:`Delete`."""
        ...

    async def list(
        self, prefix: str, *, limit: int | None = None, start_after: str | None = None
    ) -> list[str]:
        """Listable keys starting with ``prefix``, ascending (see :data:`UNLISTED`); at
        most ``limit``; only keys greater than ``start_after`` when it is given (it need
        not exist, nor start with ``prefix``): the cursor of a paged listing."""
        ...

    async def close(self) -> None:
        """Release connections and threads; the store is unusable afterwards."""
        ...


class PrefixWalk:
    """Bounded pages of one prefix that, pass after pass, reach every key in it.

    A worker that looks at ``limit`` keys per pass (pruning, delivery) and lists from the
    start of its prefix every time sees the same first keys as long as those stay: keys
    are hash-ordered, so the ones behind a window of young or held records are never
    looked at. The walk resumes after the last key of the previous page instead, and
    starts from the beginning again after a short page (the end of the prefix). Where it
    is lives in memory only: after a restart it starts from the beginning, which is
    correct, only slower to get round.
    """

    __slots__ = ("_after", "prefix")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._after: str | None = None

    async def next_page(self, store: StateStore, *, limit: int) -> list[str]:
        """The next at most ``limit`` keys (``limit`` > 0) of the walk, ascending."""
        if limit <= 0:
            raise ValueError(f"a page holds at least one key, not {limit}")
        keys = await store.list(self.prefix, limit=limit, start_after=self._after)
        if not keys and self._after is not None:
            # The previous page ended exactly at the end: start again now, not a pass later.
            keys = await store.list(self.prefix, limit=limit)
        self._after = keys[-1] if len(keys) >= limit else None
        return keys


#: Deletes per transaction of :func:`delete_unchanged`.
DELETE_CHUNK = 200


async def delete_unchanged(store: StateStore, items: Sequence[Item]) -> int:
    """Delete each item if it is still as read (its ETag); returns how many went.

    For pruning: the items go in transactions of :data:`DELETE_CHUNK`, one fsync each
    rather than one per record (1000 single deletes took 3-4 s on SQLite, 200 a
    transaction 30-100 ms), and a transaction in which one item changed meanwhile, which
    therefore wrote nothing, is done again item by item so that only the changed ones
    stay (for the next pass to judge again)."""
    from gateway.errors import ConcurrencyError, StoreContentionError

    deleted = 0
    for start in range(0, len(items), DELETE_CHUNK):
        chunk = items[start : start + DELETE_CHUNK]
        try:
            await store.transact([Delete(key=item.key, etag=item.etag) for item in chunk])
            deleted += len(chunk)
            continue
        except (ConcurrencyError, StoreContentionError):
            pass  # one of them changed (or, on Dapr, their index leaves kept changing)
        for item in chunk:
            try:
                await store.delete(item.key, etag=item.etag)
                deleted += 1
            except ConcurrencyError:
                continue
    return deleted


__all__ = [
    "DELETE_CHUNK",
    "ENTRY_ID_BYTES",
    "UNLISTED",
    "Delete",
    "Expect",
    "Item",
    "Operation",
    "PrefixWalk",
    "Put",
    "PutEntries",
    "StateStore",
    "check_listable",
    "check_start_after",
    "delete_unchanged",
    "listable",
]
