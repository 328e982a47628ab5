"""cel-expr-python's lost references to None cannot abort a gateway process
(gateway/_none_guard.py). Each case runs in a process of its own: what it guards
against is the interpreter aborting."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from gateway import _none_guard

#: Evaluations of rules that convert three nulls each: 120,000 nulls, ten times the
#: references None holds in a fresh gateway process (about 12,000 on CPython 3.11).
EVALUATIONS = 40_000

_CONVERTING_NULLS = textwrap.dedent(
    f"""
    import sys
    from datetime import UTC, datetime

    {{guard}}
    from gateway.model import Publish, Rule, WriteState
    from gateway.rules import compile_rules

    now = datetime(2026, 12, 7, tzinfo=UTC)
    rules = compile_rules([
        Rule(name="nulls", when="true",
             action=Publish(topic="alerts/n", payload='{{{{"n": null, "l": [null, null]}}}}')),
        Rule(name="none", when="data.maybe == null", action=Publish(topic="alerts/m")),
        Rule(name="write", when="generation % 2 == 0",
             action=WriteState(patch='{{{{"n": null}}}}')),
    ])
    for generation in range({EVALUATIONS}):
        outcome = rules.evaluate(
            data={{{{"maybe": None}}}}, generation=generation, epoch=1, now=now,
            host="spiffe://org-a.example/cluster/east/gateway",
        )
        assert len(outcome.proposals) == 2 + (generation % 2 == 0), outcome
    print("evaluated", {EVALUATIONS})
    """
)


def _run(guard: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _CONVERTING_NULLS.format(guard=guard)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_rules_that_convert_many_nulls_do_not_abort_the_process() -> None:
    done = _run("")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["evaluated", str(EVALUATIONS)]


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="None is immortal from 3.12 on")
def test_without_the_guard_the_same_rules_abort_it() -> None:
    # What the guard is for, shown on this interpreter and this cel-expr-python: the
    # guard switched off (as if None held it already), the same evaluations abort.
    done = _run("import gateway._none_guard as g; g.keep_none_alive = lambda: False")
    assert done.returncode != 0
    assert "deallocating None" in done.stderr


def test_none_is_given_its_references_once() -> None:
    if sys.version_info >= (3, 12):
        assert _none_guard.keep_none_alive() is False
        return
    assert _none_guard.keep_none_alive() is True  # gateway.rules asked already
    before = sys.getrefcount(None)
    assert before > _none_guard.NONE_REFERENCES
    assert _none_guard.keep_none_alive() is True
    assert sys.getrefcount(None) - before < 100  # not a second time
