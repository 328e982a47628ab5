"""The verified-signature memory in gateway.keys: it saves public-key operations for
signatures seen before, and never lets anything through that would not verify."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from gateway import keys
from gateway.errors import BadSignatureError
from gateway.keys import Algorithm, Purpose, SignatureEncoding, Signer

T0 = datetime(2026, 12, 1, tzinfo=UTC)


@pytest.fixture(autouse=True)
def cold() -> Iterator[None]:
    keys.forget_verified_signatures()
    yield
    keys.forget_verified_signatures()


@pytest.fixture
def operations(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The messages that reached a real public-key verification."""
    seen: list[bytes] = []
    real = keys._verify

    def counting(key, algorithm, message, signature, encoding):  # type: ignore[no-untyped-def]
        seen.append(message)
        real(key, algorithm, message, signature, encoding)

    monkeypatch.setattr(keys, "_verify", counting)
    return seen


@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_a_signature_seen_before_costs_no_second_public_key_operation(
    algorithm: Algorithm, operations: list[bytes]
) -> None:
    signer = Signer.generate(algorithm)
    record = signer.record(purposes=[Purpose.ENVELOPE], valid_from=T0)
    signature = signer.sign(b"checkpoint 1")

    for _ in range(3):
        record.verify(b"checkpoint 1", signature)

    assert operations == [b"checkpoint 1"]


def test_anything_that_differs_is_verified_afresh_and_failures_are_never_remembered(
    operations: list[bytes],
) -> None:
    signer = Signer.generate(Algorithm.ECDSA_P256_SHA256)
    other = Signer.generate(Algorithm.ECDSA_P256_SHA256)
    record = signer.record(purposes=[Purpose.ENVELOPE], valid_from=T0)
    other_record = other.record(purposes=[Purpose.ENVELOPE], valid_from=T0)
    signature = signer.sign(b"m")
    record.verify(b"m", signature)

    # Another message, another key, another encoding of the same signature: each is a
    # public-key operation, and each fails as it always did.
    with pytest.raises(BadSignatureError):
        record.verify(b"n", signature)
    with pytest.raises(BadSignatureError):
        other_record.verify(b"m", signature)
    with pytest.raises(BadSignatureError):
        record.verify(b"m", signer.sign(b"m", encoding=SignatureEncoding.P1363))
    # A failure is not remembered as a success, nor as anything: it fails again.
    with pytest.raises(BadSignatureError):
        record.verify(b"n", signature)

    assert operations == [b"m", b"n", b"m", b"m", b"n"]


def test_a_record_whose_trust_changed_still_answers_from_the_key_bytes_only(
    operations: list[bytes],
) -> None:
    # Revocation and validity are the trust layer's questions, asked on every call;
    # the memory holds no verdict about them, only "these bytes verify under this key".
    signer = Signer.generate()
    record = signer.record(purposes=[Purpose.ENVELOPE], valid_from=T0)
    signature = signer.sign(b"m")
    record.verify(b"m", signature)
    revoked = replace(record, revoked=True)
    revoked.verify(b"m", signature)
    assert revoked.revoked and operations == [b"m"]


def test_the_memory_is_bounded_and_forgets_the_oldest() -> None:
    memory = keys._VerifiedSignatures(capacity=4)
    digests = [bytes([n]) * 32 for n in range(6)]
    for digest in digests:
        memory.add(digest)
    assert len(memory) == 4
    assert digests[0] not in memory and digests[1] not in memory
    assert all(digest in memory for digest in digests[2:])
