"""``gateway call`` and ``gateway publish``: ask an object something, send it a message.

Kept apart from gateway/cli.py, which only registers these commands (see
:func:`add_commands`). Both print one line (or one JSON document with ``-o json``) and
fail as every command does: one ``gateway: error:`` line and the documented status.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from gateway._decode import load_json
from gateway.config import load_config
from gateway.errors import ConfigError, ObjectMovedError, PayloadDecodeError
from gateway.identity import ObjectId

if TYPE_CHECKING:
    from gateway.host import Host

T = TypeVar("T")

#: Hops ``gateway call --follow`` takes after objects that moved on.
MAX_FOLLOW = 3


def _json_argument(text: str | None, what: str) -> bytes:
    if text is None:
        return b""
    # The one parser for outside text: json.loads alone raised a bare ValueError on an
    # integer of 5000 digits, and accepted NaN and lone surrogates.
    value = load_json(text, error=ConfigError, what=what)
    return json.dumps(value, separators=(",", ":")).encode()


async def _with_host(args: argparse.Namespace, action: Callable[[Host], Awaitable[T]]) -> T:
    from gateway._cli_base import _config_path
    from gateway.host import Host

    host = await Host.open(load_config(_config_path(args)))
    try:
        return await action(host)
    finally:
        await host.close()


def _print(document: dict[str, Any], text: str, output: str) -> None:
    # Plain print: rich would wrap long ids and JSON when the output is piped.
    if output == "json":
        sys.stdout.write(json.dumps(document, sort_keys=True) + "\n")
    else:
        sys.stdout.write(text + "\n")


def cmd_call(args: argparse.Namespace) -> int:
    object_id = str(ObjectId.parse(args.object_id))
    data = _json_argument(args.data, "--data")

    async def run(host: Host) -> int:
        at = args.at
        for _hop in range(MAX_FOLLOW + 1):
            try:
                answer = await host.call(
                    object_id,
                    args.method,
                    tenant=args.tenant,
                    data=data,
                    at=at,
                    wait=args.wait,
                )
            except ObjectMovedError as exc:
                if not args.follow:
                    raise
                at = exc.moved_to
                continue
            # The answering host's bytes: read as any outside JSON (a long integer made
            # json.loads raise a bare ValueError here).
            reply = (
                load_json(
                    answer.reply, error=PayloadDecodeError, what=f"the reply of {answer.host}"
                )
                if answer.reply
                else None
            )
            _print(
                {"object": object_id, "method": args.method, "host": answer.host, "reply": reply},
                json.dumps(reply, sort_keys=True),
                args.output,
            )
            return 0
        raise ObjectMovedError(
            f"{object_id} moved more than {MAX_FOLLOW} times while it was followed",
            moved_to=at or "",
            hint="call the host it names with --at",
        )

    return asyncio.run(_with_host(args, run))


def cmd_publish(args: argparse.Namespace) -> int:
    data = _json_argument(args.data, "--data")

    async def run(host: Host) -> int:
        message = await host.publish(
            args.topic,
            data=json.loads(data) if data else None,
            message_id=args.id,
            source=args.source,
            kind=args.type,
        )
        _print(
            {"topic": message.topic, "id": message.id, "source": message.source},
            f"published {message.id} on {message.topic}",
            args.output,
        )
        return 0

    return asyncio.run(_with_host(args, run))


def add_commands(
    commands: Any, common: argparse.ArgumentParser, tenant: argparse.ArgumentParser
) -> None:
    """Register ``call`` and ``publish`` under ``gateway``."""
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument(
        "-o",
        "--output",
        choices=("text", "json"),
        default="text",
        help="text for people (default), json for programs",
    )
    call = commands.add_parser(
        "call",
        parents=[common, tenant, output],
        help="ask an object something (its answers reply; the Call RPC, as this host)",
    )
    call.add_argument("object_id", help="the object to ask, e.g. obj://org-a.example/orders/7")
    call.add_argument("method", help="one of the methods the object answers")
    call.add_argument("--data", help="the request as JSON (default: null)")
    call.add_argument(
        "--at", help="the host holding the object, a configured peer (default: this host)"
    )
    call.add_argument(
        "--wait",
        type=float,
        default=10.0,
        help="seconds to wait for an object frozen by a migration (default: 10, at most 30)",
    )
    call.add_argument(
        "--follow",
        action="store_true",
        help=f"if the object moved, call the host it moved to (up to {MAX_FOLLOW} hops)",
    )
    call.set_defaults(handler=cmd_call)

    publish = commands.add_parser(
        "publish",
        parents=[common, output],
        help="send a message on a topic (this host's bus, or its Dapr pub/sub)",
    )
    publish.add_argument("topic", help="<name>/<name>, e.g. orders/cancelled")
    publish.add_argument("--data", help="the message data as JSON (default: null)")
    publish.add_argument(
        "--id", help="the message id (CloudEvents id; default: a new one); reuse it to redeliver"
    )
    publish.add_argument("--source", help="the CloudEvents source (default: this host's id)")
    publish.add_argument(
        "--type", default="gateway.message", help="the CloudEvents type (default: gateway.message)"
    )
    publish.set_defaults(handler=cmd_publish)
