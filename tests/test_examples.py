"""Everything in examples/ works: scripts run to success, configs parse with our loader."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import load_config

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
#: Example test files a user's CI can copy (they use the gateway's pytest plugin).
TEST_FILES = sorted(EXAMPLES.glob("test_*.py"))
SCRIPTS = sorted(set(EXAMPLES.glob("*.py")) - set(TEST_FILES))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_example_script_runs(script: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip(), "an example should show what it did"


@pytest.mark.slow
@pytest.mark.parametrize("test_file", TEST_FILES, ids=lambda p: p.name)
def test_example_test_file_passes_under_pytest(test_file: Path, tmp_path: Path) -> None:
    """As a user's CI runs it: pytest in a fresh process, the plugin loaded through its
    entry point (nothing from tests/conftest.py), every test passing."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test_file)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout


@pytest.mark.parametrize("config", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_example_config_parses(config: Path) -> None:
    parsed = load_config(config)
    assert parsed.source == config.resolve()
    assert parsed.peers, "the example config shows a peer"


def test_there_are_examples() -> None:
    assert SCRIPTS and TEST_FILES and list(EXAMPLES.glob("*.yaml"))


@pytest.mark.slow
def test_the_partner_exchange_walkthrough_shows_each_promise(tmp_path: Path) -> None:
    """examples/partner_exchange.py: narrowed on arrival at org-b, still narrowed after the
    return trip to org-a, then an offline leg, and a custody path of three handoffs."""
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "partner_exchange.py"), "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env={**os.environ, "COLUMNS": "300"},
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    narrowed = out.split("== on org-b: narrowed on arrival", 1)[1].split("==", 1)[0]
    assert "pubsub:alerts/overdue publish" in narrowed and "grants          2" in narrowed
    stuck = out.split("== on org-a: the narrowing stuck", 1)[1].split("==", 1)[0]
    assert "authority here  pubsub:alerts/overdue publish" in stuck
    assert "offline: org-b activates" in out and "done: " in out
    assert "custody verified: 3 handoff(s)" in out
    assert (tmp_path / "invoice.gwx").exists() and (tmp_path / "commit.json").exists()
    assert "== an auditor: gateway verify" in out


@pytest.mark.slow
def test_the_settlement_flow_runs_as_a_workflow_across_two_organizations(tmp_path: Path) -> None:
    """examples/settlement_flow.py: approvals by request, a migration mid-flight with the
    authority narrowed at org-b, a cancellation by event, and a settlement by timer there."""
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "settlement_flow.py"), "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env={**os.environ, "COLUMNS": "300"},
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout

    def section(title: str) -> str:
        return out.split(f"== {title}", 1)[1].split("\n== ", 1)[0]

    on_a = section("authority on org-a")
    assert "call:approve/org-a.example/* call" in on_a and "pubsub:audit/trail publish" in on_a
    on_b = section("mid-flight to org-b: narrowed on arrival")
    authority_b = next(line for line in on_b.splitlines() if line.startswith("authority here"))
    assert "org-a.example" not in authority_b and "audit" not in authority_b
    assert "grants          2" in on_b  # the narrowing is a child grant
    refused = section("org-a may no longer approve on org-b")
    assert "may not call approve" in refused
    assert '"approvals": 2, "of": 2' in section("org-b approves 1001 (2 of 2)")
    settled = section("1001: what happened, from its lineage")
    assert "rule settle: publish pubsub:settlements/settled" in settled
    assert "rule audit: publish pubsub:audit/trail: denied" in settled
    assert "attenuated" in settled and "call-denied" in settled
    assert "rule cancel: write state:self" in section("1002: what happened, from its lineage")
    assert "publish settlements/settled" in section("org-b's outbox")
    assert "done: 1001 settled on org-b, 1002 cancelled on org-b" in out
