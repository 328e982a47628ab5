#!/usr/bin/env python3
"""Regenerate the committed Python code for proto/gateway/v1/*.proto.

Run from anywhere: ``python proto/generate.py`` (needs the test extra: grpcio-tools and
mypy-protobuf at the versions pinned in pyproject.toml). ``--out DIR`` writes elsewhere;
tests/test_proto_generated.py uses that to check the committed code is not stale.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
PACKAGE_DIR = Path("gateway") / "v1"

INIT = '''"""Generated wire types for gateway.v1 (do not edit; run proto/generate.py).

Internal: only the serialization layer (gateway/wire.py) and transport/ import these.
"""
'''


def generate(out: Path) -> list[Path]:
    """Write *_pb2.py, *_pb2.pyi and *_pb2_grpc.py for every proto under out/gateway/v1."""
    protos = sorted(PROTO_DIR.glob("gateway/v1/*.proto"))
    if not protos:
        raise SystemExit(f"no .proto files under {PROTO_DIR / PACKAGE_DIR}")
    target = out / PACKAGE_DIR
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    bindir = str(Path(sys.executable).parent)
    plugins = {
        name: shutil.which(f"protoc-gen-{name}", path=bindir) for name in ("mypy", "mypy_grpc")
    }
    for name, plugin in plugins.items():
        if plugin is None:
            raise SystemExit(
                f"protoc-gen-{name} not found next to this Python: pip install -e '.[test]'"
            )
    proto_include = Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{proto_include}",
        *(f"--plugin=protoc-gen-{name}={plugin}" for name, plugin in plugins.items()),
        f"--python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        f"--grpc_python_out={out}",
        *(str(p.relative_to(PROTO_DIR)) for p in protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed; see the messages above")
    (target / "__init__.py").write_text(INIT)
    return sorted(target.iterdir())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT, help="root to write gateway/v1 under")
    files = generate(parser.parse_args().out)
    print(f"generated {len(files)} files in {PACKAGE_DIR}")


if __name__ == "__main__":
    main()
