"""The start-up take-up of subscriptions decodes only the objects that subscribe.

``Events.reconcile`` runs once when a host serves: it takes up the subscriptions of
every ACTIVE subscribing object, in case the process that activated one died before it
did. It decoded every object held in full (lineage and all) to find them: at 10,000
residents, none of them subscribing, that was about 1 s of CPU in the first seconds of
serving, spent while the host already answered migrations. It now reads each object's
state and subscription count from the stored record (a protobuf parse, no lineage
decode), a page at a time, and decodes in full only the objects it takes up.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from gateway import wire
from gateway.handoff import journal
from gateway.objectspec import parse_spec
from gateway.runtime import events
from gateway.stores import Expect
from gateway.testing import create_from_spec
from tests.test_events import TOPIC
from tests.test_events_bounds import _open

QUIET = 30  #: objects that subscribe to nothing


def _count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    decoded: list[int] = []
    decode = wire.decode_object

    def counted(raw: bytes, *args: Any, **kwargs: Any) -> Any:
        decoded.append(len(raw))
        return decode(raw, *args, **kwargs)

    monkeypatch.setattr(wire, "decode_object", counted)
    return decoded


def test_reconcile_decodes_only_the_subscribing_objects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        host, _clock = await _open(tmp_path)  # holds OBJECT, which subscribes to TOPIC
        try:
            quiet = parse_spec({"data": {"n": 1}}, source="test")
            for n in range(QUIET):
                await create_from_spec(host, f"obj://org-a.example/quiet/{n}", quiet)
            subs = events._subs_prefix(TOPIC)
            # As if the process that created OBJECT had died before taking it up.
            for key in await host.store.list(subs):
                await host.store.delete(key, etag=Expect.ANY)
            host.journal._objects = journal._Objects()  # nothing remembered: a fresh start
            decoded = _count_decodes(monkeypatch)
            await host.events.reconcile(("default",))
            assert await host.store.list(subs) != []  # taken up again
            assert len(decoded) <= 2, f"{len(decoded)} objects decoded in full"
        finally:
            await host.close()

    asyncio.run(main())


def test_a_damaged_record_does_not_stop_the_take_up_of_the_others(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        host, _clock = await _open(tmp_path)
        try:
            subs = events._subs_prefix(TOPIC)
            for key in await host.store.list(subs):
                await host.store.delete(key, etag=Expect.ANY)
            await host.store.put(
                "t/default/objects/obj://org-a.example/damaged", b"\xff\x00", etag=Expect.ANY
            )
            await host.events.reconcile(("default",))
            assert await host.store.list(subs) != []
        finally:
            await host.close()

    asyncio.run(main())
