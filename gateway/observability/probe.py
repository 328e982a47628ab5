"""``gateway health``: ask a host's own gRPC port for its grpc.health.v1 status.

It connects over the same mTLS as a peer, with the host's own certificate and key
(the server trusts its own trust domain's CA), so a probe passing means what a peer
needs works: the port is open, the certificate is served and accepted, and the host
is ready. It opens no store and loads no keys: it is cheap enough for an exec probe.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from gateway.config import Config
from gateway.errors import ConfigError, PeerUnavailableError
from gateway.observability.health import GATEWAY_SERVICE

#: Bind addresses meaning "every interface": the probe then calls loopback.
_WILDCARDS = {
    "0.0.0.0": "127.0.0.1",  # noqa: S104 - recognised, not bound
    "::": "[::1]",
    "[::]": "[::1]",
    "": "127.0.0.1",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthAnswer:
    address: str
    service: str
    status: str  #: SERVING, NOT_SERVING, SERVICE_UNKNOWN or UNKNOWN

    @property
    def serving(self) -> bool:
        return self.status == "SERVING"


def probe_address(listen: str) -> str:
    """Where to reach a host that listens on ``listen`` from inside its own machine/pod."""
    host, _, port = listen.rpartition(":")
    return f"{_WILDCARDS.get(host, host)}:{port}"


def _server_name(certificate: bytes, address: str) -> str | None:
    """A name the host's certificate is valid for, if the address itself is not one
    (calling 127.0.0.1 when the certificate names only gateway.east.example)."""
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(certificate)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    host = address.rpartition(":")[0].strip("[]")
    dns = san.get_values_for_type(x509.DNSName)
    try:
        if ipaddress.ip_address(host) in san.get_values_for_type(x509.IPAddress):
            return None
    except ValueError:
        if host in dns:
            return None
    return dns[0] if dns else None


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what}: {exc.strerror}") from exc


async def check_health(
    config: Config, *, service: str = "", address: str | None = None, deadline: float = 5.0
) -> HealthAnswer:
    """The status the host of ``config`` reports for ``service`` ("" = the whole server)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from gateway.transport.tls import channel_credentials

    address = address or probe_address(config.listen)
    certificate = _read(config.tls.certificate, "TLS certificate")
    credentials = channel_credentials(
        roots=_read(config.tls.authority, "CA certificate"),
        certificate=certificate,
        private_key=_read(config.tls.private_key, "TLS private key"),
    )
    name = _server_name(certificate, address)
    options = [("grpc.ssl_target_name_override", name)] if name else []
    async with grpc.aio.secure_channel(address, credentials, options=options) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            answer = await stub.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=deadline
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.NOT_FOUND:
                return HealthAnswer(address=address, service=service, status="SERVICE_UNKNOWN")
            raise PeerUnavailableError(
                f"{config.host} at {address} did not answer a health check "
                f"({exc.code().name}: {exc.details()})",
                hint="check that `gateway serve` runs with this configuration",
            ) from exc
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
    return HealthAnswer(address=address, service=service, status=status)


__all__ = ["GATEWAY_SERVICE", "HealthAnswer", "check_health", "probe_address"]
