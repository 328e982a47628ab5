"""What reaches a host from outside (session 32 review, a dishonest peer's view).

Each test here failed on main for the reason its docstring gives (an ``xfail`` marks a
flaw found in a module another session owns, left for it to fix)."""

from __future__ import annotations

import asyncio
import os
import resource
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from gateway import wire
from gateway.errors import LimitExceededError, PeerUnavailableError, TransferStreamError
from gateway.host import Host
from gateway.model import LifecycleState
from gateway.objectspec import parse_spec
from gateway.testing import World, serving
from gateway.testing.plugin import WorldFactory
from gateway.v1 import gateway_pb2
from tests.conftest import HOST_A, HOST_B
from tests.test_streaming import OBJECT, PAYLOAD, SIZE, create_large, pieces, sealed_transfer

# --- PrepareStream: how many data messages a peer may send ------------------------------


class _Counted:
    """A stream of parts that records how many the receiver asked for."""

    def __init__(self, parts: AsyncIterator[bytes]) -> None:
        self.parts, self.taken = parts, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for part in self.parts:
            self.taken += 1
            yield part


async def _empties_then(data: bytes, empties: int) -> AsyncIterator[bytes]:
    for _ in range(empties):
        yield b""
    async for part in pieces(data):
        yield part


async def _bytes_one_by_one_then(data: bytes, singles: int) -> AsyncIterator[bytes]:
    for index in range(singles):
        yield data[index : index + 1]
    async for part in pieces(data[singles:]):
        yield part


@pytest.mark.parametrize(
    ("stream", "refusal"),
    [
        (lambda: _empties_then(PAYLOAD, 20_000), "an empty data message"),
        (lambda: _bytes_one_by_one_then(PAYLOAD, 2000), "a data message of 1 bytes before the end"),
    ],
    ids=["empty-messages", "one-byte-messages"],
)
def test_a_stream_of_tiny_data_messages_is_refused_at_the_second(
    world: World, stream, refusal: str
) -> None:  # type: ignore[no-untyped-def]
    """A PrepareStream's size is bounded by the transfer the peer signs, but not how many
    messages carry it: on main an empty data message cost the destination a decode, a
    trip through write_blob and a hand-off to its hashing thread, and none of them
    counted towards the size, so one stream could go on for ever; measured in one process
    (both ends), 20,000 empty messages (7 bytes each on the wire) took 3.6 s of CPU, about
    180 us each: a peer sending 100 KB/s of them keeps a core busy. One-byte messages of
    a 64 GiB object: 64 billion trips. Now every data message but the last carries at
    least MIN_STREAM_PART_BYTES (64 KiB) and none is empty: the count is bounded by the
    signed size, and a stream that breaks the rule is refused at its second message,
    leaving nothing behind. (An honest sender's messages are 1 MiB.)"""

    async def main() -> None:
        async with serving(world, [HOST_A, HOST_B]) as hosts:
            a, b = hosts[HOST_A], hosts[HOST_B]
            await create_large(a)
            counted = _Counted(stream())
            with pytest.raises(TransferStreamError, match=refusal):
                await b.destination.prepare_stream(
                    await sealed_transfer(a), aiter(counted), peer=HOST_A
                )
            assert counted.taken <= 3
            assert await b.store.list("upload/") == [] and await b.store.list("journal/") == []
            # Honest parts of any size of at least 64 KiB, and a short last one, still go.
            receipt = await b.destination.prepare_stream(
                await sealed_transfer(a), pieces(PAYLOAD, size=64 << 10), peer=HOST_A
            )
            assert receipt
            assert (await a.get_object(OBJECT, tenant="default")).state is LifecycleState.ACTIVE
            assert SIZE % (64 << 10)  # so the last part above was a short one

    asyncio.run(main())


# --- the `gateway` command with a hostile file -------------------------------------------


def _cli_with_memory_cap(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m gateway ARGS`` with its address space capped at 3 GiB, so that a read
    of a whole huge file fails (MemoryError) instead of taking the machine's memory."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))

    return subprocess.run(
        [sys.executable, "-m", "gateway", *(os.fspath(a) for a in args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        preexec_fn=cap,
    )


@pytest.mark.parametrize(
    "command",
    [
        ("verify", "{huge}", "--trust", "{small}"),
        ("verify", "{small}", "--trust", "{huge}"),
        ("trust", "import", "{huge}"),
        ("admit", "--dry-run", "{huge}"),
    ],
    ids=["verify-file", "verify-trust", "trust-import", "admit"],
)
def test_the_cli_reads_a_partners_file_within_its_limit(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    """Bundles, proposals and transfers are files a partner hands over. On main `gateway
    verify`, `gateway trust import` and `gateway admit --dry-run` read each whole
    (Path.read_bytes) before any size was checked: a 64 GiB file (sparse: it costs the
    partner no disk) ended in "internal error: MemoryError" under a 3 GiB address-space
    cap and took all of memory without one, and /dev/zero the same, reading for ever. Now
    at most one byte over the file's limit is read: a ConfigError naming the file."""
    huge, small = tmp_path / "huge.json", tmp_path / "small.json"
    with open(huge, "wb") as handle:
        handle.truncate(64 << 30)
    small.write_bytes(b"{}")
    argv = [part.format(huge=huge, small=small) for part in command]
    done = _cli_with_memory_cap(*argv, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "larger than" in done.stderr
    assert f"{huge} is larger than" in done.stderr and "bytes" in done.stderr


# --- the answer to Evaluate (a dry run asked of a destination) ----------------------------


GRANTED_OBJECT = "obj://org-a.example/billing/invoice-32"
GRANTED = {
    "data": {"invoice": 32},
    "grant": {
        "audience": "spiffe://org-b.example",
        "capabilities": [
            {"resource": "pubsub:alerts/overdue", "actions": ["publish"]},
            {"resource": "state:self", "actions": ["read"]},
        ],
    },
}


def _flooded_evaluation(evaluation: object) -> gateway_pb2.EvaluateResponse:
    del evaluation
    return gateway_pb2.EvaluateResponse(
        admitted=True, decisions=[gateway_pb2.CapabilityDecision()] * 400_000
    )


def _long_refusal(evaluation: object) -> gateway_pb2.EvaluateResponse:
    del evaluation
    return gateway_pb2.EvaluateResponse(admitted=False, refusal="r" * (2 << 20))


@pytest.mark.parametrize(
    ("answer", "refusal"),
    [
        (_flooded_evaluation, "decisions of 0 bytes; each takes at least"),
        (_long_refusal, r"answer to Evaluate is 2097\d+ bytes; at most 1048576"),
    ],
    ids=["empty-decisions", "two-megabytes-of-refusal"],
)
def test_an_evaluation_answer_is_bounded_before_it_is_parsed(
    world: World, monkeypatch: pytest.MonkeyPatch, answer, refusal: str
) -> None:  # type: ignore[no-untyped-def]
    """A dry run (`gateway migrate --dry-run`) asks the destination what it would grant;
    its answer is not signed, and on main it was parsed by protobuf and turned into one
    Decision per element, whatever its size, up to gRPC's 32 MiB message cap: 32 MiB of
    empty decisions (16.7 million) cost the asking process 0.8 s to parse and 22 s more
    to decode, and 2.4 GB of memory. Now the answer is at most MAX_EVALUATION_BYTES
    (1 MiB), and its decisions are counted before protobuf parses them: each honest one
    names a capability and an outcome, so one shorter than 16 bytes is refused at once."""

    async def main() -> None:
        async with serving(world, [HOST_A, HOST_B]) as hosts:
            a = hosts[HOST_A]
            spec = parse_spec(GRANTED, source="test")
            await a.create_object(
                GRANTED_OBJECT,
                tenant="default",
                data=spec.data,
                content_type=spec.content_type,
                grant=spec.grant,
            )
            monkeypatch.setattr(wire, "encode_evaluation", answer)  # B answers so
            with pytest.raises(LimitExceededError, match=refusal):
                await a.evaluate_remote(GRANTED_OBJECT, tenant="default", destination=HOST_B)
            monkeypatch.undo()
            honest = await a.evaluate_remote(GRANTED_OBJECT, tenant="default", destination=HOST_B)
            assert honest.admitted and len(honest.decisions) == 2, honest

    asyncio.run(main())


# --- recovery: one unreachable source must not hold up the others -------------------------


def test_a_recovery_pass_asks_an_unreachable_source_once(
    gateway_world: WorldFactory, world: World
) -> None:
    """A destination asks the source of each copy staged past stage_timeout for its
    decision, one after the other. How many copies a source leaves staged is the
    source's doing (it prepares and then never answers). On main a pass asked about
    each of them, and each question to a source that does not answer costs
    retry_attempts x rpc_timeout (5 x 10 s by default): 100 copies kept the pass busy
    for over 80 minutes, while the copies of every other peer, committed at their
    source and live nowhere until this pass settles them, waited. Now the first question
    the source does not answer ends that source's turn in the pass: one series of
    attempts per unreachable source, whatever it left staged."""
    running = gateway_world(world)
    staged = 4
    running.network(HOST_A).lose_reply("prepare", to=HOST_B, times=staged)
    running.network(HOST_A).drop("abort", to=HOST_B, times=staged)

    async def scenario(hosts: dict[str, Host]) -> None:
        a, b = hosts[HOST_A], hosts[HOST_B]
        for index in range(staged):
            object_id = f"obj://org-a.example/billing/left-{index}"
            await a.create_object(
                object_id, tenant="default", data=b"{}", content_type="application/json"
            )
            with pytest.raises(PeerUnavailableError):
                await a.migrate(object_id, tenant="default", destination=HOST_B)
        assert len(await b.store.list("journal/destination/")) == staged
        await asyncio.sleep(0.3)  # past stage_timeout
        network = running.network(HOST_B)
        network.drop("decision", to=HOST_A, times=staged)
        await b.recovery.recover_destinations()
        asked = [d for d in network.log if d.rpc == "decision"]
        assert len(asked) == 1, asked
        # The next pass asks again (and, the source answering now, settles them all).
        network.clear()
        assert await b.recovery.recover_destinations() == staged

    running.run(scenario(running.hosts))


# --- `gateway call --wait` ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("wait", "escaped"),
    [
        (float("nan"), "ValueError: cannot convert float NaN to integer"),
        (float("inf"), "OverflowError: cannot convert float infinity to integer"),
        (1e300, "DEADLINE_EXCEEDED at once: the deadline overflowed"),
        (-5.0, "taken as no wait at all"),
    ],
)
def test_a_call_wait_outside_its_range_is_a_config_error(wait: float, escaped: str) -> None:
    """`gateway call --wait` (Host.call's ``wait``) went into int(wait * 1000) and the
    RPC's deadline unchecked: NaN and infinity escaped as ValueError and OverflowError
    (exit 70, "internal error"), 1e300 failed at once as a peer that "did not answer",
    and a negative wait was taken silently. Now anything but 0-30 s is a ConfigError,
    before any connection is made."""
    from gateway.errors import ConfigError
    from gateway.transport.client import call_object

    with pytest.raises(ConfigError, match="--wait"):
        (
            asyncio.run(
                call_object(
                    address="127.0.0.1:1",
                    server_name="localhost",
                    host_id=HOST_B,
                    credentials=grpc.ssl_channel_credentials(),
                    tenant="default",
                    object_id=OBJECT,
                    method="status",
                    data=b"",
                    wait=wait,
                )
            ),
            escaped,
        )


# --- the custody home's Claim -------------------------------------------------------------


def test_a_claims_departure_and_decision_are_bounded_as_receipts(world: World) -> None:
    """A Claim carries a departure (a signed checkpoint) and a decision (a signed
    COMMITTED answer), each well under a kilobyte. On main each was decoded with the
    16 MiB transfer limit: a claimant's 16 MiB departure was walked and parsed before its
    checkpoint was refused (~95 ms of CPU each, and a Claim is not counted in the
    in-flight bytes a peer may hold). Now both are held to MAX_RECEIPT_BYTES (64 KiB),
    like every other signed answer, and refused before they are parsed."""
    from gateway.errors import EnvelopeTooLargeError
    from gateway.v1 import envelope_pb2

    signed = envelope_pb2.Envelope(
        payload=b"{" + b" " * (1 << 20) + b"}",
        payload_type="application/vnd.gateway.checkpoint+json",
        signatures=[envelope_pb2.Signature(keyid="k", sig=b"s")],
    ).SerializeToString()

    async def main() -> None:
        async with serving(world, [HOST_A]) as hosts:
            home = hosts[HOST_A].destination.home
            with pytest.raises(EnvelopeTooLargeError, match=f"at most {wire.MAX_RECEIPT_BYTES}"):
                await home.claim(signed, b"", peer=HOST_B)

    asyncio.run(main())


def test_an_object_spec_file_is_read_within_a_limit(tmp_path: Path) -> None:
    """`gateway object create --spec FILE` (and load_spec, its library entry): a spec may
    come from another team; a 64 GiB sparse file ends in "internal error: MemoryError"
    under a 3 GiB address-space cap, and takes all of memory without one (so would
    /dev/zero). It should be refused as a ConfigError after a bounded read."""
    huge = tmp_path / "huge.yaml"
    with open(huge, "wb") as handle:
        handle.truncate(64 << 30)
    done = _cli_with_memory_cap(
        "object", "create", "obj://org-a.example/x/y", "--spec", huge, cwd=tmp_path
    )
    assert done.returncode == 2, done.stderr
    assert "larger than" in done.stderr
