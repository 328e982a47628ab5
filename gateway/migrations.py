"""``gateway migration list|show|abort|resume``: the journals, for an operator.

Every migration a host took part in has a journal record (gateway.handoff.journal):
``journal/source/<id>`` where it left from, ``journal/destination/<id>`` where it went
to. This module reads them and finishes open ones with the protocol's own steps, so
running these commands beside a ``gateway serve`` of the same host (or twice at once)
is safe: every step is idempotent and conditional on what the journal says.

What each command may do, and why:

* ``abort`` is the source's decision only (presumed abort: the coordinator decides). It
  aborts a FROZEN migration here (the object is live here again) and tells the
  destination; a COMMITTED migration can no longer abort. On a destination it refuses
  and points at ``resume``, which asks the source what it decided and follows it: a
  destination that discarded a staged copy on its own could lose the only copy.
* ``resume`` drives a migration forward from its journal: a FROZEN one prepares and
  commits (or aborts if the destination refuses), a COMMITTED one re-sends Commit until
  the destination confirms, a STAGED copy on a destination asks its source's decision.

An offline migration (``gateway export``: the destination is no configured peer) is
finished with files; ``resume`` says which ``gateway export`` command writes them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway._time import format_time
from gateway.errors import (
    ConfigError,
    HandoffError,
    MigrationNotFoundError,
    ObjectStateError,
    UnknownPeerError,
)
from gateway.handoff.journal import (
    DESTINATION_PREFIX,
    OPEN_DESTINATION_PREFIX,
    OPEN_SOURCE_PREFIX,
    SOURCE_PREFIX,
)
from gateway.handoff.records import DestinationRecord, DestinationStep, SourceRecord, SourceStep
from gateway.limits import _MIGRATION_ID, MAX_MIGRATION_ID_CHARS

if TYPE_CHECKING:
    from gateway.host import Host

#: Records listed by ``migration list --all`` unless ``--limit`` says otherwise: the
#: journal keeps every migration ever made here; a listing must stay bounded.
DEFAULT_LIST_LIMIT = 1000
MAX_LIST_LIMIT = 100_000
#: The reason recorded when an operator aborts.
OPERATOR_ABORT = "aborted by the operator (`gateway migration abort`)"


@dataclass(frozen=True, slots=True, kw_only=True)
class MigrationView:
    """One side's journal record of one migration, as an operator reads it."""

    migration_id: str
    side: str  #: "source" (it left from here) or "destination" (it came here)
    object_id: str
    tenant: str
    peer: str  #: the other host
    step: str
    open: bool  #: not settled yet
    created_at: str
    updated_at: str
    reason: str
    next: str  #: what happens next / what the operator can do

    def to_json(self) -> dict[str, Any]:
        return {
            "migration_id": self.migration_id,
            "side": self.side,
            "object_id": self.object_id,
            "tenant": self.tenant,
            "peer": self.peer,
            "step": self.step,
            "open": self.open,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "reason": self.reason,
            "next": self.next,
        }


def _source_next(record: SourceRecord, offline: bool) -> str:
    mid = record.migration_id
    if record.step is SourceStep.FROZEN:
        if offline:
            return (
                f"offline: `gateway export --resume {mid} -o FILE` writes the transfer file "
                f"again; `gateway migration abort {mid}` undoes it"
            )
        return f"`gateway migration resume {mid}` finishes it; `gateway migration abort {mid}` undoes it"
    if record.step is SourceStep.COMMITTED:
        return (
            f"committed; activation on {record.destination_host} not confirmed yet: "
            f"`gateway migration resume {mid}` (or a running `gateway serve`) confirms it"
        )
    if record.step is SourceStep.DONE:
        return f"done: the object lives on {record.destination_host}"
    return "aborted: the object stayed here"


def _destination_next(record: DestinationRecord) -> str:
    if record.step is DestinationStep.STAGED:
        return (
            f"staged, not live: `gateway migration resume {record.migration_id}` asks "
            f"{record.source_host} for its decision and follows it"
        )
    if record.step is DestinationStep.ACTIVATED:
        return "live here"
    return "aborted: the staged copy was discarded"


def view_source(record: SourceRecord, *, offline: bool = False) -> MigrationView:
    return MigrationView(
        migration_id=record.migration_id,
        side="source",
        object_id=record.object_id,
        tenant=record.tenant,
        peer=record.destination_host,
        step=record.step.value,
        open=record.step in (SourceStep.FROZEN, SourceStep.COMMITTED),
        created_at=format_time(record.created_at),
        updated_at=format_time(record.updated_at),
        reason=record.reason,
        next=_source_next(record, offline),
    )


def view_destination(record: DestinationRecord) -> MigrationView:
    return MigrationView(
        migration_id=record.migration_id,
        side="destination",
        object_id=record.object_id,
        tenant=record.tenant,
        peer=record.source_host,
        step=record.step.value,
        open=record.step is DestinationStep.STAGED,
        created_at=format_time(record.created_at),
        updated_at=format_time(record.updated_at),
        reason=record.reason,
        next=_destination_next(record),
    )


def _offline(host: Host, record: SourceRecord) -> bool:
    """Whether a migration goes by files: its destination is no configured network peer."""
    try:
        host.config.peer(record.destination_host)
    except UnknownPeerError:
        return True
    return False


async def list_migrations(host: Host, *, everything: bool, limit: int) -> list[MigrationView]:
    """Open migrations (or, with ``everything``, up to ``limit`` of all), newest first."""
    journal = host.journal
    views: list[MigrationView] = []
    if everything:
        source_ids = [k.removeprefix(SOURCE_PREFIX) for k in await host.store.list(SOURCE_PREFIX)]
        destination_ids = [
            k.removeprefix(DESTINATION_PREFIX) for k in await host.store.list(DESTINATION_PREFIX)
        ]
    else:
        source_ids = [
            k.removeprefix(OPEN_SOURCE_PREFIX) for k in await host.store.list(OPEN_SOURCE_PREFIX)
        ]
        destination_ids = [
            k.removeprefix(OPEN_DESTINATION_PREFIX)
            for k in await host.store.list(OPEN_DESTINATION_PREFIX)
        ]
    for migration_id in source_ids:
        loaded = await journal.source(migration_id)
        if loaded is not None:
            views.append(view_source(loaded.value, offline=_offline(host, loaded.value)))
    for migration_id in destination_ids:
        found = await journal.destination(migration_id)
        if found is not None:
            views.append(view_destination(found.value))
    views.sort(key=lambda v: (v.updated_at, v.migration_id), reverse=True)
    return views[:limit]


def _check_id(migration_id: str) -> str:
    """An operator's migration id, checked before it becomes part of a store key (argv
    may hold a lone surrogate, which no store key can)."""
    if len(migration_id) > MAX_MIGRATION_ID_CHARS or not _MIGRATION_ID.fullmatch(migration_id):
        shown = migration_id[:64].encode("utf-8", "backslashreplace").decode()
        raise ConfigError(
            f"{shown!r} is not a migration id",
            hint="migration ids are letters, digits and ._- (like mig-…); "
            "`gateway migration list --all` lists them",
        )
    return migration_id


async def find(host: Host, migration_id: str) -> list[MigrationView]:
    """Both sides' records of ``migration_id`` kept here (a host can be both, in a loop)."""
    _check_id(migration_id)
    views: list[MigrationView] = []
    source = await host.journal.source(migration_id)
    if source is not None:
        views.append(view_source(source.value, offline=_offline(host, source.value)))
    destination = await host.journal.destination(migration_id)
    if destination is not None:
        views.append(view_destination(destination.value))
    if not views:
        raise MigrationNotFoundError(
            f"no migration {migration_id} in the journal of {host.host_id}",
            hint="`gateway migration list --all` lists the migrations kept here",
        )
    return views


async def abort(host: Host, migration_id: str) -> MigrationView:
    """Abort a FROZEN migration on its source (this host); see the module docstring."""
    _check_id(migration_id)
    source = await host.journal.source(migration_id)
    if source is None:
        destination = await host.journal.destination(migration_id)
        if destination is None:
            await find(host, migration_id)  # raises the not-found error
        assert destination is not None
        raise HandoffError(
            f"migration {migration_id} came here from {destination.value.source_host}; only "
            "its source may abort it",
            hint=f"`gateway migration resume {migration_id}` asks the source for its decision "
            "and follows it (an uncommitted migration is then aborted)",
        )
    record = source.value
    if record.step in (SourceStep.COMMITTED, SourceStep.DONE):
        raise ObjectStateError(
            f"migration {migration_id} is {record.step.value}: {record.object_id} belongs to "
            f"{record.destination_host} now and can no longer be aborted",
            hint=f"`gateway migration resume {migration_id}` finishes it",
        )
    aborted = await host.source.abort(
        migration_id, reason=OPERATOR_ABORT, tell=not _offline(host, record)
    )
    return view_source(aborted, offline=_offline(host, aborted))


async def resume(host: Host, migration_id: str) -> MigrationView:
    """Drive ``migration_id`` forward from its journal; see the module docstring."""
    _check_id(migration_id)
    source = await host.journal.source(migration_id)
    if source is not None:
        record = source.value
        if record.step in (SourceStep.FROZEN, SourceStep.COMMITTED) and _offline(host, record):
            raise HandoffError(
                f"migration {migration_id} goes by files to {record.destination_host}, which "
                "is no configured peer",
                hint=f"`gateway export --resume {migration_id} -o FILE` writes its transfer "
                f"file again; `gateway migration abort {migration_id}` undoes it",
            )
        if record.step in (SourceStep.FROZEN, SourceStep.COMMITTED):
            # An abort (the destination refused) raises, naming why; the object is live here.
            await host.source.resume(migration_id)
        again = await host.journal.source(migration_id)
        assert again is not None
        return view_source(again.value)
    destination = await host.journal.destination(migration_id)
    if destination is None:
        await find(host, migration_id)  # raises the not-found error
    assert destination is not None
    staged = destination.value
    if staged.step is DestinationStep.STAGED:
        await host.recovery.settle_destination(staged)
    again_d = await host.journal.destination(migration_id)
    assert again_d is not None
    return view_destination(again_d.value)


# --- the commands ----------------------------------------------------------------------


def _table(views: list[MigrationView], *, wide: bool) -> Any:
    from rich.table import Table

    from gateway._text import plain

    table = Table()
    columns = ["migration", "side", "object", "tenant", "peer", "step", "updated (UTC)"]
    if wide:
        columns.append("next")
    for column in columns:
        table.add_column(column, overflow="fold")
    for v in views:
        row = [
            v.migration_id,
            v.side,
            v.object_id,
            v.tenant,
            v.peer.removeprefix("spiffe://"),
            v.step.upper() + (f" ({v.reason})" if v.reason else ""),
            v.updated_at[:-1].replace("T", " "),
        ]
        if wide:
            row.append(v.next)
        # A peer wrote some of it (its Abort's reason): cells are plain text.
        table.add_row(*map(plain, row))
    return table


def _run(args: argparse.Namespace, action: Callable[[Host], Awaitable[int]]) -> int:
    from gateway._cli_base import _with_host

    return asyncio.run(_with_host(args, action))


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def cmd_list(args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= MAX_LIST_LIMIT:
        raise ConfigError(f"--limit must be from 1 to {MAX_LIST_LIMIT}, got {args.limit}")

    async def run(host: Host) -> int:
        views = await list_migrations(host, everything=args.all, limit=args.limit)
        if args.output == "json":
            _print_json([v.to_json() for v in views])
            return 0
        from gateway._cli_base import out, show

        if not views:
            what = "no migrations" if args.all else "no open migrations"
            out.print(f"{what} on {host.host_id}", markup=False)
            return 0
        show(_table(views, wide=not args.all))
        return 0

    return _run(args, run)


def cmd_show(args: argparse.Namespace) -> int:
    async def run(host: Host) -> int:
        views = await find(host, args.migration_id)
        objects: dict[str, str] = {}
        for v in views:
            loaded = await host.journal.object(v.tenant, v.object_id)
            objects[v.side] = loaded.value.state.value if loaded is not None else "absent"
        if args.output == "json":
            _print_json(
                {
                    "migration_id": args.migration_id,
                    "records": [
                        {**v.to_json(), "object_state_here": objects[v.side]} for v in views
                    ],
                }
            )
            return 0
        from rich.table import Table

        from gateway._cli_base import show
        from gateway._text import plain

        for v in views:
            table = Table(show_header=False, box=None, pad_edge=False)
            table.add_column(style="bold")
            table.add_column(overflow="fold")
            for name, value in (
                ("migration", v.migration_id),
                ("this host is", f"its {v.side}"),
                ("object", f"{v.object_id} (tenant {v.tenant})"),
                ("object here", objects[v.side].upper()),
                ("from" if v.side == "destination" else "to", v.peer),
                ("step", v.step.upper()),
                ("started (UTC)", v.created_at),
                ("last step (UTC)", v.updated_at),
                ("reason", v.reason or "-"),
                ("next", v.next),
            ):
                table.add_row(name, plain(value))
            show(table)
        return 0

    return _run(args, run)


def _one(args: argparse.Namespace, act: Callable[[Host, str], Awaitable[MigrationView]]) -> int:
    async def run(host: Host) -> int:
        view = await act(host, args.migration_id)
        if args.output == "json":
            _print_json(view.to_json())
            return 0
        from gateway._cli_base import out

        out.print(
            f"{view.migration_id}: {view.object_id} — {view.step.upper()} "
            f"({view.side} side); {view.next}",
            markup=False,
        )
        return 0

    return _run(args, run)


def cmd_abort(args: argparse.Namespace) -> int:
    return _one(args, abort)


def cmd_resume(args: argparse.Namespace) -> int:
    return _one(args, resume)


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``gateway migration ...`` to the CLI's subcommands."""
    from gateway._cli_base import _Parser

    output = _Parser(add_help=False)
    output.add_argument(
        "-o",
        "--output",
        choices=["table", "json"],
        default="table",
        help="table for people (default), json for programs",
    )
    migration = commands.add_parser(
        "migration",
        help="see and finish migrations from the journals (list, show, abort, resume)",
    ).add_subparsers(dest="migration_command", required=True, metavar="COMMAND")
    listing = migration.add_parser(
        "list",
        parents=[common, output],
        help="migrations not settled yet (with --all: every one kept here), newest first",
    )
    listing.add_argument(
        "--all", action="store_true", help="also list settled migrations (done, aborted)"
    )
    listing.add_argument(
        "--limit",
        type=int,
        default=DEFAULT_LIST_LIMIT,
        help=f"list at most this many (default {DEFAULT_LIST_LIMIT})",
    )
    listing.set_defaults(handler=cmd_list)
    for name, handler, text in (
        ("show", cmd_show, "one migration: both sides' records kept here and what comes next"),
        (
            "abort",
            cmd_abort,
            "abort a frozen migration on its source (the object is live here again)",
        ),
        (
            "resume",
            cmd_resume,
            "finish a migration from its journal (commit, confirm, or follow the source)",
        ),
    ):
        command = migration.add_parser(name, parents=[common, output], help=text)
        command.add_argument("migration_id", help="e.g. mig-0f3c… (see `gateway migration list`)")
        command.set_defaults(handler=handler)
