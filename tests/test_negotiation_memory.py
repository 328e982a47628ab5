"""The server's memory of agreed protocol versions (gateway.transport.server._negotiated):
the same call metadata is answered without parsing it again, a refusal is never kept, and
the memory is bounded."""

from __future__ import annotations

from typing import Any

import pytest

from gateway import versions
from gateway.errors import VersionError
from gateway.transport import server

HOST = "spiffe://org-b.example/cluster/west/gateway"
PEER = "spiffe://org-a.example/cluster/east/gateway"


@pytest.fixture(autouse=True)
def empty_memory() -> Any:
    server._AGREED.clear()
    yield
    server._AGREED.clear()


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = versions.Capabilities.from_metadata

    def counting(metadata: Any) -> versions.Capabilities:
        calls.append(1)
        return real(metadata)

    monkeypatch.setattr(server.Capabilities, "from_metadata", counting)
    return calls


def test_the_same_metadata_is_agreed_once(parses: list[int]) -> None:
    metadata = tuple(versions.ours().metadata())
    first = server._negotiated(metadata, host=HOST, peer=PEER)
    again = server._negotiated(metadata, host=HOST, peer=PEER)
    assert first == again == max(versions.PROTOCOL_VERSIONS)
    assert len(parses) == 1


def test_a_refusal_is_not_kept(parses: list[int]) -> None:
    newer = versions.Capabilities(
        protocol=(max(versions.PROTOCOL_VERSIONS) + 1,),
        formats=versions.FORMAT_VERSIONS,
        features=frozenset(),
    )
    metadata = tuple(newer.metadata())
    for _ in range(2):
        with pytest.raises(VersionError, match="no version in common"):
            server._negotiated(metadata, host=HOST, peer=PEER)
    assert len(parses) == 2
    assert not server._AGREED


def test_the_memory_is_bounded() -> None:
    for index in range(server.AGREED_REMEMBERED + 5):
        metadata = (*versions.ours().metadata(), ("user-agent", f"client-{index}"))
        server._negotiated(metadata, host=HOST, peer=PEER)
    assert len(server._AGREED) == server.AGREED_REMEMBERED
