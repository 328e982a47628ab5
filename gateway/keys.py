"""Signing keys and the public key records that verify them.

Invariants this module keeps:

* A key id is the hex SHA-256 of the key's SubjectPublicKeyInfo DER, computed here and
  checked whenever a record is built, so a record can never name another key's id.
  Only the canonical SPKI (uncompressed EC point) is accepted, so a key has one id.
* The algorithm of a signature is the algorithm of the *trusted record*, never a value
  found in a message. A record refuses a public key of another type than its algorithm.
* Verification raises :class:`~gateway.errors.BadSignatureError`; it never returns a
  flag a caller could forget to check.
* ECDSA signatures are accepted in exactly one encoding per call (DER for envelopes,
  IEEE P1363 ``r||s`` for JOSE), and DER must be the unique canonical encoding, so a
  signature has one accepted byte form (no malleable re-encodings).
* A signature that verified once is remembered (:class:`_VerifiedSignatures`) by a
  SHA-256 over the key's SPKI, algorithm, encoding, message and signature, so an object
  that comes back carrying hundreds of checkpoints costs a hash per old signature, not
  a public-key operation. Only successes are remembered, the memory is bounded, and the
  record's purpose, host, validity and revocation are still judged on every call (by
  the caller, :mod:`gateway.trust`): the cache answers nothing but "these exact bytes
  verify under this exact key", which never changes.

All primitives are from ``cryptography``; nothing here implements cryptography.
"""

from __future__ import annotations

import enum
import hashlib
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import cast

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from gateway._lru import BoundedLru
from gateway.errors import BadSignatureError, ConfigError, TrustError

_P256_ORDER_BYTES = 32
#: The lengths of the five parts the memory of verified signatures hashes, 8 bytes each.
_LENGTHS = struct.Struct(">5Q").pack


class Algorithm(enum.Enum):
    """Signature algorithms a key record may pin."""

    ED25519 = "ed25519"
    ECDSA_P256_SHA256 = "ecdsa-p256-sha256"

    # Hashed as the singletons they are (Enum's own __hash__ is Python code hashing the
    # member's name: about 1,300 instructions a call, and every signature checked or made
    # looks keys, algorithms and purposes up in dicts and sets several times).
    __hash__ = object.__hash__

    @property
    def jose(self) -> str:
        """The JOSE ``alg`` value for this algorithm (RFC 8037 / RFC 7518)."""
        return _JOSE[self]

    @classmethod
    def parse(cls, text: str) -> Algorithm:
        try:
            return cls(text)
        except ValueError:
            choices = ", ".join(a.value for a in cls)
            raise TrustError(
                f"unknown signature algorithm {text!r}", hint=f"use one of: {choices}"
            ) from None


class Purpose(enum.Enum):
    """What a key may sign. A key is trusted only for the purposes its record lists."""

    ENVELOPE = "envelope"  #: transfers, receipts and lineage checkpoints
    GRANT = "grant"  #: credential grants (JWTs)
    BUNDLE = "bundle"  #: the trust domain's own bundle updates

    __hash__ = object.__hash__  # as Algorithm's

    @classmethod
    def parse(cls, text: str) -> Purpose:
        try:
            return cls(text)
        except ValueError:
            choices = ", ".join(p.value for p in cls)
            raise TrustError(
                f"unknown key purpose {text!r}", hint=f"use one of: {choices}"
            ) from None


class SignatureEncoding(enum.Enum):
    """How an ECDSA signature is laid out in bytes (Ed25519 has a single form)."""

    DER = "der"  #: ASN.1 SEQUENCE { r, s } — DSSE envelopes
    P1363 = "p1363"  #: fixed-width r || s — JOSE (ES256)

    __hash__ = object.__hash__  # as Algorithm's


#: Algorithm.jose, made once (it built this dict on every call).
_JOSE = {Algorithm.ED25519: "EdDSA", Algorithm.ECDSA_P256_SHA256: "ES256"}


PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey


def key_id_of(spki_der: bytes) -> str:
    """Hex SHA-256 of a SubjectPublicKeyInfo DER: the key id everywhere in the gateway."""
    return hashlib.sha256(spki_der).hexdigest()


def _spki(public_key: PublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _algorithm_of(public_key: object) -> Algorithm:
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return Algorithm.ED25519
    if isinstance(public_key, ec.EllipticCurvePublicKey) and isinstance(
        public_key.curve, ec.SECP256R1
    ):
        return Algorithm.ECDSA_P256_SHA256
    raise TrustError(
        f"unsupported public key type {type(public_key).__name__}",
        hint="use an Ed25519 or ECDSA P-256 key",
    )


def load_public_key(spki_der: bytes) -> PublicKey:
    """Parse a SubjectPublicKeyInfo, refusing anything but Ed25519 and P-256."""
    try:
        key = serialization.load_der_public_key(spki_der)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise TrustError(f"public key is not a valid SubjectPublicKeyInfo: {exc}") from exc
    _algorithm_of(key)
    assert isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey)
    return key


def _verify(
    public_key: PublicKey,
    algorithm: Algorithm,
    message: bytes,
    signature: bytes,
    encoding: SignatureEncoding,
) -> None:
    """Verify under the record's algorithm; any failure is ``InvalidSignature``."""
    if algorithm is Algorithm.ED25519:
        # The record's algorithm is its key's own (checked in KeyRecord.__post_init__),
        # so no isinstance here: Ed25519PublicKey is an ABC, whose check is a Python
        # call (abc.__instancecheck__) on every signature verified.
        cast(ed25519.Ed25519PublicKey, public_key).verify(signature, message)
        return
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    if encoding is SignatureEncoding.P1363:
        if len(signature) != 2 * _P256_ORDER_BYTES:
            raise InvalidSignature("P1363 signature must be 64 bytes")
        r = int.from_bytes(signature[:_P256_ORDER_BYTES], "big")
        s = int.from_bytes(signature[_P256_ORDER_BYTES:], "big")
        der = encode_dss_signature(r, s)
    else:
        # Only the canonical DER form is accepted: decode, re-encode, compare. A BER
        # variant of a valid signature is a second byte string for the same signature,
        # which breaks anything that deduplicates or logs signatures by their bytes.
        try:
            r, s = decode_dss_signature(signature)
        except ValueError as exc:
            raise InvalidSignature("signature is not DER") from exc
        der = encode_dss_signature(r, s)
        if der != signature:
            raise InvalidSignature("signature is not canonical DER")
    public_key.verify(der, message, ec.ECDSA(hashes.SHA256()))


#: Each algorithm's and encoding's value as bytes, as the memory of verified signatures
#: hashes them (an enum's ``.value`` is a Python-level property: two calls and an
#: encode per part, per signature checked).
_ALGORITHM_NAMES = {algorithm: algorithm.value.encode() for algorithm in Algorithm}
_ENCODING_NAMES = {encoding: encoding.value.encode() for encoding in SignatureEncoding}


class _VerifiedSignatures(BoundedLru[bytes, None]):
    """The digests of (key, algorithm, encoding, message, signature) that verified.

    Bounded LRU: ``capacity`` digests of 32 bytes (about 140 bytes each with the LRU's
    node), so a peer sending fresh signatures only ever evicts, and a miss costs what it
    always did.
    """

    @staticmethod
    def digest(
        spki: bytes, algorithm: Algorithm, encoding: SignatureEncoding, message: bytes, sig: bytes
    ) -> bytes:
        name, form = _ALGORITHM_NAMES[algorithm], _ENCODING_NAMES[encoding]
        # The five lengths first, then the five parts, so no two different tuples hash
        # the same bytes. One join and one hash call: half the cost of updating part by
        # part, paid on every signature checked, remembered or not.
        lengths = _LENGTHS(len(spki), len(name), len(form), len(message), len(sig))
        return hashlib.sha256(b"".join((lengths, spki, name, form, message, sig))).digest()

    def add(self, digest: bytes) -> None:
        self.put(digest, None)


#: Signatures this process has verified (see the module docstring). 8192 digests,
#: measured 140 bytes each with their LRU node (about 1.1 MiB). It was 65,536 (8.7
#: MiB, filling over the soak's ten minutes); an object that comes back now skips its
#: old checkpoints and arrivals whole (gateway.lineage.VerifiedPrefixes,
#: gateway.custody.VerifiedArrivals), so what still recurs here is a few per object.
VERIFIED_SIGNATURES = _VerifiedSignatures(capacity=1 << 13)


def forget_verified_signatures() -> None:
    """Empty the verified-signature memory (benchmarks timing a cold verify; tests)."""
    VERIFIED_SIGNATURES.clear()


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyRecord:
    """A trusted public key: what it is, what it may sign, for whom, and when.

    ``hosts`` limits the key to the listed host ids of its trust domain; empty means
    any host of the domain. ``valid_until`` of ``None`` means no planned expiry.

    Two ways to stop using a key, with different meanings for what it already signed:

    * ``retired_at``: the key signs nothing from that moment on, but signatures made
      before it still verify (a checkpoint by its signed ``issued_at``, a grant by its
      ``iat``). For a key that is merely replaced: objects it vouched for stay movable.
      Whoever still holds the private key can backdate a signature, so a key that may
      have leaked must be revoked instead.
    * ``revoked``: everything the key ever signed is distrusted.
    """

    key_id: str
    algorithm: Algorithm
    public_key: bytes  #: SubjectPublicKeyInfo DER
    purposes: frozenset[Purpose]
    hosts: frozenset[str] = frozenset()
    valid_from: datetime
    valid_until: datetime | None = None
    retired_at: datetime | None = None  #: signs nothing from then on; older signatures stand
    revoked: bool = False
    _key: PublicKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        key = load_public_key(self.public_key)
        # One key, one SPKI, one key id: a P-256 key also parses from a SPKI holding its
        # *compressed* point, which would give the same key a second key id, and a
        # threshold that counts key ids would count that key twice.
        if _spki(key) != self.public_key:
            raise TrustError(
                "public key is not in canonical SubjectPublicKeyInfo DER "
                "(EC points must be uncompressed)",
                hint="export the key again as DER SubjectPublicKeyInfo",
            )
        actual = key_id_of(self.public_key)
        if self.key_id != actual:
            raise TrustError(
                f"key id {self.key_id} does not match its public key (SHA-256 of SPKI is {actual})",
                hint="key ids are computed, never chosen: regenerate the record from the key",
            )
        if _algorithm_of(key) is not self.algorithm:
            raise TrustError(
                f"key {self.key_id[:16]} is {_algorithm_of(key).value} "
                f"but its record says {self.algorithm.value}",
                hint="the record's algorithm must be the key's own",
            )
        if not self.purposes:
            raise TrustError(
                f"key {self.key_id[:16]} has no purposes", hint="list what it may sign"
            )
        if any(
            moment is not None and moment.tzinfo is None
            for moment in (self.valid_from, self.valid_until, self.retired_at)
        ):
            raise TrustError(f"key {self.key_id[:16]} has a validity time without a time zone")
        object.__setattr__(self, "_key", key)

    @classmethod
    def for_public_key(
        cls,
        spki_der: bytes,
        *,
        purposes: Iterable[Purpose],
        hosts: Iterable[str] = (),
        valid_from: datetime,
        valid_until: datetime | None = None,
    ) -> KeyRecord:
        """A record whose key id and algorithm are derived from the key itself."""
        key = load_public_key(spki_der)
        return cls(
            key_id=key_id_of(spki_der),
            algorithm=_algorithm_of(key),
            public_key=spki_der,
            purposes=frozenset(purposes),
            hosts=frozenset(hosts),
            valid_from=valid_from,
            valid_until=valid_until,
        )

    def valid_at(self, moment: datetime) -> bool:
        return self.valid_from <= moment and (self.valid_until is None or moment < self.valid_until)

    def retired_by(self, moment: datetime) -> bool:
        """Whether a signature made at ``moment`` comes after the key's retirement."""
        return self.retired_at is not None and moment >= self.retired_at

    def verify(
        self,
        message: bytes,
        signature: bytes,
        *,
        encoding: SignatureEncoding = SignatureEncoding.DER,
        remember: bool = True,
    ) -> None:
        """Raise :class:`BadSignatureError` unless ``signature`` signs ``message`` under this key.

        Only the signature is checked here; whether the record may be used (purpose,
        host, validity, revocation) is the caller's question, answered by
        :mod:`gateway.trust`. ``remember=False``: a signature checked once only (a
        transfer's) is verified without the memory (:data:`VERIFIED_SIGNATURES`), neither
        looked up nor added, which saves hashing ``message`` for it.
        """
        seen = (
            VERIFIED_SIGNATURES.digest(
                self.public_key, self.algorithm, encoding, message, signature
            )
            if remember
            else None
        )
        if seen is not None and seen in VERIFIED_SIGNATURES:
            return
        try:
            _verify(self._key, self.algorithm, message, signature, encoding)
        except InvalidSignature as exc:
            raise BadSignatureError(
                f"signature does not verify under key {self.key_id[:16]} ({self.algorithm.value})"
            ) from exc
        if seen is not None:
            VERIFIED_SIGNATURES.add(seen)

    def public_key_object(self) -> PublicKey:
        """The parsed public key, for libraries that take one (PyJWT)."""
        return self._key


class Signer:
    """A private signing key. Kept out of records, bundles and logs by design."""

    __slots__ = ("_ed25519_sign", "_key", "algorithm", "key_id", "public_key")

    def __init__(self, private_key: PrivateKey) -> None:
        public = private_key.public_key()
        self.algorithm = _algorithm_of(public)
        self.public_key = _spki(public)
        self.key_id = key_id_of(self.public_key)
        self._key = private_key
        #: An Ed25519 key's own ``sign``, found once: :meth:`sign` made an ABC
        #: ``isinstance`` check per signature to tell the key's type.
        self._ed25519_sign: Callable[[bytes], bytes] | None = (
            private_key.sign if isinstance(private_key, ed25519.Ed25519PrivateKey) else None
        )

    @classmethod
    def generate(cls, algorithm: Algorithm = Algorithm.ED25519) -> Signer:
        if algorithm is Algorithm.ED25519:
            return cls(ed25519.Ed25519PrivateKey.generate())
        return cls(ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def from_pem(cls, pem: bytes, *, source: str = "key") -> Signer:
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise ConfigError(
                f"{source}: not an unencrypted PEM private key ({exc})",
                hint="create keys with `gateway keys`",
            ) from exc
        if not isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
            raise ConfigError(
                f"{source}: unsupported key type {type(key).__name__}",
                hint="use an Ed25519 or ECDSA P-256 key",
            )
        try:
            return cls(key)
        except TrustError as exc:  # an EC key on another curve than P-256
            raise ConfigError(f"{source}: {exc.reason}", hint=exc.hint) from exc

    def to_pem(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def sign(self, message: bytes, *, encoding: SignatureEncoding = SignatureEncoding.DER) -> bytes:
        if self._ed25519_sign is not None:
            return self._ed25519_sign(message)
        der = cast(ec.EllipticCurvePrivateKey, self._key).sign(message, ec.ECDSA(hashes.SHA256()))
        if encoding is SignatureEncoding.DER:
            return der
        r, s = decode_dss_signature(der)
        return r.to_bytes(_P256_ORDER_BYTES, "big") + s.to_bytes(_P256_ORDER_BYTES, "big")

    def private_key_object(self) -> PrivateKey:
        """The key itself, for libraries that take one (PyJWT). Handle with care."""
        return self._key

    def record(
        self,
        *,
        purposes: Iterable[Purpose],
        hosts: Iterable[str] = (),
        valid_from: datetime,
        valid_until: datetime | None = None,
    ) -> KeyRecord:
        """The public record others should trust for this key."""
        return KeyRecord.for_public_key(
            self.public_key,
            purposes=purposes,
            hosts=hosts,
            valid_from=valid_from,
            valid_until=valid_until,
        )

    def __repr__(self) -> str:
        return f"Signer({self.algorithm.value}, key_id={self.key_id[:16]}…)"
