"""The README's own examples work: its host configuration parses, and its object spec,
created on the README's host under the README's `policy:`, holds the authority the README
says it does (and none without a policy)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import load_config
from gateway.host import Host
from gateway.objectspec import parse_spec
from gateway.testing import HostSpec, build_world, create_from_spec

README = Path(__file__).resolve().parents[1] / "README.md"
OBJECT = "obj://org-a.example/billing/invoice-42"


def _yaml_blocks() -> list[dict[str, Any]]:
    text = README.read_text(encoding="utf-8")
    return [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", text, re.S)]


def _block_with(key: str) -> dict[str, Any]:
    found = [b for b in _yaml_blocks() if isinstance(b, dict) and key in b]
    assert len(found) == 1, f"expected one README yaml block with {key!r}, found {len(found)}"
    return found[0]


HOST_CONFIG = _block_with("listen")
SPEC = _block_with("grant")


def test_readme_host_configuration_parses(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(HOST_CONFIG), encoding="utf-8")
    config = load_config(path)
    assert config.policy.offers.capabilities, "the README's config shows a policy that offers"


def _authority_of_readme_object(tmp_path: Path, policy: dict[str, Any] | None) -> str:
    host_id = HOST_CONFIG["host"]["id"]
    world = build_world(tmp_path, [HostSpec(host_id=host_id, policy=policy)])

    async def main() -> str:
        host = await Host.open(load_config(world.config(host_id)))
        try:
            obj = await create_from_spec(host, OBJECT, parse_spec(SPEC, source="README.md"))
            return str(obj.authority.allow)
        finally:
            await host.close()

    return asyncio.run(main())


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        pytest.param(
            HOST_CONFIG["policy"],
            "pubsub:alerts/overdue publish; state:self read,write",
            id="readme-policy-grants-publish-and-state",
        ),
        pytest.param(None, "(nothing)", id="no-policy-grants-nothing"),
    ],
)
def test_readme_spec_holds_authority_on_readme_host(
    tmp_path: Path, policy: dict[str, Any] | None, expected: str
) -> None:
    """What the README says the object may do there, as `gateway object show` prints it."""
    assert _authority_of_readme_object(tmp_path, policy) == expected
