"""Tests for gateway.identity: id parsing, peer certificate checks, and real mTLS.

The TLS tests start a grpc.aio server on 127.0.0.1 and connect real clients to it,
so what they show is what gRPC's TLS stack actually does with our certificates.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given
from hypothesis import strategies as st

from gateway.devcerts import CertifiedKey, make_ca, make_host_cert
from gateway.errors import (
    ConfigError,
    PeerMismatchError,
    TrustError,
    UntrustedKeyError,
    VerificationError,
)
from gateway.identity import (
    HostId,
    ObjectId,
    ca_trust_domain,
    spiffe_id_from_cert,
    verify_issued_by,
)

# --- parsing -----------------------------------------------------------------------


@dataclass(frozen=True)
class BadId:
    uri: str
    mentions: str  # a word the reason must contain, so it names what is wrong
    reason: str


BAD_HOST_IDS = [
    BadId("", "does not start", "empty string"),
    BadId("org-a.example/cluster/east", "does not start", "no scheme"),
    BadId("https://org-a.example/gw", "scheme", "wrong scheme"),
    BadId("SPIFFE://org-a.example/gw", "scheme", "scheme must be lowercase"),
    BadId("spiffe:/org-a.example/gw", "does not start", "one slash after the scheme"),
    BadId("spiffe://", "trust domain is missing", "nothing after the scheme"),
    BadId("spiffe:///gw", "trust domain is missing", "empty trust domain"),
    BadId("spiffe://Org-A.example/gw", "lowercase", "upper-case trust domain"),
    BadId("spiffe://org-a.example:8443/gw", "port", "port"),
    BadId("spiffe://gw@org-a.example/gw", "userinfo", "userinfo"),
    BadId("spiffe://org-a.example/gw?x=1", "query", "query"),
    BadId("spiffe://org-a.example/gw#x", "fragment", "fragment"),
    BadId("spiffe://org a.example/gw", "' '", "space in the trust domain"),
    BadId("spiffe://org+a.example/gw", "'+'", "'+' in the trust domain"),
    BadId("spiffe://org-a.example", "path is missing", "a trust domain id is not a host id"),
    BadId("spiffe://org-a.example/", "path is missing", "root path only"),
    BadId("spiffe://org-a.example/gw/", "ends with '/'", "trailing slash"),
    BadId("spiffe://org-a.example//gw", "empty segment", "empty segment"),
    BadId("spiffe://org-a.example/./gw", "dot segment", "'.' segment"),
    BadId("spiffe://org-a.example/gw/..", "dot segment", "'..' segment"),
    BadId("spiffe://org-a.example/gw%2Feast", "'%'", "percent-encoding"),
    BadId("spiffe://org-a.example/gw east", "' '", "space in the path"),
    BadId("spiffe://org-a.example/caf\u00e9", "'\u00e9'", "non-ASCII path"),
    BadId("spiffe://" + "a" * 256 + "/gw", "255", "trust domain longer than 255"),
    BadId("spiffe://org-a.example/" + "a" * 2048, "2048", "id longer than 2048 bytes"),
]


@pytest.mark.parametrize("case", BAD_HOST_IDS, ids=[c.reason for c in BAD_HOST_IDS])
def test_bad_host_id_is_refused_with_a_reason(case: BadId) -> None:
    with pytest.raises(ConfigError) as info:
        HostId.parse(case.uri)
    assert case.mentions in info.value.reason
    assert info.value.hint is not None
    assert "spiffe://org-a.example/cluster/east/gateway" in info.value.hint


BAD_OBJECT_IDS = [
    BadId("spiffe://org-a.example/billing/invoice-42", "scheme", "a host id is no object id"),
    BadId("obj://ORG-A.example/billing", "lowercase", "upper-case trust domain"),
    BadId("obj://org-a.example", "path is missing", "no path"),
    BadId("obj://org-a.example/billing/../x", "dot segment", "'..' segment"),
    BadId("obj://org-a.example:1/billing", "port", "port"),
]


@pytest.mark.parametrize("case", BAD_OBJECT_IDS, ids=[c.reason for c in BAD_OBJECT_IDS])
def test_bad_object_id_is_refused_with_a_reason(case: BadId) -> None:
    with pytest.raises(ConfigError) as info:
        ObjectId.parse(case.uri)
    assert case.mentions in info.value.reason
    assert info.value.hint is not None
    assert "obj://org-a.example/billing/invoice-42" in info.value.hint


@pytest.mark.parametrize(
    "uri",
    [
        "spiffe://org-a.example/cluster/east/gateway",
        "spiffe://a/b",
        "spiffe://org_b-2.example.com/Cluster/EAST/gw-1.2_x",
        "spiffe://org-a.example/..a/a..",
    ],
)
def test_host_id_round_trips(uri: str) -> None:
    host = HostId.parse(uri)
    assert str(host) == host.uri == uri
    assert HostId.parse(str(host)) == host


def test_host_id_parts() -> None:
    host = HostId.parse("spiffe://org-a.example/cluster/east/gateway")
    assert host == HostId(trust_domain="org-a.example", path="/cluster/east/gateway")
    assert host.trust_domain == "org-a.example"
    assert host.path == "/cluster/east/gateway"
    assert len({host, HostId.parse(str(host))}) == 1


def test_object_id_round_trips_and_has_its_trust_domain() -> None:
    obj = ObjectId.parse("obj://org-a.example/billing/invoice-42")
    assert obj == ObjectId(trust_domain="org-a.example", path="/billing/invoice-42")
    assert obj.trust_domain == "org-a.example"
    assert str(obj) == obj.uri == "obj://org-a.example/billing/invoice-42"


@pytest.mark.parametrize(
    ("trust_domain", "path", "reason"),
    [
        ("Org-A.example", "/gw", "upper-case trust domain"),
        ("org-a.example", "gw", "path without a leading slash"),
        ("org-a.example", "", "empty path"),
        ("", "/gw", "empty trust domain"),
    ],
)
def test_constructors_check_the_same_rules(trust_domain: str, path: str, reason: str) -> None:
    with pytest.raises(ConfigError):
        HostId(trust_domain=trust_domain, path=path)
    with pytest.raises(ConfigError):
        ObjectId(trust_domain=trust_domain, path=path)


def test_ids_are_immutable() -> None:
    host = HostId.parse("spiffe://org-a.example/gw")
    with pytest.raises(dataclasses.FrozenInstanceError):
        host.path = "/other"  # type: ignore[misc]


_trust_domains = st.text("abcdefghijklmnopqrstuvwxyz0123456789.-_", min_size=1, max_size=40)
_segments = st.text(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_", min_size=1, max_size=12
).filter(lambda s: s not in (".", ".."))
_paths = st.lists(_segments, min_size=1, max_size=6).map(lambda parts: "/" + "/".join(parts))


@given(trust_domain=_trust_domains, path=_paths)
def test_every_valid_id_round_trips(trust_domain: str, path: str) -> None:
    host = HostId(trust_domain=trust_domain, path=path)
    assert HostId.parse(str(host)) == host
    obj = ObjectId(trust_domain=trust_domain, path=path)
    assert ObjectId.parse(str(obj)) == obj


@given(st.one_of(st.text(), st.text().map(lambda s: "spiffe://" + s)))
def test_parse_never_accepts_what_it_cannot_give_back(uri: str) -> None:
    # Any input either fails with ConfigError or parses to an id that prints as exactly
    # the input: nothing is normalized, so nothing is silently accepted as another id.
    try:
        host = HostId.parse(uri)
    except ConfigError:
        return
    assert str(host) == uri


# --- certificates made by hand, for what devcerts refuses to make -------------------

_NOW = datetime.now(UTC).replace(microsecond=0)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _forge_ca(name: str | x509.Name, *, uri_constraint: str | None) -> CertifiedKey:
    """A CA like a partner's might be: optionally without any name constraints."""
    key = ec.generate_private_key(ec.SECP256R1())
    if isinstance(name, str):
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_NOW - timedelta(minutes=5))
        .not_valid_after(_NOW + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if uri_constraint is not None:
        constraint = x509.NameConstraints(
            permitted_subtrees=[x509.UniformResourceIdentifier(uri_constraint)],
            excluded_subtrees=None,
        )
        builder = builder.add_extension(constraint, critical=True)
    cert = builder.sign(key, hashes.SHA256())
    return CertifiedKey(
        cert_pem=cert.public_bytes(serialization.Encoding.PEM), key_pem=_pem_key(key)
    )


def _forge_leaf(ca: CertifiedKey, sans: Sequence[x509.GeneralName] | None) -> CertifiedKey:
    """A leaf with exactly the SANs given (None: no SAN extension at all)."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "forged")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_NOW - timedelta(minutes=5))
        .not_valid_after(_NOW + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    if sans is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return CertifiedKey(
        cert_pem=cert.public_bytes(serialization.Encoding.PEM), key_pem=_pem_key(key)
    )


def _sans(*uris: str) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    names += [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    return names


ORG_A_GW = HostId.parse("spiffe://org-a.example/cluster/east/gateway")
ORG_A_CLIENT = HostId.parse("spiffe://org-a.example/cluster/west/gateway")
ORG_B_CLIENT = HostId.parse("spiffe://org-b.example/cluster/main/gateway")


@pytest.fixture(scope="module")
def ca_a() -> CertifiedKey:
    return make_ca("org-a.example")


@pytest.fixture(scope="module")
def ca_b() -> CertifiedKey:
    return make_ca("org-b.example")


# --- spiffe_id_from_cert -----------------------------------------------------------


def test_spiffe_id_from_a_host_cert(ca_a: CertifiedKey) -> None:
    cert = make_host_cert(ca_a, ORG_A_CLIENT)
    assert spiffe_id_from_cert(cert.cert_pem) == ORG_A_CLIENT


@dataclass(frozen=True)
class BadCert:
    sans: list[x509.GeneralName] | None
    mentions: str
    reason: str


BAD_CERTS = [
    BadCert(None, "no subjectAltName", "no SAN extension"),
    BadCert([x509.DNSName("localhost")], "no URI SAN", "DNS SAN only"),
    BadCert(
        _sans("spiffe://org-a.example/gw", "spiffe://org-a.example/other"),
        "2 URI SANs",
        "two SPIFFE ids",
    ),
    BadCert(
        _sans("spiffe://org-a.example/gw", "https://org-a.example/"),
        "2 URI SANs",
        "a SPIFFE id and another URI",
    ),
    BadCert(_sans("https://org-a.example/gw"), "not a valid SPIFFE id", "URI is not SPIFFE"),
    BadCert(_sans("spiffe://org-a.example/a/../b"), "dot segment", "invalid SPIFFE id"),
]


@pytest.mark.parametrize("case", BAD_CERTS, ids=[c.reason for c in BAD_CERTS])
def test_cert_without_exactly_one_spiffe_id_is_refused(ca_a: CertifiedKey, case: BadCert) -> None:
    leaf = _forge_leaf(ca_a, case.sans)
    with pytest.raises(PeerMismatchError) as info:
        spiffe_id_from_cert(leaf.cert_pem)
    assert case.mentions in info.value.reason
    with pytest.raises(PeerMismatchError):
        verify_issued_by(leaf.cert_pem, ca_a.cert_pem)


def test_garbage_is_not_a_peer_cert() -> None:
    with pytest.raises(PeerMismatchError):
        spiffe_id_from_cert(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")


# --- verify_issued_by --------------------------------------------------------------


def test_host_cert_is_issued_by_its_ca(ca_a: CertifiedKey) -> None:
    verify_issued_by(make_host_cert(ca_a, ORG_A_CLIENT).cert_pem, ca_a.cert_pem)
    assert ca_trust_domain(ca_a.cert_pem) == "org-a.example"


def test_cert_from_another_domains_ca_is_refused(ca_a: CertifiedKey, ca_b: CertifiedKey) -> None:
    org_b_cert = make_host_cert(ca_b, ORG_B_CLIENT)
    with pytest.raises(UntrustedKeyError) as info:
        verify_issued_by(org_b_cert.cert_pem, ca_a.cert_pem)
    assert "org-a.example" in info.value.reason


def test_cert_claiming_another_domain_than_its_ca_is_refused(ca_b: CertifiedKey) -> None:
    # org-b's CA signed a certificate that claims to be an org-a host.
    claims_org_a = _forge_leaf(ca_b, _sans(str(ORG_A_CLIENT)))
    with pytest.raises(UntrustedKeyError) as info:
        verify_issued_by(claims_org_a.cert_pem, ca_b.cert_pem)
    assert "org-b.example" in info.value.reason


def test_cert_claiming_a_domain_whose_ca_did_not_sign_it_is_refused(ca_a: CertifiedKey) -> None:
    rogue = _forge_ca("rogue CA", uri_constraint=None)
    claims_org_a = _forge_leaf(rogue, _sans(str(ORG_A_CLIENT)))
    with pytest.raises(UntrustedKeyError):
        verify_issued_by(claims_org_a.cert_pem, ca_a.cert_pem)


def test_cert_from_a_ca_impersonating_the_right_name_is_refused(ca_a: CertifiedKey) -> None:
    # Same subject and same trust domain as org-a's CA, different key: only the
    # signature tells them apart.
    subject = x509.load_pem_x509_certificate(ca_a.cert_pem).subject
    twin = _forge_ca(subject, uri_constraint="org-a.example")
    leaf = _forge_leaf(twin, _sans(str(ORG_A_CLIENT)))
    verify_issued_by(leaf.cert_pem, twin.cert_pem)
    with pytest.raises(UntrustedKeyError, match="InvalidSignature"):
        verify_issued_by(leaf.cert_pem, ca_a.cert_pem)


@dataclass(frozen=True)
class BadCa:
    make_pem: Callable[[CertifiedKey], bytes]  # given org-a's CA
    reason: str


BAD_CAS = [
    BadCa(lambda _: _forge_ca("partner", uri_constraint=None).cert_pem, "no name constraints"),
    BadCa(
        lambda _: _forge_ca("subdomains", uri_constraint=".org-a.example").cert_pem,
        "a '.domain' constraint permits subdomains, not one trust domain",
    ),
    BadCa(lambda ca: make_host_cert(ca, ORG_A_GW).cert_pem, "a host certificate is not a CA"),
    BadCa(lambda _: b"not pem", "not a certificate"),
]


@pytest.mark.parametrize("case", BAD_CAS, ids=[c.reason for c in BAD_CAS])
def test_unusable_ca_is_a_trust_error(ca_a: CertifiedKey, case: BadCa) -> None:
    ca_pem = case.make_pem(ca_a)
    leaf = make_host_cert(ca_a, ORG_A_CLIENT)
    with pytest.raises(TrustError):
        verify_issued_by(leaf.cert_pem, ca_pem)
    with pytest.raises(TrustError):
        ca_trust_domain(ca_pem)


# --- real mTLS over gRPC -----------------------------------------------------------

_SERVICE = "gateway.test.Identity"
_METHOD = f"/{_SERVICE}/WhoAmI"


async def _who_am_i(
    *,
    server: CertifiedKey,
    server_ca: CertifiedKey,
    trusted_roots: bytes,
    cas_by_domain: Mapping[str, CertifiedKey],
    client: CertifiedKey | None,
    seen: dict[str, list[bytes]] | None = None,
) -> bytes:
    """Start an mTLS server, call it once as ``client``, return what it answered.

    The handler does what the gateway's server must do after every handshake: read
    the peer's certificate, take its SPIFFE id, and check that the CA of *that* trust
    domain issued it, because the handshake only proved "some trusted CA did".
    """

    async def who_am_i(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        auth = context.auth_context()
        if seen is not None:
            seen.update(auth)
        (cert_pem,) = auth["x509_pem_cert"]
        try:
            host = spiffe_id_from_cert(cert_pem)
            ca = cas_by_domain.get(host.trust_domain)
            if ca is None:
                raise UntrustedKeyError(f"no CA is trusted for {host.trust_domain!r}")
            verify_issued_by(cert_pem, ca.cert_pem)
        except VerificationError as exc:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        return host.uri.encode()

    handler = grpc.method_handlers_generic_handler(
        _SERVICE, {"WhoAmI": grpc.unary_unary_rpc_method_handler(who_am_i)}
    )
    grpc_server = grpc.aio.server()
    grpc_server.add_generic_rpc_handlers((handler,))
    credentials = grpc.ssl_server_credentials(
        [(server.key_pem, server.cert_pem)],
        root_certificates=trusted_roots,
        require_client_auth=True,
    )
    port = grpc_server.add_secure_port("127.0.0.1:0", credentials)
    await grpc_server.start()
    try:
        channel_credentials = grpc.ssl_channel_credentials(
            root_certificates=server_ca.cert_pem,
            private_key=client.key_pem if client else None,
            certificate_chain=client.cert_pem if client else None,
        )
        async with grpc.aio.secure_channel(
            f"127.0.0.1:{port}",
            channel_credentials,
            options=[("grpc.ssl_target_name_override", "localhost")],
        ) as channel:
            answer = await channel.unary_unary(_METHOD)(b"", timeout=10)
            assert isinstance(answer, bytes)
            return answer
    finally:
        await grpc_server.stop(None)


@pytest.fixture(scope="module")
def gateway_a(ca_a: CertifiedKey) -> CertifiedKey:
    return make_host_cert(ca_a, ORG_A_GW)


def _call(
    ca_a: CertifiedKey,
    ca_b: CertifiedKey,
    gateway_a: CertifiedKey,
    client: CertifiedKey | None,
    *,
    seen: dict[str, list[bytes]] | None = None,
) -> bytes:
    """org-a's gateway, trusting org-a's and org-b's CAs, called by ``client``."""
    return asyncio.run(
        _who_am_i(
            server=gateway_a,
            server_ca=ca_a,
            trusted_roots=ca_a.cert_pem + ca_b.cert_pem,
            cas_by_domain={ca_trust_domain(ca.cert_pem): ca for ca in (ca_a, ca_b)},
            client=client,
            seen=seen,
        )
    )


def test_tls_client_of_a_trusted_domain_gets_its_spiffe_id(
    ca_a: CertifiedKey, ca_b: CertifiedKey, gateway_a: CertifiedKey
) -> None:
    client_a = make_host_cert(ca_a, ORG_A_CLIENT)
    seen: dict[str, list[bytes]] = {}
    assert _call(ca_a, ca_b, gateway_a, client_a, seen=seen) == str(ORG_A_CLIENT).encode()
    # What gRPC puts in the auth context: the leaf PEM exactly as the client sent it.
    assert seen["x509_pem_cert"] == [client_a.cert_pem]
    assert seen["transport_security_type"] == [b"ssl"]
    assert seen["peer_spiffe_id"] == [str(ORG_A_CLIENT).encode()]

    client_b = make_host_cert(ca_b, ORG_B_CLIENT)
    assert _call(ca_a, ca_b, gateway_a, client_b) == str(ORG_B_CLIENT).encode()


def test_tls_client_without_a_certificate_is_refused(
    ca_a: CertifiedKey, ca_b: CertifiedKey, gateway_a: CertifiedKey
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        _call(ca_a, ca_b, gateway_a, None)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_tls_client_from_an_unknown_ca_is_refused(
    ca_a: CertifiedKey, ca_b: CertifiedKey, gateway_a: CertifiedKey
) -> None:
    stranger = make_ca("org-c.example")
    client = make_host_cert(stranger, HostId.parse("spiffe://org-c.example/gw"))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        _call(ca_a, ca_b, gateway_a, client)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_tls_self_signed_client_is_refused(
    ca_a: CertifiedKey, ca_b: CertifiedKey, gateway_a: CertifiedKey
) -> None:
    # A "CA" of org-a's own name that nobody trusts signs a leaf for an org-a host.
    impostor = make_ca("org-a.example")
    client = make_host_cert(impostor, ORG_A_CLIENT)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        _call(ca_a, ca_b, gateway_a, client)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_tls_name_constraints_stop_a_dev_ca_signing_for_another_domain(
    ca_a: CertifiedKey, ca_b: CertifiedKey, gateway_a: CertifiedKey
) -> None:
    # org-b's dev CA signs a leaf claiming an org-a host: its URI name constraint
    # (org-b.example) makes the TLS stack refuse the chain during the handshake.
    claims_org_a = _forge_leaf(ca_b, _sans(str(ORG_A_CLIENT)))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        _call(ca_a, ca_b, gateway_a, claims_org_a)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_tls_handshake_alone_lets_a_partner_ca_claim_another_domain(
    ca_a: CertifiedKey, gateway_a: CertifiedKey
) -> None:
    # A partner CA without name constraints (as real partner CAs often are) is in
    # the trusted roots for org-b. It signs a leaf claiming an org-a host: the
    # handshake succeeds, because gRPC accepts any trusted root. Only the check
    # after the handshake (verify_issued_by with org-a's CA) refuses it.
    partner = _forge_ca("org-b partner CA", uri_constraint=None)
    claims_org_a = _forge_leaf(partner, _sans(str(ORG_A_CLIENT)))

    async def call() -> bytes:
        return await _who_am_i(
            server=gateway_a,
            server_ca=ca_a,
            trusted_roots=ca_a.cert_pem + partner.cert_pem,
            cas_by_domain={"org-a.example": ca_a, "org-b.example": partner},
            client=claims_org_a,
        )

    with pytest.raises(grpc.aio.AioRpcError) as info:
        asyncio.run(call())
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "org-a.example" in (info.value.details() or "")
