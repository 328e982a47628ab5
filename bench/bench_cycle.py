"""Cycle throughput against bare CEL evaluation, measured in the same run.

Run from the project directory::

    python bench/bench_cycle.py                      # defaults finish in well under a minute
    python bench/bench_cycle.py --objects 1000 --rules 8 --seconds 5

What is measured, one rule-set evaluation of one object being the unit everywhere:

bare CEL          the compiled expressions of the object's rules, evaluated directly with
                  cel-expr-python on already-decoded data: one activation, every
                  condition, and the action expression of each rule that fired.
RuleSet.evaluate  gateway.rules: the same, plus error handling and the conversion of
                  results to JSON values.
cycle, no I/O     CycleRunner.evaluate: decoding the object's JSON data, the rule set
                  (cached compile), admission of every proposal against the object's
                  effective authority, write merges and data checks, outbox events, one
                  lineage entry per admitted or denied action and one per evaluation, the
                  next due time.
cycle, SQLite     CycleRunner.run: load the object from the store, evaluate as above,
                  encode it and commit it with its outbox events in one transaction
                  (SQLite WAL, synchronous=FULL: an fsync per commit). Sequential, so the
                  latencies are those of one cycle with nothing else running.
cel-python,       the bare-CEL workload with the pure-Python ``celpy`` and the Rust-based
cel (Rust)        ``common-expression-language``, when installed (they are not
                  dependencies of the project).

Everything runs against a real host built in a temporary directory with
gateway.testing.build_world: real keys, a real root grant per object, a real SQLite file.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from gateway.config import load_config
from gateway.host import Host
from gateway.model import GovernedObject
from gateway.objectspec import parse_spec
from gateway.rules import RuleSet, load_data
from gateway.runtime.cycle import CycleResult, CycleRunner
from gateway.testing import HostSpec, World, build_world, create_from_spec

HOST = "spiffe://org-a.example/cluster/east/gateway"
TENANT = "default"
NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
WARMUP_SECONDS = 0.3

#: What this host offers; the grant of each object narrows it (audit/* is not granted,
#: so rules publishing there are denied at admission and recorded as such).
POLICY = {
    "offers": [
        {"resource": "pubsub:*", "actions": ["publish"]},
        {"resource": "state:self", "actions": ["read", "write"]},
        {"resource": "invoke:*", "actions": ["invoke"]},
    ]
}
GRANTED = [
    {"resource": "pubsub:alerts/*", "actions": ["publish"]},
    {"resource": "state:self", "actions": ["read", "write"]},
    {"resource": "invoke:payments/*", "actions": ["invoke"]},
]

#: Rule shapes an invoicing object might carry; ``--rules N`` takes the first N, cycling
#: (with a numbered name) when N is larger. Every library in the comparison supports
#: every expression here.
TEMPLATES: list[dict[str, Any]] = [
    {
        "name": "overdue",
        "when": 'data.amount > 1000 && data.status == "open"',
        "publish": {
            "topic": "alerts/overdue",
            "payload": '{"invoice": data.invoice, "amount": data.amount}',
        },
    },
    {
        "name": "urgent",
        "when": 'has(data.tags) && data.tags.exists(t, t == "urgent")',
        "invoke": {"target": "payments/escalate", "payload": '{"invoice": data.invoice}'},
    },
    {
        "name": "checked",
        "when": 'generation % 2 == 0 && now > timestamp("2020-01-01T00:00:00Z")',
        "write": '{"checked": generation}',
    },
    {
        "name": "audit",
        "when": 'data.status == "open" && host.startsWith("spiffe://")',
        "publish": {"topic": "audit/open", "payload": '{"invoice": data.invoice}'},
    },
    {
        "name": "small",
        "when": "data.amount < 100",
        "publish": {"topic": "alerts/small"},
    },
    {
        "name": "tagged",
        "when": "size(data.tags) > 2",
        "write": '{"many_tags": true}',
    },
]


def rule_mappings(count: int) -> list[dict[str, Any]]:
    chosen = []
    for index in range(count):
        template = dict(TEMPLATES[index % len(TEMPLATES)])
        if index >= len(TEMPLATES):
            template["name"] = f"{template['name']}-{index // len(TEMPLATES)}"
        chosen.append(template)
    return chosen


def object_data(index: int, extra_keys: int = 0) -> dict[str, Any]:
    """Varied data, so that each rule fires for some objects and not for others; with
    ``extra_keys`` small records no rule reads (every evaluation still converts them)."""
    data: dict[str, Any] = {
        "invoice": index,
        "amount": (index * 137) % 2500,
        "status": "open" if index % 3 else "paid",
        "tags": ["urgent", "eu", "q3"][: index % 4],
        "customer": {"id": f"c-{index % 50}", "region": "eu-west"},
    }
    for key in range(extra_keys):
        data[f"line-{key}"] = {"sku": f"s-{key}", "quantity": key % 7, "price": 9.5}
    return data


# --- timing -------------------------------------------------------------------------------


#: A workload: call it, it evaluates something some number of times and returns how many.
Batch = Callable[[], int]


@dataclass(frozen=True, slots=True, kw_only=True)
class Measured:
    name: str
    evaluations: int
    seconds: float
    latencies: tuple[float, ...] = ()  #: per evaluation, seconds; only where timed singly

    @property
    def per_second(self) -> float:
        return self.evaluations / self.seconds

    @property
    def microseconds(self) -> float:
        return self.seconds / self.evaluations * 1e6


def cycling(items: list[Any]) -> Iterator[Any]:
    while True:
        yield from items


def time_batches(
    name: str,
    batch: Batch,
    *,
    seconds: float,
    progress: Progress,
) -> Measured:
    """Call ``batch`` (which does some evaluations and returns how many) for ``seconds``,
    after a warm-up; timed as a whole, so the clock is read once per batch."""
    warm_until = time.perf_counter() + WARMUP_SECONDS
    while time.perf_counter() < warm_until:
        batch()
    task = progress.add_task(name, total=seconds, evals=0)
    count = 0
    start = time.perf_counter()
    elapsed = 0.0
    while elapsed < seconds:
        count += batch()
        elapsed = time.perf_counter() - start
        progress.update(task, completed=min(elapsed, seconds), evals=count)
    return Measured(name=name, evaluations=count, seconds=elapsed)


# --- the workloads ---------------------------------------------------------------------------


def variables(obj: GovernedObject, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "data": data,
        "generation": obj.generation,
        "epoch": obj.epoch,
        "now": NOW,
        "host": HOST,
    }


def bare_cel_batch(ruleset: RuleSet, objects: list[GovernedObject]) -> Batch:
    """cel-expr-python alone: the compiled expressions of gateway.rules, no wrapper."""
    from gateway.rules import _ENV  # the environment the expressions were compiled in

    compiled = [
        (c.when.expression, c.effect.expression if c.effect else None) for c in ruleset.rules
    ]
    inputs = [variables(obj, load_data(obj.data, obj.content_type)) for obj in objects]

    def batch() -> int:
        for values in inputs:
            activation = _ENV.Activation(values)
            for when, effect in compiled:
                if when.eval(activation=activation).value() is True and effect is not None:
                    effect.eval(activation=activation).plain_value()
        return len(inputs)

    return batch


def ruleset_batch(ruleset: RuleSet, objects: list[GovernedObject]) -> Batch:
    inputs = [variables(obj, load_data(obj.data, obj.content_type)) for obj in objects]

    def batch() -> int:
        for values in inputs:
            ruleset.evaluate(**values)
        return len(inputs)

    return batch


def cycle_batch(runner: CycleRunner, objects: list[GovernedObject]) -> Batch:
    # Each call evaluates the object as loaded (its lineage does not grow across calls).
    def batch() -> int:
        for obj in objects:
            runner.evaluate(obj, now=NOW)
        return len(objects)

    return batch


def celpy_batch(sources: list[tuple[str, str | None]], datas: list[Any]) -> Batch | None:
    try:
        import celpy
        from celpy import celtypes
    except ImportError:
        return None
    env = celpy.Environment()
    programs = [
        (env.program(env.compile(when)), env.program(env.compile(effect)) if effect else None)
        for when, effect in sources
    ]
    now = celtypes.TimestampType(NOW)
    host = celtypes.StringType(HOST)

    def batch() -> int:
        for generation, data in datas:
            activation = {
                "data": celpy.json_to_cel(data),
                "generation": celtypes.IntType(generation),
                "epoch": celtypes.IntType(0),
                "now": now,
                "host": host,
            }
            for when, effect in programs:
                if when.evaluate(activation) == celtypes.BoolType(True) and effect is not None:
                    effect.evaluate(activation)
        return len(datas)

    return batch


def rust_cel_batch(sources: list[tuple[str, str | None]], datas: list[Any]) -> Batch | None:
    try:
        import cel  # common-expression-language
    except ImportError:
        return None
    programs = [
        (cel.compile(when), cel.compile(effect) if effect else None) for when, effect in sources
    ]

    def batch() -> int:
        for generation, data in datas:
            context = cel.Context(
                variables={
                    "data": data,
                    "generation": generation,
                    "epoch": 0,
                    "now": NOW,
                    "host": HOST,
                }
            )
            for when, effect in programs:
                if when.execute(context) is True and effect is not None:
                    effect.execute(context)
        return len(datas)

    return batch


async def full_cycles(
    host: Host, object_ids: list[str], *, seconds: float, progress: Progress
) -> tuple[Measured, dict[CycleResult, int], int, int]:
    runner = host.cycles
    results: dict[CycleResult, int] = {}
    admitted = denied = 0
    ids = cycling(object_ids)
    warm_until = time.perf_counter() + WARMUP_SECONDS
    while time.perf_counter() < warm_until:
        await runner.run(TENANT, next(ids))
    task = progress.add_task("cycle, SQLite", total=seconds, evals=0)
    latencies: list[float] = []
    start = time.perf_counter()
    elapsed = 0.0
    while elapsed < seconds:
        began = time.perf_counter()
        report = await runner.run(TENANT, next(ids))
        ended = time.perf_counter()
        latencies.append(ended - began)
        results[report.result] = results.get(report.result, 0) + 1
        admitted += report.admitted
        denied += report.denied
        elapsed = ended - start
        if len(latencies) % 20 == 0:
            progress.update(task, completed=min(elapsed, seconds), evals=len(latencies))
    progress.update(task, completed=seconds, evals=len(latencies))
    evaluated = results.get(CycleResult.EVALUATED, 0)
    measured = Measured(
        name="cycle, SQLite",
        evaluations=evaluated,
        seconds=elapsed,
        latencies=tuple(latencies),
    )
    return measured, results, admitted, denied


def one_condition(source: str, data: Any) -> list[tuple[str, Batch | None, Batch | None]]:
    """One condition, per library: with its variables bound once and reused, and bound
    anew for every evaluation (as a cycle must: each object has its own data). The first
    is the libraries' evaluation cost alone; the second adds converting the data."""
    from gateway.rules import _ENV

    values = {"data": data, "generation": 0, "epoch": 0, "now": NOW, "host": HOST}
    repeat = 50
    found: list[tuple[str, Batch | None, Batch | None]] = []
    expression, activation = _ENV.compile(source), _ENV.Activation(values)

    def cpp_once() -> int:
        for _ in range(repeat):
            expression.eval(activation=activation)
        return repeat

    def cpp_each() -> int:
        for _ in range(repeat):
            expression.eval(activation=_ENV.Activation(values))
        return repeat

    found.append(("cel-expr-python", cpp_once, cpp_each))
    try:
        import celpy
        from celpy import celtypes
    except ImportError:
        found.append(("cel-python", None, None))
    else:
        env = celpy.Environment()
        program = env.program(env.compile(source))

        def celpy_values() -> dict[str, Any]:
            return {
                "data": celpy.json_to_cel(data),
                "generation": celtypes.IntType(0),
                "epoch": celtypes.IntType(0),
                "now": celtypes.TimestampType(NOW),
                "host": celtypes.StringType(HOST),
            }

        bound = celpy_values()

        def python_once() -> int:
            program.evaluate(bound)
            return 1

        def python_each() -> int:
            program.evaluate(celpy_values())
            return 1

        found.append(("cel-python", python_once, python_each))
    try:
        import cel
    except ImportError:
        found.append(("cel (Rust)", None, None))
    else:
        compiled, context = cel.compile(source), cel.Context(variables=values)
        compiled.execute(context)  # a Context converts its variables on first use, then caches

        def rust_once() -> int:
            for _ in range(repeat):
                compiled.execute(context)
            return repeat

        def rust_each() -> int:
            for _ in range(repeat):
                compiled.execute(cel.Context(variables=values))
            return repeat

        found.append(("cel (Rust)", rust_once, rust_each))
    return found


def agreement(ruleset: RuleSet, sources: list[tuple[str, str | None]], datas: list[Any]) -> str:
    """Which conditions hold for each object, by every library: they must agree, or the
    comparison would not be of the same work."""
    from gateway.rules import _ENV

    def values(generation: int, data: Any) -> dict[str, Any]:
        return {"data": data, "generation": generation, "epoch": 0, "now": NOW, "host": HOST}

    fired: dict[str, list[tuple[bool, ...]]] = {
        "cel-expr-python": [
            tuple(
                c.when.expression.eval(activation=_ENV.Activation(values(g, d))).value() is True
                for c in ruleset.rules
            )
            for g, d in datas
        ],
        "RuleSet.evaluate": [
            tuple(
                c.rule.name in {p.rule for p in ruleset.evaluate(**values(g, d)).proposals}
                for c in ruleset.rules
            )
            for g, d in datas
        ],
    }
    try:
        import celpy
        from celpy import celtypes

        env = celpy.Environment()
        programs = [env.program(env.compile(when)) for when, _ in sources]
        fired["cel-python"] = [
            tuple(
                p.evaluate(
                    {
                        "data": celpy.json_to_cel(d),
                        "generation": celtypes.IntType(g),
                        "epoch": celtypes.IntType(0),
                        "now": celtypes.TimestampType(NOW),
                        "host": celtypes.StringType(HOST),
                    }
                )
                == celtypes.BoolType(True)
                for p in programs
            )
            for g, d in datas
        ]
    except ImportError:
        pass
    try:
        import cel

        compiled = [cel.compile(when) for when, _ in sources]
        fired["cel (Rust)"] = [
            tuple(p.execute(values(g, d)) is True for p in compiled) for g, d in datas
        ]
    except ImportError:
        pass
    reference = fired["cel-expr-python"]
    differing = [name for name, found in fired.items() if found != reference]
    held = sum(sum(row) for row in reference)
    total = len(reference) * len(ruleset.rules)
    if differing:
        return f"[red]conditions DIFFER from cel-expr-python in: {', '.join(differing)}[/red]"
    return f"{held:,} of {total:,} conditions hold; {', '.join(fired)} agree on every one"


# --- report ---------------------------------------------------------------------------------


def percentile(values: tuple[float, ...], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def report(
    console: Console,
    measured: list[Measured],
    missing: list[tuple[str, str]],
    *,
    objects: int,
    rules: int,
    data_keys: int,
) -> None:
    bare = measured[0]
    extra = f", {data_keys} extra data records" if data_keys else ""
    table = Table(
        title=f"rule-set evaluations: {objects} objects, {rules} rules each{extra}",
        caption="÷ bare: throughput relative to bare CEL (cel-expr-python) in this run",
    )
    table.add_column("benchmark")
    table.add_column("objects", justify="right")
    table.add_column("rules/obj", justify="right")
    table.add_column("evaluations", justify="right")
    table.add_column("evals/s", justify="right")
    table.add_column("µs/eval", justify="right")
    table.add_column("p50 µs", justify="right")
    table.add_column("p99 µs", justify="right")
    table.add_column("÷ bare", justify="right")
    for item in measured:
        p50 = p99 = "—"
        if item.latencies:
            p50 = f"{percentile(item.latencies, 0.50) * 1e6:,.0f}"
            p99 = f"{percentile(item.latencies, 0.99) * 1e6:,.0f}"
        table.add_row(
            item.name,
            str(objects),
            str(rules),
            f"{item.evaluations:,}",
            f"{item.per_second:,.0f}",
            f"{item.microseconds:,.1f}",
            p50,
            p99,
            f"{item.per_second / bare.per_second:.3g}",
        )
    for name, why in missing:
        table.add_row(name, str(objects), str(rules), "—", "—", "—", "—", "—", why)
    console.print(table)
    for item in measured[1:]:
        console.print(f"  {item.name} / bare = {item.per_second / bare.per_second:.3g}")


def report_single(
    console: Console,
    measured: list[tuple[str, Measured, Measured]],
    missing: list[str],
    condition: str,
) -> None:
    table = Table(
        title=f"one condition: {condition}",
        caption="bound once: variables converted once and reused; "
        "bound each: converted for every evaluation",
    )
    table.add_column("library")
    table.add_column("µs/eval, bound once", justify="right")
    table.add_column("µs/eval, bound each", justify="right")
    table.add_column("÷ cel-expr-python (each)", justify="right")
    reference = measured[0][2]
    for name, once, each in measured:
        table.add_row(
            name,
            f"{once.microseconds:,.2f}",
            f"{each.microseconds:,.2f}",
            f"{each.per_second / reference.per_second:.3g}",
        )
    for name in missing:
        table.add_row(name, "—", "—", "not installed")
    console.print(table)


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--objects", type=int, default=200, help="objects (default 200)")
    parser.add_argument(
        "--rules",
        type=int,
        default=4,
        help=f"rules per object, 1..32 (default 4 of {len(TEMPLATES)} shapes)",
    )
    parser.add_argument(
        "--seconds", type=float, default=3.0, help="timed seconds per benchmark (default 3)"
    )
    parser.add_argument(
        "--data-keys",
        type=int,
        default=0,
        help="extra records in each object's data that no rule reads (default 0)",
    )
    arguments = parser.parse_args(argv)
    if arguments.objects < 1 or not 1 <= arguments.rules <= 32 or arguments.seconds <= 0:
        parser.error("need --objects >= 1, --rules in 1..32 and --seconds > 0")
    if not 0 <= arguments.data_keys <= 990:
        parser.error("--data-keys must be in 0..990 (a map holds at most 1000 entries)")
    return arguments


async def run(world: World, arguments: argparse.Namespace, console: Console) -> None:
    spec_rules = rule_mappings(arguments.rules)
    host = await Host.open(load_config(world.config(HOST)))
    try:
        object_ids: list[str] = []
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:,.0f}/{task.total:,.0f}"),
            console=console,
            transient=True,
        ) as progress:
            task = progress.add_task("creating objects", total=arguments.objects)
            for index in range(arguments.objects):
                spec = parse_spec(
                    {
                        "data": object_data(index, arguments.data_keys),
                        "grant": {"capabilities": GRANTED},
                        "cycle": {"interval_seconds": 0.001},
                        "rules": spec_rules,
                    },
                    source="bench",
                )
                object_id = f"obj://org-a.example/bench/invoice-{index}"
                await create_from_spec(host, object_id, spec, tenant=TENANT)
                object_ids.append(object_id)
                progress.advance(task)
        objects = await host.list_objects(tenant=TENANT)
        runner = CycleRunner(host.context)
        ruleset = runner.ruleset(objects[0])
        sources = [
            (c.when.source, c.effect.source if c.effect is not None else None)
            for c in ruleset.rules
        ]
        datas = [(obj.generation, load_data(obj.data, obj.content_type)) for obj in objects]

        console.print("  " + agreement(ruleset, sources, datas))
        measured: list[Measured] = []
        missing: list[tuple[str, str]] = []
        seconds = arguments.seconds
        with Progress(
            TextColumn("{task.description:<28}"),
            BarColumn(),
            TextColumn("{task.fields[evals]:>9,} evaluations"),
            TimeRemainingColumn(),
            console=console,
        ) as progress:
            timed = [
                ("bare CEL", bare_cel_batch(ruleset, objects)),
                ("RuleSet.evaluate", ruleset_batch(ruleset, objects)),
                ("cycle, no I/O", cycle_batch(runner, objects)),
            ]
            for name, batch in timed:
                measured.append(time_batches(name, batch, seconds=seconds, progress=progress))
            cycles, results, admitted, denied = await full_cycles(
                host, object_ids, seconds=seconds, progress=progress
            )
            measured.append(cycles)
            for name, make, module in (
                ("cel-python", celpy_batch, "celpy"),
                ("cel (Rust)", rust_cel_batch, "cel"),
            ):
                batch = make(sources, datas)
                if batch is None:
                    missing.append((name, f"{module}: not installed"))
                    continue
                measured.append(time_batches(name, batch, seconds=seconds, progress=progress))
            single: list[tuple[str, Measured, Measured]] = []
            single_missing: list[str] = []
            condition = sources[0][0]
            for name, once, each in one_condition(condition, datas[0][1]):
                if once is None or each is None:
                    single_missing.append(name)
                    continue
                brief = min(1.0, seconds)
                single.append(
                    (
                        name,
                        time_batches(f"{name}, bound once", once, seconds=brief, progress=progress),
                        time_batches(f"{name}, bound each", each, seconds=brief, progress=progress),
                    )
                )
    finally:
        await host.close()

    report(
        console,
        measured,
        missing,
        objects=arguments.objects,
        rules=arguments.rules,
        data_keys=arguments.data_keys,
    )
    report_single(console, single, single_missing, condition)
    outcome = ", ".join(
        f"{k.value} {v:,}" for k, v in sorted(results.items(), key=lambda kv: kv[0].value)
    )
    console.print(
        f"  full cycles: {outcome}; actions admitted {admitted:,}, denied {denied:,} "
        f"(rules: {', '.join(r['name'] for r in spec_rules)})"
    )
    console.print(
        f"  python {sys.version.split()[0]}, {arguments.seconds:g} s per benchmark after "
        f"{WARMUP_SECONDS} s warm-up"
    )


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    # Piped output (e.g. into a results file) gets a table wide enough not to wrap.
    console = Console() if sys.stdout.isatty() else Console(width=120)
    with tempfile.TemporaryDirectory(prefix="bench-cycle-") as directory:
        started = time.perf_counter()
        # build_world runs its own event loop, so it comes before ours.
        world = build_world(Path(directory), [HostSpec(host_id=HOST, policy=POLICY)])
        asyncio.run(run(world, arguments, console))
        console.print(f"  total {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
