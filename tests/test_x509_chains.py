"""Peer certificates issued through an intermediate CA of their trust domain.

``authenticated_peer`` (gateway/transport/tls.py) must accept a SPIFFE host certificate
issued by an intermediate CA that chains to a CA of the claimed domain's trust bundle,
through the chain the peer presented in the handshake (``x509_pem_cert_chain``), and
refuse every path that does not end at that domain's CA. Table-driven; each case names
why it is accepted or refused. Both kinds of CA are covered: with a URI name constraint
(checked link by link, as the TLS stack enforced the constraint) and without one (checked
whole by cryptography.x509.verification).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.errors import UntrustedKeyError
from gateway.transport.tls import authenticated_peer

NOW = datetime.now(UTC)
HOST = "spiffe://org-a.example/cluster/east/gateway"


@dataclass(frozen=True)
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _ca(name: str, *, issuer: Issued | None, domain: str | None, path_length: int) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(hours=1))
        .not_valid_after(NOW + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(
                (issuer.key if issuer else key).public_key()
            ),
            critical=False,
        )
    )
    if domain is not None:
        builder = builder.add_extension(
            x509.NameConstraints(
                permitted_subtrees=[
                    x509.UniformResourceIdentifier(domain),
                    x509.DNSName("localhost"),
                ],
                excluded_subtrees=None,
            ),
            critical=True,
        )
    return Issued(builder.sign(issuer.key if issuer else key, hashes.SHA256()), key)


def _host(issuer: Issued, spiffe_id: str = HOST) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "org-a")]))
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(hours=1))
        .not_valid_after(NOW + timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(spiffe_id), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
        .sign(issuer.key, hashes.SHA256())
    )
    return Issued(cert, key)


@dataclass(frozen=True)
class Case:
    name: str
    constrained: bool  #: whether the CAs carry the trust domain as a URI name constraint
    present_intermediate: bool
    intermediate_domain: str | None  #: the intermediate's own URI constraint, if any
    accepted: bool
    reason: str


CASES = [
    Case(
        "via-intermediate",
        True,
        True,
        "org-a.example",
        True,
        "a host certificate of an intermediate CA of the domain, chain presented",
    ),
    Case(
        "via-intermediate-no-constraints",
        False,
        True,
        None,
        True,
        "the same without name constraints: checked whole by cryptography's verifier",
    ),
    Case(
        "intermediate-not-presented",
        True,
        False,
        "org-a.example",
        False,
        "no path to the domain's CA without the intermediate",
    ),
    Case(
        "intermediate-not-presented-no-constraints",
        False,
        False,
        None,
        False,
        "the same, through cryptography's verifier",
    ),
    Case(
        "intermediate-of-another-domain",
        True,
        True,
        "org-b.example",
        False,
        "an intermediate constrained to another domain cannot vouch for org-a hosts",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_intermediate_ca_paths(case: Case) -> None:
    domain = "org-a.example" if case.constrained else None
    root = _ca("org-a root", issuer=None, domain=domain, path_length=1)
    intermediate = _ca(
        "org-a issuing CA", issuer=root, domain=case.intermediate_domain, path_length=0
    )
    leaf = _host(intermediate)
    chain = leaf.pem + (intermediate.pem if case.present_intermediate else b"")
    context = {"x509_pem_cert": [leaf.pem], "x509_pem_cert_chain": [chain]}
    authorities = {"org-a.example": (root.pem,)}
    if case.accepted:
        assert authenticated_peer(context, authorities) == HOST, case.reason
    else:
        with pytest.raises(UntrustedKeyError):
            authenticated_peer(context, authorities)


@pytest.mark.parametrize("constrained", [True, False], ids=["constrained", "unconstrained"])
def test_a_path_to_another_domains_root_is_refused(constrained: bool) -> None:
    """An intermediate of org-b's root issuing for an org-a id: no path to org-a's CA."""
    org_a = _ca(
        "org-a root", issuer=None, domain="org-a.example" if constrained else None, path_length=1
    )
    org_b = _ca("org-b root", issuer=None, domain=None, path_length=1)
    intermediate = _ca("org-b issuing CA", issuer=org_b, domain=None, path_length=0)
    leaf = _host(intermediate)
    context = {"x509_pem_cert": [leaf.pem], "x509_pem_cert_chain": [leaf.pem + intermediate.pem]}
    with pytest.raises(UntrustedKeyError):
        authenticated_peer(context, {"org-a.example": (org_a.pem,), "org-b.example": (org_b.pem,)})


def test_a_host_certificate_cannot_act_as_a_ca() -> None:
    """A leaf signed by another leaf (not a CA) is refused even if the signature holds."""
    root = _ca("org-a root", issuer=None, domain="org-a.example", path_length=1)
    middle = _host(root, "spiffe://org-a.example/not-a-ca")
    leaf = _host(middle)
    context = {"x509_pem_cert": [leaf.pem], "x509_pem_cert_chain": [leaf.pem + middle.pem]}
    with pytest.raises(UntrustedKeyError):
        authenticated_peer(context, {"org-a.example": (root.pem,)})


def test_too_many_presented_certificates_are_refused_before_any_search() -> None:
    root = _ca("org-a root", issuer=None, domain="org-a.example", path_length=1)
    leaf = _host(root)
    extra = b"".join(_ca(f"x{i}", issuer=None, domain=None, path_length=0).pem for i in range(9))
    context = {"x509_pem_cert": [leaf.pem], "x509_pem_cert_chain": [leaf.pem + extra]}
    with pytest.raises(UntrustedKeyError, match="at most"):
        authenticated_peer(context, {"org-a.example": (root.pem,)})
