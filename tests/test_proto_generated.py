"""The committed generated code matches the .proto files and the declared dependency floors."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
GENERATED = ROOT / "gateway" / "v1"


def test_committed_code_is_what_the_protos_generate(tmp_path: Path) -> None:
    """Regenerating into a scratch directory gives byte-identical files (and no others)."""
    subprocess.run(
        [sys.executable, str(ROOT / "proto" / "generate.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    fresh = {p.name: p.read_bytes() for p in (tmp_path / "gateway" / "v1").iterdir()}
    committed = {p.name: p.read_bytes() for p in GENERATED.iterdir() if p.is_file()}
    assert sorted(fresh) == sorted(committed), (
        "generated file set differs: run python proto/generate.py"
    )
    stale = sorted(name for name in fresh if fresh[name] != committed[name])
    assert not stale, f"stale generated code {stale}: run python proto/generate.py and commit"


def _floor(requirement: str, dependencies: list[str]) -> Version:
    for dependency in dependencies:
        match = re.fullmatch(rf"{requirement}\s*>=\s*([0-9.]+)", dependency.strip())
        if match:
            return Version(match.group(1))
    raise AssertionError(f"pyproject.toml declares no '{requirement}>=' floor")


def test_dependency_floors_cover_the_generated_code() -> None:
    """pyproject.toml must not allow a protobuf or grpcio older than the generated code needs."""
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    protobuf_needed = {
        Version(m.group(1))
        for p in GENERATED.glob("*_pb2.py")
        if (m := re.search(r"# Protobuf Python Version: ([0-9.]+)", p.read_text()))
    }
    grpc_needed = {
        Version(m.group(1))
        for p in GENERATED.glob("*_pb2_grpc.py")
        if (m := re.search(r"GRPC_GENERATED_VERSION = '([0-9.]+)'", p.read_text()))
    }
    assert protobuf_needed and grpc_needed, "could not read versions from the generated code"
    assert _floor("protobuf", dependencies) >= max(protobuf_needed)
    assert _floor("grpcio", dependencies) >= max(grpc_needed)
