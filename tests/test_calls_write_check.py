"""An answer's write checks what it adds to the data, as a cycle's write does
(tests/test_cycle_write_check.py): the data was checked whole when the object was
created or arrived, and every write since checked what it added."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway import rules
from gateway.config import load_config
from gateway.errors import CallDeniedError
from gateway.host import Host
from gateway.objectspec import parse_spec
from gateway.runtime.calls import CallResult, caller_of_host
from gateway.testing import HostSpec, build_world, create_from_spec
from tests.conftest import HOST_A, HOST_B
from tests.test_calls import POLICY, SPEC
from tests.test_cycle_write_check import text_counter

OBJECT = "obj://org-a.example/orders/large"


def _with_object(
    tmp_path: Path, spec: dict[str, Any], scenario: Callable[[Host], Awaitable[None]]
) -> None:
    """``scenario`` on host A holding OBJECT made from ``spec``."""
    world = build_world(tmp_path, [HostSpec(host_id=HOST_A, policy=POLICY)])

    async def main() -> None:
        host = await Host.open(load_config(world.config(HOST_A)))
        try:
            await create_from_spec(host, OBJECT, parse_spec(spec, source="test"))
            await scenario(host)
        finally:
            await host.close()

    asyncio.run(main())


def _call(host: Host, method: str) -> Awaitable[CallResult]:
    return host.calls.call(
        tenant="default", object_id=OBJECT, method=method, data=b"", caller=caller_of_host(HOST_B)
    )


def test_an_answers_write_checks_the_text_it_adds_not_the_whole_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = {"order": 7, "status": "open", **{f"line-{n}": f"text {n}" for n in range(400)}}
    checked, counted = text_counter()

    async def scenario(host: Host) -> None:
        monkeypatch.setattr(rules, "_check_text", counted)
        answer = await _call(host, "approve")
        assert json.loads(answer.encoded) == f"approved by {caller_of_host(HOST_B)}"
        obj = await host.get_object(OBJECT, tenant="default")
        assert json.loads(obj.data) == {**data, "status": "approved"}
        # What the write brought, no more (since session 42 plain ASCII leaves under
        # ASCII keys need no call at all: tests/test_p5rules_s42_patch.py).
        assert set(checked) <= {"status", "approved"}

    _with_object(tmp_path, {**SPEC, "data": data}, scenario)


def test_an_answers_write_that_makes_the_top_level_too_large_is_still_refused(
    tmp_path: Path,
) -> None:
    data = {f"k{n:04d}": n for n in range(rules.COLLECTION_BOUND)}  # at the bound
    grant = {
        **SPEC["grant"],
        "capabilities": [
            {"resource": "state:self", "actions": ["read", "write"]},
            {"resource": "call:grow/org-b.example/*", "actions": ["call"]},
        ],
    }
    spec = {
        **SPEC,
        "data": data,
        "grant": grant,
        "answers": {"grow": {"reply": '"grown"', "write": '{"one_more": 1}'}},
    }

    async def scenario(host: Host) -> None:
        with pytest.raises(CallDeniedError, match=f"collection of {rules.COLLECTION_BOUND + 1}"):
            await _call(host, "grow")
        obj = await host.get_object(OBJECT, tenant="default")
        assert json.loads(obj.data) == data

    _with_object(tmp_path, spec, scenario)
