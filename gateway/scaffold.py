"""Create a working host directory: dev certificates, signing keys and a configuration file.

Layout written by :func:`init_host` (paths in the configuration are relative to it)::

    DIR/gateway.yaml     host configuration
    DIR/tls/host.crt     this host's mTLS certificate (SPIFFE id in a URI SAN)
    DIR/tls/host.key     its private key (mode 0600)
    DIR/tls/ca.crt       the trust domain's CA certificate
    DIR/keys/            signing keys and the domain's trust bundle (see gateway.keyring)
    DIR/state.db         the SQLite state store (created here: a host never creates it later)
    CA_DIR/ca.crt|ca.key the development CA, when no existing one is given

The CA here is a development convenience: production hosts get certificates from their
organization's PKI and only need ``gateway keys init`` and a configuration file.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from gateway.devcerts import CertifiedKey, make_ca, make_host_cert
from gateway.errors import ConfigError
from gateway.identity import HostId
from gateway.keyring import init_keys
from gateway.keys import Algorithm


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerEntry:
    id: str
    address: str
    server_name: str = "localhost"
    #: the tenants of this host the peer may deliver into (none if empty)
    tenants: tuple[str, ...] = ()


#: Where :func:`free_port` looks: below the kernel's ephemeral range (Linux: 32768 on).
FREE_PORTS_FROM = 20000
#: Ports this process handed out: never twice, as a world is built before it serves.
_HANDED_OUT: set[int] = set()


def _ephemeral_start() -> int:
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        return int(text.split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default; elsewhere the kernel's choice below is the fallback


def free_port() -> int:
    """A loopback port free now, for a configuration written before its server starts.

    Chosen below the kernel's ephemeral range: a port from that range can be given to
    any outgoing connection between now and the server's bind (a test server once failed
    with "address in use" that way); one below it is taken only by a process that names
    it. Falls back to the kernel's choice if no such port can be bound."""
    start = _ephemeral_start()
    span = start - FREE_PORTS_FROM
    for _ in range(64 if span > 0 else 0):
        port = FREE_PORTS_FROM + secrets.randbelow(span)
        if port in _HANDED_OUT:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if private:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
    else:
        path.write_bytes(data)


def create_ca(
    directory: Path, trust_domain: str, *, at: datetime, dns_names: Sequence[str] = ("localhost",)
) -> CertifiedKey:
    """A development CA for ``trust_domain`` in ``directory`` (ca.crt, ca.key). Its name
    constraints permit only ``dns_names`` (and the trust domain's SPIFFE ids)."""
    if (directory / "ca.key").exists():
        raise ConfigError(
            f"{directory}: a CA already exists here", hint="pass it with --ca instead"
        )
    ca = make_ca(trust_domain, dns_names=dns_names, now=at)
    _write(directory / "ca.crt", ca.cert_pem)
    _write(directory / "ca.key", ca.key_pem, private=True)
    return ca


def load_ca(directory: Path) -> CertifiedKey:
    try:
        return CertifiedKey(
            cert_pem=(directory / "ca.crt").read_bytes(),
            key_pem=(directory / "ca.key").read_bytes(),
        )
    except FileNotFoundError as exc:
        raise ConfigError(
            f"{directory}: no CA here ({exc.filename} is missing)",
            hint="create one with `gateway certs ca`",
        ) from exc


def issue_host_certificate(
    ca: CertifiedKey,
    host: HostId,
    directory: Path,
    *,
    at: datetime,
    dns_names: Sequence[str] = ("localhost",),
) -> None:
    issued = make_host_cert(ca, host, dns_names=dns_names, now=at)
    _write(directory / "host.crt", issued.cert_pem)
    _write(directory / "host.key", issued.key_pem, private=True)
    _write(directory / "ca.crt", ca.cert_pem)


def config_document(
    *,
    host: str,
    listen: str,
    region: str = "",
    tenants: Sequence[str] = ("default",),
    peers: Sequence[PeerEntry] = (),
) -> dict[str, Any]:
    document: dict[str, Any] = {
        "host": {"id": host, **({"region": region} if region else {})},
        "listen": listen,
        "tls": {
            "certificate": "tls/host.crt",
            "private_key": "tls/host.key",
            "authority": "tls/ca.crt",
        },
        "keys": "keys",
        "store": {"sqlite": "state.db"},
        "tenants": list(tenants),
    }
    if peers:
        document["peers"] = [
            {
                "id": p.id,
                "address": p.address,
                "server_name": p.server_name,
                **({"tenants": list(p.tenants)} if p.tenants else {}),
            }
            for p in peers
        ]
    return document


def write_config(path: Path, document: dict[str, Any]) -> None:
    header = "# Gateway host configuration (see README.md). Paths are relative to this file.\n"
    path.write_text(header + yaml.safe_dump(document, sort_keys=False), encoding="utf-8")


def create_store(config_path: Path) -> None:
    """Create the SQLite store a freshly written configuration names (``store: {sqlite:
    ...}``). Only a new host does this: opening a host never creates its store, so a
    mistyped path is an error instead of a new, empty store."""
    import asyncio

    from gateway.config import load_config
    from gateway.stores.sqlite import SqliteStore

    config = load_config(config_path)
    if config.sqlite is None:
        return  # a Dapr state store belongs to its sidecar
    if config.sqlite.exists():
        raise ConfigError(
            f"{config.sqlite} already exists", hint="choose an empty directory for a new host"
        )
    asyncio.run(SqliteStore.open(config.sqlite, create=True).close())


def init_host(
    directory: Path,
    *,
    host_id: str,
    listen: str,
    at: datetime,
    ca_directory: Path | None = None,
    region: str = "",
    tenants: Sequence[str] = ("default",),
    algorithm: Algorithm = Algorithm.ED25519,
    dns_names: Sequence[str] = ("localhost",),
) -> Path:
    """Create a complete host directory; returns the path of its configuration file.

    ``dns_names`` go into the host certificate (and, for a new CA, its name constraints):
    the names peers use as ``server_name`` to reach this host."""
    host = HostId.parse(host_id)
    config_path = directory / "gateway.yaml"
    if config_path.exists():
        raise ConfigError(f"{config_path} already exists", hint="choose an empty directory")
    if ca_directory is None:
        ca = create_ca(directory / "ca", host.trust_domain, at=at, dns_names=dns_names)
    else:
        ca = load_ca(ca_directory)
    issue_host_certificate(ca, host, directory / "tls", at=at, dns_names=dns_names)
    init_keys(
        directory / "keys",
        trust_domain=host.trust_domain,
        host=str(host),
        ca_certificate=ca.cert_pem,
        at=at,
        algorithm=algorithm,
    )
    write_config(
        config_path,
        config_document(host=str(host), listen=listen, region=region, tenants=tenants),
    )
    create_store(config_path)
    return config_path
