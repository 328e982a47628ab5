"""A bounded, thread-safe least-recently-used memory, for the process-wide memories of
verified things (gateway.keys' signatures, gateway.credentials' grants).

Invariant: at most ``capacity`` entries, the least recently used going first, so bytes
a peer sends can only evict, never grow it; a miss costs what the caller's work costs
anyway. Thread-safe (one lock), because verification also runs on worker threads.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedLru(Generic[K, V]):
    """``capacity`` entries at most; :meth:`get` and :meth:`__contains__` count hits and
    misses (for benchmarks: bench/soak_memory.py)."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0  #: lookups answered
        self.misses = 0

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
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)
