"""What reaches a host from outside (session 31 review, a dishonest peer's view).

Each test here failed on main for the reason its docstring gives."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from dapr.proto.runtime.v1 import appcallback_pb2
from google.protobuf import struct_pb2
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import _wire_counts, wire
from gateway import envelope as dsse
from gateway.archive import CustodySegment, archived_custody
from gateway.errors import (
    ConfigError,
    EnvelopeError,
    GatewayError,
    LimitExceededError,
    LineageError,
    PayloadDecodeError,
)
from gateway.handoff.home import CustodyRecord
from gateway.lineage import Checkpoint, Lineage, digest
from gateway.runtime.cycle import CycleReport, CycleResult
from gateway.runtime.dapr import DaprJobs
from gateway.v1 import object_pb2
from tests.conftest import HOST_A
from tests.test_events import OBJECT, TOPIC
from tests.test_events_bounds import _open
from tests.test_runtime_review_s28 import FakeContext, _bus, _servicer

_STATUS = appcallback_pb2.TopicEventResponse.TopicEventResponseStatus


def _event_with(message_id: str, extensions: dict[str, Any]) -> appcallback_pb2.TopicEventRequest:
    struct = struct_pb2.Struct()
    struct.update(extensions)
    return appcallback_pb2.TopicEventRequest(
        id=message_id,
        source="billing",
        type="com.dapr.event.sent",
        spec_version="1.0",
        data_content_type="application/json",
        data=b'{"order":7}',
        topic=TOPIC.replace("/", "."),
        pubsub_name="bus",
        extensions=struct,
    )


def test_cloudevent_extensions_that_are_not_json_do_not_crash_the_app_callback(
    tmp_path: Path,
) -> None:
    """A CloudEvent's extension attributes are whatever its publisher wrote; daprd passes
    them as a protobuf Struct, whose numbers may be NaN or Infinity. On main OnTopicEvent
    turned the whole Struct into a dict with json_format.MessageToDict, which raises
    ValueError for those: it escaped the servicer (gRPC UNKNOWN, a traceback per
    delivery, and daprd redelivering the poison message without end). Only ``time`` and
    ``subject`` are read now, each only as a string; other extensions are ignored and
    the message is taken."""

    async def main() -> None:
        host, _clock = await _open(tmp_path)
        try:
            servicer = _servicer(host)
            for message_id, extensions in (
                ("m-nan", {"traceparent": float("nan")}),
                ("m-inf", {"weight": float("inf"), "time": "2026-12-06T02:52:11Z"}),
                ("m-nested-nan", {"meta": {"deep": [1.0, float("-inf")]}}),
                ("m-subject-number", {"subject": float("nan")}),
                ("m-time-number", {"time": 1.5}),
            ):
                response = await servicer.OnTopicEvent(
                    _event_with(message_id, extensions), FakeContext()
                )
                assert response.status == _STATUS.SUCCESS, message_id
            kept = await _bus(host)
            assert {"m-nan", "m-inf", "m-nested-nan", "m-subject-number", "m-time-number"} <= set(
                kept
            )
            assert kept["m-subject-number"].subject == ""
        finally:
            await host.close()

    asyncio.run(main())


def test_a_message_on_an_unsubscribed_topic_is_logged_without_its_whole_name(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """On main a message on a topic the host does not subscribe to was logged with the
    topic and pub/sub names exactly as received: a publisher could write a megabyte of
    its own text into the host's log per message. They are shown cut now."""

    async def main() -> None:
        host, _clock = await _open(tmp_path)
        try:
            request = _event_with("m-1", {})
            request.topic = "t" * (1 << 20)
            request.pubsub_name = "p" * (1 << 20)
            with caplog.at_level(logging.WARNING):
                response = await _servicer(host).OnTopicEvent(request, FakeContext())
            assert response.status == _STATUS.DROP
            assert "not subscribed" in caplog.text
            assert len(caplog.text) < 2000
        finally:
            await host.close()

    asyncio.run(main())


def _departing(hops: int) -> Lineage:
    """A lineage whose oldest carried departure says ``hops - 1`` handoffs were archived
    before it (what a presenter signs itself; archived_custody reads it unverified)."""
    checkpoint = Checkpoint(
        object_id=OBJECT,
        host="spiffe://org-b.example/cluster/east/gateway",
        epoch=1,
        size=1,
        root=b"\0" * 32,
        issued_at=datetime(2026, 12, 6, tzinfo=UTC),
        to=HOST_A,
        migration="mig-1",
        credentials_digest=b"\2" * 32,
        custody=b"\1" * 32,
        hops=hops,
    )
    envelope = dsse.Envelope(
        payload=checkpoint.encode(),
        payload_type=dsse.PayloadType.CHECKPOINT,
        signatures=(dsse.Signature(keyid="k", sig=b"x"),),
    )
    return Lineage(checkpoints=(envelope,))


def _handoffs(first: int, count: int) -> CustodySegment:
    return CustodySegment(
        object_id=OBJECT, first=first, departures=(b"{}",) * count, arrivals=(b"{}",) * count
    )


def test_overlapping_archived_handoffs_cost_linear_time_and_no_recursion() -> None:
    """Custody segments (archived handoffs) come from other hosts' archive directories and
    are unsigned; the count they must add up to is the presenter's own departure's. On
    main archived_custody searched their runs recursively with no memory of dead ends:
    one segment of one handoff and one of two at each of 34 positions, with the count
    out of reach, took ~20 s (x1.6 per position: 50 would take days), and a
    run of 3000 one-handoff segments raised RecursionError out of `gateway verify`. Now
    each position is explored once, without recursion: a clear LineageError, at once."""
    positions = 34
    overlapping = [_handoffs(p, 1) for p in range(positions)]
    overlapping += [_handoffs(p, 2) for p in range(positions)]
    started = time.perf_counter()
    with pytest.raises(LineageError, match="holds handoffs 0 to 34 contiguously"):
        archived_custody(overlapping, _departing(positions + 10), object_id=OBJECT)
    assert time.perf_counter() - started < 2.0

    long_run = [_handoffs(p, 1) for p in range(3000)]
    with pytest.raises(LineageError, match="holds handoffs 0 to 2999 contiguously"):
        archived_custody(long_run, _departing(3002), object_id=OBJECT)

    # A run that reaches the count is still found (and then checked against the
    # commitment, which these made-up handoffs do not match).
    with pytest.raises(LineageError, match="do not digest to the custody"):
        archived_custody(long_run, _departing(3001), object_id=OBJECT)


class _Runner:
    def __init__(self) -> None:
        self.runs: list[tuple[str, str]] = []

    async def run(self, tenant: str, object_id: str) -> CycleReport:
        self.runs.append((tenant, object_id))
        return CycleReport(result=CycleResult.NOT_DUE)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"not json", "not JSON at all: JSONDecodeError on main"),
        (b"[" * 100_000, "nested past any limit: RecursionError on main"),
        (b'{"tenant": "default"}', "no object id: KeyError on main"),
        (b'{"tenant": 7, "object_id": []}', "wrong types reached the cycle runner on main"),
        (b'{"tenant": "default", "object_id": "x", "object_id": "y"}', "a repeated member"),
        (b'{"tenant": "' + b"t" * 100 + b'", "object_id": "x"}', "a tenant past its limit"),
        (b'{"tenant": "default", "object_id": "' + b"o" * 5000 + b'"}', "an id past its limit"),
        (b'{"tenant": "default", "object_id": 1' + b"0" * 5000 + b"}", "a 5000-digit integer"),
    ],
)
def test_a_job_trigger_whose_data_is_not_the_gateways_is_refused_clearly(
    data: bytes, reason: str
) -> None:
    """A Dapr job trigger's data is read back from Dapr's scheduler, where anything that
    reaches this app's sidecar can schedule a job for the app. On main it went through
    json.loads and dict indexing, so each case here raised a non-GatewayError (logged
    with a traceback per trigger, retried by the scheduler) or handed a non-string to the
    cycle runner. Now it is a ConfigError naming what is wrong, before any cycle runs."""
    runner = _Runner()
    jobs = DaprJobs(None, runner, app_port=0)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="job's"):
        asyncio.run(jobs.trigger(data))
    assert runner.runs == [], reason

    asyncio.run(jobs.trigger(b'{"tenant":"default","object_id":"obj://org-a.example/x"}'))
    assert runner.runs == [("default", "obj://org-a.example/x")]


def _field(number: int, body: bytes) -> bytes:
    """A length-delimited protobuf field (number < 16, so a one-byte key)."""
    size, length = len(body), bytearray()
    while size >= 0x80:
        length.append((size & 0x7F) | 0x80)
        size >>= 7
    length.append(size)
    return bytes([(number << 3) | 2]) + bytes(length) + body


def _flooded(where: str) -> bytes:
    """A 16 MiB transfer payload of eight million empty elements of one repeated field."""
    count = 8 << 20
    if where == "credentials":
        return _field(10, b"") * count
    if where == "entries":
        return _field(11, _field(1, b"") * count)
    number = {"rules": 6, "subscriptions": 10, "answers": 11}[where]
    return _field(9, _field(number, b"") * count)


@pytest.mark.parametrize(
    ("where", "refusal"),
    [
        ("rules", "more than 32 rules"),
        ("answers", "more than 32 answers"),
        ("subscriptions", "more than 16 subscriptions"),
        ("credentials", "more than 16 credentials"),
        ("entries", "entries of 0 bytes; each takes at least 128"),
    ],
)
def test_a_transfer_flooding_a_repeated_field_is_refused_before_protobuf_builds_it(
    where: str, refusal: str
) -> None:
    """A peer signs its own transfer, so a payload of 16 MiB (the envelope limit) can
    hold eight million empty rules. On main protobuf parsed every one of them before the
    count was checked: 1 s and ~740 MiB of memory per transfer for rules or answers,
    ~290 MiB for strings or lineage entries, a few concurrent Prepares away from the
    host running out of memory. The bytes are now counted first: refused at the first
    element over the bound, in well under a millisecond."""
    payload = _flooded(where)
    started = time.perf_counter()
    with pytest.raises(LimitExceededError, match=refusal):
        wire.ParsedTransfer(payload)
    assert time.perf_counter() - started < 0.2


_HONEST_TRANSFER = object_pb2.Transfer(
    migration_id="mig-0",
    object_id=OBJECT,
    epoch=1,
    source_host=HOST_A,
    destination_host=HOST_A,
    nonce=b"n" * 16,
)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(
    rules=st.integers(0, 32),
    subscriptions=st.integers(0, 16),
    answers=st.integers(0, 32),
    credentials=st.integers(0, 16),
    entries=st.lists(st.integers(128, 400), max_size=40),
    handoffs=st.integers(0, 3),
    data=st.binary(max_size=300),
    cut=st.integers(0, 1 << 16),
    flip=st.integers(0, 255),
)
def test_counting_fields_never_refuses_what_protobuf_and_the_bounds_accept(
    rules: int,
    subscriptions: int,
    answers: int,
    credentials: int,
    entries: list[int],
    handoffs: int,
    data: bytes,
    cut: int,
    flip: int,
) -> None:
    """The count is a shortcut, never a second opinion: on transfers within every bound
    it refuses nothing, and on any one-byte change of them it raises only GatewayErrors,
    refusing only bytes that protobuf's parse, the one-byte-form check or a count bound
    refuses too. (Walked at every size here; transfers below 256 KiB are not walked.)"""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_wire_counts, "WALK_ABOVE_BYTES", 0)
        _check_one_change(
            rules, subscriptions, answers, credentials, entries, handoffs, data, cut, flip
        )


def _check_one_change(
    rules: int,
    subscriptions: int,
    answers: int,
    credentials: int,
    entries: list[int],
    handoffs: int,
    data: bytes,
    cut: int,
    flip: int,
) -> None:
    message = object_pb2.Transfer()
    message.CopyFrom(_HONEST_TRANSFER)
    message.issued_at.seconds, message.expires_at.seconds = 1_800_000_000, 1_800_000_060
    snapshot = message.object
    snapshot.object_id, snapshot.tenant, snapshot.data = OBJECT, "default", data
    snapshot.cycle.generation = 3
    for index in range(rules):
        snapshot.rules.add(name=f"r{index}", when="true", trigger="cycle")
    snapshot.subscriptions.extend(f"t/{i}" for i in range(subscriptions))
    for index in range(answers):
        snapshot.answers.add(method=f"m{index}", reply="1")
    message.credentials.extend("g" * 40 for _ in range(credentials))
    message.lineage.entries.extend(b"e" * size for size in entries)
    message.lineage.checkpoints.extend(b"c" * 90 for _ in range(handoffs))
    honest = message.SerializeToString(deterministic=True)
    _wire_counts.check_counts(honest, wire._TRANSFER_SHAPE, "transfer")

    changed = bytearray(honest)
    changed[cut % len(changed)] = flip
    try:
        _wire_counts.check_counts(bytes(changed), wire._TRANSFER_SHAPE, "transfer")
    except GatewayError:
        parsed = object_pb2.Transfer()
        try:
            parsed.ParseFromString(bytes(changed))
        except DecodeError:
            return
        parsed.DiscardUnknownFields()
        if parsed.SerializeToString(deterministic=True) != bytes(changed):
            return
        got = parsed.object
        assert (
            len(got.rules) > 32
            or len(got.subscriptions) > 16
            or len(got.answers) > 32
            or len(parsed.credentials) > 16
            or any(len(entry) < 128 for entry in parsed.lineage.entries)
            or len(parsed.lineage.checkpoints) > 1024
        ), "refused bytes that protobuf and every bound accept"


def test_a_large_honest_transfer_is_walked_and_passes() -> None:
    """Above 256 KiB the bytes are walked for real (the property above walks every
    size): a transfer with 1 MiB of inline data, 16 grants, 32 rules and answers and
    3000 lineage entries is within every bound and passes."""
    message = object_pb2.Transfer()
    message.CopyFrom(_HONEST_TRANSFER)
    snapshot = message.object
    snapshot.object_id, snapshot.data = OBJECT, b"d" * (1 << 20)
    for index in range(32):
        snapshot.rules.add(name=f"r{index}", when="true", trigger="cycle")
        snapshot.answers.add(method=f"m{index}", reply="1")
    snapshot.subscriptions.extend(f"t/{i}" for i in range(16))
    message.credentials.extend("g" * 600 for _ in range(16))
    message.lineage.entries.extend(b"e" * 250 for _ in range(3000))
    payload = message.SerializeToString(deterministic=True)
    assert len(payload) > _wire_counts.WALK_ABOVE_BYTES
    _wire_counts.check_counts(payload, wire._TRANSFER_SHAPE, "transfer")
    message.credentials.append("g")
    with pytest.raises(LimitExceededError, match="more than 16 credentials"):
        _wire_counts.check_counts(message.SerializeToString(), wire._TRANSFER_SHAPE, "transfer")


@pytest.mark.parametrize("size", [200_000, 4 << 20])
def test_an_envelope_flooded_with_signatures_is_refused_before_they_are_built(size: int) -> None:
    """An envelope is decoded from a peer's bytes before any signature is checked (it is
    the first thing Prepare does). On main a 16 MiB envelope of empty signatures took 27 s
    and ~1 GB: protobuf built eight million messages, then decode_envelope one Python
    object per each, before the 16-signature bound was checked (the 4 MiB case here
    ~7 s). Now above 256 KiB the bytes are counted first, and below it the count is
    checked before any object is made."""
    payload = _field(3, b"") * (size // 2)
    started = time.perf_counter()
    with pytest.raises(EnvelopeError, match=r"more than 16 signatures|at most 16$"):
        wire.decode_envelope(payload)
    assert time.perf_counter() - started < 0.1


def test_a_snapshot_with_too_many_rules_is_refused_before_they_are_built() -> None:
    """Below 256 KiB the bytes are not counted (protobuf's memory is small there), but
    each rule was still turned into a Rule before the 32-rule bound was checked, in
    gateway.handoff.context: 20,000 rules of a few bytes each cost ~0.1 s of decoding.
    Now the count is checked first."""
    snapshot = object_pb2.ObjectSnapshot(object_id=OBJECT, data_digest=digest(b""))
    for _ in range(20_000):
        snapshot.rules.add(write=object_pb2.WriteState())
    assert snapshot.ByteSize() < _wire_counts.WALK_ABOVE_BYTES
    with pytest.raises(LimitExceededError, match="20000 rules; at most 32"):
        wire._object_from_snapshot(snapshot, [], object_pb2.Lineage())


@pytest.mark.parametrize(
    "holder",
    [
        pytest.param(b'"\\ud800"', id="lone-surrogate: UnicodeEncodeError on main"),
        pytest.param(b'"h","holder":"h"', id="repeated member"),
        pytest.param(b"[" * 5000 + b"]" * 5000, id="deep nesting"),
    ],
)
def test_a_custody_record_that_is_not_json_text_is_a_decode_error(holder: bytes) -> None:
    """A custody receipt is a home's signed CustodyRecord, decoded by the receiver (and
    the home reads its own records back). On main it was read with json.loads, which
    takes a lone surrogate escape: the record was built, and re-encoding it for the
    one-byte-form check raised UnicodeEncodeError out of the decoder (a dishonest home
    failed a receiver's Commit with an internal error). Now the one JSON parser refuses
    it, as a PayloadDecodeError."""
    raw = (
        b'{"epoch":1,"handoffs":1,"holder":'
        + holder
        + b',"issued_at":"2026-01-01T00:00:00.000Z","migration":"m","object_id":"o",'
        b'"sender":"s"}'
    )
    with pytest.raises(PayloadDecodeError, match="custody record"):
        CustodyRecord.decode(raw)


def test_a_refusal_body_nested_too_deep_is_shown_not_raised() -> None:
    """A service invoked through Dapr answers a refusal with whatever body it likes;
    DaprInvoker reads 4 KiB of it and shows daprd's error code when the body is daprd's
    JSON. On main that look went through json.loads catching only ValueError: a body of
    4 KiB of ``[`` raised RecursionError out of the invoker instead of a DeliveryError
    naming the refusal. Now it is shown as text, cut."""
    from aiohttp import web

    from gateway.runtime.dapr_actions import DaprInvoker
    from gateway.runtime.outbox import DeliveryError, Event

    async def refuse(request: web.Request) -> web.Response:
        return web.Response(status=500, text="[" * 10_000)

    async def main() -> str:
        app = web.Application()
        app.router.add_post("/{tail:.*}", refuse)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            invoker = DaprInvoker(f"http://127.0.0.1:{port}/v1.0")
            event = Event(
                key="default/obj/000000000001/000",
                tenant="default",
                object_id=OBJECT,
                generation=1,
                rule="r",
                verb="invoke",
                resource="invoke:payments/charge",
                payload={"order": 7},
                created_at=datetime(2026, 12, 6, tzinfo=UTC),
            )
            with pytest.raises(DeliveryError) as refused:
                await invoker.invoke(event)
            return refused.value.reason
        finally:
            await runner.cleanup()

    reason = asyncio.run(main())
    assert reason.startswith("Dapr service invocation of payments/charge answered HTTP 500: [[[")
    assert len(reason) < 500


@pytest.mark.parametrize("what", ["missing", "directory"])
def test_importing_a_transfer_file_that_cannot_be_read_is_a_handoff_error(
    tmp_path: Path, what: str
) -> None:
    """offline.import_transfer opened the file with no guard (transfer_envelope, its
    sibling, had one): a missing file or a directory raised FileNotFoundError or
    IsADirectoryError out of the library (the CLI checks first, any other caller did
    not), and so would a read failing mid-file. Now a HandoffError naming the file."""
    from gateway.errors import HandoffError
    from gateway.handoff import offline

    path = tmp_path / "gone.transfer" if what == "missing" else tmp_path
    with pytest.raises(HandoffError, match="cannot read"):
        asyncio.run(offline.import_transfer(None, path))  # type: ignore[arg-type]


def test_archive_segment_files_are_read_within_their_limit(tmp_path: Path) -> None:
    """`gateway verify --archive DIR` reads directories exported by other hosts. On main
    each ``*.seg``/``*.cus`` file was read whole before its size was checked: a file of
    64 GiB (sparse: it costs no disk) or a name linked to /dev/zero took all of memory
    (MemoryError under a 2 GiB address-space limit; unbounded without one), and a FIFO
    blocked the verification for good. Now at most one byte over MAX_SEGMENT_BYTES is
    read, and only regular files: a LineageError or ConfigError naming the file."""
    from gateway.archive import read_archives

    huge = tmp_path / "huge"
    huge.mkdir()
    with open(huge / "00000000000000000000+1.seg", "wb") as handle:
        handle.truncate(64 << 30)
    started = time.perf_counter()
    with pytest.raises(LineageError, match=r"archive segment is .* bytes; at most"):
        read_archives([huge])
    assert time.perf_counter() - started < 5

    device = tmp_path / "device"
    device.mkdir()
    (device / "00000000000000000000+1.seg").symlink_to("/dev/zero")
    with pytest.raises(ConfigError, match="is not a regular file"):
        read_archives([device])
