"""The ``gateway`` command.

Every command that acts on a host takes ``--config FILE`` (default: ``$GATEWAY_CONFIG``,
else ``./gateway.yaml``). Failures print one line, ``gateway: error: <what> — <what to
do>``, and exit non-zero: 2 for bad input (arguments, configuration), 1 for a refused or
failed operation. ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table
from rich.text import Text

from gateway._cli_archive import add_commands as add_archive_commands
from gateway._cli_base import (
    _config_path,
    _object_id,
    _one_line,
    _Parser,
    _print_evaluation,
    _unreadable,
    _with_host,
    _with_local,
    err,
    out,
    show,
)
from gateway._cli_events import add_commands as add_event_commands
from gateway._cli_sweep import add_commands as add_sweep_commands
from gateway._text import plain, plain_lines
from gateway._time import SystemClock, format_time
from gateway.errors import (
    ConcurrencyError,
    ConfigError,
    GatewayError,
)

# Everything else of the gateway is imported where used: `gateway --help` and the local
# read commands must answer in well under a second, and cryptography, CEL, YAML and gRPC
# are what a command pays for only if it needs them (docs/cli.md).
if TYPE_CHECKING:
    from gateway.config import Config
    from gateway.envelope import Envelope
    from gateway.host import Host
    from gateway.keyring import Keyring
    from gateway.keys import KeyRecord
    from gateway.keyusage import KeyUse
    from gateway.local import LocalHost
    from gateway.model import GovernedObject

#: What ``main`` returns; every non-zero status comes with one ``gateway: error:`` line
#: on stderr (``gateway: internal error:`` for 70), never a traceback unless --debug.
EXIT_STATUS = """\
exit status:
  0    done
  1    refused: a peer, a signature, a grant, a trust bundle, a lineage or the store
  2    bad configuration, input file or command-line argument (the line names it)
  3    a batch (`migrate` of several objects, `drain`) ran, but some objects failed
  70   internal error: a bug in the gateway; rerun with --debug and report it
  130  interrupted (SIGINT)
  143  terminated (SIGTERM) during `migrate`, `drain` or another command
"""


def _cut(text: str, keep: int) -> str:
    """``text`` shortened to ``keep`` characters and "…" at a terminal; whole when piped."""
    return text[:keep] + "…" if out.is_terminal and len(text) > keep else text


def _listen_address(text: str) -> str:
    """``--listen``: refused at once, with the expected form, when it is not HOST:PORT."""
    from gateway.config import listen_address

    try:
        return listen_address(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(f"{exc.reason} — {exc.hint}") from exc


#: Data files larger than this are streamed into a blob instead of stored inline.
INLINE_LIMIT = 1 << 20


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    from gateway.blobs import CHUNK_BYTES

    with path.open("rb") as handle:
        while chunk := await asyncio.to_thread(handle.read, CHUNK_BYTES):
            yield chunk


def _large_file(args: argparse.Namespace) -> Path | None:
    """The --data-file to stream, if it is too large to keep inline."""
    if args.data_file is None:
        return None
    path = Path(args.data_file)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise _unreadable(args.data_file, exc) from exc
    return path if size > INLINE_LIMIT else None


def _read_file(name: str, *, limit: int, what: str) -> bytes:
    """The bytes of the file ``name`` given on the command line, at most ``limit``.

    Bundles, proposals and transfers are files a partner hands over: reading one whole
    before its size was checked let a huge (sparse) file or ``/dev/zero`` take all of
    memory. One byte over the limit is read, to tell that it is over."""
    try:
        with open(name, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise _unreadable(name, exc) from exc
    if len(data) > limit:
        raise ConfigError(
            f"{name} is larger than {limit} bytes, the most {what} may be",
            hint="check that it is the file you meant; it is refused, not read whole",
        )
    return data


def _read_data(args: argparse.Namespace) -> bytes:
    if args.data is not None and args.data_file is not None:
        raise ConfigError("give --data or --data-file, not both")
    if args.data_file is not None:
        from gateway.limits import MAX_DATA_BYTES

        return _read_file(args.data_file, limit=MAX_DATA_BYTES, what="inline object data")
    data = (args.data if args.data is not None else "{}").encode("utf-8")
    if args.content_type == "application/json":
        try:
            json.loads(data)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"--data is not valid JSON ({exc.msg} at column {exc.colno})",
                hint="quote the whole value, e.g. --data '{\"amount\": 42}', or set --content-type",
            ) from exc
    return data


# --- commands --------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    from gateway.keys import Algorithm
    from gateway.scaffold import init_host

    config = init_host(
        Path(args.directory),
        host_id=args.host_id,
        listen=args.listen,
        at=SystemClock().now(),
        ca_directory=Path(args.ca) if args.ca else None,
        region=args.region or "",
        tenants=args.tenant or ["default"],
        algorithm=Algorithm.parse(args.algorithm),
        dns_names=args.dns or ["localhost"],
    )
    out.print(f"wrote {config}", markup=False)
    out.print(
        "next: exchange trust bundles with peers (`gateway trust export` / `gateway trust import`),"
    )
    # markup=False: "[default]" is text here, not a rich style.
    out.print(
        "      add them under 'peers:' in the config, each with the tenants it may deliver into"
        " (`tenants: [default]`; none if left out), then `gateway serve --config "
        + str(config)
        + "`",
        markup=False,
    )
    return 0


def cmd_certs_ca(args: argparse.Namespace) -> int:
    from gateway.scaffold import create_ca

    create_ca(
        Path(args.out),
        args.trust_domain,
        at=SystemClock().now(),
        dns_names=args.dns or ["localhost"],
    )
    out.print(f"wrote {Path(args.out) / 'ca.crt'} and ca.key (keep the key private)")
    return 0


def cmd_certs_host(args: argparse.Namespace) -> int:
    from gateway.identity import HostId
    from gateway.scaffold import issue_host_certificate, load_ca

    issue_host_certificate(
        load_ca(Path(args.ca)),
        HostId.parse(args.host_id),
        Path(args.out),
        at=SystemClock().now(),
        dns_names=args.dns or ["localhost"],
    )
    out.print(f"wrote {Path(args.out)}/host.crt, host.key and ca.crt")
    return 0


def cmd_keys_init(args: argparse.Namespace) -> int:
    from gateway.config import load_config
    from gateway.keyring import init_keys
    from gateway.keys import Algorithm

    config = load_config(_config_path(args))
    try:
        ca = config.tls.authority.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"{config.tls.authority}: cannot read the CA certificate: {exc.strerror}"
        ) from exc
    keyring = init_keys(
        config.keys,
        trust_domain=config.host.trust_domain,
        host=str(config.host),
        ca_certificate=ca,
        at=SystemClock().now(),
        algorithm=Algorithm.parse(args.algorithm),
    )
    _print_keys(keyring.bundle.keys)
    return 0


def cmd_keys_add(args: argparse.Namespace) -> int:
    from gateway.config import load_config
    from gateway.keyring import add_key
    from gateway.keys import Algorithm

    config = load_config(_config_path(args))
    keyring, signer = add_key(
        config.keys,
        host=args.host or str(config.host),
        at=SystemClock().now(),
        algorithm=Algorithm.parse(args.algorithm),
    )
    out.print(
        f"added key {signer.key_id} ({signer.algorithm.value}); bundle sequence {keyring.bundle.sequence}"
    )
    out.print("peers see it after they import the new bundle (`gateway trust export`)")
    return 0


def _signing_now(keyring: Keyring, record: KeyRecord, fallback: str) -> None:
    """Say which key each host the retired/revoked key served signs with from now on."""
    from gateway.keys import Purpose

    now = SystemClock().now()
    for host in sorted(record.hosts) or [fallback]:
        try:
            signer = keyring.signer_for(Purpose.ENVELOPE, host=host, at=now)
        except ConfigError as exc:
            # Not an error of this command: the key is out, and the host must get a new one.
            out.print(f"warning: {exc.reason}", markup=False)
            out.print(f"  what to do: {exc.hint}", markup=False)
            continue
        out.print(f"{host} signs with key {signer.key_id[:16]} from now on")


def cmd_keys_retire(args: argparse.Namespace) -> int:
    from gateway.config import load_config
    from gateway.keyring import find_key, load_keyring, retire_key

    config = load_config(_config_path(args))
    before = find_key(load_keyring(config.keys), args.key_id)
    if before.revoked:
        out.print(f"key {before.key_id[:16]} is revoked already; nothing to retire")
        return 0
    if before.retired_at is not None:
        out.print(
            f"key {before.key_id[:16]} is retired already, since {format_time(before.retired_at)}"
        )
        return 0
    keyring, record = retire_key(config.keys, before.key_id, at=SystemClock().now())
    assert record.retired_at is not None
    out.print(
        f"retired key {record.key_id[:16]} at {format_time(record.retired_at)}; bundle sequence "
        f"{keyring.bundle.sequence}. It signs nothing from now on; what it signed before "
        "stays valid."
    )
    _signing_now(keyring, record, str(config.host))
    out.print(
        "next: export the bundle to every peer (`gateway trust export`); a running "
        "`gateway serve` of this domain reloads its keys within seconds (at once on SIGHUP)"
    )
    out.print(
        f"then delete {config.keys / (record.key_id + '.key')}: whoever holds a retired key "
        "can still backdate signatures with it. If it may have leaked, revoke it instead.",
        markup=False,
    )
    return 0


async def _key_uses(config: Config, record: KeyRecord) -> list[KeyUse]:
    # The store directly, not Host.open: a host whose only key is being revoked cannot
    # open (it has nothing to sign with), but its objects must still be listed.
    from gateway.host import open_store
    from gateway.keyusage import objects_signed_by

    store = await open_store(config)
    try:
        return await objects_signed_by(store, config.tenants, record)
    finally:
        await store.close()


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from gateway.config import load_config
    from gateway.keyring import find_key, load_keyring, revoke_key

    config = load_config(_config_path(args))
    record = find_key(load_keyring(config.keys), args.key_id)
    uses = asyncio.run(_key_uses(config, record))
    name = f"key {record.key_id[:16]}"
    if args.dry_run:
        out.print(f"dry run: nothing changed. Revoking {name} would affect:")
    elif record.revoked:
        out.print(f"{name} is revoked already; the objects here that it signed:")
    else:
        keyring = revoke_key(config.keys, record.key_id, at=SystemClock().now())
        out.print(
            f"revoked {name}; bundle sequence {keyring.bundle.sequence}. Export it "
            "(`gateway trust export`) and send it to every peer now; a running "
            "`gateway serve` of this domain reloads its keys within seconds (at once on SIGHUP)."
        )
        _signing_now(keyring, record, str(config.host))
        out.print("affected objects on this host:")
    for use in uses:
        out.print(f"  {use.render()}", markup=False)
    if not uses:
        out.print("  none: no object stored here carries a signature by this key")
        return 0
    out.print(
        f"{len(uses)} object(s) carry signatures by {name}. Every host that imports the "
        "revoking bundle (this one too) refuses them: they cannot move, and their grants "
        "give no authority.",
        markup=False,
    )
    out.print(
        "what to do: a revoked signature cannot be renewed in place; have the grant's issuer "
        "issue a new one, or recreate the object from its data (`gateway object create`). "
        "If the key was replaced but never leaked, retire it (`gateway keys retire`) instead: "
        "what it signed before stays valid.",
        markup=False,
    )
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    from gateway.config import load_config
    from gateway.keyring import load_keyring

    config = load_config(_config_path(args))
    keyring = load_keyring(config.keys)
    if args.output == "json":
        from gateway.present import key_json, print_json

        print_json(
            {
                "trust_domain": keyring.bundle.trust_domain,
                "sequence": keyring.bundle.sequence,
                "keys": [
                    key_json(k, private=k.key_id in keyring.signers) for k in keyring.bundle.keys
                ],
            }
        )
        return 0
    out.print(f"{keyring.bundle.trust_domain}, bundle sequence {keyring.bundle.sequence}")
    _print_keys(keyring.bundle.keys, private=set(keyring.signers))
    return 0


def _print_keys(records: Sequence[Any], private: set[str] | None = None) -> None:
    table = Table()
    for column in ("key id", "algorithm", "purposes", "hosts", "valid until", "status"):
        table.add_column(column, overflow="fold")
    for record in records:
        if record.revoked:
            status = "revoked"
        elif record.retired_at is not None:
            status = f"retired {format_time(record.retired_at)}"
        else:
            status = "ok"
        if private is not None and record.key_id in private:
            status += ", private key here"
        table.add_row(
            _cut(record.key_id, 16),
            record.algorithm.value,
            ",".join(sorted(p.value for p in record.purposes)),
            ",".join(sorted(h.removeprefix("spiffe://") for h in record.hosts)) or "any",
            format_time(record.valid_until) if record.valid_until else "-",
            status,
        )
    show(table)


def cmd_trust_export(args: argparse.Namespace) -> int:
    from gateway.config import load_config
    from gateway.keyring import load_keyring

    config = load_config(_config_path(args))
    keyring = load_keyring(config.keys)
    signed = keyring.export(SystemClock().now())
    if args.out in (None, "-"):
        sys.stdout.buffer.write(signed)
    else:
        Path(args.out).write_bytes(signed)
        out.print(
            f"wrote {args.out}: {keyring.bundle.trust_domain} sequence {keyring.bundle.sequence}, "
            f"fingerprint {keyring.bundle.fingerprint()}"
        )
    return 0


def cmd_trust_import(args: argparse.Namespace) -> int:
    from gateway.trust import MAX_BUNDLE_BYTES

    signed = _read_file(args.file, limit=MAX_BUNDLE_BYTES, what="a trust bundle")

    async def run(host: Host) -> int:
        imported = await host.import_bundle(signed)
        bundle = imported.bundle
        if not imported.changed:
            out.print(
                f"{bundle.trust_domain} sequence {bundle.sequence} is already trusted; nothing changed"
            )
        elif imported.first_use:
            out.print(
                f"trusted {bundle.trust_domain} for the first time (sequence {bundle.sequence})"
            )
            out.print(f"fingerprint {bundle.fingerprint()}")
            out.print("compare it with the fingerprint the peer gave you over another channel")
        else:
            out.print(f"updated {bundle.trust_domain} to sequence {bundle.sequence}")
        out.print(
            "a running `gateway serve` of this host uses it within seconds (at once on SIGHUP)"
        )
        return 0

    return asyncio.run(_with_host(args, run))


def cmd_trust_list(args: argparse.Namespace) -> int:
    async def run(host: LocalHost) -> int:
        own_domain = host.config.host.trust_domain
        if args.output == "json":
            from gateway.present import bundle_json, print_json

            print_json(
                [
                    bundle_json(bundle, own=domain == own_domain)
                    for domain, bundle in sorted(host.trust.bundles.items())
                ]
            )
            return 0
        table = Table()
        for column in ("trust domain", "sequence", "keys", "fingerprint"):
            table.add_column(column, overflow="fold")
        for domain, bundle in sorted(host.trust.bundles.items()):
            own = " (own)" if domain == own_domain else ""
            table.add_row(
                domain + own,
                str(bundle.sequence),
                str(len(bundle.keys)),
                _cut(bundle.fingerprint(), 32),
            )
        show(table)
        return 0

    return asyncio.run(_with_local(args, run))


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway import serving
    from gateway.config import load_config
    from gateway.observability import setup as observe

    if not 0 < args.grace <= serving.MAX_GRACE:
        raise ConfigError(f"--grace must be within (0, {serving.MAX_GRACE:g}] seconds")
    if not 0 <= args.reload_interval <= 3600:
        raise ConfigError("--reload-interval must be from 0 (SIGHUP only) to 3600 seconds")
    config = load_config(_config_path(args))
    observe.setup_logging(args.log_format, config, serve=True, debug=args.debug)
    if args.no_reflection:
        config = replace(config, observability=replace(config.observability, reflection=False))
    observe.setup_tracing(config)
    metrics_url = observe.setup_metrics(config, args.metrics_listen)
    if metrics_url:
        print(f"gateway: metrics on {metrics_url}", flush=True)
    return serving.serve(config, grace=args.grace, reload_interval=args.reload_interval)


def cmd_health(args: argparse.Namespace) -> int:
    from gateway.config import load_config
    from gateway.observability.probe import check_health

    config = load_config(_config_path(args))
    answer = asyncio.run(
        check_health(config, service=args.service, address=args.address, deadline=args.timeout)
    )
    if args.output == "json":
        print(
            json.dumps(
                {"address": answer.address, "service": answer.service, "status": answer.status}
            )
        )
    else:
        print(f"{answer.address}: {answer.status}")
    return 0 if answer.serving else 1


def cmd_object_create(args: argparse.Namespace) -> int:
    from gateway.model import CycleState
    from gateway.objectspec import interval_of, load_spec
    from gateway.present import describe_object

    spec = load_spec(args.spec) if args.spec else None
    if spec is not None and (args.data is not None or args.data_file is not None):
        raise ConfigError("give the data in --spec or with --data/--data-file, not both")
    large = None if spec is not None else _large_file(args)
    data = b"" if large is not None else spec.data if spec is not None else _read_data(args)
    content_type = spec.content_type if spec is not None else args.content_type
    cycle = spec.cycle if spec is not None else CycleState()
    if args.interval is not None:
        try:
            cycle = CycleState(interval=interval_of(args.interval))  # refuses nan and inf
        except ConfigError as exc:
            raise ConfigError(f"--interval: {exc.reason}", hint=exc.hint) from exc

    async def run(host: Host) -> int:
        try:
            obj = await host.create_object(
                args.object_id,
                tenant=args.tenant,
                data=data,
                content_type=content_type,
                grant=spec.grant if spec is not None else None,
                rules=spec.rules if spec is not None else (),
                subscriptions=spec.subscriptions if spec is not None else (),
                answers=spec.answers if spec is not None else (),
                cycle=cycle,
                data_stream=_file_chunks(large) if large is not None else None,
            )
        except ConcurrencyError as exc:
            raise ConcurrencyError(
                f"{args.object_id} already exists in tenant {args.tenant} on {host.host_id}",
                hint="choose another id; `gateway object show` shows the existing one",
            ) from exc
        if args.output == "json":
            from gateway.present import object_json, print_json

            print_json(object_json(obj))
            return 0
        show(describe_object(obj))
        return 0

    return asyncio.run(_with_host(args, run))


def cmd_object_show(args: argparse.Namespace) -> int:
    from gateway.present import describe_object

    async def run(host: Host) -> int:
        obj = await host.get_object(_object_id(args.object_id), tenant=args.tenant)
        if args.archive_out:
            from gateway._cli_archive import describe, export_archive

            exported = await export_archive(
                host, obj.object_id, args.tenant, Path(args.archive_out)
            )
            out.print(describe(exported), markup=False)
        if args.export:
            _export_archive(host, obj, Path(args.export))
        if args.export or args.archive_out:
            return 0
        quarantine = await host.quarantine_of(obj.object_id, tenant=args.tenant)
        if args.output == "json":
            from gateway.present import object_json, print_json

            print_json(
                {
                    **object_json(obj),
                    "quarantine": quarantine.describe() if quarantine is not None else None,
                }
            )
            return 0
        show(describe_object(obj))
        if quarantine is not None:
            out.print(f"QUARANTINED: {quarantine.describe()}", markup=False)
        return 0

    return asyncio.run(_with_host(args, run))


def _export_archive(host: Host, obj: GovernedObject, path: Path) -> None:
    """An object archive for ``gateway verify``: grants and lineage, signed by this host."""
    from gateway import envelope as dsse
    from gateway.audit import ARCHIVE_PAYLOAD_TYPE, archive_of
    from gateway.errors import ObjectStateError

    if not obj.live:
        # A copy that left (or was only staged) is not this host's to vouch for: its
        # history goes on elsewhere, and an archive of it would show this host holding it.
        raise ObjectStateError(
            f"{obj.object_id} is {obj.state.value.upper()} here, not held by {host.host_id}",
            hint=f"export it on the host that holds it now{f' ({obj.moved_to})' if obj.moved_to else ''}",
        )
    payload = archive_of(
        object_id=obj.object_id,
        tenant=obj.tenant,
        holder=host.host_id,
        state=obj.state.value,
        epoch=obj.epoch,
        exported_at=host.clock.now(),
        grants=obj.grants,
        lineage=obj.lineage,
    )
    try:
        path.write_bytes(dsse.to_json(host.context.seal(payload, ARCHIVE_PAYLOAD_TYPE)))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write: {exc.strerror}") from exc
    out.print(
        f"wrote {path}: {obj.object_id} ({len(obj.lineage)} lineage entries, "
        f"{len(obj.grants)} grants) signed by {host.host_id}; check it anywhere with "
        "`gateway verify FILE --trust BUNDLE ...`",
        markup=False,
    )


def cmd_object_release(args: argparse.Namespace) -> int:
    async def run(host: Host) -> int:
        object_id = _object_id(args.object_id)
        await host.get_object(object_id, tenant=args.tenant)
        if await host.release_object(object_id, tenant=args.tenant):
            out.print(f"{object_id} released from quarantine; it is scheduled again")
        else:
            out.print(f"{object_id} is not quarantined")
        return 0

    return asyncio.run(_with_host(args, run))


def cmd_object_list(args: argparse.Namespace) -> int:
    from gateway.fleet import parse_label

    # Parsed before the store is opened: a malformed one is one line, exit 2.
    wanted = [parse_label(text) for text in args.label or []]

    async def run(host: LocalHost) -> int:
        objects = await host.list_objects(tenant=args.tenant)
        if wanted:
            objects = await _labelled(host, objects, wanted)
        if args.output == "json":
            from gateway.present import object_json, print_json

            print_json([object_json(obj) for obj in objects])
            return 0
        table = Table()
        for column in ("object", "state", "epoch", "generation", "lineage"):
            table.add_column(column, overflow="fold")
        for obj in objects:
            state = obj.state.value.upper() + (f" → {obj.moved_to}" if obj.moved_to else "")
            table.add_row(
                obj.object_id, state, str(obj.epoch), str(obj.generation), str(len(obj.lineage))
            )
        selector = "".join(f" labelled {k}={v}" for k, v in wanted)
        show(table if objects else f"no objects{selector} in tenant {args.tenant}")
        return 0

    return asyncio.run(_with_local(args, run))


async def _labelled(
    host: LocalHost, objects: list[GovernedObject], wanted: Sequence[tuple[str, str | None]]
) -> list[GovernedObject]:
    """The objects whose labels (`gateway object label`, host-local) include every one of
    ``wanted``: one read of their label records."""
    from gateway.fleet import decode_labels, labels_key

    keys = [labels_key(obj.tenant, obj.object_id) for obj in objects]
    items = await host.store.get_many(keys)
    chosen = []
    for obj, key in zip(objects, keys, strict=True):
        item = items.get(key)
        have = {} if item is None else decode_labels(item.value, obj.object_id)
        if all(have.get(k) == v for k, v in wanted):
            chosen.append(obj)
    return chosen


def cmd_lineage(args: argparse.Namespace) -> int:
    from gateway.present import lineage_table, verify_and_describe_lineage

    async def run(host: LocalHost) -> int:
        obj = await host.get_object(_object_id(args.object_id), tenant=args.tenant)
        if args.output == "json":
            from gateway.present import lineage_json, print_json

            # Verified first, as for the table: a lineage that does not verify is an error.
            summary = verify_and_describe_lineage(host, obj)
            print_json(
                {"object_id": obj.object_id, "entries": lineage_json(obj), "verified": summary}
            )
            return 0
        show(lineage_table(obj))
        out.print(verify_and_describe_lineage(host, obj))
        return 0

    return asyncio.run(_with_local(args, run))


def cmd_export(args: argparse.Namespace) -> int:
    """Offline handoff, sender's side (gateway.handoff.offline), or a dry-run proposal."""
    from gateway.handoff import offline

    modes = [m for m in ("complete", "abort", "resume") if getattr(args, m)]
    if len(modes) > 1 or (modes and (args.object_id or args.dry_run)):
        raise ConfigError(
            "give one of: OBJECT --to HOST, --complete RECEIPT, --abort MIGRATION, --resume MIGRATION"
        )
    if not modes and not (args.object_id and args.to):
        raise ConfigError("gateway export OBJECT needs --to HOST", hint="see gateway export --help")
    if (
        (args.dry_run or not modes or args.abort or args.complete)
        and not args.out
        and not (args.complete and _is_activation(args.complete))
    ):
        raise ConfigError("say where to write the file with -o FILE")
    if args.complete and args.out and _is_activation(args.complete):
        # Finishing answers nothing: an -o silently not written looks like a lost file.
        raise ConfigError(
            f"{args.complete} is an activation receipt: finishing the migration writes "
            f"nothing, so -o {args.out} has nothing to write",
            hint=f"run `gateway export --complete {args.complete}` without -o",
        )
    out_path = Path(args.out) if args.out else None

    if args.dry_run:

        async def propose(host: Host) -> bytes:
            return await host.export_proposal(
                _object_id(args.object_id), tenant=args.tenant, destination=args.to
            )

        assert out_path is not None
        out_path.write_bytes(asyncio.run(_with_host(args, propose)))
        out.print(
            f"wrote {out_path}: a signed proposal of {args.object_id} for {args.to} "
            "(nothing was frozen; it can only be dry-run, never staged)"
        )
        return 0

    async def run(host: Host) -> offline.Step:
        if args.complete:
            return await offline.complete(host.source, offline.read_signed(Path(args.complete)))
        if args.abort:
            return await offline.abort(
                host.source, args.abort, reason="aborted by the operator (offline handoff)"
            )
        assert out_path is not None
        if args.resume:
            return await offline.write_transfer_file(host.source, args.resume, out_path)
        return await offline.export(
            host.source,
            _object_id(args.object_id),
            tenant=host.tenant(args.tenant),
            destination=args.to,
            path=out_path,
            ttl=_hours(args.ttl_hours),
        )

    step = asyncio.run(_with_host(args, run))
    return _finish_step(step, out_path)


def _is_activation(path: str) -> bool:
    """Whether a receipt file is an activation receipt (which needs no output file)."""
    from gateway.handoff import offline
    from gateway.handoff.messages import ReceiptKind

    return offline.read_signed(Path(path)).payload_type == ReceiptKind.ACTIVATED.payload_type


def _hours(value: float) -> timedelta:
    if not 0 < value <= 7 * 24:
        raise ConfigError(f"--ttl-hours must be within (0, 168], got {value}")
    return timedelta(hours=value)


def _finish_step(step: object, out_path: Path | None) -> int:
    from gateway.handoff.offline import Step

    assert isinstance(step, Step)
    if step.wrote:
        assert out_path is not None
        partial = out_path.with_name(out_path.name + ".partial")
        partial.write_bytes(step.wrote)
        os.replace(partial, out_path)
        out.print(f"wrote {out_path}", markup=False)
    out.print(step.what, markup=False)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """Offline handoff, receiver's side: a transfer file or a decision file."""
    from gateway.handoff import offline

    source = Path(args.file)
    try:
        with source.open("rb") as handle:
            head = handle.read(len(offline.MAGIC))
    except OSError as exc:
        raise _unreadable(source, exc) from exc

    decision = None if head == offline.MAGIC else offline.read_signed(source)
    if decision is not None and args.out and _is_abort(decision):
        # Checked before anything is done: importing an abort file answers nothing, and
        # an -o that is silently not written looks like a receipt that got lost.
        raise ConfigError(
            f"{source} is an abort file: importing it discards the staged copy and writes "
            f"nothing, so -o {args.out} has nothing to write",
            hint=f"run `gateway import {source}` without -o",
        )

    async def run(host: Host) -> object:
        if decision is None:
            return await offline.import_transfer(host.destination, source)
        return await offline.import_decision(host.destination, decision)

    step = asyncio.run(_with_host(args, run))
    from gateway.handoff.offline import Step

    assert isinstance(step, Step)
    if step.wrote and not args.out:
        raise ConfigError(
            f"{step.what}; but no -o FILE was given for the receipt",
            hint="run the same import again with -o FILE: it answers the same receipt",
        )
    return _finish_step(step, Path(args.out) if args.out else None)


def _is_abort(envelope: Envelope) -> bool:
    """Whether a decision file says ABORTED, as it claims (verified when imported)."""
    from gateway import envelope as dsse
    from gateway.handoff.messages import DecisionAnswer, Outcome

    if envelope.payload_type != dsse.PayloadType.DECISION:
        return False
    try:
        return DecisionAnswer.decode(envelope.payload).outcome is Outcome.ABORTED
    except GatewayError:
        return False  # the import itself says what is wrong with it


def cmd_admit(args: argparse.Namespace) -> int:
    if not args.dry_run:
        raise ConfigError(
            "gateway admit only does dry runs (--dry-run)",
            hint="objects are admitted for real when their source migrates them here",
        )
    from gateway.wire import MAX_ENVELOPE_BYTES

    signed = _read_file(args.envelope, limit=MAX_ENVELOPE_BYTES, what="a proposal")

    async def run(host: Host) -> int:
        evaluation = await host.evaluate_proposal(signed)
        return _print_evaluation(evaluation, args.output)

    return asyncio.run(_with_host(args, run))


def cmd_events(args: argparse.Namespace) -> int:
    from gateway.present import events_table
    from gateway.runtime.outbox import list_events

    # Checked before the store is opened: a mistyped id matched nothing and read as
    # "no events", exit 0, hiding the typo.
    only = _object_id(args.object) if args.object else None

    async def run(host: LocalHost) -> int:
        events = await list_events(host.store, tenant=host.tenant(args.tenant))
        if only is not None:
            events = [e for e in events if e.object_id == only]
        if args.output == "json":
            from gateway.present import event_json, print_json

            print_json([event_json(e) for e in events])
            return 0
        table = events_table(events, whole=not out.is_terminal)
        of = f" for {only}" if only is not None else ""
        show(table if events else plain(f"no events in tenant {args.tenant}{of}"))
        return 0

    return asyncio.run(_with_local(args, run))


def cmd_forks(args: argparse.Namespace) -> int:
    """Diverging copies this host refused, with the evidence it kept."""
    from gateway.handoff.evidence import list_forks

    async def run(host: Host) -> int:
        forks = await list_forks(host.store)
        if args.output == "json":
            print(
                json.dumps(
                    [
                        {
                            "object_id": f.object_id,
                            "tenant": f.tenant,
                            "sender": f.sender,
                            "migration": f.migration,
                            "epoch": f.epoch,
                            "seen_at": f.seen_at,
                            "reason": f.reason,
                            "lineage_bytes": len(f.lineage),
                        }
                        for f in forks
                    ],
                    indent=2,
                )
            )
            return 0
        if not forks:
            out.print("no forks seen on this host")
            return 0
        table = Table(title="diverging copies refused (evidence kept)")
        for column in ("object", "from", "epoch", "seen", "reason"):
            table.add_column(column, overflow="fold")
        for f in forks:
            # The object id and reason are words of the refused copy (a peer's): text,
            # never markup (a "[/bold]" in them raised MarkupError on every listing).
            table.add_row(
                plain(f.object_id), plain(f.sender), str(f.epoch), plain(f.seen_at), plain(f.reason)
            )
        show(table)
        return 0

    return asyncio.run(_with_host(args, run))


def _parse_at(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ConfigError(
            f"--at {text!r} is not a time", hint="e.g. --at 2026-11-21T20:52:45Z"
        ) from exc
    if moment.tzinfo is None:
        raise ConfigError(f"--at {text!r} has no time zone", hint="end it with Z for UTC")
    return moment


def cmd_verify(args: argparse.Namespace) -> int:
    """Verify a transfer, proposal or object archive with nothing but trust bundles."""
    from gateway.audit import MAX_FILE_BYTES, audit
    from gateway.handoff import offline
    from gateway.trust import MAX_BUNDLE_BYTES

    try:
        with open(args.file, "rb") as handle:
            is_transfer_file = handle.read(len(offline.MAGIC)) == offline.MAGIC
    except OSError as exc:
        raise _unreadable(args.file, exc) from exc
    # A transfer file from `gateway export`: its signed transfer is what is verified (the
    # data frames after it are checked against the signed digest on import).
    subject = (
        offline.transfer_envelope(Path(args.file))
        if is_transfer_file
        else _read_file(args.file, limit=MAX_FILE_BYTES, what="a signed file")
    )
    report = audit(
        subject,
        [
            (name, _read_file(name, limit=MAX_BUNDLE_BYTES, what="a trust bundle"))
            for name in args.trust
        ],
        at=_parse_at(args.at),
        now=SystemClock().now(),
        archive=_read_archive(args.archive) if args.archive else None,
    )
    if args.output == "json":
        print(json.dumps(report.to_json(), indent=2))
    else:
        for renderable in render_report(report):
            show(renderable)
    failures = report.failures
    if failures:
        first = failures[0]
        more = f" (and {len(failures) - 1} more failed check(s))" if len(failures) > 1 else ""
        err.print(
            f"gateway: error: {args.file} does not verify: {first.name}: "
            f"{_one_line(first.detail)}{more}",
            markup=False,
        )
        return 1
    return 0


def _read_archive(paths: Sequence[str]) -> list[Any]:
    from gateway.archive import read_archives
    from gateway.errors import LineageError

    try:
        return read_archives([Path(p) for p in paths])
    except LineageError as exc:
        raise ConfigError(
            f"{', '.join(paths)} is not a lineage archive: {exc.reason}",
            hint="pass directories written by `gateway object archive`",
        ) from exc


def render_report(report: Any) -> list[Any]:
    """What `gateway verify` prints for people: custody, authority, checks."""
    from gateway.audit import Status
    from gateway.present import _host, custody_parts

    def when(moment: datetime | None) -> str:
        return format_time(moment)[:-1].replace("T", " ") if moment else "-"

    parts: list[Any] = []
    what = f"{report.kind.value} of {report.object_id or '(unreadable)'}"
    if report.presenter:
        what += f", signed by {report.presenter} at {when(report.signed_at)} UTC"
    if report.destination:
        what += f", for {report.destination}"
    parts.append(plain(what))
    parts.append(Text(f"judged at {when(report.judged_at)} UTC"))
    if report.bundles:
        bundles = Table(
            title="trust bundles (compare fingerprints out of band)", title_justify="left"
        )
        for column in ("trust domain", "sequence", "fingerprint", "trusted by"):
            bundles.add_column(column, overflow="fold")
        for b in report.bundles:
            how = "first use (self-signed)" if b.first_use else "signed update"
            bundles.add_row(plain(b.trust_domain), str(b.sequence), plain(b.fingerprint), how)
        parts.append(bundles)
    parts.extend(custody_parts(report))
    if report.grants:
        grants = Table(title="authority: the grant chain, root first", title_justify="left")
        for column in ("#", "issuer", "audiences", "capabilities", "constraints", "valid (UTC)"):
            grants.add_column(column, overflow="fold")
        for g in report.grants:
            capabilities = "; ".join(f"{c['res']}: {','.join(c['act'])}" for c in g.capabilities)
            constraints = ", ".join(f"{k}={v}" for k, v in sorted(g.constraints.items())) or "none"
            extra = (f"\nrenews {g.replaces[:16]}…" if g.replaces else "") + (
                f"\nhome {_host(g.home)}" if g.home else ""
            )
            grants.add_row(
                str(g.index),
                plain_lines(_host(g.issuer) + extra),
                plain(", ".join(_host(a) for a in g.audiences)),
                plain(capabilities or "none"),
                plain(constraints),
                f"{when(g.not_before)} to {when(g.expires_at)}",
            )
        parts.append(grants)
    checks = Table(title="checks", title_justify="left")
    for column in ("result", "check", "detail"):
        checks.add_column(column, overflow="fold")
    marks = {Status.OK: "[green]ok[/]", Status.FAILED: "[red]FAILED[/]", Status.SKIPPED: "skipped"}
    for c in report.checks:
        checks.add_row(marks[c.status], plain(c.name), plain_lines(c.detail))
    parts.append(checks)
    if report.ok:
        parts.append(
            Text(f"verified: all {len(report.checks)} checks pass ({report.hops} handoff(s))")
        )
    else:
        parts.append(
            Text(f"NOT verified: {len(report.failures)} of {len(report.checks)} checks failed")
        )
    return parts


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo

    return run_demo(Path(args.dir) if args.dir else None, keep=args.keep)


# --- parser ----------------------------------------------------------------------------


def _version() -> str:
    """``gateway --version``: the release, and what it speaks on the wire."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        release = version("object-migration-gateway")
    except PackageNotFoundError:  # run from a source tree that was never installed
        release = "unknown (not installed)"
    from gateway.versions import FEATURES, FORMAT_VERSIONS, PROTOCOL_VERSIONS

    def listed(numbers: tuple[int, ...]) -> str:
        return ",".join(map(str, numbers))

    return (
        f"gateway {release} (protocol {listed(PROTOCOL_VERSIONS)}; "
        f"formats {listed(FORMAT_VERSIONS)}; features {','.join(sorted(FEATURES))})"
    )


class _VersionAction(argparse.Action):
    """``--version``, worked out only when asked (package metadata is slow to import)."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *_args: Any, **_kwargs: Any) -> None:
        sys.stdout.write(_version() + "\n")
        parser.exit(0)


#: The values of gateway.keys.Algorithm, spelled here so that building the parser does not
#: import cryptography (tests/test_cli_conventions.py checks they are the same).
ALGORITHMS = ("ed25519", "ecdsa-p256-sha256")


def build_parser() -> argparse.ArgumentParser:

    common = _Parser(add_help=False)
    common.add_argument(
        "--config", help="host configuration file (default: $GATEWAY_CONFIG or ./gateway.yaml)"
    )
    common.add_argument("--debug", action="store_true", help="print tracebacks and debug logs")
    common.add_argument(
        "--log-format",
        choices=["text", "json"],
        help="log as text or as JSON lines carrying migration, object, peer and tenant ids "
        "(JSON also logs each handoff step; default: $GATEWAY_LOG_FORMAT, else "
        "observability.log_format for serve, else text)",
    )
    tenant = _Parser(add_help=False)
    tenant.add_argument("--tenant", default="default", help="tenant (default: default)")
    # Every command that prints data takes -o json (docs/cli.md); tests/test_cli_conventions.py
    # fails on a command that prints data without it.
    output = _Parser(add_help=False)
    output.add_argument(
        "-o",
        "--output",
        choices=["table", "json"],
        default="table",
        help="table for people (default), json for programs",
    )
    algorithms = list(ALGORITHMS)

    parser = _Parser(
        prog="gateway",
        description="Move live, governed objects between Dapr clusters and organizations.",
        epilog=EXIT_STATUS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="print tracebacks and debug logs")
    parser.add_argument(
        "--version",
        action=_VersionAction,
        help="print the gateway's version and the protocol versions it speaks, then exit",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="run two hosts of two trust domains on loopback and migrate an object"
    )
    demo.add_argument("--dir", help="work directory (default: a new temporary one)")
    demo.add_argument("--keep", action="store_true", help="keep the work directory afterwards")
    demo.add_argument("--debug", action="store_true", help="print tracebacks")
    demo.set_defaults(handler=cmd_demo)

    init = commands.add_parser(
        "init", parents=[common], help="create a host directory: dev certs, keys, config"
    )
    init.add_argument("directory", help="new host directory (must not hold a gateway.yaml)")
    init.add_argument(
        "--host-id", required=True, help="e.g. spiffe://org-a.example/cluster/east/gateway"
    )
    init.add_argument(
        "--listen",
        default="127.0.0.1:7001",
        type=_listen_address,
        help="HOST:PORT to serve on (default: 127.0.0.1:7001; port 0: the OS chooses)",
    )
    init.add_argument(
        "--ca", help="directory with an existing dev CA (ca.crt, ca.key) of the same trust domain"
    )
    init.add_argument("--region", help="region of this host, for grant constraints (optional)")
    init.add_argument(
        "--tenant", action="append", help="tenant to host (repeatable; default: default)"
    )
    init.add_argument(
        "--algorithm",
        default="ed25519",
        choices=algorithms,
        help="signing key algorithm (default: ed25519)",
    )
    init.add_argument(
        "--dns",
        action="append",
        help="DNS name peers reach this host by (repeatable; default: localhost)",
    )
    init.set_defaults(handler=cmd_init)

    serve = commands.add_parser(
        "serve",
        parents=[common],
        help="serve peers (Prepare/Commit/Abort/Decision)",
        description="Serve peers until SIGTERM. SIGHUP, or a change of the configuration "
        "file, keys, TLS files or imported trust bundles, reloads them without a restart "
        "(a reload that fails keeps the running configuration and logs why). SIGTERM "
        "stops admitting new handoffs, finishes or aborts those in flight within --grace "
        "seconds, and exits 0. See docs/operations.md.",
    )
    serve.add_argument(
        "--grace",
        type=float,
        default=10.0,
        help="seconds SIGTERM leaves handoffs in flight to finish (default 10)",
    )
    serve.add_argument(
        "--reload-interval",
        type=float,
        default=2.0,
        help="seconds between looks for changed files and bundles (default 2; 0: SIGHUP only)",
    )
    serve.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (default: "
        "observability.metrics_listen, else no metrics endpoint)",
    )
    serve.add_argument(
        "--no-reflection",
        action="store_true",
        help="do not offer gRPC server reflection on the peer port (default: offered)",
    )
    serve.set_defaults(handler=cmd_serve)

    health = commands.add_parser(
        "health",
        parents=[common],
        help="ask this host's gRPC port for its grpc.health.v1 status (exit 0 if SERVING)",
        description="Check the health of the `gateway serve` of this configuration over its "
        "own mTLS port, with the host's own certificate (for exec probes). Exit 0 if "
        "SERVING, 1 if NOT_SERVING, unknown or unreachable, 2 if the configuration is bad.",
    )
    health.add_argument(
        "--service",
        default="",
        help="service to ask about (default: the whole server; or gateway.v1.Gateway)",
    )
    health.add_argument(
        "--address",
        metavar="HOST:PORT",
        help="where to call (default: the configured listen address; a wildcard bind "
        "means loopback)",
    )
    health.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait for the answer (default: 5)"
    )
    health.add_argument(
        "-o",
        "--output",
        choices=["text", "json"],
        default="text",
        help="text for people (default), json for programs",
    )
    health.set_defaults(handler=cmd_health)

    certs = commands.add_parser("certs", help="development certificates").add_subparsers(
        dest="certs_command", required=True, metavar="COMMAND"
    )
    certs_ca = certs.add_parser("ca", parents=[common], help="create a dev CA for a trust domain")
    certs_ca.add_argument("--trust-domain", required=True, help="e.g. org-a.example")
    certs_ca.add_argument("--out", required=True, help="directory to write ca.crt and ca.key")
    certs_ca.add_argument(
        "--dns",
        action="append",
        help="DNS names its host certificates may carry (repeatable; default: localhost)",
    )
    certs_ca.set_defaults(handler=cmd_certs_ca)
    certs_host = certs.add_parser(
        "host", parents=[common], help="issue a host certificate from a dev CA"
    )
    certs_host.add_argument("--ca", required=True, help="directory holding ca.crt and ca.key")
    certs_host.add_argument(
        "--host-id", required=True, help="e.g. spiffe://org-a.example/cluster/east/gateway"
    )
    certs_host.add_argument(
        "--out", required=True, help="directory to write host.crt, host.key and ca.crt"
    )
    certs_host.add_argument(
        "--dns", action="append", help="DNS name for the certificate (repeatable)"
    )
    certs_host.set_defaults(handler=cmd_certs_host)

    keys = commands.add_parser("keys", help="signing keys of this trust domain").add_subparsers(
        dest="keys_command", required=True, metavar="COMMAND"
    )
    keys_init = keys.add_parser("init", parents=[common], help="create the domain's first keys")
    keys_init.add_argument(
        "--algorithm",
        default="ed25519",
        choices=algorithms,
        help="signing key algorithm (default: ed25519)",
    )
    keys_init.set_defaults(handler=cmd_keys_init)
    keys_add = keys.add_parser("add", parents=[common], help="add a signing key (rotation)")
    keys_add.add_argument("--host", help="host id the key signs for (default: this host)")
    keys_add.add_argument(
        "--algorithm",
        default="ed25519",
        choices=algorithms,
        help="signing key algorithm (default: ed25519)",
    )
    keys_add.set_defaults(handler=cmd_keys_add)
    keys_retire = keys.add_parser(
        "retire",
        parents=[common],
        help="stop signing with a key; what it signed before stays valid",
    )
    keys_retire.add_argument("key_id", help="key id or a unique prefix of it")
    keys_retire.set_defaults(handler=cmd_keys_retire)
    keys_revoke = keys.add_parser(
        "revoke",
        parents=[common],
        help="distrust a key and everything it ever signed (for a leaked key)",
    )
    keys_revoke.add_argument("key_id", help="key id or a unique prefix of it")
    keys_revoke.add_argument(
        "--dry-run",
        action="store_true",
        help="only list the objects here that a revocation would strand",
    )
    keys_revoke.set_defaults(handler=cmd_keys_revoke)
    keys_list = keys.add_parser("list", parents=[common, output], help="list the domain's keys")
    keys_list.set_defaults(handler=cmd_keys_list)

    trust = commands.add_parser("trust", help="trust bundles of peer domains").add_subparsers(
        dest="trust_command", required=True, metavar="COMMAND"
    )
    trust_export = trust.add_parser(
        "export", parents=[common], help="write this domain's signed bundle"
    )
    trust_export.add_argument("--out", help="file to write (default: standard output)")
    trust_export.set_defaults(handler=cmd_trust_export)
    trust_import = trust.add_parser(
        "import", parents=[common], help="trust a peer domain's signed bundle"
    )
    trust_import.add_argument("file", help="the peer's bundle (`gateway trust export` there)")
    trust_import.set_defaults(handler=cmd_trust_import)
    trust_list = trust.add_parser("list", parents=[common, output], help="list trusted domains")
    trust_list.set_defaults(handler=cmd_trust_list)

    objects = commands.add_parser("object", help="governed objects on this host").add_subparsers(
        dest="object_command", required=True, metavar="COMMAND"
    )
    create = objects.add_parser("create", parents=[common, tenant, output], help="create an object")
    create.add_argument("object_id", help="e.g. obj://org-a.example/billing/invoice-42")
    create.add_argument("--data", help="the object's data (default: {})")
    create.add_argument("--data-file", help="read the data from a file")
    create.add_argument(
        "--content-type",
        default="application/json",
        help="media type of the data (default: application/json)",
    )
    create.add_argument(
        "--interval",
        type=float,
        help="seconds between evaluation cycles (default: none, the object does not cycle)",
    )
    create.add_argument("--spec", help="YAML object spec: data, root grant, cycle (see README)")
    create.set_defaults(handler=cmd_object_create)
    show = objects.add_parser("show", parents=[common, tenant, output], help="show an object")
    show.add_argument("object_id", help="e.g. obj://org-a.example/billing/invoice-42")
    show.add_argument(
        "--export",
        metavar="FILE",
        help="write a signed archive of its grants and lineage for `gateway verify` instead",
    )
    show.add_argument(
        "--archive-out",
        metavar="DIR",
        help="write the lineage archive segments held here into DIR instead (with --export, "
        "both), for `gateway verify FILE --archive DIR` (see `gateway object archive`)",
    )
    show.set_defaults(handler=cmd_object_show)
    release = objects.add_parser(
        "release", parents=[common, tenant], help="schedule a quarantined object again"
    )
    release.add_argument("object_id", help="the quarantined object")
    release.set_defaults(handler=cmd_object_release)
    add_archive_commands(objects, common, tenant, output)
    listing = objects.add_parser("list", parents=[common, tenant, output], help="list objects")
    listing.add_argument(
        "--label",
        action="append",
        metavar="KEY=VALUE",
        help="only objects with this label (`gateway object label`); repeat: all must match",
    )
    listing.set_defaults(handler=cmd_object_list)

    lineage = commands.add_parser(
        "lineage", parents=[common, tenant, output], help="show and verify an object's lineage"
    )
    lineage.add_argument("object_id", help="e.g. obj://org-a.example/billing/invoice-42")
    lineage.set_defaults(handler=cmd_lineage)

    from gateway import fleet, migrations

    fleet.register(commands, objects, common, tenant)
    add_sweep_commands(commands, common, output)
    migrations.register(commands, common)

    events = commands.add_parser(
        "events",
        parents=[common, tenant, output],
        help="the outbox: events published and invocations made",
    )
    events.add_argument(
        "--object", help="only this object's events, e.g. obj://org-a.example/billing/invoice-42"
    )
    events.set_defaults(handler=cmd_events)
    add_event_commands(commands, common, tenant)

    forks = commands.add_parser(
        "forks",
        parents=[common],
        help="diverging copies of objects this host refused, and the evidence it kept",
    )
    forks.add_argument(
        "-o",
        "--output",
        choices=["table", "json"],
        default="table",
        help="table for people (default), json for programs",
    )
    forks.set_defaults(handler=cmd_forks)

    export = commands.add_parser(
        "export",
        parents=[common, tenant],
        help="offline handoff, sender's side: transfer file, completion, abort (or a dry-run proposal)",
        description="Move an object through files when the hosts cannot reach each other: "
        "`export OBJ --to HOST -o T` freezes it and writes T; the receiver answers "
        "`gateway import T -o R`; `export --complete R -o C` commits and writes C; the "
        "receiver activates with `gateway import C -o D`; `export --complete D` finishes.",
    )
    export.add_argument("object_id", nargs="?", help="the object to move (with --to)")
    export.add_argument("--to", help="the host that will receive it")
    export.add_argument("-o", "--out", help="file to write (transfer, commit or abort file)")
    export.add_argument(
        "--dry-run",
        action="store_true",
        help="write a signed proposal for `gateway admit --dry-run` instead; freezes nothing",
    )
    export.add_argument(
        "--ttl-hours",
        type=float,
        default=48.0,
        help="how long the transfer file stays valid (default 48, at most 168)",
    )
    export.add_argument(
        "--complete", metavar="RECEIPT", help="a receipt file from the receiver: commit or finish"
    )
    export.add_argument(
        "--abort", metavar="MIGRATION", help="abort a frozen offline migration (object live again)"
    )
    export.add_argument(
        "--resume", metavar="MIGRATION", help="write the transfer file of a frozen migration again"
    )
    export.set_defaults(handler=cmd_export)

    imports = commands.add_parser(
        "import",
        parents=[common],
        help="offline handoff, receiver's side: stage a transfer file, or apply a commit/abort file",
    )
    imports.add_argument("file", help="a transfer file, or a commit or abort file from the sender")
    imports.add_argument(
        "-o", "--out", help="where to write the receipt to hand back (staged or activation)"
    )
    imports.set_defaults(handler=cmd_import)

    admit = commands.add_parser(
        "admit",
        parents=[common, output],
        help="show what this host would grant an object (from a proposal file)",
    )
    admit.add_argument("envelope", help="proposal file written by `gateway export` on the source")
    admit.add_argument(
        "--dry-run", action="store_true", help="required: admission itself happens by migration"
    )
    admit.set_defaults(handler=cmd_admit)

    verify = commands.add_parser(
        "verify",
        help="check an object's custody and authority from a file and trust bundles alone",
        description="Verify a transfer or proposal envelope (`gateway export`) or an object "
        "archive (`gateway object show --export`) with no store, configuration or running "
        "gateway: who held the object where and when, what authority each holder had and "
        "from which grant, and whether every signature, chain link, checkpoint, departure "
        "and arrival verifies. Checks name each departure and arrival by its hop over the "
        'whole history ("departure 0" is the first handoff), counting handoffs archived '
        "before the oldest one the object carries (docs/lineage.md). Exit 0 only if every "
        "check passes, 1 if one fails, 2 if the input is not such a file.",
    )
    verify.add_argument("file", help="transfer, proposal or object archive file")
    verify.add_argument(
        "--trust",
        action="append",
        required=True,
        metavar="BUNDLE",
        help="a signed trust bundle (`gateway trust export`); repeat for every domain involved",
    )
    verify.add_argument(
        "--at",
        help="judge grant validity at this time (default: when the file was signed)",
    )
    verify.add_argument(
        "--archive",
        action="append",
        metavar="DIR",
        help="the object's lineage archive (a directory of .seg entry segments and .cus "
        "custody segments, or one such file): also verify the whole history, archived entries "
        "and archived handoffs included, every original signature (docs/lineage.md); repeat "
        "for the archive of every host that compacted it",
    )
    verify.add_argument(
        "-o",
        "--output",
        choices=["text", "json"],
        default="text",
        help="text for people (default), json for programs",
    )
    verify.add_argument("--debug", action="store_true", help="print tracebacks")
    verify.set_defaults(handler=cmd_verify)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    from gateway.observability import setup as observe

    observe.quiet_grpc_core(debug=debug)  # before anything imports grpc
    try:
        if args.handler is not cmd_serve:  # serve sets up logging once its config is read
            observe.setup_logging(getattr(args, "log_format", None), debug=debug)
        return int(args.handler(args))
    except GatewayError as exc:
        if debug:
            err.print_exception()
        err.print(f"gateway: error: {_one_line(str(exc))}", markup=False)
        return 2 if isinstance(exc, ConfigError) else 1
    except KeyboardInterrupt:
        err.print("gateway: interrupted", markup=False)
        return 130
    except Exception as exc:
        if debug:
            err.print_exception()
        err.print(
            f"gateway: internal error: {type(exc).__name__}: {_one_line(str(exc))} "
            "(run with --debug for details)",
            markup=False,
        )
        return 70


if __name__ == "__main__":
    sys.exit(main())
