"""The gateway's pytest plugin: real multi-organization worlds as fixtures.

Registered through the ``pytest11`` entry point ``gateway``, so installing the package
makes the fixtures available to any test suite (``-p no:gateway`` turns it off)::

    from gateway.testing import HostSpec

    def test_partner_handoff(gateway_world):
        world = gateway_world([HostSpec(host_id=A), HostSpec(host_id=B)])
        world.create(A, OBJECT, data={"invoice": 7})
        assert world.handoff(OBJECT, source=A, to=B) == B
        world.assert_invariants(OBJECT)

See docs/testing-plugin.md. The plugin only adds fixtures whose names start with
``gateway_``: it adds no hooks, options or markers, so a suite that does not ask for its
fixtures runs exactly as it would without it. The gateway itself is imported only when a
fixture is used, so loading the plugin costs nothing and arms nothing.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, overload

import pytest

if TYPE_CHECKING:
    from gateway.testing import HostSpec, World
    from gateway.testing.harness import InProcessWorld, ProcessWorld, RunningWorld


class WorldFactory(Protocol):
    """``gateway_world(hosts, mode=..., running=...)``: build and start a world."""

    @overload
    def __call__(
        self,
        hosts: Sequence[HostSpec] | World,
        *,
        mode: Literal["inprocess"] = ...,
        running: Sequence[str] | None = None,
    ) -> InProcessWorld: ...

    @overload
    def __call__(
        self,
        hosts: Sequence[HostSpec] | World,
        *,
        mode: Literal["process"],
        running: Sequence[str] | None = None,
    ) -> ProcessWorld: ...


@pytest.fixture
def gateway_world(tmp_path: Path) -> Iterator[WorldFactory]:
    """A factory of running worlds, all stopped when the test ends.

    ``hosts``: the :class:`~gateway.testing.HostSpec` of each host (one organization per
    trust domain, each with its own CA, keys, tenants and policy), or a
    :class:`~gateway.testing.World` already built. ``mode``: ``"inprocess"`` (hosts
    served in this process; message faults and clock skew) or ``"process"`` (``gateway
    serve`` processes; crash points). ``running``: the hosts to start (default all).
    """
    from gateway.testing.harness import open_world

    started: list[RunningWorld] = []

    def make(
        hosts: Sequence[HostSpec] | World,
        *,
        mode: str = "inprocess",
        running: Sequence[str] | None = None,
    ) -> InProcessWorld | ProcessWorld:
        directory = tmp_path / f"gateway-world-{len(started)}"
        world = open_world(directory, hosts, mode=mode, running=running)
        started.append(world)
        return world

    try:
        yield make  # type: ignore[misc]
    finally:
        for world in reversed(started):
            world.close()
