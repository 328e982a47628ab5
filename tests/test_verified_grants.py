"""The verified-grant memory of gateway.credentials (VERIFIED_GRANTS): a grant seen again
is not parsed or signature-checked again, but its key is looked up again in the caller's
trust store at the caller's time and its validity window is checked again, every time;
refusals are never remembered, and the memory is bounded.

Everything runs at a fixed time :data:`T0` far from the wall clock.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gateway import credentials
from gateway.authority import Capability, CapabilitySet, Constraints
from gateway.credentials import (
    VERIFIED_GRANTS,
    Grant,
    forget_verified_grants,
    issue_grant,
    verify_chain,
    verify_grant,
)
from gateway.errors import BadSignatureError, ExpiredError, RevokedKeyError
from gateway.keys import Purpose, Signer
from gateway.trust import TrustStore, new_bundle

T0 = datetime(2031, 3, 1, 12, 0, tzinfo=UTC)
SINCE = T0 - timedelta(days=30)
EXP = T0 + timedelta(days=1)
OBJECT = "obj://org-a.example/billing/invoice-42"
HOST_A = "spiffe://org-a.example/cluster/east/gateway"
HOST_B = "spiffe://org-b.example/cluster/west/gateway"


@pytest.fixture(autouse=True)
def empty_memory() -> Iterator[None]:
    forget_verified_grants()
    yield
    forget_verified_grants()


def _realm() -> tuple[Signer, TrustStore, Any]:
    """org-a's grant key, a trust store holding it, and org-a's bundle (with a second
    key, so that the bundle stays usable when the first is revoked)."""
    signer, spare = Signer.generate(), Signer.generate()
    bundle = new_bundle(
        "org-a.example",
        [
            signer.record(purposes=[Purpose.GRANT], hosts=[HOST_A], valid_from=SINCE),
            spare.record(purposes=[Purpose.GRANT], hosts=[HOST_A], valid_from=SINCE),
        ],
        issued_at=SINCE,
    )
    return signer, TrustStore.of([bundle]), bundle


def _root(signer: Signer) -> Grant:
    return issue_grant(
        signer=signer,
        issuer=HOST_A,
        subject=OBJECT,
        audience=HOST_B,
        capabilities=CapabilitySet(capabilities=(Capability.of("state:self", "read"),)),
        constraints=Constraints(max_hops=3),
        not_before=T0 - timedelta(hours=1),
        expires_at=EXP,
        at=T0 - timedelta(minutes=5),
    )


class _CountingJWS:
    """Counts the signature checks PyJWT's algorithms are asked for."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.calls = 0

    def get_algorithm_by_name(self, name: str) -> Any:
        return _CountingAlgorithm(self, self.real.get_algorithm_by_name(name))


class _CountingAlgorithm:
    def __init__(self, counter: _CountingJWS, real: Any) -> None:
        self.counter = counter
        self.real = real

    def prepare_key(self, key: Any) -> Any:
        return self.real.prepare_key(key)

    def verify(self, message: bytes, key: Any, signature: bytes) -> bool:
        self.counter.calls += 1
        return bool(self.real.verify(message, key, signature))


@pytest.fixture
def jws(monkeypatch: pytest.MonkeyPatch) -> _CountingJWS:
    counting = _CountingJWS(credentials._JWS)
    monkeypatch.setattr(credentials, "_JWS", counting)
    return counting


def test_a_grant_seen_again_is_not_verified_again(jws: _CountingJWS) -> None:
    signer, trust, _bundle = _realm()
    grant = _root(signer)
    first = verify_chain([grant.compact], object_id=OBJECT, trust=trust, at=T0)
    again = verify_chain([grant.compact], object_id=OBJECT, trust=trust, at=T0 + timedelta(hours=1))
    assert jws.calls == 1  # the second chain's grant came from the memory
    assert again.grants == first.grants
    assert again.grants[0].capabilities == grant.capabilities


def test_a_remembered_grant_whose_key_was_revoked_since_is_refused(jws: _CountingJWS) -> None:
    signer, trust, bundle = _realm()
    grant = _root(signer)
    verify_grant(grant.compact, trust=trust, at=T0)
    record = bundle.key(signer.key_id)
    assert record is not None
    revoked = bundle.with_key(replace(record, revoked=True), issued_at=T0)
    with pytest.raises(RevokedKeyError, match="revoked"):
        verify_grant(grant.compact, trust=TrustStore.of([revoked]), at=T0)
    # Refused by the key lookup (before any signature check), though remembered; the
    # trust store that still trusts the key is answered from the memory again.
    verify_grant(grant.compact, trust=trust, at=T0)
    assert jws.calls == 1


def test_a_remembered_grant_is_refused_once_it_expired(jws: _CountingJWS) -> None:
    signer, trust, _bundle = _realm()
    grant = _root(signer)
    verify_grant(grant.compact, trust=trust, at=T0)
    with pytest.raises(ExpiredError, match="expired"):
        verify_grant(grant.compact, trust=trust, at=EXP + timedelta(hours=2))
    with pytest.raises(ExpiredError, match="not valid until"):
        verify_grant(grant.compact, trust=trust, at=T0 - timedelta(days=1))


def test_refusals_are_not_remembered(jws: _CountingJWS) -> None:
    signer, trust, _bundle = _realm()
    grant = _root(signer)
    head, payload, signature = grant.compact.split(".")
    forged = f"{head}.{payload}.{signature[:-2]}{'AA' if signature[-2:] != 'AA' else 'AQ'}"
    for _ in range(2):
        with pytest.raises(BadSignatureError):
            verify_grant(forged, trust=trust, at=T0)
    assert len(VERIFIED_GRANTS) == 0
    assert jws.calls == 2


def test_the_memory_is_bounded() -> None:
    signer, trust, _bundle = _realm()
    memory = credentials._VerifiedGrants(capacity=2)
    record = trust.bundles["org-a.example"].key(signer.key_id)
    assert record is not None
    grants = [_root(signer) for _ in range(3)]
    for grant in grants:
        memory.add(grant.compact, grant, record)
    assert len(memory) == 2
    assert memory.get(grants[0].compact) is None  # the oldest went first
    assert memory.get(grants[2].compact) is not None
