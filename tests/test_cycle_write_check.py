"""A cycle's write checks what it adds to the data, not the whole data again.

The data an object's rules read was checked whole when the object was created or
arrived (gateway.handoff.context.check_rules), and every write since checked what it
added; so the merge of a write is within the bounds (gateway.rules.check_data) exactly
when its patch is and the merged top level is not too large. A write into a large
document used to walk every element of it again, once per write."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway import rules
from gateway.host import Host
from gateway.lineage import EntryKind
from gateway.runtime.cycle import CycleResult, CycleRunner, _Derived
from gateway.testing import HostSpec, World, build_world, create_from_spec
from tests.conftest import FAST_HANDOFF, HOST_A
from tests.test_cycle import OFFERS, in_host, spec

WRITE = [{"resource": "state:self", "actions": ["read", "write"]}]


def text_counter() -> tuple[list[str], Callable[[str], None]]:
    """A stand-in for ``rules._check_text`` that checks as it does and notes each text:
    what a write checked (patch it in once the object exists)."""
    checked: list[str] = []
    check_text = rules._check_text

    def counted(text: str) -> None:
        checked.append(text)
        check_text(text)

    return checked, counted


@pytest.fixture
def one_host(tmp_path: Path) -> World:
    return build_world(tmp_path, [HostSpec(host_id=HOST_A, handoff=FAST_HANDOFF, policy=OFFERS)])


async def _one_cycle(host: Host, object_id: str, rule: dict[str, Any], data: Any) -> Any:
    await create_from_spec(host, object_id, spec([rule], capabilities=WRITE, data=data))
    assert (await host.cycles.run("default", object_id)).result is CycleResult.EVALUATED
    return await host.get_object(object_id, tenant="default")


def test_a_write_checks_the_text_it_adds_not_the_whole_data(
    one_host: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = {f"line-{n}": f"text {n}" for n in range(400)}  # 800 strings (keys and values)
    rule = {"name": "w", "when": "true", "write": '{"checked": generation}'}
    checked, counted = text_counter()

    async def scenario(host: Host) -> None:
        object_id = "obj://org-a.example/live/large"
        await create_from_spec(host, object_id, spec([rule], capabilities=WRITE, data=data))
        monkeypatch.setattr(rules, "_check_text", counted)
        assert (await host.cycles.run("default", object_id)).result is CycleResult.EVALUATED
        obj = await host.get_object(object_id, tenant="default")
        assert obj.lineage.entries[-2].kind is EntryKind.ACTION_ADMITTED
        assert json.loads(obj.data) == {**data, "checked": 0}
        # At most the key written; an int needs no check (and since session 42 an ASCII
        # key none either: tests/test_p5rules_s42_patch.py).
        assert set(checked) <= {"checked"}

    in_host(one_host, scenario)


def test_a_write_that_makes_the_top_level_too_large_is_still_denied(one_host: World) -> None:
    data = {f"k{n:04d}": n for n in range(rules.COLLECTION_BOUND)}  # at the bound
    rule = {"name": "w", "when": "true", "write": '{"one_more": 1}'}

    async def scenario(host: Host) -> None:
        obj = await _one_cycle(host, "obj://org-a.example/live/full", rule, data)
        denied = obj.lineage.entries[-2]
        assert denied.kind is EntryKind.ACTION_DENIED
        assert f"collection of {rules.COLLECTION_BOUND + 1} elements" in denied.detail
        assert json.loads(obj.data) == data

    in_host(one_host, scenario)


def test_a_write_that_nests_too_deep_is_still_denied(one_host: World) -> None:
    deep: Any = "leaf"
    for _ in range(rules.MAX_DATA_DEPTH - 1):
        deep = {"d": deep}
    data = {"a": deep}  # the leaf at MAX_DATA_DEPTH: within the bound
    rule = {"name": "w", "when": "true", "write": '{"b": {"x": data.a}}'}  # one deeper

    async def scenario(host: Host) -> None:
        obj = await _one_cycle(host, "obj://org-a.example/live/deep", rule, data)
        denied = obj.lineage.entries[-2]
        assert denied.kind is EntryKind.ACTION_DENIED
        assert f"nested more than {rules.MAX_DATA_DEPTH} deep" in denied.detail
        assert json.loads(obj.data) == data

    in_host(one_host, scenario)


def test_a_write_of_text_rules_cannot_read_is_still_denied(one_host: World) -> None:
    """A lone surrogate cannot come out of CEL; a patch key is checked like its value."""
    bad = "\ud800"
    with pytest.raises(rules.RuleError, match="not valid Unicode"):
        rules.check_patch({"a": 1, bad: 1}, {bad: 1})
    with pytest.raises(rules.RuleError, match="not valid Unicode"):
        rules.check_patch({"a": 1, "b": [bad]}, {"b": [bad]})
    rules.check_patch({"a": [bad], "b": 1}, {"b": 1})  # what the patch leaves is not its own


def test_a_cycling_objects_own_writes_stay_out_of_the_runners_data_memo(
    one_host: World,
) -> None:
    """The runner's memo of decoded data serves objects it has not cycled yet (an
    arrival, then its first cycle); an object cycling here keeps its decoded data in its
    own :class:`_Derived`, and the bytes its own write made were never in the shared
    memo: asking it costs a miss, and putting them fills it with what nobody asks for."""
    rule = {"name": "w", "when": "true", "write": '{"checked": generation}'}

    async def scenario(host: Host) -> None:
        object_id = "obj://org-a.example/live/writer"
        obj = await create_from_spec(host, object_id, spec([rule], capabilities=WRITE))
        runner = CycleRunner(host.context)
        derived = _Derived()
        now = host.clock.now()
        for generation in range(3):
            obj, _events, admitted, _denied = runner._evaluate(obj, now, None, derived)
            assert admitted == 1 and json.loads(obj.data)["checked"] == generation
        assert len(runner._data) == 1  # the first decode only

    in_host(one_host, scenario)
