"""``gateway object archive OBJECT DIR``: copy the lineage archive segments a host holds for
an object into a directory that ``gateway verify FILE --archive DIR`` reads offline.

Invariants: the host is only read (nothing is written to its store); a segment file is
written whole (temporary file, rename), named by its first entry and its length, so the
directories exported from several hosts can be merged by copying without one segment
replacing another (docs/lineage.md). An object that left this host still has its
segments here: they are exported all the same (its history lives on in the archive).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway._cli_base import _object_id, _with_host
from gateway.errors import ConfigError

if TYPE_CHECKING:
    from gateway.archive import CustodySegment, Segment
    from gateway.host import Host


def write_segments(segments: Sequence[Segment | CustodySegment], directory: Path) -> list[Path]:
    """Write each segment (entries as ``.seg``, archived handoffs as ``.cus``) as a file in
    ``directory`` (created if missing)."""
    from gateway.archive import CustodySegment, custody_file_name, segment_file_name

    written = []
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for segment in segments:
            name = (
                custody_file_name(segment)
                if isinstance(segment, CustodySegment)
                else segment_file_name(segment)
            )
            path = directory / name
            temporary = path.with_suffix(".tmp")
            temporary.write_bytes(segment.encode())
            os.replace(temporary, path)
            written.append(path)
    except OSError as exc:
        raise ConfigError(
            f"cannot write the archive to {directory}: {exc.strerror}",
            hint="name a directory you can write to",
        ) from exc
    return written


async def export_archive(
    host: Host, object_id: str, tenant: str, directory: Path
) -> dict[str, Any]:
    """Copy the object's segments held on ``host`` into ``directory``; what was written."""
    segments = await host.compaction.archive.segments(host.tenant(tenant), object_id)
    paths = write_segments(segments, directory)
    # Archived handoffs (ADR 0010 step 2) beside them, for `gateway verify --archive`.
    handoffs = await host.compaction.archive.custody_segments(host.tenant(tenant), object_id)
    handoff_paths = write_segments(handoffs, directory)
    return {
        "object_id": object_id,
        "host": host.host_id,
        "directory": str(directory),
        "segments": [
            {"start": s.start, "entries": len(s.entries), "file": str(p)}
            for s, p in zip(segments, paths, strict=True)
        ],
        "custody": [
            {"first_hop": h.first, "handoffs": len(h.departures), "file": str(p)}
            for h, p in zip(handoffs, handoff_paths, strict=True)
        ],
    }


def describe(exported: dict[str, Any]) -> str:
    segments, custody = exported["segments"], exported["custody"]
    if not segments and not custody:
        return (
            f"no archive segments of {exported['object_id']} on {exported['host']} "
            "(it was not compacted here)"
        )
    entries = sum(s["entries"] for s in segments)
    ranges = ", ".join(f"{s['start']}-{s['start'] + s['entries'] - 1}" for s in segments)
    wrote = f"{entries} entries ({ranges or 'none'})"
    if custody:
        handoffs = sum(c["handoffs"] for c in custody)
        hops = ", ".join(f"{c['first_hop']}-{c['first_hop'] + c['handoffs'] - 1}" for c in custody)
        wrote += f" and {handoffs} archived handoffs (hops {hops})"
    return (
        f"wrote {len(segments) + len(custody)} segment(s) of {exported['object_id']} to "
        f"{exported['directory']}: {wrote}; verify with `gateway verify FILE --archive "
        f"{exported['directory']} --trust BUNDLE ...` (one --archive per host that held it)"
    )


def cmd_object_archive(args: argparse.Namespace) -> int:
    async def run(host: Host) -> int:
        exported = await export_archive(
            host, _object_id(args.object_id), args.tenant, Path(args.directory)
        )
        if args.output == "json":
            print(json.dumps(exported, indent=2))
        else:
            print(describe(exported))
        return 0

    return asyncio.run(_with_host(args, run))


def add_commands(
    objects: Any,
    common: argparse.ArgumentParser,
    tenant: argparse.ArgumentParser,
    output: argparse.ArgumentParser,
) -> None:
    """Register ``object archive`` under ``gateway object``."""
    archive = objects.add_parser(
        "archive",
        parents=[common, tenant, output],
        help="copy an object's lineage archive held on this host into a directory",
        description="Write the archive segments this host holds for OBJECT (the entries it "
        "compacted away while holding it) into DIR, for `gateway verify FILE --archive DIR`. "
        "After migrations each host that compacted the object holds its own segments: export "
        "from each and pass every directory (or copy them into one). Works for an object "
        "that has left this host.",
    )
    archive.add_argument("object_id", help="e.g. obj://org-a.example/billing/invoice-42")
    archive.add_argument("directory", help="directory to write the segment files into")
    archive.set_defaults(handler=cmd_object_archive)
