"""Live objects: evaluation cycles, admitted and denied actions, idempotent triggers, the
scheduler's isolation of slow and failing objects, and a cycle that continues across a
migration between two real processes with no generation lost or run twice."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from gateway.config import load_config
from gateway.handoff.journal import Journal, object_key
from gateway.host import Host
from gateway.lineage import EntryKind, LineageEntry
from gateway.model import CycleState, GovernedObject
from gateway.objectspec import parse_spec
from gateway.runtime.cycle import CycleResult, CycleRunner
from gateway.runtime.outbox import list_events
from gateway.scaffold import free_port
from gateway.stores import StateStore
from gateway.testing import (
    HostSpec,
    ServerProcess,
    World,
    build_world,
    create_from_spec,
    read_store,
    run_cli,
    serving,
    start_all,
)
from tests.conftest import FAST_HANDOFF, HOST_A, HOST_B

OFFERS = {
    "offers": [
        {"resource": "pubsub:*", "actions": ["publish"]},
        {"resource": "state:self", "actions": ["read", "write"]},
        {"resource": "invoke:*", "actions": ["invoke"]},
    ]
}


def spec(
    rules: list[dict[str, Any]],
    *,
    capabilities: list[dict[str, Any]],
    data: dict[str, Any] | None = None,
    interval: float = 0.2,
) -> Any:
    return parse_spec(
        {
            "data": data or {"invoice": 42, "amount": 1250, "status": "open"},
            "grant": {
                "audience": "spiffe://org-b.example",
                "capabilities": capabilities,
                "constraints": {"hosts": ["spiffe://org-a.example/*", "spiffe://org-b.example/*"]},
            },
            "cycle": {"interval_seconds": interval},
            "rules": rules,
        },
        source="test",
    )


def kinds(obj: GovernedObject) -> list[EntryKind]:
    return [e.kind for e in obj.lineage.entries]


def evaluated(entries: tuple[LineageEntry, ...] | list[LineageEntry]) -> list[int]:
    return [e.generation for e in entries if e.kind is EntryKind.EVALUATED]


@pytest.fixture
def one_host(tmp_path: Path) -> World:
    return build_world(tmp_path, [HostSpec(host_id=HOST_A, handoff=FAST_HANDOFF, policy=OFFERS)])


def in_host(world: World, scenario: Any) -> None:
    """Run ``scenario(host)`` on host A opened (not serving: no scheduler interferes)."""

    async def main() -> None:
        host = await Host.open(load_config(world.config(HOST_A)))
        try:
            await scenario(host)
        finally:
            await host.close()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("rule", "resource"),
    [
        ({"name": "w", "when": "true", "write": '{"checked": true}'}, "state:self"),
        (
            {
                "name": "p",
                "when": "true",
                "publish": {"topic": "alerts/overdue", "payload": "data.invoice"},
            },
            "pubsub:alerts/overdue",
        ),
        (
            {
                "name": "i",
                "when": "true",
                "invoke": {"target": "payments/charge", "payload": "{'amount': data.amount}"},
            },
            "invoke:payments/charge",
        ),
    ],
    ids=["write", "publish", "invoke"],
)
@pytest.mark.parametrize("granted", [True, False], ids=["admitted", "denied"])
def test_each_action_kind_is_admitted_or_denied_and_recorded(
    one_host: World, rule: dict[str, Any], resource: str, granted: bool
) -> None:
    verb = {"state:self": "write"}.get(
        resource, resource.split(":")[0].replace("pubsub", "publish")
    )
    capabilities = (
        [{"resource": resource, "actions": [verb]}]
        if granted
        else [{"resource": "pubsub:nothing/here", "actions": ["publish"]}]
    )

    async def scenario(host: Host) -> None:
        object_id = "obj://org-a.example/live/one"
        before = await create_from_spec(host, object_id, spec([rule], capabilities=capabilities))
        report = await host.cycles.run("default", object_id)
        assert report.result is CycleResult.EVALUATED
        after = await host.get_object(object_id, tenant="default")
        expected = EntryKind.ACTION_ADMITTED if granted else EntryKind.ACTION_DENIED
        assert kinds(after)[-2:] == [expected, EntryKind.EVALUATED]
        detail = after.lineage.entries[-2].detail
        assert f"rule {rule['name']}: {verb} {resource}" in detail
        if not granted:
            assert "denied, not in the object's effective authority" in detail  # the reason too
        events = await list_events(host.store)
        if verb == "write":
            assert (json.loads(after.data).get("checked") is True) == granted
            assert events == []
        else:
            assert after.data == before.data
            assert [(e.verb, e.resource) for e in events] == ([(verb, resource)] if granted else [])

    in_host(one_host, scenario)


def test_gateway_events_lists_the_outbox(one_host: World) -> None:
    """``gateway events`` shows what a host's objects published, filtered by object."""
    rule = {
        "name": "overdue",
        "when": "data.amount > 1000",
        "publish": {"topic": "alerts/overdue", "payload": "{'invoice': data.invoice}"},
    }
    capabilities = [{"resource": "pubsub:alerts/*", "actions": ["publish"]}]
    loud, quiet = "obj://org-a.example/live/loud", "obj://org-a.example/live/quiet"

    async def scenario(host: Host) -> None:
        await create_from_spec(host, loud, spec([rule], capabilities=capabilities))
        await create_from_spec(
            host, quiet, spec([rule], capabilities=capabilities, data={"amount": 5})
        )
        for object_id in (loud, quiet):
            assert (await host.cycles.run("default", object_id)).result is CycleResult.EVALUATED

    def events(*args: str) -> str:
        done = run_cli("events", *args, columns=250, timeout=60)
        assert done.returncode == 0 and done.stderr == "", done
        return done.stdout

    config = str(one_host.config(HOST_A))
    assert "no events in tenant default" in events("--config", config)
    in_host(one_host, scenario)
    listed = events("--config", config)
    rows = [line for line in listed.splitlines() if loud in line]
    assert len(rows) == 1, listed  # one event: the quiet object's rule did not fire
    assert "overdue" in rows[0] and "publish alerts/overdue" in rows[0]
    assert "pending" in rows[0]  # nobody delivers it: the host is not serving
    assert '{"invoice":42}' in rows[0]
    assert quiet not in listed
    assert "no events in tenant default" in events("--config", config, "--object", quiet)


def test_a_repeated_trigger_for_one_generation_runs_once(one_host: World) -> None:
    async def scenario(host: Host) -> None:
        object_id = "obj://org-a.example/live/idempotent"
        rule = {"name": "p", "when": "true", "publish": {"topic": "alerts/overdue"}}
        await create_from_spec(
            host,
            object_id,
            spec([rule], capabilities=[{"resource": "pubsub:alerts/*", "actions": ["publish"]}]),
        )
        reports = await asyncio.gather(
            *(host.cycles.run("default", object_id, generation=0) for _ in range(8))
        )
        results = sorted(r.result.value for r in reports)
        assert results.count(CycleResult.EVALUATED.value) == 1, results
        again = await host.cycles.run("default", object_id, generation=0)
        assert again.result is CycleResult.SKIPPED
        obj = await host.get_object(object_id, tenant="default")
        assert obj.generation == 1
        assert evaluated(obj.lineage.entries) == [0]
        assert len(await list_events(host.store)) == 1

    in_host(one_host, scenario)


def test_not_due_is_not_evaluated(one_host: World) -> None:
    async def scenario(host: Host) -> None:
        object_id = "obj://org-a.example/live/later"
        rule = {"name": "w", "when": "true", "write": '{"n": generation}'}
        await create_from_spec(
            host,
            object_id,
            spec(
                [rule], capabilities=[{"resource": "state:self", "actions": ["write"]}], interval=60
            ),
        )
        assert (await host.cycles.run("default", object_id)).result is CycleResult.EVALUATED
        assert (await host.cycles.run("default", object_id)).result is CycleResult.NOT_DUE
        obj = await host.get_object(object_id, tenant="default")
        assert obj.cycle.next_due is not None
        assert obj.cycle.next_due - host.clock.now() > timedelta(seconds=50)

    in_host(one_host, scenario)


def test_runtime_errors_are_recorded_and_do_not_stop_other_rules(one_host: World) -> None:
    async def scenario(host: Host) -> None:
        object_id = "obj://org-a.example/live/flaky"
        rules = [
            {"name": "broken", "when": "data.status > 3", "write": '{"x": 1}'},
            {"name": "fine", "when": "true", "write": '{"ok": generation}'},
        ]
        await create_from_spec(
            host,
            object_id,
            spec(rules, capabilities=[{"resource": "state:self", "actions": ["write"]}]),
        )
        await host.cycles.run("default", object_id)
        obj = await host.get_object(object_id, tenant="default")
        assert json.loads(obj.data)["ok"] == 0
        assert "rule broken: condition failed" in obj.lineage.entries[-1].detail

    in_host(one_host, scenario)


# --- the scheduler --------------------------------------------------------------------


@asynccontextmanager
async def http_endpoints(port: int, delay: float) -> AsyncIterator[list[str]]:
    """A loopback HTTP app with /fast and /slow (sleeps ``delay``); yields its call log."""
    calls: list[str] = []

    async def fast(request: web.Request) -> web.Response:
        calls.append("fast")
        return web.json_response({"ok": True})

    async def slow(request: web.Request) -> web.Response:
        calls.append("slow")
        await asyncio.sleep(delay)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/fast", fast)
    app.router.add_post("/slow", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield calls
    finally:
        await runner.cleanup()


def test_slow_and_failing_objects_do_not_hold_up_the_others(tmp_path: Path) -> None:
    """Five healthy objects cycling every 0.2 s, one invoking an endpoint that takes 5 s,
    one whose rule fails every cycle: over 3 s each healthy object keeps its rhythm and
    the fast endpoint keeps being called. Bounds are generous (half the ideal count)."""

    port = free_port()
    world = build_world(tmp_path, [HostSpec(host_id=HOST_A, policy=OFFERS)])
    config = world.config(HOST_A)
    config.write_text(config.read_text() + f"invoke:\n  app: http://127.0.0.1:{port}\n")

    async def main() -> None:
        async with http_endpoints(port, delay=5.0) as calls:
            invoke_all = [
                {"resource": "invoke:app/*", "actions": ["invoke"]},
                {"resource": "state:self", "actions": ["write"]},
            ]
            async with serving(world) as hosts:
                host = hosts[HOST_A]
                healthy = [f"obj://org-a.example/live/healthy-{i}" for i in range(5)]
                for object_id in healthy:
                    await create_from_spec(
                        host,
                        object_id,
                        spec(
                            [{"name": "tick", "when": "true", "write": '{"n": generation}'}],
                            capabilities=invoke_all,
                        ),
                    )
                await create_from_spec(
                    host,
                    "obj://org-a.example/live/slow",
                    spec(
                        [{"name": "call", "when": "true", "invoke": {"target": "app/slow"}}],
                        capabilities=invoke_all,
                    ),
                )
                await create_from_spec(
                    host,
                    "obj://org-a.example/live/fast",
                    spec(
                        [{"name": "call", "when": "true", "invoke": {"target": "app/fast"}}],
                        capabilities=invoke_all,
                    ),
                )
                await create_from_spec(
                    host,
                    "obj://org-a.example/live/failing",
                    spec(
                        [{"name": "bad", "when": "data.status > 3", "write": "{}"}],
                        capabilities=invoke_all,
                    ),
                )
                started = time.monotonic()
                await asyncio.sleep(3.0)
                elapsed = time.monotonic() - started
                ideal = elapsed / 0.2
                for object_id in healthy:
                    count = (await host.get_object(object_id, tenant="default")).generation
                    assert count >= ideal / 2, (
                        f"{object_id} ran {count} cycles in {elapsed:.1f} s (ideal {ideal:.0f})"
                    )
                failing = await host.get_object(
                    "obj://org-a.example/live/failing", tenant="default"
                )
                assert failing.generation >= ideal / 2  # its failure is recorded, and it goes on
                assert calls.count("fast") >= ideal / 4, calls.count("fast")
                assert 1 <= calls.count("slow") <= 16  # a few in flight, never blocking the rest

    asyncio.run(main())


# --- across a real migration -----------------------------------------------------------


def test_generations_continue_across_a_two_process_migration(tmp_path: Path) -> None:
    policy = {"offers": OFFERS["offers"]}
    world = build_world(
        tmp_path, [HostSpec(host_id=HOST_A, policy=policy), HostSpec(host_id=HOST_B, policy=policy)]
    )
    # This test reads the whole history from generation 0, so compaction (on by default,
    # 128 entries) is off: under load the 0.1 s cycles outlast the 128 entries before the
    # migration is done, and the archived prefix would start the entries at a later
    # generation. Compaction's own continuity is tests/test_compaction_runtime.py's.
    for host in (HOST_A, HOST_B):
        document = yaml.safe_load(world.config(host).read_text(encoding="utf-8"))
        document["lineage"] = {"compaction": False}
        world.config(host).write_text(yaml.safe_dump(document), encoding="utf-8")
    object_id = "obj://org-a.example/billing/invoice-42"
    spec_file = tmp_path / "invoice.yaml"
    spec_file.write_text(
        json.dumps(
            {
                "data": {"invoice": 42, "amount": 1250, "status": "open"},
                "grant": {
                    "audience": "spiffe://org-b.example",
                    "capabilities": [
                        {"resource": "pubsub:alerts/overdue", "actions": ["publish"]},
                        {"resource": "state:self", "actions": ["read", "write"]},
                    ],
                    "constraints": {
                        "hosts": ["spiffe://org-a.example/*", "spiffe://org-b.example/*"]
                    },
                },
                "cycle": {"interval_seconds": 0.1},
                "rules": [
                    {
                        "name": "overdue",
                        "when": "data.amount > 1000",
                        "publish": {"topic": "alerts/overdue", "payload": "generation"},
                    },
                    {"name": "count", "when": "true", "write": '{"checks": generation + 1}'},
                ],
            }
        )
    )

    def gateway(*args: str, config: Path) -> None:
        done = run_cli(*args, config=config, timeout=None)
        assert done.returncode == 0, done.stderr

    with ExitStack() as stack:
        start_all(stack, ServerProcess(world.config(HOST_A)), ServerProcess(world.config(HOST_B)))
        gateway(
            "object", "create", object_id, "--spec", str(spec_file), config=world.config(HOST_A)
        )
        time.sleep(1.5)
        gateway("migrate", object_id, "--to", HOST_B, config=world.config(HOST_A))
        time.sleep(1.5)

    async def read(store: StateStore) -> tuple[GovernedObject | None, list[int]]:
        loaded = await Journal(store).object("default", object_id)
        events = [e.generation for e in await list_events(store) if e.verb == "publish"]
        return (loaded.value if loaded else None), events

    moved, events_a = read_store(world.config(HOST_A), read)
    live, events_b = read_store(world.config(HOST_B), read)
    assert live is not None and moved is not None
    generations = evaluated(live.lineage.entries)
    hosts = [e.host for e in live.lineage.entries if e.kind is EntryKind.EVALUATED]
    assert generations == list(range(len(generations))), "a generation was lost or repeated"
    assert hosts.count(HOST_A) >= 3 and hosts.count(HOST_B) >= 3
    switch = hosts.index(HOST_B)
    assert set(hosts[:switch]) == {HOST_A} and set(hosts[switch:]) == {HOST_B}
    assert live.generation == generations[-1] + 1
    assert json.loads(live.data)["checks"] == live.generation
    # Events: each generation published exactly once, on the host that ran it.
    assert sorted(events_a + events_b) == generations
    assert set(events_a).isdisjoint(events_b)
    # The source keeps only what it had when the object left.
    assert evaluated(moved.lineage.entries) == generations[:switch]
    assert moved.cycle == CycleState(
        generation=switch, interval=moved.cycle.interval, next_due=moved.cycle.next_due
    )


def test_a_write_too_large_is_denied_for_its_size_while_the_grants_are_valid(
    one_host: World,
) -> None:
    """A denial names its own cause: a granted write refused for the data's size is not
    blamed on the grants (which are valid, though they do expire one day)."""
    rule = {"name": "double", "when": "true", "write": "{'copy': data.blob}"}
    object_spec = spec(
        [rule],
        capabilities=[{"resource": "state:self", "actions": ["write"]}],
        data={"blob": "x" * (3 << 20)},  # 3 MiB; a copy makes 6 MiB, over the 4 MiB limit
    )

    async def scenario(host: Host) -> None:
        object_id = "obj://org-a.example/live/too-large"
        created = await create_from_spec(host, object_id, object_spec)
        assert created.authority_expires is not None  # grants that end, but not yet
        assert (await host.cycles.run("default", object_id)).result is CycleResult.EVALUATED
        obj = await host.get_object(object_id, tenant="default")
        denied = obj.lineage.entries[-2]
        assert denied.kind is EntryKind.ACTION_DENIED
        assert "the write would make the data" in denied.detail, denied.detail
        assert "expired" not in denied.detail
        assert obj.data == created.data

    in_host(one_host, scenario)


def test_an_object_whose_grants_expired_may_do_nothing(one_host: World) -> None:
    """The authority computed on arrival ends with the grant chain: after that every
    proposal is denied, with the reason, though the object still cycles."""
    from dataclasses import replace as _replace

    from gateway.handoff.journal import object_key
    from gateway.wire import encode_object

    async def scenario(host: Host) -> None:
        object_id = "obj://org-a.example/live/expiring"
        rule = {"name": "p", "when": "true", "publish": {"topic": "alerts/overdue"}}
        created = await create_from_spec(
            host,
            object_id,
            spec([rule], capabilities=[{"resource": "pubsub:alerts/*", "actions": ["publish"]}]),
        )
        assert created.authority_expires is not None
        # Let the grants run out: pretend the object was admitted with a chain that ended.
        loaded = await host.journal.object("default", object_id)
        assert loaded is not None
        expired = _replace(loaded.value, authority_expires=host.clock.now() - timedelta(seconds=1))
        await host.store.put(
            object_key("default", object_id), encode_object(expired), etag=loaded.etag
        )
        assert (await host.cycles.run("default", object_id)).result is CycleResult.EVALUATED
        obj = await host.get_object(object_id, tenant="default")
        assert obj.lineage.entries[-2].kind is EntryKind.ACTION_DENIED
        assert "grants expired" in obj.lineage.entries[-2].detail
        assert await list_events(host.store) == []

    in_host(one_host, scenario)


def test_an_evaluation_records_what_record_would_after_each_write(one_host: World) -> None:
    """The cycle appends its entries to the lineage and rebuilds the object once; the
    entries must be exactly those GovernedObject.record makes step by step: the data
    digest after each write, the generation the cycle ran for, one evaluated entry."""
    rules = [
        {"name": "w1", "when": "true", "write": '{"checked": true}'},
        {"name": "p", "when": "true", "publish": {"topic": "alerts/x", "payload": "data"}},
        {"name": "w2", "when": "true", "write": '{"amount": data.amount + 1}'},
        {"name": "n", "when": "true", "invoke": {"target": "nope/x", "payload": "1"}},
    ]
    capabilities = [
        {"resource": "state:self", "actions": ["write"]},
        {"resource": "pubsub:alerts/x", "actions": ["publish"]},
    ]

    async def scenario(host: Host) -> None:
        object_id = "obj://org-a.example/live/ref"
        before = await create_from_spec(host, object_id, spec(rules, capabilities=capabilities))
        now = host.context.clock.now()
        after, events, admitted, denied = host.cycles.evaluate(before, now=now)
        assert (admitted, denied, len(events)) == (3, 1, 1)
        # The reference: one record (and one replace) per step, as before the batching.
        ref = replace(before, data=b'{"amount":1250,"checked":true,"invoice":42,"status":"open"}')
        ref = ref.record(EntryKind.ACTION_ADMITTED, host=HOST_A, at=now, detail="")
        ref = ref.record(EntryKind.ACTION_ADMITTED, host=HOST_A, at=now, detail="")
        ref = replace(ref, data=b'{"amount":1251,"checked":true,"invoice":42,"status":"open"}')
        ref = ref.record(EntryKind.ACTION_ADMITTED, host=HOST_A, at=now, detail="")
        ref = ref.record(EntryKind.ACTION_DENIED, host=HOST_A, at=now, detail="")
        ref = ref.record(EntryKind.EVALUATED, host=HOST_A, at=now, detail="")
        assert after.data == ref.data
        new = after.lineage.entries[len(before.lineage.entries) :]
        want = ref.lineage.entries[len(before.lineage.entries) :]
        assert [(e.kind, e.data_digest, e.credentials_digest, e.generation) for e in new] == [
            (e.kind, e.data_digest, e.credentials_digest, e.generation) for e in want
        ]
        assert new[0].data_digest != before.data_digest()  # the write came first
        assert after.cycle.generation == before.cycle.generation + 1
        # And the chain holds: each entry links to the one before it.
        assert [e.prev for e in new[1:]] == [
            after.lineage.entries[e.seq].leaf_hash() for e in new[:-1]
        ]

    in_host(one_host, scenario)


class _StaleReads:
    """A store whose reads of some keys return what they held earlier: a cycle that read
    them then raced a writer that committed first."""

    def __init__(self, store: StateStore, stale: dict[str, Any]) -> None:
        self._store = store
        self._stale = stale

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def get_many(self, keys: Any) -> dict[str, Any]:
        items = await self._store.get_many(keys)
        return {**items, **{k: v for k, v in self._stale.items() if k in items}}


def test_a_batch_where_one_object_lost_a_race_commits_the_others_once(one_host: World) -> None:
    async def scenario(host: Host) -> None:
        ids = [f"obj://org-a.example/live/batch-{n}" for n in range(3)]
        rule = {"name": "p", "when": "true", "publish": {"topic": "alerts/overdue"}}
        for object_id in ids:
            await create_from_spec(
                host,
                object_id,
                spec(
                    [rule], capabilities=[{"resource": "pubsub:alerts/*", "actions": ["publish"]}]
                ),
            )
        loser = ids[1]
        key = object_key("default", loser)
        stale = await host.store.get(key)
        # Another trigger of the same generation commits first ...
        assert (await host.cycles.run("default", loser, generation=0)).result is (
            CycleResult.EVALUATED
        )
        # ... while a batch that read the object before that commit goes on.
        racing = replace(host.context, journal=Journal(_StaleReads(host.store, {key: stale})))
        answers = await CycleRunner(racing).run_many("default", [(i, 0) for i in ids])
        results = {i: getattr(a, "result", a) for i, a in answers.items()}
        assert results == {
            ids[0]: CycleResult.EVALUATED,
            loser: CycleResult.CONFLICT,
            ids[2]: CycleResult.EVALUATED,
        }
        for object_id in ids:
            obj = await host.get_object(object_id, tenant="default")
            assert obj.generation == 1, object_id
            assert evaluated(obj.lineage.entries) == [0], object_id  # no gap, no repeat
        # One publish per generation and object: the loser's batch event was never written.
        assert len(await list_events(host.store)) == 3

    in_host(one_host, scenario)


def test_a_batch_reports_each_objects_own_answer(one_host: World) -> None:
    async def scenario(host: Host) -> None:
        rule = {"name": "w", "when": "true", "write": '{"n": generation}'}
        due, later = "obj://org-a.example/live/due", "obj://org-a.example/live/later"
        for object_id in (due, later):
            await create_from_spec(
                host,
                object_id,
                spec(
                    [rule],
                    capabilities=[{"resource": "state:self", "actions": ["write"]}],
                    interval=60,
                ),
            )
        assert (await host.cycles.run("default", later)).result is CycleResult.EVALUATED
        answers = await host.cycles.run_many(
            "default", [(due, 0), (later, 1), ("obj://org-a.example/live/absent", 0)]
        )
        results = {i: getattr(a, "result", a) for i, a in answers.items()}
        assert results == {
            due: CycleResult.EVALUATED,
            later: CycleResult.NOT_DUE,
            "obj://org-a.example/live/absent": CycleResult.SKIPPED,
        }
        # A second batch for the generation already run skips it (idempotent per generation).
        again = await host.cycles.run_many("default", [(due, 0)])
        assert getattr(again[due], "result", None) is CycleResult.SKIPPED
        obj = await host.get_object(due, tenant="default")
        assert json.loads(obj.data)["n"] == 0
        assert evaluated(obj.lineage.entries) == [0]

    in_host(one_host, scenario)
