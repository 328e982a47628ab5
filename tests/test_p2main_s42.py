"""Session 42, P2 on both sides: steps and receipt kinds hash in C; an envelope of one
signature is checked without a set; a grant's signature is checked by its key record
rather than through PyJWT's algorithm objects; an Ed25519 key verifies without an ABC
``isinstance``.

Each shortcut is held to the plain path it replaced (kept here as the reference) over
seeded cases: the same values accepted, the same error types and words for the rest.
"""

from __future__ import annotations

import contextvars
import dataclasses
import random
from collections.abc import Callable
from dataclasses import FrozenInstanceError
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from gateway import envelope as envelope_module
from gateway import observability
from gateway.envelope import (
    MAX_KEYID,
    MAX_PAYLOAD_TYPE,
    MAX_SIGNATURE_BYTES,
    MAX_SIGNATURES,
    Envelope,
    PayloadType,
    Signature,
    Verified,
    open_envelope,
    pae,
    seal,
)
from gateway.errors import BadSignatureError, EnvelopeError, EnvelopeTooLargeError
from gateway.handoff import destination, source
from gateway.handoff.lifecycle import LifecycleEvent
from gateway.handoff.messages import Receipt, ReceiptKind, Transfer
from gateway.handoff.records import DestinationRecord, SourceRecord
from gateway.keys import VERIFIED_SIGNATURES, KeyRecord, Purpose, Signer
from gateway.trust import DomainKeys, TrustStore, new_bundle

T0 = datetime(2026, 1, 1, tzinfo=UTC)

# --- enums (their hashing is held by tests/test_p2dst_s41.py's _SINGLETON_ENUMS) ---


def test_a_receipt_kinds_payload_type_is_its_value_as_text() -> None:
    assert [(kind, kind.payload_type) for kind in ReceiptKind] == [
        (kind, str(kind.value)) for kind in ReceiptKind
    ]
    assert all(type(kind.payload_type) is str for kind in ReceiptKind)


# --- envelopes ---------------------------------------------------------------------


def _reference_envelope_checks(payload_type: str, signatures: tuple[Signature, ...]) -> None:
    """Envelope.__post_init__ as it was (every envelope through the set)."""
    if not payload_type or len(payload_type) > MAX_PAYLOAD_TYPE:
        raise EnvelopeError(
            f"payload type must be 1..{MAX_PAYLOAD_TYPE} characters, got {len(payload_type)}"
        )
    if not payload_type.isascii():
        _reference_utf8(payload_type, "payload type")
    if not signatures:
        raise EnvelopeError("envelope has no signatures", hint="seal it with at least one key")
    if len(signatures) > MAX_SIGNATURES:
        raise EnvelopeTooLargeError(
            f"envelope has {len(signatures)} signatures; at most {MAX_SIGNATURES}"
        )
    seen: set[str] = set()
    for signature in signatures:
        keyid = signature.keyid
        if len(keyid) > MAX_KEYID or len(signature.sig) > MAX_SIGNATURE_BYTES:
            raise EnvelopeTooLargeError("a signature or key id is larger than any we issue")
        if not keyid.isascii():
            _reference_utf8(keyid, "key id")
        if keyid and keyid in seen:
            raise EnvelopeError(
                f"key id {keyid[:16]} signs the envelope twice",
                hint="each key signs an envelope once",
            )
        seen.add(keyid)


def _reference_utf8(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise EnvelopeError(f"{what} is not valid Unicode text (lone surrogate)") from exc


def _outcome(call: Callable[..., object], *args: Any, **kwargs: Any) -> tuple[str, str, str]:
    try:
        call(*args, **kwargs)
    except Exception as exc:  # compared by type and words below
        return (type(exc).__name__, str(exc), repr(getattr(exc, "hint", None)))
    return ("ok", "", "")


def _keyid(rng: random.Random) -> str:
    pick = rng.random()
    if pick < 0.5:
        return "".join(rng.choice("0123456789abcdef") for _ in range(64))
    if pick < 0.6:
        return ""
    if pick < 0.7:
        return "k" * rng.choice((MAX_KEYID, MAX_KEYID + 1, MAX_KEYID + 40))
    if pick < 0.8:
        return rng.choice(("é", "\ud800", "日本", "a\udfffb", "ok\x00"))
    return rng.choice(("a", "b", "c"))  # repeats across signatures


def _sig(rng: random.Random) -> bytes:
    return bytes(
        rng.getrandbits(8)
        for _ in range(rng.choice((0, 1, 64, 72, MAX_SIGNATURE_BYTES, MAX_SIGNATURE_BYTES + 1)))
    )


def test_an_envelope_is_checked_as_before_over_seeded_cases() -> None:
    rng = random.Random(4201)
    outcomes: set[str] = set()
    for _ in range(6000):
        payload_type = rng.choice(
            ("application/x", "", "t" * (MAX_PAYLOAD_TYPE + 1), "typé", "bad\ud800")
        )
        count = rng.choice((1, 1, 1, 1, 0, 2, 3, MAX_SIGNATURES, MAX_SIGNATURES + 1))
        signatures = tuple(Signature(keyid=_keyid(rng), sig=_sig(rng)) for _ in range(count))
        got = _outcome(Envelope, payload=b"p", payload_type=payload_type, signatures=signatures)
        want = _outcome(_reference_envelope_checks, payload_type, signatures)
        assert got == want, (payload_type, signatures)
        outcomes.add(got[0])
    assert outcomes == {"ok", "EnvelopeError", "EnvelopeTooLargeError"}


# --- grant signatures --------------------------------------------------------------


def _signers(rng: random.Random) -> list[Signer]:
    return [
        Signer(ed25519.Ed25519PrivateKey.from_private_bytes(rng.randbytes(32))),
        Signer(ed25519.Ed25519PrivateKey.from_private_bytes(rng.randbytes(32))),
        Signer(ec.derive_private_key(rng.getrandbits(200) + 1, ec.SECP256R1())),
        Signer(ec.derive_private_key(rng.getrandbits(200) + 1, ec.SECP256R1())),
    ]


def _record(signer: Signer) -> KeyRecord:
    return KeyRecord.for_public_key(signer.public_key, purposes=[Purpose.GRANT], valid_from=T0)


def _damaged(rng: random.Random, signature: bytes, others: list[bytes]) -> bytes:
    pick = rng.randrange(8)
    if pick == 0:
        return signature
    if pick == 1:  # one bit
        index = rng.randrange(len(signature))
        return (
            signature[:index]
            + bytes([signature[index] ^ 1 << rng.randrange(8)])
            + signature[index + 1 :]
        )
    if pick == 2:
        return signature[: rng.randrange(len(signature))]
    if pick == 3:
        return signature + rng.randbytes(rng.choice((1, 8, 64)))
    if pick == 4:
        return b""
    if pick == 5:
        return rng.randbytes(rng.choice((32, 63, 64, 65, 70, 72)))
    if pick == 6:  # another key's (or another message's) valid signature
        return rng.choice(others)
    return b"\x00" * len(signature)


def test_an_ed25519_record_verifies_what_its_key_verifies() -> None:
    rng = random.Random(4204)
    signers = _signers(rng)[:2]
    records = [_record(signer) for signer in signers]
    for _ in range(300):
        index = rng.randrange(2)
        message = rng.randbytes(rng.randrange(200))
        signature = signers[index].sign(message)
        signature = _damaged(rng, signature, [signers[1 - index].sign(message)])
        record = records[index]
        got = _outcome(record.verify, message, signature, remember=False)
        assert got == _outcome(_plain_ed25519, record, message, signature)


def _plain_ed25519(record: KeyRecord, message: bytes, signature: bytes) -> None:
    """What KeyRecord.verify answers, by the key object itself."""
    key: Any = record.public_key_object()
    try:
        key.verify(signature, message)
    except Exception as exc:
        raise BadSignatureError(
            f"signature does not verify under key {record.key_id[:16]} (ed25519)"
        ) from exc


# --- staged receipts ---------------------------------------------------------------


class _Keys:
    def __init__(self, record: KeyRecord) -> None:
        self._record = record

    def resolve(self, key_id: str) -> KeyRecord:
        assert key_id == self._record.key_id
        return self._record

    def all(self) -> list[KeyRecord]:
        return [self._record]


def test_a_staged_receipts_signature_is_not_remembered_an_activation_receipts_is() -> None:
    """A staged receipt is opened once, by its source, when Prepare answers: its
    signature is neither hashed into nor looked up in the memory of verified signatures.
    An activation receipt travels on as an arrival and is opened again by custody."""
    rng = random.Random(4205)
    signer = _signers(rng)[0]
    record = KeyRecord.for_public_key(signer.public_key, purposes=[Purpose.ENVELOPE], valid_from=T0)
    keys = _Keys(record)
    VERIFIED_SIGNATURES.clear()
    try:
        staged = seal(b"r" * 300, PayloadType.STAGED_RECEIPT, [signer])
        for _ in range(2):  # verified each time, never remembered
            opened = open_envelope(staged, payload_type=PayloadType.STAGED_RECEIPT, keys=keys)
            assert opened.payload == staged.payload
        assert len(VERIFIED_SIGNATURES) == 0
        spoiled = Envelope(
            payload=b"s" + staged.payload[1:],
            payload_type=staged.payload_type,
            signatures=staged.signatures,
        )
        with pytest.raises(BadSignatureError):
            open_envelope(spoiled, payload_type=PayloadType.STAGED_RECEIPT, keys=keys)
        activated = seal(b"a" * 300, PayloadType.ACTIVATION_RECEIPT, [signer])
        open_envelope(activated, payload_type=PayloadType.ACTIVATION_RECEIPT, keys=keys)
        assert len(VERIFIED_SIGNATURES) == 1
    finally:
        VERIFIED_SIGNATURES.clear()


# --- handoff binding ---------------------------------------------------------------


def _reference_bind(**fields: str | None) -> None:
    """observability.bind as it was (tracing aside)."""
    given = {
        name: value
        for name, value in (
            ("migration_id", fields.get("migration_id")),
            ("object_id", fields.get("object_id")),
            ("peer", fields.get("peer")),
            ("tenant", fields.get("tenant")),
        )
        if value
    }
    observability.HANDOFF.set({**observability.HANDOFF.get(), **given})


def _bindings(bind: Callable[..., None], calls: list[dict[str, str | None]]) -> list[object]:
    def run() -> list[object]:
        seen: list[object] = []
        for fields in calls:
            bind(**fields)
            seen.append(list(observability.HANDOFF.get().items()))
        return seen

    return contextvars.copy_context().run(run)


def test_a_binding_is_the_same_dict_in_the_same_order_over_seeded_calls() -> None:
    rng = random.Random(4206)
    names = ("migration_id", "object_id", "peer", "tenant")
    for _ in range(400):
        calls = []
        for _ in range(rng.randrange(1, 5)):
            chosen = rng.sample(names, rng.randrange(len(names) + 1))
            if rng.random() < 0.5:
                chosen = list(names)  # the migrations' case, all four
            calls.append(
                {
                    name: rng.choice(("", None, "mig-1", "obj://a/b", "org-b", "default", "é"))
                    if rng.random() < 0.2
                    else f"{name}-{rng.randrange(3)}"
                    for name in chosen
                }
            )
        assert _bindings(observability.bind, calls) == _bindings(_reference_bind, calls), calls


# --- trust: a domain's resolver built slot by slot ----------------------------------


def test_a_domains_resolver_is_the_value_its_constructor_makes_over_seeded_cases() -> None:
    rng = random.Random(4207)
    signers = _signers(rng)
    domains = ("org-a.example", "org-b.example")
    bundles = [
        new_bundle(
            domain,
            [
                KeyRecord.for_public_key(
                    signer.public_key, purposes=[Purpose.ENVELOPE, Purpose.GRANT], valid_from=T0
                )
                for signer in signers[index * 2 : index * 2 + 2]
            ],
            issued_at=T0,
        )
        for index, domain in enumerate(domains)
    ]
    store = TrustStore.of(bundles)
    hosts = [f"spiffe://{d}/gateway/{n}" for d in (*domains, "org-c.example") for n in "ab"]
    moments = [None, T0, datetime(2030, 5, 6, 7, 8, 9, 10, tzinfo=UTC)]
    for _ in range(500):
        host = rng.choice([*hosts, "not a host id", "spiffe://"])
        purpose = rng.choice(list(Purpose))
        at, signed_at = rng.choice(moments), rng.choice(moments)
        got = _outcome(store.keys_for_host, host, purpose=purpose, at=at, signed_at=signed_at)
        try:
            made = store.keys_for_host(host, purpose=purpose, at=at, signed_at=signed_at)
        except Exception:
            assert got[0] != "ok"
            continue
        want = DomainKeys(
            bundle=store.bundle(made.bundle.trust_domain),
            purpose=purpose,
            host=host,
            at=at,
            signed_at=signed_at,
        )
        assert type(made) is DomainKeys
        assert made == want and hash(made) == hash(want) and repr(made) == repr(want)
        bundle = rng.choice(bundles)
        resolver_host = rng.choice([None, *hosts])
        assert bundle.resolver(purpose=purpose, host=resolver_host, at=at) == DomainKeys(
            bundle=bundle, purpose=purpose, host=resolver_host, at=at
        )
        with pytest.raises(FrozenInstanceError):
            made.host = "x"  # type: ignore[misc]


# --- frozen values built slot by slot ----------------------------------------------


_BUILT = [
    (source._frozen_record, SourceRecord),
    (source._transfer, Transfer),
    (source._result, source.MigrationResult),
    (destination._staged_record, DestinationRecord),
    (destination._new_receipt, Receipt),
    (source._written, source._Frozen),
    (source._event, LifecycleEvent),
    (destination._staged_for_commit, destination._Staged),
    (destination._event, LifecycleEvent),
    (envelope_module._signature, Signature),
    (envelope_module._verified, Verified),
]


@pytest.mark.parametrize(("build", "cls"), _BUILT)
def test_each_builder_makes_what_its_classs_constructor_makes(build: Any, cls: type) -> None:
    """Every field, in the class's own order (a distinct value at each position: a builder
    that skips, repeats or swaps a field makes another value), equal to the constructor's
    value with the same repr and hash, and still frozen."""
    rng = random.Random(4208)
    names = [field.name for field in dataclasses.fields(cls)]
    for _ in range(50):
        values = [
            rng.choice((f"v{index}-{rng.randrange(9)}", index * 10 + rng.randrange(9)))
            for index in range(len(names))
        ]
        made, want = build(*values), cls(**dict(zip(names, values, strict=True)))
        assert type(made) is cls
        assert [getattr(made, n) for n in names] == [getattr(want, n) for n in names]
        assert made == want and repr(made) == repr(want)
        with pytest.raises(FrozenInstanceError):
            setattr(made, names[0], "changed")


def _reference_seal(payload: bytes, payload_type: str, signers: list[Signer]) -> Envelope:
    """envelope.seal as it was (Envelope and Signature by their constructors)."""
    if len(signers) > 1 and len({s.key_id for s in signers}) != len(signers):
        raise ValueError("the same key is listed twice; a key signs an envelope once")
    message = pae(payload_type, payload)
    return Envelope(
        payload=payload,
        payload_type=payload_type,
        signatures=tuple([Signature(keyid=s.key_id, sig=s.sign(message)) for s in signers]),
    )


def test_a_seal_is_the_envelope_it_was_and_refuses_as_it_did() -> None:
    """Ed25519 signatures are deterministic: the envelopes are equal whole."""
    rng = random.Random(4209)
    signers = _signers(rng)[:2]
    payload_types = ("application/x", "", "t" * (MAX_PAYLOAD_TYPE + 1), "typé", "bad\ud800")
    for _ in range(300):
        payload = rng.randbytes(rng.choice((0, 1, 300)))
        payload_type = rng.choice(payload_types)
        chosen = rng.choice(([signers[0]], [signers[1]], signers, [signers[0], signers[0]]))
        got = _outcome(seal, payload, payload_type, chosen)
        assert got == _outcome(_reference_seal, payload, payload_type, chosen)
        if got[0] == "ok":
            made = seal(payload, payload_type, chosen)
            assert made == _reference_seal(payload, payload_type, chosen)
            assert type(made) is Envelope
            assert all(type(s) is Signature for s in made.signatures)
