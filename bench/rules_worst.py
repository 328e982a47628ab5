"""The slowest rules the compile-time analysis accepts, timed at the data limit.

Each shape is a rule expression and the data (at most ``MAX_DATA_BYTES`` of JSON,
collections of at most ``COLLECTION_BOUND`` elements: what ``check_data`` admits) that
makes it slowest. For each: whether ``compile_rule`` accepts it and, timed once, the
seconds one evaluation takes (timed on a second evaluation: the first converts the data,
paid once per cycle whatever the rules). A refused shape is
evaluated too, with ``--refused``, to show what its refusal saves; a shape predicted to
take longer than ``--cap`` seconds (from a run over ``--probe`` elements) is reported
from that prediction instead of run.

    python bench/rules_worst.py [--refused] [--cap 20] [--json FILE]
    python bench/rules_worst.py --compile     # cost_of of the largest expressions
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gateway.errors import RuleCostError
from gateway.limits import MAX_DATA_BYTES
from gateway.model import Publish, Rule
from gateway.rules import (
    _ENV,
    COLLECTION_BOUND,
    activation_of,
    check_data,
    compile_rule,
    cost_of,
    dump_data,
)

N = COLLECTION_BOUND
#: The room left for the one large field or two once the loop's range and keys are in.
ROOM = MAX_DATA_BYTES - 16 * 1024


def _two_strings(elements: int) -> dict[str, Any]:
    """s and t equal (compared to their last byte), half the room each."""
    half = ROOM // 2
    return {"l": list(range(elements)), "s": "a" * half, "t": "a" * half}


def _one_string(elements: int) -> dict[str, Any]:
    return {"l": list(range(elements)), "s": "a" * ROOM}


def _digits(elements: int) -> dict[str, Any]:
    """A number written with the room in leading zeros: a parser reads every one."""
    return {"l": list(range(elements)), "s": "0" * (ROOM - 4) + "1.5"}


def _two_keys(elements: int) -> dict[str, Any]:
    half = ROOM // 2
    return {"l": list(range(elements)), "s": "a" * half, "t": "a" * (half - 1) + "b"}


def _digits_int(elements: int) -> dict[str, Any]:
    return {"l": list(range(elements)), "s": "0" * (ROOM - 1) + "1"}


def _two_maps(elements: int) -> dict[str, Any]:
    """m and n equal, each a map of ~1000 lists of small numbers: ~1M scalars each, the
    most elements the data limit holds (two JSON bytes per number)."""
    width = min(N, (ROOM // 2) // (2 * N) - 8)
    inner = {f"k{i}": [0] * width for i in range(N)}
    return {"l": list(range(elements)), "m": inner, "n": json.loads(json.dumps(inner))}


def _one_map(elements: int) -> dict[str, Any]:
    """m: the whole room as numbers, ~2M of them (1000 keys of two 1000-number lists)."""
    pair = min(N, ROOM // (4 * N) - 8)
    return {"l": list(range(elements)), "m": {f"k{i}": [[0] * pair, [0] * pair] for i in range(N)}}


def _two_lists(elements: int) -> dict[str, Any]:
    width = min(N, (ROOM // 2) // (2 * N) - 4)
    inner = [[0] * width for _ in range(N)]
    return {"l": list(range(elements)), "a": inner, "b": json.loads(json.dumps(inner))}


def _list_of_strings(elements: int) -> dict[str, Any]:
    """k: 1000 strings of the same length as s, each equal to s but for its last byte,
    so ``in`` compares every byte of every one."""
    width = ROOM // (N + 1) - 4
    return {
        "l": list(range(elements)),
        "s": "a" * (width - 1) + "z",
        "k": ["a" * width for _ in range(N)],
    }


def _string_and_map(elements: int) -> dict[str, Any]:
    """A long key to hash, looked up in a map that lacks it."""
    return {"l": list(range(elements)), "s": "a" * (ROOM - 64), "m": {"x": 1}}


def _ab_string(elements: int) -> dict[str, Any]:
    """Random a and b, ``elements`` thousandths of the room: what a pattern with many DFA
    states is slowest on (its time is linear in the text: timed on a part)."""
    chosen = random.Random(1)
    text = "".join(chosen.choice("ab") for _ in range(ROOM * elements // N))
    return {"l": [], "s": text}


def _long_range(elements: int) -> dict[str, Any]:
    half = ROOM // 2
    return {"l": list(range(elements)), "s": "a" * half, "t": "a" * half}


@dataclass(frozen=True)
class Shape:
    name: str
    source: str
    data: Callable[[int], dict[str, Any]]
    #: iterations per element of data.l (a range of data.l + data.l ... runs more; 0:
    #: no loop, timed whole at the limit)
    per_element: int = 1


SHAPES = [
    Shape("strings ==, in a loop", "data.l.all(x, data.s == data.t)", _two_strings),
    Shape("strings <, in a loop", "data.l.all(x, data.s <= data.t)", _two_strings),
    Shape("startsWith, in a loop", "data.l.all(x, data.s.startsWith(data.t))", _two_strings),
    Shape("endsWith, in a loop", "data.l.all(x, data.s.endsWith(data.t))", _two_strings),
    Shape("contains a literal, in a loop", 'data.l.all(x, !data.s.contains("ab"))', _one_string),
    Shape("matches a literal, in a loop", 'data.l.all(x, !data.s.matches("a*b"))', _one_string),
    Shape("double() of digits, in a loop", "data.l.all(x, double(data.s) > 0.0)", _digits),
    Shape("bytes() of a string, in a loop", 'data.l.all(x, bytes(data.s) != b"")', _one_string),
    Shape("string in a list, in a loop", "data.l.all(x, !(data.s in data.k))", _list_of_strings),
    Shape("maps ==, in a loop", "data.l.all(x, data.m == data.n)", _two_maps),
    Shape("lists ==, in a loop", "data.l.all(x, data.a == data.b)", _two_lists),
    Shape("list literals ==, in a loop", "data.l.all(x, [data.s] == [data.t])", _two_strings),
    Shape("element == string", "data.l.exists(x, x == data.s)", _two_strings),
    Shape(
        "strings ==, 4000 iterations",
        "(data.l + data.l + data.l + data.l).all(x, data.s == data.t)",
        _long_range,
        per_element=4,
    ),
    Shape(
        "8 comparisons per element",
        "data.l.all(x, " + " && ".join(["data.s == data.t"] * 8) + ")",
        _two_strings,
    ),
    Shape(
        "40 map comparisons, no loop",
        " && ".join(["data.m == data.n"] * 40),
        _two_maps,
        per_element=0,
    ),
    Shape(
        "4 map comparisons, no loop",
        " && ".join(["data.m == data.n"] * 4),
        _two_maps,
        per_element=0,
    ),
    Shape("one map comparison", "data.m == data.n", _two_maps, per_element=0),
    # The slowest shapes within the bounds since session 30: at MAX_COMPARED_BYTES (4
    # data limits compared) and MAX_WORK_BYTES (16 scanned).
    Shape(
        "4 comparisons of a 4 MiB map with itself",
        " && ".join(["data.m == data.m"] * 4),
        _one_map,
        per_element=0,
    ),
    Shape(
        "4 searches of 4 MiB (16 limits of work)",
        " && ".join(['!data.s.contains("ab")'] * 4),
        _one_string,
        per_element=0,
    ),
    Shape(
        "16 int() of 4 MiB of digits",
        " && ".join(["int(data.s) > 0"] * 16),
        _digits_int,
        per_element=0,
    ),
    Shape(
        "16 lookups of a missing 4 MiB key",
        " || ".join(["data.m[data.s] == 1"] * 16),
        _string_and_map,
        per_element=0,
    ),
    Shape(
        "a 16-instruction pattern over 4 MiB",
        'data.s.matches("[ab]*a[ab]{11}c")',
        _ab_string,
    ),
    Shape(
        "a pattern beyond RE2's DFA, no loop",
        'data.s.matches("[ab]*a[ab]{1000}c")',
        _ab_string,
    ),
    Shape(
        "a pattern of 20 alternatives, no loop",
        'data.s.matches("(a|b)*a' + "(a|b)" * 20 + 'c")',
        _ab_string,
    ),
    Shape(
        "a map literal's keys, in a loop",
        "data.l.all(x, {data.s: 1, data.t: 2} != {})",
        _two_keys,
    ),
    Shape("a key looked up, in a loop", "data.l.all(x, data.m[data.s] == 1)", _string_and_map),
    Shape("int() of digits, in a loop", "data.l.all(x, int(data.s) > 0)", _digits_int),
    Shape("a short pattern, no loop", 'data.s.matches("^a+$")', _one_string, per_element=0),
    Shape(
        "concatenation in a loop (refused since s29)",
        "data.l.all(x, data.s + data.t != data.t)",
        _two_strings,
    ),
    Shape(
        "size() of a string, in a loop (refused since s29)",
        "data.l.all(x, size(data.s) > 0)",
        _one_string,
    ),
]


#: The expressions whose analysis takes longest: at most MAX_NODES nodes each, with the
#: most pieces for _bytes to sum (quadratic in them) or patterns to size.
COMPILE_SHAPES = {
    "a map literal of 84 fields": "{" + ", ".join(f'"k{i}": data.f{i}' for i in range(84)) + "}",
    "42 comparisons of different fields": " && ".join(
        f"data.a{i} == event.b{i}" for i in range(42)
    ),
    "42 in of different fields": " && ".join(f"data.a{i} in event.b{i}" for i in range(42)),
    "20 patterns": " && ".join(
        f'data.s{i}.matches("^[a-z]{{2,8}}[0-9]+(x|y|z){{3}}$")' for i in range(20)
    ),
}


def _compile_times() -> None:
    """Milliseconds per cost_of: min and median of 5 runs of 10."""
    for name, source in COMPILE_SHAPES.items():
        expression = _ENV.compile(source)
        runs = []
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(10):
                cost_of(expression)
            runs.append((time.perf_counter() - started) / 10 * 1e3)
        print(f"{name:40} {min(runs):6.2f} ms min {statistics.median(runs):6.2f} ms median")


def _accepted(source: str) -> tuple[bool, str]:
    try:
        compile_rule(Rule(name="r", when=source, action=Publish(topic="a/b")))
    except RuleCostError as exc:
        return False, exc.reason
    return True, ""


def _time(source: str, data: dict[str, Any]) -> float:
    check_data(data)
    assert len(dump_data(data)) <= MAX_DATA_BYTES, len(dump_data(data))
    expression = _ENV.compile(source)
    activation = activation_of(
        data=data, generation=1, epoch=1, now=datetime.now(UTC), host="spiffe://a/h"
    )
    expression.eval(activation=activation)  # the first evaluation converts the data
    started = time.perf_counter()
    value = expression.eval(activation=activation)
    elapsed = time.perf_counter() - started
    # An error value (a key not found) took its time too: the rule fails, the host paid.
    assert value.type().name() in ("BOOL", "ERROR"), source[:80]
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--refused", action="store_true", help="time refused shapes too")
    parser.add_argument("--cap", type=float, default=20.0, help="longest run, seconds")
    parser.add_argument("--probe", type=int, default=20, help="elements of the probe run")
    parser.add_argument("--only", nargs="*", help="shapes whose name contains one of these")
    parser.add_argument("--json", help="write the table here too")
    parser.add_argument("--compile", action="store_true", help="time cost_of instead")
    args = parser.parse_args(argv)
    if args.compile:
        _compile_times()
        return 0
    rows = []
    print(f"{'shape':48} {'accepted':>8} {'data bytes':>11} {'s/eval':>9}  note")
    for shape in SHAPES:
        if args.only and not any(o in shape.name for o in args.only):
            continue
        accepted, reason = _accepted(shape.source)
        if not accepted and not args.refused:
            seconds, note = float("nan"), reason[:60]
        else:
            probe = min(args.probe, N)
            if shape.per_element:
                per_iteration = _time(shape.source, shape.data(probe)) / (probe * shape.per_element)
                predicted = per_iteration * N * shape.per_element
            else:
                predicted = 0.0
            if predicted > args.cap:
                seconds, note = predicted, f"predicted from {probe} elements"
            else:
                seconds, note = _time(shape.source, shape.data(N)), ""
        size = len(dump_data(shape.data(N)))
        rows.append(
            {"shape": shape.name, "source": shape.source, "accepted": accepted,
             "data_bytes": size, "seconds": seconds, "note": note}
        )  # fmt: skip
        print(f"{shape.name:48} {accepted!s:>8} {size:>11,} {seconds:>9.3f}  {note}", flush=True)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
