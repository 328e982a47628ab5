"""Tests for gateway.keys: key ids, signature encodings, and what a record refuses.

The cryptography itself is checked against Wycheproof in test_wycheproof.py; these
tests pin the gateway's own rules around it: a key id is SHA-256 of the canonical
SPKI, the algorithm comes from the record, ECDSA signatures are accepted in exactly
the encoding the caller names, and bad key files fail with a message naming the file.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from gateway.errors import BadSignatureError, ConfigError, TrustError
from gateway.keys import (
    Algorithm,
    KeyRecord,
    Purpose,
    SignatureEncoding,
    Signer,
    key_id_of,
    load_public_key,
)

NOW = datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
MESSAGE = b"DSSEv1 4 test 5 hello"
# The order of the P-256 group (SEC 2): s and n - s are both valid ECDSA signatures.
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
# AlgorithmIdentifier { id-ecPublicKey, prime256v1 }, DER.
P256_SPKI_ALGORITHM = bytes.fromhex("301306072a8648ce3d020106082a8648ce3d030107")


@pytest.fixture(scope="module", params=list(Algorithm), ids=lambda a: a.value)
def signer(request: pytest.FixtureRequest) -> Signer:
    algorithm: Algorithm = request.param
    return Signer.generate(algorithm)


@pytest.fixture(scope="module")
def p256() -> Signer:
    return Signer.generate(Algorithm.ECDSA_P256_SHA256)


def _record(signer: Signer, *, valid_until: datetime | None = None) -> KeyRecord:
    return signer.record(purposes=[Purpose.ENVELOPE], valid_from=NOW, valid_until=valid_until)


def _spki(key: ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _pkcs8(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


# --- key ids ----------------------------------------------------------------------------


def test_key_id_is_sha256_of_the_spki(signer: Signer) -> None:
    """Key ids are computed from the SubjectPublicKeyInfo DER, never chosen."""
    spki = _spki(signer.private_key_object().public_key())
    assert signer.public_key == spki
    assert signer.key_id == hashlib.sha256(spki).hexdigest() == key_id_of(spki)
    record = _record(signer)
    assert record.key_id == signer.key_id
    assert record.algorithm is signer.algorithm
    assert record.public_key == spki


def test_record_refuses_a_key_id_that_is_not_its_keys(signer: Signer) -> None:
    """A record cannot carry another key's id: the id is checked against the key."""
    other = Signer.generate(signer.algorithm)
    with pytest.raises(TrustError):
        KeyRecord(
            key_id=other.key_id,
            algorithm=signer.algorithm,
            public_key=signer.public_key,
            purposes=frozenset({Purpose.ENVELOPE}),
            valid_from=NOW,
        )


def test_record_refuses_an_algorithm_that_is_not_its_keys(signer: Signer) -> None:
    """The algorithm is the key's own; a record claiming another one is refused."""
    wrong = next(a for a in Algorithm if a is not signer.algorithm)
    with pytest.raises(TrustError):
        KeyRecord(
            key_id=signer.key_id,
            algorithm=wrong,
            public_key=signer.public_key,
            purposes=frozenset({Purpose.ENVELOPE}),
            valid_from=NOW,
        )


def test_compressed_point_spki_is_refused(p256: Signer) -> None:
    """One P-256 key also parses from a SPKI with its compressed point; that second
    encoding would be a second key id for the same key (counted twice by a threshold)."""
    point = (
        p256.private_key_object()
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
    )
    bit_string = b"\x03" + bytes([len(point) + 1]) + b"\x00" + point
    body = P256_SPKI_ALGORITHM + bit_string
    compressed = b"\x30" + bytes([len(body)]) + body
    assert load_public_key(compressed) is not None  # the library does accept it ...
    with pytest.raises(TrustError, match="canonical"):  # ... the gateway does not
        KeyRecord.for_public_key(compressed, purposes=[Purpose.ENVELOPE], valid_from=NOW)


@pytest.mark.parametrize(
    ("spki", "reason"),
    [
        (b"", "empty"),
        (b"\x30\x00", "empty sequence"),
        (b"not a key at all", "garbage"),
        (
            _spki(ec.generate_private_key(ec.SECP384R1()).public_key()),
            "P-384 is not an accepted curve",
        ),
        (
            _spki(rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()),
            "RSA is not an accepted algorithm",
        ),
    ],
    ids=["empty", "empty-sequence", "garbage", "p384", "rsa"],
)
def test_unusable_public_keys_are_refused(spki: bytes, reason: str) -> None:
    """Only Ed25519 and P-256 SubjectPublicKeyInfos make records."""
    with pytest.raises(TrustError):
        KeyRecord.for_public_key(spki, purposes=[Purpose.ENVELOPE], valid_from=NOW)


def test_record_needs_purposes_and_aware_times(signer: Signer) -> None:
    """A key trusted for nothing, or valid in no time zone, is a configuration mistake."""
    with pytest.raises(TrustError):
        signer.record(purposes=[], valid_from=NOW)
    with pytest.raises(TrustError):
        signer.record(purposes=[Purpose.ENVELOPE], valid_from=NOW.replace(tzinfo=None))
    with pytest.raises(TrustError):
        signer.record(
            purposes=[Purpose.ENVELOPE],
            valid_from=NOW,
            valid_until=(NOW + timedelta(days=1)).replace(tzinfo=None),
        )


def test_validity_window_is_half_open(signer: Signer) -> None:
    """valid_from is included, valid_until excluded; no valid_until means no planned expiry."""
    record = _record(signer, valid_until=NOW + timedelta(hours=1))
    assert not record.valid_at(NOW - timedelta(milliseconds=1))
    assert record.valid_at(NOW)
    assert record.valid_at(NOW + timedelta(minutes=59))
    assert not record.valid_at(NOW + timedelta(hours=1))
    assert _record(signer).valid_at(NOW + timedelta(days=10_000))


def test_retirement_is_judged_at_the_signing_time(signer: Signer) -> None:
    """retired_by is half-open like validity: a signature made before the retirement time
    stands, one made at or after it does not; an unretired key is never retired, and a
    retirement time without a time zone is refused like any other key time."""
    record = replace(_record(signer), retired_at=NOW + timedelta(hours=1))
    assert not record.retired_by(NOW + timedelta(minutes=59, seconds=59))
    assert record.retired_by(NOW + timedelta(hours=1))
    assert record.retired_by(NOW + timedelta(days=1))
    assert record.valid_at(NOW + timedelta(days=1))  # retiring is not expiring
    assert not _record(signer).retired_by(NOW + timedelta(days=10_000))
    with pytest.raises(TrustError, match="time zone"):
        replace(record, retired_at=NOW.replace(tzinfo=None))


def test_parse_refuses_unknown_names() -> None:
    """Algorithm and purpose names come from files people edit; typos are TrustErrors."""
    assert Algorithm.parse("ed25519") is Algorithm.ED25519
    assert Purpose.parse("bundle") is Purpose.BUNDLE
    with pytest.raises(TrustError):
        Algorithm.parse("rsa")
    with pytest.raises(TrustError):
        Purpose.parse("everything")
    assert {a.jose for a in Algorithm} == {"EdDSA", "ES256"}


# --- sign and verify --------------------------------------------------------------------


@pytest.mark.parametrize("encoding", list(SignatureEncoding), ids=lambda e: e.value)
def test_sign_verify_round_trip(signer: Signer, encoding: SignatureEncoding) -> None:
    """Each algorithm and encoding verifies its own signatures, and only over the message."""
    record = _record(signer)
    signature = signer.sign(MESSAGE, encoding=encoding)
    record.verify(MESSAGE, signature, encoding=encoding)
    with pytest.raises(BadSignatureError):
        record.verify(MESSAGE + b"!", signature, encoding=encoding)
    with pytest.raises(BadSignatureError):
        _record(Signer.generate(signer.algorithm)).verify(MESSAGE, signature, encoding=encoding)


def test_ed25519_has_one_signature_form() -> None:
    """Ed25519 ignores the ECDSA encoding: both names give the same 64-byte signature."""
    signer = Signer.generate(Algorithm.ED25519)
    der = signer.sign(MESSAGE, encoding=SignatureEncoding.DER)
    assert len(der) == 64
    assert signer.sign(MESSAGE, encoding=SignatureEncoding.P1363) == der


def test_ecdsa_encodings_are_not_interchangeable(p256: Signer) -> None:
    """A P1363 signature is refused where DER is expected, and the other way round."""
    record = _record(p256)
    raw = p256.sign(MESSAGE, encoding=SignatureEncoding.P1363)
    der = p256.sign(MESSAGE, encoding=SignatureEncoding.DER)
    assert len(raw) == 64
    assert der[0] == 0x30
    with pytest.raises(BadSignatureError):
        record.verify(MESSAGE, raw, encoding=SignatureEncoding.DER)
    with pytest.raises(BadSignatureError):
        record.verify(MESSAGE, der, encoding=SignatureEncoding.P1363)
    # The same (r, s) in the other layout is what the caller should have sent.
    r, s = decode_dss_signature(der)
    record.verify(
        MESSAGE, r.to_bytes(32, "big") + s.to_bytes(32, "big"), encoding=SignatureEncoding.P1363
    )


def _long_form_length(der: bytes) -> bytes:
    """The same SEQUENCE with its length in BER long form (0x81 nn): valid BER, not DER."""
    assert der[0] == 0x30 and der[1] < 0x80
    return b"\x30\x81" + der[1:]


def _padded_integer(der: bytes) -> bytes:
    """The same signature with a redundant leading zero on r: valid BER, not DER."""
    r, s = decode_dss_signature(der)
    r_bytes = b"\x00" + r.to_bytes((r.bit_length() + 8) // 8, "big")
    s_bytes = s.to_bytes((s.bit_length() + 8) // 8, "big")
    body = b"\x02" + bytes([len(r_bytes)]) + r_bytes + b"\x02" + bytes([len(s_bytes)]) + s_bytes
    return b"\x30" + bytes([len(body)]) + body


@pytest.mark.parametrize("variant", [_long_form_length, _padded_integer], ids=lambda f: f.__name__)
def test_non_canonical_der_is_refused(p256: Signer, variant: Callable[[bytes], bytes]) -> None:
    """A BER re-encoding of a valid signature is a second byte form of it; refused."""
    record = _record(p256)
    der = p256.sign(MESSAGE)
    record.verify(MESSAGE, der)
    with pytest.raises(BadSignatureError):
        record.verify(MESSAGE, variant(der))


def test_der_with_trailing_bytes_is_refused(p256: Signer) -> None:
    """Junk after the SEQUENCE is not ignored."""
    with pytest.raises(BadSignatureError):
        _record(p256).verify(MESSAGE, p256.sign(MESSAGE) + b"\x00")


def test_p1363_of_the_wrong_length_is_refused(p256: Signer) -> None:
    """r || s is exactly 64 bytes for P-256; shorter or longer is not guessed at."""
    record = _record(p256)
    raw = p256.sign(MESSAGE, encoding=SignatureEncoding.P1363)
    for bad in (raw[:-1], raw + b"\x00", b"\x00" + raw, b""):
        with pytest.raises(BadSignatureError):
            record.verify(MESSAGE, bad, encoding=SignatureEncoding.P1363)


def test_ecdsa_high_s_twin_verifies(p256: Signer) -> None:
    """ECDSA is malleable by nature: (r, n - s) verifies too. Canonical DER does not
    change that, so nothing may identify a signature by its bytes; thresholds count
    keys (see test_envelope.py), not signatures."""
    der = p256.sign(MESSAGE)
    r, s = decode_dss_signature(der)
    twin = encode_dss_signature(r, P256_ORDER - s)
    assert twin != der
    _record(p256).verify(MESSAGE, twin)


# --- key files --------------------------------------------------------------------------


def test_pem_round_trip(signer: Signer) -> None:
    """A key written with to_pem loads back as the same key."""
    again = Signer.from_pem(signer.to_pem(), source="k.key")
    assert again.key_id == signer.key_id
    assert again.algorithm is signer.algorithm
    _record(signer).verify(MESSAGE, again.sign(MESSAGE))


@pytest.mark.parametrize(
    ("pem", "reason"),
    [
        (b"", "empty file"),
        (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "bad body"),
        (
            ec.generate_private_key(ec.SECP256R1()).private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"secret"),
            ),
            "encrypted",
        ),
        (_pkcs8(ec.generate_private_key(ec.SECP384R1())), "P-384"),
        (
            _pkcs8(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
            "RSA",
        ),
    ],
    ids=["empty", "bad-body", "encrypted", "p384", "rsa"],
)
def test_from_pem_refuses_unusable_key_files(pem: bytes, reason: str) -> None:
    """Every unusable key file is a ConfigError that names the file."""
    with pytest.raises(ConfigError, match=re.escape("keys/host.key")):
        Signer.from_pem(pem, source="keys/host.key")


def test_signer_repr_shows_no_private_material(signer: Signer) -> None:
    """A signer in a log line shows its algorithm and key id, nothing secret."""
    text = repr(signer)
    assert signer.key_id[:16] in text
    assert "PRIVATE" not in text
    assert signer.to_pem().decode() not in text
