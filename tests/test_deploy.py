"""The deployment files in deploy/, checked offline: no daprd, Docker, kustomize or cluster.

- Kubernetes: each overlay is rendered by :func:`render` (below), and every object is
  validated: built-in kinds with ``kubernetes-validate`` (the Kubernetes OpenAPI schemas it
  ships, strict: unknown fields are errors), Dapr kinds against the ``openAPIV3Schema`` of
  Dapr's own CRDs (tests/data/dapr, see SOURCES.md there), made strict the way the API
  server's strict field validation is. Then the config a pod would see is materialized
  from the rendered ConfigMap and Secrets at their mount paths and loaded with the
  gateway's own loader, and the ports, names and Dapr components are cross-checked.
- Self-hosted: the Multi-App Run file is validated against the Dapr CLI's fields, both
  gateway configs load, and the commands docs/dapr.md gives for the keys and certificates
  are run against a copy of the directory.

A missing schema, CRD or component description is a failure, never a skip.

No maintained kustomize renderer for Python 3.11 exists (``pykustomize`` needs 3.14, the
``kustomize`` package on PyPI is unrelated), and there is no kustomize binary here. So
:func:`render` implements exactly the kustomize features deploy/ uses, with kustomize's
semantics, and refuses every other feature instead of guessing (the refusals are tested).
What kustomize does that it does not: hash suffixes on generated names (deploy/ turns
them off), name-reference rewriting, and the order of list items added by a patch
(kustomize's may differ; validation does not depend on it).
"""

from __future__ import annotations

import base64
import copy
import importlib.resources
import json
import re
import shlex
import shutil
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from gateway._time import SystemClock
from gateway.cli import build_parser, cmd_health
from gateway.cli import main as gateway_main
from gateway.config import load_config
from gateway.keyring import load_keyring
from gateway.scaffold import init_host

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
SELF_HOSTED = DEPLOY / "self-hosted"
DAPR_DATA = Path(__file__).resolve().parent / "data" / "dapr"
DOCS = ROOT / "docs" / "dapr.md"

#: The oldest Kubernetes release the manifests claim to support and the newest whose
#: schemas kubernetes-validate (pinned in pyproject.toml) carries.
KUBERNETES_VERSIONS = ("1.30", "1.37")
NAMESPACE = "object-gateway"
HOST_IDS = {
    "cluster-east": "spiffe://org-a.example/cluster/east/gateway",
    "cluster-west": "spiffe://org-b.example/cluster/west/gateway",
}
OVERLAYS = tuple(HOST_IDS)

#: State store components that are transactional and ETag-capable, as the gateway needs
#: (docs/adr/0003): Features() of each in dapr/components-contrib v1.18.4.
TRANSACTIONAL_ETAG_STATE_STORES = {
    "state.sqlite/v1": "state/sqlite/sqlite.go: FeatureETag, FeatureTransactional",
    "state.postgresql/v2": "state/postgresql/v2/postgresql.go: FeatureETag, FeatureTransactional",
}


# --------------------------------------------------------------------------------------
# A small kustomize: exactly the features deploy/ uses
# --------------------------------------------------------------------------------------


class KustomizeError(Exception):
    """The kustomization cannot be built (kustomize would refuse it too)."""


class UnsupportedError(KustomizeError):
    """A kustomize feature this renderer does not implement: refused, not approximated."""


_KUSTOMIZATION_FIELDS = {
    "apiVersion",
    "kind",
    "namespace",
    "resources",
    "configMapGenerator",
    "generatorOptions",
    "patches",
    "images",
}
#: Kinds whose every cross-reference the renderer handles: the namespace transformer
#: only has to set metadata.namespace on them (a RoleBinding, say, also names namespaces
#: in its subjects, which this renderer would not rewrite).
_NAMESPACED_KINDS = {
    "ConfigMap",
    "Secret",
    "ServiceAccount",
    "Service",
    "Deployment",
    "NetworkPolicy",
    "PodDisruptionBudget",
    "Component",
    "Configuration",
    "Resiliency",
}
_CLUSTER_KINDS = {"Namespace"}


def render(directory: Path) -> list[dict[str, Any]]:
    """What ``kustomize build directory`` prints, as objects."""
    return _build(directory.resolve(), ())


def _build(root: Path, stack: tuple[Path, ...]) -> list[dict[str, Any]]:
    if root in stack:
        raise KustomizeError(f"{root}: cycle through {', '.join(map(str, stack))}")
    for other in ("kustomization.yml", "Kustomization"):
        if (root / other).exists():
            raise UnsupportedError(f"{root / other}: only kustomization.yaml is supported")
    path = root / "kustomization.yaml"
    try:
        kustomization = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KustomizeError(f"{path}: no such file") from None
    if not isinstance(kustomization, dict):
        raise KustomizeError(f"{path}: not a mapping")
    unknown = sorted(set(kustomization) - _KUSTOMIZATION_FIELDS)
    if unknown:
        raise UnsupportedError(f"{path}: {', '.join(unknown)}")
    if (kustomization.get("apiVersion"), kustomization.get("kind")) != (
        "kustomize.config.k8s.io/v1beta1",
        "Kustomization",
    ):
        raise KustomizeError(
            f"{path}: apiVersion/kind must be kustomize.config.k8s.io/v1beta1 Kustomization"
        )

    objects: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        if not isinstance(entry, str) or re.match(r"^[a-z+]+://|^git@", entry):
            raise UnsupportedError(
                f"{path}: resources: {entry!r} (only local files and directories)"
            )
        target = (root / entry).resolve()
        if target.is_dir():
            objects += _build(target, (*stack, root))
        else:
            objects += _read_objects(_inside(root, target, path))
    generated = kustomization.get("configMapGenerator", [])
    if generated:
        options = kustomization.get("generatorOptions")
        if options != {"disableNameSuffixHash": True}:
            # With hash suffixes, every reference to a generated name must be rewritten
            # (kustomize's name-reference transformer), which this renderer does not do.
            raise UnsupportedError(
                f"{path}: generatorOptions other than disableNameSuffixHash: true"
            )
        objects += [_config_map(root, path, spec) for spec in generated]
    elif "generatorOptions" in kustomization:
        raise UnsupportedError(f"{path}: generatorOptions without generators")
    _check_unique(objects, path)

    # The order of kustomize's built-in transformers (configureBuiltinTransformers in
    # api/krusty/kusttarget.go): patches, then namespace, then images.
    for patch in kustomization.get("patches", []):
        _apply_patch(root, path, patch, objects)
    if "namespace" in kustomization:
        _set_namespace(objects, kustomization["namespace"])
    for image in kustomization.get("images", []):
        _set_image(objects, image, path)
    _check_unique(objects, path)
    return objects


def _inside(root: Path, target: Path, source: Path) -> Path:
    """kustomize's default load restriction: files come from the kustomization's root."""
    if not target.is_relative_to(root):
        raise KustomizeError(f"{source}: {target} is outside {root}")
    if not target.is_file():
        raise KustomizeError(f"{source}: {target.relative_to(root)}: no such file")
    return target


def _read_objects(path: Path) -> list[dict[str, Any]]:
    objects = []
    for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
        if document is None:
            continue
        if not isinstance(document, dict) or not document.get("metadata", {}).get("name"):
            raise KustomizeError(f"{path}: every document must be an object with metadata.name")
        kind = document.get("kind")
        if kind not in _NAMESPACED_KINDS | _CLUSTER_KINDS:
            raise UnsupportedError(f"{path}: kind {kind!r} (its references are not handled)")
        objects.append(document)
    return objects


def _config_map(root: Path, path: Path, spec: Any) -> dict[str, Any]:
    if not isinstance(spec, dict) or set(spec) - {"name", "files"} or "name" not in spec:
        raise UnsupportedError(f"{path}: configMapGenerator entries take only name and files")
    data = {}
    for entry in spec.get("files", []):
        key, _, name = entry.rpartition("=") if "=" in entry else ("", "", entry)
        file = _inside(root, (root / name).resolve(), path)
        try:
            data[key or file.name] = file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UnsupportedError(f"{path}: {name} is binary (binaryData)") from None
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": spec["name"]},
        "data": data,
    }


def _identity(obj: dict[str, Any]) -> tuple[str, str, str, str]:
    group = obj["apiVersion"].rpartition("/")[0]
    return (group, obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"])


def _check_unique(objects: list[dict[str, Any]], path: Path) -> None:
    seen: set[tuple[str, str, str, str]] = set()
    for obj in objects:
        if _identity(obj) in seen:
            raise KustomizeError(f"{path}: {obj['kind']}/{obj['metadata']['name']} appears twice")
        seen.add(_identity(obj))


def _apply_patch(root: Path, path: Path, spec: Any, objects: list[dict[str, Any]]) -> None:
    if not isinstance(spec, dict) or set(spec) != {"path"}:
        raise UnsupportedError(f"{path}: patches take only `path` (no target, inline or JSON 6902)")
    file = _inside(root, (root / spec["path"]).resolve(), path)
    documents = [d for d in yaml.safe_load_all(file.read_text(encoding="utf-8")) if d is not None]
    if len(documents) != 1 or not isinstance(documents[0], dict):
        raise UnsupportedError(f"{file}: one strategic-merge patch object per file")
    patch = documents[0]
    if "namespace" in patch.get("metadata", {}):
        raise UnsupportedError(f"{file}: a patch naming a namespace")
    matches = [
        obj
        for obj in objects
        if (obj["apiVersion"], obj["kind"], obj["metadata"]["name"])
        == (patch.get("apiVersion"), patch.get("kind"), patch.get("metadata", {}).get("name"))
    ]
    if len(matches) != 1:
        raise KustomizeError(f"{file}: matches {len(matches)} objects, not 1")
    strategic_merge(matches[0], patch, _object_schema(patch["kind"], patch["apiVersion"]))


def _set_namespace(objects: list[dict[str, Any]], namespace: str) -> None:
    for obj in objects:
        if obj["kind"] == "Namespace":
            # kustomize renames Namespace objects to the namespace field
            # (kubernetes-sigs/kustomize#5282), it does not leave them alone.
            obj["metadata"]["name"] = namespace
        else:
            obj["metadata"]["namespace"] = namespace


def _set_image(objects: list[dict[str, Any]], spec: Any, path: Path) -> None:
    if not isinstance(spec, dict) or set(spec) - {"name", "newName", "newTag", "digest"}:
        raise UnsupportedError(f"{path}: images entries take name, newName, newTag, digest")
    for obj in objects:
        pod = obj.get("spec", {}).get("template", {}).get("spec", {})
        for container in pod.get("containers", []) + pod.get("initContainers", []):
            name, tag, digest = _split_image(container["image"])
            if name != spec["name"]:
                continue
            name = spec.get("newName", name)
            if "digest" in spec:
                container["image"] = f"{name}@{spec['digest']}"
            elif "newTag" in spec:
                container["image"] = f"{name}:{spec['newTag']}"
            else:
                container["image"] = (
                    name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
                )


def _split_image(image: str) -> tuple[str, str, str]:
    rest, _, digest = image.partition("@")
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:  # a colon before the last slash is a registry port
        return rest[:colon], rest[colon + 1 :], digest
    return rest, "", digest


# Strategic merge patch, driven by the Kubernetes OpenAPI schema's patch metadata
# (x-kubernetes-patch-strategy / -merge-key), as kubectl and kustomize do for built-in
# kinds. Kinds without such a schema (Dapr CRDs) merge maps and replace lists.


@cache
def _kubernetes_schemas(version: str) -> tuple[Path, dict[str, Any]]:
    directory = (
        Path(str(importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"))
        / f"v{version}.0-local-strict"
    )
    definitions = json.loads((directory / "_definitions.json").read_text(encoding="utf-8"))
    return directory, definitions["$defs"]


def _object_schema(kind: str, api_version: str) -> dict[str, Any] | None:
    """The Kubernetes schema of a built-in kind; None for Dapr's kinds (CRDs carry no
    patch metadata: maps merge, lists are replaced)."""
    if api_version.startswith("dapr.io/"):
        return None
    directory, _ = _kubernetes_schemas(KUBERNETES_VERSIONS[-1])
    # kubernetes-validate's file naming: apps/v1 -> apps-v1, networking.k8s.io/v1 -> networking-v1
    suffix = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    return json.loads((directory / f"{kind.lower()}-{suffix}.json").read_text(encoding="utf-8"))


def _resolve(schema: dict[str, Any] | None) -> dict[str, Any] | None:
    _, definitions = _kubernetes_schemas(KUBERNETES_VERSIONS[-1])
    while schema is not None and "$ref" in schema:
        schema = definitions[schema["$ref"].rpartition("/")[2]]
    return schema


def _child(schema: dict[str, Any] | None, key: str) -> dict[str, Any] | None:
    schema = _resolve(schema)
    if schema is None:
        return None
    if key in schema.get("properties", {}):
        return schema["properties"][key]
    extra = schema.get("additionalProperties")
    return extra if isinstance(extra, dict) else None


def strategic_merge(
    target: dict[str, Any], patch: dict[str, Any], schema: dict[str, Any] | None
) -> None:
    for key, value in patch.items():
        if key.startswith("$"):
            raise UnsupportedError(f"strategic-merge directive {key}")
        child = _child(schema, key)
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            strategic_merge(target[key], value, child)
        elif isinstance(value, list) and isinstance(target.get(key), list):
            target[key] = _merge_list(target[key], value, _resolve(child))
        else:
            _refuse_directives(value)
            target[key] = copy.deepcopy(value)


def _merge_list(original: list[Any], patch: list[Any], schema: dict[str, Any] | None) -> list[Any]:
    strategy = (schema or {}).get("x-kubernetes-patch-strategy", "").split(",")
    if "merge" not in strategy:
        _refuse_directives(patch)
        return copy.deepcopy(patch)  # no merge strategy: the patch's list replaces the original
    merge_key = (schema or {}).get("x-kubernetes-patch-merge-key")
    merged = copy.deepcopy(original)
    for item in patch:
        if merge_key is None:  # a list of scalars: union
            if item not in merged:
                merged.append(copy.deepcopy(item))
            continue
        if not isinstance(item, dict) or merge_key not in item:
            raise KustomizeError(f"patch list item without its merge key {merge_key!r}: {item!r}")
        same = [m for m in merged if m.get(merge_key) == item[merge_key]]
        if same:
            strategic_merge(same[0], item, (schema or {}).get("items"))
        else:
            _refuse_directives(item)
            merged.append(copy.deepcopy(item))
    return merged


def _refuse_directives(value: Any) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if key.startswith("$"):
                raise UnsupportedError(f"strategic-merge directive {key}")
            _refuse_directives(item)
    elif isinstance(value, list):
        for item in value:
            _refuse_directives(item)


# --------------------------------------------------------------------------------------
# Validation against schemas
# --------------------------------------------------------------------------------------


def validate_kubernetes(obj: dict[str, Any], version: str) -> None:
    """Built-in kinds; raises (SchemaNotFoundError too) rather than passing an unknown kind."""
    kubernetes_validate.validate(obj, version, strict=True)


@cache
def _dapr_validators() -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    validators = {}
    for file in sorted((DAPR_DATA / "crds").glob("*.yaml")):
        crd = yaml.safe_load(file.read_text(encoding="utf-8"))
        for version in crd["spec"]["versions"]:
            schema = _strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
            key = (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
            validators[key] = jsonschema.Draft202012Validator(schema)
    if not validators:
        pytest.fail(f"no Dapr CRDs in {DAPR_DATA / 'crds'}: see SOURCES.md there")
    return validators


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """A CRD's structural schema, with unknown fields refused.

    The API server prunes unknown fields of a CRD object, or refuses them under strict
    field validation (kubectl's default); plain JSON Schema would let them pass.
    """
    if (
        schema.get("type") == "object"
        and "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        schema["additionalProperties"] = False
    for child in schema.get("properties", {}).values():
        _strict(child)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            _strict(schema[key])
    return schema


_METADATA_FIELDS = {"name", "namespace", "labels", "annotations"}
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def validate_dapr(obj: dict[str, Any]) -> None:
    """Dapr kinds against Dapr's CRD schemas (their metadata is plain ObjectMeta)."""
    key = (str(obj.get("apiVersion")), str(obj.get("kind")))
    validator = _dapr_validators().get(key)
    if validator is None:
        pytest.fail(f"no CRD schema for {key} in {DAPR_DATA / 'crds'}")
    validator.validate(obj)
    metadata = obj["metadata"]
    assert set(metadata) <= _METADATA_FIELDS, metadata
    assert _DNS_SUBDOMAIN.fullmatch(metadata["name"]) and len(metadata["name"]) <= 253, metadata


def validate_any(obj: dict[str, Any]) -> None:
    if obj["apiVersion"].startswith("dapr.io/"):
        validate_dapr(obj)
    else:
        for version in KUBERNETES_VERSIONS:
            validate_kubernetes(obj, version)


@cache
def _component_descriptions() -> dict[str, dict[str, Any]]:
    """components-contrib's metadata.yaml of each component type deploy/ uses."""
    found = {}
    for file in sorted((DAPR_DATA / "component-metadata").glob("*.yaml")):
        description = yaml.safe_load(file.read_text(encoding="utf-8"))
        found[f"{description['type']}.{description['name']}/{description['version']}"] = description
    return found


def check_component_metadata(component: dict[str, Any]) -> None:
    """Every metadata field of a Component is one its type documents; required ones are set."""
    spec = component["spec"]
    kind = f"{spec['type']}/{spec['version']}"
    description = _component_descriptions().get(kind)
    if description is None:
        pytest.fail(f"{kind}: no metadata.yaml in {DAPR_DATA / 'component-metadata'}")
    fields = {f["name"]: f for f in description.get("metadata", [])}
    profiles = [p["metadata"] for p in description.get("authenticationProfiles", [])]
    names = [item["name"] for item in spec["metadata"]]
    assert len(names) == len(set(names)), f"{kind}: a metadata field appears twice: {names}"
    for profile in profiles or [[]]:
        allowed = fields | {f["name"]: f for f in profile}
        if set(names) <= set(allowed):
            missing = [n for n, f in allowed.items() if f.get("required") and n not in names]
            assert not missing, f"{kind}: required metadata missing: {missing}"
            return
    pytest.fail(f"{kind}: metadata {names} fits no authentication profile of {kind}")


def sidecar_annotations() -> set[str]:
    lines = (DAPR_DATA / "sidecar-annotations.txt").read_text(encoding="utf-8").splitlines()
    return {line for line in lines if line and not line.startswith("#")}


# --------------------------------------------------------------------------------------
# The operator's steps from docs/dapr.md, on a copy of deploy/kubernetes
# --------------------------------------------------------------------------------------


def kubectl_secret_from_files(name: str, directory: Path) -> dict[str, Any]:
    """What ``kubectl create secret generic NAME --from-file=DIR --dry-run=client -o yaml``
    prints: one key per regular file directly in DIR, named by the file."""
    data = {
        file.name: base64.b64encode(file.read_bytes()).decode("ascii")
        for file in sorted(directory.iterdir())
        if file.is_file()
    }
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "creationTimestamp": None},
        "data": data,
    }


def kubectl_secret_from_literals(name: str, literals: dict[str, str]) -> dict[str, Any]:
    data = {k: base64.b64encode(v.encode()).decode("ascii") for k, v in literals.items()}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "creationTimestamp": None},
        "data": data,
    }


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of deploy/kubernetes whose overlays have the Secret manifests the docs make.

    Key material is real (``gateway init``'s own code), in a temporary directory.
    """
    work = tmp_path_factory.mktemp("deploy")
    tree = work / "kubernetes"
    shutil.copytree(KUBERNETES, tree)
    for overlay, host_id in HOST_IDS.items():
        secrets = tree / "overlays" / overlay / "secrets"
        for stale in secrets.glob("*.yaml"):  # whatever an operator made in this checkout
            stale.unlink()
        material = work / "material" / overlay
        init_host(material, host_id=host_id, listen="0.0.0.0:7001", at=SystemClock().now())
        manifests = {
            "gateway-tls": kubectl_secret_from_files("gateway-tls", material / "tls"),
            "gateway-keys": kubectl_secret_from_files("gateway-keys", material / "keys"),
            "gateway-backends": kubectl_secret_from_literals(
                "gateway-backends",
                {
                    "postgresConnectionString": "host=postgres user=gateway password=x dbname=gateway",
                    "redisHost": "redis:6379",
                    "redisPassword": "x",
                },
            ),
        }
        for name, manifest in manifests.items():
            (secrets / f"{name}.yaml").write_text(yaml.safe_dump(manifest), encoding="utf-8")
    return tree


@cache
def _rendered(tree: Path, overlay: str) -> tuple[dict[str, Any], ...]:
    return tuple(render(tree / "overlays" / overlay))


def rendered(tree: Path, overlay: str) -> list[dict[str, Any]]:
    return copy.deepcopy(list(_rendered(tree, overlay)))


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} objects"
    return matches[0]


def materialize(objects: list[dict[str, Any]], root: Path) -> None:
    """Write the gateway container's ConfigMap and Secret mounts under ``root`` as the
    kubelet would put them into the pod's filesystem."""
    deployment = find(objects, "Deployment", "gateway")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "gateway"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        assert "items" not in volume.get("configMap", volume.get("secret", {})), "not handled"
        if "configMap" in volume:
            files = {
                k: v.encode()
                for k, v in find(objects, "ConfigMap", volume["configMap"]["name"])["data"].items()
            }
        elif "secret" in volume:
            secret = find(objects, "Secret", volume["secret"]["secretName"])
            files = {k: base64.b64decode(v) for k, v in secret.get("data", {}).items()}
            files |= {k: v.encode() for k, v in secret.get("stringData", {}).items()}
        else:
            continue  # emptyDir
        target = root / mount["mountPath"].lstrip("/")
        if "subPath" in mount:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(files[mount["subPath"]])
        else:
            target.mkdir(parents=True, exist_ok=True)
            for name, content in files.items():
                (target / name).write_bytes(content)


def _port(address: str) -> int:
    return int(address.rpartition(":")[2])


# --------------------------------------------------------------------------------------
# Kubernetes overlays
# --------------------------------------------------------------------------------------

EXPECTED_OBJECTS = {
    ("Namespace", NAMESPACE),
    ("ServiceAccount", "gateway"),
    ("Deployment", "gateway"),
    ("Service", "gateway"),
    ("NetworkPolicy", "gateway"),
    ("PodDisruptionBudget", "gateway"),
    ("ConfigMap", "gateway-config"),
    ("Secret", "gateway-tls"),
    ("Secret", "gateway-keys"),
    ("Secret", "gateway-backends"),
    ("Configuration", "gateway"),
    ("Component", "statestore"),
    ("Component", "pubsub"),
    ("Resiliency", "gateway"),
}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_an_overlay_renders_every_object_into_the_gateway_namespace(
    prepared: Path, overlay: str
) -> None:
    objects = rendered(prepared, overlay)
    assert {(o["kind"], o["metadata"]["name"]) for o in objects} == EXPECTED_OBJECTS
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_validates_against_its_schema(prepared: Path, overlay: str) -> None:
    for obj in rendered(prepared, overlay):
        validate_any(obj)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_config_a_pod_mounts_loads_with_the_gateways_loader(
    prepared: Path, overlay: str, tmp_path: Path
) -> None:
    objects = rendered(prepared, overlay)
    materialize(objects, tmp_path)
    config_file = tmp_path / "etc" / "gateway" / "gateway.yaml"
    assert config_file.read_text(encoding="utf-8") == (
        KUBERNETES / "overlays" / overlay / "gateway.yaml"
    ).read_text(encoding="utf-8")
    config = load_config(config_file)
    assert str(config.host) == HOST_IDS[overlay]
    # the Secrets land where the config points, and hold what the gateway needs there
    for path in (config.tls.certificate, config.tls.private_key, config.tls.authority):
        assert path.is_file(), path
    keyring = load_keyring(config.keys)
    assert keyring.bundle.trust_domain == config.host.trust_domain
    assert keyring.signers, "the keys Secret carries no private signing key"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ports_and_dapr_names_line_up_across_config_deployment_service_and_policy(
    prepared: Path, overlay: str
) -> None:
    objects = rendered(prepared, overlay)
    document = yaml.safe_load(find(objects, "ConfigMap", "gateway-config")["data"]["gateway.yaml"])
    deployment = find(objects, "Deployment", "gateway")
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    peer_port = _port(document["listen"])

    assert annotations["dapr.io/enabled"] == "true"
    assert annotations["dapr.io/app-protocol"] == "grpc"
    assert int(annotations["dapr.io/app-port"]) == document["dapr"]["app_port"]
    assert container["ports"] == [{"name": "peer", "containerPort": peer_port, "protocol": "TCP"}]
    # the Dapr app port is reachable from the sidecar only: no container or Service port
    service = find(objects, "Service", "gateway")
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(peer_port, "peer")]
    policy = find(objects, "NetworkPolicy", "gateway")["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    assert [p for rule in policy["ingress"] for p in rule["ports"]] == [
        {"protocol": "TCP", "port": peer_port}
    ]
    for probe in ("startupProbe", "livenessProbe"):
        assert container[probe]["tcpSocket"] == {"port": "peer"}, probe
    # Readiness is grpc.health.v1 over mTLS, by `gateway health` with the pod's config
    # ($GATEWAY_CONFIG, which must name the mounted file), within the probe's timeout.
    readiness = container["readinessProbe"]
    command = readiness["exec"]["command"]
    assert command[:2] == ["gateway", "health"]
    assert {"name": "GATEWAY_CONFIG", "value": "/etc/gateway/gateway.yaml"} in container["env"]
    assert container["command"][-2:] == ["--config", "/etc/gateway/gateway.yaml"]
    probe_args = build_parser().parse_args(command[1:])
    assert probe_args.handler is cmd_health
    assert probe_args.timeout < readiness["timeoutSeconds"]

    components = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Component"}
    app_id = annotations["dapr.io/app-id"]
    store = components[document["store"]["dapr"]["state_store"]]
    assert f"{store['spec']['type']}/{store['spec']['version']}" in TRANSACTIONAL_ETAG_STATE_STORES
    assert components[document["dapr"]["pubsub"]]["spec"]["type"].startswith("pubsub.")
    for component in components.values():
        assert component["scopes"] == [app_id]
    configuration = find(objects, "Configuration", annotations["dapr.io/config"])
    assert configuration["spec"]["accessControl"]["defaultAction"] == "deny"
    # Secrets the Components read through Dapr's Kubernetes secret store exist, with the key
    secrets = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Secret"}
    for component in components.values():
        for item in component["spec"]["metadata"]:
            if "secretKeyRef" in item:
                ref = item["secretKeyRef"]
                assert ref["key"] in secrets[ref["name"]]["data"], ref


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_dapr_annotations_and_component_metadata_are_ones_dapr_knows(
    prepared: Path, overlay: str
) -> None:
    objects = rendered(prepared, overlay)
    annotations = find(objects, "Deployment", "gateway")["spec"]["template"]["metadata"][
        "annotations"
    ]
    unknown = {a for a in annotations if a.startswith("dapr.io/")} - sidecar_annotations()
    assert not unknown, f"not annotations the Dapr injector reads: {unknown}"
    for component in (o for o in objects if o["kind"] == "Component"):
        check_component_metadata(component)


def test_the_sidecar_body_limit_matches_the_gateways_grpc_message_limit(prepared: Path) -> None:
    from gateway.stores import dapr as dapr_store

    limit = getattr(dapr_store, "_MAX_MESSAGE", None)
    if limit is None:
        pytest.fail(
            "gateway.stores.dapr._MAX_MESSAGE is gone: update this test and the body limits in deploy/"
        )
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}

    def size(text: str) -> int:
        return int(text[:-2]) * units[text[-2:]]

    for overlay in OVERLAYS:
        deployment = find(rendered(prepared, overlay), "Deployment", "gateway")
        assert (
            size(deployment["spec"]["template"]["metadata"]["annotations"]["dapr.io/max-body-size"])
            == limit
        )
    run_file = yaml.safe_load((SELF_HOSTED / "dapr.yaml").read_text(encoding="utf-8"))
    assert size(run_file["common"]["maxBodySize"]) == limit


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_resiliency_targets_components_that_exist_with_policies_that_exist(
    prepared: Path, overlay: str
) -> None:
    objects = rendered(prepared, overlay)
    _check_resiliency(
        find(objects, "Resiliency", "gateway"),
        {o["metadata"]["name"] for o in objects if o["kind"] == "Component"},
    )


def _check_resiliency(resiliency: dict[str, Any], components: set[str]) -> None:
    policies = resiliency["spec"]["policies"]
    targets = resiliency["spec"]["targets"]["components"]
    assert "inbound" in targets["pubsub"], "messages to the gateway are not retried"
    assert set(targets) == components
    for name, directions in targets.items():
        for way, direction in directions.items():
            assert direction.get("timeout") in policies["timeouts"], name
            if way == "inbound":
                # Without a retry pubsub.redis acknowledges a message whose delivery
                # failed, so it is lost for the gateway; a breaker would fail deliveries
                # untried (docs/dapr.md, "Messages, calls and actions on real daprd").
                assert direction.get("retry") in policies["retries"], name
                assert "circuitBreaker" not in direction, name
                continue
            if name == "statestore":
                # the gateway re-decides writes of unknown outcome itself (see the comment)
                assert "retry" not in direction
                # Dapr's breakers count ETag conflicts as failures: ordinary contention
                # would open one and take the store away (tests/stores/test_dapr_store.py
                # shows conflicts leaving a real daprd with this spec serving).
                assert "circuitBreaker" not in direction
                continue
            assert direction.get("circuitBreaker") in policies["circuitBreakers"], name
            if "retry" in direction:
                assert direction["retry"] in policies["retries"], name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_sidecar_starts_without_a_token_and_outlives_handoffs_on_sigterm(
    prepared: Path, overlay: str
) -> None:
    """Without a service account token daprd's built-in Kubernetes secret store fails
    its start-up, so it must be turned off; on SIGTERM the sidecar keeps serving for
    dapr.io/block-shutdown-duration (plus its own 5 s graceful shutdown), which has to
    fit in the pod's termination grace period."""
    deployment = find(rendered(prepared, overlay), "Deployment", "gateway")
    pod = deployment["spec"]["template"]
    annotations = pod["metadata"]["annotations"]
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert annotations["dapr.io/disable-builtin-k8s-secret-store"] == "true"
    block = annotations["dapr.io/block-shutdown-duration"]
    assert block.endswith("s") and block[:-1].isdigit(), block
    graceful = int(annotations.get("dapr.io/graceful-shutdown-seconds", "5"))
    seconds = int(block[:-1])
    assert seconds >= 10
    assert seconds + graceful < int(pod["spec"]["terminationGracePeriodSeconds"])


def test_the_two_clusters_name_each_other_as_peers(prepared: Path) -> None:
    documents = {
        overlay: yaml.safe_load(
            find(rendered(prepared, overlay), "ConfigMap", "gateway-config")["data"]["gateway.yaml"]
        )
        for overlay in OVERLAYS
    }
    east, west = documents["cluster-east"], documents["cluster-west"]
    assert [p["id"] for p in east["peers"]] == [west["host"]["id"]]
    assert [p["id"] for p in west["peers"]] == [east["host"]["id"]]
    assert _port(east["peers"][0]["address"]) == _port(west["listen"])
    assert _port(west["peers"][0]["address"]) == _port(east["listen"])


def test_the_committed_overlays_do_not_build_until_the_secrets_are_made(tmp_path: Path) -> None:
    shutil.copytree(KUBERNETES, tmp_path / "kubernetes")
    for overlay in OVERLAYS:
        secrets = tmp_path / "kubernetes" / "overlays" / overlay / "secrets"
        for made in secrets.glob("*.yaml"):
            made.unlink()
        with pytest.raises(KustomizeError, match=r"secrets/gateway-tls\.yaml: no such file"):
            render(tmp_path / "kubernetes" / "overlays" / overlay)


#: Where the documented steps put Secret manifests with private keys: never committed.
GENERATED = [KUBERNETES / "overlays" / overlay / "secrets" for overlay in OVERLAYS]
_PRIVATE = re.compile(r"PRIVATE KEY|LS0tLS1CRUdJTi")  # PEM, and PEM in base64


def test_no_private_key_is_committed_under_deploy() -> None:
    for directory in GENERATED:
        ignored = (directory / ".gitignore").read_text(encoding="utf-8").splitlines()
        assert {"*", "!.gitignore"} <= set(ignored), directory
    # Every committed file under deploy/ is YAML (or a .gitignore); the self-hosted steps
    # write keys, certificates and bundles as .key, .crt and .json files, which
    # deploy/self-hosted/.gitignore ignores.
    scanned = [
        path
        for path in sorted(DEPLOY.rglob("*"))
        if path.is_file()
        and path.suffix in (".yaml", ".yml", "")
        and not any(path.is_relative_to(d) for d in GENERATED)
    ]
    assert len(scanned) > 20, scanned
    for path in scanned:
        assert not _PRIVATE.search(path.read_text(encoding="utf-8")), path


# --------------------------------------------------------------------------------------
# The renderer's own behaviour: kustomize's semantics, and refusals
# --------------------------------------------------------------------------------------


def _kustomization(root: Path, body: dict[str, Any], files: dict[str, Any] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", **body}
        ),
        encoding="utf-8",
    )
    for name, content in (files or {}).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        text = content if isinstance(content, str) else yaml.safe_dump_all(content)
        (root / name).write_text(text, encoding="utf-8")
    return root


def _deployment() -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "app"},
        "spec": {
            "selector": {"matchLabels": {"a": "b"}},
            "template": {
                "metadata": {"labels": {"a": "b"}},
                "spec": {
                    "containers": [
                        {"name": "one", "image": "registry:5000/one:1.0", "args": ["x"]},
                        {"name": "two", "image": "two", "args": ["a", "b"]},
                    ]
                },
            },
        },
    }


def test_a_patch_merges_containers_by_name_and_replaces_lists_without_a_merge_key(
    tmp_path: Path,
) -> None:
    patch = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "app"},
        "spec": {
            "replicas": 4,
            "template": {
                "spec": {
                    "containers": [{"name": "two", "args": ["y"]}, {"name": "three", "image": "t"}]
                }
            },
        },
    }
    _kustomization(tmp_path / "base", {"resources": ["app.yaml"]}, {"app.yaml": [_deployment()]})
    overlay = _kustomization(
        tmp_path / "overlay",
        {
            "namespace": "ns",
            "resources": ["../base"],
            "patches": [{"path": "patch.yaml"}],
            "images": [{"name": "registry:5000/one", "newTag": "2.0"}],
        },
        {"patch.yaml": [patch]},
    )
    (deployment,) = render(overlay)
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert deployment["metadata"]["namespace"] == "ns"
    assert deployment["spec"]["replicas"] == 4
    assert [c["name"] for c in containers] == ["one", "two", "three"]
    assert containers[0] == {"name": "one", "image": "registry:5000/one:2.0", "args": ["x"]}
    # args has no patch strategy: the patch's list replaces it
    assert containers[1] == {"name": "two", "image": "two", "args": ["y"]}
    validate_kubernetes(deployment, KUBERNETES_VERSIONS[-1])


def test_the_namespace_field_renames_namespace_objects_as_kustomize_does(tmp_path: Path) -> None:
    root = _kustomization(
        tmp_path,
        {"namespace": "wanted", "resources": ["ns.yaml"]},
        {"ns.yaml": [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other"}}]},
    )
    assert render(root) == [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "wanted"}}
    ]


@dataclass(frozen=True)
class Refusal:
    name: str
    kustomization: dict[str, Any]
    files: dict[str, Any]
    error: str
    reason: str


_APP = {"app.yaml": [_deployment()]}
REFUSALS = [
    Refusal(
        "common-labels",
        {"resources": ["app.yaml"], "commonLabels": {"a": "b"}},
        _APP,
        "commonLabels",
        "labels also go into selectors; not implemented",
    ),
    Refusal(
        "secret-generator",
        {"secretGenerator": [{"name": "s", "files": ["app.yaml"]}]},
        _APP,
        "secretGenerator",
        "not implemented",
    ),
    Refusal(
        "legacy-patches",
        {"resources": ["app.yaml"], "patchesStrategicMerge": ["app.yaml"]},
        _APP,
        "patchesStrategicMerge",
        "deprecated field, not implemented",
    ),
    Refusal(
        "name-prefix",
        {"resources": ["app.yaml"], "namePrefix": "x-"},
        _APP,
        "namePrefix",
        "would need name-reference rewriting",
    ),
    Refusal(
        "hash-suffix",
        {"configMapGenerator": [{"name": "c", "files": ["app.yaml"]}]},
        _APP,
        "generatorOptions",
        "hashed names need name-reference rewriting",
    ),
    Refusal(
        "generator-literals",
        {
            "configMapGenerator": [{"name": "c", "literals": ["a=b"]}],
            "generatorOptions": {"disableNameSuffixHash": True},
        },
        {},
        "configMapGenerator entries",
        "only files are implemented",
    ),
    Refusal(
        "remote-resource",
        {"resources": ["https://example.com/app.yaml"]},
        {},
        "only local",
        "no network, and not implemented",
    ),
    Refusal(
        "json6902-patch",
        {"resources": ["app.yaml"], "patches": [{"target": {"kind": "Deployment"}, "patch": "[]"}]},
        _APP,
        "patches take only",
        "inline and targeted patches are not implemented",
    ),
    Refusal(
        "patch-directive",
        {"resources": ["app.yaml"], "patches": [{"path": "p.yaml"}]},
        {
            **_APP,
            "p.yaml": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "metadata": {"name": "app"},
                    "spec": {
                        "template": {"spec": {"containers": [{"name": "one", "$patch": "delete"}]}}
                    },
                }
            ],
        },
        r"directive \$patch",
        "strategic-merge directives are not implemented",
    ),
    Refusal(
        "unknown-kind",
        {"resources": ["r.yaml"]},
        {
            "r.yaml": [
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "RoleBinding",
                    "metadata": {"name": "r"},
                }
            ]
        },
        "RoleBinding",
        "its subjects name namespaces the namespace transformer would have to rewrite",
    ),
    Refusal(
        "outside-root",
        {"resources": ["../elsewhere.yaml"]},
        {},
        "outside",
        "kustomize loads files from the kustomization's own directory only",
    ),
    Refusal(
        "duplicate",
        {"resources": ["app.yaml", "again.yaml"]},
        {**_APP, "again.yaml": [_deployment()]},
        "appears twice",
        "kustomize refuses two objects with one id",
    ),
    Refusal(
        "no-match",
        {"resources": ["app.yaml"], "patches": [{"path": "p.yaml"}]},
        {
            **_APP,
            "p.yaml": [
                {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "other"}}
            ],
        },
        "matches 0 objects",
        "a patch must change something",
    ),
]


@pytest.mark.parametrize("case", REFUSALS, ids=lambda c: c.name)
def test_the_renderer_refuses_what_it_does_not_implement(tmp_path: Path, case: Refusal) -> None:
    root = _kustomization(tmp_path / "k", case.kustomization, case.files)
    (tmp_path / "elsewhere.yaml").write_text(yaml.safe_dump(_deployment()), encoding="utf-8")
    with pytest.raises(KustomizeError, match=case.error):
        render(root)


def test_validation_fails_for_a_kind_without_a_schema() -> None:
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        validate_kubernetes(
            {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}, "1.37"
        )
    with pytest.raises(pytest.fail.Exception, match="no CRD schema"):
        validate_dapr(
            {"apiVersion": "dapr.io/v1alpha1", "kind": "Subscription", "metadata": {"name": "s"}}
        )


def test_crd_validation_refuses_unknown_and_mistyped_fields() -> None:
    component = yaml.safe_load(
        (KUBERNETES / "base" / "dapr-pubsub.yaml").read_text(encoding="utf-8")
    )
    validate_dapr(component)
    misspelt = copy.deepcopy(component)
    misspelt["spec"]["metdata"] = misspelt["spec"].pop("metadata")
    with pytest.raises(jsonschema.ValidationError):
        validate_dapr(misspelt)
    mistyped = copy.deepcopy(component)
    mistyped["scopes"] = "gateway"
    with pytest.raises(jsonschema.ValidationError):
        validate_dapr(mistyped)


# --------------------------------------------------------------------------------------
# Self-hosted: the Multi-App Run file and its two apps
# --------------------------------------------------------------------------------------


def run_file() -> dict[str, Any]:
    return yaml.safe_load((SELF_HOSTED / "dapr.yaml").read_text(encoding="utf-8"))


def test_the_multi_app_run_file_uses_only_fields_the_dapr_cli_reads() -> None:
    schema = yaml.safe_load((DAPR_DATA / "multi-app-run.schema.yaml").read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(run_file())
    bad = run_file()
    bad["apps"][0]["appPorts"] = 1  # a typo the CLI itself would silently ignore
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate(bad)


def _apps() -> list[tuple[dict[str, Any], Path]]:
    return [(app, (SELF_HOSTED / app["appDirPath"]).resolve()) for app in run_file()["apps"]]


@pytest.mark.parametrize("side", ["org-a", "org-b"])
def test_a_self_hosted_config_loads_with_the_gateways_loader(side: str) -> None:
    config = load_config(SELF_HOSTED / side / "gateway.yaml")
    assert config.listen.startswith("127.0.0.1:")


def test_each_app_runs_its_gateway_on_the_ports_its_config_names() -> None:
    ports: list[int] = []
    listens = {}
    for app, directory in _apps():
        assert app["command"] == ["gateway", "serve", "--config", "gateway.yaml"]
        document = yaml.safe_load((directory / "gateway.yaml").read_text(encoding="utf-8"))
        assert app["appProtocol"] == "grpc"
        assert app["appPort"] == document["dapr"]["app_port"]
        # the sidecar's ports reach the gateway as DAPR_GRPC_PORT / DAPR_HTTP_PORT
        assert set(document["store"]["dapr"]) == {"state_store"}
        listens[document["host"]["id"]] = document["listen"]
        ports += [
            app["appPort"],
            app["daprGRPCPort"],
            app["daprHTTPPort"],
            _port(document["listen"]),
        ]
    assert len(ports) == len(set(ports)), f"two things would listen on one port: {ports}"
    for _app, directory in _apps():
        document = yaml.safe_load((directory / "gateway.yaml").read_text(encoding="utf-8"))
        for peer in document["peers"]:
            assert peer["address"] == listens[peer["id"]]


def _resources(app: dict[str, Any], directory: Path) -> list[dict[str, Any]]:
    found = []
    for relative in app["resourcesPaths"]:
        for file in sorted((directory / relative).glob("*.yaml")):
            found += [d for d in yaml.safe_load_all(file.read_text(encoding="utf-8")) if d]
    return found


def test_each_app_has_the_components_its_config_references_and_they_validate() -> None:
    for app, directory in _apps():
        document = yaml.safe_load((directory / "gateway.yaml").read_text(encoding="utf-8"))
        resources = _resources(app, directory)
        for resource in resources:
            validate_dapr(resource)
            assert resource.get("scopes") == [app["appID"]], resource["metadata"]
        components = {r["metadata"]["name"]: r for r in resources if r["kind"] == "Component"}
        store = components[document["store"]["dapr"]["state_store"]]["spec"]
        assert f"{store['type']}/{store['version']}" in TRANSACTIONAL_ETAG_STATE_STORES
        assert components[document["dapr"]["pubsub"]]["spec"]["type"].startswith("pubsub.")
        for component in components.values():
            check_component_metadata(component)
        (resiliency,) = [r for r in resources if r["kind"] == "Resiliency"]
        _check_resiliency(resiliency, set(components))


def _documented_commands() -> list[list[str]]:
    """The gateway commands of the block docs/dapr.md marks as run by this test."""
    text = DOCS.read_text(encoding="utf-8")
    marker = "<!-- tests/test_deploy.py runs the gateway commands of the next block -->"
    assert marker in text, f"{DOCS}: the marked block is gone"
    block = text.split(marker, 1)[1].split("```", 2)[1]
    commands = [shlex.split(line) for line in block.splitlines() if line.startswith("gateway ")]
    assert commands, "the marked block has no gateway commands"
    return commands


def test_the_documented_self_hosted_setup_commands_produce_loadable_hosts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(
        SELF_HOSTED,
        tmp_path / "deploy" / "self-hosted",
        ignore=shutil.ignore_patterns("ca", "tls", "keys", ".dapr", "*.db*", "*.json"),
    )
    monkeypatch.chdir(tmp_path)
    for command in _documented_commands():
        assert gateway_main(command[1:]) == 0, shlex.join(command)
    for side in ("org-a", "org-b"):
        config = load_config(tmp_path / "deploy" / "self-hosted" / side / "gateway.yaml")
        for path in (config.tls.certificate, config.tls.private_key, config.tls.authority):
            assert path.is_file(), path
        assert load_keyring(config.keys).bundle.trust_domain == config.host.trust_domain


def _seconds(duration: str) -> float:
    """A Dapr duration of the forms deploy/ uses ("5s", "500ms", "2m")."""
    for unit, scale in (("ms", 0.001), ("s", 1.0), ("m", 60.0)):
        if duration.endswith(unit) and duration[: -len(unit)].replace(".", "", 1).isdigit():
            return float(duration[: -len(unit)]) * scale
    raise AssertionError(f"unexpected duration {duration!r}")


def test_a_message_answered_retry_outlives_the_sidecars_tries() -> None:
    """A message the gateway answers RETRY is tried again by the sidecar (the inbound
    retry policy), and after the last try pubsub.redis acknowledges it, dropping it,
    unless the delivery outlasted the component's processingTimeout (60 s by default,
    longer than the tries: measured on a real daprd, docs/dapr.md, "Real daprd re-run,
    2026-12-06"). So the pub/sub component must set a processingTimeout shorter than the
    tries, and a redeliverInterval, for the broker to keep and redeliver it."""
    component = yaml.safe_load(
        (KUBERNETES / "base" / "dapr-pubsub.yaml").read_text(encoding="utf-8")
    )
    assert component["spec"]["type"] == "pubsub.redis"
    metadata = {m["name"]: m.get("value") for m in component["spec"]["metadata"]}
    resiliency = yaml.safe_load(
        (KUBERNETES / "base" / "dapr-resiliency.yaml").read_text(encoding="utf-8")
    )
    inbound = resiliency["spec"]["targets"]["components"]["pubsub"]["inbound"]
    policy = resiliency["spec"]["policies"]["retries"][inbound["retry"]]
    assert policy["policy"] == "constant"
    tries_span = policy["maxRetries"] * _seconds(policy["duration"])
    assert "processingTimeout" in metadata and "redeliverInterval" in metadata
    assert _seconds(metadata["processingTimeout"]) < tries_span
    assert _seconds(metadata["redeliverInterval"]) > 0
