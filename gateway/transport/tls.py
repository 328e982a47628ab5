"""mTLS credentials and the check of who is on the other end.

gRPC verifies a client certificate against the *union* of every trusted CA. A CA of
``org-b.example`` could therefore issue a certificate claiming ``spiffe://org-a.example/…``
and pass the handshake. :func:`authenticated_peer` closes that gap: the certificate must
have been issued by a CA carried in the signed trust bundle of the very trust domain its
SPIFFE id names (which domain a CA speaks for is the bundle's word, not the CA's).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping

import grpc
from cryptography import x509

from gateway.errors import PeerMismatchError, UntrustedKeyError
from gateway.identity import (
    certificate_spiffe_id,
    load_peer_certificate,
    verify_certificate_for_domain,
)

MAX_MESSAGE_BYTES = 32 << 20

CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
)


def server_credentials(
    *, certificate: bytes, private_key: bytes, client_roots: bytes
) -> grpc.ServerCredentials:
    """Server TLS that requires and verifies a client certificate (mTLS, always on)."""
    return grpc.ssl_server_credentials(
        [(private_key, certificate)], root_certificates=client_roots, require_client_auth=True
    )


def reloadable_server_credentials(
    current: Callable[[], tuple[bytes, bytes, bytes]],
) -> grpc.ServerCredentials:
    """Server mTLS whose certificate, key and client roots follow ``current()`` (the
    certificate, its key, the concatenated client roots): gRPC asks before every new
    handshake, so a reloaded trust bundle or host certificate applies to the next
    connection, while connections already up keep what they were made with."""
    served = current()

    def configuration(values: tuple[bytes, bytes, bytes]) -> grpc.ServerCertificateConfiguration:
        certificate, private_key, roots = values
        return grpc.ssl_server_certificate_configuration(
            [(private_key, certificate)], root_certificates=roots
        )

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        nonlocal served
        values = current()
        if values == served:
            return None  # unchanged: gRPC keeps the configuration it has
        served = values
        return configuration(values)

    return grpc.dynamic_ssl_server_credentials(
        configuration(served), fetch, require_client_authentication=True
    )


def channel_credentials(
    *, roots: bytes, certificate: bytes, private_key: bytes
) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=roots, private_key=private_key, certificate_chain=certificate
    )


#: Peers whose certificate was found issued for their domain, remembered per
#: (certificate, the chain presented with it, that domain's CAs). Every RPC asks again
#: (a connection's certificate does not change, but each call is checked on its own),
#: and parsing the certificate and verifying its issuer's signature was the largest
#: single cost of a small Prepare. Keyed by the certificate; the chain is compared, not
#: hashed (gRPC hands both over as new bytes with every call: joined and hashed, a
#: remembered peer cost 10,100 instructions, 7,200 so; callgrind).
_ACCEPTED_PEERS: OrderedDict[bytes, tuple[str, tuple[bytes, ...], str, bytes]] = OrderedDict()
ACCEPTED_PEERS_CACHED = 256


def authenticated_peer(
    auth_context: Mapping[str, list[bytes]], authorities: Mapping[str, tuple[bytes, ...]]
) -> str:
    """The SPIFFE id of the peer, after checking its certificate was issued by a CA of the
    trust bundle of the domain it claims (``authorities``: trust domain -> its CAs).

    A certificate accepted before is accepted again without parsing it while its domain's
    CAs are the same bytes (a reload that changes them checks it afresh). Time plays no
    part in this check (the TLS handshake checked validity), so the answer cannot go
    stale; refusals are never remembered."""
    certificates = auth_context.get("x509_pem_cert") or []
    if not certificates:
        raise PeerMismatchError(
            "the peer presented no client certificate", hint="connect with mTLS"
        )
    pem = bytes(certificates[0])
    # The whole presented chain must be the same: an intermediate may decide the path
    # check.
    presented = b"".join(auth_context.get("x509_pem_cert_chain") or [])
    known = _ACCEPTED_PEERS.get(pem)
    if known is not None and known[3] == presented and authorities.get(known[0]) == known[1]:
        return known[2]
    cert = load_peer_certificate(pem)  # parsed once for both checks
    host = certificate_spiffe_id(cert)
    domain_authorities = authorities.get(host.trust_domain)
    if not domain_authorities:
        raise UntrustedKeyError(
            f"peer {host} belongs to {host.trust_domain}, whose CA this host does not trust",
            hint=f"import {host.trust_domain}'s trust bundle with `gateway trust import`; a "
            "running `gateway serve` uses it within seconds (at once on SIGHUP), no restart",
        )
    # The whole chain the peer presented: a host certificate may be issued by an
    # intermediate CA of its domain, which the path check needs to see.
    intermediates = [c for c in _certificates(presented) if c != cert]
    accepted = str(
        verify_certificate_for_domain(
            cert, host, domain_authorities, host.trust_domain, intermediates=intermediates
        )
    )
    _ACCEPTED_PEERS[pem] = (host.trust_domain, tuple(domain_authorities), accepted, presented)
    _ACCEPTED_PEERS.move_to_end(pem)  # a replaced entry is the newest
    while len(_ACCEPTED_PEERS) > ACCEPTED_PEERS_CACHED:
        _ACCEPTED_PEERS.popitem(last=False)
    return accepted


def _certificates(pem: bytes) -> list[x509.Certificate]:
    """The certificates of a PEM chain; none if it does not parse (then the path check
    finds no intermediate, and a leaf that needs one is refused)."""
    if not pem:
        return []
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError:
        return []
