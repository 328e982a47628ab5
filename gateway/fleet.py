"""Moving many objects: ``gateway migrate`` of several ids or a selector, ``gateway drain``,
and what an interrupted migrate leaves behind.

Invariants:

* **A batch is many independent migrations.** Each object moves by the ordinary
  handoff (gateway.handoff.source), at most ``--parallel`` at once; one failing never
  stops the others, and each failure is reported with its reason. A failed migration
  leaves its object ACTIVE here (the handoff's own guarantee), never lost or doubled.
* **An interrupt never strands an object silently.** SIGINT or SIGTERM cancels the
  migrations in flight; every one that was left FROZEN or COMMITTED is then read back
  from the journal and named, with the exact ``gateway migration resume``/``abort``
  command that finishes it. The exit status is 130 (SIGINT) or 143 (SIGTERM).
* **Labels are host-local operator tags**, kept beside the object record
  (``t/<tenant>/labels/<id>``), never in the object, its lineage or its transfer: they
  select objects on this host and do not travel. Their number and size are bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from gateway._decode import load_json
from gateway.errors import ConcurrencyError, ConfigError, GatewayError, ObjectStateError
from gateway.handoff.records import SourceStep
from gateway.identity import ObjectId
from gateway.model import LifecycleState
from gateway.stores import Delete, Expect, Put

if TYPE_CHECKING:
    from gateway.host import Host

T = TypeVar("T")

#: ``gateway migrate``/``drain`` exit status when the batch ran but some objects failed.
EXIT_BATCH_FAILED = 3
#: Exit statuses after SIGINT / SIGTERM (128 + the signal number, as shells report them).
EXIT_INTERRUPTED = {signal.SIGINT: 130, signal.SIGTERM: 143}
#: Migrations in flight at once by default, and at most.
DEFAULT_PARALLEL = 4
MAX_PARALLEL = 64
#: Labels per object, and their syntax (Kubernetes-like: a key, a value of ≤ 63 chars).
MAX_LABELS = 32
LABEL_KEY = re.compile(r"[a-z0-9]([-a-z0-9_./]{0,61}[a-z0-9])?")
LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")
MAX_LABEL_RECORD_BYTES = MAX_LABELS * 140


# --- labels ------------------------------------------------------------------------------


def labels_key(tenant: str, object_id: str) -> str:
    return f"t/{tenant}/labels/{object_id}"


def parse_label(text: str, *, removal: bool = False) -> tuple[str, str | None]:
    """``k=v`` (set), or with ``removal`` also ``k-`` (remove: value None)."""
    if removal and text.endswith("-") and "=" not in text:
        key, value = text[:-1], None
    else:
        key, sep, value = text.partition("=")
        if not sep:
            raise ConfigError(
                f"label {text!r} is not KEY=VALUE",
                hint="e.g. --label team=billing" + (" (or team- to remove it)" if removal else ""),
            )
    if not LABEL_KEY.fullmatch(key):
        raise ConfigError(
            f"label key {key!r} is not a label key",
            hint="lowercase letters, digits and -_./, at most 63 characters, e.g. team",
        )
    if value is not None and not LABEL_VALUE.fullmatch(value):
        raise ConfigError(
            f"label value {value!r} of {key} is not a label value",
            hint="letters, digits and -_., at most 63 characters, e.g. billing",
        )
    return key, value


async def read_labels(host: Host, tenant: str, object_id: str) -> dict[str, str]:
    item = await host.store.get(labels_key(tenant, object_id))
    return {} if item is None else decode_labels(item.value, object_id)


def decode_labels(raw: bytes, object_id: str) -> dict[str, str]:
    """A label record (`gateway object label`) as stored, bounded and checked."""
    if len(raw) > MAX_LABEL_RECORD_BYTES:
        raise ConfigError(f"the labels of {object_id} are {len(raw)} bytes; too large to read")
    value = load_json(raw, error=ConfigError, what=f"labels of {object_id}")
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ConfigError(f"the labels of {object_id} are not a mapping of strings")
    return dict(value)


async def set_labels(
    host: Host, tenant: str, object_id: str, changes: Sequence[tuple[str, str | None]]
) -> dict[str, str]:
    """Apply ``changes`` (value None: remove) to the object's labels; returns them."""
    await host.get_object(object_id, tenant=tenant)  # labels only for objects that exist here
    key = labels_key(tenant, object_id)
    for _attempt in range(8):
        item = await host.store.get(key)
        labels = {} if item is None else decode_labels(item.value, object_id)
        for name, value in changes:
            if value is None:
                labels.pop(name, None)
            else:
                labels[name] = value
        if len(labels) > MAX_LABELS:
            raise ConfigError(f"{object_id} would have {len(labels)} labels; at most {MAX_LABELS}")
        etag = item.etag if item is not None else Expect.ABSENT
        operation: Put | Delete
        if labels:
            raw = json.dumps(labels, sort_keys=True, separators=(",", ":")).encode()
            operation = Put(key=key, value=raw, etag=etag)
        elif item is not None:
            operation = Delete(key=key, etag=item.etag)
        else:
            return labels
        try:
            await host.store.transact([operation])
        except ConcurrencyError:
            continue  # changed meanwhile: apply the changes to what is there now
        return labels
    raise ObjectStateError(f"the labels of {object_id} kept changing; retry")


# --- selection -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    tenant: str
    object_id: str


async def select(
    host: Host,
    *,
    ids: Sequence[str],
    tenant: str | None,
    labels: Sequence[tuple[str, str | None]],
    state: str | None,
) -> list[Target]:
    """The objects a ``migrate``/``drain`` names: ``ids`` in ``tenant`` (default:
    default), or every object here matching the selector (``tenant``: one tenant or all;
    ``labels``: all of them; ``state``: default ACTIVE, the only state that can move)."""
    if ids:
        if labels or state:
            raise ConfigError("give object ids or a selector (--label, --state), not both")
        chosen = host.tenant(tenant or "default")
        seen: dict[str, None] = {}
        for text in ids:
            seen[str(ObjectId.parse(text))] = None
        return [Target(chosen, object_id) for object_id in seen]
    wanted = LifecycleState(state) if state else LifecycleState.ACTIVE
    tenants = [host.tenant(tenant)] if tenant else list(host.config.tenants)
    targets: list[Target] = []
    for name in tenants:
        for obj in await host.journal.objects(name):
            if obj.state is not wanted:
                continue
            if labels:
                have = await read_labels(host, name, obj.object_id)
                if any(have.get(k) != v for k, v in labels):
                    continue
            targets.append(Target(name, obj.object_id))
    return targets


# --- interrupts ----------------------------------------------------------------------------


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived; ``line`` says what was left open and how to finish it."""

    def __init__(self, signum: int, line: str) -> None:
        super().__init__(line)
        self.signum = signum
        self.line = line


async def interruptible(
    work: Callable[[], Awaitable[T]], on_interrupt: Callable[[], Awaitable[str]]
) -> T:
    """Run ``work``; on SIGINT/SIGTERM cancel it, then raise :class:`Interrupted` with the
    line ``on_interrupt`` makes (it runs after the cancelled steps have unwound)."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    received: list[int] = []

    def arrived(signum: int) -> None:
        if not received:
            received.append(signum)
            task.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, arrived, signum)
    try:
        try:
            return await work()
        except asyncio.CancelledError:
            if not received:
                raise
            # Uncancel so that the awaits in on_interrupt run instead of being cancelled.
            task.uncancel()
        line = await on_interrupt()
        raise Interrupted(received[0], line)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


async def open_migrations_of(host: Host, targets: Sequence[Target]) -> list[tuple[str, str, str]]:
    """(migration id, object id, step) of every migration of ``targets`` still open here."""
    # A migration answered a moment ago is not open: its DONE record is landing
    # (gateway.handoff.settles), so it is not listed as one to resume.
    await host.settled()
    found: list[tuple[str, str, str]] = []
    for target in targets:
        loaded = await host.journal.object(target.tenant, target.object_id)
        if loaded is None or not loaded.value.migration_id:
            continue
        record = await host.journal.source(loaded.value.migration_id)
        if record is not None and record.value.step in (SourceStep.FROZEN, SourceStep.COMMITTED):
            found.append((record.value.migration_id, target.object_id, record.value.step.value))
    return found


def interrupted_line(open_: Sequence[tuple[str, str, str]], config: str) -> str:
    """One line: what the interrupt left open and the exact command that finishes it."""
    where = f" --config {config}" if config else ""
    if not open_:
        return "interrupted; no migration was left open (every object is where it was or moved)"
    if len(open_) == 1:
        migration_id, object_id, step = open_[0]
        if step == SourceStep.COMMITTED.value:
            return (
                f"interrupted; migration {migration_id} of {object_id} is committed, its "
                f"activation not yet confirmed — finish it with `gateway migration resume "
                f"{migration_id}{where}` (a running `gateway serve` also does)"
            )
        return (
            f"interrupted; migration {migration_id} of {object_id} is left FROZEN — finish it "
            f"with `gateway migration resume {migration_id}{where}` or undo it with "
            f"`gateway migration abort {migration_id}{where}`"
        )
    ids = " ".join(m for m, _o, _s in open_)
    return (
        f"interrupted; {len(open_)} migrations left open ({ids}) — finish each with "
        f"`gateway migration resume ID{where}` or undo it with `gateway migration abort "
        f"ID{where}`; `gateway migration list{where}` lists them"
    )


# --- batches -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Moved:
    """What became of one object of a batch."""

    tenant: str
    object_id: str
    outcome: str  #: moved | committed (activation not confirmed yet) | failed
    migration_id: str = ""
    epoch: int | None = None
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "object_id": self.object_id,
            "tenant": self.tenant,
            "outcome": self.outcome,
            "migration_id": self.migration_id,
            "epoch": self.epoch,
            "reason": self.reason,
        }


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


async def move_one(host: Host, target: Target, destination: str) -> Moved:
    try:
        result = await host.migrate(target.object_id, tenant=target.tenant, destination=destination)
    except GatewayError as exc:
        return Moved(
            tenant=target.tenant,
            object_id=target.object_id,
            outcome="failed",
            reason=_one_line(str(exc)),
        )
    except Exception as exc:  # a bug must not stop the rest of the batch; it is listed
        return Moved(
            tenant=target.tenant,
            object_id=target.object_id,
            outcome="failed",
            reason=f"internal error: {type(exc).__name__}: {_one_line(str(exc))}",
        )
    return Moved(
        tenant=target.tenant,
        object_id=target.object_id,
        outcome="moved" if result.step is SourceStep.DONE else "committed",
        migration_id=result.migration_id,
        epoch=result.epoch,
    )


class Progress:
    """A progress bar on a terminal (stderr), nothing otherwise."""

    def __init__(self, total: int, title: str) -> None:
        from gateway._cli_base import err

        self._bar: Any = None
        self._task: Any = None
        self.ok = self.failed = 0
        if err.is_terminal and total:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
            )
            from rich.progress import Progress as Bar

            self._bar = Bar(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[counts]}"),
                TimeElapsedColumn(),
                console=err,
                transient=False,
            )
            self._task = self._bar.add_task(title, total=total, counts="")
            self._bar.start()

    def advance(self, moved: Moved) -> None:
        if moved.outcome == "failed":
            self.failed += 1
        else:
            self.ok += 1
        if self._bar is not None:
            self._bar.update(self._task, advance=1, counts=f"ok {self.ok} failed {self.failed}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


async def run_batch(
    host: Host,
    targets: Sequence[Target],
    destination: str,
    *,
    parallel: int,
    title: str,
    skipped: Sequence[Moved] = (),
) -> list[Moved]:
    """Move ``targets`` to ``destination``, at most ``parallel`` at once; every outcome
    is returned (``skipped`` ones first), none stops the others."""
    host.config.peer(destination)  # an unknown destination fails the whole batch at once
    slots = asyncio.Semaphore(parallel)
    progress = Progress(len(targets) + len(skipped), title)
    results: list[Moved] = list(skipped)
    for moved in skipped:
        progress.advance(moved)

    async def one(target: Target) -> None:
        async with slots:
            moved = await move_one(host, target, destination)
        results.append(moved)
        progress.advance(moved)

    try:
        await asyncio.gather(*(one(t) for t in targets))
    finally:
        progress.close()
    order = {(t.tenant, t.object_id): i for i, t in enumerate(targets)}
    return sorted(results, key=lambda m: order.get((m.tenant, m.object_id), -1))


def report(results: Sequence[Moved], destination: str) -> dict[str, Any]:
    counts = {
        k: sum(1 for m in results if m.outcome == k) for k in ("moved", "committed", "failed")
    }
    return {
        "destination": destination,
        "total": len(results),
        **counts,
        "results": [m.to_json() for m in results],
    }


def print_summary(results: Sequence[Moved], destination: str, output: str) -> int:
    from rich.table import Table

    from gateway._cli_base import show
    from gateway._text import plain

    document = report(results, destination)
    if output == "json":
        print(json.dumps(document, indent=2))
    else:
        summary = Table(title=f"to {destination}", title_justify="left")
        for column in ("outcome", "objects"):
            summary.add_column(column)
        summary.add_row("moved", str(document["moved"]))
        summary.add_row("committed, activation not confirmed yet", str(document["committed"]))
        summary.add_row("failed (still here, live)", str(document["failed"]))
        summary.add_row("total", str(document["total"]))
        show(summary)
        failed = [m for m in results if m.outcome == "failed"]
        if failed:
            table = Table(title="failed", title_justify="left")
            for column in ("object", "tenant", "reason"):
                table.add_column(column, overflow="fold")
            for m in failed:
                # The reason may be a peer's refusal: plain text, not markup.
                table.add_row(plain(m.object_id), plain(m.tenant), plain(m.reason))
            show(table)
    return EXIT_BATCH_FAILED if document["failed"] else 0


# --- the commands ----------------------------------------------------------------------


def _config_text(args: argparse.Namespace) -> str:
    from gateway._cli_base import _config_path

    return str(_config_path(args))


def _parallel(args: argparse.Namespace) -> int:
    if not 1 <= args.parallel <= MAX_PARALLEL:
        raise ConfigError(f"--parallel must be from 1 to {MAX_PARALLEL}, got {args.parallel}")
    return int(args.parallel)


def _finish(args: argparse.Namespace, run: Callable[[Host], Awaitable[int]]) -> int:
    from gateway._cli_base import _with_host, err

    try:
        return asyncio.run(_with_host(args, run))
    except Interrupted as exc:
        err.print(f"gateway: {exc.line}", markup=False, soft_wrap=True)
        return EXIT_INTERRUPTED.get(signal.Signals(exc.signum), 130)


def cmd_migrate(args: argparse.Namespace) -> int:
    """``gateway migrate``: one object (as before), several, or a selection."""
    from gateway import _cli_base

    ids: list[str] = args.object_id
    labels = [parse_label(text) for text in args.label or []]
    selector = bool(labels or args.state or (args.tenant and not ids))
    if not ids and not selector:
        raise ConfigError(
            "name the objects to move, or select them",
            hint="e.g. gateway migrate OBJ --to HOST, or --label team=billing, --tenant T, --state active",
        )
    if args.dry_run:
        if len(ids) != 1 or selector:
            raise ConfigError("--dry-run takes exactly one object id")
        args.object_id = ids[0]
        args.tenant = args.tenant or "default"
        return _cli_base.cmd_migrate(args)
    parallel = _parallel(args)
    single = len(ids) == 1 and not selector and args.output != "json"

    async def run(host: Host) -> int:
        targets = await select(host, ids=ids, tenant=args.tenant, labels=labels, state=args.state)

        async def left_open() -> str:
            return interrupted_line(await open_migrations_of(host, targets), _config_text(args))

        if single:
            target = targets[0]
            return await interruptible(
                lambda: _cli_base.migrate_one(host, target.object_id, target.tenant, args.to),
                left_open,
            )
        if not targets:
            raise ConfigError(
                "no object here matches the selection", hint="see `gateway object list`"
            )
        results = await interruptible(
            lambda: run_batch(
                host, targets, args.to, parallel=parallel, title=f"migrating to {args.to}"
            ),
            left_open,
        )
        return print_summary(results, args.to, args.output)

    return _finish(args, run)


def cmd_drain(args: argparse.Namespace) -> int:
    """``gateway drain --to PEER``: move every live object here to PEER."""
    parallel = _parallel(args)

    async def run(host: Host) -> int:
        tenants = [host.tenant(args.tenant)] if args.tenant else list(host.config.tenants)
        targets: list[Target] = []
        skipped: list[Moved] = []
        for tenant in tenants:
            for obj in await host.journal.objects(tenant):
                if obj.state is LifecycleState.ACTIVE:
                    targets.append(Target(tenant, obj.object_id))
                elif obj.state is LifecycleState.FROZEN:
                    skipped.append(
                        Moved(
                            tenant=tenant,
                            object_id=obj.object_id,
                            outcome="failed",
                            migration_id=obj.migration_id,
                            reason=f"frozen by open migration {obj.migration_id}: finish it "
                            f"with `gateway migration resume {obj.migration_id}` or undo it "
                            f"with `gateway migration abort {obj.migration_id}`",
                        )
                    )

        async def left_open() -> str:
            return interrupted_line(await open_migrations_of(host, targets), _config_text(args))

        results = await interruptible(
            lambda: run_batch(
                host,
                targets,
                args.to,
                parallel=parallel,
                title=f"draining to {args.to}",
                skipped=skipped,
            ),
            left_open,
        )
        return print_summary(results, args.to, args.output)

    return _finish(args, run)


def cmd_label(args: argparse.Namespace) -> int:
    """``gateway object label OBJ [k=v | k-]...``: set, remove or show an object's labels."""
    from gateway._cli_base import out

    changes = [parse_label(text, removal=True) for text in args.labels]
    object_id = str(ObjectId.parse(args.object_id))

    async def run(host: Host) -> int:
        tenant = host.tenant(args.tenant)
        if changes:
            labels = await set_labels(host, tenant, object_id, changes)
        else:
            await host.get_object(object_id, tenant=tenant)
            labels = await read_labels(host, tenant, object_id)
        if args.output == "json":
            print(json.dumps({"object_id": object_id, "tenant": tenant, "labels": labels}))
        else:
            shown = ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "no labels"
            out.print(f"{object_id}: {shown}", markup=False)
        return 0

    return _finish(args, run)


def register(
    commands: Any,
    objects: Any,
    common: argparse.ArgumentParser,
    tenant: argparse.ArgumentParser,
) -> None:
    """Add ``gateway migrate`` (many), ``gateway drain`` and ``gateway object label``."""
    from gateway._cli_base import _Parser

    batch = _Parser(add_help=False)
    batch.add_argument(
        "--parallel",
        type=int,
        default=DEFAULT_PARALLEL,
        help=f"migrations in flight at once (default {DEFAULT_PARALLEL}, at most {MAX_PARALLEL})",
    )
    batch.add_argument(
        "-o",
        "--output",
        choices=["table", "json"],
        default="table",
        help="summary as a table (default), or a JSON report on stdout (progress stays on stderr)",
    )
    batch_help = (
        "A failure does not stop the batch; the summary lists each with its reason. Exit "
        f"status: 0 all moved, {EXIT_BATCH_FAILED} some failed (they stay here, live), 1/2 "
        "the batch could not start, 130/143 interrupted (the line printed names the "
        "`gateway migration resume`/`abort` command that finishes what was left open)."
    )
    migrate = commands.add_parser(
        "migrate",
        parents=[common, batch],
        help="move objects to a peer host: ids, or a selection (--label, --tenant, --state)",
        description="Move one object, several, or every object a selector matches to a "
        "peer host. " + batch_help,
    )
    migrate.add_argument(
        "object_id", nargs="*", help="objects to move, e.g. obj://org-a.example/billing/inv-42"
    )
    migrate.add_argument("--to", required=True, help="destination host id (a configured peer)")
    migrate.add_argument(
        "--tenant",
        help="tenant of the ids (default: default); without ids, select every object of it",
    )
    migrate.add_argument(
        "--label",
        action="append",
        metavar="KEY=VALUE",
        help="select objects with this label (`gateway object label`); repeat: all must match",
    )
    migrate.add_argument(
        "--state",
        choices=[s.value for s in LifecycleState],
        help="select objects in this state (default with a selector: active)",
    )
    migrate.add_argument(
        "--dry-run",
        action="store_true",
        help="ask the destination what it would grant one object; move nothing",
    )
    migrate.set_defaults(handler=cmd_migrate)

    drain = commands.add_parser(
        "drain",
        parents=[common, batch],
        help="move every live object off this host to a peer",
        description="Move every ACTIVE object of this host (or of one --tenant) to a peer. "
        "Objects frozen by an open migration are listed as failures with the command that "
        "finishes it. " + batch_help,
    )
    drain.add_argument("--to", required=True, help="destination host id (a configured peer)")
    drain.add_argument("--tenant", help="only this tenant (default: every tenant here)")
    drain.set_defaults(handler=cmd_drain)

    label = objects.add_parser(
        "label",
        parents=[common, tenant],
        help="set (k=v), remove (k-) or show an object's labels (host-local, for selection)",
    )
    label.add_argument("object_id", help="the object")
    label.add_argument(
        "labels", nargs="*", metavar="LABEL", help="KEY=VALUE to set, KEY- to remove; none: show"
    )
    label.add_argument(
        "-o",
        "--output",
        choices=["table", "json"],
        default="table",
        help="table for people (default), json for programs",
    )
    label.set_defaults(handler=cmd_label)


__all__ = [
    "EXIT_BATCH_FAILED",
    "Interrupted",
    "Moved",
    "Target",
    "interruptible",
    "register",
    "report",
    "run_batch",
    "select",
]
