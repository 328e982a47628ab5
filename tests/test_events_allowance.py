"""The bus takes a bounded share of each topic per retention period.

The bus keeps every message an hour (BUS_RETENTION), for objects that arrive later, so
without a bound a publisher's rate alone set its size: an hour of whatever the store
could ingest, up to 64 KiB a message. Each topic now has an allowance of messages and
bytes, refilled over the retention period (a token bucket), and so has the bus as a
whole. A new message over it is refused as "retry later" (BusFullError, a
StoreUnavailableError): Dapr's app callback answers RETRY, so the broker holds the
message and daprd redelivers it; nothing is kept and nothing is lost. A redelivery of a
message the bus holds already costs no allowance.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest

from gateway.errors import BusFullError, StoreUnavailableError
from gateway.host import Host
from gateway.runtime import events
from tests.test_events import TOPIC
from tests.test_events_bounds import _open
from tests.test_peer_review_s31 import _STATUS, _event_with
from tests.test_runtime_review_s28 import FakeContext, _servicer

OTHER = "orders/other"


def _small(monkeypatch: pytest.MonkeyPatch, *, messages: int, size: int) -> None:
    monkeypatch.setattr(events, "BUS_MESSAGES_PER_TOPIC", messages)
    monkeypatch.setattr(events, "BUS_BYTES_PER_TOPIC", size)


def test_a_topic_over_its_allowance_is_refused_and_refills_over_the_retention(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _small(monkeypatch, messages=5, size=1 << 20)

    async def main() -> None:
        host, clock = await _open(tmp_path)
        try:
            for n in range(5):
                await host.events.publish(TOPIC, data={"n": n}, message_id=f"m-{n}")
            with pytest.raises(BusFullError, match=TOPIC) as refused:
                await host.events.publish(TOPIC, data={"n": 5}, message_id="m-5")
            assert isinstance(refused.value, StoreUnavailableError)
            assert "retry" in str(refused.value)
            assert len(await host.store.list(events.BUS)) == 5  # nothing kept of it
            # Another topic has its own allowance.
            await host.events.publish(OTHER, data={}, message_id="o-1")
            # Redeliveries of what the bus holds cost nothing.
            for _ in range(10):
                await host.events.publish(TOPIC, data={"n": 0}, message_id="m-0")
            # A fifth of the retention refills one message.
            clock.offset = events.BUS_RETENTION / 5 + timedelta(seconds=1)
            await host.events.publish(TOPIC, data={"n": 5}, message_id="m-5")
            with pytest.raises(BusFullError):
                await host.events.publish(TOPIC, data={"n": 6}, message_id="m-6")
        finally:
            await host.close()

    asyncio.run(main())


def test_bytes_are_bounded_as_well_as_messages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _small(monkeypatch, messages=1000, size=8 << 10)

    async def main() -> None:
        host, _clock = await _open(tmp_path)
        try:
            await host.events.publish(TOPIC, data={"pad": "x" * (5 << 10)}, message_id="big-1")
            with pytest.raises(BusFullError, match="bytes"):
                await host.events.publish(TOPIC, data={"pad": "x" * (5 << 10)}, message_id="big-2")
            await host.events.publish(TOPIC, data={"pad": "x"}, message_id="small")
        finally:
            await host.close()

    asyncio.run(main())


def test_the_bus_as_a_whole_is_bounded_across_topics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fresh topics each have a full allowance: the bus's own bounds every topic together."""
    monkeypatch.setattr(events, "BUS_MESSAGES", 8)

    async def main() -> None:
        host, _clock = await _open(tmp_path)
        try:
            for n in range(8):
                await host.events.publish(f"spread/t{n}", data={}, message_id=f"s-{n}")
            with pytest.raises(BusFullError, match="this host's bus"):
                await host.events.publish("spread/t8", data={}, message_id="s-8")
        finally:
            await host.close()

    asyncio.run(main())


def test_dapr_is_told_to_retry_a_message_over_the_allowance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _small(monkeypatch, messages=1, size=1 << 20)

    async def main() -> None:
        host, _clock = await _open(tmp_path)
        try:
            servicer = _servicer(host)
            first = await servicer.OnTopicEvent(_event_with("d-1", {}), FakeContext())
            assert first.status == _STATUS.SUCCESS
            second = await servicer.OnTopicEvent(_event_with("d-2", {}), FakeContext())
            assert second.status == _STATUS.RETRY
            # The redelivery of the first is still recognised, and costs nothing.
            again = await servicer.OnTopicEvent(_event_with("d-1", {}), FakeContext())
            assert again.status == _STATUS.SUCCESS
        finally:
            await host.close()

    asyncio.run(main())


def test_the_buckets_of_quiet_topics_are_forgotten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Topic names come from publishers: a bucket is held only while it is not full."""
    monkeypatch.setattr(events, "ALLOWANCE_SWEEP", 8)

    async def main() -> None:
        host, clock = await _open(tmp_path)
        try:
            for n in range(7):
                await host.events.publish(f"spread/t{n}", data={}, message_id=f"s-{n}")
            clock.offset = events.BUS_RETENTION  # all of them full again
            await host.events.publish("spread/last", data={}, message_id="last")
            assert list(host.events._allowance._topics) == ["spread/last"]
        finally:
            await host.close()

    asyncio.run(main())


def test_retries_of_a_full_bus_are_logged_once_a_minute_per_topic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """daprd tries a message again about once a second, then redelivers it, for as long
    as the bus is full: a line per RETRY made the log as large as the publishers' rate
    (the real-daprd re-run, session 33). One line per topic a minute, with the count of
    the others."""
    _small(monkeypatch, messages=1, size=1 << 20)

    async def main() -> None:
        host, _clock = await _open(tmp_path)
        try:
            servicer = _servicer(host)
            assert (await servicer.OnTopicEvent(_event_with("f-0", {}), FakeContext())).status == (
                _STATUS.SUCCESS
            )
            with caplog.at_level("WARNING", logger="gateway.runtime.appcallback"):
                for n in range(1, 51):
                    answer = await servicer.OnTopicEvent(_event_with(f"f-{n}", {}), FakeContext())
                    assert answer.status == _STATUS.RETRY
            lines = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
            assert len(lines) == 1, lines
            assert "f-1" in lines[0]
        finally:
            await host.close()

    asyncio.run(main())


def test_deliveries_arriving_together_stay_within_the_allowance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The allowance was checked before the ingest's store calls and taken after them, so
    deliveries arriving together all passed the check: on a real daprd, six messages
    handed over at once were all kept with an allowance of 3 (session 33). Now the
    allowance is taken before the first store call, and given back when the message is
    not kept after all (a redelivery racing its first delivery, a failed write)."""
    _small(monkeypatch, messages=3, size=1 << 20)

    async def main() -> None:
        host, _clock = await _open(tmp_path)
        try:
            outcomes = await asyncio.gather(
                *(
                    host.events.publish(TOPIC, data={}, message_id=f"together-{n}")
                    for n in range(6)
                ),
                return_exceptions=True,
            )
            refused = [o for o in outcomes if isinstance(o, BusFullError)]
            assert len(refused) == 3, outcomes
            assert len(outcomes) - len(refused) == 3
            # The same message twice at once: one is kept, the other is a redelivery,
            # and the allowance it took is given back.
            _small(monkeypatch, messages=5, size=1 << 20)
            host.events._allowance = events._Allowance()
            twice = await asyncio.gather(
                *(host.events.ingest(_message(host, "again")) for _ in range(2)),
            )
            assert sorted(twice) == [False, True]
            left = [
                await host.events.publish(TOPIC, data={}, message_id=f"after-{n}") for n in range(4)
            ]
            assert len(left) == 4  # 5 - the one kept: the redelivery took nothing
            with pytest.raises(BusFullError):
                await host.events.publish(TOPIC, data={}, message_id="after-4")
        finally:
            await host.close()

    asyncio.run(main())


def _message(host: Host, message_id: str) -> events.Message:
    return events.new_message(
        TOPIC, data={}, message_id=message_id, source="test", kind="test", received=host.clock.now()
    )
