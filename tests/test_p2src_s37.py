"""Session 37's shortcuts on the source's path (issue 13, P2) give exactly what the plain
path gives. Seeded: every run checks the same cases.

* The peer client writes Prepare's and Commit's request bytes itself
  (:func:`~gateway.transport.framing.encode_field_one`): the bytes the generated messages
  serialize to, for every length around the varint steps and for any text.
* It hands grpc.aio the capabilities as one ``Metadata`` made per value of
  ``CAPABILITIES``: the pairs grpc.aio makes of the tuple itself, swapped with it.
* An envelope's format checks skip encoding ASCII text to see that it is UTF-8; a seal
  by one signer skips the duplicate-key set: the same outcome (value or error, with its
  words) as the checks written before, on generated cases.
* A signer finds its key's type once; the memory of verified signatures hashes each
  algorithm's and encoding's name from a table: the same signatures and digests.
* The source replaces fields of its records and of the frozen object slot by slot
  (``source._replacer``): the value ``dataclasses.replace`` gives, field by field and by
  identity.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import random
import struct
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from gateway import envelope as dsse
from gateway.config import HandoffConfig, PeerConfig
from gateway.errors import EnvelopeError, EnvelopeTooLargeError, GatewayError, PayloadDecodeError
from gateway.handoff import source
from gateway.handoff.journal import settled_form
from gateway.handoff.records import SourceRecord, SourceStep
from gateway.identity import HostId
from gateway.keys import VERIFIED_SIGNATURES, Algorithm, Purpose, SignatureEncoding, Signer
from gateway.model import GovernedObject
from gateway.transport import client as client_module
from gateway.transport.client import GrpcPeerClient
from gateway.transport.framing import encode_field_one
from gateway.v1 import gateway_pb2
from tests.test_p2wire_s36 import _random_object

SEED = 37
NOW = datetime(2026, 12, 7, 4, 0, tzinfo=UTC)
PEER = "spiffe://org-b.example/cluster/west/gateway"
#: Lengths where the varint of a length changes size, and their neighbours.
EDGES = (0, 1, 2, 126, 127, 128, 129, 255, 256, 16382, 16383, 16384, 16385, 70_000)


def _lengths(rng: random.Random) -> list[int]:
    return [*EDGES, *(rng.randrange(0, 20_000) for _ in range(40))]


def test_field_one_is_what_prepare_request_serializes_to() -> None:
    rng = random.Random(SEED)
    for length in _lengths(rng):
        transfer = rng.randbytes(length)
        want = gateway_pb2.PrepareRequest(transfer=transfer).SerializeToString()
        assert encode_field_one(transfer) == want, length
        assert gateway_pb2.PrepareRequest.FromString(want).transfer == transfer


def test_field_one_is_what_commit_request_serializes_to() -> None:
    rng = random.Random(SEED)
    alphabet = "abcdef0123456789-é漢\U0001f600"
    for length in _lengths(rng)[:30]:
        text = "".join(rng.choice(alphabet) for _ in range(length))
        want = gateway_pb2.CommitRequest(migration_id=text).SerializeToString()
        assert encode_field_one(text.encode("utf-8")) == want, length


def _client() -> GrpcPeerClient:
    peer = PeerConfig(id=HostId.parse(PEER), address="127.0.0.1:9", server_name="localhost")
    return GrpcPeerClient(
        peer, credentials=grpc.ssl_channel_credentials(), timing=HandoffConfig(retry_attempts=1)
    )


class Recorder:
    """A unary multicallable that records what it was called with and answers ``answer``."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.calls: list[tuple[Any, dict[str, Any]]] = []

    def __call__(self, request: Any, **kwargs: Any) -> Any:
        self.calls.append((request, kwargs))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_result(self.answer)
        return future


def test_prepare_and_commit_send_the_messages_bytes_with_the_capabilities() -> None:
    """What reaches gRPC is the serialized request the stub would have sent (the stub's
    serializer applied to its message), with the same metadata pairs and deadline."""

    async def run() -> None:
        client = _client()
        try:
            prepared = Recorder(gateway_pb2.PrepareResponse(receipt=b"staged"))
            committed = Recorder(gateway_pb2.CommitResponse(receipt=b"live"))
            client._prepare, client._commit = prepared, committed
            assert await client.prepare(b"\x01" * 300) == b"staged"
            assert await client.commit("mig-é1") == b"live"
        finally:
            await client.close()
        for recorder, message in (
            (prepared, gateway_pb2.PrepareRequest(transfer=b"\x01" * 300)),
            (committed, gateway_pb2.CommitRequest(migration_id="mig-é1")),
        ):
            [(request, kwargs)] = recorder.calls
            assert request == message.SerializeToString()
            assert tuple(kwargs["metadata"]) == client_module.CAPABILITIES
            assert kwargs["timeout"] == HandoffConfig().rpc_timeout.total_seconds()

    asyncio.run(run())


def test_sent_metadata_is_the_capabilities_and_follows_a_swap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sent = client_module._SentMetadata()
    first = sent.get()
    assert first == grpc.aio.Metadata(*client_module.CAPABILITIES)
    assert tuple(first) == client_module.CAPABILITIES
    assert sent.get() is first  # made once per value
    other = (("gateway-protocol", "2"),)
    monkeypatch.setattr(client_module, "CAPABILITIES", other)
    assert tuple(sent.get()) == other


# --- envelopes: the format checks and the seal --------------------------------------


def _plain_checks(payload_type: str, signatures: tuple[dsse.Signature, ...]) -> None:
    """Envelope's format checks as they were written before session 37 (the reference)."""
    if not payload_type or len(payload_type) > dsse.MAX_PAYLOAD_TYPE:
        raise EnvelopeError(
            f"payload type must be 1..{dsse.MAX_PAYLOAD_TYPE} characters, got {len(payload_type)}"
        )
    dsse._require_utf8(payload_type, "payload type")
    if not signatures:
        raise EnvelopeError("envelope has no signatures", hint="seal it with at least one key")
    if len(signatures) > dsse.MAX_SIGNATURES:
        raise EnvelopeTooLargeError(
            f"envelope has {len(signatures)} signatures; at most {dsse.MAX_SIGNATURES}"
        )
    seen: set[str] = set()
    for signature in signatures:
        if len(signature.keyid) > dsse.MAX_KEYID or len(signature.sig) > dsse.MAX_SIGNATURE_BYTES:
            raise EnvelopeTooLargeError("a signature or key id is larger than any we issue")
        dsse._require_utf8(signature.keyid, "key id")
        if signature.keyid and signature.keyid in seen:
            raise EnvelopeError(
                f"key id {signature.keyid[:16]} signs the envelope twice",
                hint="each key signs an envelope once",
            )
        seen.add(signature.keyid)


def _outcome(check: Any, *args: Any) -> tuple[type[BaseException], str, str | None] | None:
    try:
        check(*args)
    except GatewayError as exc:
        return type(exc), exc.reason, exc.hint
    return None


_TEXTS = ("", "a", "é", "\ud800", "k" * 16, "ü" * 3, "x\udfffy")


def _text(rng: random.Random, longest: int) -> str:
    choice = rng.randrange(4)
    if choice == 0:
        return rng.choice(_TEXTS)
    if choice == 1:
        return "".join(rng.choice("abc0123456789") for _ in range(rng.randrange(longest + 3)))
    if choice == 2:
        return rng.choice(("a", "é", "\ud800")) * rng.choice((longest - 1, longest, longest + 1))
    return "".join(rng.choice("aé\ud800b") for _ in range(rng.randrange(6)))


def _envelope(payload_type: str, signatures: tuple[dsse.Signature, ...]) -> None:
    dsse.Envelope(payload=b"p", payload_type=payload_type, signatures=signatures)


def test_envelope_checks_are_the_plain_checks() -> None:
    rng = random.Random(SEED)
    for _ in range(3000):
        payload_type = _text(rng, dsse.MAX_PAYLOAD_TYPE)
        count = rng.choice((0, 1, 1, 1, 2, 3, dsse.MAX_SIGNATURES, dsse.MAX_SIGNATURES + 1))
        keyids = [_text(rng, dsse.MAX_KEYID) for _ in range(count)]
        if count > 1 and rng.random() < 0.3:
            keyids[-1] = keyids[0]  # the same key id twice (or two empty ones)
        signatures = tuple(
            dsse.Signature(
                keyid=keyid,
                sig=b"s"
                * rng.choice((0, 64, dsse.MAX_SIGNATURE_BYTES, dsse.MAX_SIGNATURE_BYTES + 1)),
            )
            for keyid in keyids
        )
        want = _outcome(_plain_checks, payload_type, signatures)
        got = _outcome(_envelope, payload_type, signatures)
        assert got == want, (payload_type, signatures)


def test_seal_is_the_plain_seal() -> None:
    """Ed25519 signs deterministically: the envelope equals the one built by hand."""
    signers = [
        Signer(ed25519.Ed25519PrivateKey.from_private_bytes(bytes([i]) * 32)) for i in (1, 2)
    ]
    rng = random.Random(SEED)
    for count in (1, 2):
        payload = rng.randbytes(rng.randrange(1, 5000))
        message = dsse.pae(dsse.PayloadType.TRANSFER, payload)
        want = dsse.Envelope(
            payload=payload,
            payload_type=dsse.PayloadType.TRANSFER,
            signatures=tuple(
                dsse.Signature(keyid=s.key_id, sig=s.sign(message)) for s in signers[:count]
            ),
        )
        assert dsse.seal(payload, dsse.PayloadType.TRANSFER, signers[:count]) == want
    with pytest.raises(ValueError, match="listed twice"):
        dsse.seal(b"p", dsse.PayloadType.TRANSFER, [signers[0], signers[0]])
    with pytest.raises(EnvelopeError, match="no signatures"):
        dsse.seal(b"p", dsse.PayloadType.TRANSFER, [])


# --- keys: signing and the memory of verified signatures -----------------------------


def test_signer_signs_as_its_key_does() -> None:
    rng = random.Random(SEED)
    edwards = ed25519.Ed25519PrivateKey.from_private_bytes(rng.randbytes(32))
    signer = Signer(edwards)
    for _ in range(20):
        message = rng.randbytes(rng.randrange(0, 3000))
        assert signer.sign(message) == edwards.sign(message)
    ecdsa = Signer(ec.derive_private_key(rng.randrange(1, 2**200), ec.SECP256R1()))
    record = ecdsa.record(purposes=[Purpose.ENVELOPE], valid_from=NOW)
    for encoding in SignatureEncoding:
        message = rng.randbytes(300)
        signature = ecdsa.sign(message, encoding=encoding)
        record.verify(message, signature, encoding=encoding)  # raises if not
        if encoding is SignatureEncoding.P1363:
            assert len(signature) == 64


def test_verified_signature_digest_is_the_plain_digest() -> None:
    rng = random.Random(SEED)
    for algorithm in Algorithm:
        for encoding in SignatureEncoding:
            spki, message, sig = (
                rng.randbytes(44),
                rng.randbytes(rng.randrange(900)),
                rng.randbytes(64),
            )
            name, form = algorithm.value.encode(), encoding.value.encode()
            lengths = struct.pack(">5Q", len(spki), len(name), len(form), len(message), len(sig))
            want = hashlib.sha256(lengths + spki + name + form + message + sig).digest()
            got = VERIFIED_SIGNATURES.digest(spki, algorithm, encoding, message, sig)
            assert got == want, (algorithm, encoding)


# --- the source's replace, slot by slot ----------------------------------------------


def _same(got: object, want: object) -> None:
    """Equal, of the same class, and every field the very same value."""
    assert type(got) is type(want)
    assert got == want
    for field in dataclasses.fields(want):  # type: ignore[arg-type]
        assert getattr(got, field.name) is getattr(want, field.name), field.name


def _random_record(rng: random.Random) -> SourceRecord:
    return SourceRecord(
        migration_id=f"mig-{rng.randbytes(16).hex()}",
        object_id=f"obj://org-a.example/x/{rng.randrange(99)}",
        tenant=rng.choice(("default", "t2")),
        destination_host="spiffe://org-b.example/cluster/west/gateway",
        step=rng.choice(list(SourceStep)),
        transfer=rng.randbytes(rng.randrange(200)),
        staged_receipt=rng.randbytes(rng.randrange(3)),
        created_at=NOW,
        updated_at=NOW + timedelta(seconds=rng.randrange(9)),
        reason=rng.choice(("", "refused")),
        transfer_digest=rng.randbytes(rng.choice((0, 32))),
        epoch=rng.randrange(5),
    )


def test_replace_record_is_dataclasses_replace() -> None:
    rng = random.Random(SEED)
    names = [field.name for field in dataclasses.fields(SourceRecord)]
    for _ in range(300):
        record, other = _random_record(rng), _random_record(rng)
        changed = rng.sample(names, rng.randrange(len(names) + 1))
        changes = {name: getattr(other, name) for name in changed}
        _same(source._replace_record(record, **changes), replace(record, **changes))


@pytest.mark.parametrize("seed", range(12))
def test_replace_object_is_dataclasses_replace(seed: int) -> None:
    rng = random.Random(SEED + seed)
    obj, other = _random_object(seed), _random_object(seed + 100)
    names = [field.name for field in dataclasses.fields(GovernedObject)]
    for _ in range(20):
        changes = {n: getattr(other, n) for n in rng.sample(names, rng.randrange(len(names) + 1))}
        _same(source._replace_object(obj, **changes), replace(obj, **changes))


def test_replace_refuses_an_unknown_field_and_a_class_it_cannot_build() -> None:
    record = _random_record(random.Random(SEED))
    with pytest.raises(TypeError, match="no field colour"):
        source._replace_record(record, colour="red")

    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class Derived:
        a: int
        b: int = dataclasses.field(init=False, default=0)

    with pytest.raises(TypeError, match="does not set"):
        source._replacer(Derived)


def test_new_migration_id_is_the_hex_of_uuid4(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(SEED)
    for _ in range(2000):
        raw = rng.randbytes(16)
        monkeypatch.setattr(os, "urandom", lambda _n, raw=raw: raw)
        assert source.new_migration_id() == "mig-" + uuid.UUID(bytes=raw, version=4).hex


# --- a peer's answer that does not parse ---------------------------------------------


@pytest.mark.parametrize("rpc", ["prepare", "commit", "decision", "claim"])
def test_an_answer_that_does_not_parse_is_a_decode_error(rpc: str) -> None:
    """grpc.aio logs a response its deserializer refuses and answers ``None`` for it
    (grpc._common._transform): a peer's bytes that are no PrepareResponse came back as an
    AttributeError on ``None.receipt``, outside the gateway's errors."""

    async def run() -> None:
        client = _client()
        try:
            answer_none = Recorder(None)
            client._prepare = client._commit = answer_none
            client.stub.Decision = client.stub.Claim = answer_none
            calls = {
                "prepare": lambda: client.prepare(b"transfer"),
                "commit": lambda: client.commit("mig-1"),
                "decision": lambda: client.decision("mig-1"),
                "claim": lambda: client.claim(b"departure", b"decision"),
            }
            with pytest.raises(PayloadDecodeError, match="does not parse"):
                await calls[rpc]()
        finally:
            await client.close()

    asyncio.run(run())


def _settled_outcome(settle: Any, record: SourceRecord) -> SourceRecord | type[BaseException]:
    try:
        return settle(record)  # type: ignore[no-any-return]
    except Exception as exc:  # an old record's transfer that is no envelope: both refuse
        return type(exc)


def test_settled_is_settled_form() -> None:
    """Every step, with and without the transfer, its digest and its epoch kept."""
    rng = random.Random(SEED)
    for _ in range(600):
        record = _random_record(rng)
        if rng.random() < 0.3:
            record = replace(record, transfer=b"")
        want = _settled_outcome(settled_form, record)
        got = _settled_outcome(source._settled, record)
        if isinstance(want, SourceRecord):
            _same(got, want)
        else:
            assert got is want, record
