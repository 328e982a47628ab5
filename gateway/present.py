"""Presentation shared by commands: tables and summaries of objects, lineages and events.

Both ``gateway`` commands (gateway/cli.py) and ``gateway demo`` (gateway/demo.py) print
these, so they live here, below both, instead of one command importing the other.
Everything here renders values into rich renderables or text; nothing prints, reads a
store or talks to a peer (``verify_and_describe_lineage`` verifies with the host's trust,
in memory).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from rich.table import Table
from rich.text import Text

from gateway._text import plain, plain_lines, printable
from gateway._time import format_time
from gateway.lineage import EntryKind, handoffs_archived, verify_lineage
from gateway.model import GovernedObject, LifecycleState

if TYPE_CHECKING:
    from datetime import datetime

    from gateway.audit import Report
    from gateway.handoff.messages import Evaluation
    from gateway.keys import KeyRecord
    from gateway.runtime.outbox import Event
    from gateway.trust import TrustBundle, TrustStore


class Trusting(Protocol):
    """Whatever holds a host's trust: a serving Host or a LocalHost opened to read."""

    @property
    def trust(self) -> TrustStore: ...


#: Shown in a terminal in place of the rest of a long value (never when piped).
ELLIPSIS = "…"


def _short(digest: bytes) -> str:
    return digest.hex()[:12]


def _add_row(table: Table, *cells: str | Text) -> None:
    """``table.add_row`` with every cell shown as text, not read as markup (:func:`plain`)."""
    table.add_row(*map(plain, cells))


def describe_object(obj: GovernedObject) -> Table:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    _add_row(table, "object", obj.object_id)
    _add_row(table, "tenant", obj.tenant)
    state = obj.state.value.upper()
    if obj.state is LifecycleState.MOVED:
        state += f" → {obj.moved_to}"
    _add_row(table, "state", state)
    _add_row(table, "epoch", str(obj.epoch))
    _add_row(table, "generation", str(obj.generation))
    _add_row(table, "data", _preview(obj))
    _add_row(table, "data digest", obj.data_digest().hex())
    _add_row(table, "grants", f"{len(obj.grants)} (root first)" if obj.grants else "none")
    from gateway.credentials import root_home  # not at import: keeps `gateway --help` fast

    home = root_home(obj.grants)
    _add_row(table, "custody home", home or "none (a stale copy is caught only where both meet)")
    archived = handoffs_archived(obj.lineage)  # ADR 0010 step 2
    _add_row(
        table,
        "handoffs",
        f"{archived + len(obj.lineage.arrivals)} completed"
        + (f" ({archived} archived, {len(obj.lineage.arrivals)} carried)" if archived else ""),
    )
    if obj.state is not LifecycleState.MOVED:
        authority = str(obj.authority.allow)
        if obj.authority.deny.capabilities:
            authority += f" except {obj.authority.deny}"
        _add_row(table, "authority here", authority)
    _add_row(table, "rules", ", ".join(r.name for r in obj.rules) or "none")
    _add_row(table, "lineage", f"{len(obj.lineage)} entries, root {_short(obj.lineage.root())}")
    if obj.migration_id:
        _add_row(table, "migration", obj.migration_id)
    return table


def _preview(obj: GovernedObject, limit: int = 200) -> str:
    if obj.blob is not None:
        return f"{obj.size:,} bytes of {obj.content_type} (stored as {obj.blob.chunks} chunks)"
    if obj.content_type.startswith("application/json") or obj.content_type.startswith("text/"):
        text = obj.data.decode("utf-8", errors="replace")
    else:
        text = f"{len(obj.data)} bytes of {obj.content_type}"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _host(host_id: str) -> str:
    return host_id.removeprefix("spiffe://")


#: Where a stay's sender, or its first entry, is archived with the handoff that brought
#: the object there (ADR 0010 step 2): unknown, never "created it".
UNKNOWN_ARRIVAL = "(archived: unknown)"


def custody_parts(report: Report) -> list[Table | Text]:
    """What `gateway verify` prints of who held the object (``report.stays``): the table,
    a note on handoffs archived before its first row, and what its authority column means.
    Nothing when the report shows no stays."""
    if not report.stays:
        return []

    def when(moment: datetime | None) -> str:
        return format_time(moment)[:-1].replace("T", " ") if moment else "-"

    stays = Table(title="custody: who held it, where and when", title_justify="left")
    for column in (
        "#",
        "holder",
        "from",
        "arrived (UTC)",
        "left to",
        "left (UTC)",
        "entries",
        "authority",
    ):
        stays.add_column(column, overflow="fold")
    for index, s in enumerate(report.stays):
        arrived = when(s.arrived_at)
        if s.arrival_migration:
            arrived += f"\n{s.arrival_migration} (epoch {s.arrival_epoch})"
        left = when(s.departed_at)
        if s.departure_migration:
            left += f"\n{s.departure_migration} (epoch {s.departure_epoch})"
        if s.in_transit:
            left += "\nin transit: no arrival"
        if s.received_from is None:
            source = UNKNOWN_ARRIVAL
        else:
            source = _host(s.received_from) if s.received_from else "(created it)"
        first = "?" if s.first_entry is None else str(s.first_entry)
        stays.add_row(
            str(index),
            plain(_host(s.holder)),
            plain(source),
            plain_lines(arrived),
            plain(_host(s.departed_to)) if s.departed_to else "(holds it)",
            plain_lines(left),
            f"{first}–{s.last_entry}",
            f"grant {s.authority_from}" if s.authority_from is not None else plain(s.authority),
        )
    parts: list[Table | Text] = [stays]
    if report.handoffs_archived:
        parts.append(
            Text(
                f"archived: {report.handoffs_archived} earlier handoff(s), from its creation "
                "to the first row, are not carried by the object (the first row's departure "
                "commits to them); pass the archive with --archive to show them"
            )
        )
    parts.append(
        Text(
            "authority: what the grant chain in force gives a holder that is one of its "
            "audiences (each host's own policy may narrow it; no file shows that)"
        )
    )
    return parts


def lineage_table(obj: GovernedObject) -> Table:
    table = Table(title=plain(f"lineage of {obj.object_id}"), title_justify="left")
    for column in ("#", "time (UTC)", "host", "kind", "epoch", "gen", "data", "detail"):
        table.add_column(column, overflow="fold")
    for entry in obj.lineage.entries:
        _add_row(
            table,
            str(entry.seq),
            format_time(entry.time)[:-1].replace("T", " "),
            _host(entry.host),
            entry.kind.value,
            str(entry.epoch),
            str(entry.generation),
            _short(entry.data_digest),
            entry.detail,
        )
    return table


_CYCLE_KINDS = (EntryKind.ACTION_ADMITTED, EntryKind.ACTION_DENIED, EntryKind.EVALUATED)


def lineage_summary(obj: GovernedObject) -> Table:
    """The lineage with each evaluation's entries folded into one row (for long histories)."""
    table = Table(
        title=plain(f"lineage of {obj.object_id} (one row per evaluation)"),
        title_justify="left",
    )
    for column in ("#", "host", "epoch", "gen", "what happened"):
        table.add_column(column, overflow="fold")
    entries = list(obj.lineage.entries)
    index = 0
    while index < len(entries):
        entry = entries[index]
        if entry.kind not in _CYCLE_KINDS:
            row = f"{entry.kind.value}: {entry.detail}"
            _add_row(
                table,
                str(entry.seq),
                _host(entry.host),
                str(entry.epoch),
                str(entry.generation),
                row,
            )
            index += 1
            continue
        group = [entry]
        while group[-1].kind is not EntryKind.EVALUATED and index + len(group) < len(entries):
            group.append(entries[index + len(group)])
        admitted = [
            e.detail.removeprefix("rule ") for e in group if e.kind is EntryKind.ACTION_ADMITTED
        ]
        denied = [
            e.detail.removeprefix("rule ") for e in group if e.kind is EntryKind.ACTION_DENIED
        ]
        parts = [plain(f"admitted {', '.join(admitted)}")] if admitted else []
        parts += [Text(printable(d), style="red") for d in denied]
        seqs = f"{group[0].seq}–{group[-1].seq}" if len(group) > 1 else str(group[0].seq)
        what = Text("; ").join(parts) if parts else plain(group[-1].detail)
        _add_row(table, seqs, _host(entry.host), str(entry.epoch), str(entry.generation), what)
        index += len(group)
    return table


def verify_and_describe_lineage(host: Trusting, obj: GovernedObject) -> str:
    verified = verify_lineage(obj.lineage, object_id=obj.object_id, trust=host.trust, sealed=False)
    from gateway.custody import verify_custody  # not at import: keeps `gateway --help` fast

    hops = ", ".join(h.removeprefix("spiffe://") for h in verified.hosts) or "none yet"
    custody = verify_custody(
        obj.lineage,
        verified.checkpoints,
        object_id=obj.object_id,
        trust=host.trust,
        in_transit=False,
    )
    path = " → ".join(h.removeprefix("spiffe://") for h in custody.holders)
    return (
        f"lineage verified: {verified.size} entries, hash chain intact, Merkle root "
        f"{_short(verified.root)}, {len(verified.hosts)} signed checkpoint(s) ({hops})\n"
        f"custody verified: {custody.hops} handoff(s), each departure signed by its sender "
        f"and acknowledged by its receiver ({path})"
    )


def events_table(
    events: Sequence[Event],
    *,
    title: str | None = None,
    show_object: bool = True,
    whole: bool = False,
) -> Table:
    """One row per event; the payload is cut to the width left (full text: ``-o json``),
    unless ``whole`` (output that is piped is never cut)."""
    table = Table(title=plain(title) if title else None, title_justify="left")
    table.add_column("time (UTC)", no_wrap=True)
    if show_object:
        table.add_column("object", overflow="fold")
    for column in ("gen", "rule", "action", "status"):
        table.add_column(column, overflow="fold")
    table.add_column("payload", overflow="fold" if whole else "ellipsis", min_width=12)
    for event in events:
        status = event.status + (f" ({event.last_error})" if event.last_error else "")
        payload = json.dumps(event.payload, separators=(",", ":"))
        row = [
            # With its date: an outbox spans days, and times alone of two days look alike.
            format_time(event.created_at)[:-1].replace("T", " "),
            *([event.object_id] if show_object else []),
            str(event.generation),
            event.rule,
            f"{event.verb} {event.target}",
            status,
            payload if whole else payload[:200],
        ]
        _add_row(table, *row)
    return table


# --- JSON (``-o json``): the same facts as the tables, whole, in stable field names --------


def _time(moment: Any) -> str | None:
    return format_time(moment) if moment is not None else None


def object_json(obj: GovernedObject) -> dict[str, Any]:
    from gateway.credentials import root_home

    return {
        "object_id": obj.object_id,
        "tenant": obj.tenant,
        "state": obj.state.value,
        "moved_to": obj.moved_to or None,
        "epoch": obj.epoch,
        "generation": obj.generation,
        "content_type": obj.content_type,
        "size": obj.size,
        "data_digest": obj.data_digest().hex(),
        "grants": len(obj.grants),
        "custody_home": root_home(obj.grants) or None,
        "handoffs": handoffs_archived(obj.lineage) + len(obj.lineage.arrivals),
        "authority": None if obj.state is LifecycleState.MOVED else str(obj.authority.allow),
        "rules": [r.name for r in obj.rules],
        "lineage_entries": len(obj.lineage),
        "lineage_root": obj.lineage.root().hex(),
        "migration_id": obj.migration_id or None,
    }


def lineage_json(obj: GovernedObject) -> list[dict[str, Any]]:
    return [
        {
            "seq": e.seq,
            "time": format_time(e.time),
            "host": e.host,
            "kind": e.kind.value,
            "epoch": e.epoch,
            "generation": e.generation,
            "data_digest": e.data_digest.hex(),
            "detail": e.detail,
        }
        for e in obj.lineage.entries
    ]


def event_json(event: Event) -> dict[str, Any]:
    return {"key": event.key, **event.document()}


def key_json(record: KeyRecord, *, private: bool | None = None) -> dict[str, Any]:
    return {
        "key_id": record.key_id,
        "algorithm": record.algorithm.value,
        "purposes": sorted(p.value for p in record.purposes),
        "hosts": sorted(record.hosts),
        "valid_from": _time(record.valid_from),
        "valid_until": _time(record.valid_until),
        "retired_at": _time(record.retired_at),
        "revoked": record.revoked,
        **({"private_key_here": private} if private is not None else {}),
    }


def bundle_json(bundle: TrustBundle, *, own: bool) -> dict[str, Any]:
    return {
        "trust_domain": bundle.trust_domain,
        "own": own,
        "sequence": bundle.sequence,
        "issued_at": format_time(bundle.issued_at),
        "keys": len(bundle.keys),
        "fingerprint": bundle.fingerprint(),
    }


def evaluation_json(evaluation: Evaluation) -> dict[str, Any]:
    authority = evaluation.authority
    return {
        "host": evaluation.host,
        "admitted": evaluation.admitted,
        "refusal": evaluation.refusal or None,
        "decisions": [
            {"capability": d.capability, "outcome": d.outcome, "reason": d.reason}
            for d in evaluation.decisions
        ],
        "effective": str(authority.allow) if authority is not None else None,
        "except": str(authority.deny)
        if authority is not None and authority.deny.capabilities
        else None,
    }


def print_json(document: Any) -> None:
    """``-o json`` output: one JSON document on standard output, nothing else there.
    Non-ASCII text is kept as it is, but not the C1 controls (U+007F-U+009F): JSON
    escapes only the controls below U+0020, and a terminal obeys U+009B (CSI) as it does
    ESC [, so a peer's words could still have moved the cursor or cleared the screen."""
    import sys

    text = json.dumps(document, indent=2, ensure_ascii=False)
    sys.stdout.write(_C1.sub(lambda match: f"\\u{ord(match.group()):04x}", text) + "\n")


_C1 = re.compile("[\x7f-\x9f]")
