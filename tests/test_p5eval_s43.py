"""Session 43: the rule-evaluation side of a cycle (benchmark P5).

A cycle's summary entry (``"<n> of <m> rules fired"``) is written once per rule set
(:attr:`gateway.rules.RuleSet.cycle_summaries`), not once per cycle. Held here to the
text the cycle wrote before, over random rule sets and counts, and over committed
cycles; and ``evaluate``'s outcome to the plain rule-by-rule path over random rule sets
and data.
"""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta
from typing import Any

from gateway import rules
from gateway.host import Host
from gateway.lineage import EntryKind
from gateway.rules import RuleSet, compile_rules
from gateway.runtime.cycle import CycleResult
from gateway.testing import World, create_from_spec
from tests.test_cycle import in_host, one_host, spec
from tests.test_p5loop_s40 import HOST, NOW, _data, _rule

__all__ = ["one_host"]  # the fixture, used by name

NAMES = tuple(rules.VARIABLES)


def _arguments(pick: random.Random) -> tuple[Any, ...]:
    data = _data(pick)
    event = pick.choice([None, {}, {"type": "a", "data": {"k": 1}}])
    request = pick.choice([None, {}, {"method": "m", "caller": "c", "data": {}}])
    now = NOW + timedelta(seconds=pick.randrange(10_000))
    host = pick.choice([HOST, "h", ""])
    return data, pick.randrange(1000), pick.randrange(10), now, host, event, request


def _plain(ruleset: RuleSet, arguments: tuple[Any, ...], trigger: str, event: Any) -> rules.Outcome:
    """What evaluating gives the plain way: every variable, each rule on its own."""
    data, generation, epoch, now, host, _event, _request = arguments
    activation = rules._activation(data, generation, epoch, now, host, event, None, None)
    return rules._evaluate_each(ruleset._by_trigger.get(trigger, ()), activation)


def test_evaluate_gives_the_plain_outcome_over_seeded_rule_sets() -> None:
    pick = random.Random(43)
    fired = failed = 0
    for _ in range(300):
        ruleset = compile_rules([_rule(pick, index) for index in range(pick.randrange(1, 6))])
        for _ in range(4):
            arguments = _arguments(pick)
            data, generation, epoch, now, host, event, _request = arguments
            expected = _plain(ruleset, arguments, "cycle", None)
            got = ruleset.evaluate(
                data=data, generation=generation, epoch=epoch, now=now, host=host
            )
            assert got == expected, (ruleset, arguments)
            fired += len(got.proposals)
            failed += len(got.errors)
            # A trigger that wakes none of these rules: nothing, with every variable.
            assert ruleset.evaluate(
                data=data,
                generation=generation,
                epoch=epoch,
                now=now,
                host=host,
                trigger="message",
                event=event,
            ) == _plain(ruleset, arguments, "message", event)
    assert fired > 300 and failed > 100, (fired, failed)


def test_cycle_summaries_are_the_texts_a_cycle_wrote() -> None:
    pick = random.Random(4300)
    for _ in range(200):
        ruleset = compile_rules([_rule(pick, index) for index in range(pick.randrange(0, 8))])
        woken = ruleset.woken_by("cycle")
        assert ruleset.cycle_summaries == tuple(
            f"{n} of {woken} rules fired" for n in range(woken + 1)
        )


POOL = [
    {"name": "w", "when": "generation % 2 == 0", "write": '{"checked": generation}'},
    {"name": "p", "when": "data.amount > 1000", "publish": {"topic": "alerts/a"}},
    {"name": "q", "when": "true", "publish": {"topic": "alerts/b", "payload": "data.invoice"}},
    {"name": "n", "when": "false", "write": '{"never": 1}'},
    {"name": "x", "when": "data.status > 3", "write": '{"x": 1}'},  # fails at run time
    {"name": "d", "when": "true", "invoke": {"target": "payments/charge"}},  # denied
]


def test_committed_cycles_record_the_summary_they_recorded_before(one_host: World) -> None:
    """Each committed cycle's EVALUATED entry reads "<fired> of <cycle rules> rules fired",
    then the errors, with <fired> the admitted and denied entries of that cycle."""
    pick = random.Random(4301)

    async def scenario(host: Host) -> None:
        objects = []
        for index in range(12):
            chosen = pick.sample(POOL, pick.randrange(0, len(POOL) + 1))
            object_id = f"obj://org-a.example/s43/{index}"
            capabilities = [
                {"resource": "state:self", "actions": ["write"]},
                {"resource": "pubsub:alerts/*", "actions": ["publish"]},
            ]
            await create_from_spec(host, object_id, spec(chosen, capabilities=capabilities))
            objects.append((object_id, chosen))
        for _ in range(3):
            for object_id, _chosen in objects:
                report = await host.cycles.run("default", object_id)
                assert report.result in (CycleResult.EVALUATED, CycleResult.NOT_DUE)
            await asyncio.sleep(0.25)
        for object_id, chosen in objects:
            obj = await host.get_object(object_id, tenant="default")
            entries = obj.lineage.entries
            count = 0
            seen = 0
            for entry in entries:
                if entry.kind in (EntryKind.ACTION_ADMITTED, EntryKind.ACTION_DENIED):
                    count += 1
                elif entry.kind is EntryKind.EVALUATED:
                    summary = f"{count} of {len(chosen)} rules fired"
                    failing = any(rule["name"] == "x" for rule in chosen)
                    if failing:
                        assert entry.detail.startswith(summary + "; rule x: condition failed")
                    else:
                        assert entry.detail == summary
                    count = 0
                    seen += 1
            assert seen >= 1, (object_id, entries)  # identical cycles fold (ADR 0007)

    in_host(one_host, scenario)
