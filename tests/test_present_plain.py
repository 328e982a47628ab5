"""What `gateway lineage`, `gateway object show`, `gateway events` and `gateway demo` print
of an object is shown as text: the words in it (its rule names, its entries' details, an
event's payload and the broker's error) are written by the object's holders, partners
among them, and rich read a str cell as markup ("[/bold]" raised MarkupError: exit 70 on
every listing of that object) and passed escape sequences to the terminal."""

from __future__ import annotations

import io
from datetime import UTC, datetime

from rich.console import Console

from gateway import present
from gateway.lineage import EntryKind
from gateway.runtime.outbox import Event
from tests.test_compaction import created
from tests.test_lineage import T0

HOST = "spiffe://org-a.example/cluster/east/gateway"
WORDS = "[/bold] [red]x[/red] \x1b[2J"


def shown(renderable: object) -> str:
    text = io.StringIO()
    Console(file=text, width=400, color_system=None).print(renderable)
    return text.getvalue()


def test_an_events_table_shows_an_objects_and_a_brokers_words_as_text() -> None:
    event = Event(
        key="k/1",
        tenant="default",
        object_id="obj://org-a.example/billing/invoice-42",
        generation=3,
        rule=f"rule {WORDS}",
        verb="publish",
        resource="pubsub:alerts/raised",
        payload={"note": WORDS},
        created_at=datetime(2026, 12, 6, 12, 0, tzinfo=UTC),
        status="failed",
        last_error=f"broker said {WORDS}",
    )
    text = shown(present.events_table([event], title=f"events {WORDS}", whole=True))
    assert text.count("[/bold]") == 4, text  # title, rule, status, and the payload's JSON
    assert "\x1b[2J" not in text
    assert "?[2J" in text


def test_a_summary_shows_a_denied_actions_words_as_text_in_red() -> None:
    obj = created().record(
        EntryKind.ACTION_DENIED, host=HOST, at=T0, detail=f"rule {WORDS}: not granted"
    )
    obj = obj.record(EntryKind.EVALUATED, host=HOST, at=T0, detail="1 of 1 rules fired")
    table = present.lineage_summary(obj)
    text = shown(table)
    assert f"{WORDS.replace(chr(27), '?')}: not granted" in text
    # The denial is still marked out in red, as a style of the cell, not by markup.
    colored = io.StringIO()
    Console(file=colored, width=400, force_terminal=True, color_system="standard").print(table)
    assert "\x1b[31m" in colored.getvalue()


def test_an_events_table_dates_each_event() -> None:
    """An outbox spans days: the same time of two days looked alike (the table showed
    the time of day only)."""
    events = [
        Event(
            key=f"k/{day}",
            tenant="default",
            object_id="obj://org-a.example/billing/invoice-42",
            generation=day,
            rule="r",
            verb="publish",
            resource="pubsub:alerts/raised",
            payload={},
            created_at=datetime(2026, 12, day, 12, 0, tzinfo=UTC),
        )
        for day in (5, 6)
    ]
    text = shown(present.events_table(events, whole=True))
    assert "2026-12-05 12:00:00" in text and "2026-12-06 12:00:00" in text, text
