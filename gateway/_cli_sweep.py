"""``gateway sweep``: run the storage sweep a serving host runs hourly, and the pruning
of settled history it runs once every tenth of the retention, now, and say what it
deleted (or, with ``--dry-run``, what it would delete).

Invariants: the same rules as the hourly sweep (gateway.runtime.sweep): a ``.blob`` file
goes only if no record names it and it is older than an hour; archive segments go only
for objects that left before ``lineage.compaction.archive_retention_seconds`` (never when
that is unset), each batch guarded by the tombstone's ETag. ``--dry-run`` writes
nothing. Unlike the hourly sweep, which only logs, a record it cannot read or a store
that fails is an error here (exit 1, one line): an operator who asked for a sweep learns
why nothing was deleted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway._cli_base import _with_host, out

if TYPE_CHECKING:
    from gateway.host import Host
    from gateway.runtime.sweep import DueArchive


async def sweep(host: Host, *, dry_run: bool) -> dict[str, Any]:
    """One sweep of ``host``'s store; what was (or would be) deleted."""
    from gateway.runtime.sweep import ORPHAN_BLOB_AGE_S, find_orphan_blobs, unlink_files

    orphans = await find_orphan_blobs(host.journal.store)
    sizes = {p: _size(p) for p in orphans}
    files = orphans if dry_run else await asyncio.to_thread(unlink_files, orphans)
    return {
        "host": host.host_id,
        "dry_run": dry_run,
        "blob_files": {
            "older_than_s": ORPHAN_BLOB_AGE_S,
            "files": [{"path": str(p), "bytes": sizes[p]} for p in files],
        },
        "archive": await _prune_archives(host, dry_run=dry_run),
        "settled": await _prune_settled(host, dry_run=dry_run),
    }


async def _prune_settled(host: Host, *, dry_run: bool) -> dict[str, Any]:
    """The handoff pruner's pass (a serving host runs one every tenth of the retention),
    now and unpaced: settled journal records, fences, delivered events and MOVED
    tombstones past ``handoff.settled_retention_seconds``."""
    pruner = host.recovery.pruner
    report = await pruner.run_once(dry_run=dry_run, paced=False)
    return {
        "retention_s": pruner.retention.total_seconds(),
        "source_records": report.source_records,
        "destination_records": report.destination_records,
        "fences": report.fences,
        "events": report.events,
        "tombstones": report.tombstones,
    }


async def _prune_archives(host: Host, *, dry_run: bool) -> dict[str, Any]:
    from gateway.handoff.journal import object_key

    archives = host.sweep.archives
    if archives is None:
        return {"retention_s": None, "objects": []}
    due = await archives.due()
    pruned: list[DueArchive] = due
    if not dry_run:
        cutoff = host.clock.now() - archives.retention
        pruned = []
        for found in due:
            key = object_key(found.tenant, found.object_id)
            if deleted := await archives.prune_object(found.tenant, key, cutoff):
                pruned.append(replace(found, segments=deleted))
    return {
        "retention_s": archives.retention.total_seconds(),
        "objects": [
            {
                "tenant": d.tenant,
                "object_id": d.object_id,
                "departed_at": d.departed_at.isoformat(),
                "segments": d.segments,
            }
            for d in pruned
        ],
    }


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0  # gone meanwhile


def describe(report: dict[str, Any]) -> list[str]:
    """The report as lines for people."""
    verb = "would delete" if report["dry_run"] else "deleted"
    files = report["blob_files"]["files"]
    lines = [
        f"{verb} {len(files)} blob file(s) no record names, "
        f"{sum(f['bytes'] for f in files)} bytes (older than "
        f"{report['blob_files']['older_than_s']} s)"
    ]
    lines += [f"  {f['path']} ({f['bytes']} bytes)" for f in files]
    settled = report["settled"]
    lines.append(
        f"{verb} {settled['source_records']} source and {settled['destination_records']} "
        f"destination record(s), {settled['fences']} fence(s), {settled['events']} event(s) "
        f"and {settled['tombstones']} tombstone(s) settled more than "
        f"{settled['retention_s']:.0f} s ago"
        + (
            " (a dry run counts no tombstone that waits for its archive)"
            if report["dry_run"]
            else ""
        )
    )
    archive = report["archive"]
    if archive["retention_s"] is None:
        lines.append(
            "archive segments: all kept (lineage.compaction.archive_retention_seconds is not set)"
        )
        return lines
    objects = archive["objects"]
    verb = "would prune" if report["dry_run"] else "pruned"
    lines.append(
        f"{verb} {sum(o['segments'] for o in objects)} archive segment(s) of {len(objects)} "
        f"object(s) that left more than {archive['retention_s']:.0f} s ago"
    )
    lines += [
        f"  {o['object_id']} (tenant {o['tenant']}, left {o['departed_at']}): "
        f"{o['segments']} segment(s)"
        for o in objects
    ]
    return lines


def cmd_sweep(args: argparse.Namespace) -> int:
    async def run(host: Host) -> int:
        report = await sweep(host, dry_run=args.dry_run)
        if args.output == "json":
            print(json.dumps(report, indent=2))
        else:
            for line in describe(report):
                out.print(line, markup=False)
        return 0

    return asyncio.run(_with_host(args, run))


def add_commands(
    commands: Any, common: argparse.ArgumentParser, output: argparse.ArgumentParser
) -> None:
    """Register ``gateway sweep``."""
    parser = commands.add_parser(
        "sweep",
        parents=[common, output],
        help="delete stored data no record needs: orphan blob files, settled history, "
        "expired archives",
        description="Run the storage sweep a serving host runs at start and hourly, now: "
        "delete the blob files no record names (older than an hour: a crash between a "
        "record's delete and its file's unlink leaves them); the settled journal records, "
        "fences, delivered events and MOVED tombstones older than "
        "handoff.settled_retention_seconds (a serving host prunes those once every tenth "
        "of that retention); and, if lineage.compaction.archive_retention_seconds is set, "
        "the archive segments of objects that left this host longer ago than that "
        "(written first to archive_export_dir when set). Safe beside a serving host.",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="list what would be deleted and delete nothing",
    )
    parser.set_defaults(handler=cmd_sweep)
