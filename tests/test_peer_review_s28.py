"""Findings of a dishonest-peer review of what a destination (and a custody home) accepts.

Each test shows one thing a peer holding valid keys and certificates could send, and what
the receiver must do instead of what it did: refuse with a GatewayError naming what was
wrong, before anything is written, and stay able to serve the honest peers after it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import versions
from gateway.errors import GatewayError, LimitExceededError, VersionError
from gateway.handoff.home import CustodyRecord, custody_key
from gateway.host import Host
from gateway.testing import HostSpec, build_world
from tests.conftest import HOST_A, HOST_A2, HOST_B
from tests.test_custody_home import HOST_C, HOST_D, OBJECT, claim, record, with_hosts

# --- the capabilities a caller announces (every RPC, gateway/transport/server.py) -------


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("²", "superscript two: str.isdigit() holds, int() raises ValueError"),
        ("1,³", "a valid version beside a superscript three"),
        ("٣", "Arabic-Indic three: int() reads it as 3, a second spelling of a version"),
    ],
)
def test_a_peer_announcing_digits_that_are_not_ascii_gets_a_version_error(
    value: str, why: str
) -> None:
    """The server negotiates from the caller's metadata before anything else; a value
    int() refuses escaped as a ValueError (answered INTERNAL, logged with a traceback
    per call) instead of the VersionError every other malformed list gets."""
    for key in (versions.PROTOCOL_KEY, versions.FORMAT_KEY):
        metadata = [(versions.PROTOCOL_KEY, "1"), (key, value)]
        with pytest.raises(VersionError, match="is not a list of version numbers"):
            versions.Capabilities.from_metadata(metadata)


# --- the custody home's Claim (gateway/handoff/home.py) ---------------------------------


def test_a_claim_with_an_epoch_beyond_64_bits_is_refused_and_custody_can_still_move(
    tmp_path: Path,
) -> None:
    """The holder of an object (a host of another domain, with valid keys) signs its own
    departure to itself at epoch 2**64, and its own COMMITTED decision. The home granted
    it and wrote a custody record that CustodyRecord.decode refuses ("must fit in 64
    bits"): from then on every claim of the object, the holder's honest ones included,
    failed with PayloadDecodeError, and the object could never move again."""
    world = build_world(
        tmp_path, [HostSpec(host_id=h) for h in (HOST_A, HOST_A2, HOST_B, HOST_C, HOST_D)]
    )

    async def body(hosts: dict[str, Host]) -> None:
        await claim(hosts, HOST_A, HOST_B, 1, "mig-1")  # B holds the object from epoch 1
        home = hosts[HOST_A2]
        before = await home.store.get(custody_key(OBJECT))
        assert before is not None
        with pytest.raises(LimitExceededError, match="epoch of the departure"):
            await claim(hosts, HOST_B, HOST_B, 2**64, "mig-2")
        with pytest.raises(GatewayError, match="migration id"):
            await claim(hosts, HOST_B, HOST_B, 2, "m" * 100_000)
        after = await home.store.get(custody_key(OBJECT))
        assert after is not None and after.value == before.value  # nothing written
        CustodyRecord.decode(after.value)  # and what is there still reads
        # The holder hands the object on as usual.
        assert record(await claim(hosts, HOST_B, HOST_C, 2, "mig-3")).holder == HOST_C

    with_hosts(world, body)
