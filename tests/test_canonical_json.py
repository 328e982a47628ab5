"""Our canonical JSON (gateway.trust.canonical_json: sorted keys, no spaces, UTF-8) against
RFC 8785 (JCS) as the maintained ``rfc8785`` package (Trail of Bits) writes it.

Decision (docs/adr/0010-canonical-json.md): on every document the gateway signs or hashes
the two are byte for byte the same, and that is pinned here; the gateway keeps the
standard library's C encoder (about 3x faster, and lineage decoding re-encodes every
entry to check it) instead of switching. They differ only outside the values we sign:
floats (1.0 is "1" in JCS, -0.0 is "0"), integers beyond 2**53 (JCS refuses them) and
key order between characters above U+FFFF and those in U+E000..U+FFFF (JCS sorts UTF-16
code units). The cases below show each difference, so a change of either side is seen.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from hypothesis import given, seed, settings
from hypothesis import strategies as st

from gateway.config import load_config
from gateway.host import Host
from gateway.keyring import load_keyring
from gateway.testing import HostSpec, build_world
from gateway.trust import canonical_json
from tests.conftest import HOST_A

SAFE_INT = 2**53 - 1

#: The value domain of what we sign: ASCII keys, integers within JCS's range, any text
#: (no lone surrogates: neither encoder can write them), booleans, null, nesting.
documents = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-SAFE_INT, SAFE_INT)
    | st.text(st.characters(exclude_categories=["Cs"])),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(st.characters(max_codepoint=0x7F), max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@seed(8785)
@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(st.characters(max_codepoint=0x7F), max_size=8), documents))
def test_same_bytes_on_our_value_domain(document: dict[str, Any]) -> None:
    assert canonical_json(document) == rfc8785.dumps(document)


def _signed_documents(tmp_path: Path) -> list[tuple[str, bytes]]:
    """Real canonical bytes: lineage entries and checkpoints of an object that lived, and
    a trust bundle's signed body."""
    world = build_world(tmp_path, [HostSpec(host_id=HOST_A)])

    async def main() -> list[tuple[str, bytes]]:
        host = await Host.open(load_config(world.config(HOST_A)))
        try:
            obj = await host.create_object(
                "obj://org-a.example/billing/invoice-8785",
                tenant="default",
                data=b'{"amount": 1250, "note": "caf\\u00e9 \\ud834\\udd1e"}',
                content_type="application/json",
            )
            found = [(f"entry {e.seq}", e.encode()) for e in obj.lineage.entries]
            found += [(f"checkpoint {i}", c.payload) for i, c in enumerate(obj.lineage.checkpoints)]
            return found
        finally:
            await host.close()

    documents = asyncio.run(main())
    bundle = load_keyring(world.host_directory(HOST_A).parent / "keys").bundle
    from gateway.trust import encode_bundle

    documents.append(("trust bundle", encode_bundle(bundle)))
    return documents


def test_same_bytes_on_what_we_sign(tmp_path: Path) -> None:
    import json

    documents = _signed_documents(tmp_path)
    assert {w.split()[0] for w, _ in documents} >= {"entry", "trust"}
    for what, raw in documents:
        assert rfc8785.dumps(json.loads(raw)) == raw, what


@pytest.mark.parametrize(
    ("document", "ours", "jcs"),
    [
        pytest.param({"x": 1.0}, b'{"x":1.0}', b'{"x":1}', id="float-with-zero-fraction"),
        pytest.param({"x": -0.0}, b'{"x":-0.0}', b'{"x":0}', id="negative-zero"),
        pytest.param(
            {"\ue000": 1, "\U0001d11e": 2},
            '{"\ue000":1,"\U0001d11e":2}'.encode(),
            '{"\U0001d11e":2,"\ue000":1}'.encode(),
            id="key-order-above-the-bmp",
        ),
    ],
)
def test_where_the_forms_differ(document: dict[str, Any], ours: bytes, jcs: bytes) -> None:
    """Outside our value domain: documented, so that neither side changes unseen."""
    assert canonical_json(document) == ours
    assert rfc8785.dumps(document) == jcs


def test_jcs_refuses_integers_beyond_two_to_the_53() -> None:
    assert canonical_json({"x": 2**53}) == b'{"x":9007199254740992}'
    with pytest.raises(rfc8785.IntegerDomainError):
        rfc8785.dumps({"x": 2**53})
