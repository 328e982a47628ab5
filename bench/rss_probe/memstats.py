"""What a process's memory is made of, read from inside it: CPython's object allocator,
glibc's heap, and a census of objects by type. Standard library only, because
``sitecustomize.py`` beside it loads it into each ``gateway serve`` it probes; also used
by bench/soak_memory.py (both hosts in one process)."""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import sys
import tempfile
from collections.abc import Callable
from typing import Any


def pymalloc_stats() -> dict[str, int]:
    """CPython's object allocator, parsed from ``sys._debugmallocstats()`` (which
    writes to the C stderr): ``arenas`` held (and ``arenas_highwater``), ``allocated``
    (live block bytes), ``available`` (free bytes in used pools), ``unused_pools``'
    bytes."""
    wanted = {
        "# arenas allocated current": "arenas",
        "# arenas highwater mark": "arenas_highwater",
        "# bytes in allocated blocks": "allocated",
        "# bytes in available blocks": "available",
    }
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        found: dict[str, int] = {}
        for line in capture:
            name, _, value = line.partition("=")
            name = name.strip()
            if name in wanted:
                found[wanted[name]] = int(value.strip().replace(",", ""))
            elif "unused pools" in name:
                found["unused_pools"] = int(value.strip().replace(",", ""))
    return found


@functools.cache
def _mallinfo2_function() -> Callable[[], Any] | None:
    """glibc's ``mallinfo2`` with its result type, loaded once (None off glibc >= 2.33)."""
    import ctypes
    import ctypes.util

    class MallInfo2(ctypes.Structure):
        _fields_ = [
            (name, ctypes.c_size_t)
            for name in (
                "arena",
                "ordblks",
                "smblks",
                "hblks",
                "hblkhd",
                "usmblks",
                "fsmblks",
                "uordblks",
                "fordblks",
                "keepcost",
            )
        ]

    try:
        function = ctypes.CDLL(ctypes.util.find_library("c")).mallinfo2
    except (OSError, AttributeError, TypeError):
        return None
    function.restype = MallInfo2
    return function  # type: ignore[no-any-return]


def mallinfo2() -> tuple[int, int, int, int] | None:
    """glibc's heap: (bytes in its arena, in mmapped blocks, in use, free), or None."""
    function = _mallinfo2_function()
    if function is None:
        return None
    info = function()
    return info.arena, info.hblkhd, info.uordblks, info.fordblks


@functools.cache
def _mallctl_function() -> Callable[..., int] | None:
    """jemalloc's ``mallctl`` when it is the process's allocator (``LD_PRELOAD``), else
    None."""
    import ctypes

    try:
        function = ctypes.CDLL(None).mallctl
    except (OSError, AttributeError):
        return None
    function.restype = ctypes.c_int
    return function  # type: ignore[no-any-return]


def jemalloc_stats() -> tuple[int, int] | None:
    """jemalloc's (bytes allocated to the program, bytes resident), or None when it is
    not the allocator. The counters are refreshed by writing ``epoch`` first."""
    import ctypes

    function = _mallctl_function()
    if function is None:
        return None
    epoch = ctypes.c_uint64(1)
    size = ctypes.c_size_t(ctypes.sizeof(epoch))
    function(b"epoch", ctypes.byref(epoch), ctypes.byref(size), ctypes.byref(epoch), size)
    found = []
    for name in (b"stats.allocated", b"stats.resident"):
        value = ctypes.c_size_t(0)
        size = ctypes.c_size_t(ctypes.sizeof(value))
        if function(name, ctypes.byref(value), ctypes.byref(size), None, 0) != 0:
            return None
        found.append(value.value)
    return found[0], found[1]


def census() -> dict[str, int]:
    """Objects by type after a full collection: those the collector tracks, and the
    untracked ones they refer to directly (str, bytes, int, float, atomic tuples...),
    counted once each."""
    gc.collect()
    counts: dict[str, int] = {}
    seen: set[int] = set()
    tracked = gc.get_objects()
    for thing in tracked:
        name = type(thing).__qualname__
        counts[name] = counts.get(name, 0) + 1
    for thing in tracked:
        for referent in gc.get_referents(thing):
            if gc.is_tracked(referent) or id(referent) in seen:
                continue
            seen.add(id(referent))
            name = "untracked " + type(referent).__qualname__
            counts[name] = counts.get(name, 0) + 1
    del tracked
    return counts


@functools.cache
def _sqlite_library() -> Any:
    """The SQLite library ``_sqlite3`` links (the same instance: one copy of a shared
    library per process), with its memory counters' result types set; None if absent."""
    import ctypes

    try:
        library = ctypes.CDLL("libsqlite3.so.0")
    except OSError:
        return None
    library.sqlite3_memory_used.restype = ctypes.c_int64
    library.sqlite3_memory_highwater.restype = ctypes.c_int64
    library.sqlite3_memory_highwater.argtypes = [ctypes.c_int]
    library.sqlite3_status64.argtypes = [
        ctypes.c_int,
        ctypes.POINTER(ctypes.c_int64),
        ctypes.POINTER(ctypes.c_int64),
        ctypes.c_int,
    ]
    return library


#: sqlite3_status64's op for the page caches' bytes taken from SQLite's heap (with no
#: SQLITE_CONFIG_PAGECACHE buffer, as here, that is all of them).
_SQLITE_STATUS_PAGECACHE_OVERFLOW = 2
#: Allocations outstanding, and (its high-water mark) the largest one asked for.
_SQLITE_STATUS_MALLOC_COUNT = 9
_SQLITE_STATUS_MALLOC_SIZE = 5


def sqlite_memory() -> tuple[int, int, int, int, int] | None:
    """SQLite's own heap: (bytes it holds now, the most it has held, the part of the
    first that is page caches, allocations outstanding, the largest allocation asked
    for so far), or None. All connections of the process together; the
    rest of it is mostly prepared statements (Python's sqlite3 keeps up to 128 per
    connection) and schemas."""
    import ctypes

    library = _sqlite_library()
    if library is None:
        return None
    figures = []
    for op in (
        _SQLITE_STATUS_PAGECACHE_OVERFLOW,
        _SQLITE_STATUS_MALLOC_COUNT,
        _SQLITE_STATUS_MALLOC_SIZE,
    ):
        current, highwater = ctypes.c_int64(0), ctypes.c_int64(0)
        failed = library.sqlite3_status64(op, ctypes.byref(current), ctypes.byref(highwater), 0)
        value = current.value if op != _SQLITE_STATUS_MALLOC_SIZE else highwater.value
        figures.append(-1 if failed else value)
    return (
        library.sqlite3_memory_used(),
        library.sqlite3_memory_highwater(0),
        figures[0],
        figures[1],
        figures[2],
    )


#: CPU seconds the collector spent per generation since watch_collections() (empty
#: until then).
_COLLECTING: list[float] = []


def watch_collections() -> None:
    """Count the CPU time of each collection by generation (``gc.callbacks``; a
    collection runs in the thread that triggered it, holding the GIL, so its thread's
    CPU time between start and stop is the collection's): what a threshold costs."""
    import time

    _COLLECTING.extend([0.0, 0.0, 0.0])
    started = [0.0]

    def note(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.thread_time()
        else:
            _COLLECTING[info["generation"]] += time.thread_time() - started[0]

    gc.callbacks.append(note)


def extras() -> dict[str, float]:
    """Figures that might grow, by a name without spaces: SQLite's heap (MiB), the
    cyclic collector's runs and objects freed by generation, asyncio tasks alive, threads, open descriptors, and every gateway memo's entries and weight
    (MiB; ``memo:<module:line where made>``) and every ``functools.lru_cache`` of a
    ``gateway`` module's entries (``cache:<module.function>``)."""
    import asyncio
    import threading

    mib = 2**20
    found: dict[str, float] = {}
    sqlite = sqlite_memory()
    if sqlite is not None:
        found["sqlite_mib"], found["sqlite_high_mib"] = sqlite[0] / mib, sqlite[1] / mib
        found["sqlite_pages_mib"] = sqlite[2] / mib
        found["sqlite_mallocs"] = sqlite[3]
        found["sqlite_largest_malloc_kib"] = sqlite[4] / 1024
        # Connections registered by watch_connections() (no walk of the collector's
        # objects: that walk, from this thread, made servers raise SystemError, and it
        # never saw the store's write connection, frozen by gateway._gc.tune()).
        for name, value in sqlite_connections().items():
            counted = name.endswith(("_n", "_stmts"))
            found[f"sqlite_{name}" + ("" if counted else "_mib")] = (
                value if counted else value / mib
            )
    # The cyclic collector by generation: runs, and objects it freed (garbage in
    # reference cycles, which reference counting left behind: it waits for the next run,
    # gateway._gc sets how far apart they are).
    for generation, stats in enumerate(gc.get_stats()):
        found[f"gc{generation}_runs"] = stats["collections"]
        found[f"gc{generation}_freed"] = stats["collected"]
        if _COLLECTING:
            found[f"gc{generation}_cpu_s"] = _COLLECTING[generation]
    found["tasks"] = len(getattr(asyncio.tasks, "_all_tasks", ()))
    found["threads"] = threading.active_count()
    with contextlib.suppress(OSError):
        found["fds"] = len(os.listdir("/proc/self/fd"))
    lru = sys.modules.get("gateway._lru")
    if lru is not None and hasattr(lru, "memo_stats"):
        for memo in lru.memo_stats():
            found[f"memo:{memo.made_at}:n"] = memo.entries
            if memo.weight:
                found[f"memo:{memo.made_at}:mib"] = memo.weight / mib
            if memo.hits or memo.misses:  # since the start: a running hit rate
                found[f"memo:{memo.made_at}:hit%"] = 100 * memo.hits / (memo.hits + memo.misses)
    seen: set[int] = set()
    for name, module in list(sys.modules.items()):
        if not name.startswith("gateway") or module is None:
            continue
        for attribute, value in list(vars(module).items()):
            if id(value) in seen or isinstance(value, type):
                continue
            info = getattr(value, "cache_info", None)
            if callable(info):
                seen.add(id(value))  # imported elsewhere too: counted where first seen
                found[f"cache:{name}.{attribute}:n"] = info().currsize
                continue
            # Other memories of a module: lineage's VerifiedPrefixes.sizes() (objects,
            # checkpoints) and _BytesMemo.size() (values, bytes).
            for method, suffixes in (("sizes", (":n", ":checkpoints")), ("size", (":n", ":mib"))):
                measure = getattr(value, method, None)
                if not callable(measure) or getattr(measure, "__self__", None) is not value:
                    continue
                with contextlib.suppress(Exception):
                    figures = measure()
                    if isinstance(figures, tuple) and len(figures) == 2:
                        seen.add(id(value))
                        for suffix, figure in zip(suffixes, figures, strict=True):
                            scale = mib if suffix == ":mib" else 1
                            found[f"held:{name}.{attribute}{suffix}"] = figure / scale
                break
    return found


def format_extras(found: dict[str, float]) -> str:
    """``name=value`` pairs, as summarize.py reads them after ``||``."""
    return " ".join(f"{name}={value:.3f}".rstrip("0").rstrip(".") for name, value in found.items())


#: sqlite3_db_status ops: the connection's page cache, schemas, prepared statements
#: (with the parameters each one holds bound since its last run: Python's sqlite3 never
#: clears them).
_SQLITE_DBSTATUS = {"pages": 1, "schema": 2, "stmt": 3}

#: Every ``sqlite3.Connection`` made since :func:`watch_connections`, weakly, with the
#: role its creating thread names; None until then.
_CONNECTIONS: list[tuple[Any, str]] | None = None
_CONNECTIONS_LOCK: Any = None


def _role(thread_name: str) -> str:
    """A store connection's role from the thread that opened it (gateway/stores/sqlite.py
    names its threads): the writer, a reader thread's, or an inline one (the event
    loop's)."""
    if thread_name.startswith("sqlite-store"):
        return "writer"
    if thread_name.startswith("sqlite-reader"):
        return "reader"
    return "inline"


def watch_connections() -> None:
    """Make ``sqlite3.connect`` register each connection it opens (a subclass that can be
    weakly referenced, unless the caller passes its own ``factory``), for
    :func:`sqlite_connections`. Call before the program opens any."""
    global _CONNECTIONS, _CONNECTIONS_LOCK
    import sqlite3
    import threading
    import weakref

    if _CONNECTIONS is not None:
        return
    _CONNECTIONS, _CONNECTIONS_LOCK = [], threading.Lock()
    connect = sqlite3.connect

    class Watched(sqlite3.Connection):
        pass

    def watched_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        kwargs.setdefault("factory", Watched)
        connection = connect(*args, **kwargs)
        with contextlib.suppress(TypeError), _CONNECTIONS_LOCK:
            # Dead references dropped as new ones come (a store opens a handful).
            _CONNECTIONS[:] = [entry for entry in _CONNECTIONS if entry[0]() is not None]
            _CONNECTIONS.append((weakref.ref(connection), _role(threading.current_thread().name)))
        return connection

    sqlite3.connect = watched_connect


def sqlite_connections() -> dict[str, int]:
    """Per role (writer, reader, inline), over the open connections
    :func:`watch_connections` registered: how many (``<role>_n``), prepared statements
    (``<role>_stmts``) and bytes of page cache, schema and statements
    (``<role>_pages``...; ``sqlite3_db_status``). The ``sqlite3 *`` handle is read from
    the object's first field after its header (CPython 3.11's ``pysqlite_Connection``); a
    closed connection reads as NULL and is skipped. Empty when nothing was registered."""
    import ctypes

    library = _sqlite_library()
    if library is None or not _CONNECTIONS:
        return {}
    library.sqlite3_next_stmt.restype = ctypes.c_void_p
    library.sqlite3_next_stmt.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    totals: dict[str, int] = {}
    current, highwater = ctypes.c_int(0), ctypes.c_int(0)
    with _CONNECTIONS_LOCK:
        watched = [(reference(), role) for reference, role in _CONNECTIONS]
    for connection, role in watched:
        if connection is None:
            continue
        handle = ctypes.c_void_p.from_address(id(connection) + object.__basicsize__).value
        if not handle:
            continue
        totals[f"{role}_n"] = totals.get(f"{role}_n", 0) + 1
        for name, op in _SQLITE_DBSTATUS.items():
            if not library.sqlite3_db_status(
                ctypes.c_void_p(handle), op, ctypes.byref(current), ctypes.byref(highwater), 0
            ):
                totals[f"{role}_{name}"] = totals.get(f"{role}_{name}", 0) + current.value
        statement, count = None, 0
        while True:
            statement = library.sqlite3_next_stmt(handle, statement)
            if not statement:
                break
            count += 1
        totals[f"{role}_stmts"] = totals.get(f"{role}_stmts", 0) + count
    return totals
