"""Tests for gateway.trust: bundle encoding, updates that only move forward, and
domains kept apart.

The rules under test (DESIGN.md §8 and the module docstring): a bundle has exactly one
byte form; the first bundle of a domain must be signed by its own bundle key (trust on
first use); every later one by the bundle keys of the bundle it replaces, with a higher
sequence number (same number only if identical); a key revoked in a newer bundle stops
verifying; one domain's keys never speak for another. The "never" is a property: no
single changed byte of an exported bundle is accepted as a different bundle.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import envelope as dsse
from gateway.authority import CapabilitySet, Constraints
from gateway.credentials import issue_grant, verify_grant
from gateway.devcerts import make_ca
from gateway.errors import (
    BadSignatureError,
    ConfigError,
    ExpiredError,
    GatewayError,
    PayloadTypeError,
    RetiredKeyError,
    RevokedKeyError,
    RollbackError,
    TrustError,
    UntrustedKeyError,
    VerificationError,
)
from gateway.keyring import (
    Keyring,
    add_key,
    init_keys,
    load_keyring,
    retire_key,
    revoke_key,
)
from gateway.keys import Algorithm, KeyRecord, Purpose, Signer
from gateway.keyusage import signed_by
from gateway.lineage import EntryKind, Lineage, verify_lineage
from gateway.model import new_object
from gateway.trust import (
    TrustBundle,
    TrustStore,
    accept_bundle,
    decode_bundle,
    encode_bundle,
    new_bundle,
    sign_bundle,
)

NOW = datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
LATER = NOW + timedelta(hours=1)
HOST_A = "spiffe://org-a.example/cluster/east/gateway"
HOST_B = "spiffe://org-b.example/cluster/west/gateway"
CA_A = make_ca("org-a.example", now=NOW).cert_pem


@dataclass(frozen=True, slots=True)
class Domain:
    """A trust domain's key material: one bundle key, one envelope key, its bundle."""

    bundle_key: Signer
    envelope_key: Signer
    bundle: TrustBundle

    @property
    def name(self) -> str:
        return self.bundle.trust_domain

    def signed(self, bundle: TrustBundle | None = None, *signers: Signer) -> bytes:
        return sign_bundle(bundle or self.bundle, signers or (self.bundle_key,))


def _record(signer: Signer, *purposes: Purpose, hosts: tuple[str, ...] = ()) -> KeyRecord:
    return signer.record(
        purposes=purposes, hosts=hosts, valid_from=NOW, valid_until=NOW + timedelta(days=30)
    )


def _domain(name: str, *, algorithm: Algorithm = Algorithm.ED25519) -> Domain:
    bundle_key = Signer.generate(algorithm)
    envelope_key = Signer.generate(algorithm)
    bundle = new_bundle(
        name,
        [_record(bundle_key, Purpose.BUNDLE), _record(envelope_key, Purpose.ENVELOPE)],
        x509_authorities=[CA_A] if name == "org-a.example" else [],
        issued_at=NOW,
    )
    return Domain(bundle_key, envelope_key, bundle)


@pytest.fixture
def org_a() -> Domain:
    return _domain("org-a.example")


@pytest.fixture
def org_b() -> Domain:
    return _domain("org-b.example", algorithm=Algorithm.ECDSA_P256_SHA256)


def _revoked(bundle: TrustBundle, signer: Signer, *, at: datetime = LATER) -> TrustBundle:
    record = bundle.key(signer.key_id)
    assert record is not None
    return bundle.with_key(replace(record, revoked=True), issued_at=at)


# --- canonical encoding -------------------------------------------------------------------


def test_encode_decode_round_trip(org_a: Domain) -> None:
    """Decoding gives the same bundle (keys in key-id order) and the same bytes back."""
    raw = encode_bundle(org_a.bundle)
    decoded = decode_bundle(raw)
    assert encode_bundle(decoded) == raw
    assert decoded == replace(
        org_a.bundle, keys=tuple(sorted(org_a.bundle.keys, key=lambda k: k.key_id))
    )
    assert decoded.fingerprint() == org_a.bundle.fingerprint()
    assert decoded.x509_authorities == (CA_A,)


def test_key_order_does_not_change_the_encoding(org_a: Domain) -> None:
    """Two bundles that differ only in the order of their keys have one byte form."""
    reversed_keys = replace(org_a.bundle, keys=tuple(reversed(org_a.bundle.keys)))
    assert encode_bundle(reversed_keys) == encode_bundle(org_a.bundle)


def _document(bundle: TrustBundle) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(encode_bundle(bundle))
    return document


@pytest.mark.parametrize(
    "render",
    [
        lambda d: json.dumps(d, sort_keys=True, indent=2),
        lambda d: json.dumps(d, sort_keys=True),  # ", " and ": " separators
        lambda d: json.dumps(dict(reversed(sorted(d.items()))), separators=(",", ":")),
        lambda d: json.dumps(d, sort_keys=True, separators=(",", ":")) + "\n",
        lambda d: " " + json.dumps(d, sort_keys=True, separators=(",", ":")),
    ],
    ids=["indented", "spaced", "unsorted", "trailing-newline", "leading-space"],
)
def test_only_the_canonical_form_decodes(org_a: Domain, render: Any) -> None:
    """The same content in any other JSON spelling is refused: one bundle, one byte form,
    so a fingerprint compared out of band means what it says."""
    text: str = render(_document(org_a.bundle))
    assert json.loads(text) == _document(org_a.bundle)
    with pytest.raises(TrustError, match="canonical"):
        decode_bundle(text.encode())


def test_unknown_fields_are_refused(org_a: Domain) -> None:
    """A field this gateway does not know, in the bundle or in a key, is refused."""
    document = _document(org_a.bundle)
    with pytest.raises(TrustError, match="unknown fields"):
        decode_bundle(json.dumps({**document, "policy": "allow-all"}).encode())
    document["keys"][0]["comment"] = "hello"
    with pytest.raises(TrustError, match="unknown fields"):
        decode_bundle(json.dumps(document, sort_keys=True, separators=(",", ":")).encode())


def _edit(bundle: TrustBundle, path: tuple[str | int, ...], value: object) -> bytes:
    """The canonical encoding with one value replaced (or removed, for ``...``)."""
    document: Any = _document(bundle)
    target = document
    for step in path[:-1]:
        target = target[step]
    if value is ...:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


MALFORMED: list[tuple[tuple[str | int, ...], object, str]] = [
    (("format",), 2, "a future format"),
    (("format",), ..., "format missing"),
    (("sequence",), 0, "sequences start at 1"),
    (("sequence",), "2", "sequence is not a number"),
    (("sequence",), True, "a bool is not a sequence number"),
    (("trust_domain",), ..., "domain missing"),
    (("issued_at",), "2030-01-02T03:04:05Z", "time without milliseconds"),
    (("keys",), {}, "keys not a list"),
    (("envelope_threshold",), 3, "threshold no set of keys can meet"),
    (("bundle_threshold",), 0, "threshold below one"),
    (("keys", 0, "key_id"), "00" * 32, "key id not the key's"),
    (("keys", 0, "public_key"), "not base64!", "public key not base64"),
    (("keys", 0, "public_key"), "AAAA", "public key not a SPKI"),
    (("keys", 0, "algorithm"), "rsa", "unknown algorithm"),
    (("keys", 0, "purposes"), ["everything"], "unknown purpose"),
    (("keys", 0, "purposes"), [], "no purposes"),
    (("keys", 0, "valid_until"), 5, "validity end not a time"),
    (("keys", 0, "valid_from"), None, "validity start missing"),
    (("keys", 0, "revoked"), "no", "revoked not a bool"),
    (("keys", 0), ["not", "an", "object"], "key not an object"),
]


@pytest.mark.parametrize(
    ("path", "value", "reason"),
    [pytest.param(*case, id=case[2].replace(" ", "-")) for case in MALFORMED],
)
def test_malformed_bundles_are_trust_errors(
    org_a: Domain, path: tuple[str | int, ...], value: object, reason: str
) -> None:
    """Each malformed field is a TrustError, never a TypeError or KeyError."""
    with pytest.raises(TrustError):
        decode_bundle(_edit(org_a.bundle, path, value))


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty"),
        (b"\xff", "not UTF-8"),
        (b"[]", "not an object"),
        (b"[" * 100_000, "nested too deeply for the parser"),
    ],
    ids=["empty", "not-utf8", "array", "deep"],
)
def test_non_bundles_are_trust_errors(raw: bytes, reason: str) -> None:
    """Input that is not a bundle at all is a TrustError too."""
    with pytest.raises(TrustError):
        decode_bundle(raw)


def test_duplicate_key_in_a_bundle_is_refused(org_a: Domain) -> None:
    """A key listed twice (e.g. once revoked, once not) is ambiguous: refused."""
    document = _document(org_a.bundle)
    twin = dict(document["keys"][0], revoked=not document["keys"][0]["revoked"])
    document["keys"].append(twin)
    with pytest.raises(TrustError, match="twice"):
        decode_bundle(json.dumps(document, sort_keys=True, separators=(",", ":")).encode())


# --- first import and updates -------------------------------------------------------------


def test_first_import_accepts_a_self_signed_bundle(org_a: Domain) -> None:
    """Trust on first use: the bundle verifies under its own bundle key."""
    accepted = accept_bundle(None, org_a.signed(), at=NOW, trust_domain="org-a.example")
    assert encode_bundle(accepted) == encode_bundle(org_a.bundle)


def test_first_import_refuses_a_bundle_signed_by_an_outsider(org_a: Domain) -> None:
    """A bundle signed by a key it does not list proves nothing about the domain."""
    outsider = Signer.generate()
    forged = dsse.to_json(
        dsse.seal(encode_bundle(org_a.bundle), dsse.PayloadType.TRUST_BUNDLE, [outsider])
    )
    with pytest.raises(UntrustedKeyError):
        accept_bundle(None, forged, at=NOW)


def test_first_import_refuses_a_bundle_signed_by_a_non_bundle_key(org_a: Domain) -> None:
    """Listed, but for envelopes only: an envelope key cannot vouch for a bundle."""
    with pytest.raises(TrustError, match="not a bundle key"):
        org_a.signed(org_a.bundle, org_a.envelope_key)  # sign_bundle itself refuses
    forged = dsse.to_json(
        dsse.seal(encode_bundle(org_a.bundle), dsse.PayloadType.TRUST_BUNDLE, [org_a.envelope_key])
    )
    with pytest.raises(UntrustedKeyError) as caught:
        accept_bundle(None, forged, at=NOW)
    assert type(caught.value) is UntrustedKeyError


def test_bundle_must_carry_the_trust_bundle_payload_type(org_a: Domain) -> None:
    """Bundle bytes signed as something else (a checkpoint, say) are not a bundle update."""
    sealed = dsse.seal(encode_bundle(org_a.bundle), dsse.PayloadType.CHECKPOINT, [org_a.bundle_key])
    with pytest.raises(PayloadTypeError):
        accept_bundle(None, dsse.to_json(sealed), at=NOW)


def test_update_signed_by_the_current_bundle_key_is_accepted(org_a: Domain) -> None:
    """A new envelope key, announced under the current bundle key, moves the domain on."""
    newcomer = Signer.generate()
    update = org_a.bundle.with_key(_record(newcomer, Purpose.ENVELOPE), issued_at=LATER)
    accepted = accept_bundle(org_a.bundle, org_a.signed(update), at=LATER)
    assert accepted.sequence == 2
    assert accepted.key(newcomer.key_id) is not None


def test_update_signed_only_by_a_new_key_is_refused(org_a: Domain) -> None:
    """Whoever can replace the file cannot replace the keys: an update that only the
    newcomer signed is refused, whether or not it still lists the current bundle key."""
    newcomer = Signer.generate()
    added = org_a.bundle.with_key(_record(newcomer, Purpose.BUNDLE), issued_at=LATER)
    with pytest.raises(UntrustedKeyError):
        accept_bundle(org_a.bundle, sign_bundle(added, [newcomer]), at=LATER)
    swapped = replace(
        added, keys=tuple(k for k in added.keys if k.key_id != org_a.bundle_key.key_id)
    )
    with pytest.raises(UntrustedKeyError):
        accept_bundle(org_a.bundle, sign_bundle(swapped, [newcomer]), at=LATER)


def test_bundle_key_rotation_goes_through_the_old_key(org_a: Domain) -> None:
    """Rotating the bundle key: the old key signs a bundle that adds the new one and
    revokes itself; from then on only the new key can sign, the old one is revoked."""
    newcomer = Signer.generate()
    step = org_a.bundle.with_key(_record(newcomer, Purpose.BUNDLE), issued_at=LATER)
    step = _revoked(step, org_a.bundle_key)
    current = accept_bundle(org_a.bundle, org_a.signed(step), at=LATER)
    assert current.sequence == 3
    following = replace(current, sequence=4, issued_at=LATER)
    with pytest.raises(RevokedKeyError):
        accept_bundle(current, sign_bundle(following, [org_a.bundle_key]), at=LATER)
    assert accept_bundle(current, sign_bundle(following, [newcomer]), at=LATER).sequence == 4


def test_older_bundle_is_a_rollback(org_a: Domain) -> None:
    """An older sequence never replaces a newer one, even correctly signed."""
    newer = org_a.bundle.with_key(_record(Signer.generate(), Purpose.ENVELOPE), issued_at=LATER)
    with pytest.raises(RollbackError):
        accept_bundle(newer, org_a.signed(org_a.bundle), at=LATER)


def test_same_sequence_with_other_content_is_a_rollback(org_a: Domain) -> None:
    """A sequence number is published once: different content under it is refused."""
    other = replace(org_a.bundle, issued_at=LATER)
    with pytest.raises(RollbackError, match="reuses sequence"):
        accept_bundle(org_a.bundle, org_a.signed(other), at=LATER)


def test_same_bundle_again_is_a_no_op(org_a: Domain) -> None:
    """Importing the bundle already held changes nothing."""
    assert accept_bundle(org_a.bundle, org_a.signed(), at=LATER) is org_a.bundle


def test_wrong_trust_domain_is_refused(org_a: Domain, org_b: Domain) -> None:
    """A bundle for org-b is not accepted where org-a's is expected, at first import
    (it names the wrong domain) or as an update (org-a's keys did not sign it)."""
    with pytest.raises(TrustError, match=re.escape("expected org-a.example")):
        accept_bundle(None, org_b.signed(), at=NOW, trust_domain="org-a.example")
    with pytest.raises(UntrustedKeyError):
        accept_bundle(org_a.bundle, org_b.signed(), at=NOW)


def test_update_renaming_the_domain_is_refused(org_a: Domain) -> None:
    """Even signed by org-a's own bundle key, a bundle for another domain is refused."""
    renamed = replace(org_a.bundle, trust_domain="org-z.example", sequence=2, issued_at=LATER)
    with pytest.raises(TrustError, match=re.escape("expected org-a.example")):
        accept_bundle(org_a.bundle, org_a.signed(renamed), at=LATER)


def test_bundle_threshold_counts_distinct_bundle_keys() -> None:
    """With bundle_threshold 2, one bundle key alone cannot sign an update."""
    first, second = Signer.generate(), Signer.generate(Algorithm.ECDSA_P256_SHA256)
    bundle = replace(
        new_bundle(
            "org-a.example",
            [_record(first, Purpose.BUNDLE), _record(second, Purpose.BUNDLE)],
            issued_at=NOW,
        ),
        bundle_threshold=2,
    )
    update = bundle.with_key(_record(Signer.generate(), Purpose.ENVELOPE), issued_at=LATER)
    with pytest.raises(BadSignatureError, match="1 of 2"):
        accept_bundle(bundle, sign_bundle(update, [first]), at=LATER)
    accepted = accept_bundle(bundle, sign_bundle(update, [first, second]), at=LATER)
    assert encode_bundle(accepted) == encode_bundle(update)


def test_expired_bundle_key_cannot_sign_updates(org_a: Domain) -> None:
    """An update is checked at the time it is imported; an expired bundle key fails."""
    update = org_a.bundle.with_key(_record(Signer.generate(), Purpose.ENVELOPE), issued_at=LATER)
    with pytest.raises(ExpiredError):
        accept_bundle(org_a.bundle, org_a.signed(update), at=NOW + timedelta(days=31))


def test_revocation_in_a_newer_bundle_stops_envelopes(org_a: Domain) -> None:
    """An envelope that opened under sequence 1 is refused once sequence 2 revokes its key."""
    envelope = dsse.seal(b"transfer", dsse.PayloadType.TRANSFER, [org_a.envelope_key])
    store = TrustStore.of([org_a.bundle])

    def open_with(trust: TrustStore) -> dsse.Verified:
        keys = trust.keys_for_host(HOST_A, purpose=Purpose.ENVELOPE, at=LATER)
        return dsse.open_envelope(envelope, payload_type=dsse.PayloadType.TRANSFER, keys=keys)

    assert open_with(store).key_ids == {org_a.envelope_key.key_id}
    revoking = _revoked(org_a.bundle, org_a.envelope_key)
    current = accept_bundle(store.bundle("org-a.example"), org_a.signed(revoking), at=LATER)
    with pytest.raises(RevokedKeyError):
        open_with(store.with_bundle(current))


# --- trust stores --------------------------------------------------------------------------


def test_trust_store_keeps_domains_apart(org_a: Domain, org_b: Domain) -> None:
    """Each host's keys come from its own domain's bundle only."""
    store = TrustStore.of([org_a.bundle, org_b.bundle])
    by_b = dsse.seal(b"x", dsse.PayloadType.TRANSFER, [org_b.envelope_key])
    keys_b = store.keys_for_host(HOST_B, purpose=Purpose.ENVELOPE, at=NOW)
    assert dsse.open_envelope(by_b, payload_type=dsse.PayloadType.TRANSFER, keys=keys_b)
    keys_a = store.keys_for_host(HOST_A, purpose=Purpose.ENVELOPE, at=NOW)
    assert keys_a.bundle is org_a.bundle
    with pytest.raises(UntrustedKeyError):
        dsse.open_envelope(by_b, payload_type=dsse.PayloadType.TRANSFER, keys=keys_a)
    # Replacing one domain's bundle leaves the other alone.
    newer_a = org_a.bundle.with_key(_record(Signer.generate(), Purpose.ENVELOPE), issued_at=LATER)
    updated = store.with_bundle(newer_a)
    assert updated.bundle("org-a.example") is newer_a
    assert updated.bundle("org-b.example") is org_b.bundle
    assert store.bundle("org-a.example") is org_a.bundle  # the old store is unchanged
    assert updated.x509_authorities() == (CA_A,)


def test_trust_store_refuses_two_bundles_for_one_domain(org_a: Domain) -> None:
    """Bundles are never merged: two for the same domain is a configuration mistake."""
    newer = org_a.bundle.with_key(_record(Signer.generate(), Purpose.ENVELOPE), issued_at=LATER)
    with pytest.raises(TrustError, match="two bundles"):
        TrustStore.of([org_a.bundle, newer])


def test_unknown_domain_is_untrusted_not_empty(org_a: Domain) -> None:
    """No bundle for a domain is an error naming it, never an empty key set."""
    store = TrustStore.of([org_a.bundle])
    with pytest.raises(UntrustedKeyError, match=re.escape("org-c.example")):
        store.keys_for_host("spiffe://org-c.example/x/gateway", purpose=Purpose.ENVELOPE, at=NOW)
    with pytest.raises(UntrustedKeyError):
        TrustStore().bundle("org-a.example")
    with pytest.raises(ConfigError):
        store.keys_for_host("https://org-a.example/x", purpose=Purpose.ENVELOPE, at=NOW)


def test_resolver_lists_only_usable_keys(org_a: Domain) -> None:
    """Key-id-less signatures are tried against usable keys only: right purpose, host,
    time and not revoked."""
    limited = _record(Signer.generate(), Purpose.ENVELOPE, hosts=(HOST_A,))
    bundle = org_a.bundle.with_key(limited, issued_at=LATER)
    bundle = _revoked(bundle, org_a.envelope_key)
    usable = bundle.resolver(purpose=Purpose.ENVELOPE, host=HOST_A, at=LATER).all()
    assert [r.key_id for r in usable] == [limited.key_id]
    assert bundle.resolver(purpose=Purpose.ENVELOPE, host=HOST_B, at=LATER).all() == []
    assert bundle.resolver(purpose=Purpose.ENVELOPE, host=HOST_A, at=NOW - timedelta(1)).all() == []


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"sequence": 0}, "sequence below 1"),
        ({"envelope_threshold": 2}, "only one envelope key"),
        ({"bundle_threshold": 0}, "threshold below 1"),
    ],
    ids=["sequence-0", "envelope-threshold-unmeetable", "bundle-threshold-0"],
)
def test_bundle_invariants_hold_at_construction(
    org_a: Domain, changes: dict[str, int], reason: str
) -> None:
    """A bundle that could never be used is refused when it is built."""
    with pytest.raises(TrustError):
        replace(org_a.bundle, **changes)


# --- the exported file: no changed byte is a different bundle ------------------------------


@pytest.fixture(scope="module")
def keyring(tmp_path_factory: pytest.TempPathFactory) -> Keyring:
    directory: Path = tmp_path_factory.mktemp("keys") / "org-a"
    return init_keys(
        directory, trust_domain="org-a.example", host=HOST_A, ca_certificate=CA_A, at=NOW
    )


@pytest.fixture(scope="module")
def exported(keyring: Keyring) -> bytes:
    return keyring.export(NOW)


def _import(current: TrustBundle | None, raw: bytes) -> TrustBundle | str:
    """The accepted bundle, or the name of the GatewayError that refused ``raw``."""
    try:
        return accept_bundle(current, raw, at=NOW, trust_domain="org-a.example")
    except GatewayError as exc:
        refusal = exc
    assert type(refusal) not in (GatewayError, VerificationError), repr(refusal)
    return type(refusal).__name__


def _flip(raw: bytes, position: int, mask: int) -> bytes:
    return raw[:position] + bytes([raw[position] ^ mask]) + raw[position + 1 :]


def test_exported_bundle_imports(keyring: Keyring, exported: bytes) -> None:
    """Baseline: the keyring's export is accepted as exactly its bundle."""
    assert _import(None, exported) == keyring.bundle
    assert _import(keyring.bundle, exported) is keyring.bundle


def test_every_byte_flip_of_an_export_is_refused_or_identical(
    keyring: Keyring, exported: bytes
) -> None:
    """Exhaustively (xor 0x01, every position), first import and update: a changed file
    is refused, or (JSON whitespace swapped for whitespace) is the very same bundle."""
    original = encode_bundle(keyring.bundle)
    outcomes: Counter[str] = Counter()
    for position in range(len(exported)):
        flipped = _flip(exported, position, 0x01)
        for current in (None, keyring.bundle):
            result = _import(current, flipped)
            if isinstance(result, TrustBundle):
                assert encode_bundle(result) == original, f"byte {position} gave another bundle"
                outcomes["same bundle"] += 1
            else:
                outcomes[result] += 1
    assert outcomes["TrustError"] > 0 and outcomes["BadSignatureError"] > 0, outcomes


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_no_single_byte_change_of_an_export_is_another_bundle(
    keyring: Keyring, exported: bytes, data: st.DataObject
) -> None:
    """Any position, any xor mask: never accepted as a bundle other than the original."""
    position = data.draw(st.integers(0, len(exported) - 1), label="position")
    mask = data.draw(st.integers(1, 255), label="mask")
    flipped = _flip(exported, position, mask)
    original = encode_bundle(keyring.bundle)
    for current in (None, keyring.bundle):
        result = _import(current, flipped)
        if isinstance(result, TrustBundle):
            assert encode_bundle(result) == original


# --- retired and revoked keys ----------------------------------------------------------------

RETIRED_AT = NOW + timedelta(minutes=30)


def _retired(bundle: TrustBundle, signer: Signer, *, at: datetime = RETIRED_AT) -> TrustBundle:
    record = bundle.key(signer.key_id)
    assert record is not None
    return bundle.with_key(replace(record, retired_at=at), issued_at=at)


def _checkpointed(signer: Signer, *, at: datetime) -> Lineage:
    """A one-entry lineage of an org-a object, checkpointed by HOST_A at ``at``."""
    lineage = Lineage().append(
        EntryKind.CREATED,
        host=HOST_A,
        at=at,
        epoch=0,
        generation=0,
        data_digest=bytes(32),
        credentials_digest=bytes(32),
    )
    return lineage.sealed(
        object_id=OBJECT_A,
        host=HOST_A,
        epoch=0,
        at=at,
        signer=signer,
        to="spiffe://org-b.example/cluster/west/gateway",
        migration="mig-1",
    )


OBJECT_A = "obj://org-a.example/billing/invoice-1"


def test_retired_key_checkpoints_verify_by_their_signed_time(org_a: Domain) -> None:
    """A checkpoint signed before the key's retirement still verifies after it; one signed
    at or after the retirement is refused, naming the checkpoint, object and key."""
    trust = TrustStore.of([_retired(org_a.bundle, org_a.envelope_key)])
    before = _checkpointed(org_a.envelope_key, at=RETIRED_AT - timedelta(seconds=1))
    verified = verify_lineage(before, object_id=OBJECT_A, trust=trust, sealed=True)
    assert verified.hosts == (HOST_A,)
    after = _checkpointed(org_a.envelope_key, at=RETIRED_AT)
    with pytest.raises(RetiredKeyError) as refused:
        verify_lineage(after, object_id=OBJECT_A, trust=trust, sealed=True)
    message = str(refused.value)
    assert "checkpoint 0" in message and OBJECT_A in message
    assert org_a.envelope_key.key_id[:16] in message and "retired at" in message


def test_revoked_key_checkpoints_never_verify(org_a: Domain) -> None:
    """Revocation distrusts the past: even a checkpoint signed long before is refused, and
    the error names the key, what it signed and what to do (retire instead)."""
    lineage = _checkpointed(org_a.envelope_key, at=NOW)
    revoked = _revoked(_retired(org_a.bundle, org_a.envelope_key), org_a.envelope_key)
    with pytest.raises(RevokedKeyError) as refused:
        verify_lineage(lineage, object_id=OBJECT_A, trust=TrustStore.of([revoked]), sealed=True)
    error = refused.value
    assert org_a.envelope_key.key_id[:16] in error.reason and "checkpoint 0" in error.reason
    assert error.hint is not None and "gateway keys retire" in error.hint


def test_retired_key_envelopes_are_judged_when_verified(org_a: Domain) -> None:
    """Without a signed time (a transfer, a receipt) retirement is judged at the time of
    verification: before it the key opens envelopes, from it on it does not."""
    envelope = dsse.seal(b"transfer", dsse.PayloadType.TRANSFER, [org_a.envelope_key])
    trust = TrustStore.of([_retired(org_a.bundle, org_a.envelope_key)])

    def open_at(at: datetime) -> dsse.Verified:
        keys = trust.keys_for_host(HOST_A, purpose=Purpose.ENVELOPE, at=at)
        return dsse.open_envelope(envelope, payload_type=dsse.PayloadType.TRANSFER, keys=keys)

    assert open_at(RETIRED_AT - timedelta(seconds=1)).key_ids == {org_a.envelope_key.key_id}
    with pytest.raises(RetiredKeyError):
        open_at(RETIRED_AT)
    # Nor is it offered for signatures without a key id.
    keys = trust.keys_for_host(HOST_A, purpose=Purpose.ENVELOPE, at=RETIRED_AT)
    assert keys.all() == []


def _grant_bundle(org_a: Domain) -> tuple[Signer, TrustBundle]:
    granter = Signer.generate()
    record = granter.record(
        purposes=[Purpose.GRANT], hosts=[HOST_A], valid_from=NOW, valid_until=NOW + timedelta(30)
    )
    return granter, org_a.bundle.with_key(record, issued_at=NOW)


def _grant(signer: Signer, *, at: datetime) -> str:
    return issue_grant(
        signer=signer,
        issuer=HOST_A,
        subject=OBJECT_A,
        audience=HOST_A,
        capabilities=CapabilitySet(),
        constraints=Constraints(),
        not_before=at,
        expires_at=at + timedelta(days=1),
        at=at,
    ).compact


def test_retired_key_grants_verify_by_their_iat(org_a: Domain) -> None:
    """A grant issued (iat) before its key's retirement verifies after it; one issued at or
    after it is refused. A revoked key's grants never verify; the error names the grant
    and the object it is for."""
    granter, bundle = _grant_bundle(org_a)
    retired = TrustStore.of([_retired(bundle, granter)])
    verify_at = RETIRED_AT + timedelta(hours=2)
    old = _grant(granter, at=RETIRED_AT - timedelta(seconds=1))
    assert verify_grant(old, trust=retired, at=verify_at).key_id == granter.key_id
    new = _grant(granter, at=RETIRED_AT)
    with pytest.raises(RetiredKeyError, match=re.escape(OBJECT_A)):
        verify_grant(new, trust=retired, at=verify_at)
    revoked = TrustStore.of([_revoked(bundle, granter)])
    with pytest.raises(RevokedKeyError, match=re.escape(OBJECT_A)):
        verify_grant(old, trust=revoked, at=verify_at)


def test_retired_keys_do_not_count_towards_thresholds(org_a: Domain) -> None:
    """A retired key signs nothing new, so a threshold it would be needed for is unmeetable."""
    second = Signer.generate()
    bundle = replace(
        org_a.bundle.with_key(_record(second, Purpose.ENVELOPE), issued_at=NOW),
        envelope_threshold=2,
    )
    with pytest.raises(TrustError, match="unretired, unrevoked envelope"):
        _retired(bundle, second)


def test_retirement_travels_in_the_bundle_bytes(org_a: Domain) -> None:
    """The retirement time is part of the signed, canonical bundle; a bundle without
    retirements has the same bytes (and fingerprint) as before the field existed."""
    assert b"retired_at" not in encode_bundle(org_a.bundle)
    retired = _retired(org_a.bundle, org_a.envelope_key)
    raw = encode_bundle(retired)
    assert b'"retired_at":"' in raw
    decoded = decode_bundle(raw)
    record = decoded.key(org_a.envelope_key.key_id)
    assert record is not None and record.retired_at == RETIRED_AT
    assert decoded == retired
    accepted = accept_bundle(org_a.bundle, org_a.signed(retired), at=RETIRED_AT)
    assert accepted.key(org_a.envelope_key.key_id) == record


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "null is a second spelling of 'not retired'"),
        (5, "not a time string"),
        ("2030-01-02T03:34:05Z", "not the canonical time form"),
        ("yesterday", "not a time"),
    ],
)
def test_malformed_retirement_is_refused(org_a: Domain, value: object, reason: str) -> None:
    document = _document(_retired(org_a.bundle, org_a.envelope_key))
    index = next(
        i for i, k in enumerate(document["keys"]) if k["key_id"] == org_a.envelope_key.key_id
    )
    document["keys"][index]["retired_at"] = value
    raw = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(TrustError):
        decode_bundle(raw)


def _update(org_a: Domain, current: TrustBundle, record: KeyRecord | None) -> bytes:
    """The next bundle after ``current`` with the envelope key's record replaced (or dropped)."""
    keys = [k for k in current.keys if k.key_id != org_a.envelope_key.key_id]
    if record is not None:
        keys.append(record)
    following = replace(current, keys=tuple(keys), sequence=current.sequence + 1, issued_at=LATER)
    return org_a.signed(following)


def test_a_newer_bundle_cannot_take_back_a_revocation(org_a: Domain) -> None:
    """Once revoked, a key stays revoked in every later bundle: un-revoking it, or dropping
    it (which would let a later bundle list it afresh), is a rollback."""
    current = _revoked(org_a.bundle, org_a.envelope_key)
    record = current.key(org_a.envelope_key.key_id)
    assert record is not None
    with pytest.raises(RollbackError, match="no longer revoked"):
        accept_bundle(current, _update(org_a, current, replace(record, revoked=False)), at=LATER)
    with pytest.raises(RollbackError, match="no longer listed"):
        accept_bundle(current, _update(org_a, current, None), at=LATER)
    # Still revoked: accepted.
    assert accept_bundle(current, _update(org_a, current, record), at=LATER).sequence == 3


def test_a_newer_bundle_cannot_take_back_a_retirement(org_a: Domain) -> None:
    """A retired key stays retired, no later than before; retiring it earlier or revoking
    it is a tightening and accepted."""
    current = _retired(org_a.bundle, org_a.envelope_key)
    record = current.key(org_a.envelope_key.key_id)
    assert record is not None

    def offer(changed: KeyRecord | None) -> TrustBundle:
        return accept_bundle(current, _update(org_a, current, changed), at=LATER)

    with pytest.raises(RollbackError, match="un-retires"):
        offer(replace(record, retired_at=None))
    with pytest.raises(RollbackError, match="moves that to"):
        offer(replace(record, retired_at=RETIRED_AT + timedelta(seconds=1)))
    with pytest.raises(RollbackError, match="no longer listed"):
        offer(None)
    earlier = offer(replace(record, retired_at=RETIRED_AT - timedelta(minutes=1)))
    assert earlier.key(record.key_id) == replace(
        record, retired_at=RETIRED_AT - timedelta(minutes=1)
    )
    revoked = offer(replace(record, revoked=True))
    assert revoked.key(record.key_id) == replace(record, revoked=True)


# --- retiring and revoking in a keyring -------------------------------------------------------


@pytest.fixture
def fresh_keyring(tmp_path: Path) -> Keyring:
    return init_keys(
        tmp_path / "org-a", trust_domain="org-a.example", host=HOST_A, ca_certificate=CA_A, at=NOW
    )


def _signing_key(keyring: Keyring) -> str:
    return keyring.signer_for(Purpose.ENVELOPE, host=HOST_A, at=NOW).key_id


def test_keyring_never_signs_with_a_retired_key(fresh_keyring: Keyring) -> None:
    """After retire + add, the new key signs; the retired one is never chosen again, not
    even before its retirement time or when it is the newest key."""
    directory = fresh_keyring.directory
    old = _signing_key(fresh_keyring)
    _, new = add_key(directory, host=HOST_A, at=NOW)
    keyring, record = retire_key(directory, old[:12], at=LATER)
    assert record.retired_at == LATER and keyring.bundle.sequence == 3
    assert _signing_key(keyring) == new.key_id
    for moment in (NOW, LATER, LATER + timedelta(days=1)):
        assert keyring.signer_for(Purpose.GRANT, host=HOST_A, at=moment).key_id == new.key_id
    # A retirement time still ahead counts the same: with the new key revoked, the old
    # key (retired only next year) is still not chosen; the host is told to add one.
    ahead = keyring.bundle.with_key(
        replace(record, retired_at=LATER + timedelta(days=365)), issued_at=LATER
    )
    new_record = ahead.key(new.key_id)
    assert new_record is not None
    ahead = ahead.with_key(replace(new_record, revoked=True), issued_at=LATER)
    pending = Keyring(directory=directory, bundle=ahead, signers=keyring.signers)
    with pytest.raises(ConfigError, match="gateway keys add"):
        pending.signer_for(Purpose.ENVELOPE, host=HOST_A, at=LATER)
    # Retiring again keeps the first retirement; revoking afterwards escalates.
    again, same = retire_key(directory, old, at=LATER + timedelta(hours=1))
    assert same.retired_at == LATER and again.bundle.sequence == 3
    escalated = revoke_key(directory, old, at=LATER + timedelta(hours=1)).bundle.key(old)
    assert escalated is not None and escalated.revoked and escalated.retired_at == LATER
    assert retire_key(directory, old, at=LATER)[0].bundle.sequence == 4


def test_host_whose_only_key_is_retired_is_told_to_add_one(fresh_keyring: Keyring) -> None:
    """No crash and no silent fallback: the error says which key is out and what to run."""
    old = _signing_key(fresh_keyring)
    keyring, _ = retire_key(fresh_keyring.directory, old, at=LATER)
    with pytest.raises(ConfigError) as refused:
        keyring.signer_for(Purpose.ENVELOPE, host=HOST_A, at=LATER)
    assert f"{old[:16]} retired at" in refused.value.reason
    assert refused.value.hint is not None and "gateway keys add --host" in refused.value.hint
    revoked = revoke_key(fresh_keyring.directory, old, at=LATER)
    with pytest.raises(ConfigError, match=f"{old[:16]} revoked"):
        revoked.signer_for(Purpose.ENVELOPE, host=HOST_A, at=LATER)


def test_the_last_bundle_key_cannot_be_retired_or_revoked(fresh_keyring: Keyring) -> None:
    """Without a bundle key the domain could never sign another bundle, not even the one
    announcing the change: refused, and the bundle file is left as it was."""
    bundle_key = next(k for k in fresh_keyring.bundle.keys if Purpose.BUNDLE in k.purposes)
    for change in (retire_key, revoke_key):
        with pytest.raises(ConfigError, match="last bundle key"):
            change(fresh_keyring.directory, bundle_key.key_id, at=LATER)
    assert load_keyring(fresh_keyring.directory).bundle == fresh_keyring.bundle


def test_retirement_reaches_peers_through_export_and_import(fresh_keyring: Keyring) -> None:
    """`gateway trust export` after `gateway keys retire` carries the retirement; a peer
    importing it refuses new signatures by the key and keeps its old ones."""
    directory = fresh_keyring.directory
    old_signer = fresh_keyring.signer_for(Purpose.ENVELOPE, host=HOST_A, at=NOW)
    first = accept_bundle(None, fresh_keyring.export(NOW), at=NOW)
    add_key(directory, host=HOST_A, at=NOW)
    keyring, _ = retire_key(directory, old_signer.key_id, at=RETIRED_AT)
    imported = accept_bundle(first, keyring.export(RETIRED_AT), at=RETIRED_AT)
    record = imported.key(old_signer.key_id)
    assert record is not None and record.retired_at == RETIRED_AT
    trust = TrustStore.of([imported])
    before = _checkpointed(old_signer, at=NOW)
    assert verify_lineage(before, object_id=OBJECT_A, trust=trust, sealed=True).hosts == (HOST_A,)
    with pytest.raises(RetiredKeyError):
        verify_lineage(
            _checkpointed(old_signer, at=RETIRED_AT), object_id=OBJECT_A, trust=trust, sealed=True
        )


def test_key_use_finds_checkpoints_and_grants_a_key_signed(org_a: Domain) -> None:
    """What `gateway keys revoke` lists: each checkpoint and grant of an object that the
    key signed, by key id or (no key id) by signature; nothing another key signed."""
    granter, _ = _grant_bundle(org_a)
    other = Signer.generate()
    obj = new_object(
        OBJECT_A,
        tenant="default",
        data=b"{}",
        content_type="application/json",
        host=HOST_A,
        at=NOW,
        grants=(_grant(granter, at=NOW),),
    )
    sealed = obj.lineage.sealed(
        object_id=OBJECT_A,
        host=HOST_A,
        epoch=0,
        at=NOW,
        signer=org_a.envelope_key,
        to="spiffe://org-b.example/cluster/west/gateway",
        migration="mig-1",
    )
    anonymous = replace(
        sealed.checkpoints[0],
        signatures=tuple(replace(s, keyid="") for s in sealed.checkpoints[0].signatures),
    )
    carried = replace(obj, lineage=replace(sealed, checkpoints=(*sealed.checkpoints, anonymous)))
    by_envelope_key = signed_by(carried, _record(org_a.envelope_key, Purpose.ENVELOPE))
    assert by_envelope_key == (
        f"lineage checkpoint 0 by {HOST_A}",
        f"lineage checkpoint 1 by {HOST_A}",
    )
    assert signed_by(carried, _record(granter, Purpose.GRANT))[0].startswith("grant 0 (")
    assert signed_by(carried, _record(other, Purpose.ENVELOPE)) == ()
