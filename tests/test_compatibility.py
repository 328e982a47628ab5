"""Mixed versions: files written by released versions still read, hosts agree on a
protocol version or refuse naming both sides' versions.

tests/corpus/v1/ holds what release 0.1 wrote (trust bundles, a proposal, an object
archive, an offline transfer file, a staged receipt, a lineage), written by
``python -m tests.corpus.generate``. Every later release must read every corpus file (or
refuse it with the clear version error). The negotiation is tested in-process (both
sides' capabilities) and across a real `gateway serve` process.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gateway import envelope as dsse
from gateway import versions, wire
from gateway.audit import audit
from gateway.config import load_config
from gateway.errors import EnvelopeError, VersionError
from gateway.handoff import offline
from gateway.handoff.messages import ReceiptKind
from gateway.keys import KeyRecord, Purpose, Signer
from gateway.lineage import verify_lineage
from gateway.testing import HostSpec, ServerProcess, build_world
from gateway.trust import TrustStore, accept_bundle
from tests.conftest import HOST_A, HOST_B

CORPUS = Path(__file__).resolve().parent / "corpus"
NOW = datetime.now(UTC)


def _versions() -> list[Path]:
    return sorted(p for p in CORPUS.iterdir() if p.is_dir() and p.name.startswith("v"))


def _manifest(folder: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((folder / "MANIFEST.json").read_text(encoding="utf-8"))
    return document


def test_there_is_a_corpus_of_the_current_format() -> None:
    assert [p.name for p in _versions()] == [f"v{v}" for v in versions.FORMAT_VERSIONS]


@pytest.mark.parametrize("folder", _versions(), ids=lambda p: p.name)
def test_corpus_files_are_as_written(folder: Path) -> None:
    """A corpus file is history: changing one would hide an incompatibility."""
    files = _manifest(folder)["files"]
    assert len(files) >= 7
    for name, entry in files.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == entry["sha256"], name


def _bundles(folder: Path) -> list[tuple[str, bytes]]:
    files = _manifest(folder)["files"]
    return [
        (name, (folder / name).read_bytes())
        for name, entry in sorted(files.items())
        if entry["kind"] == "trust-bundle"
    ]


def _trust(folder: Path) -> TrustStore:
    accepted = []
    for _name, signed in _bundles(folder):
        envelope = dsse.from_json(signed, max_size=1 << 20)
        issued = json.loads(envelope.payload)["issued_at"]
        at = datetime.fromisoformat(issued.replace("Z", "+00:00"))
        accepted.append(accept_bundle(None, signed, at=at))
    return TrustStore.of(accepted)


def _read(folder: Path, name: str, kind: str) -> None:
    """Read one corpus file the way the gateway reads that kind; raise if it cannot."""
    raw = (folder / name).read_bytes()
    manifest = _manifest(folder)
    if kind == "trust-bundle":
        _trust(folder)  # every bundle accepted on first use, at its own issue time
    elif kind in ("proposal", "archive", "transfer-file"):
        subject = offline.transfer_envelope(folder / name) if kind == "transfer-file" else raw
        report = audit(subject, _bundles(folder), now=NOW)
        assert report.ok, [(c.name, c.detail) for c in report.failures]
        assert report.object_id == manifest["object_id"]
    elif kind == "staged-receipt":
        signed = offline.read_signed(folder / name)
        trust = _trust(folder)
        receipt = wire.decode_receipt(
            dsse.open_envelope(
                signed,
                payload_type=ReceiptKind.STAGED.payload_type,
                keys=trust.keys_for_host(
                    manifest["destination"],
                    purpose=Purpose.ENVELOPE,
                    at=trust.bundles["org-b.example"].issued_at,
                ),
            ).payload,
            ReceiptKind.STAGED,
        )
        assert receipt.object_id == manifest["object_id"]
    elif kind == "lineage":
        lineage = wire.decode_lineage(raw)
        verified = verify_lineage(
            lineage, object_id=manifest["object_id"], trust=_trust(folder), sealed=False
        )
        assert verified.size == len(lineage) >= 1
    else:
        pytest.fail(f"{name}: unknown corpus kind {kind!r}; teach this test to read it")


CORPUS_FILES = [
    pytest.param(folder, name, entry["kind"], id=f"{folder.name}/{name}")
    for folder in _versions()
    for name, entry in _manifest(folder)["files"].items()
]


@pytest.mark.parametrize(("folder", "name", "kind"), CORPUS_FILES)
def test_every_corpus_file_still_reads(folder: Path, name: str, kind: str) -> None:
    """Read, or refused with the version error naming both versions; nothing else."""
    try:
        _read(folder, name, kind)
    except VersionError as exc:
        refusal = str(exc)
    else:
        return
    assert folder.name.removeprefix("v") in refusal, refusal


# --- a newer format is refused by name ---------------------------------------------------


class _OneKey:
    """A KeyResolver trusting exactly one record."""

    def __init__(self, record: KeyRecord) -> None:
        self.record = record

    def resolve(self, key_id: str) -> KeyRecord:
        assert key_id == self.record.key_id
        return self.record

    def all(self) -> list[KeyRecord]:
        return [self.record]


def test_an_envelope_of_a_newer_format_is_refused_naming_both_versions() -> None:
    signer = Signer.generate()
    record = signer.record(purposes=[Purpose.ENVELOPE], valid_from=NOW)
    newer = dsse.PayloadType.TRANSFER.replace(".v1+", ".v2+")
    envelope = dsse.seal(b"payload of the future", newer, [signer])
    with pytest.raises(VersionError, match=r"version 2 of transfer.*reads version\(s\) 1"):
        dsse.open_envelope(envelope, payload_type=dsse.PayloadType.TRANSFER, keys=_OneKey(record))


def test_another_kind_of_message_is_not_a_version_question() -> None:
    signer = Signer.generate()
    record = signer.record(purposes=[Purpose.ENVELOPE], valid_from=NOW)
    envelope = dsse.seal(b"{}", dsse.PayloadType.CHECKPOINT, [signer])
    with pytest.raises(EnvelopeError) as caught:
        dsse.open_envelope(envelope, payload_type=dsse.PayloadType.TRANSFER, keys=_OneKey(record))
    assert not isinstance(caught.value, VersionError)


def test_a_transfer_file_of_a_newer_format_is_refused_naming_both_versions(tmp_path: Path) -> None:
    current = (CORPUS / "v1" / "transfer.gwt").read_bytes()
    newer = tmp_path / "transfer-v2.gwt"
    newer.write_bytes(
        current.replace(b"gateway-transfer-file/v1\n", b"gateway-transfer-file/v2\n", 1)
    )
    with pytest.raises(VersionError, match=r"format version 2.*reads version\(s\) 1"):
        offline.transfer_envelope(newer)


# --- hosts agree on a protocol version, or refuse naming both ------------------------------


def _caps(protocol: tuple[int, ...], formats: tuple[int, ...] = (1,)) -> versions.Capabilities:
    return versions.Capabilities(protocol=protocol, formats=formats, features=frozenset())


@pytest.mark.parametrize(
    ("mine", "theirs", "agreed"),
    [
        pytest.param((1,), (1,), 1, id="same-release"),
        pytest.param((1, 2), (1,), 1, id="newer-host-meets-older"),
        pytest.param((1, 2), (2, 3), 2, id="highest-common"),
    ],
)
def test_negotiation_agrees_on_the_highest_common_version(
    mine: tuple[int, ...], theirs: tuple[int, ...], agreed: int
) -> None:
    got = versions.negotiate(_caps(theirs), host="A", peer_name="B", mine=_caps(mine))
    assert got == agreed


def test_no_common_version_is_refused_naming_both() -> None:
    with pytest.raises(VersionError, match=r"B speaks protocol version\(s\) 2, 3, A speaks 1"):
        versions.negotiate(_caps((2, 3)), host="A", peer_name="B", mine=_caps((1,)))
    with pytest.raises(VersionError, match=r"reads format version\(s\) 2, A reads 1"):
        versions.negotiate(_caps((1,), (2,)), host="A", peer_name="B", mine=_caps((1,)))


def test_a_caller_that_announces_nothing_is_the_release_before_negotiation() -> None:
    assert versions.Capabilities.from_metadata(()) == _caps((1,), (1,))
    announced = versions.Capabilities.from_metadata(versions.ours().metadata())
    assert announced == versions.ours()


@pytest.mark.parametrize(
    "metadata",
    [
        [(versions.PROTOCOL_KEY, "one")],
        [(versions.PROTOCOL_KEY, ",".join(["1"] * 40))],
        [(versions.PROTOCOL_KEY, "1" * 600)],
    ],
    ids=["not-numbers", "too-many", "too-long"],
)
def test_a_peers_capabilities_are_bounded_and_checked(metadata: list[tuple[str, str]]) -> None:
    with pytest.raises(VersionError):
        versions.Capabilities.from_metadata(metadata)


@pytest.mark.slow
def test_hosts_of_different_versions_refuse_naming_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real `gateway serve` (this release, protocol 1) is called by a host that speaks
    only protocol 2: the call is refused with an error naming both versions, and a host
    of the same release gets its dry run answered."""
    from gateway.host import Host
    from gateway.transport import client

    offers = {"offers": [{"resource": "state:self", "actions": ["read", "write"]}]}
    world = build_world(
        tmp_path,
        [
            HostSpec(host_id=HOST_A, policy=offers, handoff={"retry_attempts": 1}),
            HostSpec(host_id=HOST_B, policy=offers, handoff={"retry_attempts": 1}),
        ],
    )
    obj = "obj://org-a.example/billing/versions-1"

    async def dry_run() -> Any:
        host = await Host.open(load_config(world.config(HOST_A)))
        try:
            if not await host.list_objects(tenant="default"):
                await host.create_object(
                    obj, tenant="default", data=b"{}", content_type="application/json"
                )
            return await host.evaluate_remote(obj, tenant="default", destination=HOST_B)
        finally:
            await host.close()

    server = ServerProcess(world.config(HOST_B)).start()
    try:
        assert asyncio.run(dry_run()).admitted
        monkeypatch.setattr(client, "CAPABILITIES", _caps((2,)).metadata())
        with pytest.raises(VersionError) as caught:
            asyncio.run(dry_run())
        # B (this release) names the caller's versions and its own.
        assert "speaks protocol version(s) 2, " in str(caught.value), caught.value
        assert f"{HOST_B} speaks 1" in str(caught.value), caught.value
    finally:
        server.stop()
