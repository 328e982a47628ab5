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
from gateway.devcerts import make_ca
from gateway.errors import (
    BadSignatureError,
    ConfigError,
    ExpiredError,
    GatewayError,
    PayloadTypeError,
    RevokedKeyError,
    RollbackError,
    TrustError,
    UntrustedKeyError,
    VerificationError,
)
from gateway.keyring import Keyring, init_keys
from gateway.keys import Algorithm, KeyRecord, Purpose, Signer
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
