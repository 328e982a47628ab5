"""Every argument of every bench/ script says what it does in ``--help`` (the operator's
conventions hold for the benchmarks too). Read from the scripts' source, so a script
need not be run (most build worlds or spawn servers before they parse)."""

from __future__ import annotations

import ast
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _arguments_without_help() -> list[str]:
    missing = []
    for script in sorted(BENCH.rglob("*.py")):
        for node in ast.walk(ast.parse(script.read_text(), filename=str(script))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "add_argument"
                and not any(keyword.arg == "help" for keyword in node.keywords)
            ):
                names = [arg.value for arg in node.args if isinstance(arg, ast.Constant)]
                missing.append(f"{script.relative_to(BENCH.parent)}:{node.lineno} {names}")
    return missing


def test_the_bench_scripts_were_read() -> None:
    scripts = list(BENCH.rglob("*.py"))
    assert len(scripts) >= 10 and (BENCH / "run.py") in scripts


def test_every_bench_argument_has_help() -> None:
    assert _arguments_without_help() == []
