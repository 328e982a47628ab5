"""Session 40's cuts of the destination's CPU per migration (issue 13, P2): each fast path
gives exactly what the plain path gives, checked on seeded cases against the plain path."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from gateway import envelope as dsse
from gateway.envelope import PayloadType
from gateway.errors import GatewayError
from gateway.keys import VERIFIED_SIGNATURES, KeyRecord, Purpose, Signer

SEED = 40
NOW = datetime(2026, 12, 7, tzinfo=UTC)


class _Keys:
    """A resolver over fixed records (what a trust store hands open_envelope)."""

    def __init__(self, *records: KeyRecord) -> None:
        self._records = {record.key_id: record for record in records}

    def resolve(self, key_id: str) -> KeyRecord:
        from gateway.errors import UntrustedKeyError

        try:
            return self._records[key_id]
        except KeyError:
            raise UntrustedKeyError(f"key {key_id[:16]} is not trusted") from None

    def all(self) -> list[KeyRecord]:
        return list(self._records.values())


@pytest.fixture
def empty_memory() -> Iterator[None]:
    VERIFIED_SIGNATURES.clear()
    yield
    VERIFIED_SIGNATURES.clear()


def _record(signer: Signer) -> KeyRecord:
    return signer.record(purposes=[Purpose.ENVELOPE], valid_from=NOW - timedelta(days=1))


def _outcome(envelope: dsse.Envelope, keys: _Keys, payload_type: str) -> object:
    try:
        verified = dsse.open_envelope(envelope, payload_type=payload_type, keys=keys)
    except GatewayError as exc:
        return (type(exc).__name__, str(exc))
    return verified


def _cases(rng: random.Random, signers: list[Signer]) -> Iterator[tuple[dsse.Envelope, str]]:
    """Envelopes of every payload type, sealed by one or two keys, some tampered with
    (payload byte, signature byte, payload type, signature dropped, unknown key), and
    the payload type each is opened as (mostly its own, sometimes another)."""
    types = [value for name, value in vars(PayloadType).items() if name.isupper()]
    stranger = Signer.generate()
    for _ in range(300):
        payload = rng.randbytes(rng.choice([0, 1, 40, 700, 4400]))
        kind = rng.choice(types)
        chosen = rng.sample(signers, rng.choice([1, 2]))
        if rng.random() < 0.1:
            chosen = [stranger]
        envelope = dsse.seal(payload, kind, chosen)
        harm = rng.randrange(6)
        if harm == 1 and payload:
            at = rng.randrange(len(payload))
            spoiled = payload[:at] + bytes([payload[at] ^ 1]) + payload[at + 1 :]
            envelope = dsse.Envelope(
                payload=spoiled, payload_type=kind, signatures=envelope.signatures
            )
        elif harm == 2:
            first = envelope.signatures[0]
            sig = bytes([first.sig[0] ^ 0x80]) + first.sig[1:]
            envelope = dsse.Envelope(
                payload=payload,
                payload_type=kind,
                signatures=(dsse.Signature(keyid=first.keyid, sig=sig), *envelope.signatures[1:]),
            )
        elif harm == 3:
            other = rng.choice([t for t in types if t != kind])
            envelope = dsse.Envelope(
                payload=payload, payload_type=other, signatures=envelope.signatures
            )
        opened_as = envelope.payload_type if rng.random() < 0.85 else rng.choice(types)
        yield envelope, opened_as


def test_transfers_and_proposals_are_opened_as_the_plain_path_opens_them(
    monkeypatch: pytest.MonkeyPatch, empty_memory: None
) -> None:
    """Not remembering a transfer's or a proposal's signature changes no outcome: 300
    seeded envelopes of every type (refusals included), each opened twice in a row,
    give the same result and the same error text as with every signature remembered."""
    signers = [Signer.generate() for _ in range(3)]
    keys = _Keys(*(_record(s) for s in signers))
    cases = list(_cases(random.Random(SEED), signers))
    fast = [[_outcome(e, keys, t), _outcome(e, keys, t)] for e, t in cases]
    VERIFIED_SIGNATURES.clear()
    monkeypatch.setattr(dsse, "ONCE_ONLY", frozenset())  # the plain path: all remembered
    plain = [[_outcome(e, keys, t), _outcome(e, keys, t)] for e, t in cases]
    assert fast == plain
    assert any(isinstance(first, dsse.Verified) for first, _ in fast)
    assert any(isinstance(first, tuple) for first, _ in fast)


def test_a_transfers_signature_is_not_remembered(empty_memory: None) -> None:
    """A transfer carries a fresh nonce and is opened once: its signature (over its whole
    PAE) is neither hashed into nor looked up in the memory of verified signatures; a
    checkpoint's (which recurs when an object comes back) still is."""
    signer = Signer.generate()
    keys = _Keys(_record(signer))
    for kind in (PayloadType.TRANSFER, PayloadType.PROPOSAL):
        dsse.open_envelope(dsse.seal(b"t" * 4400, kind, [signer]), payload_type=kind, keys=keys)
    assert len(VERIFIED_SIGNATURES) == 0
    dsse.open_envelope(
        dsse.seal(b"{}", PayloadType.CHECKPOINT, [signer]),
        payload_type=PayloadType.CHECKPOINT,
        keys=keys,
    )
    assert len(VERIFIED_SIGNATURES) == 1


def test_a_bad_transfer_signature_is_refused_every_time(empty_memory: None) -> None:
    """Without the memory the signature is verified on every open: a good one passes
    each time, a spoiled one is refused each time."""
    signer = Signer.generate()
    keys = _Keys(_record(signer))
    good = dsse.seal(b"x" * 100, PayloadType.TRANSFER, [signer])
    bad = dsse.Envelope(
        payload=b"y" + good.payload[1:],
        payload_type=good.payload_type,
        signatures=good.signatures,
    )
    for _ in range(3):
        assert dsse.open_envelope(good, payload_type=PayloadType.TRANSFER, keys=keys).payload
        with pytest.raises(GatewayError):
            dsse.open_envelope(bad, payload_type=PayloadType.TRANSFER, keys=keys)
