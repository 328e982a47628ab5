"""Session 43, P2's destination: a received envelope built slot by slot and checked by its
own ``__post_init__`` (gateway.envelope.received), and a stored object's tail written
without hashing its state or its authority (gateway.wire._tail).

Each shortcut is held to the plain path it replaced (kept here as the reference) over
seeded cases, malformed bytes among them: the same values, the same bytes, the same
error types and words.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from gateway import envelope as dsse
from gateway import wire
from gateway.authority import (
    Capability,
    CapabilitySet,
    Constraints,
    EffectiveAuthority,
    HostPolicy,
    ResourcePattern,
)
from gateway.errors import (
    EnvelopeError,
    EnvelopeTooLargeError,
    PeerMismatchError,
    UntrustedKeyError,
)
from gateway.handoff.context import ADMISSIONS_REMEMBERED, HostContext
from gateway.model import GovernedObject, LifecycleState
from gateway.testing import HostSpec, build_world
from gateway.transport import tls
from gateway.v1 import envelope_pb2, object_pb2
from tests.conftest import HOST_A, HOST_B
from tests.test_compaction import created
from tests.test_lineage import T0
from tests.test_record_encoding import _transfer
from tests.test_x509_chains import _ca, _host

# --- envelopes ---------------------------------------------------------------------


def decode_envelope_plain(raw: bytes, *, max_size: int = wire.MAX_ENVELOPE_BYTES) -> dsse.Envelope:
    """gateway.wire.decode_envelope as it was before session 43: the frozen constructors."""
    if len(raw) > max_size:
        raise EnvelopeTooLargeError(f"envelope is {len(raw)} bytes; at most {max_size} accepted")
    try:
        wire._wire_counts.check_counts(raw, wire._ENVELOPE_SHAPE, "envelope")
        message = wire._parse(envelope_pb2.Envelope(), raw, "envelope", canonical=True)
    except wire.PayloadDecodeError as exc:
        raise EnvelopeError(exc.reason, hint=exc.hint) from exc
    if len(message.signatures) > dsse.MAX_SIGNATURES:
        raise EnvelopeTooLargeError(
            f"envelope has {len(message.signatures)} signatures; at most {dsse.MAX_SIGNATURES}"
        )
    return dsse.Envelope(
        payload=message.payload,
        payload_type=message.payload_type,
        signatures=tuple(dsse.Signature(keyid=s.keyid, sig=s.sig) for s in message.signatures),
    )


def _text(rng: random.Random, sizes: list[int]) -> str:
    size = rng.choice(sizes)
    if rng.random() < 0.15:  # beyond ASCII: isascii() is False, the UTF-8 check runs
        return "".join(rng.choice("aé€😀") for _ in range(size))
    return "".join(rng.choice("abcdef0123456789") for _ in range(size))


def _random_envelope_bytes(rng: random.Random) -> bytes:
    """A serialized envelope of any shape a peer could send: empty or oversized types,
    no signatures or too many, repeated key ids, oversized key ids and signatures,
    empty key ids; then, for some, bytes cut, flipped or appended."""
    message = envelope_pb2.Envelope(
        payload=rng.randbytes(rng.choice([0, 1, 40, 300, 2000])),
        payload_type=_text(
            rng, [0, 1, 20, 47, 47, 47, dsse.MAX_PAYLOAD_TYPE, dsse.MAX_PAYLOAD_TYPE + 1]
        ),
    )
    keyids = [_text(rng, [0, 16, 64, 64, 64, dsse.MAX_KEYID, dsse.MAX_KEYID + 1]) for _ in range(3)]
    for _ in range(rng.choice([0, 1, 1, 1, 2, 3, dsse.MAX_SIGNATURES, dsse.MAX_SIGNATURES + 1])):
        message.signatures.add(
            keyid=rng.choice(keyids),
            sig=rng.randbytes(rng.choice([0, 64, 64, 64, dsse.MAX_SIGNATURE_BYTES, 513])),
        )
    raw = message.SerializeToString(deterministic=True)
    mutation = rng.random()
    if raw and mutation < 0.15:
        return raw[: rng.randrange(len(raw))]
    if raw and mutation < 0.3:
        at = rng.randrange(len(raw))
        return raw[:at] + bytes([raw[at] ^ (1 << rng.randrange(8))]) + raw[at + 1 :]
    if mutation < 0.4:
        return raw + rng.randbytes(rng.randrange(1, 8))
    if mutation < 0.45:
        return rng.randbytes(rng.randrange(0, 64))
    return raw


def _outcome(decode: Callable[..., dsse.Envelope], raw: bytes, **options: int) -> object:
    try:
        envelope = decode(raw, **options)
    except Exception as exc:  # compared by type and words
        return (type(exc), str(exc), getattr(exc, "hint", None))
    assert type(envelope) is dsse.Envelope
    assert all(type(s) is dsse.Signature for s in envelope.signatures)
    assert type(envelope.signatures) is tuple
    return envelope


def test_received_envelopes_decode_as_the_frozen_constructors_made_them() -> None:
    rng = random.Random(4301)
    kinds: dict[object, int] = {}
    for _ in range(4000):
        raw = _random_envelope_bytes(rng)
        options = {"max_size": 100 if rng.random() < 0.1 else wire.MAX_ENVELOPE_BYTES}
        expected = _outcome(decode_envelope_plain, raw, **options)
        assert _outcome(wire.decode_envelope, raw, **options) == expected, raw
        kind = expected[0] if isinstance(expected, tuple) else type(expected)
        kinds[kind] = kinds.get(kind, 0) + 1
    # The cases reach every outcome: accepted, malformed, too large.
    assert kinds.keys() >= {dsse.Envelope, EnvelopeError, EnvelopeTooLargeError}, kinds
    assert kinds[dsse.Envelope] > 500, kinds


def test_a_received_envelope_is_an_ordinary_frozen_value() -> None:
    raw = envelope_pb2.Envelope(
        payload=b"p", payload_type="t", signatures=[envelope_pb2.Signature(keyid="k", sig=b"s")]
    ).SerializeToString()
    envelope = wire.decode_envelope(raw)
    assert envelope == dsse.Envelope(
        payload=b"p", payload_type="t", signatures=(dsse.Signature(keyid="k", sig=b"s"),)
    )
    assert hash(envelope) == hash(decode_envelope_plain(raw))
    with pytest.raises(AttributeError):
        envelope.payload = b"q"  # type: ignore[misc]


# --- a stored object's tail --------------------------------------------------------


def tail_plain(obj: GovernedObject) -> bytes:
    """gateway.wire._tail as it was before session 43: the state and the authority hashed."""
    tail = object_pb2.StoredObject(
        epoch=obj.epoch,
        state=wire._STATE_TO_PB[obj.state],
        migration_id=obj.migration_id,
        moved_to=obj.moved_to,
        receipt=wire.encode_envelope(obj.receipt) if obj.receipt else b"",
        last_transfer_digest=obj.last_transfer_digest,
        authority=wire.encode_authority(obj.authority),
    )
    blob = wire._blob_to_pb(obj.blob)
    if blob is not None:
        tail.blob.CopyFrom(blob)
    if obj.authority_expires:
        tail.authority_expires.CopyFrom(wire._ts(obj.authority_expires))
    return bytes(tail.SerializeToString(deterministic=True))


_RESOURCES = ["pubsub:alerts/*", "pubsub:*", "state:self", "invoke:billing", "invoke:*"]
_ACTIONS = {"pubsub": ["publish"], "state": ["read", "write"], "invoke": ["invoke"]}


def _capability(rng: random.Random, resource: str) -> Capability:
    actions = _ACTIONS[resource.split(":")[0]]
    chosen = rng.sample(actions, rng.randrange(1, len(actions) + 1))
    return Capability(resource=ResourcePattern.parse(resource), actions=frozenset(chosen))


def _capabilities(rng: random.Random) -> CapabilitySet:
    resources = rng.sample(_RESOURCES, rng.randrange(0, 3))
    return CapabilitySet(capabilities=tuple(_capability(rng, r) for r in resources))


def _authority(rng: random.Random) -> EffectiveAuthority:
    return EffectiveAuthority(allow=_capabilities(rng), deny=_capabilities(rng))


def test_tails_are_the_bytes_of_the_plain_path() -> None:
    rng = random.Random(4302)
    base = created()
    # A few values shared by many objects (as admissions are), some fresh each time,
    # some equal to a shared one but not it.
    shared = [_authority(rng) for _ in range(6)]
    for _ in range(3000):
        pick = rng.random()
        if pick < 0.5:
            authority = rng.choice(shared)
        elif pick < 0.75:
            authority = _authority(rng)
        else:
            template = rng.choice(shared)
            authority = EffectiveAuthority(allow=template.allow, deny=template.deny)
        obj = replace(
            base,
            state=rng.choice(list(LifecycleState)),
            epoch=rng.randrange(0, 1 << 40),
            migration_id=rng.choice(["", "mig-1", "mig-" + "x" * 40]),
            authority=authority,
        )
        assert wire._tail(obj) == tail_plain(obj)
        assert len(wire._AUTHORITY_WIRE) <= wire.AUTHORITY_WIRE_REMEMBERED


def test_a_remembered_authority_is_its_own_value_not_an_id_reused() -> None:
    rng = random.Random(4303)
    for _ in range(2000):
        authority = _authority(rng)
        assert wire._authority_wire(authority) == wire.encode_authority(authority)
        del authority  # its id may be reused by the next value: the held copy keeps it
    for key, (held, encoded) in list(wire._AUTHORITY_WIRE._values._entries.items()):
        assert key == id(held)
        assert encoded == wire.encode_authority(held)


def test_every_state_has_its_wire_value() -> None:
    assert {s: wire._STATE_TO_PB_BY_ID[id(s)] for s in LifecycleState} == wire._STATE_TO_PB


# --- a transfer's grants ---------------------------------------------------------------


def test_a_decoded_transfer_carries_its_grants_as_sent() -> None:
    """ParsedTransfer.decoded reads the grants by a slice (a list, as ``list()`` made it)."""
    rng = random.Random(4304)
    sent = _transfer()
    for _ in range(200):
        grants = tuple(
            ".".join(_text(rng, [1, 8, 40]) for _ in range(3)) for _ in range(rng.randrange(0, 6))
        )
        transfer = replace(sent, object=replace(sent.object, grants=grants))
        decoded = wire.ParsedTransfer(wire.encode_transfer(transfer)).decoded()
        assert decoded.object.grants == grants
        assert type(decoded.object.grants) is type(
            wire.decode_object(wire.encode_object(transfer.object)).grants
        )


# --- admissions remembered by the capabilities' identity ---------------------------

_HOST = "spiffe://org-b.example/cluster/west/gateway"
_PEERS = ["spiffe://org-a.example/cluster/east/gateway", "spiffe://org-c.example/x/gateway"]
_POLICY = {
    "offers": [
        {"resource": "pubsub:*", "actions": ["publish"]},
        {"resource": "state:self", "actions": ["read", "write"]},
    ],
    "ceilings": [
        {"peer": "org-c.example", "allow": [{"resource": "state:self", "actions": ["read"]}]}
    ],
}


def _context() -> HostContext:
    # admit() reads the host, its region and its policy only.
    return HostContext(  # type: ignore[arg-type]
        host=_HOST,
        region="",
        tenants=frozenset({"default"}),
        journal=None,
        trust=None,
        signer=None,
        grant_signer=None,
        clock=None,
        timing=None,
        policy=HostPolicy.from_config(_POLICY, "policy"),
        lifecycle=None,
    )


def _chain(capabilities: CapabilitySet, audiences: tuple[str, ...]) -> Any:
    leaf = SimpleNamespace(audiences=audiences, audience=" ".join(audiences))
    return SimpleNamespace(constraints=Constraints(), capabilities=capabilities, leaf=leaf)


def test_admissions_are_those_of_a_context_that_remembers_nothing() -> None:
    rng = random.Random(4305)
    ctx, base = _context(), created()
    shared = [_capabilities(rng) for _ in range(5)]
    for _ in range(1500):
        pick = rng.random()
        if pick < 0.5:
            capabilities = rng.choice(shared)
        elif pick < 0.7:
            capabilities = _capabilities(rng)
        else:
            capabilities = CapabilitySet(capabilities=rng.choice(shared).capabilities)
        chain = (
            None
            if rng.random() < 0.1
            else _chain(capabilities, rng.choice([(_HOST,), ("spiffe://org-b.example",), ("x",)]))
        )
        obj = replace(base, tenant=rng.choice(["default", "billing"]))
        peer = rng.choice(_PEERS)
        expected = _context().admit(obj, peer=peer, hops=1, at=T0, chain=chain)
        assert ctx.admit(obj, peer=peer, hops=1, at=T0, chain=chain) == expected
        assert len(ctx._admitted) <= ADMISSIONS_REMEMBERED
    # The same capabilities value gets the very same admission (and so the same
    # authority value, which wire._tail remembers by identity).
    chain = _chain(shared[0], (_HOST,))
    first = ctx.admit(base, peer=_PEERS[0], hops=1, at=T0, chain=chain)
    assert ctx.admit(base, peer=_PEERS[0], hops=1, at=T0, chain=chain) is first


# --- peers remembered by their certificate, the chain compared ---------------------


def _authenticated_peer_plain(
    memo: dict[bytes, tuple[str, tuple[bytes, ...], str]],
    auth_context: dict[str, list[bytes]],
    authorities: dict[str, tuple[bytes, ...]],
) -> str:
    """gateway.transport.tls.authenticated_peer before session 43 (its memo passed in):
    keyed by the certificate joined to the chain."""
    certificates = auth_context.get("x509_pem_cert") or []
    if not certificates:
        raise PeerMismatchError(
            "the peer presented no client certificate", hint="connect with mTLS"
        )
    pem = bytes(certificates[0])
    key = pem + b"".join(auth_context.get("x509_pem_cert_chain") or [])
    known = memo.get(key)
    if known is not None and authorities.get(known[0]) == known[1]:
        return known[2]
    cert = tls.load_peer_certificate(pem)
    host = tls.certificate_spiffe_id(cert)
    domain_authorities = authorities.get(host.trust_domain)
    if not domain_authorities:
        raise UntrustedKeyError(
            f"peer {host} belongs to {host.trust_domain}, whose CA this host does not trust",
            hint=f"import {host.trust_domain}'s trust bundle with `gateway trust import`; a "
            "running `gateway serve` uses it within seconds (at once on SIGHUP), no restart",
        )
    presented = b"".join(auth_context.get("x509_pem_cert_chain") or [])
    intermediates = [c for c in tls._certificates(presented) if c != cert]
    accepted = str(
        tls.verify_certificate_for_domain(
            cert, host, domain_authorities, host.trust_domain, intermediates=intermediates
        )
    )
    memo[key] = (host.trust_domain, tuple(domain_authorities), accepted)
    return accepted


def test_peers_are_accepted_and_refused_as_the_plain_path_did(tmp_path: Path) -> None:
    world = build_world(tmp_path, [HostSpec(host_id=HOST_A), HostSpec(host_id=HOST_B)])
    tls_a, tls_b = (world.host_directory(h) / "tls" for h in (HOST_A, HOST_B))
    leaf_a, leaf_b = (d.read_bytes() for d in (tls_a / "host.crt", tls_b / "host.crt"))
    ca_a, ca_b = (d.read_bytes() for d in (tls_a / "ca.crt", tls_b / "ca.crt"))
    # A host certificate issued by an intermediate CA: accepted only with the chain
    # that presents the intermediate (tests/test_x509_chains.py).
    root = _ca("org-a root", issuer=None, domain="org-a.example", path_length=1)
    middle = _ca("org-a issuing CA", issuer=root, domain=None, path_length=0)
    leaf_i = _host(middle).pem
    leaves = [leaf_a, leaf_b, leaf_i, leaf_a[:-40], b"not a certificate"]
    chains = [[], [leaf_a], [leaf_a, ca_a], [ca_b], [leaf_b, ca_b], [b"x"]]
    chains += [[leaf_i + middle.pem], [leaf_i], [leaf_i, middle.pem]]
    trusts = [
        {"org-a.example": (ca_a,), "org-b.example": (ca_b,)},
        {"org-a.example": (root.pem,), "org-b.example": (ca_b,)},
        {"org-a.example": (ca_b,), "org-b.example": (ca_a,)},
        {"org-a.example": (ca_a,)},
        {},
    ]
    rng = random.Random(4306)
    plain: dict[bytes, tuple[str, tuple[bytes, ...], str]] = {}
    tls._ACCEPTED_PEERS.clear()
    seen: set[object] = set()
    for _ in range(600):
        auth: dict[str, list[bytes]] = {}
        if rng.random() < 0.95:
            auth["x509_pem_cert"] = [rng.choice(leaves[:3] if rng.random() < 0.8 else leaves)]
        if rng.random() < 0.7:
            auth["x509_pem_cert_chain"] = rng.choice(chains)
        trust = rng.choice(trusts[:2] if rng.random() < 0.6 else trusts)
        outcomes = []
        for check in (tls.authenticated_peer, functools.partial(_authenticated_peer_plain, plain)):
            try:
                outcomes.append(check(auth, trust))
            except Exception as exc:  # compared by type and words
                outcomes.append((type(exc), str(exc)))
        assert outcomes[0] == outcomes[1], (auth, trust)
        seen.add(outcomes[0] if isinstance(outcomes[0], str) else outcomes[0][0])
    assert {HOST_A, HOST_B, UntrustedKeyError, PeerMismatchError} <= seen, seen
