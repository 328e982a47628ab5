"""What a peer holding a valid certificate, or a file handed to an operator, can make a
host do (session 34 review): the size of a request the server takes, what `gateway
forks` and `gateway verify` print, and what an archive directory costs to verify.

Each test here failed on main for the reason its docstring gives."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from gateway import versions
from gateway.archive import CustodySegment, Segment, compact, verify_archived
from gateway.lineage import EntryKind, Lineage
from gateway.testing import World, serving
from gateway.transport.server import MAX_REQUEST_BYTES
from gateway.transport.status import ERROR_TYPE_KEY
from gateway.v1 import gateway_pb2
from gateway.wire import MAX_ENVELOPE_BYTES
from tests.conftest import HOST_A, HOST_B
from tests.test_custody_archive import OBJECT as CUSTODY_ARCHIVE_OBJECT
from tests.test_lineage import HOST_A as HOST_A_LINEAGE

# --- the largest request the server receives ----------------------------------------------


def _prepare_request(size: int) -> bytes:
    """A PrepareRequest, serialized, of exactly ``size`` bytes (a transfer of zeros)."""
    for header in range(2, 12):  # the field's tag and length: 2 to 11 bytes
        request = gateway_pb2.PrepareRequest(transfer=bytes(size - header))
        if request.ByteSize() == size:
            return request.SerializeToString()
    raise AssertionError(f"no PrepareRequest is {size} bytes")


def test_the_server_receives_no_request_larger_than_the_largest_legal_one(world: World) -> None:
    """Every request a peer legitimately sends is at most one envelope
    (wire.MAX_ENVELOPE_BYTES, 16 MiB: a transfer or a proposal) in one bytes field, or
    smaller; on main the server received requests up to 32 MiB (tls.MAX_MESSAGE_BYTES),
    each held whole and copied before any handler looked at it. Now a request over
    MAX_REQUEST_BYTES is refused by gRPC as it arrives (RESOURCE_EXHAUSTED, no gateway
    error type), while the largest legal Prepare (a 16 MiB transfer) reaches the handler,
    which judges it (here: not an envelope, but not too large)."""
    assert MAX_REQUEST_BYTES < 2 * MAX_ENVELOPE_BYTES

    async def main() -> None:
        async with serving(world, [HOST_A, HOST_B]) as hosts:
            prepare = (
                hosts[HOST_A]
                .peers.client(HOST_B)
                .channel.unary_unary(
                    "/gateway.v1.Gateway/Prepare",
                    request_serializer=lambda raw: raw,
                    response_deserializer=lambda raw: raw,
                )
            )
            metadata = tuple(versions.ours().metadata())

            with pytest.raises(grpc.aio.AioRpcError) as over:
                await prepare(_prepare_request(MAX_REQUEST_BYTES + 1), metadata=metadata)
            assert over.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, over.value.details()
            assert ERROR_TYPE_KEY not in dict(over.value.trailing_metadata() or ())

            largest = _prepare_request(MAX_ENVELOPE_BYTES + 5)  # the transfer: 16 MiB
            with pytest.raises(grpc.aio.AioRpcError) as judged:
                await prepare(largest, metadata=metadata)
            assert judged.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            trailers = dict(judged.value.trailing_metadata() or ())
            assert trailers.get(ERROR_TYPE_KEY) == "EnvelopeError", trailers  # not too large

    asyncio.run(main())


@pytest.mark.parametrize("rpc", ["prepare", "prepare_stream", "evaluate"])
def test_a_request_too_large_to_send_is_named_before_it_is_sent(world: World, rpc: str) -> None:
    """With the server's receive limit at MAX_REQUEST_BYTES, a transfer or proposal over
    it was refused by the peer's gRPC as RESOURCE_EXHAUSTED "Received message larger
    than max", which the client reads as its own receive limit: the source was told the
    peer's *answer* was too large (LimitExceededError), for a transfer of its own that
    no host accepts (over wire.MAX_ENVELOPE_BYTES). Now the client refuses to send an
    envelope over MAX_ENVELOPE_BYTES, naming it: an EnvelopeTooLargeError, as the peer
    would have answered one within the limit, and no peer is asked."""
    from gateway.errors import EnvelopeTooLargeError

    async def main() -> None:
        async with serving(world, [HOST_A, HOST_B]) as hosts:
            client = hosts[HOST_A].peers.client(HOST_B)
            oversized = bytes(MAX_REQUEST_BYTES)

            async def nothing() -> AsyncIterator[bytes]:
                return
                yield b""

            asked = {
                "prepare": lambda: client.prepare(oversized),
                "prepare_stream": lambda: client.prepare_stream(oversized, nothing, size=0),
                "evaluate": lambda: client.evaluate(oversized),
            }[rpc]
            with pytest.raises(EnvelopeTooLargeError, match=f"at most {MAX_ENVELOPE_BYTES}"):
                await asked()

    asyncio.run(main())


# --- what `gateway forks` prints ----------------------------------------------------------


def test_gateway_forks_prints_a_peers_words_as_text(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """A fork's evidence keeps the refused copy's object id, the sender and the reason
    (words of the peer's copy); `gateway forks` printed them in a rich table, where a str
    cell is markup: a "[/bold]" in them raised rich's MarkupError ("internal error", exit
    70) on every listing until the record was pruned, and escape sequences reached the
    terminal. Now each cell is plain text (gateway._text.plain)."""
    from gateway.cli import main
    from gateway.config import load_config
    from gateway.handoff.evidence import EVIDENCE_PREFIX, ForkEvidence
    from gateway.host import Host
    from gateway.stores import Expect, Put

    evidence = ForkEvidence(
        object_id="obj://org-a.example/[/bold]/x",
        tenant="default",
        sender=HOST_A,
        migration="mig-[red]",
        epoch=3,
        reason="[/bold] lineage diverges \x1b[2J at entry 7",
        seen_at="2026-12-06T19:00:00Z",
        lineage=b"",
    )

    async def keep() -> None:
        host = await Host.open(load_config(world.config(HOST_B)))
        try:
            key = f"{EVIDENCE_PREFIX}default/{evidence.object_id}/0"
            await host.store.transact([Put(key=key, value=evidence.encode(), etag=Expect.ABSENT)])
        finally:
            await host.close()

    asyncio.run(keep())
    code = main(["forks", "--config", str(world.config(HOST_B))])
    shown = capsys.readouterr()
    assert code == 0, shown.err
    assert "[/bold]" in shown.out.replace("\n", "")
    assert "\x1b[2J" not in shown.out


# --- `gateway verify --archive`: what an archive directory costs -------------------------


def _compacted(entries: int) -> tuple[Lineage, Segment]:
    """An object of ``entries`` entries compacted once: its lineage and its one segment."""
    from tests.test_compaction import created
    from tests.test_lineage import OBJECT, SIGNERS, T0

    obj = created()
    for n in range(entries):
        obj = obj.record(EntryKind.EVALUATED, host=HOST_A_LINEAGE, at=T0, detail=f"cycle {n}")
    return compact(
        obj.lineage,
        object_id=OBJECT,
        host=HOST_A_LINEAGE,
        at=T0,
        signer=SIGNERS[HOST_A_LINEAGE],
        keep=5,
    )


def test_an_archive_is_read_within_a_limit_on_all_its_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each segment file is read to at most MAX_SEGMENT_BYTES (128 MiB), but on main
    nothing bounded their sum: `gateway verify --archive DIR` read up to MAX_SEGMENTS
    (16,384) files of 128 MiB each, 2 TiB, and held every one decoded before verifying
    anything (a verification peaks at about 12 times the bytes it reads, measured on
    20,000 entries). Now the files' sizes are added up before any is read, and the bytes
    read are counted as they are read: over MAX_ARCHIVE_BYTES is a ConfigError naming
    the directory and the limit. (The limit is lowered here, so the files stay small.)"""
    import gateway.archive
    from gateway.archive import read_archives
    from gateway.errors import ConfigError

    _lineage, honest = _compacted(40)
    limit = 3 * len(honest.encode()) - 1
    monkeypatch.setattr(gateway.archive, "MAX_ARCHIVE_BYTES", limit, raising=False)
    within, over = tmp_path / "within", tmp_path / "over"
    within.mkdir()
    over.mkdir()
    for n in range(2):
        (within / f"{n:020d}+{len(honest.entries)}.seg").write_bytes(honest.encode())
    for n in range(3):
        (over / f"{n:020d}+{len(honest.entries)}.seg").write_bytes(honest.encode())
    assert len(read_archives([within])) == 2
    read = 0
    reading = gateway.archive._read_segment_file

    def counting(file: Path) -> bytes:
        nonlocal read
        read += 1
        return reading(file)

    monkeypatch.setattr(gateway.archive, "_read_segment_file", counting)
    with pytest.raises(ConfigError, match=f"at most {limit} bytes") as refused:
        read_archives([within, over])
    assert str(over) in str(refused.value)
    assert read == 0  # refused from the files' sizes, before reading any


def test_spare_custody_segments_cost_one_parse_of_each_handoff(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Custody segments (archived handoffs) are unsigned too. On main archived_custody
    parsed every departure and arrival envelope of every run of segments it tried, up to
    MAX_CHAINS_TRIED (64): two one-handoff segments at each of six positions before a
    long one made 64 runs, each parsed whole. Now each segment's envelopes are parsed
    once; a run then costs only its commitment's hashing."""
    from gateway import envelope as dsse
    from gateway.archive import archived_custody
    from gateway.errors import LineageError
    from tests.test_peer_review_s31 import OBJECT as CUSTODY_OBJECT
    from tests.test_peer_review_s31 import _departing

    handoff = dsse.to_json(_departing(2).checkpoints[0])

    def handoffs(first: int, count: int) -> CustodySegment:
        return CustodySegment(
            object_id=CUSTODY_OBJECT,
            first=first,
            departures=(handoff,) * count,
            arrivals=(handoff,) * count,
        )

    segments = [handoffs(position, 1) for position in range(6) for _variant in range(2)]
    segments.append(handoffs(6, 100))
    parsed = 0
    from_json = dsse.from_json

    def counting(raw: bytes, *, max_size: int) -> dsse.Envelope:
        nonlocal parsed
        parsed += 1
        return from_json(raw, max_size=max_size)

    monkeypatch.setattr(dsse, "from_json", counting)
    with pytest.raises(LineageError, match="do not digest to the custody"):
        archived_custody(segments, _departing(107), object_id=CUSTODY_OBJECT)
    assert parsed <= 2 * (12 + 100), parsed  # main: 64 runs x 212


# --- what `gateway verify` prints ---------------------------------------------------------

_SIGNED_WORDS = "[/bold] \x1b[2J"


def test_a_verify_report_prints_what_signers_wrote_as_text() -> None:
    """`gateway verify FILE` prints a report of what the file's signers wrote: migration
    ids and receivers of departure checkpoints (Checkpoint.decode checks neither's
    characters), grant ids. A partner holding a valid key signs what it likes there, and
    on main those went into rich table cells as markup: a "[/bold]" raised MarkupError,
    so the operator saw "internal error" (exit 70) instead of the report and its failed
    checks, and escape sequences reached the terminal. Now every cell is text."""
    import io
    from datetime import UTC, datetime

    from rich.console import Console

    from gateway.audit import GrantInfo, Kind, Report, Stay
    from gateway.cli import render_report

    moment = datetime(2026, 12, 6, tzinfo=UTC)
    report = Report(
        kind=Kind.TRANSFER,
        object_id="obj://org-a.example/x",
        presenter=HOST_A,
        signed_at=moment,
        judged_at=moment,
        stays=(
            Stay(
                holder=HOST_A,
                received_from="",
                arrived_at=moment,
                departed_to=HOST_B + _SIGNED_WORDS,
                departed_at=moment,
                departure_migration="mig" + _SIGNED_WORDS,
                departure_epoch=1,
                authority=_SIGNED_WORDS,
            ),
            Stay(
                holder=HOST_B + _SIGNED_WORDS,
                received_from=HOST_A,
                arrived_at=moment,
                arrival_migration="mig" + _SIGNED_WORDS,
                arrival_epoch=1,
            ),
        ),
        grants=(
            GrantInfo(
                index=0,
                grant_id="g" + _SIGNED_WORDS,
                issuer=HOST_A + _SIGNED_WORDS,
                key_id="k",
                audiences=(HOST_B + _SIGNED_WORDS,),
                capabilities=[{"res": "state:self" + _SIGNED_WORDS, "act": ["read"]}],
                constraints={"regions": [_SIGNED_WORDS]},
                issued_at=moment,
                not_before=moment,
                expires_at=moment,
                parent=None,
            ),
        ),
    )
    shown = io.StringIO()
    console = Console(file=shown, width=400, highlight=False)
    for renderable in render_report(report):
        console.print(renderable)
    text = shown.getvalue()
    assert text.count("[/bold]") >= 8, text
    assert "\x1b[2J" not in text


# --- what `gateway lineage` and `gateway object show` print (gateway/present.py) -----------


@pytest.mark.parametrize("table", ["lineage_table", "lineage_summary", "describe_object"])
def test_an_objects_own_words_are_shown_as_text(table: str) -> None:
    """An entry's detail (up to MAX_DETAIL characters, written by whichever host recorded
    it: a partner holding the object writes its own) and the object's data (whatever its
    holders wrote) were printed by `gateway lineage` and `gateway object show` in rich
    tables as str cells, which rich reads as markup: a "[/bold]" in them raised
    MarkupError, so each listing of that object failed with "internal error" (exit 70)
    for as long as it carried that entry, and escape sequences reached the terminal. Now
    every cell is text (gateway._text.plain)."""
    import io

    from rich.console import Console

    from gateway import present
    from tests.test_compaction import created
    from tests.test_lineage import T0

    obj = created().record(
        EntryKind.EVALUATED, host=HOST_A_LINEAGE, at=T0, detail=_SIGNED_WORDS + " detail"
    )
    obj = replace(obj, data=b'{"note": "' + _SIGNED_WORDS.encode()[:7] + b'"}')
    shown = io.StringIO()
    Console(file=shown, width=400).print(getattr(present, table)(obj))
    assert "[/bold]" in shown.getvalue()


@pytest.mark.parametrize("kind", ["entries", "custody"])
def test_a_segments_object_id_is_bounded_as_an_id(kind: str) -> None:
    """A segment names the object it is of, and verification names that in its error
    when it is another object's ("an archive segment is of X, not Y"). On main the name
    was any string the file held, up to MAX_SEGMENT_BYTES: a megabyte of it became one
    line of `gateway verify`'s error. Now a segment naming an id longer than any object
    id (limits.MAX_ID_BYTES) is refused as it is decoded."""
    from gateway.errors import LineageError
    from gateway.limits import MAX_ID_BYTES

    long_id = "obj://org-a.example/" + "o" * (1 << 20)
    segment: Segment | CustodySegment = (
        Segment(object_id=long_id, start=0, entries=())
        if kind == "entries"
        else CustodySegment(object_id=long_id, first=0, departures=(), arrivals=())
    )
    with pytest.raises(LineageError, match="wrong type or size") as refused:
        type(segment).decode(segment.encode())
    assert len(str(refused.value)) < 500
    fitting = "obj://org-a.example/" + "o" * (MAX_ID_BYTES - 20)
    assert type(segment).decode(replace(segment, object_id=fitting).encode()).object_id == fitting


# --- custody: a history longer than any object carries ------------------------------------


@pytest.fixture(scope="module")
def custody_history(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """tests.test_custody_archive's history: an object moved A -> B -> A ... 20 times."""
    from gateway.testing import HostSpec, build_world
    from tests.conftest import FAST_HANDOFF
    from tests.test_custody_archive import _ping_pong

    directory = tmp_path_factory.mktemp("custody-archive-s34")
    world = build_world(
        directory, [HostSpec(host_id=h, handoff=FAST_HANDOFF) for h in (HOST_A, HOST_B)]
    )

    async def run() -> Any:
        async with serving(world) as hosts:
            return await _ping_pong(hosts)

    return asyncio.run(run())


def test_an_archive_may_hold_more_handoffs_than_an_object_carries(
    custody_history: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ADR 0010 step 2: archived handoffs do not count against MAX_HANDOFFS (the bound on
    the departures an object carries; they have MAX_HOPS and the archive's bytes). But
    verify_archived reassembles the whole history and runs verify_custody over it, which
    refused more than MAX_DEPARTURES departures: an object that had moved more than 1,024
    times could never be verified offline with its archive ("records N departures; at
    most 1024"). Now only the carried departures are held to that bound. (The bound is
    lowered here to 16, under the 20 hops of the history, above the carried ones.)"""
    import gateway.custody
    from tests.test_custody_archive import HOPS, _offline

    lineage, archive = _offline(custody_history)
    assert len(lineage.checkpoints) < 16 < HOPS
    monkeypatch.setattr(gateway.custody, "MAX_DEPARTURES", 16)
    whole = verify_archived(
        archive,
        lineage,
        object_id=CUSTODY_ARCHIVE_OBJECT,
        trust=custody_history.trust,
        sealed=False,
    )
    assert len(whole.checkpoints) == HOPS


# --- a checkpoint's receiver and migration (gateway/lineage.py) ----------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("to", _SIGNED_WORDS),
        ("to", "spiffe://org-b.example/" + "a" * 4096),
        ("migration", _SIGNED_WORDS),
        ("migration", "m" * 4096),
        ("migration", ""),
    ],
)
def test_a_checkpoints_receiver_and_migration_are_held_to_what_ids_are(
    field: str, value: str
) -> None:
    """A departure's checkpoint names its receiver and its migration: the signer's words,
    matched against arrivals and shown to operators. They were taken as any string (the
    session-34 review); a signed checkpoint whose ``to`` is not a host id or whose
    ``migration`` is not a migration id is now refused where it is decoded, naming it."""
    from datetime import UTC, datetime

    from gateway.errors import LineageError
    from gateway.lineage import Checkpoint

    honest = Checkpoint(
        object_id="obj://org-a.example/billing/invoice-42",
        host=HOST_A,
        epoch=1,
        size=3,
        root=bytes(32),
        issued_at=datetime(2026, 12, 6, 12, 0, tzinfo=UTC),
        to=HOST_B,
        migration="mig-0123456789abcdef",
        credentials_digest=bytes(32),
    )
    assert Checkpoint.decode(honest.encode()) == honest
    with pytest.raises(LineageError, match="checkpoint"):
        Checkpoint.decode(replace(honest, **{field: value}).encode())
