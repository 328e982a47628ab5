"""Malformed files and values given to the CLI: one ``gateway: error:`` line, the
documented exit status (``gateway --help``, README), never a traceback.

Each case runs the real ``gateway`` command in a subprocess against a real host
directory (its own CA, keys and SQLite file), with the file or value a careless
operator or a hostile peer's export could hand it.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from gateway.testing import HostSpec, World, build_world, run_cli
from tests.conftest import HOST_A, HOST_B

pytestmark = pytest.mark.slow

CONFIG_ERROR, REFUSED = 2, 1


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return build_world(
        tmp_path_factory.mktemp("cli-errors"), [HostSpec(host_id=HOST_A), HostSpec(host_id=HOST_B)]
    )


def assert_one_error_line(
    result: subprocess.CompletedProcess[str], status: int, mentions: str
) -> None:
    stderr = result.stderr
    assert result.returncode == status, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("gateway: error: "), stderr
    assert "Traceback" not in stderr and "internal error" not in stderr
    assert re.search(mentions, lines[0]), lines[0]


def _signed_bundle(world: World) -> dict[str, object]:
    exported = run_cli("trust", "export", config=world.config(HOST_B))
    assert exported.returncode == 0, exported.stderr
    return json.loads(exported.stdout)


@dataclass(frozen=True)
class BundleCase:
    name: str
    text: str
    mentions: str


def _bundle_cases(signed: dict[str, object]) -> list[BundleCase]:
    body = json.dumps(signed)
    return [
        BundleCase("not JSON", "{", "not JSON"),
        BundleCase("5000-digit integer", body[:-1] + ', "x": ' + "1" * 5000 + "}", "integer"),
        BundleCase("lone surrogate", body[:-1] + ', "x": "\\ud800"}', "surrogate"),
        BundleCase("deep nesting", "[" * 100_000 + "]" * 100_000, "nested"),
        BundleCase("NaN", body[:-1] + ', "x": NaN}', "NaN"),
        BundleCase("wrong type", json.dumps({**signed, "signatures": 7}), "signatures"),
        BundleCase("repeated member", body[:-1] + ', "payload": "AA=="}', "repeats"),
    ]


def test_trust_import_of_malformed_files(world: World, tmp_path: Path) -> None:
    for case in _bundle_cases(_signed_bundle(world)):
        path = tmp_path / "bundle.json"
        path.write_text(case.text, encoding="utf-8", errors="surrogatepass")
        result = run_cli("trust", "import", path, config=world.config(HOST_A))
        assert_one_error_line(result, REFUSED, case.mentions)


@pytest.mark.parametrize(
    ("change", "mentions"),
    [
        ("handoff:\n  retry_attempts: " + "1" * 5000 + "\n", "a value cannot be read"),
        ("handoff:\n  retry_attempts: 0x" + "f" * 5000 + "\n", "integer longer than"),
        ("handoff:\n  rpc_timeout_seconds: .nan\n", "rpc_timeout_seconds"),
        ("handoff:\n  rpc_timeout_seconds: 1e999\n", "rpc_timeout_seconds"),
        ("handoff:\n  rpc_timeout_seconds: 2026-02-30\n", "a value cannot be read"),
        ("handoff:\n  rpc_timeout_seconds: 2026-02-28\n", "rpc_timeout_seconds"),
        ("tenants: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
        ('tenants: ["\\ud800"]\n', "surrogate"),
    ],
    ids=["digits", "hex-digits", "nan", "inf", "bad-date", "date", "deep", "surrogate"],
)
def test_a_config_with_bad_values(world: World, tmp_path: Path, change: str, mentions: str) -> None:
    original = world.config(HOST_A)
    document = yaml.safe_load(original.read_text())
    del document["tenants"]  # the cases write their own
    config = original.parent / "bad.yaml"  # beside the original: its paths stay valid
    config.write_text(yaml.safe_dump(document) + change)
    result = run_cli("object", "list", config=config)
    assert_one_error_line(result, CONFIG_ERROR, mentions)
    config.unlink()


@pytest.mark.parametrize(
    ("spec", "mentions"),
    [
        (b"cycle:\n  interval_seconds: .inf\n", "interval_seconds"),
        (b"cycle:\n  interval_seconds: 1e300\n", "interval_seconds"),
        (b"grant:\n  valid_for_days: 0x" + b"f" * 5000 + b"\n", "integer longer than"),
        (b"data:\n  when: 2026-11-21\n", "cannot be written as JSON"),
        (b"data: &a [*a]\n", "cannot be written as JSON"),
        (b"data: {a: 0000-01-01}\n", "cannot be read"),
        (b"\xff\xfe", "not UTF-8"),
        (b"rules: " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested too deeply"),
        (b"1: x\nfoo: y\n", "unknown key"),
    ],
    ids=["inf", "huge", "hex-digits", "date", "cycle", "year-0", "not-utf8", "deep", "int-key"],
)
def test_object_create_with_a_bad_spec(
    world: World, tmp_path: Path, spec: bytes, mentions: str
) -> None:
    path = tmp_path / "spec.yaml"
    path.write_bytes(spec)
    result = run_cli(
        "object", "create", "obj://org-a.example/t/x", "--spec", path, config=world.config(HOST_A)
    )
    assert_one_error_line(result, CONFIG_ERROR, mentions)


@pytest.mark.parametrize("interval", ["nan", "inf", "1e300", "-1"])
def test_object_create_with_an_impossible_interval(world: World, interval: str) -> None:
    result = run_cli(
        "object",
        "create",
        "obj://org-a.example/t/y",
        f"--interval={interval}",
        config=world.config(HOST_A),
    )
    assert_one_error_line(result, CONFIG_ERROR, "--interval")
