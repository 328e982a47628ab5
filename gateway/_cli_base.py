"""What the command modules share: the consoles, the parser class, opening a host, and
moving one object.

``gateway.cli`` builds the parser and registers the commands of ``gateway.fleet``,
``gateway.migrations`` and ``gateway._cli_events``; they import from here, not from the
CLI, so no command module imports the one that registers it (tests/test_layers.py).
Like the CLI, it imports the rest of the gateway where used, so ``gateway --help`` stays
fast.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from rich.console import Console

from gateway._text import printable as _printable
from gateway.errors import (
    ConfigError,
    GatewayError,
    NotFoundError,
    UnknownPeerError,
    unreadable,
)

if TYPE_CHECKING:
    from gateway.handoff.messages import Evaluation
    from gateway.host import Host
    from gateway.local import LocalHost

T = TypeVar("T")

#: Piped output is read by programs: rich would wrap it at 80 columns, so when standard
#: output is not a terminal the width is this (no line of ours comes near it), and
#: nothing is cut short either (see :func:`_cut`).
PIPE_WIDTH = 1 << 16
out = Console(highlight=False, width=None if sys.stdout.isatty() else PIPE_WIDTH)
# emoji=False: an error message is printed as is; ":name:" in a path or id stays text.
err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)


def show(renderable: Any) -> None:
    """Print a table (or any rich renderable) to standard output. Piped, each line ends
    at its last character: rich pads a borderless table's last column and a title to
    the table's width, and a program reading the lines would have to strip that."""
    if out.is_terminal:
        out.print(renderable)
        return
    with out.capture() as captured:
        out.print(renderable)
    out.file.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))
    out.file.flush()


def _one_line(text: str) -> str:
    """Errors are one line on stderr, whatever the message they wrap, and only of
    printable characters (see :func:`_printable`)."""
    return " ".join(_printable(part.strip()) for part in text.splitlines() if part.strip())


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one ``gateway: error:`` line like every other error
    (argparse's default prints the whole usage block first)."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("gateway").strip()
        where = f"{command}: " if command else ""
        self.exit(2, f"gateway: error: {where}{message} — see `{self.prog} --help`\n")


def _object_id(text: str) -> str:
    """Check an object id given on the command line, so a typo is named as one."""
    from gateway.identity import ObjectId

    return str(ObjectId.parse(text))


def _config_path(args: argparse.Namespace) -> Path:
    path = Path(args.config or os.environ.get("GATEWAY_CONFIG") or "gateway.yaml")
    # `gateway init hosts/a` makes a directory, so `--config hosts/a` is the usual slip.
    if path.is_dir():
        raise ConfigError(
            f"{path} is a directory, not a host configuration file",
            hint=f"pass --config {path / 'gateway.yaml'} (the file `gateway init` wrote)",
        )
    return path


#: The error for a file named on the command line that cannot be opened (kept under its
#: old name for the CLI modules).
_unreadable = unreadable


async def _with_host(args: argparse.Namespace, action: Callable[[Host], Awaitable[T]]) -> T:
    from gateway.config import load_config
    from gateway.host import Host
    from gateway.observability import setup as observe

    config = load_config(_config_path(args))
    observe.setup_tracing(config)  # off unless OTEL_TRACES_EXPORTER is set
    host = await Host.open(config)
    try:
        return await action(host)
    finally:
        await host.close()


async def _with_local(args: argparse.Namespace, action: Callable[[LocalHost], Awaitable[T]]) -> T:
    """Run ``action`` on the host's store and trust only: for commands that read."""
    from gateway.config import load_config
    from gateway.local import LocalHost

    async with await LocalHost.open(load_config(_config_path(args))) as host:
        return await action(host)


async def _where_it_is(host: Host, object_id: str, tenant: str) -> str:
    """After a failed migration: where the object stands now, for the error line."""
    from gateway.model import LifecycleState

    try:
        obj = await host.get_object(object_id, tenant=tenant)
    except GatewayError:
        return ""
    if obj.state is LifecycleState.ACTIVE:
        return f"{object_id} is ACTIVE here again (epoch {obj.epoch}); nothing was lost"
    if obj.state is LifecycleState.FROZEN:
        return (
            f"{object_id} is still FROZEN here by {obj.migration_id}; `gateway migration resume "
            f"{obj.migration_id}` finishes it, `gateway migration abort {obj.migration_id}` undoes it"
        )
    return f"{object_id} is {obj.state.value.upper()} here"


def _print_evaluation(evaluation: Evaluation, output: str) -> int:
    """A dry run's answer; a refusal exits 1 with its one error line."""
    if output == "json":
        from gateway.present import evaluation_json, print_json

        print_json(evaluation_json(evaluation))
    else:
        # The refusal and the decisions are the peer's unsigned words: each made printable
        # (a newline in one would start a line of its own), then every line made.
        shown = replace(
            evaluation,
            refusal=_printable(evaluation.refusal),
            decisions=tuple(
                replace(
                    d,
                    capability=_printable(d.capability),
                    outcome=_printable(d.outcome),
                    reason=_printable(d.reason),
                )
                for d in evaluation.decisions
            ),
        )
        out.print("\n".join(map(_printable, shown.render().split("\n"))), markup=False)
    if evaluation.admitted:
        return 0
    err.print(
        f"gateway: error: {evaluation.host} would refuse the object: "
        f"{_one_line(evaluation.refusal)}",
        markup=False,
    )
    return 1


def cmd_migrate(args: argparse.Namespace) -> int:
    object_id = _object_id(args.object_id)

    if args.dry_run:

        async def evaluate(host: Host) -> int:
            evaluation = await host.evaluate_remote(
                object_id, tenant=args.tenant, destination=args.to
            )
            return _print_evaluation(evaluation, args.output)

        return asyncio.run(_with_host(args, evaluate))

    return asyncio.run(
        _with_host(args, lambda host: migrate_one(host, object_id, args.tenant, args.to))
    )


async def migrate_one(host: Host, object_id: str, tenant: str, destination: str) -> int:
    """Move one object and say where it went (or, on failure, where it is now)."""
    try:
        result = await host.migrate(object_id, tenant=tenant, destination=destination)
    except (ConfigError, UnknownPeerError, NotFoundError):
        raise  # refused before anything was frozen
    except GatewayError as exc:
        # The object may have been frozen and resumed meanwhile: say where it is, so
        # nobody has to wonder whether a failed migration lost it.
        where = await _where_it_is(host, object_id, tenant)
        if not where:
            raise
        raise type(exc)(f"{exc.reason}; {where}", hint=exc.hint) from exc
    if result.step.value == "done":
        out.print(
            f"{result.object_id} moved to {result.destination} (epoch {result.epoch}, {result.migration_id})"
        )
    else:
        out.print(
            f"{result.object_id} committed to {result.destination} ({result.migration_id}); "
            f"activation not yet confirmed — `gateway migration resume {result.migration_id}` "
            "(or a running `gateway serve`) finishes it"
        )
    return 0
