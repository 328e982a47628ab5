"""Tests for gateway.devcerts: the certificate profiles and what is refused."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.devcerts import CertifiedKey, make_ca, make_host_cert
from gateway.errors import ConfigError, UntrustedKeyError
from gateway.identity import HostId, ca_trust_domain, spiffe_id_from_cert, verify_issued_by

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
GATEWAY = HostId.parse("spiffe://org-a.example/cluster/east/gateway")


@pytest.fixture(scope="module")
def ca() -> CertifiedKey:
    return make_ca("org-a.example", now=NOW)


def _cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


_T = TypeVar("_T", bound=x509.ExtensionType)


def _ext(cert: x509.Certificate, kind: type[_T]) -> x509.Extension[_T]:
    return cert.extensions.get_extension_for_class(kind)


def _is_p256(key: object) -> bool:
    return isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) and isinstance(
        key.curve, ec.SECP256R1
    )


# --- the CA ------------------------------------------------------------------------


def test_ca_profile(ca: CertifiedKey) -> None:
    cert = _cert(ca.cert_pem)
    assert _is_p256(cert.public_key())
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == (
        "org-a.example development CA"
    )
    cert.verify_directly_issued_by(cert)

    basic = _ext(cert, x509.BasicConstraints)
    assert basic.critical
    assert basic.value.ca
    assert basic.value.path_length == 0

    usage = _ext(cert, x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign
    assert usage.value.crl_sign
    assert not usage.value.digital_signature

    constraints = _ext(cert, x509.NameConstraints)
    assert constraints.critical
    assert constraints.value.permitted_subtrees == [
        x509.UniformResourceIdentifier("org-a.example"),
        x509.DNSName("localhost"),
    ]
    assert constraints.value.excluded_subtrees is None

    ski = _ext(cert, x509.SubjectKeyIdentifier).value
    assert _ext(cert, x509.AuthorityKeyIdentifier).value.key_identifier == ski.digest
    assert ca_trust_domain(ca.cert_pem) == "org-a.example"


def test_ca_validity_window() -> None:
    cert = _cert(make_ca("org-a.example", valid_for=timedelta(days=10), now=NOW).cert_pem)
    assert cert.not_valid_before_utc == NOW
    assert cert.not_valid_after_utc == NOW + timedelta(days=10)


def test_key_is_unencrypted_pkcs8_and_matches_the_certificate(ca: CertifiedKey) -> None:
    assert ca.key_pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")
    key = serialization.load_pem_private_key(ca.key_pem, password=None)
    assert _is_p256(key)
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key().public_bytes(*spki) == _cert(ca.cert_pem).public_key().public_bytes(
        *spki
    )


def test_repr_never_shows_the_private_key(ca: CertifiedKey) -> None:
    assert b"PRIVATE KEY" not in repr(ca).encode()
    assert "key_pem" not in repr(ca)


def test_ca_given_no_dns_names_excludes_them_all() -> None:
    # Without a permitted DNS subtree, RFC 5280 would let the CA sign any DNS name.
    ca = make_ca("org-a.example", dns_names=(), now=NOW)
    constraints = _ext(_cert(ca.cert_pem), x509.NameConstraints).value
    assert constraints.permitted_subtrees == [x509.UniformResourceIdentifier("org-a.example")]
    assert constraints.excluded_subtrees == [x509.DNSName("")]
    with pytest.raises(ConfigError):
        make_host_cert(ca, GATEWAY, now=NOW)
    make_host_cert(ca, GATEWAY, dns_names=(), now=NOW)


def test_long_trust_domain_still_makes_a_ca() -> None:
    domain = "a" * 60 + ".example"  # too long for "<domain> development CA" as a CN
    cert = _cert(make_ca(domain, now=NOW).cert_pem)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "development CA"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == domain


@dataclass(frozen=True)
class BadCaArgs:
    trust_domain: str
    dns_names: tuple[str, ...] | str
    valid_for: timedelta
    now: datetime
    reason: str


BAD_CA_ARGS = [
    BadCaArgs("Org-A.example", ("localhost",), timedelta(days=1), NOW, "upper-case domain"),
    BadCaArgs("org-a.example:443", ("localhost",), timedelta(days=1), NOW, "domain with port"),
    BadCaArgs("", ("localhost",), timedelta(days=1), NOW, "empty domain"),
    BadCaArgs("org-a.example", ("localhost",), timedelta(0), NOW, "zero validity"),
    BadCaArgs("org-a.example", ("localhost",), timedelta(days=-1), NOW, "negative validity"),
    BadCaArgs(
        "org-a.example", ("localhost",), timedelta(days=1), NOW.replace(tzinfo=None), "naive now"
    ),
    BadCaArgs("org-a.example", "localhost", timedelta(days=1), NOW, "a str, not a list"),
    BadCaArgs("org-a.example", ("b\u00fccher.example",), timedelta(days=1), NOW, "U-label"),
    BadCaArgs("org-a.example", ("",), timedelta(days=1), NOW, "empty DNS name"),
]


@pytest.mark.parametrize("case", BAD_CA_ARGS, ids=[c.reason for c in BAD_CA_ARGS])
def test_bad_ca_arguments_are_refused(case: BadCaArgs) -> None:
    with pytest.raises(ConfigError):
        make_ca(case.trust_domain, dns_names=case.dns_names, valid_for=case.valid_for, now=case.now)


# --- host certificates -------------------------------------------------------------


def test_host_cert_profile(ca: CertifiedKey) -> None:
    host = make_host_cert(ca, GATEWAY, now=NOW)
    cert, ca_cert = _cert(host.cert_pem), _cert(ca.cert_pem)
    assert _is_p256(cert.public_key())
    assert host.key_pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")
    assert cert.issuer == ca_cert.subject
    cert.verify_directly_issued_by(ca_cert)

    san = _ext(cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [GATEWAY.uri]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]

    eku = _ext(cert, x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]

    usage = _ext(cert, x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature
    assert not usage.value.key_cert_sign
    assert not usage.value.crl_sign

    basic = _ext(cert, x509.BasicConstraints)
    assert basic.critical
    assert not basic.value.ca

    ca_ski = _ext(ca_cert, x509.SubjectKeyIdentifier).value.digest
    assert _ext(cert, x509.AuthorityKeyIdentifier).value.key_identifier == ca_ski
    assert cert.not_valid_before_utc == NOW


def test_generated_pair_passes_the_peer_checks(ca: CertifiedKey) -> None:
    host = make_host_cert(ca, GATEWAY, now=NOW)
    assert spiffe_id_from_cert(host.cert_pem) == GATEWAY
    verify_issued_by(host.cert_pem, ca.cert_pem)


def test_a_pair_from_another_domain_fails_the_peer_checks(ca: CertifiedKey) -> None:
    other_ca = make_ca("org-b.example", now=NOW)
    other = make_host_cert(other_ca, HostId.parse("spiffe://org-b.example/gw"), now=NOW)
    with pytest.raises(UntrustedKeyError):
        verify_issued_by(other.cert_pem, ca.cert_pem)


def test_host_cert_with_chosen_names() -> None:
    ca = make_ca("org-a.example", dns_names=("gw.org-a.example",), now=NOW)
    host = make_host_cert(
        ca,
        GATEWAY,
        dns_names=("east.gw.org-a.example", "gw.org-a.example"),
        ip_addresses=("10.0.0.7", "::1"),
        now=NOW,
    )
    san = _ext(_cert(host.cert_pem), x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["east.gw.org-a.example", "gw.org-a.example"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.7"),
        ipaddress.ip_address("::1"),
    ]


def test_host_cert_never_outlives_its_ca() -> None:
    ca = make_ca("org-a.example", valid_for=timedelta(days=30), now=NOW)
    host = make_host_cert(ca, GATEWAY, valid_for=timedelta(days=90), now=NOW + timedelta(days=1))
    assert _cert(host.cert_pem).not_valid_after_utc == _cert(ca.cert_pem).not_valid_after_utc


def test_host_cert_validity_window(ca: CertifiedKey) -> None:
    later = NOW + timedelta(hours=1, microseconds=5)
    cert = _cert(make_host_cert(ca, GATEWAY, valid_for=timedelta(days=2), now=later).cert_pem)
    assert cert.not_valid_before_utc == later.replace(microsecond=0)
    assert cert.not_valid_after_utc == later.replace(microsecond=0) + timedelta(days=2)


@dataclass(frozen=True)
class BadHostArgs:
    host_id: str
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    now: datetime
    reason: str


BAD_HOST_ARGS = [
    BadHostArgs("spiffe://org-b.example/gw", ("localhost",), (), NOW, "host of another domain"),
    BadHostArgs(str(GATEWAY), ("example.com",), (), NOW, "DNS name the CA may not sign"),
    BadHostArgs(str(GATEWAY), ("localhost.evil",), (), NOW, "suffix is not a subdomain"),
    BadHostArgs(str(GATEWAY), ("localhost",), ("256.0.0.1",), NOW, "not an IP address"),
    BadHostArgs(str(GATEWAY), ("localhost",), (), NOW - timedelta(days=1), "before the CA"),
    BadHostArgs(str(GATEWAY), ("localhost",), (), NOW + timedelta(days=366), "after the CA"),
]


@pytest.mark.parametrize("case", BAD_HOST_ARGS, ids=[c.reason for c in BAD_HOST_ARGS])
def test_bad_host_cert_requests_are_refused(ca: CertifiedKey, case: BadHostArgs) -> None:
    with pytest.raises(ConfigError):
        make_host_cert(
            ca,
            HostId.parse(case.host_id),
            dns_names=case.dns_names,
            ip_addresses=case.ip_addresses,
            now=case.now,
        )


def test_host_cert_needs_a_matching_ca_key(ca: CertifiedKey) -> None:
    other = make_ca("org-a.example", now=NOW)
    mixed = CertifiedKey(cert_pem=ca.cert_pem, key_pem=other.key_pem)
    with pytest.raises(ConfigError, match="does not belong"):
        make_host_cert(mixed, GATEWAY, now=NOW)


def test_host_cert_cannot_be_issued_by_a_host_cert(ca: CertifiedKey) -> None:
    host = make_host_cert(ca, GATEWAY, now=NOW)
    with pytest.raises(ConfigError):
        make_host_cert(host, GATEWAY, now=NOW)


def test_a_domain_cannot_vouch_for_another_domains_hosts() -> None:
    """org-b publishes, in its own bundle, a CA constrained to org-c.example and issues
    itself a certificate for spiffe://org-c.example/...: it must be refused, and the real
    org-c certificate accepted. Which domain a CA speaks for is its bundle's word.
    (Regression: CAs used to be indexed by their own name constraint, first one wins.)"""
    from datetime import UTC, datetime

    from gateway.errors import TrustError, UntrustedKeyError
    from gateway.keys import Purpose, Signer
    from gateway.transport.tls import authenticated_peer
    from gateway.trust import TrustStore, new_bundle

    now = datetime.now(UTC)
    rogue, real_c = make_ca("org-c.example"), make_ca("org-c.example")
    keys = [
        Signer.generate().record(purposes=[Purpose.ENVELOPE, Purpose.BUNDLE], valid_from=now)
        for _ in range(2)
    ]
    b_bundle = new_bundle(
        "org-b.example", [keys[0]], x509_authorities=[rogue.cert_pem], issued_at=now
    )
    c_bundle = new_bundle(
        "org-c.example", [keys[1]], x509_authorities=[real_c.cert_pem], issued_at=now
    )
    trust = TrustStore.of([b_bundle, c_bundle])
    authorities = {domain: bundle.x509_authorities for domain, bundle in trust.bundles.items()}
    host = HostId.parse("spiffe://org-c.example/cluster/x/gateway")
    fake, real = make_host_cert(rogue, host), make_host_cert(real_c, host)
    with pytest.raises(UntrustedKeyError):
        authenticated_peer({"x509_pem_cert": [fake.cert_pem]}, authorities)
    assert authenticated_peer({"x509_pem_cert": [real.cert_pem]}, authorities) == str(host)
    # And such a bundle is refused on import in the first place.
    from gateway.identity import check_domain_authority

    with pytest.raises(TrustError, match=r"constrained to 'org-c\.example'"):
        check_domain_authority(rogue.cert_pem, "org-b.example")


def test_a_certificate_issued_for_the_clocks_now_starts_a_minute_earlier() -> None:
    """A peer whose clock is a little behind (or a clock the VM steps back) must not see
    a certificate made a moment ago as not yet valid; a host certificate still never
    starts before its CA, and one issued for a given ``now`` starts exactly then."""
    from gateway.devcerts import ISSUE_BACKDATE

    before = datetime.now(UTC).replace(microsecond=0)
    ca = make_ca("org-a.example")
    after = datetime.now(UTC)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    assert before - ISSUE_BACKDATE <= ca_cert.not_valid_before_utc <= after - ISSUE_BACKDATE

    host = HostId.parse("spiffe://org-a.example/gw")
    leaf = x509.load_pem_x509_certificate(make_host_cert(ca, host).cert_pem)
    assert ca_cert.not_valid_before_utc <= leaf.not_valid_before_utc <= after - ISSUE_BACKDATE / 2

    fresh_ca = make_ca("org-a.example", now=datetime.now(UTC))  # starts exactly now
    fresh_cert = x509.load_pem_x509_certificate(fresh_ca.cert_pem)
    leaf = x509.load_pem_x509_certificate(make_host_cert(fresh_ca, host).cert_pem)
    assert leaf.not_valid_before_utc == fresh_cert.not_valid_before_utc, "not before its CA"


def test_free_ports_are_outside_the_ephemeral_range_and_never_handed_out_twice() -> None:
    """A configuration's port is chosen before its server binds it: a port from the
    kernel's ephemeral range could meanwhile go to any outgoing connection."""
    from gateway.scaffold import FREE_PORTS_FROM, _ephemeral_start, free_port

    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == 200
    assert all(FREE_PORTS_FROM <= port < _ephemeral_start() for port in ports)
