"""Identities of hosts and objects, and what a peer's certificate says about them.

A host is named by a SPIFFE ID (``spiffe://org-a.example/cluster/east/gateway``) and
an object by an object id owned by its issuing trust domain
(``obj://org-a.example/billing/invoice-42``). Both follow the SPIFFE ID rules:

* the scheme is exactly ``spiffe`` (or ``obj``), lowercase;
* the trust domain is 1-255 characters of ``[a-z0-9._-]``: no upper case, port,
  userinfo or percent-encoding;
* the path is required here (an id names a host or an object, never a whole trust
  domain); its segments are non-empty, never ``.`` or ``..``, and made of
  ``[A-Za-z0-9._-]``; there is no trailing ``/``, query or fragment;
* the whole id is at most 2048 bytes.

Ids are checked when they are constructed, so a ``HostId`` or ``ObjectId`` that
exists is valid; ``str(id)`` gives back exactly the URI that was parsed.

Peer certificates (``spiffe_id_from_cert`` and ``verify_issued_by``) are checked as
X.509-SVIDs: exactly one URI SAN, a valid SPIFFE id, issued by the CA of the trust
domain that id names. A CA's trust domain (``ca_trust_domain``) is the single URI
host its name constraints permit (see ``verify_issued_by`` for why). Everything here
is pure: PEM bytes in, values or errors out, no I/O.
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from gateway.errors import ConfigError, PeerMismatchError, TrustError, UntrustedKeyError

__all__ = [
    "HostId",
    "ObjectId",
    "ca_trust_domain",
    "check_domain_authority",
    "spiffe_id_from_cert",
    "trust_domain_problem",
    "validate_tenant",
    "verify_issued_by",
    "verify_issued_for_domain",
]

_MAX_ID_BYTES: Final = 2048
_MAX_TRUST_DOMAIN_CHARS: Final = 255
_TRUST_DOMAIN_CHARS: Final = frozenset(string.ascii_lowercase + string.digits + ".-_")
_SEGMENT_CHARS: Final = frozenset(string.ascii_letters + string.digits + ".-_")

_HOST_EXAMPLE: Final = "spiffe://org-a.example/cluster/east/gateway"
_OBJECT_EXAMPLE: Final = "obj://org-a.example/billing/invoice-42"


def trust_domain_problem(name: str) -> str | None:
    """Why ``name`` is not a trust domain name, or None when it is one."""
    if not name:
        return "the trust domain is missing"
    if len(name) > _MAX_TRUST_DOMAIN_CHARS:
        return f"the trust domain is {len(name)} characters long, more than 255"
    if "@" in name:
        return "userinfo ('user@') is not allowed before the trust domain"
    if ":" in name:
        return f"the trust domain {name!r} has a port; ports are not allowed"
    for char in name:
        if char in _TRUST_DOMAIN_CHARS:
            continue
        if char in string.ascii_uppercase:
            return f"the trust domain {name!r} must be lowercase"
        return f"the trust domain {name!r} contains {char!r}; only [a-z0-9._-] are allowed"
    return None


def _path_problem(path: str) -> str | None:
    """Why ``path`` (with its leading ``/``) is not an id path, or None when it is one."""
    if not path or path == "/":
        return "the path is missing; an id names something inside its trust domain"
    if not path.startswith("/"):
        return f"the path {path!r} must start with '/'"
    segments = path[1:].split("/")
    for index, segment in enumerate(segments):
        if not segment:
            if index == len(segments) - 1:
                return "the path ends with '/'"
            return "the path has an empty segment ('//')"
        if segment in (".", ".."):
            return f"the path has a {segment!r} segment; dot segments are not allowed"
        for char in segment:
            if char not in _SEGMENT_CHARS:
                return (
                    f"the path segment {segment!r} contains {char!r}; "
                    "only [A-Za-z0-9._-] are allowed"
                )
    return None


def _id_problem(uri: str, trust_domain: str, path: str) -> str | None:
    # surrogatepass: an id from argv may hold a lone surrogate (bytes that were not
    # UTF-8); the character checks below name it instead of encode() raising.
    if len(uri.encode("utf-8", "surrogatepass")) > _MAX_ID_BYTES:
        return f"it is longer than {_MAX_ID_BYTES} bytes"
    return trust_domain_problem(trust_domain) or _path_problem(path)


def _split(uri: str, scheme: str) -> tuple[str, str] | str:
    """Split ``uri`` into (trust domain, path), or return why it cannot be split.

    Only the syntax around the parts is checked here; the parts themselves are
    checked by the dataclass constructors, so both entry points apply one rule set.
    """
    prefix = f"{scheme}://"
    if not uri.startswith(prefix):
        found, separator, _ = uri.partition("://")
        if not separator:
            return f"it does not start with {prefix!r}"
        return f"the scheme is {found!r}; it must be {scheme!r} (lowercase)"
    if "?" in uri:
        return "it has a query ('?'); queries are not allowed"
    if "#" in uri:
        return "it has a fragment ('#'); fragments are not allowed"
    trust_domain, slash, rest = uri[len(prefix) :].partition("/")
    return trust_domain, slash + rest


def _invalid(kind: str, uri: str, problem: str, example: str) -> ConfigError:
    shown = uri if len(uri) <= 120 else uri[:100] + "…"  # ids may come from peers
    return ConfigError(
        f"{shown!r} is not a valid {kind}: {problem}",
        hint=f"write it like {example}",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class HostId:
    """A host's SPIFFE ID: ``spiffe://<trust_domain><path>``.

    ``path`` keeps its leading ``/``, e.g. ``HostId(trust_domain="org-a.example",
    path="/cluster/east/gateway")``.
    """

    trust_domain: str
    path: str

    def __post_init__(self) -> None:
        problem = _id_problem(self.uri, self.trust_domain, self.path)
        if problem:
            raise _invalid("SPIFFE id", self.uri, problem, _HOST_EXAMPLE)

    @classmethod
    def parse(cls, uri: str) -> HostId:
        """Parse a SPIFFE ID, raising ConfigError that says what is wrong with it."""
        if cls is HostId and type(uri) is str:
            return _parsed_host(uri)
        return cls._parse(uri)

    @classmethod
    def _parse(cls, uri: str) -> HostId:
        parts = _split(uri, "spiffe")
        if isinstance(parts, str):
            raise _invalid("SPIFFE id", uri, parts, _HOST_EXAMPLE)
        return cls(trust_domain=parts[0], path=parts[1])

    @property
    def uri(self) -> str:
        return f"spiffe://{self.trust_domain}{self.path}"

    def __str__(self) -> str:
        return self.uri


@dataclass(frozen=True, slots=True, kw_only=True)
class ObjectId:
    """An object's id, owned by the trust domain that issued it: ``obj://<trust_domain><path>``."""

    trust_domain: str
    path: str

    def __post_init__(self) -> None:
        problem = _id_problem(self.uri, self.trust_domain, self.path)
        if problem:
            raise _invalid("object id", self.uri, problem, _OBJECT_EXAMPLE)

    @classmethod
    def parse(cls, uri: str) -> ObjectId:
        """Parse an object id, raising ConfigError that says what is wrong with it."""
        if cls is ObjectId and type(uri) is str:
            return _parsed_object(uri)
        return cls._parse(uri)

    @classmethod
    def _parse(cls, uri: str) -> ObjectId:
        parts = _split(uri, "obj")
        if isinstance(parts, str):
            raise _invalid("object id", uri, parts, _OBJECT_EXAMPLE)
        return cls(trust_domain=parts[0], path=parts[1])

    @property
    def uri(self) -> str:
        return f"obj://{self.trust_domain}{self.path}"

    def __str__(self) -> str:
        return self.uri


# --- peer certificates -------------------------------------------------------------


def spiffe_id_from_cert(cert_pem: bytes) -> HostId:
    """The SPIFFE id a peer's certificate claims.

    The certificate must carry exactly one URI SAN and it must be a valid SPIFFE id
    (X.509-SVID rules); otherwise PeerMismatchError says what the certificate has.
    This reads a claim only: pair it with ``verify_issued_by`` before believing it.
    """
    return certificate_spiffe_id(load_peer_certificate(cert_pem))


def load_peer_certificate(cert_pem: bytes) -> x509.Certificate:
    """Parse a peer certificate once, for ``certificate_spiffe_id`` and the issuance checks."""
    try:
        return x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise PeerMismatchError(
            f"the peer certificate is not a PEM X.509 certificate: {exc}"
        ) from exc


def certificate_spiffe_id(cert: x509.Certificate) -> HostId:
    """The SPIFFE id ``cert`` claims (see ``spiffe_id_from_cert``)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound as exc:
        raise PeerMismatchError(
            "the peer certificate has no subjectAltName, so it names no SPIFFE id",
            hint=f"issue it with exactly one URI SAN such as {_HOST_EXAMPLE}",
        ) from exc
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        has = f"{len(uris)} URI SANs {uris!r}" if uris else "no URI SAN"
        raise PeerMismatchError(
            f"the peer certificate has {has}; an X.509-SVID has exactly one",
            hint=f"issue it with exactly one URI SAN such as {_HOST_EXAMPLE}",
        )
    try:
        return HostId.parse(uris[0])
    except ConfigError as exc:
        raise PeerMismatchError(
            f"the peer certificate's URI SAN is not a valid SPIFFE id: {exc.reason}",
            hint=exc.hint,
        ) from exc


def verify_issued_by(cert_pem: bytes, ca_pem: bytes) -> None:
    """Check that ``ca_pem`` issued ``cert_pem`` and is the CA of the domain it claims.

    Why this is needed after a successful mTLS handshake: gRPC verifies the peer's
    chain against the *union* of every trusted CA. A certificate issued by org-b's
    CA may claim ``spiffe://org-a.example/...`` and still complete the handshake.
    So once the handshake is done the server must look up the CA of the trust domain
    the peer's SPIFFE id names, pass it here, and refuse the peer unless that very
    CA signed its certificate. (The dev CAs also carry name constraints the TLS
    stack enforces, but a partner's CA may not; this check does not rely on them.)

    The CA's trust domain is read from its name constraints: the one permitted URI
    subtree, e.g. ``org-a.example``. That is the only field that both names a trust
    domain unambiguously and limits what the CA can sign for, unlike a subject,
    which is free text. A CA without exactly one permitted URI subtree is refused
    (TrustError), so a CA can never be silently trusted for every domain.

    This checks issuance and domain only; validity periods and the rest of the path
    are the TLS stack's job. Raises PeerMismatchError when the certificate names no
    usable SPIFFE id, UntrustedKeyError when the CA is for another trust domain or
    did not sign the certificate, TrustError when the CA certificate is unusable.
    """
    try:
        ca = x509.load_pem_x509_certificate(ca_pem)
    except ValueError as exc:
        raise TrustError(f"the CA certificate is not a PEM X.509 certificate: {exc}") from exc
    ca_domain = _ca_trust_domain(ca)
    cert = load_peer_certificate(cert_pem)
    host_id = certificate_spiffe_id(cert)
    if host_id.trust_domain != ca_domain:
        # Checked before the signature so that passing the wrong CA gets a clear reason.
        raise UntrustedKeyError(
            f"the peer certificate claims {host_id}, but this CA is for trust domain {ca_domain!r}",
            hint=f"verify it against the CA trusted for {host_id.trust_domain!r}",
        )
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise UntrustedKeyError(
            f"the certificate for {host_id} was not issued by the CA trusted for "
            f"{ca_domain!r} ({type(exc).__name__}: {str(exc) or 'bad signature'})",
            hint="the peer's CA for this trust domain must be the one in the trust bundle",
        ) from exc


def verify_issued_for_domain(
    cert_pem: bytes, authorities: Sequence[bytes], trust_domain: str
) -> HostId:
    """The peer's SPIFFE id, if ``cert_pem`` names a host of ``trust_domain`` and was
    signed directly by one of ``authorities`` — the CAs of that domain's trust bundle.

    Which domain a CA speaks for comes from the signed trust bundle it was delivered in,
    never from the CA certificate: a CA that one domain publishes can never vouch for
    another domain's hosts. A CA that does carry a URI name constraint must also name
    the same domain (so a CA constrained to another domain is refused even if a bundle
    lists it). Raises PeerMismatchError (no usable SPIFFE id) or UntrustedKeyError.
    """
    cert = load_peer_certificate(cert_pem)
    return verify_certificate_for_domain(
        cert, certificate_spiffe_id(cert), authorities, trust_domain
    )


#: Certificates a peer may present beside its own (intermediate CAs), and CAs on a path
#: from its certificate to a root of its domain: bounded before any path is searched.
MAX_PRESENTED_INTERMEDIATES = 8
MAX_PATH_CAS = 4


def verify_certificate_for_domain(
    cert: x509.Certificate,
    host_id: HostId,
    authorities: Sequence[bytes],
    trust_domain: str,
    *,
    intermediates: Sequence[x509.Certificate] = (),
) -> HostId:
    """``verify_issued_for_domain`` for a certificate already parsed, claiming ``host_id``.

    A path must lead from ``cert`` to one of ``authorities`` (the CAs of ``trust_domain``'s
    bundle), directly or through ``intermediates`` the peer presented: a host certificate
    issued by an intermediate CA of the domain is accepted. Every CA on the path that
    carries a URI name constraint must name ``trust_domain``.

    Who checks the path: ``cryptography.x509.verification`` (RFC 5280 with the WebPKI
    profile: signatures, validity, basic constraints, path lengths, key usage, name
    constraints) wherever it can. It refuses by design any path whose CA carries a URI
    name constraint and whose leaf has a URI SAN (pyca/cryptography#10570, "forbid
    unsupported NCs") — which is every SPIFFE certificate under a trust-domain-constrained
    CA, like the development CAs. For such paths the TLS stack (BoringSSL in gRPC), which
    does evaluate URI name constraints, has validated the chain during the handshake
    against all trusted roots; what remains, and is checked here link by link with
    cryptography's ``verify_directly_issued_by``, is that the path ends at a CA of *this*
    domain and that every CA on it is a CA constrained to this domain or not at all.
    """
    if host_id.trust_domain != trust_domain:
        raise UntrustedKeyError(
            f"the peer certificate claims {host_id}, not a host of {trust_domain}"
        )
    hint = f"import {trust_domain}'s current bundle, which carries its CA certificates"
    if len(intermediates) > MAX_PRESENTED_INTERMEDIATES:
        raise UntrustedKeyError(
            f"{host_id} presented {len(intermediates)} intermediate certificates; at most "
            f"{MAX_PRESENTED_INTERMEDIATES}",
            hint="present only the chain from the host certificate to the domain's CA",
        )
    roots = []
    for ca_pem in authorities:
        try:
            roots.append(x509.load_pem_x509_certificate(ca_pem))
        except ValueError:
            continue  # a bundle's CAs were checked on import; an unreadable one trusts nothing
    if not roots:
        raise UntrustedKeyError(
            f"the trust bundle of {trust_domain} carries no usable CA certificate", hint=hint
        )
    if any(_ca_constraint_domain(ca) is not None for ca in (*roots, *intermediates)):
        path = _linked_path(cert, intermediates, roots)
    else:
        path = _verified_path(cert, intermediates, roots)
    if path is None:
        raise UntrustedKeyError(
            f"the certificate for {host_id} was not issued by any CA in the trust bundle of "
            f"{trust_domain}",
            hint=hint,
        )
    for ca in path[1:]:
        if not _is_ca(ca):
            raise UntrustedKeyError(
                f"{ca.subject.rfc4514_string()!r} on the path of {host_id} is not a CA"
            )
        constrained = _ca_constraint_domain(ca)
        if constrained is not None and constrained != trust_domain:
            raise UntrustedKeyError(
                f"the CA {ca.subject.rfc4514_string()!r} on the path of {host_id} is "
                f"constrained to {constrained!r}, not {trust_domain!r}"
            )
    return host_id


def _verified_path(
    cert: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
) -> list[x509.Certificate] | None:
    """The path cryptography's verifier builds and validates, leaf first; None if none."""
    from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

    verifier = PolicyBuilder().store(Store(list(roots))).max_chain_depth(MAX_PATH_CAS)
    try:
        return list(verifier.build_client_verifier().verify(cert, list(intermediates)).chain)
    except (VerificationError, ValueError, TypeError):
        return None


def _linked_path(
    cert: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
) -> list[x509.Certificate] | None:
    """A path from ``cert`` to one of ``roots`` through ``intermediates``, each link a
    signature checked by cryptography; None if there is none within MAX_PATH_CAS."""

    def issued(child: x509.Certificate, parent: x509.Certificate) -> bool:
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True

    path = [cert]
    unused = list(intermediates)
    while len(path) <= MAX_PATH_CAS:
        for root in roots:
            if issued(path[-1], root):
                return [*path, root]
        parent = next((c for c in unused if _is_ca(c) and issued(path[-1], c)), None)
        if parent is None:
            return None
        unused.remove(parent)
        path.append(parent)
    return None


def check_domain_authority(ca_pem: bytes, trust_domain: str) -> None:
    """A CA a bundle of ``trust_domain`` may carry: a CA certificate, and if it has a URI
    name constraint, one for that very domain. Raises TrustError."""
    try:
        ca = x509.load_pem_x509_certificate(ca_pem)
    except ValueError as exc:
        raise TrustError(f"a CA of {trust_domain} is not a PEM X.509 certificate: {exc}") from exc
    if not _is_ca(ca):
        raise TrustError(
            f"{ca.subject.rfc4514_string()!r} in the bundle of {trust_domain} is not a CA"
        )
    constrained = _ca_constraint_domain(ca)
    if constrained is not None and constrained != trust_domain:
        raise TrustError(
            f"the bundle of {trust_domain} carries a CA constrained to {constrained!r}",
            hint="a domain's bundle may only carry CAs for that domain",
        )


def _is_ca(cert: x509.Certificate) -> bool:
    """Whether ``cert`` has BasicConstraints with ``cA`` set."""
    try:
        basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return basic.ca


def _ca_constraint_domain(ca: x509.Certificate) -> str | None:
    """The domain a CA's URI name constraint permits, None if it has no URI constraint."""
    try:
        constraints = ca.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return None
    uris = [
        n.value
        for n in constraints.permitted_subtrees or ()
        if isinstance(n, x509.UniformResourceIdentifier)
    ]
    if not uris:
        return None
    return _ca_trust_domain(ca)


def ca_trust_domain(ca_pem: bytes) -> str:
    """The trust domain a CA certificate is for: its single permitted URI name constraint.

    Raises TrustError when the PEM is not a CA certificate or does not name exactly
    one trust domain this way. Useful to index a set of CAs by trust domain.
    """
    try:
        ca = x509.load_pem_x509_certificate(ca_pem)
    except ValueError as exc:
        raise TrustError(f"the CA certificate is not a PEM X.509 certificate: {exc}") from exc
    return _ca_trust_domain(ca)


def _ca_trust_domain(ca: x509.Certificate) -> str:
    """The trust domain a CA certificate is for: its single permitted URI name constraint.

    Raises TrustError when the certificate is not a CA or does not name exactly one
    trust domain this way.
    """
    if not _is_ca(ca):
        raise TrustError(
            f"the certificate {ca.subject.rfc4514_string()!r} is not a CA certificate",
            hint="trust the CA that issues host certificates, not a host certificate",
        )
    try:
        constraints = ca.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    permitted = constraints.permitted_subtrees if constraints is not None else None
    uris = [n.value for n in permitted or () if isinstance(n, x509.UniformResourceIdentifier)]
    hint = "issue the CA with a name constraint permitting URI host <trust-domain>"
    if len(uris) != 1:
        raise TrustError(
            f"the CA {ca.subject.rfc4514_string()!r} permits {len(uris)} URI name "
            f"constraints {uris!r}; it must permit exactly one, its trust domain",
            hint=hint,
        )
    problem = trust_domain_problem(uris[0])
    if uris[0].startswith("."):
        # RFC 5280: ".org-a.example" permits the subdomains of org-a.example, not it.
        problem = "a leading '.' permits other domains (subdomains), not one trust domain"
    if problem:
        raise TrustError(
            f"the CA {ca.subject.rfc4514_string()!r} has a URI name constraint {uris[0]!r} "
            f"that is not a trust domain: {problem}",
            hint=hint,
        )
    return uris[0]


_TENANT = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def validate_tenant(tenant: str) -> str:
    if not _TENANT.fullmatch(tenant):
        raise ConfigError(
            f"tenant {tenant!r} is not a valid name",
            hint="use 1-63 lowercase letters, digits and '-', e.g. 'billing'",
        )
    return tenant


#: Ids parsed, remembered by their exact text: the same few host ids are parsed several
#: times per arrival (trust lookups, grants, admission), and an id is an immutable value,
#: a pure function of its text. Refusals raise and are not remembered; the bound keeps a
#: peer sending many distinct ids from growing this.
PARSED_IDS_REMEMBERED = 1024


@functools.lru_cache(maxsize=PARSED_IDS_REMEMBERED)
def _parsed_host(uri: str) -> HostId:
    return HostId._parse(uri)


@functools.lru_cache(maxsize=PARSED_IDS_REMEMBERED)
def _parsed_object(uri: str) -> ObjectId:
    return ObjectId._parse(uri)
