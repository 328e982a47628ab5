"""Development PKI: one CA per trust domain and mTLS certificates for its hosts.

For demos, tests and local runs only; production CAs belong to each organization.
Everything here returns PEM bytes and writes no files; the CLI decides where they go.

What the certificates keep:

* Keys are ECDSA P-256; private keys are PKCS#8 PEM, unencrypted, so never commit
  or log them (``CertifiedKey``'s repr leaves the key out).
* A CA is for exactly one trust domain. Its name constraints (critical) permit URI
  SANs only in that domain (the URI constraint ``org-a.example`` matches
  ``spiffe://org-a.example/...`` and nothing else, not even subdomains) and only
  the DNS names it was made with (none given: all DNS names are excluded). gRPC's
  TLS stack (BoringSSL) enforces both at the handshake, and
  :func:`gateway.identity.verify_issued_by` reads the URI constraint back as the
  CA's trust domain.
* IP addresses are *not* constrained: BoringSSL fails every chain whose CA has an
  iPAddress name constraint ("unsupported name constraint type"), so such a CA
  would be unusable with gRPC. Hosts are told apart by their SPIFFE id, not their IP.
* A host certificate is an X.509-SVID: exactly one URI SAN (the host's SPIFFE id),
  plus DNS names and IPs for hostname checks, usable as both TLS server and client.
  It is never valid past its CA.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.errors import ConfigError, TrustError
from gateway.identity import HostId, ca_trust_domain, trust_domain_problem

__all__ = ["CertifiedKey", "make_ca", "make_host_cert"]

_CA_VALIDITY: Final = timedelta(days=365)
_HOST_VALIDITY: Final = timedelta(days=90)
#: A certificate issued for the clock's "now" starts this much earlier (as public CAs
#: do): a peer whose clock is a little behind, or a clock the VM steps back, must not
#: see a certificate made a moment ago as not yet valid (seen once in a test run:
#: CERTIFICATE_VERIFY_FAILED "certificate is not yet valid" right after issuing).
ISSUE_BACKDATE: Final = timedelta(minutes=1)
_MAX_COMMON_NAME: Final = 64  # ub-common-name, RFC 5280


@dataclass(frozen=True, slots=True, kw_only=True)
class CertifiedKey:
    """A certificate and its private key, both PEM (the key PKCS#8, unencrypted)."""

    cert_pem: bytes
    key_pem: bytes = field(repr=False)


def make_ca(
    trust_domain: str,
    *,
    dns_names: Sequence[str] = ("localhost",),
    valid_for: timedelta = _CA_VALIDITY,
    now: datetime | None = None,
) -> CertifiedKey:
    """A self-signed development CA for ``trust_domain``.

    The CA can sign for SPIFFE ids in ``trust_domain`` and for the DNS names given
    here (and their subdomains, per RFC 5280); see the module docstring.
    """
    problem = trust_domain_problem(trust_domain)
    if problem:
        raise ConfigError(
            f"cannot make a CA for {trust_domain!r}: {problem}",
            hint="name the trust domain like org-a.example",
        )
    _issued, not_before, not_after = _window(now, valid_for)
    dns = _dns_names(dns_names)

    permitted: list[x509.GeneralName] = [x509.UniformResourceIdentifier(trust_domain)]
    permitted += [x509.DNSName(name) for name in dns]
    # No permitted DNS subtree would leave DNS names unconstrained (RFC 5280), i.e.
    # "any name"; exclude them all instead, so "only the names given" holds.
    excluded: list[x509.GeneralName] = [] if dns else [x509.DNSName("")]

    common_name = f"{trust_domain} development CA"
    if len(common_name) > _MAX_COMMON_NAME:
        common_name = "development CA"  # the organization attribute still names the domain
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    key = ec.generate_private_key(ec.SECP256R1())
    public_key = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=excluded or None),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return CertifiedKey(cert_pem=cert.public_bytes(serialization.Encoding.PEM), key_pem=_pem(key))


def make_host_cert(
    ca: CertifiedKey,
    host_id: HostId,
    *,
    dns_names: Sequence[str] = ("localhost",),
    ip_addresses: Sequence[str] = ("127.0.0.1",),
    valid_for: timedelta = _HOST_VALIDITY,
    now: datetime | None = None,
) -> CertifiedKey:
    """An mTLS certificate for ``host_id``, issued by ``ca``.

    Refused (ConfigError) when the host is in another trust domain than the CA, when
    a DNS name is outside what the CA may sign for, or when the CA is not valid at
    ``now``. The certificate ends no later than the CA does.
    """
    ca_cert, ca_key = _load_ca(ca)
    try:
        ca_domain = ca_trust_domain(ca.cert_pem)
    except TrustError as exc:
        raise ConfigError(
            f"cannot issue host certificates with this CA: {exc.reason}", hint=exc.hint
        ) from exc
    if host_id.trust_domain != ca_domain:
        raise ConfigError(
            f"cannot issue a certificate for {host_id} with the CA of {ca_domain!r}: "
            "a CA only issues for its own trust domain",
            hint=f"use the CA of {host_id.trust_domain!r}, or a host id in {ca_domain!r}",
        )
    issued, not_before, not_after = _window(now, valid_for)
    if not ca_cert.not_valid_before_utc <= issued < ca_cert.not_valid_after_utc:
        raise ConfigError(
            f"the CA of {ca_domain!r} is not valid at {issued.isoformat()} (valid "
            f"{ca_cert.not_valid_before_utc.isoformat()} to "
            f"{ca_cert.not_valid_after_utc.isoformat()})",
            hint="make a new development CA",
        )
    not_before = max(not_before, ca_cert.not_valid_before_utc)  # never before its CA
    not_after = min(not_after, ca_cert.not_valid_after_utc)

    dns = _dns_names(dns_names)
    ips = _ip_addresses(ip_addresses)
    _check_dns_names(ca_cert, ca_domain, dns)

    key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    san: list[x509.GeneralName] = [x509.UniformResourceIdentifier(host_id.uri)]
    san += [x509.DNSName(name) for name in dns]
    san += [x509.IPAddress(ip) for ip in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, ca_domain)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return CertifiedKey(cert_pem=cert.public_bytes(serialization.Encoding.PEM), key_pem=_pem(key))


# --- helpers -----------------------------------------------------------------------


def _window(now: datetime | None, valid_for: timedelta) -> tuple[datetime, datetime, datetime]:
    """(the moment issued for, not before, not after): a certificate issued for the
    clock's now starts :data:`ISSUE_BACKDATE` earlier; one for a given ``now`` at it."""
    if valid_for <= timedelta(0):
        raise ConfigError(f"valid_for must be positive, not {valid_for}")
    backdate = timedelta(0)
    if now is None:
        now, backdate = datetime.now(UTC), ISSUE_BACKDATE
    elif now.tzinfo is None:
        # cryptography would read a naive time as UTC; a local time would shift the window.
        raise ConfigError("now must be timezone-aware", hint="pass datetime.now(UTC)")
    now = now.astimezone(UTC).replace(microsecond=0)  # X.509 times have whole seconds
    return now, now - backdate, now + valid_for


def _dns_names(names: Sequence[str]) -> list[str]:
    if isinstance(names, str):  # a bare str is a Sequence of one-letter names
        raise ConfigError(f"dns_names must be a sequence of names, not the string {names!r}")
    for name in names:
        if not name or not name.isascii() or any(c.isspace() for c in name):
            raise ConfigError(
                f"{name!r} is not a DNS name",
                hint="use an ASCII (A-label) host name such as localhost",
            )
    return list(names)


def _ip_addresses(addresses: Sequence[str]) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    if isinstance(addresses, str):
        raise ConfigError(f"ip_addresses must be a sequence, not the string {addresses!r}")
    parsed = []
    for address in addresses:
        try:
            parsed.append(ipaddress.ip_address(address))
        except ValueError as exc:
            raise ConfigError(f"{address!r} is not an IP address", hint="e.g. 127.0.0.1") from exc
    return parsed


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_ca(ca: CertifiedKey) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(ca.cert_pem)
        key = serialization.load_pem_private_key(ca.key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"the CA certificate or key cannot be read: {exc}",
            hint="pass the CertifiedKey that make_ca returned (unencrypted PKCS#8 key)",
        ) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError("the CA key is not an ECDSA key", hint="make the CA with make_ca")
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, spki) != cert.public_key().public_bytes(der, spki):
        raise ConfigError(
            "the CA key does not belong to the CA certificate",
            hint="pass the certificate and key from the same make_ca call",
        )
    return cert, key


def _check_dns_names(ca: x509.Certificate, ca_domain: str, dns: Sequence[str]) -> None:
    """Refuse DNS names the CA's name constraints forbid, now rather than at handshake.

    RFC 5280 §4.2.1.10: with permitted DNS subtrees a name must match one of them,
    and it must match no excluded one.
    """
    constraints = ca.extensions.get_extension_for_class(x509.NameConstraints).value
    allowed = [n.value for n in constraints.permitted_subtrees or () if isinstance(n, x509.DNSName)]
    denied = [n.value for n in constraints.excluded_subtrees or () if isinstance(n, x509.DNSName)]
    for name in dns:
        if (allowed and not any(_dns_matches(name, c) for c in allowed)) or any(
            _dns_matches(name, c) for c in denied
        ):
            raise ConfigError(
                f"the CA of {ca_domain!r} may not sign for DNS name {name!r}",
                hint="make the CA with this DNS name (make_ca(..., dns_names=...))",
            )


def _dns_matches(name: str, constraint: str) -> bool:
    """RFC 5280 DNS constraint: the name itself, or the name with labels added on the left."""
    name, constraint = name.lower().rstrip("."), constraint.lower().rstrip(".")
    if not constraint:
        return True
    if constraint.startswith("."):
        return name.endswith(constraint)
    return name == constraint or name.endswith("." + constraint)
