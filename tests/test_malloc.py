"""gateway._malloc: freed heap is handed back to the kernel (glibc), never anything in use."""

from __future__ import annotations

import asyncio

import pytest

from gateway import _malloc


def rss_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.mark.skipif(not _malloc.available(), reason="malloc_trim is glibc's")
def test_trim_returns_freed_heap_and_keeps_what_is_live() -> None:
    # 64 MiB in small blocks (below the mmap threshold: they come from the heap), then
    # every other block freed: the heap cannot shrink from its top, so those pages stay
    # in RSS until a trim hands back the whole free pages in the middle.
    blocks = [bytearray(16 << 10) for _ in range(4096)]
    for block in blocks:
        block[0] = 1  # touched: resident
    kept = blocks[1::2]
    del blocks[::2]
    held = rss_kib()
    assert _malloc.trim() is True
    assert rss_kib() < held - (8 << 10)  # at least 8 of the 32 freed MiB went back
    assert all(block[0] == 1 and len(block) == 16 << 10 for block in kept)  # live intact


def test_trimmer_trims_every_interval() -> None:
    trimmer = _malloc.Trimmer(interval=0.01, rounds=3)
    asyncio.run(asyncio.wait_for(trimmer.run(), timeout=30))
    assert trimmer.trims == (3 if _malloc.available() else 0)


def test_a_stopped_trimmer_trims_no_more() -> None:
    async def scenario() -> _malloc.Trimmer:
        trimmer = _malloc.Trimmer(interval=3600)
        task = trimmer.start()
        await asyncio.sleep(0)
        await _malloc.Trimmer.stop(task)
        assert task.done()
        return trimmer

    assert asyncio.run(scenario()).trims == 0
