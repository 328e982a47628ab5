"""Host configuration: parsed once, at the edge, into frozen values passed down explicitly.

A configuration file is YAML. Every problem is reported as one line naming the file,
the key and what to do, e.g.::

    host.yaml: peers[0].address: expected HOST:PORT, got 'localhost' — write it as 127.0.0.1:7002

Relative paths in the file are relative to the file's own directory, so a host
directory can be moved as a whole.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from gateway._decode import check_document
from gateway.archive import CompactionPolicy
from gateway.authority import HostPolicy
from gateway.errors import AuthorityError, ConfigError
from gateway.identity import HostId, validate_tenant
from gateway.tenancy import MAX_QUOTA, Tenancy, TenantLimits

_ADDRESS = re.compile(r"(?P<host>[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:]+\]):(?P<port>\d{1,5})")
#: Longer than any sensible timeout, short enough for every timer the gateway feeds it to.
_MAX_SECONDS = 365 * 24 * 3600
_MIN_SECONDS = 0.001
_SEE_EXAMPLE = "see README.md; `gateway init DIR --host-id ID` writes a complete file"

EXAMPLE = """\
host:
  id: spiffe://org-a.example/cluster/east/gateway
  region: eu-west
listen: 127.0.0.1:7001
tls:
  certificate: tls/host.crt
  private_key: tls/host.key
  authority: tls/ca.crt
keys: keys
store:
  sqlite: state.db
tenants:
  - default
  - name: billing
    max_objects: 1000
    max_bytes: 1073741824
    require_authority: true
peers:
  - id: spiffe://org-b.example/cluster/west/gateway
    address: 127.0.0.1:7002
    server_name: localhost
    tenants: [default]
"""


def listen_address(text: str) -> str:
    """A listen address as ``--listen`` takes it: HOST:PORT, port 0 to let the OS choose;
    a ConfigError giving the expected form otherwise (before anything is written)."""
    match = _ADDRESS.fullmatch(text)
    if not match or not 0 <= int(match["port"]) <= 65535:
        raise ConfigError(
            f"expected HOST:PORT for the listen address, got {text!r}",
            hint="write it as 127.0.0.1:7001 (port 0 lets the OS choose)",
        )
    return text


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsConfig:
    certificate: Path
    private_key: Path
    authority: Path  #: this trust domain's CA certificate, published in its trust bundle


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerConfig:
    id: HostId
    address: str  #: HOST:PORT
    server_name: str  #: the DNS name its TLS certificate carries
    #: the tenants this peer may deliver objects into (none unless listed)
    tenants: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True, kw_only=True)
class HandoffConfig:
    transfer_ttl: timedelta = timedelta(seconds=120)  #: how long a sealed transfer stays valid
    clock_skew: timedelta = timedelta(seconds=60)  #: tolerated difference between host clocks
    rpc_timeout: timedelta = timedelta(seconds=10)  #: deadline of one RPC attempt
    retry_attempts: int = 5  #: attempts per RPC before giving up on a peer
    #: a staged copy older than this asks the source for a decision
    stage_timeout: timedelta = timedelta(seconds=30)
    #: issue a narrowed child grant when an object arrives (if its leaf grant allows)
    attenuate_on_rehost: bool = False
    #: how long settled migrations' records are kept (None: the minimum, see
    #: gateway.handoff.pruning; a shorter value is raised to that minimum)
    settled_retention: timedelta | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DaprStoreConfig:
    """State through a Dapr sidecar (``store: {dapr: ...}``)."""

    state_store: str  #: the Dapr state component (transactional, with ETags)
    grpc_endpoint: str | None = None  #: default: DAPR_GRPC_ENDPOINT / DAPR_GRPC_PORT
    http_endpoint: str | None = None  #: default: DAPR_HTTP_ENDPOINT / DAPR_HTTP_PORT


@dataclass(frozen=True, slots=True, kw_only=True)
class DaprConfig:
    """Pub/sub and jobs through the sidecar (``dapr: ...``)."""

    pubsub: str | None = None  #: component for gateway events, as CloudEvents
    app_port: int | None = None  #: loopback gRPC port the sidecar calls for job triggers
    jobs: bool = False  #: drive evaluation cycles with the Dapr Jobs API
    #: Topics the app subscribes to on ``pubsub`` (served by ListTopicSubscriptions), whose
    #: messages wake the objects here subscribed to them (gateway/runtime/events.py).
    subscribe: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ObservabilityConfig:
    """Metrics, reflection and log format (``observability: ...``; docs/observability.md)."""

    #: HOST:PORT of the Prometheus endpoint; None: no endpoint (the default)
    metrics_listen: str | None = None
    reflection: bool = True  #: gRPC server reflection on the mTLS port
    log_format: str | None = None  #: text or json (flag and $GATEWAY_LOG_FORMAT win)


@dataclass(frozen=True, slots=True, kw_only=True)
class LineageConfig:
    """Lineage compaction and repeat folding (``lineage: ...``; docs/lineage.md)."""

    #: when objects held here are compacted; on by default (``compaction: false`` is off)
    compaction: CompactionPolicy = field(default_factory=CompactionPolicy)
    #: a cycle recording exactly the events of the cycle before it is counted, not copied
    fold_repeats: bool = True
    #: where archive segments go: a directory, or None for the host's own store (the
    #: default, and the only choice on a Dapr host without a shared filesystem)
    archive_dir: Path | None = None
    #: segments in the host's store of an object that left are deleted this long after
    #: it left; None (the default) keeps them forever (gateway.runtime.sweep)
    archive_retention: timedelta | None = None
    #: with ``archive_retention``: pruned segments are first written here as files
    archive_export_dir: Path | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    source: Path  #: the file this came from
    host: HostId
    region: str = ""
    listen: str
    tls: TlsConfig
    keys: Path
    sqlite: Path | None = None  #: the embedded store (exactly one of sqlite / dapr_store)
    dapr_store: DaprStoreConfig | None = None
    dapr: DaprConfig | None = None
    tenants: tuple[str, ...] = ("default",)
    #: per-tenant limits (quotas, require_authority); tenants not named have none
    tenant_limits: Mapping[str, TenantLimits] = field(default_factory=dict)
    peers: tuple[PeerConfig, ...] = ()
    handoff: HandoffConfig = field(default_factory=HandoffConfig)
    policy: HostPolicy = field(default_factory=HostPolicy.empty)
    #: app id -> base URL for ``invoke:<app>/<method>`` actions (HTTP POST <url>/<method>),
    #: on the embedded default only: a Dapr host invokes through Dapr service invocation
    invoke: Mapping[str, str] = field(default_factory=dict)
    observability: ObservabilityConfig = field(default_factory=ObservabilityConfig)
    lineage: LineageConfig = field(default_factory=LineageConfig)

    @property
    def tenancy(self) -> Tenancy:
        """Tenant limits and peer bindings, as the handoff checks them."""
        return Tenancy(
            limits=MappingProxyType(dict(self.tenant_limits)),
            bindings=MappingProxyType({str(peer.id): peer.tenants for peer in self.peers}),
            source=str(self.source),
        )

    def peer(self, host_id: str) -> PeerConfig:
        from gateway.errors import UnknownPeerError

        for peer in self.peers:
            if str(peer.id) == host_id:
                return peer
        if host_id == str(self.host):
            raise UnknownPeerError(
                f"{host_id} is this host itself, not a peer", hint="name another host"
            )
        known = ", ".join(str(p.id) for p in self.peers) or "none"
        raise UnknownPeerError(
            f"{host_id} is not a configured peer of {self.host} (peers: {known})",
            hint=f"add it under 'peers:' in {self.source}",
        )


_HANDOFF_KEYS = {
    "transfer_ttl_seconds": "transfer_ttl",
    "clock_skew_seconds": "clock_skew",
    "rpc_timeout_seconds": "rpc_timeout",
    "retry_attempts": "retry_attempts",
    "stage_timeout_seconds": "stage_timeout",
    "attenuate_on_rehost": "attenuate_on_rehost",
    "settled_retention_seconds": "settled_retention",
}


class _Reader:
    """Walks a parsed YAML document, naming every key it complains about."""

    def __init__(self, source: Path) -> None:
        self.source = source

    def fail(self, where: str, problem: str, fix: str) -> ConfigError:
        return ConfigError(f"{self.source}: {where or '(top level)'}: {problem}", hint=fix)

    def mapping(
        self, value: Any, where: str, allowed: set[str], required: set[str]
    ) -> Mapping[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, f"expected a mapping, got {_kind(value)}", _SEE_EXAMPLE)
        for key in value:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
                fix = (
                    f"did you mean '{close[0]}'?"
                    if close
                    else f"allowed keys: {', '.join(sorted(allowed))}"
                )
                raise self.fail(_join(where, str(key)), "unknown key", fix)
        for key in sorted(required - set(value)):
            raise self.fail(_join(where, key), "missing", f"add it; {_SEE_EXAMPLE}")
        return value

    def string(self, value: Any, where: str, fix: str = "quote the value") -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(where, f"expected a non-empty string, got {_kind(value)}", fix)
        return value

    def path(self, value: Any, where: str) -> Path:
        text = self.string(value, where)
        return (self.source.parent / text).resolve()

    def host_id(self, value: Any, where: str) -> HostId:
        text = self.string(
            value, where, "write a SPIFFE id, e.g. spiffe://org-a.example/cluster/east/gateway"
        )
        try:
            return HostId.parse(text)
        except ConfigError as exc:
            raise self.fail(
                where, exc.reason, exc.hint or "use spiffe://<trust-domain>/<path>"
            ) from exc

    def address(self, value: Any, where: str, *, any_port: bool = False) -> str:
        """HOST:PORT; port 0 (let the OS choose) only where ``any_port`` (a listen address)."""
        fix = "write it as 127.0.0.1:7002"
        text = self.string(value, where, fix)
        match = _ADDRESS.fullmatch(text)
        lowest = 0 if any_port else 1
        if not match or not lowest <= int(match["port"]) <= 65535:
            raise self.fail(where, f"expected HOST:PORT, got {text!r}", fix)
        return text

    def seconds(self, value: Any, where: str) -> timedelta:
        # YAML has .nan and .inf, and ints of any size: refuse them here rather than
        # letting timedelta() fail later with an error that names no key.
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or not _MIN_SECONDS <= value <= _MAX_SECONDS
        ):
            raise self.fail(
                where,
                f"expected a positive number of seconds from {_MIN_SECONDS} up to {_MAX_SECONDS}, "
                f"got {_kind(value)}",
                "e.g. 30",
            )
        # Kept to the millisecond, the precision of every time the gateway signs: a
        # transfer expires at issued_at + transfer_ttl, and a receiver refuses a time
        # with sub-millisecond digits (it would have two byte forms).
        return timedelta(milliseconds=round(value * 1000))

    def count(self, value: Any, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise self.fail(where, f"expected a whole number ≥ 1, got {_kind(value)}", "e.g. 5")
        return value

    def flag(self, value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(
                where, f"expected true or false, got {_kind(value)}", "write true or false"
            )
        return value


def _tenant(r: _Reader, item: Any, where: str) -> tuple[str, TenantLimits]:
    """One entry of ``tenants:``: a name, or ``{name, max_objects, max_bytes, require_authority}``."""
    if not isinstance(item, dict):
        return _tenant_name(r, item, where), TenantLimits()
    section = r.mapping(
        item, where, {"name", "max_objects", "max_bytes", "require_authority"}, {"name"}
    )
    return _tenant_name(r, section["name"], f"{where}.name"), TenantLimits(
        max_objects=_quota(r, section["max_objects"], f"{where}.max_objects")
        if "max_objects" in section
        else None,
        max_bytes=_quota(r, section["max_bytes"], f"{where}.max_bytes")
        if "max_bytes" in section
        else None,
        require_authority=r.flag(section["require_authority"], f"{where}.require_authority")
        if "require_authority" in section
        else False,
    )


def _tenant_name(r: _Reader, value: Any, where: str) -> str:
    try:
        return validate_tenant(r.string(value, where))
    except ConfigError as exc:
        if exc.reason.startswith(str(r.source)):
            raise
        raise r.fail(where, exc.reason, exc.hint or "") from exc


def _quota(r: _Reader, value: Any, where: str) -> int:
    # 0 is a valid quota: the tenant takes nothing more (e.g. while it is drained).
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_QUOTA:
        raise r.fail(
            where,
            f"expected a whole number from 0 to {MAX_QUOTA}, got {_kind(value)}",
            "e.g. 1000; leave the key out for no limit",
        )
    return value


def _bound_tenants(r: _Reader, value: Any, where: str, hosted: list[str]) -> frozenset[str]:
    """``peers[i].tenants``: hosted tenants only, so a typo cannot silently bind nothing."""
    if not isinstance(value, list):
        raise r.fail(
            where,
            f"expected a list of tenant names, got {_kind(value)}",
            "e.g. [default]; leave the key out to let the peer deliver into no tenant",
        )
    bound: set[str] = set()
    for index, item in enumerate(value):
        name = _tenant_name(r, item, f"{where}[{index}]")
        if name not in hosted:
            raise r.fail(
                f"{where}[{index}]",
                f"tenant {name!r} is not hosted here (tenants: {', '.join(hosted)})",
                "bind the peer only to tenants listed under 'tenants:', or add it there",
            )
        bound.add(name)
    return frozenset(bound)


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, bool):  # YAML reads yes/no/on/off as booleans too
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, list) and not value:
        return "an empty list"
    if isinstance(value, int) and value.bit_length() > 64:
        return "a very large integer"  # repr() of one with thousands of digits raises
    if isinstance(value, int | float):
        return f"{type(value).__name__} {value!r}"
    return type(value).__name__


class _DuplicateKeyError(yaml.MarkedYAMLError):
    """A mapping names the same key twice (plain YAML would silently keep the last)."""


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys: with two ``handoff:`` blocks, the
    one an operator edited might be the one silently ignored."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _value_node in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                continue  # unhashable: construct_mapping below reports it
            if duplicate:
                raise _DuplicateKeyError(
                    problem=f"key {key!r} appears twice", problem_mark=key_node.start_mark
                )
        return super().construct_mapping(node, deep=deep)


def _location(exc: yaml.YAMLError, text: str) -> str:
    mark = getattr(exc, "problem_mark", None)
    if mark is not None:
        return f"line {mark.line + 1}, column {mark.column + 1}"
    position = getattr(exc, "position", None)  # ReaderError: a bad character
    if isinstance(position, int):
        line = text.count("\n", 0, position) + 1
        column = position - (text.rfind("\n", 0, position) + 1) + 1
        return f"line {line}, column {column}"
    return "(unknown position)"


def load_config(path: str | Path) -> Config:
    """Read and check a host configuration file."""
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{source}: no such file",
            hint="pass --config FILE (or set GATEWAY_CONFIG); `gateway init DIR` writes one",
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{source}: not UTF-8 text (byte {exc.start})", hint="save the file as UTF-8"
        ) from exc
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror or exc}") from exc
    try:
        document = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKeyError as exc:
        raise ConfigError(
            f"{source}: {_location(exc, text)}: {exc.problem}", hint="keep only one of them"
        ) from exc
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        context = getattr(exc, "context", None)
        if context and problem.startswith("but "):  # "expected …" / "but found …"
            problem = f"{context} {problem}"
        raise ConfigError(
            f"{source}: {_location(exc, text)}: not valid YAML ({problem})",
            hint="check indentation and quoting there",
        ) from exc
    except RecursionError as exc:  # [[[[… nests deeper than the YAML composer can go
        raise ConfigError(
            f"{source}: nested too deeply to be a configuration", hint=_SEE_EXAMPLE
        ) from exc
    except (ValueError, OverflowError) as exc:
        # PyYAML's constructors convert scalars with int() and date(): an integer of
        # thousands of digits or a date like 2026-02-30 fail there, outside YAMLError.
        raise ConfigError(
            f"{source}: a value cannot be read: {_one_line(str(exc))}",
            hint="check the numbers and dates in the file",
        ) from exc
    check_document(document, error=ConfigError, what=str(source))
    return parse_config(document, source=source.resolve())


def _one_line(text: str) -> str:
    return " ".join(text.split())[:200]


def parse_config(document: Any, *, source: Path) -> Config:
    r = _Reader(source)
    top = (
        r.mapping(
            document,
            "",
            {
                "host",
                "listen",
                "tls",
                "keys",
                "store",
                "tenants",
                "peers",
                "handoff",
                "policy",
                "invoke",
                "dapr",
                "observability",
                "lineage",
            },
            {"host", "listen", "tls", "keys", "store"},
        )
        if document is not None
        else None
    )
    if top is None:
        raise r.fail("", "the file is empty", _SEE_EXAMPLE)

    host = r.mapping(top["host"], "host", {"id", "region"}, {"id"})
    host_id = r.host_id(host["id"], "host.id")
    tls = r.mapping(
        top["tls"],
        "tls",
        {"certificate", "private_key", "authority"},
        {"certificate", "private_key", "authority"},
    )
    store = r.mapping(top["store"], "store", {"sqlite", "dapr"}, set())
    if len(store) != 1:
        raise r.fail(
            "store", "give exactly one of 'sqlite' or 'dapr'", "e.g. store: {sqlite: state.db}"
        )
    dapr_store = None
    if "dapr" in store:
        section = r.mapping(
            store["dapr"],
            "store.dapr",
            {"state_store", "grpc_endpoint", "http_endpoint"},
            {"state_store"},
        )
        dapr_store = DaprStoreConfig(
            state_store=r.string(section["state_store"], "store.dapr.state_store"),
            grpc_endpoint=r.address(section["grpc_endpoint"], "store.dapr.grpc_endpoint")
            if "grpc_endpoint" in section
            else None,
            http_endpoint=r.string(section["http_endpoint"], "store.dapr.http_endpoint")
            if "http_endpoint" in section
            else None,
        )
    dapr = None
    if "dapr" in top:
        section = r.mapping(top["dapr"], "dapr", {"pubsub", "app_port", "jobs", "subscribe"}, set())
        app_port = section.get("app_port")
        if app_port is not None and (
            isinstance(app_port, bool) or not isinstance(app_port, int) or not 0 < app_port < 65536
        ):
            raise r.fail(
                "dapr.app_port", f"expected a port number, got {_kind(app_port)}", "e.g. 50061"
            )
        jobs = r.flag(section["jobs"], "dapr.jobs") if "jobs" in section else False
        if jobs and app_port is None:
            raise r.fail(
                "dapr.app_port", "missing", "jobs call the gateway back on this port; e.g. 50061"
            )
        topics = section.get("subscribe", [])
        if not isinstance(topics, list) or not all(
            isinstance(t, str) and re.fullmatch(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)+", t)
            for t in topics
        ):
            raise r.fail(
                "dapr.subscribe",
                "expected a list of <name>/<name> topics",
                "e.g. [orders/cancelled]",
            )
        if topics and (app_port is None or "pubsub" not in section):
            raise r.fail(
                "dapr.subscribe",
                "needs dapr.pubsub and dapr.app_port",
                "the sidecar delivers the topics' messages to the app port",
            )
        dapr = DaprConfig(
            pubsub=r.string(section["pubsub"], "dapr.pubsub") if "pubsub" in section else None,
            app_port=app_port,
            jobs=jobs,
            subscribe=tuple(dict.fromkeys(topics)),
        )

    tenants_value = top.get("tenants", ["default"])
    if not isinstance(tenants_value, list) or not tenants_value:
        raise r.fail(
            "tenants", f"expected a non-empty list, got {_kind(tenants_value)}", "e.g. [default]"
        )
    tenants: list[str] = []
    tenant_limits: dict[str, TenantLimits] = {}
    for index, item in enumerate(tenants_value):
        name, limits = _tenant(r, item, f"tenants[{index}]")
        if name in tenants:
            raise r.fail(
                f"tenants[{index}]",
                f"tenant {name!r} is already listed as tenants[{tenants.index(name)}]",
                "list each tenant once",
            )
        tenants.append(name)
        if limits != TenantLimits():
            tenant_limits[name] = limits

    peers: list[PeerConfig] = []
    peers_value = top.get("peers", [])
    if not isinstance(peers_value, list):
        raise r.fail(
            "peers", f"expected a list, got {_kind(peers_value)}", "write '- id: ...' items"
        )
    for index, item in enumerate(peers_value):
        where = f"peers[{index}]"
        peer = r.mapping(
            item, where, {"id", "address", "server_name", "tenants"}, {"id", "address"}
        )
        peer_id = r.host_id(peer["id"], f"{where}.id")
        if peer_id == host_id:
            raise r.fail(
                f"{where}.id",
                f"{peer_id} is this host itself (host.id)",
                "list only other hosts as peers",
            )
        for earlier, other in enumerate(peers):
            if other.id == peer_id:
                raise r.fail(
                    f"{where}.id",
                    f"{peer_id} is already listed as peers[{earlier}]",
                    "keep one entry per peer id",
                )
        address = r.address(peer["address"], f"{where}.address")
        peers.append(
            PeerConfig(
                id=peer_id,
                address=address,
                server_name=r.string(
                    peer.get("server_name", address.rsplit(":", 1)[0]), f"{where}.server_name"
                ),
                tenants=_bound_tenants(r, peer.get("tenants", []), f"{where}.tenants", tenants),
            )
        )

    handoff = r.mapping(top.get("handoff", {}), "handoff", set(_HANDOFF_KEYS), set())
    handoff_values: dict[str, Any] = {}
    for key, value in handoff.items():
        attribute = _HANDOFF_KEYS[key]
        where = f"handoff.{key}"
        if attribute == "retry_attempts":
            handoff_values[attribute] = r.count(value, where)
        elif attribute == "attenuate_on_rehost":
            handoff_values[attribute] = r.flag(value, where)
        else:
            handoff_values[attribute] = r.seconds(value, where)

    invoke_value = top.get("invoke", {})
    if not isinstance(invoke_value, dict):
        raise r.fail(
            "invoke",
            f"expected a mapping of app id to URL, got {_kind(invoke_value)}",
            "e.g. payments: http://127.0.0.1:9000",
        )
    invoke: dict[str, str] = {}
    for app, url in invoke_value.items():
        where = f"invoke.{app}"
        text = r.string(url, where)
        if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", text):
            raise r.fail(
                where, f"expected an http(s) URL, got {text!r}", "e.g. http://127.0.0.1:9000"
            )
        invoke[str(app)] = text
    if invoke and (dapr_store is not None or dapr is not None):
        # Two ways to reach an app would leave the operator guessing which one acted.
        raise r.fail(
            "invoke",
            "on a Dapr host, invoke actions go through Dapr service invocation, not these URLs",
            "remove 'invoke:' and declare each app to daprd instead: a Dapr app id, or an "
            "HTTPEndpoint resource (metadata.name: <app>, spec.baseUrl: <url>)",
        )

    try:
        policy = HostPolicy.from_config(top.get("policy"), str(source))
    except AuthorityError as exc:
        raise ConfigError(exc.reason, hint=exc.hint) from exc
    for index, ceiling in enumerate(policy.ceilings):
        # A ceiling for a tenant not hosted here would bound nothing: most likely a typo
        # that leaves the tenant it meant without its ceiling.
        if ceiling.tenant is not None and ceiling.tenant not in tenants:
            raise r.fail(
                f"policy.ceilings[{index}].tenant",
                f"tenant {ceiling.tenant!r} is not hosted here (tenants: {', '.join(tenants)})",
                "name a tenant listed under 'tenants:', or add it there",
            )

    observed = r.mapping(
        top.get("observability", {}),
        "observability",
        {"metrics_listen", "reflection", "log_format"},
        set(),
    )
    log_format = (
        r.string(observed["log_format"], "observability.log_format")
        if "log_format" in observed
        else None
    )
    if log_format not in (None, "text", "json"):
        raise r.fail("observability.log_format", f"got {log_format!r}", "write text or json")
    observability = ObservabilityConfig(
        metrics_listen=r.address(
            observed["metrics_listen"], "observability.metrics_listen", any_port=True
        )
        if "metrics_listen" in observed
        else None,
        reflection=r.flag(observed["reflection"], "observability.reflection")
        if "reflection" in observed
        else True,
        log_format=log_format,
    )

    return Config(
        source=source,
        host=host_id,
        region=r.string(host["region"], "host.region") if "region" in host else "",
        listen=r.address(top["listen"], "listen", any_port=True),
        tls=TlsConfig(
            certificate=r.path(tls["certificate"], "tls.certificate"),
            private_key=r.path(tls["private_key"], "tls.private_key"),
            authority=r.path(tls["authority"], "tls.authority"),
        ),
        keys=r.path(top["keys"], "keys"),
        sqlite=r.path(store["sqlite"], "store.sqlite") if "sqlite" in store else None,
        dapr_store=dapr_store,
        dapr=dapr,
        tenants=tuple(tenants),
        tenant_limits=tenant_limits,
        peers=tuple(peers),
        handoff=HandoffConfig(**handoff_values),
        policy=policy,
        invoke=invoke,
        observability=observability,
        lineage=_lineage(r, top.get("lineage", {})),
    )


_COMPACTION_KEYS = {
    "max_entries",
    "keep_entries",
    "max_bytes",
    "max_age_seconds",
    "archive_dir",
    "archive_retention_seconds",
    "archive_export_dir",
}


def _lineage(r: _Reader, value: Any) -> LineageConfig:
    """``lineage: {compaction: {...} | true | false, fold_repeats: bool}``; every limit
    has a default, ``null`` switches one off, ``compaction: false`` switches it off."""
    section = r.mapping(value, "lineage", {"compaction", "fold_repeats", "custody_keep"}, set())
    fold = (
        r.flag(section["fold_repeats"], "lineage.fold_repeats")
        if "fold_repeats" in section
        else True
    )
    # ADR 0010 step 2: handoffs kept carried when compacting (checked by CompactionPolicy
    # against the receivers' MIN_CARRIED_HANDOFFS and MAX_HANDOFFS).
    custody: dict[str, Any] = (
        {"custody_keep": r.count(section["custody_keep"], "lineage.custody_keep")}
        if "custody_keep" in section
        else {}
    )
    try:
        # On its own first, so that its fault is named by its own key, also when
        # ``compaction`` is a mapping (whose faults are named by ``lineage.compaction``).
        CompactionPolicy(**custody)
    except ConfigError as exc:
        raise r.fail("lineage.custody_keep", exc.reason, exc.hint or "see docs/lineage.md") from exc
    compaction = section.get("compaction", True)
    if isinstance(compaction, bool):
        return LineageConfig(
            compaction=CompactionPolicy(enabled=compaction, **custody), fold_repeats=fold
        )
    where = "lineage.compaction"
    given = r.mapping(compaction, where, _COMPACTION_KEYS, set())
    values: dict[str, Any] = {}
    for key in ("max_entries", "keep_entries"):
        if key in given:
            values[key] = r.count(given[key], f"{where}.{key}")
    if "max_bytes" in given:
        values["max_bytes"] = (
            None
            if given["max_bytes"] is None
            else r.count(given["max_bytes"], f"{where}.max_bytes")
        )
    if "max_age_seconds" in given:
        age = given["max_age_seconds"]
        values["max_age"] = None if age is None else r.seconds(age, f"{where}.max_age_seconds")
    try:
        policy = CompactionPolicy(**values, **custody)
    except ConfigError as exc:
        raise r.fail(where, exc.reason, exc.hint or "see docs/lineage.md") from exc
    archive_dir = (
        r.path(given["archive_dir"], f"{where}.archive_dir") if "archive_dir" in given else None
    )
    retention = given.get("archive_retention_seconds")
    export_dir = given.get("archive_export_dir")
    if export_dir is not None and retention is None:
        raise r.fail(
            f"{where}.archive_export_dir",
            "names where pruned segments go, but archive_retention_seconds is not set "
            "(nothing is pruned)",
            "set lineage.compaction.archive_retention_seconds, or leave archive_export_dir out",
        )
    return LineageConfig(
        compaction=policy,
        fold_repeats=fold,
        archive_dir=archive_dir,
        archive_retention=None
        if retention is None
        else r.seconds(retention, f"{where}.archive_retention_seconds"),
        archive_export_dir=None
        if export_dir is None
        else r.path(export_dir, f"{where}.archive_export_dir"),
    )
