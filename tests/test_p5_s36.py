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
from gateway.rules import Outcome, Proposal, _proposal, compiled, rule_from_mapping
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


@pytest.mark.parametrize("cls", [Proposal, Outcome, CycleState, CycleReport, Event, Put])
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
        _same(outcome, Outcome(proposals=outcome.proposals, errors=outcome.errors))
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
            assert entry == plain  # every field, as the constructor sets it
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


def _exactly(got: Any, want: Any) -> None:
    """The same JSON value: equal, keys in the same order, values of the same types."""
    assert type(got) is type(want)
    if isinstance(want, dict):
        assert list(got) == list(want)
        for key in want:
            _exactly(got[key], want[key])
    elif isinstance(want, list):
        assert len(got) == len(want)
        for a, b in zip(got, want, strict=True):
            _exactly(a, b)
    else:
        assert got == want or (got != got and want != want)  # NaN


def _random_patch(rng: random.Random, before: dict[str, Any]) -> dict[str, Any]:
    keys = [*before, "new", "zz", "a"]
    values = [
        rng.randrange(-(2**70), 2**70),
        "t\u00e9xt",
        True,
        None,
        1.5,
        {"b": 1, "a": [2]},
        [3, "x"],
    ]
    return {rng.choice(keys): rng.choice(values) for _ in range(rng.randrange(1, 3))}


def test_data_remembered_after_a_write_is_what_decoding_the_written_bytes_gives() -> None:
    """_Derived.wrote: whatever the data before and the patch, the data a cycle hands
    the next one without decoding is exactly the decoding of the bytes written."""
    from gateway.rules import dump_data, load_data
    from gateway.runtime.cycle import _Derived

    rng = random.Random(SEED)
    remembered = 0
    for case in range(300):
        # Data as a user may send it (keys in any order, nested, floats) or as written.
        data = {"zeta": 1, "alpha": {"y": 1, "x": [1.25, {"k": None}]}, "mid": "m"}
        raw = json_bytes(data, sort=case % 2 == 0)
        obj = _object_with(raw, "application/json")
        derived = _Derived()
        for _ in range(6):
            before = derived.data_of(obj, lambda o: load_data(o.data, o.content_type))
            patch = _random_patch(rng, before)
            merged = {**before, **patch}
            encoded = dump_data(merged)
            derived.wrote(obj, before, merged, patch, encoded)
            obj = _object_with(encoded, "application/json")
            if derived.raw is encoded:
                remembered += 1
            got = derived.data_of(obj, lambda o: load_data(o.data, o.content_type))
            _exactly(got, load_data(encoded, "application/json"))
    assert remembered > 100  # the shortcut was taken, not only the long way


def test_a_write_into_data_rules_do_not_read_as_json_is_never_remembered() -> None:
    from gateway.rules import dump_data
    from gateway.runtime.cycle import _Derived

    obj = _object_with(b"\x00\x01", "application/octet-stream")
    derived = _Derived()
    before = derived.data_of(obj, lambda o: {})
    merged = {**before, "a": 1}
    derived.wrote(obj, before, merged, {"a": 1}, dump_data(merged))
    assert derived.written is None and derived.canonical is None
    written = _object_with(dump_data(merged), "application/octet-stream")
    assert derived.data_of(written, lambda o: {}) == {}  # what load_data gives it


def test_cycles_hand_their_written_data_on_exactly(tmp_path: Any) -> None:
    """Through the cycle path: after each cycle of objects whose rules write (leaves,
    new keys, nested values, floats), the data the object's memo holds for its new
    bytes is exactly their decoding."""
    import asyncio

    from gateway.config import load_config
    from gateway.host import Host
    from gateway.rules import load_data
    from gateway.runtime.cycle import _Derived
    from gateway.testing import HostSpec, build_world, create_from_spec
    from tests.conftest import FAST_HANDOFF, HOST_A
    from tests.test_cycle import OFFERS, spec

    writes = [
        '{"checked": generation}',
        '{"flag": generation % 3 == 0, "amount": data.amount + 1}',
        '{"name": "n" + string(generation)}',
        '{"nested": {"b": generation, "a": [1, 2]}}',
        '{"ratio": double(generation) / 4.0}',
        '{"status": generation % 2 == 0 ? "open" : "paid", "gone": null}',
    ]
    world = build_world(tmp_path, [HostSpec(host_id=HOST_A, handoff=FAST_HANDOFF, policy=OFFERS)])
    capabilities = [{"resource": "state:self", "actions": ["read", "write"]}]

    async def main() -> None:
        host = await Host.open(load_config(world.config(HOST_A)))
        try:
            runner = host.cycles
            remembered = 0
            for index, write in enumerate(writes):
                object_id = f"obj://org-a.example/p5/{index}"
                rules = [{"name": "w", "when": "generation % 5 != 4", "write": write}]
                data = {"status": "open", "amount": 5, "b": {"z": 1, "y": 2}}
                await create_from_spec(
                    host, object_id, spec(rules, capabilities=capabilities, data=data)
                )
                obj = await host.get_object(object_id, tenant="default")
                derived = _Derived()
                for step in range(12):
                    now = NOW + timedelta(seconds=step)
                    obj, _events, _admitted, _denied = runner._evaluate(obj, now, None, derived)
                    if derived.raw is obj.data:
                        remembered += 1
                        _exactly(derived.data, load_data(obj.data, obj.content_type))
            assert remembered > 10
        finally:
            await host.close()

    asyncio.run(main())


def json_bytes(value: Any, *, sort: bool) -> bytes:
    import json

    return json.dumps(value, sort_keys=sort, separators=(",", ":")).encode()


def _object_with(data: bytes, content_type: str) -> Any:
    return dataclasses.replace(_object(), data=data, content_type=content_type)


def test_folding_refused_early_gives_what_fold_repeats_gives() -> None:
    """Compaction.folded's early refusal (the last entries differ) answers exactly what
    gateway.archive.fold_repeats answers, folds included, over seeded cycles that repeat
    or change (in their last entry or only in an earlier one)."""
    from types import SimpleNamespace

    from gateway.archive import fold_repeats
    from gateway.lineage import EntryKind
    from gateway.runtime.compaction import Compaction

    compaction = Compaction(SimpleNamespace(journal=SimpleNamespace(store=None)))  # type: ignore[arg-type]
    rng = random.Random(SEED)
    groups = [
        [(EntryKind.EVALUATED, b"\x01" * 32, "0 of 3 rules fired")],
        [
            (EntryKind.ACTION_ADMITTED, b"\x01" * 32, "rule p"),
            (EntryKind.EVALUATED, b"\x01" * 32, "1 of 3 rules fired"),
        ],
        [
            (EntryKind.ACTION_ADMITTED, b"\x02" * 32, "rule q"),
            (EntryKind.EVALUATED, b"\x01" * 32, "1 of 3 rules fired"),
        ],
        [(EntryKind.EVALUATED, b"\x02" * 32, "0 of 3 rules fired")],
    ]
    folds = 0
    obj = _object()
    for step in range(400):
        group = rng.choice(groups)
        after = dataclasses.replace(
            obj,
            lineage=obj.lineage.append_all(
                group,
                host=rng.choice(["h", "h2"]) if step % 9 == 0 else "h",
                at=NOW + timedelta(seconds=step),
                epoch=0,
                generation=step,
                credentials_digest=b"\x03" * 32,
            ),
        )
        got = compaction.folded(obj, after)
        want = fold_repeats(obj, after)
        assert [e.encode() for e in got.lineage.entries] == [
            e.encode() for e in want.lineage.entries
        ]
        folds += got is not after
        obj = got
    assert folds > 20  # folds happened, and were the same


def _random_tree(rng: random.Random, depth: int = 0) -> Any:
    leaves = [
        None,
        True,
        False,
        rng.randrange(-(2**80), 2**80),
        rng.random() * 10 ** rng.randrange(-300, 300),
        float("inf"),
        float("nan"),
        -0.0,
        "".join(
            chr(rng.choice([rng.randrange(0, 128), rng.randrange(128, 0x10FFFF)]))
            for _ in range(rng.randrange(6))
        ).replace("\ud800", ""),
    ]
    if depth > 3 or rng.random() < 0.4:
        return rng.choice(leaves)
    if rng.random() < 0.5:
        return [_random_tree(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = [f"k{rng.randrange(50)}", "é", "a", "Z", "", "\u2603"]
    return {rng.choice(keys): _random_tree(rng, depth + 1) for _ in range(rng.randrange(5))}


def test_trees_are_dumped_as_dump_data_dumps_them() -> None:
    from gateway import rules

    rng = random.Random(SEED)
    for _ in range(500):
        tree = _random_tree(rng)
        want = rules._CANONICAL.encode(tree)
        assert rules.canonical_tree(tree) == want
        if isinstance(tree, dict):
            assert rules.dump_tree(tree) == rules.dump_data(tree)
    # A value holding itself (a YAML alias in a spec's data) is still refused by
    # dump_data, which a spec's data goes through; and after a refusal the tree encoder
    # has kept nothing (it keeps no markers).
    looped: dict[str, Any] = {"a": 1}
    looped["self"] = looped
    with pytest.raises(ValueError, match="Circular"):
        rules.dump_data(looped)
    with pytest.raises(TypeError):
        rules.canonical_tree({"a": {"b": object()}})
    assert rules.canonical_tree({"a": {"b": 1}}) == '{"a":{"b":1}}'


@pytest.mark.parametrize("generation", [0, 1, 2**63, 2**64 - 2, 2**64 - 1, 2**64, -1, True])
def test_the_next_generation_is_next_counters(generation: int) -> None:
    from gateway.errors import LimitExceededError
    from gateway.limits import next_counter
    from gateway.runtime.cycle import CycleRunner

    obj = dataclasses.replace(
        _object(),
        cycle=CycleState(generation=generation, interval=timedelta(seconds=1), next_due=NOW),
    )
    if not 0 <= generation < 2**64 - 1:
        with pytest.raises(LimitExceededError) as wanted:
            next_counter(generation, what=f"the generation of {obj.object_id}")
        with pytest.raises(LimitExceededError) as raised:
            CycleRunner._next_cycle(obj, NOW)
        assert str(raised.value) == str(wanted.value)
        return
    want = next_counter(generation, what=f"the generation of {obj.object_id}")
    got = CycleRunner._next_cycle(obj, NOW).generation
    assert got == want
    assert type(got) is type(want)


def test_a_remembered_digest_is_only_ever_that_of_the_very_same_bytes() -> None:
    import hashlib

    from gateway.lineage import DIGEST_MEMO_MAX_BYTES, digest

    rng = random.Random(SEED)
    for _ in range(200):
        data = rng.randbytes(
            rng.choice([0, 1, 90, DIGEST_MEMO_MAX_BYTES, DIGEST_MEMO_MAX_BYTES + 1])
        )
        want = hashlib.sha256(data).digest()
        assert digest(data) == want
        assert digest(data) == want  # the same object again: from the slot
        assert digest(bytes(bytearray(data))) == want  # equal bytes, another object
        other = rng.randbytes(8)
        assert digest(other) == hashlib.sha256(other).digest()
    # Mutable buffers are never remembered: what they hold now is what is digested.
    buffer = bytearray(b"before")
    assert digest(buffer) == hashlib.sha256(b"before").digest()
    buffer[:] = b"after!"
    assert digest(buffer) == hashlib.sha256(b"after!").digest()
    view = memoryview(buffer)
    assert digest(view) == hashlib.sha256(b"after!").digest()
    buffer[0:1] = b"A"
    assert digest(view) == hashlib.sha256(b"After!").digest()
