"""bench/bench_scale.py's P2 splits each side's CPU per migration into its event-loop
thread's and the rest (the SQLite writer's, gRPC's own threads), for ours and for the
floor: where a side spends more than the floor is then read from one run, not guessed.
"""

from __future__ import annotations

import os
import threading
import time

from bench.bench_scale import _add_side_cpu, _side_cpu, loop_cpu, process_cpu

#: CPU seconds the busy thread below spends: many clock ticks (10 ms each in /proc).
BURN_SECONDS = 0.3


def _burn() -> None:
    began = time.thread_time()
    total = 0
    while time.thread_time() - began < BURN_SECONDS:
        total += sum(range(1000))


def test_a_main_thread_reading_leaves_out_another_threads_cpu() -> None:
    # Called from the main thread (pytest's), as the bench's loop thread calls it.
    assert threading.current_thread() is threading.main_thread()
    pid = os.getpid()
    before = process_cpu(pid), loop_cpu(pid), loop_cpu(None)
    worker = threading.Thread(target=_burn)
    worker.start()
    worker.join()  # the main thread blocks meanwhile: next to no CPU of its own
    after = process_cpu(pid), loop_cpu(pid), loop_cpu(None)
    tick = 1 / os.sysconf("SC_CLK_TCK")
    assert after[0] - before[0] >= BURN_SECONDS - 2 * tick  # the process: the burn too
    assert after[1] - before[1] < BURN_SECONDS / 3  # its main thread (/proc): not
    assert after[2] - before[2] < BURN_SECONDS / 3  # this thread (thread_time): not


def test_a_main_thread_reading_counts_its_own_cpu() -> None:
    pid = os.getpid()
    before = loop_cpu(pid), loop_cpu(None)
    _burn()
    after = loop_cpu(pid), loop_cpu(None)
    tick = 1 / os.sysconf("SC_CLK_TCK")
    assert after[0] - before[0] >= BURN_SECONDS - 2 * tick
    assert after[1] - before[1] >= BURN_SECONDS


def test_a_round_adds_each_sides_whole_and_loop_cpu() -> None:
    cpu = {"source": 1.0, "destination": 2.0, "floor_source": 0.0, "floor_destination": 0.0}
    loop = dict.fromkeys(cpu, 0.5)
    _add_side_cpu(cpu, loop, "floor_", (1.0, 0.5, 10.0, 4.0), (1.25, 0.75, 10.5, 4.125))
    assert cpu == {
        "source": 1.0,
        "destination": 2.0,
        "floor_source": 0.25,
        "floor_destination": 0.5,
    }
    assert loop == {
        "source": 0.5,
        "destination": 0.5,
        "floor_source": 0.75,
        "floor_destination": 0.625,
    }


def test_a_side_without_a_server_process_reads_zero_for_it() -> None:
    reading = _side_cpu(None)
    assert reading[2:] == (0.0, 0.0)
    assert reading[0] >= reading[1] > 0.0
