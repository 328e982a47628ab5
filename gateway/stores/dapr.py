"""A :class:`~gateway.stores.StateStore` over a Dapr state component, through the official
``dapr`` SDK (async client) and a sidecar.

How the protocol's guarantees map onto Dapr's state API:

* **ETags** are the sidecar's. A write to a key that exists is sent with the ETag read
  just before (Dapr refuses it on mismatch); Dapr's writes return no ETag, so none is
  returned here.
* **"Must be absent"** is the component's own: a key that does not exist is written by an
  upsert *without* ETag under first-write concurrency, inside the transaction. On daprd
  (state.sqlite, state.postgresql v2) that inserts a missing key and fails the whole
  transaction if the key exists; an upsert with an ETag never issued fails for a missing
  key as for an existing one, so an ETag cannot express it (docs/dapr.md has the runs).
  The SDK's transaction operation has no ``StateOptions``, so transactions go through
  the raw runtime stub.
* **Prefix listing** has no Dapr primitive, so the store keeps an index of the listable
  keys (not of :data:`gateway.stores.UNLISTED`: custody records, fences, holds and
  usage, which are only read by exact key): for every first
  key segment (``t``, ``journal``, ``open`` …; keys without a ``/`` form one more
  family) a binary trie on the SHA-256 of the keys, of documents
  ``__index__/<segment, hex>/n<bits>``, starting :data:`ROOT_BITS` bits deep (32 roots,
  created on first use, so fresh families do not funnel every creator into one leaf). A leaf lists at most :data:`LEAF_KEYS` keys; a
  transaction that would make it list more turns it into a split marker and creates its
  two children (insert-only) at once. Every transaction that creates or deletes a key
  rewrites the key's leaf, conditional on the leaf's ETag (or insert-only for a new
  root), so the index changes exactly when existence changes, and what a create or
  delete costs is bounded whatever the number of keys. Splits are never undone, so the
  store remembers split nodes and goes straight to the leaf. ``__index__/families`` lists
  the segments seen (only rewritten when a new one appears).
* **Atomicity** is ``ExecuteStateTransaction``'s: the component must be transactional.
* **Values** are stored with a one-byte header, because Dapr answers a missing key with
  empty data: without it an empty value and no value would look the same.

Errors from the sidecar map to store errors: ``Aborted`` → ConcurrencyError (after
re-reading: a transaction that lost a race is decided again from fresh reads), ``Unavailable``/``DeadlineExceeded`` →
StoreUnavailableError. Components do not report conflicts alike: inside a transaction
daprd wraps every error as ``Internal``, and a first write that lost its race reads "no
item was updated" (state.postgresql v2) or "failed to set key" (state.redis); all of
these are conflicts (:func:`is_conflict`). Reads are retried with tenacity (they are
idempotent), also when a component timed out or was busy (daprd reports both as
``Internal``); writes are not retried blindly — a conditional write whose outcome is
unknown is re-decided by re-reading, here for index contention and by the caller
otherwise — except for errors after which the component certainly rolled back (SQLite
busy, PostgreSQL deadlock or serialization failure). Transaction operations are sent in
key order, so two transactions on PostgreSQL lock rows in one order and cannot deadlock
each other.

Components. At connect time the store asks the sidecar's metadata API which component
serves it and refuses the types in :data:`REFUSED_COMPONENTS`: ``state.redis`` accepts
an ETag write to a missing key and does not roll back a failed transaction, so it
cannot keep first-write-wins (docs/dapr.md has the contract runs that show it).

No sidecar. :func:`connect_client` fails after :data:`NO_SIDECAR_SECONDS` of refused
connections with one line naming the endpoint; a sidecar that listens but is not ready
yet gets :data:`SIDECAR_START_SECONDS`.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import hashlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import grpc
from tenacity import (
    AsyncRetrying,
    Retrying,
    retry_if_exception_type,
    retry_if_result,
    stop_after_attempt,
    wait_exponential_jitter,
    wait_fixed,
    wait_random_exponential,
)

from gateway import observability
from gateway._decode import load_json
from gateway.errors import (
    ConcurrencyError,
    StoreContentionError,
    StoreError,
    StoreUnavailableError,
)
from gateway.stores import (
    Delete,
    Expect,
    Item,
    Operation,
    Put,
    check_listable,
    check_start_after,
    listable,
)

#: Most keys one index leaf lists; a leaf that would list more splits in two. Bounds
#: what each create or delete rewrites, whatever the number of keys.
LEAF_KEYS = 64
INDEX = "__index__/"
_SPLIT = b'{"split":true}'
#: Bits of SHA-256: no trie path is longer.
_MAX_DEPTH = 256
#: Each family's trie starts 2**ROOT_BITS roots wide, so that concurrent creators in a
#: fresh family do not all queue on one leaf until it splits.
ROOT_BITS = 5
_HEADER = b"\x00"
_BULK = 100
_ATTEMPTS = 12
_MAX_MESSAGE = 32 << 20


def _family(key: str) -> str:
    """The first path segment of a key; "" for a key without a ``/``."""
    family, slash, _rest = key.partition("/")
    return family if slash else ""


def _node(family: str, path: str) -> str:
    """The index node of ``family`` at trie ``path`` (a string of bits; the roots have
    ROOT_BITS of them)."""
    return f"{INDEX}{family.encode().hex()}/n{path}"


def _roots() -> tuple[str, ...]:
    return tuple(format(n, f"0{ROOT_BITS}b") for n in range(2**ROOT_BITS))


_ROOTS = _roots()


def _bit(key: str, position: int) -> str:
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return str((digest[position // 8] >> (7 - position % 8)) & 1)


FAMILIES = f"{INDEX}families"


#: Component types refused as the gateway's state store (see the module docstring).
REFUSED_COMPONENTS = frozenset({"state.redis"})
#: Seconds of refused connections after which there is no sidecar to wait for.
NO_SIDECAR_SECONDS = 3.0
#: Seconds a sidecar that listens may take to become ready (daprd loads components).
SIDECAR_START_SECONDS = 60.0

#: How components word, under daprd's INTERNAL, a write that lost to another: the
#: transaction wrapper's "possible etag mismatch", state.postgresql v2's first write to a
#: key that exists ("no item was updated"), state.redis's ("failed to set key").
_CONFLICT_WORDS = ("etag", "no item was updated", "failed to set key")
#: INTERNAL errors after which the component certainly did nothing: SQLite busy,
#: PostgreSQL deadlock (40P01) and serialization failure (40001). Safe to try again.
_ROLLED_BACK_WORDS = (
    "database is locked",
    "sqlite_busy",
    "deadlock detected",
    "could not serialize",
)
#: INTERNAL errors of a component that did not answer in time: a read may be retried.
_TIMEOUT_WORDS = ("deadline exceeded", "timeout", "timed out", *_ROLLED_BACK_WORDS)


def _code(error: BaseException | None) -> grpc.StatusCode | None:
    """The gRPC status behind an SDK error. ``DaprGrpcError`` has ``code()``; the SDK's
    ``DaprInternalError`` (what ``save_state`` raises) keeps it on ``__cause__``."""
    while error is not None:
        code = getattr(error, "code", None)
        if callable(code):
            try:
                found = code()
            except Exception:
                found = None
            if isinstance(found, grpc.StatusCode):
                return found
        error = error.__cause__
    return None


def status_code(error: BaseException | None) -> grpc.StatusCode | None:
    """The gRPC status code behind an SDK error (None if there is none)."""
    return _code(error)


def _internal_saying(error: BaseException, words: tuple[str, ...]) -> bool:
    if _code(error) is not grpc.StatusCode.INTERNAL:
        return False
    text = str(error).lower()
    return any(word in text for word in words)


def is_conflict(error: BaseException) -> bool:
    """An ETag or first-write conflict. Outside transactions daprd answers ABORTED; inside
    one it wraps every store error as INTERNAL ("error while executing state transaction:
    possible etag mismatch ..."), and some components word a lost first write their own
    way, so the text is the only sign there (dapr/dapr pkg/api/grpc)."""
    if _code(error) is grpc.StatusCode.ABORTED:
        return True
    return _internal_saying(error, _CONFLICT_WORDS)


_conflict = is_conflict


def _rolled_back(error: BaseException) -> bool:
    return _internal_saying(error, _ROLLED_BACK_WORDS)


def _transient_read(error: BaseException) -> bool:
    code = _code(error)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return True
    return _internal_saying(error, _TIMEOUT_WORDS)


class _Transient(Exception):
    pass


class _Stale(Exception):
    """Existence changed between reading a key and reading its index leaf, or a trie node
    was not where its split parent says: decide again from fresh reads."""


@contextlib.contextmanager
def _sidecar_http(endpoint: str | None) -> Iterator[None]:
    """Point the SDK's (process-wide) health check at ``endpoint`` for the duration only.

    The SDK reads ``DAPR_HTTP_ENDPOINT`` from a settings object whose instance attributes
    win over the environment; leaving one set would redirect every later client.
    """
    from dapr.conf import settings

    if endpoint is None:
        yield
        return
    had = "DAPR_HTTP_ENDPOINT" in vars(settings)
    previous = vars(settings).get("DAPR_HTTP_ENDPOINT")
    setattr(settings, "DAPR_HTTP_ENDPOINT", endpoint)  # noqa: B010 - not a declared attribute
    try:
        yield
    finally:
        if had:
            setattr(settings, "DAPR_HTTP_ENDPOINT", previous)  # noqa: B010
        else:
            delattr(settings, "DAPR_HTTP_ENDPOINT")


def _health_url(http_endpoint: str | None) -> str:
    from dapr.clients.http.helpers import get_api_url

    with _sidecar_http(http_endpoint):
        return f"{get_api_url()}/healthz/outbound"


def _probe(url: str) -> bool | None:
    """True: healthy; False: listening, not ready; None: nothing listens there."""
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:  # noqa: S310 - http(s) only
            return bool(200 <= response.status < 300)
    except urllib.error.HTTPError:
        return False  # it answered: a sidecar still starting
    except (urllib.error.URLError, OSError):
        return None


def wait_for_sidecar(
    url: str,
    *,
    absent_for: float = NO_SIDECAR_SECONDS,
    starting_for: float = SIDECAR_START_SECONDS,
) -> None:
    """Wait until ``url`` (daprd's outbound health endpoint) answers 2xx, quietly.

    The SDK's own wait prints a line per attempt for a minute; a gateway without a
    sidecar should say so at once, in one line that names where it looked.
    """
    start = time.monotonic()
    heard = False

    def probe_once() -> bool:
        nonlocal heard
        state = _probe(url)
        if state:
            return True
        heard = heard or state is False
        waited = time.monotonic() - start
        if not heard and waited >= absent_for:
            raise StoreUnavailableError(
                f"no Dapr sidecar at {url}: nothing accepted a connection for {waited:.0f} s",
                hint="start daprd, or point DAPR_HTTP_ENDPOINT/DAPR_HTTP_PORT "
                "(and DAPR_GRPC_ENDPOINT/DAPR_GRPC_PORT) at it",
            )
        if waited >= starting_for:
            raise StoreUnavailableError(
                f"the Dapr sidecar at {url} did not become ready within {waited:.0f} s",
                hint="read daprd's log: a component that cannot reach its backend keeps it unready",
            )
        return False

    # Polled every 0.2 s until ready; the two deadlines above end it with one line.
    Retrying(retry=retry_if_result(lambda ready: not ready), wait=wait_fixed(0.2))(probe_once)


async def connect_client(
    *, grpc_endpoint: str | None = None, http_endpoint: str | None = None
) -> Any:
    """Wait for the sidecar (its HTTP health endpoint, as the SDK does) and connect.

    Endpoints not given come from the SDK's settings: ``DAPR_GRPC_ENDPOINT`` /
    ``DAPR_GRPC_PORT`` and ``DAPR_HTTP_ENDPOINT`` / ``DAPR_HTTP_PORT``.
    """
    from dapr.aio.clients import DaprClient

    url = _health_url(http_endpoint)
    # Blocking probes (urllib + sleep): keep them off the event loop.
    await asyncio.to_thread(wait_for_sidecar, url)
    with _sidecar_http(http_endpoint):
        # The constructor checks health again, synchronously: the sidecar is up, so it
        # answers at once.
        return DaprClient(address=grpc_endpoint, max_grpc_message_length=_MAX_MESSAGE)


async def check_component(client: Any, store_name: str) -> str:
    """The type of the state component ``store_name``; refuse a missing or unsafe one."""
    try:
        metadata = await client.get_metadata()
    except Exception as exc:
        raise StoreUnavailableError(
            f"the Dapr sidecar did not answer its metadata API: {str(exc)[:200]}"
        ) from exc
    registered = {c.name: c.type for c in metadata.registered_components}
    kind = registered.get(store_name)
    if kind is None or not kind.startswith("state."):
        states = sorted(name for name, t in registered.items() if t.startswith("state."))
        raise StoreError(
            f"the Dapr sidecar has no state component named {store_name!r} "
            f"(its state components: {', '.join(states) or 'none'})",
            hint="check dapr.state_store in the configuration and daprd's --resources-path",
        )
    if kind in REFUSED_COMPONENTS:
        raise StoreError(
            f"Dapr state component {store_name!r} is {kind}, which cannot keep the "
            "gateway's first-write-wins guarantee (it accepts ETag writes to missing keys "
            "and does not roll back failed transactions)",
            hint="use state.postgresql (v2) or state.sqlite; docs/dapr.md lists the components tested",
        )
    return str(kind)


@observability.metered_store
class DaprStore:
    """State through a Dapr sidecar. Open with :meth:`connect`."""

    def __init__(self, client: Any, store_name: str) -> None:
        self._client = client
        self.store_name = store_name
        #: Index nodes known to be split. A split is never undone, so this never goes stale.
        self._split: set[str] = set()
        #: Families known to be on the families document (never taken off it either).
        self._families: set[str] = set()

    @classmethod
    async def connect(
        cls, store_name: str, *, grpc_endpoint: str | None = None, http_endpoint: str | None = None
    ) -> DaprStore:
        client = await connect_client(grpc_endpoint=grpc_endpoint, http_endpoint=http_endpoint)
        try:
            await check_component(client, store_name)
        except BaseException:
            await client.close()
            raise
        return cls(client, store_name)

    @property
    def client(self) -> Any:
        """The SDK client, shared with pub/sub and jobs."""
        return self._client

    async def close(self) -> None:
        await self._client.close()

    def __repr__(self) -> str:
        return f"DaprStore({self.store_name!r})"

    # --- calls ---------------------------------------------------------------------------

    async def _read(self, call: Any) -> Any:
        """An idempotent read, retried while the sidecar is briefly unavailable."""
        retrying = AsyncRetrying(
            stop=stop_after_attempt(4),
            wait=wait_exponential_jitter(multiplier=0.05, max=1.0, jitter=0.05),
            retry=retry_if_exception_type(_Transient),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    try:
                        return await call()
                    except Exception as exc:
                        if _transient_read(exc):
                            raise _Transient() from exc
                        raise self._mapped(exc, "read") from exc
        except _Transient as exc:
            raise StoreUnavailableError(
                f"Dapr state store {self.store_name!r} did not answer a read",
                hint="check the sidecar and the state component",
            ) from exc.__cause__
        raise AssertionError("tenacity returns or raises")

    def _mapped(self, error: Exception, doing: str) -> Exception:
        code = _code(error)
        if is_conflict(error):
            return ConcurrencyError(
                f"Dapr state store {self.store_name!r}: {doing} conflicted (ETag)"
            )
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return StoreUnavailableError(
                f"Dapr state store {self.store_name!r} did not answer a {doing}"
            )
        detail = str(error).splitlines()[0][:300]
        return StoreError(f"Dapr state store {self.store_name!r} refused a {doing}: {detail}")

    async def _bulk(self, keys: Sequence[str]) -> dict[str, tuple[bytes, str]]:
        """Raw (value with header, etag) of the existing keys among ``keys``."""
        found: dict[str, tuple[bytes, str]] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), _BULK):
            chunk = unique[start : start + _BULK]
            response = await self._read(
                lambda c=chunk: self._client.get_bulk_state(
                    store_name=self.store_name, keys=c, parallelism=8
                )
            )
            for item in response.items:
                if item.error:
                    raise StoreError(f"Dapr could not read {item.key!r}: {item.error}")
                data = item.data if isinstance(item.data, bytes) else item.data.encode()
                if data:
                    found[item.key] = (data, item.etag)
        return found

    # --- the protocol ---------------------------------------------------------------------

    async def get(self, key: str) -> Item | None:
        response = await self._read(
            lambda: self._client.get_state(store_name=self.store_name, key=key)
        )
        data = response.data if isinstance(response.data, bytes) else response.data.encode()
        if not data:
            return None
        return Item(key=key, value=_decode(key, data), etag=response.etag)

    async def get_many(self, keys: Sequence[str]) -> dict[str, Item]:
        if isinstance(keys, str):
            raise TypeError("get_many takes a sequence of keys, not one string")
        found = await self._bulk(keys)
        return {
            k: Item(key=k, value=_decode(k, found[k][0]), etag=found[k][1])
            for k in keys
            if k in found
        }

    async def get_etags(self, keys: Sequence[str]) -> dict[str, str]:
        """Dapr's state API reads no ETag without its value: the values are read (in
        bulk, as :meth:`get_many` does) and dropped."""
        if isinstance(keys, str):
            raise TypeError("get_etags takes a sequence of keys, not one string")
        found = await self._bulk(keys)
        return {k: found[k][1] for k in keys if k in found}

    async def list(
        self, prefix: str, *, limit: int | None = None, start_after: str | None = None
    ) -> builtins.list[str]:
        """The index has no order (it is a trie on the keys' hashes): every leaf of the
        prefix's family is read, then the keys are filtered, sorted and cut, so a page after
        ``start_after`` costs as much to read as the whole family; it still returns (and
        its caller reads the values of) a bounded page."""
        if limit is not None and limit < 0:
            raise ValueError("limit must not be negative")
        check_start_after(start_after)
        check_listable(prefix)
        if "/" in prefix:
            families = [_family(prefix)]
        else:
            known = await self._bulk([FAMILIES])
            names = _index_keys(known[FAMILIES][0]) if FAMILIES in known else []
            families = ["", *(name for name in names if name.startswith(prefix))]
        # Walk each family's trie level by level: split nodes name their two children.
        level = [_node(family, path) for family in families for path in _ROOTS]
        keys: builtins.list[str] = []
        for _depth in range(_MAX_DEPTH + 1):
            if not level:
                break
            found = await self._bulk(level)
            deeper = []
            for node in level:
                if node not in found:
                    continue  # a family whose root was never written
                listed = _leaf_keys(found[node][0])
                if listed is None:
                    self._split.add(node)
                    deeper += [node + "0", node + "1"]
                else:
                    keys += (
                        k
                        for k in listed
                        if k.startswith(prefix) and (start_after is None or k > start_after)
                    )
            level = deeper
        keys.sort()
        return keys[:limit] if limit is not None else keys

    async def put(self, key: str, value: bytes, *, etag: str | Expect) -> None:
        await self.transact([Put(key=key, value=value, etag=etag)])

    async def delete(self, key: str, *, etag: str | Expect) -> None:
        await self.transact([Delete(key=key, etag=etag)])

    async def transact(self, operations: Sequence[Operation]) -> None:
        """Returns None: Dapr's state API answers a transaction without the new ETags."""
        ops = tuple(operations)
        _check(ops)
        if not ops:
            return
        # Jittered and growing: writers that lost to each other should not collide again.
        retrying = AsyncRetrying(
            stop=stop_after_attempt(_ATTEMPTS),
            wait=wait_random_exponential(multiplier=0.002, max=0.06),
            retry=retry_if_result(lambda done: not done),
            retry_error_callback=lambda _state: False,
        )
        committed = bool(await retrying(self._try_transact, ops))
        if committed:
            return
        # Not a ConcurrencyError: no precondition of the caller failed, and callers read
        # ConcurrencyError as "somebody else decided first".
        raise StoreContentionError(
            f"Dapr state store {self.store_name!r}: the key index kept changing under this transaction",
            hint="heavy contention on new keys; retry",
        )

    async def _try_transact(self, ops: tuple[Operation, ...]) -> bool:
        """One attempt; False if it lost a race (re-read and try again)."""
        current = await self._bulk([op.key for op in ops])
        creations: builtins.list[str] = []
        deletions: builtins.list[str] = []
        requests = []
        for op in ops:
            existing = current.get(op.key)
            if isinstance(op.etag, str):
                if existing is None or existing[1] != op.etag:
                    state = "it does not exist" if existing is None else "its ETag differs"
                    raise ConcurrencyError(f"{op.key!r}: expected ETag {op.etag!r}, but {state}")
            elif op.etag is Expect.ABSENT and existing is not None:
                raise ConcurrencyError(f"{op.key!r}: expected it to be absent, but it exists")
            # Unlisted keys are never enumerated, so their existence changes no index leaf.
            indexed = listable(op.key)
            if isinstance(op, Put):
                if existing is None:
                    # Insert-only: the component itself refuses it if the key exists by
                    # then, and fails the whole transaction. First-write-wins does not
                    # depend on the index.
                    if indexed:
                        creations.append(op.key)
                    requests.append(_create(op.key, _HEADER + op.value))
                else:
                    requests.append(_upsert(op.key, _HEADER + op.value, existing[1]))
            elif existing is not None:
                if indexed:
                    deletions.append(op.key)
                requests.append(_delete(op.key, existing[1]))
        try:
            requests.extend(await self._index_updates(creations, deletions))
        except _Stale:
            return False
        if not requests:
            return True
        # One lock order for every transaction: PostgreSQL locks rows as it writes them,
        # and two transactions taking shared keys in different orders can deadlock.
        requests.sort(key=lambda request: str(request.request.key))
        from dapr.proto import api_v1

        try:
            # The raw stub: the SDK's TransactionalStateOperation has no StateOptions,
            # and insert-only needs first-write concurrency on the operation.
            await self._client._stub.ExecuteStateTransaction(
                api_v1.ExecuteStateTransactionRequest(
                    storeName=self.store_name, operations=requests
                )
            )
        except Exception as exc:
            if _conflict(exc) or _rolled_back(exc):
                # Someone wrote first, or the component rolled back (busy, deadlock): the
                # next attempt re-decides from fresh reads.
                return False
            raise self._mapped(exc, "transaction") from exc
        return True

    async def _leaves(
        self, keys: Iterable[str]
    ) -> dict[str, tuple[str, builtins.list[str], str | None]]:
        """For each key, the index leaf that lists it or would: (node, keys, ETag), with
        ETag None for a root not written yet (roots are created on first use). Splits are permanent, so nodes known to be
        split are skipped without reading them."""
        paths: dict[str, str] = {}
        for key in keys:
            path = "".join(_bit(key, n) for n in range(ROOT_BITS))
            while _node(_family(key), path) in self._split and len(path) < _MAX_DEPTH:
                path += _bit(key, len(path))
            paths[key] = path
        leaves: dict[str, tuple[str, builtins.list[str], str | None]] = {}
        for _depth in range(_MAX_DEPTH + 1):
            pending = [key for key in paths if key not in leaves]
            if not pending:
                return leaves
            nodes = {key: _node(_family(key), paths[key]) for key in pending}
            found = await self._bulk(list(nodes.values()))
            for key, node in nodes.items():
                if node not in found:
                    if len(paths[key]) > ROOT_BITS:
                        raise _Stale()  # children are created with their parent's split
                    leaves[key] = (node, [], None)
                    continue
                raw, etag = found[node]
                listed = _leaf_keys(raw)
                if listed is None:
                    self._split.add(node)
                    paths[key] += _bit(key, len(paths[key]))
                else:
                    leaves[key] = (node, listed, etag)
        raise StoreError("the key index is deeper than a SHA-256 digest is long")

    async def _index_updates(
        self, creations: Iterable[str], deletions: Iterable[str]
    ) -> builtins.list[Any]:
        """Index writes for keys coming into or going out of existence, each conditional
        on the ETag just read (or insert-only), so a concurrent change of the same leaf
        makes the whole transaction fail. A leaf never lists more than LEAF_KEYS keys:
        a fuller one becomes a split marker and its keys move into two new children."""
        created = list(creations)
        removed_keys = list(deletions)
        if not created and not removed_keys:
            return []
        # Read after the op keys were read (by the caller): that order is what lets a
        # leaf that disagrees with them reveal a concurrent change.
        leaves = await self._leaves([*created, *removed_keys])
        changes: dict[str, tuple[set[str], set[str]]] = {}
        for key in created:
            changes.setdefault(leaves[key][0], (set(), set()))[0].add(key)
        for key in removed_keys:
            changes.setdefault(leaves[key][0], (set(), set()))[1].add(key)
        by_node = {node: (listed, etag) for node, listed, etag in leaves.values()}
        updates: builtins.list[Any] = []
        for node, (added, removed) in changes.items():
            listed_now, etag = by_node[node]
            listed = set(listed_now)
            if added & listed or removed - listed:
                # The keys were read before this leaf: someone created or deleted one in
                # between. The leaf is the authority on listing; decide again.
                raise _Stale()
            updates += _leaf_writes(node, (listed | added) - removed, etag)
        if {_family(key) for key in created} - self._families - {""}:
            # Families are never taken off the list, so one known is known for good.
            known = await self._bulk([FAMILIES])
            raw, etag = known[FAMILIES] if FAMILIES in known else (_HEADER + b"[]", None)
            families = set(_index_keys(raw))
            self._families |= families
            new = {_family(key) for key in created} - families - {""}
            if new:
                value = _HEADER + _dumps(sorted(families | new))
                updates.append(
                    _create(FAMILIES, value) if etag is None else _upsert(FAMILIES, value, etag)
                )
        return updates


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _leaf_writes(node: str, keys: set[str], etag: str | None) -> builtins.list[Any]:
    """Write ``keys`` as the leaf ``node`` (conditional on ``etag``, or insert-only), or,
    beyond LEAF_KEYS, mark ``node`` split and create its children, insert-only."""
    depth = len(node) - node.rindex("/") - 2
    if len(keys) <= LEAF_KEYS or depth >= _MAX_DEPTH:
        value = _HEADER + _dumps(sorted(keys))
    else:
        value = _HEADER + _SPLIT
    write = _create(node, value) if etag is None else _upsert(node, value, etag)
    if value.endswith(_SPLIT):
        halves: tuple[set[str], set[str]] = (set(), set())
        for key in keys:
            halves[int(_bit(key, depth))].add(key)
        return [
            write,
            *_leaf_writes(node + "0", halves[0], None),
            *_leaf_writes(node + "1", halves[1], None),
        ]
    return [write]


def _operation(kind: str, key: str, value: bytes, etag: str | None, *, first_write: bool) -> Any:
    from dapr.proto import api_v1, common_v1

    item = common_v1.StateItem(key=key, value=value)
    if etag is not None:
        item.etag.CopyFrom(common_v1.Etag(value=etag))
    if first_write:
        item.options.CopyFrom(
            common_v1.StateOptions(concurrency=common_v1.StateOptions.CONCURRENCY_FIRST_WRITE)
        )
    return api_v1.TransactionalStateOperation(operationType=kind, request=item)


def _create(key: str, value: bytes) -> Any:
    """Insert-only: an upsert without ETag under first-write concurrency. On daprd with
    state.sqlite and state.postgresql v2 it creates a missing key and fails the whole
    transaction if the key exists (docs/dapr.md). An ETag never issued cannot do this:
    both components refuse it for a missing key as for an existing one."""
    return _operation("upsert", key, value, None, first_write=True)


def _upsert(key: str, value: bytes, etag: str) -> Any:
    return _operation("upsert", key, value, etag, first_write=True)


def _delete(key: str, etag: str) -> Any:
    return _operation("delete", key, b"", etag, first_write=False)


def _decode(key: str, data: bytes) -> bytes:
    if not data.startswith(_HEADER):
        raise StoreError(f"{key!r} was not written by this gateway (no value header)")
    return data[len(_HEADER) :]


def _leaf_keys(raw: bytes) -> builtins.list[str] | None:
    """The keys a leaf lists, or None for a split node."""
    if _decode("index", raw) == _SPLIT:
        return None
    return _index_keys(raw)


def _index_keys(raw: bytes) -> builtins.list[str]:
    keys = load_json(_decode("index", raw), error=StoreError, what="a key index node")
    if not isinstance(keys, list):
        raise StoreError("a key index node is damaged")
    return [str(k) for k in keys]


def _check(ops: tuple[Operation, ...]) -> None:
    keys = [op.key for op in ops]
    if len(set(keys)) != len(keys):
        duplicate = next(k for k in keys if keys.count(k) > 1)
        raise StoreError(f"transaction names {duplicate!r} twice", hint="one operation per key")
    for op in ops:
        if op.key.startswith(INDEX):
            raise StoreError(f"{op.key!r} is reserved for the store's own index")
        if not op.key:
            raise ValueError("keys must not be empty")
        if isinstance(op, Put) and not isinstance(op.value, bytes):
            raise TypeError(f"value of {op.key!r} must be bytes")
