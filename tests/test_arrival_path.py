"""What one arrival costs does not repeat itself (issue 13, point 4): the grant chain is
verified once, and compiled rules are shared through a cache keyed by their content."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest

import gateway.handoff.context as context_module
from gateway import credentials
from gateway.model import Publish, Rule
from gateway.rules import compiled
from gateway.testing import HostSpec, build_world
from gateway.testing.harness import InProcessWorld
from tests.conftest import HOST_A, HOST_B

OBJECT = "obj://org-a.example/billing/invoice-7"


def test_an_arrival_verifies_the_grant_chain_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The destination's assessment (shared by Prepare and the dry run) verifies the
    chain once; before, chain_of ran three times per arrival."""
    world = InProcessWorld(
        build_world(tmp_path, [HostSpec(host_id=HOST_A), HostSpec(host_id=HOST_B)])
    )
    with contextlib.closing(world):
        world.create(
            HOST_A,
            OBJECT,
            data={"amount": 5},
            spec={
                "grant": {
                    "audience": "spiffe://org-b.example",
                    "capabilities": [{"resource": "state:self", "actions": ["read"]}],
                }
            },
        )
        host_a, host_b = world.hosts[HOST_A], world.hosts[HOST_B]
        proposal = world.run(host_a.export_proposal(OBJECT, tenant="default", destination=HOST_B))
        calls: list[Any] = []
        real = credentials.verify_chain

        def counting(*args: Any, **kwargs: Any) -> Any:
            calls.append(kwargs.get("object_id"))
            return real(*args, **kwargs)

        monkeypatch.setattr(context_module, "verify_chain", counting)
        evaluation = world.run(host_b.evaluate_proposal(proposal))
        assert evaluation.admitted, evaluation
        assert calls == [OBJECT]


def test_compiled_rules_are_shared_by_content() -> None:
    """Equal rules (as two arrivals of objects with the same rules carry) compile once;
    different rules get their own entry."""
    first = (Rule(name="r", when="data.amount > 1", action=Publish(topic="alerts/x")),)
    same = (Rule(name="r", when="data.amount > 1", action=Publish(topic="alerts/x")),)
    other = (Rule(name="r", when="data.amount > 2", action=Publish(topic="alerts/x")),)
    assert compiled(first) is compiled(same)
    assert compiled(other) is not compiled(first)
    assert compiled(other).rules[0].rule.when == "data.amount > 2"
