"""What a real ``gateway serve`` process's memory is made of, sampled from inside it.

Not part of the gateway: a ``sitecustomize`` for measuring the soak's servers
(bench/bench_soak.py starts them with this process's environment)::

    RSS_PROBE_OUT=/tmp/probe PYTHONPATH=bench/rss_probe python bench/bench_soak.py ...

In each process whose command line has ``serve``, a daemon thread appends to
``$RSS_PROBE_OUT/<pid>.log`` every ``RSS_PROBE_EVERY`` seconds (30): RSS, RssAnon,
CPython's object allocator (arenas held, bytes in live blocks, bytes free in used
pools and in unused pools: ``sys._debugmallocstats``), ``sys.getallocatedblocks()`` and
glibc's heap (in use, free, mmapped; or jemalloc's allocated and resident under
``LD_PRELOAD``), ``PYTHONMALLOC`` and the process's CPU seconds; after ``||``, figures
that might be what grows (memstats.extras: SQLite's own heap, asyncio tasks, threads,
descriptors, each gateway memo's entries and bytes and each ``functools.lru_cache``'s
entries). At each of
``RSS_PROBE_CENSUS`` (seconds after start, comma-separated) it writes ``<pid>-<t>.census.json``: objects by type after a full
collection, the tracked ones and the untracked ones they refer to. With
``RSS_PROBE_TRACE=N`` tracemalloc runs with N frames, each sample gives the traced
total, and at those moments a snapshot is dumped instead of a census
(``<pid>-<t>.trace``; compare them with ``tracemalloc.Snapshot.load``, or
``summarize_trace.py`` beside this file). ``RSS_PROBE_TRACE_FROM=S`` starts tracing
only S seconds after start: tracing from the start slows a server to a few
migrations a second, so its objects are still growing their lineages when the
snapshots are taken (session 30); started after the warm-up, the snapshots compare
the steady state, and only what was allocated after S is traced. ``RSS_PROBE_GC_GEN1=N`` sets the collector's middle threshold to N once
``gateway._gc.tune()`` has set its own (seen at the first sample after it): an
experiment on how long cyclic garbage waits in the middle generation, without
changing the gateway. A census or a
snapshot allocates many small objects itself, so the arenas and RSS after the first one
are not the server's alone.
Each sample also gives, per role of an SQLite connection (the store's writer, its
reader threads', the inline ones of the event loop's thread), how many are open, their
prepared statements and the bytes of their page caches, schemas and statements
(``sqlite_writer_stmt_mib``...): ``sqlite3.connect`` is wrapped to register each
connection it opens (memstats.watch_connections). A census walks ``gc.get_objects()``
from the probe's thread, which can hand it a tuple the server is still building: the
server then raises ``SystemError`` (Objects/tupleobject.c, "bad argument to internal
function") out of a handler or a cycle. Use it to diagnose, not in a soak whose
refusals count. (Before session 32 the per-connection sum walked too, as
``RSS_PROBE_SQLITE_CONNECTIONS=1``; that walk never saw the write connection, which
gateway._gc.tune() freezes, and gc.get_objects() leaves frozen objects out.)
"""

from __future__ import annotations

import os
import sys


def _start() -> None:
    import gc
    import json
    import threading
    import time
    import tracemalloc

    # Beside this file, on the same PYTHONPATH; standard library only.
    from memstats import census as census_counts
    from memstats import (
        extras,
        format_extras,
        jemalloc_stats,
        mallinfo2,
        pymalloc_stats,
        watch_collections,
        watch_connections,
    )

    watch_connections()  # before the server opens its store
    watch_collections()

    out = os.environ["RSS_PROBE_OUT"]
    every = float(os.environ.get("RSS_PROBE_EVERY", "30"))
    moments = sorted(float(t) for t in os.environ.get("RSS_PROBE_CENSUS", "").split(",") if t)
    frames = int(os.environ.get("RSS_PROBE_TRACE", "0"))
    trace_from = float(os.environ.get("RSS_PROBE_TRACE_FROM", "0"))
    gen1 = int(os.environ.get("RSS_PROBE_GC_GEN1", "0"))
    if frames and not trace_from:
        tracemalloc.start(frames)
    os.makedirs(out, exist_ok=True)
    pid = os.getpid()
    began = time.monotonic()

    def status() -> str:
        fields = {}
        with open("/proc/self/status") as handle:
            for line in handle:
                name, _, value = line.partition(":")
                if name in ("VmRSS", "RssAnon"):
                    fields[name] = int(value.split()[0]) / 1024
        return f"rss {fields['VmRSS']:.1f} anon {fields['RssAnon']:.1f}"

    def cpu() -> str:
        # The process's CPU seconds (all threads): per migration, what an allocator
        # costs, independent of how busy the machine is.
        return f" | cpu {time.process_time():.1f}"

    def pymalloc() -> str:
        found = pymalloc_stats()
        mib = 2**20
        text = (
            f"arenas {found.get('arenas', 0)} live {found.get('allocated', 0) / mib:.1f} "
            f"free {found.get('available', 0) / mib:.1f} "
            f"unused {found.get('unused_pools', 0) / mib:.1f} "
            f"blocks {sys.getallocatedblocks()}"
        )
        jemalloc = jemalloc_stats()
        info = mallinfo2()
        if jemalloc is not None:
            # Under LD_PRELOAD glibc's own heap is idle: jemalloc's counters instead.
            allocated, resident = jemalloc
            text += f" | malloc in use {allocated / mib:.1f} resident {resident / mib:.1f}"
        elif info is not None:
            _arena, mmapped, in_use, free = info
            text += (
                f" | malloc in use {in_use / mib:.1f} free {free / mib:.1f}"
                f" mmapped {mmapped / mib:.1f}"
            )
        text += f" | {os.environ.get('PYTHONMALLOC', 'pymalloc')}" + cpu()
        if tracemalloc.is_tracing():
            text += f" | traced {tracemalloc.get_traced_memory()[0] / mib:.1f}"
        return text

    def census(moment: float) -> None:
        if frames:
            # Only the snapshot: a census's own objects (a set of ids, a list of every
            # object) would take arenas that a run with tracing is not measuring.
            snapshot = tracemalloc.take_snapshot()
            snapshot.dump(os.path.join(out, f"{pid}-{moment:.0f}.trace"))
            del snapshot
            return
        counts = census_counts()
        with open(os.path.join(out, f"{pid}-{moment:.0f}.census.json"), "w") as handle:
            json.dump(counts, handle)

    def run() -> None:
        pending = list(moments)
        with open(os.path.join(out, f"{pid}.log"), "a", buffering=1) as log:
            log.write(f"# {' '.join(sys.argv)}\n")
            while True:
                time.sleep(every)
                now = time.monotonic() - began
                if frames and trace_from and now >= trace_from and not tracemalloc.is_tracing():
                    tracemalloc.start(frames)
                    log.write(f"{now:7.0f} tracing from now, {frames} frames\n")
                young, middle, old = gc.get_threshold()
                if gen1 and young >= 10_000 and middle != gen1:  # after gateway._gc.tune()
                    gc.set_threshold(young, gen1, old)
                    log.write(f"{now:7.0f} middle threshold {middle} -> {gen1}\n")
                log.write(f"{now:7.0f} {status()} | {pymalloc()} || {format_extras(extras())}\n")
                while pending and now >= pending[0]:
                    moment = pending.pop(0)
                    census(moment)
                    log.write(f"{now:7.0f} census {moment:.0f} written\n")

    threading.Thread(target=run, name="rss-probe", daemon=True).start()


if os.environ.get("RSS_PROBE_OUT") and "serve" in sys.argv:
    _start()
