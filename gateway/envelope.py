"""DSSE envelopes: seal a payload under one or more keys, open it only if enough trusted
keys signed exactly those bytes.

Ordering rules this module keeps (and why):

1. Signatures are checked over ``PAE(payload_type, payload)`` of the **received bytes**.
   Nothing is parsed or re-serialized before that: protobuf and JSON encodings are not
   canonical, and a parser that sees bytes the signature did not cover is an attack
   surface.
2. The payload type is part of PAE, so a signature for one kind of message can never
   verify as another; after the signatures, the type must also equal exactly the type
   the caller expects (a valid receipt is still not a transfer).
3. ``keyid`` is a hint for finding the key. The algorithm is the trusted key record's,
   never the message's. A threshold counts **distinct keys** that verified, so neither
   a duplicated signature nor two key ids for one key can count twice.
4. An envelope that names the same key id twice is malformed: honest signers never
   produce it, and refusing it keeps one accepted byte form per set of signatures.

This module does no I/O. The protobuf form of an envelope is handled in
:mod:`gateway.wire`; the DSSE JSON form (for files people exchange) is here.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway._decode import load_json
from gateway._slots import builder
from gateway.errors import (
    BadSignatureError,
    EnvelopeError,
    EnvelopeTooLargeError,
    ExpiredError,
    PayloadTypeError,
    RevokedKeyError,
    UntrustedKeyError,
    VerificationError,
)
from gateway.keys import KeyRecord, Signer


class PayloadType:
    """One media type per message kind; a kind's type never changes meaning."""

    TRANSFER = "application/vnd.gateway.transfer.v1+protobuf"
    STAGED_RECEIPT = "application/vnd.gateway.staged-receipt.v1+protobuf"
    ACTIVATION_RECEIPT = "application/vnd.gateway.activation-receipt.v1+protobuf"
    CHECKPOINT = "application/vnd.gateway.checkpoint.v1+json"
    #: A source's signed answer to a destination's Decision request.
    DECISION = "application/vnd.gateway.decision.v1+json"
    #: A transfer offered for a dry run (Evaluate); by its own type it can never be staged.
    PROPOSAL = "application/vnd.gateway.proposal.v1+protobuf"
    TRUST_BUNDLE = "application/vnd.gateway.trust-bundle.v1+json"
    #: A custody home's record that one host holds an object from one epoch on.
    CUSTODY_RECEIPT = "application/vnd.gateway.custody-receipt.v1+json"
    #: A destination's signed answer to a Commit for a migration it holds no record of.
    UNKNOWN_MIGRATION = "application/vnd.gateway.unknown-migration.v1+json"


#: Payload types whose signatures are not remembered (keys.VERIFIED_SIGNATURES): a
#: transfer (or a proposal) carries a fresh nonce and is opened once, by its one
#: destination (a retried Prepare is the only second look, and a rare one). Remembering
#: its signature hashed its whole PAE (the object and its lineage: 4.4 KB for a small
#: object, on every arrival) for an entry never looked up again, which evicted one that
#: may be (a checkpoint of an object that comes back).
#:
#: A staged receipt likewise: it names one migration, and its source opens it once, when
#: Prepare answers (after a crash, recovery's Prepare gets the same receipt again, in a
#: new process whose memory is empty). An activation receipt is remembered: it travels
#: on in the object's lineage as an arrival, and custody opens it again when the object
#: comes back.
ONCE_ONLY = frozenset({PayloadType.TRANSFER, PayloadType.PROPOSAL, PayloadType.STAGED_RECEIPT})

MAX_PAYLOAD_TYPE = 256
MAX_SIGNATURES = 16
MAX_KEYID = 128
MAX_SIGNATURE_BYTES = 512


@dataclass(frozen=True, slots=True, kw_only=True)
class Signature:
    keyid: str
    sig: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Envelope:
    """A DSSE envelope. Constructing one checks the format rules, not the signatures."""

    payload: bytes
    payload_type: str
    signatures: tuple[Signature, ...]

    def __post_init__(self) -> None:
        payload_type, signatures = self.payload_type, self.signatures
        if not payload_type or len(payload_type) > MAX_PAYLOAD_TYPE:
            raise EnvelopeError(
                f"payload type must be 1..{MAX_PAYLOAD_TYPE} characters, got {len(payload_type)}"
            )
        # JSON can smuggle lone surrogates ("\ud800") that no UTF-8 byte string, hence no
        # PAE and no protobuf field, can carry; refuse them here rather than fail later.
        # ASCII text (every type and key id we issue) always encodes: not encoded to see.
        if not payload_type.isascii():
            _require_utf8(payload_type, "payload type")
        if not signatures:
            raise EnvelopeError("envelope has no signatures", hint="seal it with at least one key")
        if len(signatures) > MAX_SIGNATURES:
            raise EnvelopeTooLargeError(
                f"envelope has {len(signatures)} signatures; at most {MAX_SIGNATURES}"
            )
        if len(signatures) == 1:  # every envelope a host seals: no set to see twice in
            signature = signatures[0]
            keyid = signature.keyid
            if len(keyid) > MAX_KEYID or len(signature.sig) > MAX_SIGNATURE_BYTES:
                raise EnvelopeTooLargeError("a signature or key id is larger than any we issue")
            if not keyid.isascii():
                _require_utf8(keyid, "key id")
            return
        seen: set[str] = set()
        for signature in signatures:
            keyid = signature.keyid
            if len(keyid) > MAX_KEYID or len(signature.sig) > MAX_SIGNATURE_BYTES:
                raise EnvelopeTooLargeError("a signature or key id is larger than any we issue")
            if not keyid.isascii():
                _require_utf8(keyid, "key id")
            if keyid and keyid in seen:
                raise EnvelopeError(
                    f"key id {keyid[:16]} signs the envelope twice",
                    hint="each key signs an envelope once",
                )
            seen.add(keyid)


def _require_utf8(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise EnvelopeError(f"{what} is not valid Unicode text (lone surrogate)") from exc


@dataclass(frozen=True, slots=True, kw_only=True)
class Verified:
    """The payload bytes that verified, and the distinct keys that vouched for them."""

    payload: bytes
    payload_type: str
    key_ids: frozenset[str]


class KeyResolver(Protocol):
    """Finds the trusted record for a key id, or says why there is none."""

    def resolve(self, key_id: str) -> KeyRecord:
        """The record for ``key_id``; raises an :class:`UntrustedKeyError` (or subclass),
        or :class:`ExpiredError`, naming why the key may not be used here."""
        ...

    def all(self) -> Sequence[KeyRecord]:
        """Every usable record, tried in turn for signatures that carry no key id."""
        ...


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 Pre-Authentication Encoding: what is actually signed.

    ``"DSSEv1" SP len(type) SP type SP len(payload) SP payload``, lengths as ASCII
    decimals of byte counts.
    """
    type_bytes = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(type_bytes), type_bytes, len(payload), payload)


def seal(payload: bytes, payload_type: str, signers: Sequence[Signer]) -> Envelope:
    """Sign ``payload`` as ``payload_type`` with every signer (distinct keys only)."""
    # One signer (every host seal) cannot list a key twice: no set is made to see.
    if len(signers) > 1 and len({s.key_id for s in signers}) != len(signers):
        raise ValueError("the same key is listed twice; a key signs an envelope once")
    message = pae(payload_type, payload)
    envelope = _envelope(
        payload, payload_type, tuple([_signature(s.key_id, s.sign(message)) for s in signers])
    )
    envelope.__post_init__()  # the format checks, as Envelope(...) makes them
    return envelope


def open_envelope(
    envelope: Envelope,
    *,
    payload_type: str,
    keys: KeyResolver,
    threshold: int = 1,
) -> Verified:
    """Return the verified payload, or raise the most specific reason it is refused.

    At least ``threshold`` distinct trusted keys must have signed
    ``PAE(envelope.payload_type, envelope.payload)``; then the payload type must equal
    ``payload_type``. A signature that fails does not stop the others from counting,
    but a signature that does not verify under the key it names is never ignored
    silently: if the threshold is not met, the error says which keys failed and why.
    """
    if threshold < 1:
        raise ValueError("threshold must be at least 1: an envelope nobody signed proves nothing")
    message = pae(envelope.payload_type, envelope.payload)
    remember = envelope.payload_type not in ONCE_ONLY
    verified: set[str] = set()
    failures: list[VerificationError] = []
    for signature in envelope.signatures:
        try:
            verified.add(_verify_one(signature, message, keys, remember=remember))
        except VerificationError as exc:
            failures.append(exc)
    if len(verified) < threshold:
        raise _threshold_error(failures, len(verified), threshold)
    if envelope.payload_type != payload_type:
        from gateway.versions import check_payload_type

        check_payload_type(envelope.payload_type, payload_type)  # a newer version: say so
        raise PayloadTypeError(
            f"envelope carries {envelope.payload_type!r}, expected {payload_type!r}",
            hint="this message is a different kind than the operation needs",
        )
    return _verified(envelope.payload, envelope.payload_type, frozenset(verified))


#: The values every seal and every open builds, by position and slot by slot
#: (gateway/_slots.py): a frozen dataclass's ``__init__`` sets each field through
#: ``object.__setattr__`` with keyword handling around it (``Verified(...)`` about 7,600
#: instructions, 2,500 this way). An envelope so built gets its format checks from
#: :func:`seal` itself, which calls ``__post_init__`` as the constructor would.
_envelope = builder(Envelope, "payload", "payload_type", "signatures", post_init_done=True)
_signature = builder(Signature, "keyid", "sig")
_verified = builder(Verified, "payload", "payload_type", "key_ids")


class SignatureFields(Protocol):
    """A parsed signature's two fields (a protobuf ``Signature`` message, or a
    :class:`Signature`)."""

    @property
    def keyid(self) -> str: ...

    @property
    def sig(self) -> bytes: ...


def received(payload: bytes, payload_type: str, signatures: Iterable[SignatureFields]) -> Envelope:
    """``Envelope(payload=..., payload_type=..., signatures=(Signature(keyid=..., sig=...),
    ...))`` for fields a parser produced (:func:`gateway.wire.decode_envelope`: protobuf's
    ``bytes`` and ``str``), built slot by slot as :func:`seal` builds its own, and then
    checked by ``__post_init__``: every format check the constructor makes, on the same
    values and in the same order (a dataclass's ``__init__`` checks nothing else), so a
    peer's envelope is refused exactly as before. Each arrival and receipt decodes two
    or more; a receipt's decode cost 43,700 instructions through the frozen
    ``__init__``s, 33,200 so (callgrind)."""
    envelope = _envelope(
        payload, payload_type, tuple([_signature(s.keyid, s.sig) for s in signatures])
    )
    envelope.__post_init__()
    return envelope


def _verify_one(
    signature: Signature, message: bytes, keys: KeyResolver, *, remember: bool = True
) -> str:
    """The key id that produced ``signature``, or a verification error."""
    if signature.keyid:
        record = keys.resolve(signature.keyid)
        record.verify(message, signature.sig, remember=remember)
        return record.key_id
    # No key id: try every usable key. The algorithm still comes from each record.
    for record in keys.all():
        try:
            record.verify(message, signature.sig, remember=remember)
        except BadSignatureError:
            continue
        return record.key_id
    raise BadSignatureError("a signature without key id verifies under no trusted key")


def _threshold_error(
    failures: Sequence[VerificationError], verified: int, threshold: int
) -> VerificationError:
    """Pick the error a person can act on: the most specific failure, with the count."""
    counted = f"{verified} of {threshold} required distinct trusted keys signed"
    if not failures:
        return BadSignatureError(f"too few signatures: {counted}")
    # A revocation or expiry tells the operator more than "bad signature".
    for kind in (RevokedKeyError, ExpiredError, UntrustedKeyError, BadSignatureError):
        for failure in failures:
            if isinstance(failure, kind):
                return type(failure)(f"{failure.reason} ({counted})", hint=failure.hint)
    first = failures[0]
    return type(first)(f"{first.reason} ({counted})", hint=first.hint)


# --- DSSE JSON form ------------------------------------------------------------------


def _b64decode(text: object, what: str) -> bytes:
    """Strict standard base64: the one canonical encoding, no whitespace or junk."""
    if not isinstance(text, str):
        raise EnvelopeError(f"{what} must be a base64 string")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise EnvelopeError(f"{what} is not valid base64") from exc
    if base64.b64encode(raw).decode("ascii") != text:
        raise EnvelopeError(f"{what} is not canonical base64")
    return raw


def to_json(envelope: Envelope) -> bytes:
    """The DSSE JSON envelope (``payload``, ``payloadType``, ``signatures``).

    The bytes are exactly ``json.dumps(document, indent=2) + "\\n"`` (envelopes are stored
    and carried as these bytes, so the layout must not change), written out here with
    the C string encoder: with ``indent`` set, ``json.dumps`` takes the pure-Python
    encoder, whose nested closures make a reference cycle on every call, garbage only
    the cyclic collector frees, several times per migration and per checkpoint."""
    signatures = ",\n".join(
        "    {\n"
        f'      "keyid": {_string(s.keyid)},\n'
        f'      "sig": "{base64.b64encode(s.sig).decode("ascii")}"\n'
        "    }"
        for s in envelope.signatures
    )
    # An envelope has at least one signature (Envelope refuses none), so the list is
    # never json.dumps's one-line "[]".
    text = (
        "{\n"
        f'  "payload": "{base64.b64encode(envelope.payload).decode("ascii")}",\n'
        f'  "payloadType": {_string(envelope.payload_type)},\n'
        f'  "signatures": [\n{signatures}\n  ]\n'
        "}\n"
    )
    return text.encode("ascii")


#: A JSON string literal, escaped as ``json.dumps`` escapes it (ASCII only), by the C
#: encoder (no reference cycles).
_string = json.encoder.encode_basestring_ascii


def from_json(raw: bytes, *, max_size: int) -> Envelope:
    """Parse a DSSE JSON envelope, refusing anything larger than ``max_size`` bytes."""
    if len(raw) > max_size:
        raise EnvelopeTooLargeError(f"envelope is {len(raw)} bytes; at most {max_size} accepted")
    document = load_json(raw, error=EnvelopeError, what="envelope")
    if not isinstance(document, dict) or set(document) - {"payload", "payloadType", "signatures"}:
        raise EnvelopeError(
            "envelope JSON must be an object with payload, payloadType and signatures only"
        )
    payload_type = document.get("payloadType")
    signatures = document.get("signatures")
    if not isinstance(payload_type, str) or not isinstance(signatures, list):
        raise EnvelopeError("envelope JSON needs a string payloadType and a list of signatures")
    parsed: list[Signature] = []
    for index, item in enumerate(signatures):
        if not isinstance(item, dict) or set(item) - {"keyid", "sig"}:
            raise EnvelopeError(f"signatures[{index}] must be an object with keyid and sig only")
        keyid = item.get("keyid", "")
        if not isinstance(keyid, str):
            raise EnvelopeError(f"signatures[{index}].keyid must be a string")
        parsed.append(
            Signature(keyid=keyid, sig=_b64decode(item.get("sig"), f"signatures[{index}].sig"))
        )
    return Envelope(
        payload=_b64decode(document.get("payload"), "payload"),
        payload_type=payload_type,
        signatures=tuple(parsed),
    )
