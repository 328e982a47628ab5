"""Bounded least-recently-used memories: :class:`BoundedLru`, thread-safe, for the
process-wide memories of verified things (gateway.keys' signatures, gateway.credentials'
grants); :class:`IdleLru`, for one event loop, for the decoded objects a journal and a
cycle runner keep (it spares the values in use).

Invariant: at most ``capacity`` entries, and, given ``max_weight``, at most that total
weight (``weigh(value)``: its bytes, say), the least recently used going first, so bytes
a peer sends can only evict, never grow it; a value heavier than ``max_weight`` on its
own is not kept. A miss costs what the caller's work costs anyway. Thread-safe (one
lock), because verification also runs on worker threads.

Every memo made here registers itself, weakly, with the place that made it, so
:func:`memo_stats` can say how full each one is (bench/rss_probe logs it beside a
server's memory figures); registering costs one frame lookup per memo made, nothing
per use.
"""

from __future__ import annotations

import sys
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

#: Every live memo of this module, with where it was made ("module:line").
_MEMOS: weakref.WeakKeyDictionary[BoundedLru[object, object] | IdleLru[object, object], str] = (
    weakref.WeakKeyDictionary()
)


def _register(memo: BoundedLru[K, V] | IdleLru[K, V]) -> None:
    """Remember ``memo`` (weakly) with the place that constructed it: the first frame
    outside this module and ``typing`` (``BoundedLru[K, V](...)`` calls through it)."""
    frame = sys._getframe(1)
    while frame.f_back is not None and frame.f_globals.get("__name__") in (__name__, "typing"):
        frame = frame.f_back
    _MEMOS[memo] = f"{frame.f_globals.get('__name__', '?')}:{frame.f_lineno}"  # type: ignore[index]


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoStats:
    """How full the memos made at one place are (summed over them)."""

    made_at: str  #: "module:line" of the constructor call
    memos: int  #: live memos made there
    entries: int
    weight: int  #: the weight (:class:`BoundedLru` given ``weigh``) or size (:class:`IdleLru`) held
    capacity: int  #: their bounds on entries (:class:`BoundedLru`) or on size (:class:`IdleLru`)
    hits: int  #: lookups answered (:class:`BoundedLru`; 0 for :class:`IdleLru`)
    misses: int


def memo_stats() -> list[MemoStats]:
    """Every live memo's fill, summed by the place that made it, sorted by that place.
    Reads counters only (no lock): figures for a probe, not for decisions."""
    totals: dict[str, list[int]] = {}
    for memo, made_at in list(_MEMOS.items()):
        if isinstance(memo, BoundedLru):
            figures = (len(memo), memo.weight(), memo._capacity, memo.hits, memo.misses)
        else:
            figures = (len(memo._entries), memo._size, memo._total_size, 0, 0)
        total = totals.setdefault(made_at, [0, 0, 0, 0, 0, 0])
        total[0] += 1
        for index, figure in enumerate(figures, start=1):
            total[index] += figure
    return [
        MemoStats(
            made_at=at,
            memos=n,
            entries=entries,
            weight=weight,
            capacity=capacity,
            hits=hits,
            misses=misses,
        )
        for at, (n, entries, weight, capacity, hits, misses) in sorted(totals.items())
    ]


class BoundedLru(Generic[K, V]):
    """``capacity`` entries at most; :meth:`get` and :meth:`__contains__` count hits and
    misses (for benchmarks: bench/soak_memory.py)."""

    def __init__(
        self,
        capacity: int,
        *,
        max_weight: int | None = None,
        weigh: Callable[[V], int] | None = None,
    ) -> None:
        if (max_weight is None) != (weigh is None):
            raise ValueError("max_weight and weigh go together")
        self._capacity = capacity
        self._max_weight = max_weight
        self._weigh = weigh
        self._weight = 0  #: total weight held (0 without ``weigh``)
        self._entries: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0  #: lookups answered
        self.misses = 0
        _register(self)

    def _hit(self, key: K) -> bool:
        """Whether ``key`` is held (counted; a hit becomes the most recently used).
        Called with the lock held."""
        if key not in self._entries:
            self.misses += 1
            return False
        self._entries.move_to_end(key)
        self.hits += 1
        return True

    def get(self, key: K) -> V | None:
        with self._lock:
            return self._entries[key] if self._hit(key) else None

    def __contains__(self, key: K) -> bool:
        with self._lock:
            return self._hit(key)

    def put(self, key: K, value: V) -> None:
        weigh, entries = self._weigh, self._entries
        weight = weigh(value) if weigh is not None else 0
        with self._lock:
            if weigh is not None:
                old = entries.pop(key, None)
                if old is not None:
                    self._weight -= weigh(old)
                if self._max_weight is not None and weight > self._max_weight:
                    return
                self._weight += weight
            entries[key] = value
            entries.move_to_end(key)
            while len(entries) > self._capacity or (
                self._max_weight is not None and self._weight > self._max_weight
            ):
                _key, evicted = entries.popitem(last=False)
                if weigh is not None:
                    self._weight -= weigh(evicted)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._weight = 0
            self.hits = self.misses = 0

    def weight(self) -> int:
        """The total weight held (0 without ``weigh``)."""
        return self._weight

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(slots=True)
class _Slot(Generic[V]):
    value: V
    size: int
    used: float


class IdentityLru(Generic[K, V]):
    """A bounded memo keyed by an immutable value's identity: for values whose hash would
    cost more than the lookup saves (a tuple of rules hashed field by field, the bytes of
    an object's data). Each entry holds the key object itself, so its id cannot be reused
    while the entry lives, and a hit is checked with ``is``: an equal value that is
    another object misses. The least recently used entry goes first, one at a time
    (emptied whole when full, such memos swung their live bytes between empty and full,
    and CPython's object arenas ratchet up to each high: docs/benchmarks.md, sessions 28
    and 29)."""

    __slots__ = ("_values",)

    def __init__(self, entries: int) -> None:
        self._values: BoundedLru[int, tuple[K, V]] = BoundedLru(entries)

    def get(self, key: K) -> V | None:
        held = self._values.get(id(key))
        if held is not None and held[0] is key:
            return held[1]
        return None

    def put(self, key: K, value: V) -> None:
        self._values.put(id(key), (key, value))

    def clear(self) -> None:
        self._values.clear()

    def __len__(self) -> int:
        return len(self._values)


class IdleLru(Generic[K, V]):
    """A memo bounded by the total size of its values, least recently used first, that
    evicts a value only once it went unused for ``idle_seconds``: when everything held
    was used more recently, a newcomer is not kept instead. A host that visits more
    values in turn than the memo holds (objects cycled one after another) would, under
    plain LRU, evict each just before its next use and never hit; this way the values
    held keep hitting and only the rest miss. For one event loop: no lock.

    Invariant: the sizes of the values held add up to at most ``total_size``."""

    __slots__ = ("__weakref__", "_clock", "_entries", "_idle", "_size", "_total_size")

    def __init__(self, total_size: int, *, idle_seconds: float, clock: Callable[[], float]) -> None:
        self._total_size = total_size
        self._idle = idle_seconds
        self._clock = clock
        self._size = 0
        #: least recently used first
        self._entries: OrderedDict[K, _Slot[V]] = OrderedDict()
        _register(self)

    def __contains__(self, key: K) -> bool:
        return key in self._entries

    def get(self, key: K) -> V | None:
        """The value held under ``key``, counted as a use (``peek`` then ``touch`` in one
        call: a lookup per cycle, its second dict lookup and Python call were a third of
        what the memo cost)."""
        slot = self._entries.get(key)
        if slot is None:
            return None
        slot.used = self._clock()
        self._entries.move_to_end(key)
        return slot.value

    def held(self, keys: Iterable[K]) -> list[K]:
        """Those of ``keys`` that are held, in the order given (``in`` for each, in one
        call: a batch asks it of every object it cycles)."""
        entries = self._entries
        return [key for key in keys if key in entries]

    def peek(self, key: K) -> V | None:
        """The value held under ``key``, not counted as a use."""
        slot = self._entries.get(key)
        return None if slot is None else slot.value

    def touch(self, key: K) -> None:
        """Count a use of the value held under ``key`` (the caller peeked it)."""
        self._entries[key].used = self._clock()
        self._entries.move_to_end(key)

    def put(self, key: K, value: V, size: int) -> None:
        """Hold ``value`` under ``key`` if room can be made (see the class)."""
        entries = self._entries
        now = self._clock()
        slot = entries.get(key)
        if slot is not None and self._size - slot.size + size <= self._total_size:
            # A new value for a key held (every cycle's write of its object): what
            # forgetting it and putting it again does when nothing need make room, in place.
            self._size += size - slot.size
            slot.value, slot.size, slot.used = value, size, now
            entries.move_to_end(key)
            return
        self.forget(key)
        while self._size + size > self._total_size:
            oldest = next(iter(entries.values()), None)
            if oldest is None or now - oldest.used < self._idle:
                return  # full of values in use: this one is not kept
            _key, evicted = entries.popitem(last=False)
            self._size -= evicted.size
        entries[key] = _Slot(value, size, now)
        self._size += size

    def forget(self, key: K) -> None:
        slot = self._entries.pop(key, None)
        if slot is not None:
            self._size -= slot.size
