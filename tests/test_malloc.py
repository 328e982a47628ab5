"""gateway._malloc: freed heap is handed back to the kernel (glibc), never anything in use."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

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


class _Mallopt:
    """A stand-in for glibc's mallopt that records its calls."""

    def __init__(self, answer: int = 1) -> None:
        self.answer = answer
        self.calls: list[tuple[int, int]] = []

    def __call__(self, parameter: int, value: int) -> int:
        self.calls.append((parameter, value))
        return self.answer


@pytest.mark.parametrize(
    ("environ", "reason"),
    [
        ({}, "nothing set: the host's cap"),
        ({"PATH": "/usr/bin", "GLIBC_TUNABLES": "glibc.malloc.tcache_count=0"}, "other tunables"),
    ],
)
def test_arenas_are_capped_with_mallopt(
    monkeypatch: pytest.MonkeyPatch, environ: dict[str, str], reason: str
) -> None:
    mallopt = _Mallopt()
    monkeypatch.setattr(_malloc, "_libc_mallopt", lambda: mallopt)
    assert _malloc.limit_arenas(environ=environ) is True, reason
    assert mallopt.calls == [(_malloc.M_ARENA_MAX, _malloc.ARENA_MAX)] == [(-8, 2)], reason


@pytest.mark.parametrize(
    ("environ", "reason"),
    [
        ({"MALLOC_ARENA_MAX": "8"}, "glibc's own variable"),
        ({"MALLOC_ARENA_MAX": "0"}, "0: glibc's default policy, asked for explicitly"),
        ({"GLIBC_TUNABLES": "glibc.malloc.check=0:glibc.malloc.arena_max=4"}, "the tunable"),
    ],
)
def test_an_operators_arena_setting_is_kept(
    monkeypatch: pytest.MonkeyPatch, environ: dict[str, str], reason: str
) -> None:
    mallopt = _Mallopt()
    monkeypatch.setattr(_malloc, "_libc_mallopt", lambda: mallopt)
    assert _malloc.limit_arenas(environ=environ) is False, reason
    assert mallopt.calls == [], reason


def test_arenas_are_left_alone_off_glibc_or_when_glibc_refuses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_malloc, "_libc_mallopt", lambda: None)
    assert _malloc.limit_arenas(environ={}) is False
    refusing = _Mallopt(answer=0)
    monkeypatch.setattr(_malloc, "_libc_mallopt", lambda: refusing)
    assert _malloc.limit_arenas(environ={}) is False
    assert refusing.calls == [(-8, 2)]


#: Run in a child (a cap would stay on the test process): eight threads alive at once,
#: each allocating, then the number of heaps glibc's malloc_info reports.
_COUNT_ARENAS = """
import ctypes, ctypes.util, re, sys, tempfile, threading
from gateway import _malloc
capped = _malloc.limit_arenas(environ={}) if sys.argv[1] == "cap" else None
barrier = threading.Barrier(8)
def work():
    blocks = [bytearray(200) for _ in range(2000)]
    barrier.wait()  # all alive at once: none takes over an exited thread's arena
threads = [threading.Thread(target=work) for _ in range(8)]
for thread in threads: thread.start()
for thread in threads: thread.join()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
with tempfile.NamedTemporaryFile() as report:
    stream = libc.fopen(report.name.encode(), b"w")
    libc.malloc_info(0, stream)
    libc.fclose(stream)
    print(capped, len(re.findall("<heap nr=", open(report.name).read())))
"""


@pytest.mark.skipif(not _malloc.available(), reason="mallopt's arena cap is glibc's")
def test_glibc_keeps_to_the_arena_cap() -> None:
    def heaps(mode: str) -> str:
        env = {
            k: v for k, v in os.environ.items() if k not in ("MALLOC_ARENA_MAX", "GLIBC_TUNABLES")
        }
        child = subprocess.run(
            [sys.executable, "-c", _COUNT_ARENAS, mode],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
            env=env,
        )
        return child.stdout.strip()

    assert heaps("cap") == f"True {_malloc.ARENA_MAX}"
    uncapped = heaps("none").split()
    assert uncapped[0] == "None" and int(uncapped[1]) > _malloc.ARENA_MAX  # the test can tell
