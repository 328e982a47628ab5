"""The memories of checked grant parts in gateway.credentials (CHECKED_HEADERS,
PARSED_AUTHORITY): a grant not seen before whose header and ``cap``/``cons`` claims are
the exact text of ones that passed is not made to pass those checks again, but its own
payload is read and its signature verified every time; a part that differs in any way
is checked afresh; refusals are never remembered; both memories are bounded.

Everything runs at a fixed time :data:`T0` far from the wall clock.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest

from gateway import credentials
from gateway.authority import Capability, CapabilitySet, Constraints
from gateway.credentials import (
    CHECKED_HEADERS,
    GRANT_TYPE,
    PARSED_AUTHORITY,
    forget_verified_grants,
    issue_grant,
    verify_grant,
)
from gateway.errors import (
    BadSignatureError,
    GrantAlgorithmError,
    GrantFormatError,
    GrantHeaderError,
    UntrustedKeyError,
)
from gateway.keys import Purpose, Signer
from gateway.trust import TrustStore, new_bundle

T0 = datetime(2031, 3, 1, 12, 0, tzinfo=UTC)
SINCE = T0 - timedelta(days=30)
OBJECT = "obj://org-a.example/billing/invoice-42"
HOST_A = "spiffe://org-a.example/cluster/east/gateway"
HOST_B = "spiffe://org-b.example/cluster/west/gateway"
#: PyJWT's algorithms, to sign the grants made here (the module's own may be counted).
SIGNING = jwt.PyJWS()


@pytest.fixture(autouse=True)
def empty_memory() -> Iterator[None]:
    forget_verified_grants()
    yield
    forget_verified_grants()


def _realm() -> tuple[Signer, TrustStore]:
    signer = Signer.generate()
    bundle = new_bundle(
        "org-a.example",
        [signer.record(purposes=[Purpose.GRANT], hosts=[HOST_A], valid_from=SINCE)],
        issued_at=SINCE,
    )
    return signer, TrustStore.of([bundle])


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _claims(**changes: Any) -> dict[str, Any]:
    seconds = int(T0.timestamp())
    claims: dict[str, Any] = {
        "iss": HOST_A,
        "sub": OBJECT,
        "aud": HOST_B,
        "iat": seconds - 300,
        "nbf": seconds - 3600,
        "exp": seconds + 86_400,
        "jti": uuid.uuid4().hex,
        "cap": [{"res": "state:self", "act": ["read"]}],
        "cons": {"max_hops": 3},
    }
    claims.update(changes)
    return claims


def _signed(signer: Signer, claims: dict[str, Any], header: dict[str, Any] | None = None) -> str:
    """A grant with exactly this header and these claims, signed by ``signer``."""
    header = header if header is not None else _header(signer)
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    algorithm = SIGNING.get_algorithm_by_name(signer.algorithm.jose)
    signature = algorithm.sign(signing_input.encode("ascii"), signer.private_key_object())
    return f"{signing_input}.{_b64(signature)}"


def _header(signer: Signer, **changes: Any) -> dict[str, Any]:
    return {"alg": signer.algorithm.jose, "typ": GRANT_TYPE, "kid": signer.key_id, **changes}


@dataclass
class _Counts:
    signatures: int = 0
    capability_parses: int = 0


@pytest.fixture
def counts(monkeypatch: pytest.MonkeyPatch) -> _Counts:
    """Counts the signature checks asked of PyJWT's algorithms and the ``cap`` claims
    parsed."""
    counted = _Counts()
    real_jws, real_parse = credentials._JWS, CapabilitySet.from_claim

    class Algorithm:
        def __init__(self, real: Any) -> None:
            self.real = real

        def prepare_key(self, key: Any) -> Any:
            return self.real.prepare_key(key)

        def verify(self, message: bytes, key: Any, signature: bytes) -> bool:
            counted.signatures += 1
            return bool(self.real.verify(message, key, signature))

    class JWS:
        def get_algorithm_by_name(self, name: str) -> Any:
            return Algorithm(real_jws.get_algorithm_by_name(name))

    def from_claim(claim: object) -> CapabilitySet:
        counted.capability_parses += 1
        return real_parse(claim)

    monkeypatch.setattr(credentials, "_JWS", JWS())
    monkeypatch.setattr(CapabilitySet, "from_claim", staticmethod(from_claim))
    return counted


def test_a_new_grant_with_remembered_parts_is_still_signature_checked(counts: _Counts) -> None:
    signer, trust = _realm()
    first, second = _signed(signer, _claims()), _signed(signer, _claims())
    assert first.split(".")[0] == second.split(".")[0]  # the same header segment
    one = verify_grant(first, trust=trust, at=T0)
    two = verify_grant(second, trust=trust, at=T0)
    assert counts.signatures == 2  # every new grant's signature is checked
    assert counts.capability_parses == 1  # its cap claim, the same text, was not parsed again
    assert (one.grant_id, two.grant_id) != (two.grant_id, one.grant_id)
    assert two.capabilities == one.capabilities
    assert two.capabilities.permits("state:self", "read")
    assert two.constraints == Constraints(max_hops=3)
    assert len(CHECKED_HEADERS) == 1 and len(PARSED_AUTHORITY) == 1


def test_a_forged_grant_is_refused_after_its_parts_were_remembered(counts: _Counts) -> None:
    signer, trust = _realm()
    honest = _signed(signer, _claims())
    verify_grant(honest, trust=trust, at=T0)
    # Its header and cap/cons text remembered: a grant made of them whose signature is
    # not over its own bytes (another payload under the honest signature; a signature
    # by a key the issuer's domain does not hold) is refused all the same.
    header, _payload, signature = honest.split(".")
    other_payload = _signed(signer, _claims(sub="obj://org-a.example/billing/other")).split(".")[1]
    with pytest.raises(BadSignatureError):
        verify_grant(f"{header}.{other_payload}.{signature}", trust=trust, at=T0)
    stranger = Signer.generate()
    impostor = _signed(stranger, _claims()).split(".")
    with pytest.raises(BadSignatureError):
        verify_grant(f"{header}.{impostor[1]}.{impostor[2]}", trust=trust, at=T0)
    assert counts.signatures == 3


def test_a_header_that_differs_is_checked_afresh() -> None:
    signer, trust = _realm()
    verify_grant(_signed(signer, _claims()), trust=trust, at=T0)
    with pytest.raises(GrantHeaderError, match="critical"):
        verify_grant(_signed(signer, _claims(), _header(signer, crit=["exp"])), trust=trust, at=T0)
    with pytest.raises(GrantHeaderError, match="only alg, typ and kid"):
        verify_grant(
            _signed(signer, _claims(), _header(signer, jwk={"kty": "OKP"})), trust=trust, at=T0
        )
    with pytest.raises(GrantAlgorithmError):
        verify_grant(_signed(signer, _claims(), _header(signer, alg="ES256")), trust=trust, at=T0)
    with pytest.raises(UntrustedKeyError):
        verify_grant(_signed(signer, _claims(), _header(signer, kid="f" * 64)), trust=trust, at=T0)
    # The remembered header's segment in a second spelling (its last character's unused
    # bits set) is not the remembered text: refused as not canonical, as always.
    honest = _signed(signer, _claims())
    header = honest.split(".")[0]
    assert len(header) % 4 in (2, 3)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    respelled = header[:-1] + alphabet[alphabet.index(header[-1]) + 1]
    with pytest.raises(GrantFormatError, match="canonical"):
        verify_grant(respelled + honest[len(header) :], trust=trust, at=T0)


@pytest.mark.parametrize(
    ("changes", "refused"),
    [
        ({"cons": {"max_hops": True}}, "max_hops"),  # true is not 1, though True == 1
        ({"cons": {"max_hops": "1"}}, "max_hops"),
        ({"cap": [{"res": "state:self", "act": ["read"], "why": "x"}]}, "cap"),
        ({"cap": [{"res": "state:self", "act": ["read", "read"]}]}, "cap"),
        ({"cons": ["max_hops", 1]}, "cons"),
    ],
)
def test_authority_claims_that_differ_are_parsed_afresh(
    changes: dict[str, Any], refused: str
) -> None:
    signer, trust = _realm()
    verify_grant(_signed(signer, _claims(cons={"max_hops": 1})), trust=trust, at=T0)
    with pytest.raises(GrantFormatError, match=refused):
        verify_grant(_signed(signer, _claims(**changes)), trust=trust, at=T0)


def test_a_narrower_cap_with_remembered_neighbours_parses_to_itself() -> None:
    signer, trust = _realm()
    wide = _claims(cap=[{"res": "state:self", "act": ["read", "write"]}])
    verify_grant(_signed(signer, wide), trust=trust, at=T0)
    narrow = verify_grant(_signed(signer, _claims()), trust=trust, at=T0)
    assert narrow.capabilities.permits("state:self", "read")
    assert not narrow.capabilities.permits("state:self", "write")


def test_refused_parts_are_not_remembered() -> None:
    signer, trust = _realm()
    refused_header = _signed(signer, _claims(), _header(signer, typ="JWT"))
    for _ in range(2):
        with pytest.raises(GrantHeaderError):
            verify_grant(refused_header, trust=trust, at=T0)
    assert refused_header.split(".")[0] not in CHECKED_HEADERS
    for _ in range(2):
        with pytest.raises(GrantFormatError):
            verify_grant(
                _signed(signer, _claims(cap=[{"res": "state:self", "act": ["fly"]}])),
                trust=trust,
                at=T0,
            )
    assert len(PARSED_AUTHORITY) == 0


def test_the_memories_are_bounded() -> None:
    signer, trust = _realm()
    # Headers naming keys nobody holds pass the header checks (and are remembered) before
    # the key lookup refuses them: a peer sending fresh ones only evicts.
    for index in range(300):
        with pytest.raises(UntrustedKeyError):
            verify_grant(
                _signed(signer, _claims(), _header(signer, kid=f"{index:064x}")),
                trust=trust,
                at=T0,
            )
    assert 0 < len(CHECKED_HEADERS) <= 256
    for index in range(1100):
        cap = [{"res": f"state:self/{index}", "act": ["read"]}]
        claims = _claims(cap=cap)
        credentials._authority_claims(claims)
    assert 0 < len(PARSED_AUTHORITY) <= 1024


def test_issued_grants_read_the_same_with_and_without_the_memories() -> None:
    signer, trust = _realm()
    grant = issue_grant(
        signer=signer,
        issuer=HOST_A,
        subject=OBJECT,
        audience=[HOST_B, "spiffe://org-c.example"],
        capabilities=CapabilitySet(capabilities=(Capability.of("state:self", "read", "write"),)),
        constraints=Constraints(max_hops=2),
        not_before=T0 - timedelta(hours=1),
        expires_at=T0 + timedelta(days=1),
        at=T0 - timedelta(minutes=5),
    )
    remembered = verify_grant(grant.compact, trust=trust, at=T0)
    forget_verified_grants()
    cold = verify_grant(grant.compact, trust=trust, at=T0)
    assert remembered == cold == grant
