"""Tests for gateway.config: every bad file is reported as one line naming the file, the
key and the fix; a good file round-trips; relative paths follow the file, not the cwd.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import EXAMPLE, Config, HandoffConfig, load_config, parse_config
from gateway.errors import ConfigError, TenantBindingError, UnknownPeerError
from gateway.identity import HostId
from gateway.scaffold import PeerEntry, config_document, write_config
from gateway.tenancy import TenantLimits

HOST_A = "spiffe://org-a.example/cluster/east/gateway"
HOST_B = "spiffe://org-b.example/cluster/west/gateway"
HOST_C = "spiffe://org-c.example/dc/gateway"


def good_document() -> dict[str, Any]:
    return config_document(
        host=HOST_A,
        listen="127.0.0.1:7001",
        region="eu-west",
        tenants=("default", "billing"),
        peers=[
            PeerEntry(id=HOST_B, address="127.0.0.1:7002"),
            PeerEntry(id=HOST_C, address="[::1]:7003", server_name="c.example"),
        ],
    )


def _set(document: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """``document`` with ``path`` (``a.b``, ``peers[0].address``) set, or deleted if ...."""
    parts = [int(p) if p.isdigit() else p for p in re.split(r"\.|\[|\]\.?", path) if p]
    target: Any = document
    for part in parts[:-1]:
        target = target[part]
    if value is ...:
        del target[parts[-1]]
    else:
        target[parts[-1]] = value
    return document


def edited(*changes: tuple[str, Any]) -> str:
    document = good_document()
    for path, value in changes:
        _set(document, path, value)
    return yaml.safe_dump(document, sort_keys=False)


@dataclass(frozen=True, slots=True)
class Bad:
    name: str
    reason: str
    text: str
    key: str  #: where the message says the problem is
    fix: str  #: part of the hint
    problem: str = ""  #: part of the reason, after the key
    extra: dict[str, str] = field(default_factory=dict)


BAD = [
    # --- the document as a whole ---
    Bad("empty", "an empty file is not an empty config", "", "(top level)", "gateway init", "empty"),
    Bad("only-comments", "comments alone are empty too", "# host: x\n", "(top level)", "gateway init", "empty"),
    Bad("not-a-mapping", "a list is not a config", "- host\n- listen\n", "(top level)", "gateway init",
        "expected a mapping, got list"),
    Bad("scalar", "a string is not a config", "just text\n", "(top level)", "gateway init",
        "expected a mapping, got 'just text'"),
    # --- keys ---
    Bad("unknown-top-level-key", "a typo is named with the key it probably meant",
        edited(("peer", [])), "peer", "did you mean 'peers'?", "unknown key"),
    Bad("unknown-key-no-guess", "with no close match, the allowed keys are listed",
        edited(("colour", "blue")), "colour", "allowed keys: dapr, handoff, host, invoke", "unknown key"),
    Bad("unknown-nested-key", "nested keys are named with their path",
        edited(("host.regoin", "eu")), "host.regoin", "did you mean 'region'?", "unknown key"),
    Bad("unknown-handoff-key", "handoff settings carry their unit",
        edited(("handoff", {"rpc_timeout": 3})), "handoff.rpc_timeout",
        "did you mean 'rpc_timeout_seconds'?", "unknown key"),
    Bad("missing-listen", "a required key", edited(("listen", ...)), "listen", "add it", "missing"),
    Bad("missing-nested", "a required nested key", edited(("tls.authority", ...)), "tls.authority",
        "add it", "missing"),
    Bad("missing-peer-address", "a peer needs an address", edited(("peers[1].address", ...)),
        "peers[1].address", "add it", "missing"),
    Bad("section-not-mapping", "tls is a mapping of three files", edited(("tls", "tls/host.crt")),
        "tls", "gateway init", "expected a mapping, got 'tls/host.crt'"),
    Bad("section-empty", "'tls:' with nothing under it", edited(("tls", None)), "tls",
        "gateway init", "got nothing"),
    # --- values ---
    Bad("bad-host-id", "trust domains are lowercase", edited(("host.id", "spiffe://Org-A.example/gw")),
        "host.id", "spiffe://org-a.example/cluster/east/gateway", "must be lowercase"),
    Bad("host-id-without-path", "a host id names a host, not a whole domain",
        edited(("host.id", "spiffe://org-a.example")), "host.id", "spiffe://", "path is missing"),
    Bad("host-id-not-string", "a number is not an id", edited(("host.id", 42)), "host.id",
        "write a SPIFFE id", "got int 42"),
    Bad("bad-region", "a region is text", edited(("host.region", 5)), "host.region", "quote the value"),
    Bad("listen-without-port", "HOST:PORT", edited(("listen", "localhost")), "listen",
        "127.0.0.1:7002", "expected HOST:PORT, got 'localhost'"),
    Bad("listen-port-too-big", "ports are 16-bit", edited(("listen", "127.0.0.1:70000")), "listen",
        "127.0.0.1:7002"),
    Bad("listen-number", "an unquoted port", edited(("listen", 7001)), "listen", "127.0.0.1:7002",
        "got int 7001"),
    Bad("empty-path", "a path is not empty", edited(("keys", "")), "keys", "quote the value"),
    Bad("bad-peer-address", "the peer's port is missing", edited(("peers[0].address", "127.0.0.1")),
        "peers[0].address", "127.0.0.1:7002", "expected HOST:PORT"),
    Bad("peer-port-zero", "port 0 is for listening, never for reaching a peer",
        edited(("peers[0].address", "127.0.0.1:0")), "peers[0].address", "127.0.0.1:7002"),
    Bad("peer-address-url", "an address, not a URL", edited(("peers[1].address", "https://c.example:443")),
        "peers[1].address", "127.0.0.1:7002"),
    Bad("bad-peer-id", "a peer is a host id", edited(("peers[1].id", "org-c.example")), "peers[1].id",
        "spiffe://", "not a valid SPIFFE id"),
    Bad("duplicate-peer", "one entry per peer", edited(("peers[1].id", HOST_B)), "peers[1].id",
        "keep one entry per peer id", "already listed as peers[0]"),
    Bad("peer-is-self", "a host is not its own peer", edited(("peers[0].id", HOST_A)), "peers[0].id",
        "only other hosts", "this host itself"),
    Bad("peers-not-list", "peers is a list", edited(("peers", {"id": HOST_B})), "peers",
        "- id:", "expected a list"),
    Bad("peer-not-mapping", "each peer is a mapping", edited(("peers[0]", HOST_B)), "peers[0]",
        "gateway init", "expected a mapping"),
    Bad("bad-tenant-name", "tenant names are DNS labels", edited(("tenants[1]", "Billing_EU")),
        "tenants[1]", "lowercase letters, digits and '-'", "not a valid name"),
    Bad("tenant-not-string", "a tenant is a name", edited(("tenants[0]", 7)), "tenants[0]",
        "quote the value", "got int 7"),
    Bad("tenants-empty", "a host hosts at least one tenant", edited(("tenants", [])), "tenants",
        "[default]", "non-empty list, got an empty list"),
    Bad("tenants-string", "a list, not one name", edited(("tenants", "default")), "tenants",
        "[default]", "got 'default'"),
    # --- tenants: limits and peer bindings ---
    Bad("tenant-listed-twice", "one entry per tenant", edited(("tenants[1]", "default")), "tenants[1]",
        "list each tenant once", "already listed as tenants[0]"),
    Bad("tenant-without-name", "a tenant with limits still has a name",
        edited(("tenants[1]", {"max_objects": 5})), "tenants[1].name", "add it", "missing"),
    Bad("tenant-unknown-setting", "a typo in a limit is named",
        edited(("tenants[1]", {"name": "billing", "max_object": 5})), "tenants[1].max_object",
        "did you mean 'max_objects'?", "unknown key"),
    Bad("quota-negative", "a quota is a count", edited(("tenants[1]", {"name": "billing", "max_objects": -1})),
        "tenants[1].max_objects", "leave the key out for no limit", "whole number from 0"),
    Bad("quota-huge", "a quota fits the counter", edited(("tenants[1]", {"name": "billing", "max_bytes": 2**70})),
        "tenants[1].max_bytes", "e.g. 1000", "whole number from 0"),
    Bad("quota-string", "units are not parsed", edited(("tenants[1]", {"name": "billing", "max_bytes": "1GiB"})),
        "tenants[1].max_bytes", "e.g. 1000", "got '1GiB'"),
    Bad("require-authority-string", "a flag is true or false",
        edited(("tenants[1]", {"name": "billing", "require_authority": "yes please"})),
        "tenants[1].require_authority", "write true or false"),
    Bad("peer-bound-to-unknown-tenant", "a binding names a hosted tenant (a typo would bind nothing)",
        edited(("peers[0].tenants", ["default", "biling"])), "peers[0].tenants[1]",
        "listed under 'tenants:'", "tenant 'biling' is not hosted here (tenants: default, billing)"),
    Bad("peer-tenants-string", "a list of tenants, not one name", edited(("peers[0].tenants", "default")),
        "peers[0].tenants", "deliver into no tenant", "expected a list"),
    Bad("peer-tenant-bad-name", "tenant names are DNS labels", edited(("peers[0].tenants", ["Default"])),
        "peers[0].tenants[0]", "lowercase letters", "not a valid name"),
    Bad("ceiling-for-unknown-tenant", "a ceiling for a tenant not hosted here bounds nothing",
        edited(("policy", {"ceilings": [{"tenant": "biling", "allow": []}]})), "policy.ceilings[0].tenant",
        "listed under 'tenants:'", "tenant 'biling' is not hosted here"),
    Bad("handoff-negative", "timeouts are positive",
        edited(("handoff", {"rpc_timeout_seconds": -1})), "handoff.rpc_timeout_seconds", "e.g. 30",
        "positive number of seconds"),
    Bad("handoff-zero", "a zero timeout never succeeds",
        edited(("handoff", {"stage_timeout_seconds": 0})), "handoff.stage_timeout_seconds", "e.g. 30"),
    Bad("handoff-bool", "yes is not a number of seconds (YAML reads it as true)",
        "handoff:\n  transfer_ttl_seconds: yes\n" + edited(), "handoff.transfer_ttl_seconds",
        "e.g. 30", "got a boolean (true)"),
    Bad("handoff-string", "units are in the key, not the value",
        edited(("handoff", {"transfer_ttl_seconds": "30s"})), "handoff.transfer_ttl_seconds",
        "e.g. 30", "got '30s'"),
    Bad("handoff-nan", "YAML's .nan is no duration", "handoff:\n  clock_skew_seconds: .nan\n" + edited(),
        "handoff.clock_skew_seconds", "e.g. 30", "got float nan"),
    Bad("handoff-inf", "YAML's .inf is no duration", "handoff:\n  clock_skew_seconds: .inf\n" + edited(),
        "handoff.clock_skew_seconds", "e.g. 30", "got float inf"),
    Bad("handoff-huge", "too large for any timer", edited(("handoff", {"rpc_timeout_seconds": 10**20})),
        "handoff.rpc_timeout_seconds", "e.g. 30"),
    Bad("retry-zero", "at least one attempt", edited(("handoff", {"retry_attempts": 0})),
        "handoff.retry_attempts", "e.g. 5", "whole number"),
    Bad("retry-bool", "true is not a count", edited(("handoff", {"retry_attempts": True})),
        "handoff.retry_attempts", "e.g. 5", "got a boolean (true)"),
    Bad("retry-fraction", "attempts are whole", edited(("handoff", {"retry_attempts": 2.5})),
        "handoff.retry_attempts", "e.g. 5", "got float 2.5"),
    Bad("handoff-not-mapping", "handoff is a mapping", edited(("handoff", [1])), "handoff",
        "gateway init", "expected a mapping"),
    # --- YAML itself ---
    Bad("yaml-syntax", "an unclosed flow sequence: the message points at the line and column",
        "host:\n  id: [spiffe://org-a.example/gw\nlisten: 127.0.0.1:7001\n", "line 3, column 7",
        "check indentation and quoting", "not valid YAML"),
    Bad("yaml-tab", "tabs cannot indent YAML", "host:\n\tid: x\n", "line 2, column 1",
        "check indentation", "'\\t'"),
    Bad("yaml-bad-character", "control characters are not YAML", "host: \x07\n", "line 1, column 7",
        "check indentation and quoting", "unacceptable character"),
    Bad("yaml-two-documents", "one file, one document", "host: {}\n---\nlisten: x\n", "line 2, column 1",
        "check", "expected a single document"),
    Bad("yaml-duplicate-key", "a repeated key would silently replace the first",
        edited() + "listen: 127.0.0.1:9999\n", "line", "keep only one", "key 'listen' appears twice"),
]  # fmt: skip


@pytest.mark.parametrize("case", BAD, ids=lambda c: c.name)
def test_a_bad_config_names_the_file_the_key_and_the_fix(tmp_path: Path, case: Bad) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(case.text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    error = caught.value
    message = str(error)
    assert "\n" not in message, "one line"
    assert error.reason.startswith(f"{path.resolve()}: {case.key}"), error.reason
    assert case.problem in error.reason
    assert error.hint and case.fix in error.hint, error.hint


def test_the_yaml_duplicate_key_message_points_at_the_second_occurrence(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("host:\n  id: a\n  id: b\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"line 3, column 3: key 'id' appears twice"):
        load_config(path)


def test_a_missing_file_says_how_to_get_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "nope.yaml")
    assert str(tmp_path / "nope.yaml") in caught.value.reason
    assert "no such file" in caught.value.reason
    assert caught.value.hint and "--config" in caught.value.hint


def test_a_directory_or_binary_file_is_refused_with_its_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"host: \xff\xfe\n")
    with pytest.raises(ConfigError) as caught:
        load_config(binary)
    assert str(binary) in caught.value.reason and caught.value.hint == "save the file as UTF-8"


# --- good configs ---------------------------------------------------------------------


def test_a_written_config_loads_back(tmp_path: Path) -> None:
    document = good_document()
    document["handoff"] = {"rpc_timeout_seconds": 1.5, "retry_attempts": 2}
    path = tmp_path / "host" / "gateway.yaml"
    path.parent.mkdir()
    write_config(path, document)

    config = load_config(path)

    base = path.parent.resolve()
    assert config == Config(
        source=path.resolve(),
        host=HostId.parse(HOST_A),
        region="eu-west",
        listen="127.0.0.1:7001",
        tls=config.tls,
        keys=base / "keys",
        sqlite=base / "state.db",
        tenants=("default", "billing"),
        peers=config.peers,
        handoff=HandoffConfig(rpc_timeout=timedelta(seconds=1.5), retry_attempts=2),
    )
    assert config.tls.certificate == base / "tls" / "host.crt"
    assert config.tls.private_key == base / "tls" / "host.key"
    assert config.tls.authority == base / "tls" / "ca.crt"
    assert [(str(p.id), p.address, p.server_name) for p in config.peers] == [
        (HOST_B, "127.0.0.1:7002", "localhost"),
        (HOST_C, "[::1]:7003", "c.example"),
    ]
    assert config.peer(HOST_B).address == "127.0.0.1:7002"


def test_defaults_apply_when_optional_keys_are_absent(tmp_path: Path) -> None:
    document = config_document(host=HOST_A, listen="0.0.0.0:0")
    del document["tenants"]
    path = tmp_path / "gateway.yaml"
    write_config(path, document)
    config = load_config(path)
    assert config.tenants == ("default",)
    assert config.peers == ()
    assert config.region == ""
    assert config.handoff == HandoffConfig()
    assert config.listen == "0.0.0.0:0", "port 0 lets the OS choose where to listen"


def test_tenants_with_limits_and_peer_bindings(tmp_path: Path) -> None:
    document = good_document()
    document["tenants"] = [
        "default",
        {"name": "billing", "max_objects": 0, "max_bytes": 1024, "require_authority": True},
    ]
    document["peers"][0]["tenants"] = ["billing", "default"]
    document["peers"][1]["tenants"] = []
    path = tmp_path / "gateway.yaml"
    write_config(path, document)
    config = load_config(path)
    assert config.tenants == ("default", "billing")
    assert config.tenant_limits == {
        "billing": TenantLimits(max_objects=0, max_bytes=1024, require_authority=True)
    }
    tenancy = config.tenancy
    assert tenancy.limits_of("default") == TenantLimits()
    assert tenancy.bindings == {HOST_B: frozenset({"default", "billing"}), HOST_C: frozenset()}
    tenancy.require_bound(HOST_B, "billing", host=HOST_A)
    with pytest.raises(TenantBindingError, match="may deliver into no tenant"):
        tenancy.require_bound(HOST_C, "default", host=HOST_A)


def test_a_peer_without_tenants_delivers_into_none_even_on_a_single_tenant_host(
    tmp_path: Path,
) -> None:
    """Secure by default: no binding, no delivery. Not even the only tenant is implied,
    so adding a second tenant later never changes what existing peers may do."""
    document = config_document(
        host=HOST_A, listen="127.0.0.1:7001", peers=[PeerEntry(id=HOST_B, address="127.0.0.1:2")]
    )
    path = tmp_path / "gateway.yaml"
    write_config(path, document)
    config = load_config(path)
    assert config.tenants == ("default",) and config.peer(HOST_B).tenants == frozenset()
    with pytest.raises(TenantBindingError) as caught:
        config.tenancy.require_bound(HOST_B, "default", host=HOST_A)
    assert caught.value.reason == (
        f"refusing delivery into tenant 'default': {HOST_B} may deliver into no tenant on "
        f"{HOST_A} (peers[].tenants is empty)"
    )
    assert caught.value.hint and str(path.resolve()) in caught.value.hint
    with pytest.raises(TenantBindingError, match=f"{HOST_C} is bound to no tenant"):
        config.tenancy.require_bound(HOST_C, "default", host=HOST_A)  # not a peer at all


def test_a_peer_without_server_name_uses_its_address_host(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        edited(("peers", [{"id": HOST_B, "address": "gw-b.internal:7002"}])), encoding="utf-8"
    )
    assert load_config(path).peer(HOST_B).server_name == "gw-b.internal"


def test_relative_paths_resolve_against_the_config_files_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host_dir = tmp_path / "org-a" / "east"
    host_dir.mkdir(parents=True)
    document = good_document()
    document["keys"] = "../keys"
    document["store"] = {"sqlite": "data/state.db"}
    document["tls"]["authority"] = str(tmp_path / "pki" / "ca.crt")  # absolute stays as is
    write_config(host_dir / "gateway.yaml", document)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    config = load_config(Path("..") / "org-a" / "east" / "gateway.yaml")

    root = tmp_path.resolve()
    assert config.source == root / "org-a" / "east" / "gateway.yaml"
    assert config.keys == root / "org-a" / "keys"
    assert config.sqlite == root / "org-a" / "east" / "data" / "state.db"
    assert config.tls.certificate == root / "org-a" / "east" / "tls" / "host.crt"
    assert config.tls.authority == root / "pki" / "ca.crt"


def test_the_documented_example_is_a_valid_config(tmp_path: Path) -> None:
    config = parse_config(yaml.safe_load(EXAMPLE), source=tmp_path / "gateway.yaml")
    assert str(config.host) == "spiffe://org-a.example/cluster/east/gateway"
    assert len(config.peers) == 1
    assert config.peers[0].tenants == frozenset({"default"})
    assert config.tenant_limits["billing"].require_authority


def test_an_unknown_peer_is_named_with_the_peers_there_are_and_where_to_add_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "gateway.yaml"
    write_config(path, good_document())
    config = load_config(path)
    with pytest.raises(UnknownPeerError) as caught:
        config.peer("spiffe://org-z.example/gw")
    assert HOST_B in caught.value.reason and HOST_C in caught.value.reason
    assert caught.value.hint and str(path.resolve()) in caught.value.hint
    with pytest.raises(UnknownPeerError, match="this host itself"):
        config.peer(HOST_A)
