"""Everything in examples/ works: scripts run to success, configs parse with our loader."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import load_config

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("script", sorted(EXAMPLES.glob("*.py")), ids=lambda p: p.name)
def test_example_script_runs(script: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip(), "an example should show what it did"


@pytest.mark.parametrize("config", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_example_config_parses(config: Path) -> None:
    parsed = load_config(config)
    assert parsed.source == config.resolve()
    assert parsed.peers, "the example config shows a peer"


def test_there_are_examples() -> None:
    assert list(EXAMPLES.glob("*.py")) and list(EXAMPLES.glob("*.yaml"))
