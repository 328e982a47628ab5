"""What a peer can make this host's gRPC service and `gateway call` hold (session 33
review: time with a slot held, size received).

Each test here failed on main for the reason its docstring gives."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from gateway import versions
from gateway.errors import LimitExceededError
from gateway.host import Host
from gateway.limits import MAX_CALL_REPLY_BYTES, MAX_ID_BYTES
from gateway.runtime.calls import CallResult
from gateway.testing import HostSpec, World, build_world, sealed_transfer, serving, sign_transfer
from gateway.transport.client import MAX_CALL_ANSWER_BYTES
from gateway.transport.framing import encode_part
from gateway.transport.status import ERROR_TYPE_KEY
from gateway.v1 import gateway_pb2
from gateway.wire import MAX_EVALUATION_BYTES
from tests.conftest import FAST_HANDOFF, HOST_A, HOST_B

# --- PrepareStream: how long a peer may keep an upload open ------------------------------

#: B's rpc_timeout: the longest B waits for a PrepareStream's next message.
PATIENCE = 0.5
PAYLOAD = random.Random(33).randbytes(3 << 20)
PART = 64 << 10


@pytest.fixture
def patient_b(tmp_path: Path) -> World:
    return build_world(
        tmp_path,
        [
            HostSpec(host_id=HOST_A, handoff=FAST_HANDOFF),
            HostSpec(host_id=HOST_B, handoff={**FAST_HANDOFF, "rpc_timeout_seconds": PATIENCE}),
        ],
    )


async def _parts(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 1 << 20):
        yield data[start : start + (1 << 20)]


async def _upload(a: Host, name: str) -> bytes:
    """A's signed transfer to B of a new object of PAYLOAD (A is otherwise untouched)."""
    obj = await a.create_object(
        f"obj://org-a.example/pace/{name}",
        tenant="default",
        data=b"",
        content_type="application/octet-stream",
        data_stream=_parts(PAYLOAD),
    )
    return sign_transfer(a, sealed_transfer(a, obj, HOST_B))


def _raw_stream(a: Host):  # type: ignore[no-untyped-def]
    return a.peers.client(HOST_B).channel.stream_unary(
        "/gateway.v1.Gateway/PrepareStream",
        request_serializer=lambda raw: raw,
        response_deserializer=gateway_pb2.PrepareResponse.FromString,
    )


async def _uploads_left(b: Host) -> list[str]:
    """B's upload keys, once B has removed a broken-off upload (it does so as the call
    ends, in a task of its own)."""
    for _ in range(100):
        left = await b.store.list("upload")
        if not left:
            break
        await asyncio.sleep(0.05)
    return left


async def _stalled(transfer: bytes, stop: asyncio.Event) -> AsyncIterator[bytes]:
    """The transfer, one part of data, then nothing, with the stream kept open."""
    yield encode_part(gateway_pb2.PrepareChunk(transfer=transfer))
    yield encode_part(PAYLOAD[:PART])
    await stop.wait()


async def _trickled(transfer: bytes) -> AsyncIterator[bytes]:
    """The transfer, then the smallest parts allowed, each well within the wait for one
    part, but far slower in all than any honest sender (about 0.3 MiB/s)."""
    yield encode_part(gateway_pb2.PrepareChunk(transfer=transfer))
    for start in range(0, len(PAYLOAD), PART):
        await asyncio.sleep(PATIENCE / 3)
        yield encode_part(PAYLOAD[start : start + PART])


@pytest.mark.parametrize("behaviour", ["stalls", "trickles"])
def test_a_prepare_stream_that_stalls_or_trickles_is_refused_and_frees_its_slot(
    patient_b: World, behaviour: str
) -> None:
    """On main PrepareStream waited for a peer's next message for as long as the peer kept
    the HTTP/2 stream open: the client's deadline, which is the peer's to choose. A peer
    that sent a transfer and then nothing held its upload slot (one of
    MAX_OPEN_UPLOADS_PER_PEER), its bytes in the gate and its staging marker until then,
    here the test's 8 s; one that sent a 64 KiB part every third of the wait held them for
    the whole object (3 MiB: 8 s; 64 GiB: two months). Now B waits at most its
    rpc_timeout for any one message, and in all at most rpc_timeout plus the time the
    data received so far takes at 8 MiB/s (what its sender's own deadline allows): either
    breaks the stream off as a TransferStreamError, and everything is released."""

    async def main() -> None:
        async with serving(patient_b, [HOST_A, HOST_B]) as hosts:
            a, b = hosts[HOST_A], hosts[HOST_B]
            transfer = await _upload(a, behaviour)
            stop = asyncio.Event()
            sent = _stalled(transfer, stop) if behaviour == "stalls" else _trickled(transfer)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await _raw_stream(a)(sent, metadata=tuple(versions.ours().metadata()), timeout=8)
            stop.set()
            error = refused.value
            assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, error.details()
            trailers = tuple(error.trailing_metadata() or ())
            assert (ERROR_TYPE_KEY, "TransferStreamError") in trailers
            overdue = "did not come within" if behaviour == "stalls" else "came slower than"
            assert overdue in (error.details() or ""), error.details()
            assert b.service.gate.in_flight == 0 and b.service.gate.held == {}
            assert await _uploads_left(b) == []
            # An honest sender, whose parts follow each other at once, still gets through.
            honest = [gateway_pb2.PrepareChunk(transfer=await _upload(a, f"{behaviour}-honest"))]

            async def whole() -> AsyncIterator[bytes]:
                yield encode_part(honest[0])
                for start in range(0, len(PAYLOAD), 1 << 20):
                    yield encode_part(PAYLOAD[start : start + (1 << 20)])

            answer = await _raw_stream(a)(
                whole(), metadata=tuple(versions.ours().metadata()), timeout=30
            )
            assert answer.receipt

    asyncio.run(main())


# --- the answer to `gateway call` ---------------------------------------------------------

OBJECT_CALLED = "obj://org-b.example/calls/anything"


class _Answering:
    """B's Calls, answering every call with ``reply`` from ``host``."""

    def __init__(self, reply: bytes, host: str = HOST_B) -> None:
        self.reply, self.host = reply, host

    async def call(self, **_ask: object) -> CallResult:
        return CallResult(reply=None, encoded=self.reply, host=self.host)


@pytest.mark.parametrize(
    ("reply", "host", "refusal"),
    [
        (
            b'"' + b"x" * (8 << 20) + b'"',
            HOST_B,
            f"is 83886.. bytes; at most {MAX_CALL_ANSWER_BYTES}",
        ),
        (b'"' + b"x" * MAX_CALL_REPLY_BYTES + b'"', HOST_B, "a reply of 65538 bytes"),
        (b"{}", HOST_B + "/" + "h" * MAX_ID_BYTES, "a host id of 2092 characters"),
    ],
    ids=["eight-megabytes-of-reply", "a-reply-just-over-its-bound", "a-long-host"],
)
def test_a_call_answer_is_bounded_as_it_is_received(
    world: World, monkeypatch: pytest.MonkeyPatch, reply: bytes, host: str, refusal: str
) -> None:
    """`gateway call` (Host.call, transport.client.call_object) took whatever answer the
    called host sent, up to the channel's 32 MiB, held it, and printed it: a host
    answering 8 MiB made the caller print 8 MiB, though no honest host answers more than
    MAX_CALL_REPLY_BYTES of JSON and its own id. Now the call's channel receives at most
    that (and the answer's parts are checked): a larger answer is a LimitExceededError
    naming its size and the bound, on one line."""

    async def main() -> None:
        async with serving(world, [HOST_A, HOST_B]) as hosts:
            a, b = hosts[HOST_A], hosts[HOST_B]
            monkeypatch.setattr(b.service, "calls", _Answering(reply, host))
            with pytest.raises(LimitExceededError, match=refusal.replace("(", r"\(")) as refused:
                await a.call(OBJECT_CALLED, "status", tenant="default", at=HOST_B)
            assert "\n" not in str(refused.value)
            # The largest answer an honest host gives still comes through.
            largest = b'"' + b"x" * (MAX_CALL_REPLY_BYTES - 2) + b'"'
            monkeypatch.setattr(b.service, "calls", _Answering(largest))
            answer = await a.call(OBJECT_CALLED, "status", tenant="default", at=HOST_B)
            assert answer.reply == largest and answer.host == HOST_B

    asyncio.run(main())


# --- answers a peer gives this host's handoff client --------------------------------------


@pytest.mark.parametrize("rpc", ["Commit", "Decision"])
def test_a_peers_answer_is_bounded_as_it_is_received(
    world: World, monkeypatch: pytest.MonkeyPatch, rpc: str
) -> None:
    """Every answer a peer gives the handoff client is small: a signed receipt or decision
    (wire.MAX_RECEIPT_BYTES, 64 KiB) or a dry run's evaluation (MAX_EVALUATION_BYTES,
    1 MiB). On main the client's channel took answers up to 32 MiB, held whole (and
    then copied) before anything checked them; a destination answering every Commit
    with 8 MiB made each migration in flight at the source hold that much. Then the
    RESOURCE_EXHAUSTED of a smaller limit would have been retried as a peer that "did
    not answer". Now the channel receives at most MAX_EVALUATION_BYTES, and a larger
    answer is a LimitExceededError naming its size, at the first attempt."""

    huge = b"\x00" * (8 << 20)
    calls = 0

    async def answer(*_args: object, **_kwargs: object) -> bytes:
        nonlocal calls
        calls += 1
        return huge

    async def main() -> None:
        async with serving(world, [HOST_A, HOST_B]) as hosts:
            b = hosts[HOST_B]
            client = hosts[HOST_A].peers.client(HOST_B)
            if rpc == "Commit":
                monkeypatch.setattr(b.service.destination, "answer_commit", answer)
                asked = client.commit
            else:
                monkeypatch.setattr(b.service.source, "decide", answer)
                asked = client.decision
            with pytest.raises(
                LimitExceededError, match=f"answer to {rpc} is 83886\\d\\d bytes; at most "
            ) as refused:
                await asked("mig-huge")
            assert f"at most {MAX_EVALUATION_BYTES}" in str(refused.value)
            assert calls == 1  # not asked again: a too-large answer stays too large

    asyncio.run(main())


# --- a peer's refusal, as this host raises (and prints, and journals) it --------------------

_UNRULY = "line one\n\x1b[2J\x1b[31mred\x1b[0m\r" + "x" * 7000


@pytest.mark.parametrize("where", ["Commit", "call"])
def test_a_peers_refusal_text_is_one_bounded_line(
    world: World, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """A refusal's text is the peer's status details (up to gRPC's 8 KiB of metadata),
    and on main it became the reason of the error raised here as it was: newlines and
    terminal escapes (\\x1b[2J clears the operator's screen) went into `gateway call`'s
    one-line error, the log, and a source's journaled abort reason, kilobytes of it. Now
    the peer's reason and hint are each kept to MAX_PEER_REASON_CHARS /
    MAX_PEER_HINT_CHARS of printable characters."""
    from gateway.errors import ObjectStateError
    from gateway.transport.status import MAX_PEER_HINT_CHARS, MAX_PEER_REASON_CHARS

    async def refuse(*_args: object, **_kwargs: object) -> bytes:
        raise ObjectStateError(_UNRULY, hint="\x1b[31mdo\nthis\x1b[0m")

    async def main() -> None:
        async with serving(world, [HOST_A, HOST_B]) as hosts:
            a, b = hosts[HOST_A], hosts[HOST_B]
            monkeypatch.setattr(b.service.destination, "answer_commit", refuse)
            monkeypatch.setattr(b.service, "calls", _Refusing())
            asked = (
                a.peers.client(HOST_B).commit("mig-unruly")
                if where == "Commit"
                else a.call(OBJECT_CALLED, "status", tenant="default", at=HOST_B)
            )
            with pytest.raises(ObjectStateError) as refused:
                await asked
            text = str(refused.value)
            assert text.isprintable(), repr(text[:80])
            assert "line one?" in text and "do?this" in text
            assert len(refused.value.reason) <= len(HOST_B) + 10 + MAX_PEER_REASON_CHARS
            assert len(refused.value.hint or "") <= MAX_PEER_HINT_CHARS

    asyncio.run(main())


class _Refusing:
    async def call(self, **_ask: object) -> CallResult:
        from gateway.errors import ObjectStateError

        raise ObjectStateError(_UNRULY, hint="\x1b[31mdo\nthis\x1b[0m")


@pytest.mark.parametrize(
    "moved_to",
    ["spiffe://" + "a" * 6000, "not a host"],
    ids=["long", "not-a-spiffe-id"],
)
def test_where_a_called_object_moved_is_a_host_id(
    world: World, monkeypatch: pytest.MonkeyPatch, moved_to: str
) -> None:
    """A host refusing a call because the object moved names where, in a trailer, and
    `gateway call --follow` calls that host next. On main any text was taken: it became
    ObjectMovedError.moved_to as it came (kilobytes of it), which --follow then put in
    its "is not a configured peer" error. Now a trailer that is not a host id is the
    called host's error (PayloadDecodeError), shown as one bounded printable line."""
    from gateway.errors import ObjectMovedError, PayloadDecodeError

    class _Moved:
        async def call(self, **_ask: object) -> CallResult:
            raise ObjectMovedError("it left", moved_to=moved_to)

    async def main() -> None:
        async with serving(world, [HOST_A, HOST_B]) as hosts:
            a, b = hosts[HOST_A], hosts[HOST_B]
            monkeypatch.setattr(b.service, "calls", _Moved())
            with pytest.raises(PayloadDecodeError, match="not a host id") as refused:
                await a.call(OBJECT_CALLED, "status", tenant="default", at=HOST_B)
            text = str(refused.value)
            assert text.isprintable() and len(text) < 1024, repr(text[:80])
            # A host id is followed as before.
            monkeypatch.setattr(b.service, "calls", _MovedTo(HOST_A))
            with pytest.raises(ObjectMovedError) as moved:
                await a.call(OBJECT_CALLED, "status", tenant="default", at=HOST_B)
            assert moved.value.moved_to == HOST_A

    asyncio.run(main())


class _MovedTo:
    def __init__(self, host: str) -> None:
        self.host = host

    async def call(self, **_ask: object) -> CallResult:
        from gateway.errors import ObjectMovedError

        raise ObjectMovedError("it left", moved_to=self.host)


# --- what the CLI prints of a peer's words --------------------------------------------------


@pytest.mark.parametrize("admitted", [True, False])
def test_a_dry_runs_answer_is_printed_without_the_peers_control_characters(
    capsys: pytest.CaptureFixture[str], admitted: bool
) -> None:
    """`gateway migrate --dry-run` prints the destination's answer: its refusal, and each
    decision's capability and reason, all the peer's unsigned words. On main they were
    printed as sent (rich passes escape sequences through with markup off): "\\x1b[2J"
    cleared the operator's screen, and an OSC sequence could set the terminal's title
    or write to its clipboard. Now every character that is not printable is shown as
    "?", and lines are only the ones this host makes."""
    from gateway._cli_base import _print_evaluation
    from gateway.handoff.messages import Decision, Evaluation

    unruly = "\x1b[2J\x1b]52;c;cHduZWQ=\x07\nforged line"
    evaluation = Evaluation(
        host=HOST_B,
        admitted=admitted,
        refusal="" if admitted else unruly,
        decisions=(Decision(capability=unruly, outcome="granted", reason=unruly),)
        if admitted
        else (),
    )
    _print_evaluation(evaluation, "text")
    printed = capsys.readouterr()
    shown = printed.out + printed.err
    assert "\x1b" not in shown and "\x07" not in shown, repr(shown)
    assert "\nforged line" not in shown, repr(shown)
    assert "?[2J" in shown


def test_an_error_line_shows_no_control_characters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every `gateway: error:` line goes through _cli_base._one_line, which made it one
    line but let escape sequences through: a file name, an id or a peer's text holding
    "\\x1b[2J" cleared the screen as the error was printed. Now they show as "?"."""
    from gateway.cli import main

    assert main(["verify", str(tmp_path / "\x1b[2Jnothing.json"), "--trust", "x"]) == 2
    shown = capsys.readouterr().err
    assert "gateway: error:" in shown and "?[2Jnothing.json" in shown, repr(shown)
    assert "\x1b" not in shown, repr(shown)


# --- how many Calls a peer may have waiting here --------------------------------------------


def test_calls_a_peer_has_in_flight_are_bounded(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Call for an object that is frozen, or staged here by a migration not settled,
    waits for it (up to MAX_CALL_WAIT, 30 s), looking at the store every 0.1 s, and it
    does so before the object's permissions are checked. A peer can stage such an
    object itself (Prepare, never Commit), and nothing bounded how many Calls it had
    waiting: on main 200 Calls at once, each waiting 1 s, made B read the object 2,000+
    times (in 30 s: 60,000 reads, 2,000 a second, for as long as the peer keeps asking).
    Now a peer has at most MAX_CALLS_IN_FLIGHT_PER_PEER Calls in flight here; more are
    refused at once (PeerUnavailableError, UNAVAILABLE), saying why."""
    from gateway.transport.server import MAX_CALLS_IN_FLIGHT_PER_PEER

    asked = 200

    async def main() -> None:
        async with serving(world, [HOST_A, HOST_B]) as hosts:
            b, client = hosts[HOST_B], hosts[HOST_A].peers.client(HOST_B)

            async def held(*_args: object) -> bool:
                return True  # as for a copy the peer staged here (Prepare, never Commit)

            monkeypatch.setattr(b.journal, "held", held)
            reads = 0
            look = b.journal.object

            async def counted(*args: object, **kwargs: object) -> object:
                nonlocal reads
                reads += 1
                return await look(*args, **kwargs)

            monkeypatch.setattr(b.journal, "object", counted)
            request = gateway_pb2.CallRequest(
                tenant="default",
                object_id="obj://org-a.example/calls/staged",
                method="status",
                wait_ms=1000,
            )
            answers = await asyncio.gather(
                *(
                    client.stub.Call(
                        request, metadata=tuple(versions.ours().metadata()), timeout=30
                    )
                    for _ in range(asked)
                ),
                return_exceptions=True,
            )
            kinds = sorted(
                dict(a.trailing_metadata() or ()).get(ERROR_TYPE_KEY, repr(a))
                for a in answers
                if isinstance(a, grpc.aio.AioRpcError)
            )
            assert len(kinds) == asked
            assert kinds.count("ObjectBusyError") == MAX_CALLS_IN_FLIGHT_PER_PEER, kinds[:3]
            assert kinds.count("PeerUnavailableError") == asked - MAX_CALLS_IN_FLIGHT_PER_PEER
            assert reads <= MAX_CALLS_IN_FLIGHT_PER_PEER * 12, reads

    asyncio.run(main())


# --- found outside the review's files, mended in gateway/migrations.py -------------------------


def test_a_peers_abort_reason_never_breaks_migration_list(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """A source's Abort carries a reason (at most MAX_REASON_CHARS), which the destination
    journals with the migration and `gateway migration list --all` / `show` print in a
    rich table, where text is markup: a reason of "[/bold]" raises rich's MarkupError
    ("internal error", exit 70), and keeps doing so on every listing until the record is
    pruned; escape sequences are printed as sent."""
    from gateway.cli import main

    async def main_() -> None:
        async with serving(world, [HOST_A, HOST_B]) as hosts:
            a, b = hosts[HOST_A], hosts[HOST_B]
            obj = await a.create_object(
                "obj://org-a.example/abort/reason",
                tenant="default",
                data=b"{}",
                content_type="application/json",
            )
            transfer = sealed_transfer(a, obj, HOST_B)
            await a.peers.client(HOST_B).prepare(sign_transfer(a, transfer))
            await b.destination.abort(
                transfer.migration_id, peer=HOST_A, reason="[/bold] \x1b[2J it broke"
            )

    asyncio.run(main_())
    code = main(["migration", "list", "--all", "--config", str(world.config(HOST_B))])
    shown = capsys.readouterr()
    assert code == 0, shown.err
    assert "\x1b[2J" not in shown.out


def test_json_output_escapes_the_c1_controls(capsys: pytest.CaptureFixture[str]) -> None:
    """``-o json`` keeps non-ASCII text as it is, but JSON escapes only the controls below
    U+0020: U+009B (CSI) reached the terminal, which obeys it as ESC [."""
    import json

    from gateway.present import print_json

    document = {"reason": "caf\u00e9 \x9b2J \x7f\x85 done"}
    print_json(document)
    shown = capsys.readouterr().out
    assert not any("\x7f" <= c <= "\x9f" for c in shown)
    assert "café" in shown  # the rest is kept as it is
    assert json.loads(shown) == document


def test_one_connection_runs_a_bounded_number_of_streams_at_once(patient_b: World) -> None:
    """A peer's one connection could open any number of streams, each a handler running
    here (the review found 1,797 at once; health Watch streams never end by themselves).
    HTTP/2's own limit (MAX_CONCURRENT_STREAMS, MAX_STREAMS_PER_CONNECTION) holds the
    rest at the peer, queued, until a stream ends."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from gateway.transport.server import MAX_STREAMS_PER_CONNECTION

    opened = MAX_STREAMS_PER_CONNECTION + 30

    async def main() -> None:
        async with serving(patient_b, [HOST_A, HOST_B]) as hosts:
            channel = hosts[HOST_A].peers.client(HOST_B).channel
            stub = health_pb2_grpc.HealthStub(channel)
            calls = [stub.Watch(health_pb2.HealthCheckRequest()) for _ in range(opened)]
            answered = 0
            first = asyncio.Event()

            async def first_answer(call: grpc.aio.UnaryStreamCall) -> None:
                nonlocal answered
                await call.read()
                answered += 1
                if answered == MAX_STREAMS_PER_CONNECTION:
                    first.set()

            readers = [asyncio.create_task(first_answer(call)) for call in calls]
            try:
                await asyncio.wait_for(first.wait(), timeout=30)
                await asyncio.sleep(1.0)  # any stream over the limit would answer meanwhile
                assert answered == MAX_STREAMS_PER_CONNECTION
            finally:
                for call in calls:
                    call.cancel()
                await asyncio.gather(*readers, return_exceptions=True)

    asyncio.run(main())
