"""Session 36's shortcuts on the cycle path (issue 13, P5) give exactly what the plain
path gives: values built slot by slot equal their class's own construction, field by
field and by identity; the rules evaluate as before; a batch's reports are what
:meth:`CycleRunner._committed` reports. Seeded: every run checks the same cases."""

from __future__ import annotations

import dataclasses
import random
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from gateway.model import CycleState
from gateway.rules import Proposal, _proposal, compiled, rule_from_mapping
from gateway.runtime.cycle import (
    CycleReport,
    CycleResult,
    _cycle_state,
    _evaluated_report,
    _Prepared,
)
from gateway.runtime.outbox import Event, _put, outbox_puts, pending_event
from gateway.stores import Expect, Put

NOW = datetime(2026, 12, 7, 1, 2, 3, 456789, tzinfo=UTC)
SEED = 36


def _same(got: object, want: object) -> None:
    """Equal, of the same class, and every field the very same value (nothing copied,
    converted or defaulted on the way)."""
    assert type(got) is type(want)
    assert got == want
    for field in dataclasses.fields(want):  # type: ignore[arg-type]
        assert getattr(got, field.name) is getattr(want, field.name), field.name


@pytest.mark.parametrize("cls", [Proposal, CycleState, CycleReport, Event, Put])
def test_classes_built_slot_by_slot_have_nothing_their_init_would_run(cls: type) -> None:
    # The shortcuts set slots directly: right only while the class is a frozen slotted
    # dataclass with no __post_init__ (which __init__ would call).
    assert dataclasses.is_dataclass(cls)
    assert not hasattr(cls, "__post_init__")
    assert "__slots__" in vars(cls)


def _values(rng: random.Random) -> list[Any]:
    return [
        None,
        rng.randrange(-(2**70), 2**70),
        rng.random(),
        "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(rng.randrange(8))),
        {"k": [1, "x", None]},
        [rng.randrange(9) for _ in range(rng.randrange(4))],
        True,
    ]


def test_a_proposal_built_slot_by_slot_is_the_one_its_class_builds() -> None:
    rng = random.Random(SEED)
    for _ in range(200):
        value = rng.choice(_values(rng))
        rule, resource, verb = f"r{rng.randrange(99)}", f"pubsub:a/{rng.random()}", "publish"
        _same(
            _proposal(rule, resource, verb, value),
            Proposal(rule=rule, resource=resource, verb=verb, value=value),
        )


def test_cycle_states_and_reports_built_slot_by_slot_are_those_their_classes_build() -> None:
    rng = random.Random(SEED)
    for _ in range(200):
        generation = rng.randrange(2**64)
        interval = rng.choice([None, timedelta(milliseconds=rng.randrange(1, 10**9))])
        due = rng.choice([None, NOW + timedelta(microseconds=rng.randrange(10**12))])
        state = _cycle_state(generation, interval, due)
        _same(state, CycleState(generation=generation, interval=interval, next_due=due))
        admitted, denied = rng.randrange(9), rng.randrange(9)
        evaluated = dataclasses.replace(_object(), cycle=state)
        prepared = _Prepared(
            key="k",
            derived=None,  # type: ignore[arg-type]
            evaluated=evaluated,
            operations=[],
            stored=b"",
            now=NOW,
            admitted=admitted,
            denied=denied,
        )
        _same(
            _evaluated_report(prepared),
            CycleReport(
                result=CycleResult.EVALUATED, cycle=state, admitted=admitted, denied=denied
            ),
        )


def test_events_and_puts_built_slot_by_slot_are_those_their_classes_build() -> None:
    rng = random.Random(SEED)
    for index in range(200):
        fields = {
            "key": f"default/obj://x/{index}/{rng.randrange(10**12):012d}/000",
            "tenant": "default",
            "object_id": f"obj://org-a.example/x/{index}",
            "generation": rng.randrange(2**64),
            "rule": f"rule-{index}",
            "verb": rng.choice(["publish", "invoke"]),
            "resource": f"pubsub:alerts/{index}",
            "payload": rng.choice(_values(rng)),
            "created_at": NOW + timedelta(milliseconds=index),
        }
        event = pending_event(**fields)
        want = Event(**fields, status="pending")
        _same(event, want)
        assert event.encode() == want.encode()
        puts = outbox_puts(event)
        assert puts == [
            Put(key="events/" + want.key, value=want.encode(), etag=Expect.ABSENT),
            Put(key="pending/" + want.key, value=b"", etag=Expect.ABSENT),
        ]
        value = rng.randbytes(rng.randrange(40))
        etag = rng.choice([Expect.ABSENT, Expect.ANY, f"etag-{index}"])
        _same(_put(fields["key"], value, etag), Put(key=fields["key"], value=value, etag=etag))


RULES = [
    {
        "name": "overdue",
        "when": 'data.amount > 1000 && data.status == "open"',
        "publish": {"topic": "alerts/overdue", "payload": '{"invoice": data.invoice}'},
    },
    {"name": "checked", "when": "generation % 2 == 0", "write": '{"checked": generation}'},
    {"name": "small", "when": "data.amount < 100", "publish": {"topic": "alerts/small"}},
    {"name": "broken", "when": "data.missing > 1", "publish": {"topic": "alerts/never"}},
    {"name": "not-bool", "when": "data.amount", "publish": {"topic": "alerts/never"}},
    {"name": "bad-patch", "when": "true", "write": '{"x": 1.0 / 0.0}'},
    {"name": "when-now", "when": "now > timestamp('2020-01-01T00:00:00Z')", "write": "{}"},
]


def test_rule_outcomes_are_those_of_the_plain_evaluation() -> None:
    """RuleSet.evaluate (the activation written out, expressions called by position)
    gives what evaluating each rule through the binding's keyword path gives."""
    from gateway.rules import _ENV, activation_of

    ruleset = compiled(tuple(rule_from_mapping(r, "test") for r in RULES))
    rng = random.Random(SEED)
    for generation in range(100):
        data = {
            "amount": rng.randrange(2000),
            "status": rng.choice(["open", "paid"]),
            "invoice": f"INV-{generation}",
        }
        outcome = ruleset.evaluate(data=data, generation=generation, epoch=1, now=NOW, host="h")
        activation = activation_of(data=data, generation=generation, epoch=1, now=NOW, host="h")
        assert isinstance(activation, type(_ENV.Activation({})))
        fired = []
        for compiled_rule in ruleset.rules:
            value = compiled_rule.when.expression.eval(activation=activation)
            if value.value() is True:
                fired.append(compiled_rule.rule.name)
        assert [p.rule for p in outcome.proposals] == [
            name for name in fired if name != "bad-patch"
        ]
        assert [e.split(":")[0] for e in outcome.errors] == [
            "rule broken",
            "rule not-bool",
            "rule bad-patch",
        ]
        for proposal in outcome.proposals:
            if proposal.rule == "overdue":
                assert proposal.value == {"invoice": data["invoice"]}
            if proposal.rule == "checked":
                assert proposal.value == {"checked": generation}


def _object() -> Any:
    from gateway.model import GovernedObject

    return GovernedObject(
        object_id="obj://org-a.example/x/1",
        tenant="default",
        data=b'{"a":1}',
        content_type="application/json",
    )


def _append_cases() -> list[tuple[Any, ...]]:
    from gateway.lineage import EntryKind

    rng = random.Random(SEED)
    kinds = list(EntryKind)
    cases = []
    for index in range(300):
        records = [
            (
                rng.choice(kinds),
                rng.randbytes(32),
                "".join(
                    chr(rng.choice([rng.randrange(32, 127), rng.randrange(0, 0x2FFF)]))
                    for _ in range(rng.randrange(0, 40 if index % 50 else 5000))
                ),
            )
            for _ in range(rng.randrange(1, 5))
        ]
        host = rng.choice(["h", "spiffe://org-a.example/cluster/east/gateway", 'q"\\ü\n'])
        at = NOW + timedelta(microseconds=rng.randrange(10**13))
        if index % 7 == 0:
            at = at.astimezone(timezone(timedelta(hours=rng.randrange(-12, 13))))
        cases.append((records, host, at, rng.randrange(2**64), rng.randrange(2**64)))
    return cases


def test_entries_written_as_they_are_appended_are_their_canonical_encoding() -> None:
    from gateway.lineage import Lineage, LineageEntry

    for records, host, at, epoch, generation in _append_cases():
        lineage = Lineage()
        for _ in range(2):  # the second append links to the first's last entry
            lineage = lineage.append_all(
                records,
                host=host,
                at=at,
                epoch=epoch,
                generation=generation,
                credentials_digest=b"\x07" * 32,
            )
        for entry in lineage.entries:
            plain = LineageEntry(
                seq=entry.seq,
                prev=entry.prev,
                time=entry.time,
                host=entry.host,
                kind=entry.kind,
                epoch=entry.epoch,
                generation=entry.generation,
                data_digest=entry.data_digest,
                credentials_digest=entry.credentials_digest,
                detail=entry.detail,
            )
            assert entry.encode() == entry._encode() == plain.encode()
            assert entry.leaf_hash() == plain.leaf_hash()
            assert LineageEntry.decode(entry.encode()).encode() == plain.encode()


@pytest.mark.parametrize(
    ("host", "at", "detail"),
    [
        ("h", datetime(2026, 1, 1), "naive time"),  # the case refused
        ("h\ud800", NOW, "a lone surrogate in the host"),
        ("h", NOW, "a lone surrogate in the detail \udfff"),
    ],
)
def test_entries_that_cannot_be_written_still_raise_when_encoded(
    host: str, at: datetime, detail: str
) -> None:
    from gateway.lineage import EntryKind, Lineage

    lineage = Lineage().append_all(
        [(EntryKind.EVALUATED, b"\x01" * 32, detail)],
        host=host,
        at=at,
        epoch=1,
        generation=2,
        credentials_digest=b"\x02" * 32,
    )
    with pytest.raises((ValueError, UnicodeEncodeError)):
        lineage.entries[0].encode()
