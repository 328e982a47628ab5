"""What this release speaks, and how two hosts of different releases agree or refuse.

Partners do not upgrade together. Every RPC a host makes carries its capabilities as gRPC
metadata (the handshake of each call): the handoff protocol versions it speaks, the
versions of the signed formats it reads (transfer, receipts, checkpoints, bundles, custody
receipts, archives: the ``.vN+`` of each DSSE payload type, and the transfer-file
header), and named features. The server answers with the highest protocol version both
speak, in the trailing metadata, or refuses with :class:`~gateway.errors.VersionError`
naming both sides' versions. A caller that sends no capabilities is a release from
before this negotiation, which speaks protocol 1 and format 1.

Invariants: a host never guesses a version it was not told; a signed file or message of
a format version this release does not read is refused with an error naming both the
version found and the versions read here, never misread (tests/corpus/ holds files of
every released version, read by tests/test_compatibility.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.errors import VersionError

#: Handoff protocol versions (the RPCs of gateway.v1 and what each step means).
PROTOCOL_VERSIONS: tuple[int, ...] = (1,)
#: Versions of the signed formats this release reads and writes.
FORMAT_VERSIONS: tuple[int, ...] = (1,)
#: What a peer may rely on beyond the protocol version; named, never numbered.
FEATURES: frozenset[str] = frozenset(
    {"prepare-stream", "evaluate", "custody-home", "offline-transfer", "decision"}
)
#: What a caller that sends no capabilities speaks: the release before negotiation.
LEGACY_VERSION = 1

PROTOCOL_KEY = "gateway-protocol-versions"
FORMAT_KEY = "gateway-format-versions"
FEATURES_KEY = "gateway-features"
AGREED_KEY = "gateway-protocol-version"
#: Bounds on what a peer's metadata may list, checked before it is parsed.
MAX_LISTED = 32
MAX_VALUE = 512

_PAYLOAD_TYPE = re.compile(
    r"(?P<kind>application/vnd\.gateway\.[a-z-]+)\.v(?P<version>\d{1,6})\+(?P<encoding>[a-z]+)"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Capabilities:
    protocol: tuple[int, ...]
    formats: tuple[int, ...]
    features: frozenset[str]

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (
            (PROTOCOL_KEY, ",".join(map(str, self.protocol))),
            (FORMAT_KEY, ",".join(map(str, self.formats))),
            (FEATURES_KEY, ",".join(sorted(self.features))),
        )

    @classmethod
    def from_metadata(cls, metadata: Iterable[tuple[str, str | bytes]]) -> Capabilities:
        """What a caller announced; a caller that announced nothing speaks version 1."""
        found = {
            key: value for key, value in metadata if key in (PROTOCOL_KEY, FORMAT_KEY, FEATURES_KEY)
        }
        if PROTOCOL_KEY not in found:
            return cls(protocol=(LEGACY_VERSION,), formats=(LEGACY_VERSION,), features=frozenset())
        return cls(
            protocol=_versions(found.get(PROTOCOL_KEY, ""), PROTOCOL_KEY),
            formats=_versions(found.get(FORMAT_KEY, str(LEGACY_VERSION)), FORMAT_KEY),
            features=frozenset(_items(found.get(FEATURES_KEY, ""), FEATURES_KEY)),
        )


def ours() -> Capabilities:
    return Capabilities(protocol=PROTOCOL_VERSIONS, formats=FORMAT_VERSIONS, features=FEATURES)


def _items(value: str | bytes, key: str) -> list[str]:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    if len(text) > MAX_VALUE:
        raise VersionError(f"the peer's {key} is {len(text)} characters; at most {MAX_VALUE}")
    items = [item.strip() for item in text.split(",") if item.strip()]
    if len(items) > MAX_LISTED:
        raise VersionError(f"the peer lists {len(items)} {key}; at most {MAX_LISTED}")
    return items


def _versions(value: str | bytes, key: str) -> tuple[int, ...]:
    items = _items(value, key)
    # ASCII digits only: str.isdigit() also holds for "²" or "٣", which int() then
    # refuses with a ValueError (or reads as another spelling of a number).
    if not items or not all(item.isascii() and item.isdigit() and len(item) <= 6 for item in items):
        raise VersionError(f"the peer's {key} {value!r} is not a list of version numbers")
    return tuple(sorted({int(item) for item in items}))


def _listed(versions: Iterable[int]) -> str:
    return ", ".join(str(v) for v in versions)


def negotiate(
    peer: Capabilities, *, host: str, peer_name: str, mine: Capabilities | None = None
) -> int:
    """The highest protocol version both sides speak; a VersionError naming both sides'
    versions when they share none (or share no format version)."""
    mine = mine or ours()
    common = set(mine.protocol) & set(peer.protocol)
    if not common:
        raise VersionError(
            f"{peer_name} speaks protocol version(s) {_listed(peer.protocol)}, "
            f"{host} speaks {_listed(mine.protocol)}: no version in common",
            hint="upgrade the older host to a release that speaks the other's version",
        )
    if not set(mine.formats) & set(peer.formats):
        raise VersionError(
            f"{peer_name} reads format version(s) {_listed(peer.formats)}, "
            f"{host} reads {_listed(mine.formats)}: no format in common",
            hint="upgrade the older host to a release that reads the other's format",
        )
    return max(common)


def check_payload_type(found: str, expected: str) -> None:
    """Raise VersionError if ``found`` is ``expected``'s kind of message in a format
    version this release does not read (another kind is not a version question)."""
    got, want = _PAYLOAD_TYPE.fullmatch(found), _PAYLOAD_TYPE.fullmatch(expected)
    if got is None or want is None or got["kind"] != want["kind"]:
        return
    version = int(got["version"])
    if version not in FORMAT_VERSIONS:
        raise VersionError(
            f"{found!r} is version {version} of {got['kind'].rsplit('.', 1)[-1]}; this gateway "
            f"reads version(s) {_listed(FORMAT_VERSIONS)}",
            hint="the sender runs a newer gateway: upgrade this host to read it",
        )


def check_transfer_file_header(header: bytes, expected: bytes) -> None:
    """Raise VersionError for a transfer file of another format version."""
    match = re.fullmatch(rb"gateway-transfer-file/v(\d{1,6})\n", header)
    if match is None or header == expected:
        return
    version = int(match[1])
    raise VersionError(
        f"the transfer file is format version {version}; this gateway reads version(s) "
        f"{_listed(FORMAT_VERSIONS)}",
        hint="the sender runs a newer gateway: upgrade this host to import it",
    )
