"""Dapr Component resources: the state stores and pub/subs a stand-in sidecar loads.

The format is daprd's own (https://docs.dapr.io/reference/resource-specs/component-schema/)::

    apiVersion: dapr.io/v1alpha1
    kind: Component
    metadata:
      name: statestore
    spec:
      type: state.redis          # any state.* or pubsub.*: all are emulated on SQLite
      version: v1
      metadata:
      - name: keyPrefix
        value: appid             # appid (default) | name | namespace | none | <custom>
    scopes: [app-a]              # optional: only these app ids load the component

Invariants:

* Components of other categories (secret stores, ...) are skipped; the stand-in
  emulates state, pub/sub and ``bindings.http`` (another binding type is refused at
  load), and loads ``HTTPEndpoint`` resources for service invocation
  (tests/daprd/invocation.py) and the inbound retry policies of ``Resiliency``
  resources (for deliveries to the app, tests/daprd/server.py).
* A component whose ``scopes`` do not name the app id is not loaded, as in daprd, so
  that app gets "state store X is not found".
* ``keyPrefix`` follows dapr/dapr ``pkg/components/state/state_config.go``: the
  strategy name is case-insensitive, and a prefix or key containing ``||`` is refused.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "Component",
    "ComponentError",
    "IllegalKeyError",
    "http_binding",
    "http_endpoint",
    "load_components",
    "original_key",
    "pubsub",
    "state_store",
]

SEPARATOR = "||"
_STRATEGIES = ("appid", "name", "namespace", "none")


class ComponentError(ValueError):
    """A component file that daprd would refuse to load."""


class IllegalKeyError(ValueError):
    """A state key (or key prefix) containing ``||``."""

    def __init__(self, key: str) -> None:
        super().__init__(f"input key/keyPrefix '{key}' can't contain '{SEPARATOR}'")
        self.key = key


@dataclass(frozen=True, slots=True, kw_only=True)
class Component:
    """One loaded component: ``category`` is ``state``, ``pubsub``, ``bindings`` or
    ``httpendpoint`` (an HTTPEndpoint resource)."""

    name: str
    type: str
    version: str = "v1"
    metadata: Mapping[str, str] = field(default_factory=dict)
    scopes: tuple[str, ...] = ()

    @property
    def category(self) -> str:
        return self.type.split(".", 1)[0]

    def meta(self, name: str, default: str = "") -> str:
        """A metadata value by case-insensitive name, as daprd reads component metadata."""
        for key, value in self.metadata.items():
            if key.lower() == name.lower():
                return value
        return default

    @property
    def key_prefix_strategy(self) -> str:
        strategy = self.meta("keyPrefix", "appid").lower()
        if SEPARATOR in strategy:
            raise IllegalKeyError(strategy)
        return strategy

    def state_key(self, key: str, app_id: str) -> str:
        """The key as stored: ``GetModifiedStateKey`` of daprd."""
        if SEPARATOR in key:
            raise IllegalKeyError(key)
        strategy = self.key_prefix_strategy
        if strategy == "none":
            return key
        if strategy == "name":
            return f"{self.name}{SEPARATOR}{key}"
        if strategy == "appid":
            return f"{app_id}{SEPARATOR}{key}" if app_id else key
        if strategy == "namespace":
            if not app_id:
                return key
            namespace = os.environ.get("NAMESPACE", "")
            if not namespace:
                return f"{app_id}{SEPARATOR}{key}"
            return f"{namespace}.{app_id}{SEPARATOR}{key}"
        return f"{strategy}{SEPARATOR}{key}"


def original_key(stored_key: str) -> str:
    """``GetOriginalStateKey`` of daprd: the part after the first ``||``."""
    parts = stored_key.split(SEPARATOR, 2)
    return stored_key if len(parts) <= 1 else parts[1]


def state_store(name: str, **metadata: str) -> Component:
    """A state store component given in code rather than in a file."""
    return Component(name=name, type="state.sqlite", metadata=dict(metadata))


def http_binding(name: str, url: str, **metadata: str) -> Component:
    """A ``bindings.http`` output binding given in code rather than in a file."""
    return Component(name=name, type="bindings.http", metadata={"url": url, **metadata})


def http_endpoint(name: str, base_url: str, **headers: str) -> Component:
    """An ``HTTPEndpoint`` resource given in code rather than in a file."""
    return Component(
        name=name,
        type="httpendpoint",
        metadata={"baseUrl": base_url, **{f"header.{k}": v for k, v in headers.items()}},
    )


def pubsub(name: str, **metadata: str) -> Component:
    """A pub/sub component given in code rather than in a file."""
    return Component(name=name, type="pubsub.redis", metadata=dict(metadata))


def _http_endpoint(document: Mapping[str, Any], source: Path) -> Component:
    """An ``HTTPEndpoint`` resource (a non-Dapr endpoint for service invocation), kept as a
    component of category ``httpendpoint``: ``baseUrl`` and ``header.<name>`` metadata.
    https://docs.dapr.io/reference/resource-specs/httpendpoints-schema/"""
    name = (document.get("metadata") or {}).get("name")
    where = f"{source}: HTTPEndpoint {name!r}"
    if document.get("apiVersion") != "dapr.io/v1alpha1":
        raise ComponentError(f"{where}: apiVersion must be dapr.io/v1alpha1")
    if not isinstance(name, str) or not name:
        raise ComponentError(f"{source}: metadata.name is required")
    spec = document.get("spec") or {}
    base = spec.get("baseUrl")
    if not isinstance(base, str) or not base.startswith(("http://", "https://")):
        raise ComponentError(f"{where}: spec.baseUrl must start with http:// or https://")
    values = {"baseUrl": base}
    for item in spec.get("headers") or []:
        if "secretKeyRef" in item:
            raise ComponentError(f"{where}: secretKeyRef is not supported by the stand-in")
        values[f"header.{item['name']}"] = str(item.get("value", ""))
    return Component(
        name=name,
        type="httpendpoint",
        metadata=values,
        scopes=tuple(str(s) for s in document.get("scopes") or ()),
    )


def _parse(document: Mapping[str, Any], source: Path) -> Component | None:
    where = f"{source}: component {document.get('metadata', {}).get('name', '?')!r}"
    if document.get("kind") == "HTTPEndpoint":
        return _http_endpoint(document, source)
    if document.get("kind") != "Component":
        return None
    if document.get("apiVersion") != "dapr.io/v1alpha1":
        raise ComponentError(f"{where}: apiVersion must be dapr.io/v1alpha1")
    name = (document.get("metadata") or {}).get("name")
    spec = document.get("spec") or {}
    ctype = spec.get("type")
    if not isinstance(name, str) or not name:
        raise ComponentError(f"{source}: metadata.name is required")
    if not isinstance(ctype, str) or "." not in ctype:
        raise ComponentError(f"{where}: spec.type must look like state.redis or pubsub.redis")
    values: dict[str, str] = {}
    for item in spec.get("metadata") or []:
        if "secretKeyRef" in item:
            raise ComponentError(f"{where}: secretKeyRef is not supported by the stand-in")
        values[str(item["name"])] = str(item.get("value", ""))
    component = Component(
        name=name,
        type=ctype,
        version=str(spec.get("version", "v1")),
        metadata=values,
        scopes=tuple(str(s) for s in document.get("scopes") or ()),
    )
    if component.category == "bindings" and component.type != "bindings.http":
        raise ComponentError(f"{where}: the stand-in emulates only bindings.http")
    if component.category == "bindings" and not component.meta("url"):
        raise ComponentError(f"{where}: bindings.http needs metadata url")
    if component.category == "state":
        try:
            component.key_prefix_strategy  # noqa: B018 - validates at load, as daprd does
        except IllegalKeyError as exc:
            raise ComponentError(f"{where}: keyPrefix: {exc}") from exc
    return component


def _inbound_retries(document: Mapping[str, Any], source: Path) -> list[Component]:
    """A ``Resiliency`` resource's inbound retry policies, one per component it targets,
    kept as components of category ``resiliency`` named after that component: metadata
    ``policy`` (constant or exponential), ``duration``, ``maxInterval``, ``maxRetries``
    (-1: unbounded). Timeouts and breakers are not emulated.
    https://docs.dapr.io/reference/resource-specs/resiliency/"""
    spec = document.get("spec") or {}
    retries = (spec.get("policies") or {}).get("retries") or {}
    targets = (spec.get("targets") or {}).get("components") or {}
    found: list[Component] = []
    for name, directions in targets.items():
        policy_name = ((directions or {}).get("inbound") or {}).get("retry")
        if policy_name is None:
            continue
        policy = retries.get(policy_name)
        if not isinstance(policy, Mapping):
            raise ComponentError(f"{source}: retry policy {policy_name!r} is not defined")
        found.append(
            Component(
                name=str(name),
                type="resiliency.inbound",
                metadata={k: str(v) for k, v in policy.items()},
                scopes=tuple(str(s) for s in document.get("scopes") or ()),
            )
        )
    return found


def load_components(
    paths: Iterable[Path], app_id: str, extra: Iterable[Component] = ()
) -> tuple[Component, ...]:
    """Every state, pub/sub and (http) binding component and HTTPEndpoint resource in the
    YAML files of ``paths`` (files or directories) that is in scope for ``app_id``, plus
    ``extra``; names must be unique per category."""
    found: list[Component] = list(extra)
    for path in paths:
        files = (
            sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml"))
            if path.is_dir()
            else [path]
        )
        for file in files:
            with file.open(encoding="utf-8") as stream:
                for document in yaml.safe_load_all(stream):
                    if isinstance(document, Mapping) and document.get("kind") == "Resiliency":
                        found.extend(_inbound_retries(document, file))
                    elif isinstance(document, Mapping):
                        component = _parse(document, file)
                        if component is not None:
                            found.append(component)
    loaded: dict[tuple[str, str], Component] = {}
    for component in found:
        if component.category not in ("state", "pubsub", "bindings", "httpendpoint", "resiliency"):
            continue
        if component.scopes and app_id not in component.scopes:
            continue
        key = (component.category, component.name)
        if key in loaded:
            raise ComponentError(
                f"two {component.category} components are named {component.name!r}"
            )
        loaded[key] = component
    return tuple(loaded.values())
