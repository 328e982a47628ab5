"""What reaches a host from outside besides peers (session 28 review): the Dapr app
callback (messages and invocations), with the servicer called directly in one process.

Each test here failed on main for the reason its docstring gives."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from dapr.proto.common.v1 import common_pb2
from dapr.proto.runtime.v1 import appcallback_pb2
from google.protobuf import struct_pb2
from google.protobuf.any_pb2 import Any as AnyMessage

from gateway import fleet, migrations
from gateway.config import DaprConfig
from gateway.errors import (
    CallDeniedError,
    ConfigError,
    MigrationNotFoundError,
    RuleError,
    TrustError,
)
from gateway.host import Host
from gateway.identity import ObjectId
from gateway.keyring import init_keys, load_keyring
from gateway.keys import Purpose, Signer
from gateway.lineage import EntryKind
from gateway.local import TRUST_PREFIX
from gateway.objectspec import load_spec, parse_spec
from gateway.rules import load_data
from gateway.runtime import calls, events
from gateway.runtime.appcallback import servicer_base
from gateway.runtime.events import Message
from gateway.testing import create_from_spec
from gateway.transport.status import ERROR_TYPE_KEY
from gateway.trust import new_bundle, sign_bundle
from tests.conftest import HOST_A
from tests.test_events import OBJECT, SPEC, TOPIC
from tests.test_events_bounds import _open
from tests.test_trust import CA_A, NOW, _record

_STATUS = appcallback_pb2.TopicEventResponse.TopicEventResponseStatus


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code}: {details}")
        self.code = code
        self.details = details


class FakeContext:
    """What OnTopicEvent and OnInvoke use of a grpc.aio.ServicerContext."""

    def __init__(self, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.metadata = metadata
        self.trailing: Any = None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    def set_trailing_metadata(self, metadata: Any) -> None:
        self.trailing = metadata

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


def _servicer(host: Host) -> Any:
    cls = servicer_base(
        dapr=DaprConfig(pubsub="bus", subscribe=(TOPIC,)),
        events=host.events,
        calls=host.calls,
        trust_domain="org-a.example",
    )
    return cls()


def _event(message_id: str, time: str) -> appcallback_pb2.TopicEventRequest:
    extensions = struct_pb2.Struct()
    extensions.update({"time": time, "topic": TOPIC.replace("/", "."), "pubsubname": "bus"})
    return appcallback_pb2.TopicEventRequest(
        id=message_id,
        source="billing",
        type="com.dapr.event.sent",
        spec_version="1.0",
        data_content_type="application/json",
        data=b'{"order":7}',
        topic=TOPIC.replace("/", "."),
        pubsub_name="bus",
        extensions=extensions,
    )


async def _bus(host: Host) -> dict[str, Message]:
    keys = await host.store.list(events.BUS)
    items = await host.store.get_many(keys)
    found = [Message.decode(item.value, what=key) for key, item in items.items()]
    return {message.id: message for message in found}


def test_a_message_with_daprds_own_time_is_taken_not_crashed_on(tmp_path: Path) -> None:
    """daprd stamps every CloudEvent with ``time`` in Go's time.RFC3339 (seconds, ``Z``
    or ``+hh:mm``; the CloudEvents SDKs write microseconds). On main OnTopicEvent read it
    with parse_time, which takes only the gateway's own millisecond form: a ValueError
    escaped the servicer (gRPC UNKNOWN, a traceback per delivery, daprd redelivering), so
    no message from a real sidecar reached the bus. A time that is not RFC 3339 is a bad
    CloudEvent: answered DROP, nothing kept."""

    async def main() -> None:
        host, _clock = await _open(tmp_path)
        try:
            servicer = _servicer(host)
            sent = {
                "m-seconds": ("2026-12-06T02:52:11Z", datetime(2026, 12, 6, 2, 52, 11, tzinfo=UTC)),
                "m-offset": (
                    "2026-12-06T04:52:11+02:00",
                    datetime(2026, 12, 6, 2, 52, 11, tzinfo=UTC),
                ),
                "m-micros": (
                    "2026-12-06T02:52:11.123456Z",
                    datetime(2026, 12, 6, 2, 52, 11, 123000, tzinfo=UTC),
                ),
                "m-nanos": (
                    "2026-12-06T02:52:11.987654321Z",
                    datetime(2026, 12, 6, 2, 52, 11, 987000, tzinfo=UTC),
                ),
            }
            for message_id, (text, _) in sent.items():
                response = await servicer.OnTopicEvent(_event(message_id, text), FakeContext())
                assert response.status == _STATUS.SUCCESS, message_id
            kept = await _bus(host)
            assert {key: kept[key].time for key in sent} == {
                key: moment for key, (_, moment) in sent.items()
            }

            for message_id, text in (
                ("m-garbage", "yesterday"),
                ("m-year-zero", "0000-01-01T00:00:00Z"),
                ("m-overflow", "9999-12-31T23:00:00-02:00"),
                ("m-too-late", "9500-01-01T00:00:00Z"),
                ("m-long", "2026-12-06T02:52:11." + "1" * 5000 + "Z"),
            ):
                response = await servicer.OnTopicEvent(_event(message_id, text), FakeContext())
                assert response.status == _STATUS.DROP, message_id
            assert set(await _bus(host)) == set(sent)
        finally:
            await host.close()

    asyncio.run(main())


def _invoke(body: bytes) -> common_pb2.InvokeRequest:
    return common_pb2.InvokeRequest(method="call", data=AnyMessage(value=body))


def test_an_invocation_body_is_read_by_the_one_json_parser(tmp_path: Path) -> None:
    """OnInvoke read its body with json.loads: an integer of 5000 digits raised the bare
    ValueError of Python's int-from-str limit, and ``"\\ud800"`` as the object id reached
    the store as a key and raised ValueError there; both escaped the servicer as
    non-GatewayErrors (gRPC UNKNOWN). Each is now INVALID_ARGUMENT naming the body, and
    a well-formed call still reaches the object's grants (which do not let this app in)."""

    async def main() -> None:
        host, _clock = await _open(tmp_path)
        try:
            servicer = _servicer(host)
            context = FakeContext((("dapr-caller-app-id", "billing"),))
            target = json.dumps(OBJECT).encode()
            for body, reason in (
                (
                    b'{"object":' + target + b',"method":"status","data":' + b"1" * 5000 + b"}",
                    "an integer of 5000 digits",
                ),
                (b'{"object":"\\ud800","method":"status"}', "lone surrogate"),
                (b'{"object":' + target + b',"method":"status","tenant":"\\udfff"}', "surrogate"),
                (b'{"object":' + target + b',"object":"x","method":"status"}', "repeats"),
            ):
                with pytest.raises(Aborted) as caught:
                    await servicer.OnInvoke(_invoke(body), context)
                assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT, caught.value
                assert "the invocation body" in caught.value.details
                assert reason in caught.value.details
                assert context.trailing == ((ERROR_TYPE_KEY, "ConfigError"),)
            body = b'{"object":' + target + b',"method":"status","data":{"n":' + b"9" * 20 + b"}}"
            with pytest.raises(Aborted) as caught:
                await servicer.OnInvoke(_invoke(body), context)
            assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED, caught.value
            assert "may not call status" in caught.value.details
        finally:
            await host.close()

    asyncio.run(main())


def test_a_caller_varying_the_method_cannot_grow_the_lineage_per_call(tmp_path: Path) -> None:
    """Refusals were folded only when identical (same caller, method and reason). A caller
    holding no grant at all, calling a different method name each time (64 characters of
    a 65-letter alphabet), got one ``call-denied`` lineage entry and one host-local counter
    per call on main: 50 calls, 50 entries. Now at most MAX_DENIALS_RECORDED_PER_CALLER per
    interval reach the lineage; the others are counted and reported with the next."""

    async def main() -> None:
        host, clock = await _open(tmp_path)
        intruder = "org-z.example/intruder"
        try:

            async def refused(method: str) -> None:
                with pytest.raises(CallDeniedError, match=f"may not call {method} "):
                    await host.calls.call(
                        tenant="default", object_id=OBJECT, method=method, data=b"", caller=intruder
                    )

            async def denials() -> list[str]:
                obj = await host.get_object(OBJECT, tenant="default")
                return [e.detail for e in obj.lineage.entries if e.kind is EntryKind.CALL_DENIED]

            for i in range(50):
                await refused(f"m{i}")
            assert len(await denials()) == calls.MAX_DENIALS_RECORDED_PER_CALLER
            assert (
                len(await host.store.list(calls.DENIALS))
                <= calls.MAX_DENIALS_RECORDED_PER_CALLER + 1
            )

            # Another caller still has its own refusals recorded.
            with pytest.raises(CallDeniedError):
                await host.calls.call(
                    tenant="default",
                    object_id=OBJECT,
                    method="m0",
                    data=b"",
                    caller="org-b.example/cluster/west/gateway",
                )
            assert len(await denials()) == calls.MAX_DENIALS_RECORDED_PER_CALLER + 1

            clock.offset = calls.DENIAL_RECORD_INTERVAL + timedelta(seconds=1)
            await refused("m-later")
            latest = (await denials())[-1]
            assert latest.startswith("(42 other refusals of this caller not recorded) "), latest
            assert "call m-later from org-z.example/intruder: denied" in latest

            clock.offset += calls.DENIAL_RETENTION
            kept = len(await host.store.list(calls.DENIALS))
            # The intruder: a counter per recorded refusal (and m-later), its caller record;
            # the other caller: one counter, one caller record.
            assert kept == calls.MAX_DENIALS_RECORDED_PER_CALLER + 1 + 1 + 2
            assert await host.calls.prune_denials() == kept
            assert await host.store.list(calls.DENIALS) == []
        finally:
            await host.close()

    asyncio.run(main())


def test_pruning_reaches_expired_records_behind_a_full_window_of_young_ones(
    tmp_path: Path,
) -> None:
    """More than PRUNE_BATCH (1000) bus messages an hour (17 a minute) was enough: the
    bus grew without limit, as did seen records past 1000 a day, because every pass
    listed the first PRUNE_BATCH (hash-ordered) keys. Each pass now resumes after the
    last key the previous one looked at (gateway.stores.PrefixWalk)."""

    async def main() -> None:
        host, clock = await _open(tmp_path)
        try:
            batch = events.PRUNE_BATCH

            async def fill(prefix: str, count: int) -> None:
                now = clock.now()
                for start in range(0, count, 200):
                    operations: list[Any] = []
                    for i in range(start, min(count, start + 200)):
                        message = events.new_message(
                            "noise/topic",
                            data=None,
                            message_id=f"{prefix}-{i}",
                            source="test",
                            kind="t",
                            received=now,
                        )
                        operations.extend(events._bus_puts(message))
                    await host.store.transact(operations)

            await fill("old", batch)
            clock.offset = events.BUS_RETENTION + timedelta(minutes=1)
            await fill("young", batch + 200)
            for _ in range(20):
                await host.events.prune()
            old = [key for key in await _bus(host) if key.startswith("old-")]
            assert old == [], f"{len(old)} of {batch} expired messages never pruned"
        finally:
            await host.close()

    asyncio.run(main())


def test_a_serving_host_prunes_refused_call_counters(tmp_path: Path) -> None:
    """Calls.prune_denials existed, and docs/events-and-calls.md says counters untouched
    for a day are pruned, but nothing in gateway/ called it: every distinct refused call
    (caller, method, reason) left a ``calls/denied/`` record for good on main. The host's
    pruning loop now runs it."""

    async def main() -> None:
        host, clock = await _open(tmp_path)
        try:
            with pytest.raises(CallDeniedError):
                await host.calls.call(
                    tenant="default", object_id=OBJECT, method="status", data=b"", caller="a/b"
                )
            assert await host.store.list(calls.DENIALS) != []
            clock.offset = calls.DENIAL_RETENTION + timedelta(minutes=1)
            stop = asyncio.Event()
            pruning = asyncio.create_task(host._prune_forever(stop))
            for _ in range(100):
                if not await host.store.list(calls.DENIALS):
                    break
                await asyncio.sleep(0.02)
            stop.set()
            await pruning
            assert await host.store.list(calls.DENIALS) == []
        finally:
            await host.close()

    asyncio.run(main())


def test_object_data_with_a_huge_integer_is_a_rule_error_not_a_value_error(
    tmp_path: Path,
) -> None:
    """rules.load_data caught JSONDecodeError, UnicodeDecodeError and RecursionError, but
    an integer of more than 4300 digits makes json.loads raise a bare ValueError: it
    escaped check_rules on create (here) and on an arriving object's data (destination),
    and Calls._answer. Now a RuleError naming the data; nothing is written."""
    huge = b'{"order": ' + b"7" * 5000 + b"}"
    with pytest.raises(RuleError, match="object data is not JSON: Exceeds the limit"):
        load_data(huge, "application/json")

    async def main() -> None:
        host, _clock = await _open(tmp_path)
        try:
            spec = parse_spec({**SPEC, "answers": {"status": {"reply": "data.status"}}}, source="t")
            other = OBJECT + "-huge"
            with pytest.raises(RuleError, match="object data is not JSON"):
                await host.create_object(
                    other,
                    tenant="default",
                    data=huge,
                    content_type="application/json",
                    grant=spec.grant,
                    rules=spec.rules,
                    subscriptions=spec.subscriptions,
                    answers=spec.answers,
                )
            assert await host.journal.object("default", other) is None
        finally:
            await host.close()

    asyncio.run(main())


_BLOWUP = """
import resource, sys
from datetime import UTC, datetime
from gateway.errors import RuleError
from gateway.limits import MAX_DATA_BYTES
from gateway.model import Rule, WriteState
from gateway.rules import check_data, compile_rules, dump_data

data = {"l": list(range(1000)), "s": "x" * 1_000_000}
check_data(data)
assert len(dump_data(data)) < MAX_DATA_BYTES
try:
    rules = compile_rules(
        [Rule(name="r", when="true", action=WriteState(patch='{"n": data.l.map(x, data.s + data.s).size()}'))]
    )
except RuleError as exc:
    print("refused:", exc)
    sys.exit(0)
with open("/proc/self/status") as status:
    vm = next(int(line.split()[1]) for line in status if line.startswith("VmSize:")) * 1024
limit = vm + (768 << 20)
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
outcome = rules.evaluate(data=data, generation=1, epoch=1, now=datetime.now(UTC), host="h")
print("evaluated:", outcome.errors)
sys.exit(1 if any("alloc" in error or "Memory" in error for error in outcome.errors) else 0)
"""


def test_a_rule_within_budget_cannot_allocate_without_bound(tmp_path: Path) -> None:
    """A rule carried by an object from another organization, within every compile-time
    bound, over data within check_data and MAX_DATA_BYTES: evaluated in a child process
    allowed 768 MiB more than it has, it raises MemoryError (std::bad_alloc) out of
    RuleSet.evaluate on main; on a host without such a limit it takes the memory. Now
    compile_rules refuses it: its values' size bound (2,000 copies of the data
    limit) is over MAX_VALUE_BYTES."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _BLOWUP],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert done.returncode == 0, done.stderr[-400:] + done.stdout[-400:]
    assert done.stdout.startswith("refused:"), done.stdout[-400:]
    assert "may hold" in done.stdout and "at most" in done.stdout, done.stdout[-400:]


def _laughs(levels: int) -> str:
    lines = ["data:", '  l0: &l0 ["lol-lol-lol", "lol-lol-lol", "lol-lol-lol", "lol-lol-lol"]']
    for level in range(1, levels + 1):
        lines.append(f"  l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * 10)}]")
    return "\n".join(lines) + "\n"


def test_a_spec_file_of_yaml_aliases_is_refused_before_it_is_expanded(tmp_path: Path) -> None:
    """load_spec checked the YAML document (once per distinct container) and then dumped
    its data with json.dumps, which expands every alias: this 382-byte file became 6.5 MB
    of data on main (refused only later, by create), and each further line multiplies it
    by ten (four more: 65 GB, in memory, before any check). Now refused by its size,
    before anything is dumped."""
    spec = tmp_path / "laughs.yaml"
    spec.write_text(_laughs(5))
    assert spec.stat().st_size < 400
    with pytest.raises(ConfigError, match="bytes of JSON; at most") as caught:
        load_spec(spec)
    assert "aliases" in caught.value.reason

    # Within the bound, aliases still work (they are YAML), and cycles are still refused.
    small = tmp_path / "small.yaml"
    small.write_text(_laughs(2))
    assert len(json.loads(load_spec(small).data)["l2"]) == 10
    cyclic = tmp_path / "cyclic.yaml"
    cyclic.write_text("data: &a {x: *a}\n")
    with pytest.raises(ConfigError, match="cannot be written as JSON"):
        load_spec(cyclic)


@pytest.mark.parametrize(
    "domain",
    ["", "a/b", "org-a.example/../org-b.example", "ORG.example", "é.example", "a\nb", "x" * 5000],
)
def test_a_bundle_for_what_is_not_a_trust_domain_is_refused_and_not_stored(
    tmp_path: Path, domain: str
) -> None:
    """A signed bundle (from a file, `gateway trust import`) names its trust domain, and
    nothing checked that it is one: on main each of these was trusted on first use and
    stored under ``trust/<name>`` (an empty name as ``trust/``, a path as nested keys).
    Now a TrustError naming the problem, and nothing written."""

    async def main() -> None:
        host, _clock = await _open(tmp_path)
        try:
            key = Signer.generate()
            bundle = new_bundle(domain, [_record(key, Purpose.BUNDLE)], issued_at=NOW)
            with pytest.raises(TrustError, match="not for a trust domain"):
                await host.import_bundle(sign_bundle(bundle, [key]), at=NOW + timedelta(days=1))
            assert await host.store.list(TRUST_PREFIX) == []
        finally:
            await host.close()

    asyncio.run(main())


def test_an_unreadable_keys_directory_entry_is_a_config_error(tmp_path: Path) -> None:
    """load_keyring caught only FileNotFoundError: a bundle.json or a ``*.key`` that is a
    directory (or unreadable, or an I/O error) raised IsADirectoryError/PermissionError
    out of Host.open and every `gateway keys` command (the CLI's "internal error", exit
    70). Now a ConfigError naming the file."""
    keys = tmp_path / "keys"
    init_keys(
        keys,
        trust_domain="org-a.example",
        host=HOST_A,
        ca_certificate=CA_A,
        at=NOW,
    )
    (keys / "0000.key").mkdir()
    with pytest.raises(ConfigError, match=r"0000\.key: cannot read"):
        load_keyring(keys)
    (keys / "0000.key").rmdir()
    load_keyring(keys)

    (keys / "bundle.json").unlink()
    (keys / "bundle.json").mkdir()
    with pytest.raises(ConfigError, match=r"bundle\.json: cannot read"):
        load_keyring(keys)


def test_ids_from_argv_with_undecodable_bytes_are_refused_clearly(tmp_path: Path) -> None:
    """Python decodes argv bytes that are not UTF-8 with surrogateescape, so `gateway
    migration show/abort/resume ID`, `gateway migrate OBJ`, `gateway object label OBJ`
    can pass a lone surrogate. On main: ObjectId.parse raised UnicodeEncodeError (its
    length check encoded the id strictly), and the migration commands built a store key
    from the unchecked id and the store raised ValueError. Now both are ConfigErrors."""
    with pytest.raises(ConfigError, match="is not a valid object id"):
        ObjectId.parse("obj://org-a.example/orders/\udcff")

    async def main() -> None:
        host, _clock = await _open(tmp_path)
        try:
            for act in (migrations.find, migrations.abort, migrations.resume):
                for bad in ("mig-\udcff", "a/b", "", "m" * 129):
                    with pytest.raises(ConfigError, match="is not a migration id"):
                        await act(host, bad)
                with pytest.raises(MigrationNotFoundError):
                    await act(host, "mig-0123456789abcdef")
            with pytest.raises(ConfigError, match="is not a valid object id"):
                await fleet.select(
                    host, ids=[OBJECT + "\udcff"], tenant=None, labels=[], state=None
                )
        finally:
            await host.close()

    asyncio.run(main())


def test_a_message_that_could_not_be_read_back_is_refused_not_lost(tmp_path: Path) -> None:
    """publish (`gateway publish --id/--source/--type` from argv, Host.publish) took a
    lone surrogate in the id, source or type and NaN in the data: the bus and inbox
    records were written (json.dumps escapes both), the caller was told "published", and
    delivery then found the inbox entry undecodable and dropped it: the message was lost
    unseen. Now refused before anything is written, as is data that is not JSON at all
    (a TypeError escaped)."""

    async def main() -> None:
        host, _clock = await _open(tmp_path)
        try:
            for extra in (
                {"message_id": "m-\udcff"},
                {"source": "billing-\udcff"},
                {"kind": "order.\udcff"},
                {"data": {"order": 7, "ratio": float("nan")}},
                {"data": {"order": 7, "ratio": float("inf")}},
                {"data": {"order": 7, "when": object()}},
            ):
                arguments: dict[str, Any] = {"data": {"order": 7}, **extra}
                with pytest.raises(ConfigError, match=r"not Unicode text|not JSON"):
                    await host.events.publish(TOPIC, **arguments)
            assert await host.store.list(events.BUS) == []
            assert await host.store.list(events.INBOX) == []

            await host.events.publish(TOPIC, data={"order": 7}, message_id="m-fine")
            assert await host.events.deliver_once() == 1
            obj = await host.get_object(OBJECT, tenant="default")
            assert json.loads(obj.data)["last"] == "m-fine"
        finally:
            await host.close()

    asyncio.run(main())


def test_cli_json_arguments_are_read_by_the_one_json_parser() -> None:
    """`gateway call/publish --data` used json.loads: 5000 digits raised a bare ValueError
    (the CLI's "internal error", exit 70), and NaN went on to be published (above)."""
    from gateway._cli_events import _json_argument

    for text, reason in (
        ("1" * 5000, "an integer of 5000 digits"),
        ('{"x": NaN}', "NaN is not JSON"),
        ('"\\ud800"', "lone surrogate"),
        ("[" * 100 + "]" * 100, "nested"),
    ):
        with pytest.raises(ConfigError, match=reason):
            _json_argument(text, "--data")
    assert _json_argument('{"order": 7}', "--data") == b'{"order":7}'


def test_an_object_that_is_only_called_has_its_lineage_compacted(tmp_path: Path) -> None:
    """Every answered call appends a ``called`` entry, and only cycles and message wakes
    ran lineage compaction: an object that is only called (no cycle interval) grew by
    one entry per call, and each call rewrote all of it (on main 1000 calls: 1001
    entries, 440 KB, 7 s; the last calls each cost ~3x the first). Now compacted after
    calls as after cycles (1000 calls: ~110 entries, 50 KB, 2 s)."""

    async def main() -> None:
        host, _clock = await _open(tmp_path)
        try:
            spec = json.loads(json.dumps(SPEC))
            spec["grant"]["capabilities"].append({"resource": "call:status/*", "actions": ["call"]})
            spec["answers"] = {"status": {"reply": "data.status"}}
            called = "obj://org-a.example/orders/called"
            await create_from_spec(host, called, parse_spec(spec, source="test"))
            policy = host.cycles.compaction.policy
            for _ in range(policy.max_entries * 2):
                await host.calls.call(
                    tenant="default",
                    object_id=called,
                    method="status",
                    data=b"",
                    caller="org-b.example/cluster/west/gateway",
                )
            obj = await host.get_object(called, tenant="default")
            assert len(obj.lineage.entries) <= policy.max_entries, len(obj.lineage.entries)
            kinds = [entry.kind for entry in obj.lineage.entries]
            assert kinds.count(EntryKind.CALLED) >= policy.keep_entries - 1
        finally:
            await host.close()

    asyncio.run(main())


def test_gateway_call_reads_the_answering_hosts_reply_as_outside_json(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`gateway call` printed the reply after json.loads: a reply (from whichever host
    answered, a peer with --at) holding an integer of 5000 digits raised a bare
    ValueError out of the command. Now a PayloadDecodeError naming the host."""
    import argparse

    from gateway import _cli_events
    from gateway.errors import PayloadDecodeError
    from gateway.transport.client import CallAnswer

    class FakeHost:
        async def call(self, *args: Any, **kwargs: Any) -> CallAnswer:
            return CallAnswer(reply=b"1" * 5000, host="spiffe://org-b.example/gw")

    async def with_host(_args: Any, action: Any) -> Any:
        return await action(FakeHost())

    monkeypatch.setattr(_cli_events, "_with_host", with_host)
    args = argparse.Namespace(
        object_id=OBJECT,
        method="status",
        data=None,
        tenant="default",
        at="spiffe://org-b.example/gw",
        wait=1.0,
        follow=False,
        output="text",
    )
    with pytest.raises(PayloadDecodeError, match=r"the reply of spiffe://org-b\.example/gw"):
        _cli_events.cmd_call(args)


def test_hold_and_backoff_marks_of_entries_settled_elsewhere_are_forgotten(
    tmp_path: Path,
) -> None:
    """Events keeps "held until" per inbox key and the outbox dispatcher "not before" per
    event key, removed only when this process itself settles that key. An entry settled
    by another replica on the same store (Dapr: several replicas per app id), or deleted
    otherwise, was never listed again, so its mark stayed in memory for good: one per
    held message / failed delivery, for the life of the process. Now a mark is forgotten
    once its time has passed (it then means nothing)."""

    async def main() -> None:
        host, clock = await _open(tmp_path)
        try:
            loop = asyncio.get_running_loop()
            host.events._held_until["inbox/default/gone/0000000000000-x"] = loop.time() - 1
            host.events._held_until["inbox/default/later/0000000000000-y"] = loop.time() + 60
            await host.events.deliver_once()
            assert list(host.events._held_until) == ["inbox/default/later/0000000000000-y"]

            dispatcher = host.dispatcher
            dispatcher._not_before["default/gone/000000000001/000"] = clock.now() - timedelta(
                seconds=1
            )
            dispatcher._not_before["default/later/000000000001/000"] = clock.now() + timedelta(
                seconds=60
            )
            await dispatcher.dispatch_once()
            assert list(dispatcher._not_before) == ["default/later/000000000001/000"]
        finally:
            await host.close()

    asyncio.run(main())
