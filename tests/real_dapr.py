"""Real daprd sidecars named by the environment, for the tests that also run on them.

Without these variables the tests run on the stand-in (tests/daprd) or are skipped with a
reason naming them; docs/dapr.md shows how the sidecars were started.

* ``DAPR_GRPC_ENDPOINT`` / ``DAPR_HTTP_ENDPOINT`` / ``DAPR_APP_PORT``: gateway A's
  sidecar (state store ``statestore``, pub/sub ``pubsub``, ``--app-protocol grpc`` with
  the gateway on ``DAPR_APP_PORT``).
* ``DAPR_PEER_GRPC_ENDPOINT`` / ``DAPR_PEER_HTTP_ENDPOINT`` / ``DAPR_PEER_APP_PORT``:
  gateway B's, with its own state store and the same pub/sub (one Redis database).
* ``DAPR_CALLER_HTTP_ENDPOINT``: a third sidecar, of another app (no app port needed),
  through which the tests call the gateway app with Dapr service invocation; its app id
  is read from its metadata API.
* ``DAPR_RECEIVER_PORT``: the loopback port that A's ``HTTPEndpoint`` ``payments`` and
  ``bindings.http`` components ``notify`` and ``audit`` name
  (``http://127.0.0.1:<port>/payments``, ``/notify``, ``/audit``); the test's receiver
  listens there.

The stores and the Redis streams outlive a run: the tests empty the state stores first
(:func:`clear`) and name their objects and messages afresh per run (:data:`RUN`).
"""

from __future__ import annotations

import asyncio
import json
import os
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Any

from gateway.handoff.home import custody_key
from gateway.handoff.journal import fence_key, held_key, usage_key
from gateway.stores import Expect
from gateway.stores.dapr import DaprStore

#: Names this run's objects and messages on real sidecars, whose stores outlive the run.
RUN = uuid.uuid4().hex[:8]

REAL_A = os.environ.get("DAPR_GRPC_ENDPOINT")
REAL_B = os.environ.get("DAPR_PEER_GRPC_ENDPOINT")


@dataclass(frozen=True)
class RealSidecar:
    grpc_endpoint: str
    http_endpoint: str

    def store_section(self, name: str = "statestore") -> dict[str, Any]:
        return {
            "dapr": {
                "state_store": name,
                "grpc_endpoint": self.grpc_endpoint,
                "http_endpoint": self.http_endpoint,
            }
        }


def sidecar(prefix: str = "DAPR") -> RealSidecar | None:
    """The real sidecar ``<prefix>_GRPC_ENDPOINT`` / ``<prefix>_HTTP_ENDPOINT`` name."""
    grpc_endpoint = os.environ.get(f"{prefix}_GRPC_ENDPOINT")
    http_endpoint = os.environ.get(f"{prefix}_HTTP_ENDPOINT")
    if not grpc_endpoint or not http_endpoint:
        return None
    return RealSidecar(grpc_endpoint, http_endpoint)


def missing(*names: str) -> list[str]:
    """The variables of ``names`` that are not set."""
    return [name for name in names if not os.environ.get(name)]


def clear(section: dict[str, Any]) -> None:
    """Empty a real sidecar's store: the test's world must be the only one there.

    Only listable keys can be found; the unlisted records of the objects listed (custody,
    fence, hold) and of their tenants (usage) are deleted by name. Records of objects a
    crashed run left only staged cannot be found, so the tests that reuse a store name
    their objects afresh on every run (:data:`RUN`)."""

    async def main() -> None:
        dapr = section["dapr"]
        store = await DaprStore.connect(
            dapr["state_store"],
            grpc_endpoint=dapr["grpc_endpoint"],
            http_endpoint=dapr["http_endpoint"],
        )
        try:
            keys = await store.list("")
            unlisted: set[str] = set()
            for key in keys:
                parts = key.split("/", 3)
                if parts[0] == "t" and len(parts) == 4 and parts[2] == "objects":
                    tenant, object_id = parts[1], parts[3]
                    unlisted |= {
                        custody_key(object_id),
                        fence_key(tenant, object_id),
                        held_key(tenant, object_id),
                        usage_key(tenant),
                    }
            for key in [*keys, *sorted(unlisted)]:
                await store.delete(key, etag=Expect.ANY)
        finally:
            await store.close()

    asyncio.run(main())


def app_id_of(http_endpoint: str) -> str:
    """The app id a sidecar runs for (its metadata API, ``GET /v1.0/metadata``)."""
    with urllib.request.urlopen(f"{http_endpoint}/v1.0/metadata", timeout=10) as answer:
        return str(json.load(answer)["id"])


def invoke_app(
    http_endpoint: str, app_id: str, method: str, body: dict[str, Any], *, timeout: float = 30
) -> tuple[int, bytes]:
    """Dapr service invocation through a sidecar's HTTP API: (HTTP status, body)."""
    request = urllib.request.Request(
        f"{http_endpoint}/v1.0/invoke/{app_id}/method/{method}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read()
