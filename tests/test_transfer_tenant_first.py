"""A transfer is refused for its tenant before its object and lineage are decoded.

Decoding a transfer's lineage costs CPU in proportion to its entries: a 16 MiB transfer
of small entries (about 37,000) takes about half a second. A peer that may not deliver
into a tenant (not bound to it on this host, or the tenant not hosted here) learns
nothing from that work and must not be able to make the receiver do it: the tenant and
the binding are read from the parsed message first, and only an admissible transfer is
decoded into an object. These tests count the decodes (`wire._object_from_snapshot`) on
the receiver, in process, with both hosts' real keys and stores.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from gateway import envelope as dsse
from gateway import wire
from gateway.config import load_config
from gateway.errors import AdmissionDeniedError, TenantBindingError
from gateway.host import Host
from gateway.model import new_object
from gateway.testing import HostSpec, build_world, sealed_transfer, sign_transfer, stored_keys
from tests.conftest import HOST_A, HOST_B


def _world(tmp_path: Path) -> tuple[Path, Path]:
    world = build_world(
        tmp_path,
        [
            HostSpec(host_id=HOST_A, tenants=("a", "b", "c")),
            HostSpec(host_id=HOST_B, tenants=("a", "b"), peer_tenants={HOST_A: ("a",)}),
        ],
    )
    return world.config(HOST_A), world.config(HOST_B)


def _counting_decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every object decoded from a snapshot from now on, by object id."""
    seen: list[str] = []
    decode: Callable[..., Any] = wire._object_from_snapshot

    def counted(snapshot: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(snapshot.object_id)
        return decode(snapshot, *args, **kwargs)

    monkeypatch.setattr(wire, "_object_from_snapshot", counted)
    return seen


def _forged(source: Host, object_id: str, *, tenant: str, kind: str) -> bytes:
    """A transfer (or proposal) of a fresh object of ``tenant``, sealed and signed by
    ``source``'s real keys, with a lineage of 200 entries."""
    obj = new_object(
        object_id,
        tenant=tenant,
        data=b"{}",
        content_type="application/json",
        host=source.host_id,
        at=source.clock.now(),
    )
    lineage = obj.lineage
    for n in range(199):
        lineage = lineage.append(
            lineage.entries[-1].kind,
            host=source.host_id,
            at=source.clock.now(),
            epoch=0,
            generation=n + 1,
            data_digest=lineage.entries[-1].data_digest,
            credentials_digest=lineage.entries[-1].credentials_digest,
            detail=f"cycle {n}",
        )
    obj = replace(obj, lineage=lineage)
    return sign_transfer(source, sealed_transfer(source, obj, HOST_B), payload_type=kind)


def _run(a: Path, b: Path, act: Callable[[Host, Host], Any]) -> Any:
    async def main() -> Any:
        source = await Host.open(load_config(a))
        receiver = await Host.open(load_config(b))
        try:
            return await act(source, receiver)
        finally:
            await receiver.close()
            await source.close()

    return asyncio.run(main())


@pytest.mark.parametrize("kind", [dsse.PayloadType.TRANSFER, dsse.PayloadType.PROPOSAL])
@pytest.mark.parametrize(
    ("tenant", "refusal", "says"),
    [
        ("b", TenantBindingError, "refusing delivery into tenant 'b'"),
        ("c", AdmissionDeniedError, "tenant 'c' is not hosted on"),
    ],
)
def test_a_tenant_the_peer_may_not_deliver_into_is_refused_before_decoding(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
    tenant: str,
    refusal: type[Exception],
    says: str,
) -> None:
    a, b = _world(tmp_path)
    object_id = f"obj://org-a.example/early/{tenant}"

    async def act(source: Host, receiver: Host) -> None:
        raw = _forged(source, object_id, tenant=tenant, kind=kind)
        decoded = _counting_decodes(monkeypatch)
        step = (
            receiver.destination.evaluate
            if kind == dsse.PayloadType.PROPOSAL
            else receiver.destination.prepare
        )
        with pytest.raises(refusal) as refused:
            await step(raw, peer=HOST_A)
        assert says in str(refused.value)
        assert decoded == []  # refused from the parsed message: nothing decoded

    _run(a, b, act)
    assert stored_keys(b, f"t/{tenant}/") == []


def test_an_admissible_transfer_is_decoded_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control: the same peer, into its own tenant, is staged, its object decoded
    exactly once on the way (the early tenant check parses, it does not decode twice)."""
    a, b = _world(tmp_path)
    object_id = "obj://org-a.example/early/a"

    async def act(source: Host, receiver: Host) -> None:
        raw = _forged(source, object_id, tenant="a", kind=dsse.PayloadType.TRANSFER)
        decoded = _counting_decodes(monkeypatch)
        await receiver.destination.prepare(raw, peer=HOST_A)
        assert decoded == [object_id]

    _run(a, b, act)
    assert any("early" in key for key in stored_keys(b, "t/a/"))
