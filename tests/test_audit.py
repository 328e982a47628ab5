"""gateway.audit on a real three-hop history: the report says who held the object, what
authority each holder had and from which grant, and names the check that fails when the
file or a bundle was tampered with.

The history is made once by real hosts (in this process, real mTLS and SQLite): A creates
with a root for org-b and org-c, B narrows on arrival, C holds the object. What an auditor
gets is what a host exports: C's signed archive (``gateway object show --export``), C's
signed transfer to a fourth host, and each domain's signed bundle (``gateway trust
export``). Tampered files are signed again by the dishonest presenter (C, with its real
key), so only the checks inside can catch them.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from gateway import envelope as dsse
from gateway._time import SystemClock
from gateway.audit import ARCHIVE_PAYLOAD_TYPE, Archive, Kind, Report, Status, archive_of, audit
from gateway.authority import CapabilitySet, Constraints
from gateway.cli import main
from gateway.errors import ConfigError
from gateway.keyring import load_keyring
from gateway.keys import Signer
from gateway.model import GovernedObject
from gateway.objectspec import GrantSpec
from gateway.testing import HostSpec, World, build_world, sealed_transfer, serving, sign_transfer
from tests.conftest import FAST_HANDOFF, HOST_A, HOST_B

HOST_C = "spiffe://org-c.example/cluster/one/gateway"
HOST_D = "spiffe://org-d.example/cluster/one/gateway"
OBJECT = "obj://org-a.example/billing/invoice-7"


@dataclass(frozen=True)
class History:
    at_c: GovernedObject
    archive: bytes  #: C's signed archive (DSSE JSON)
    transfer: bytes  #: C's signed transfer to D (protobuf envelope)
    bundles: dict[str, bytes]  #: trust domain -> signed bundle
    signer: Signer  #: C's envelope key
    world: World


def _bundles(world: World, domains: list[str]) -> dict[str, bytes]:
    at = world.directory
    return {d: load_keyring(at / d / "keys").export(_now()) for d in domains}


def _now() -> datetime:
    return SystemClock().now()


def _archive(obj: GovernedObject, holder: str, signer: Signer, **changes: object) -> bytes:
    fields: dict[str, object] = {
        "object_id": obj.object_id,
        "tenant": obj.tenant,
        "holder": holder,
        "state": obj.state.value,
        "epoch": obj.epoch,
        "exported_at": obj.lineage.entries[-1].time + timedelta(seconds=1),
        "grants": obj.grants,
        "lineage": obj.lineage,
    }
    fields.update(changes)
    payload = archive_of(**fields)  # type: ignore[arg-type]
    return dsse.to_json(dsse.seal(payload, ARCHIVE_PAYLOAD_TYPE, [signer]))


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> History:
    directory: Path = tmp_path_factory.mktemp("audit")
    world = build_world(
        directory,
        [
            HostSpec(host_id=HOST_A, handoff=FAST_HANDOFF),
            HostSpec(host_id=HOST_B, handoff={**FAST_HANDOFF, "attenuate_on_rehost": True}),
            HostSpec(host_id=HOST_C, handoff=FAST_HANDOFF),
            HostSpec(host_id=HOST_D, handoff=FAST_HANDOFF),
        ],
    )

    async def main() -> History:
        async with serving(world, [HOST_A, HOST_B, HOST_C]) as hosts:
            a = hosts[HOST_A]
            await a.create_object(
                OBJECT,
                tenant="default",
                data=json.dumps({"n": 1}).encode(),
                content_type="application/json",
                grant=GrantSpec(
                    audience=("spiffe://org-b.example", "spiffe://org-c.example"),
                    valid_for=timedelta(days=1),
                    capabilities=CapabilitySet.from_config(
                        [{"resource": "pubsub:alerts/*", "actions": ["publish"]}], "test"
                    ),
                    constraints=Constraints.from_claim({"max_hops": 5}),
                ),
            )
            await a.migrate(OBJECT, tenant="default", destination=HOST_B)
            await hosts[HOST_B].migrate(OBJECT, tenant="default", destination=HOST_C)
            c = hosts[HOST_C]
            at_c = await c.get_object(OBJECT, tenant="default")
            signer = c.context.signer
            transfer = sign_transfer(c, sealed_transfer(c, at_c, HOST_D))
            return History(
                at_c=at_c,
                archive=_archive(at_c, HOST_C, signer),
                transfer=transfer,
                bundles={},
                signer=signer,
                world=world,
            )

    made = asyncio.run(main())
    domains = ["org-a.example", "org-b.example", "org-c.example", "org-d.example"]
    return replace(made, bundles=_bundles(world, domains))


def run(history: History, file: bytes, domains: list[str] | None = None) -> Report:
    chosen = domains or ["org-a.example", "org-b.example", "org-c.example"]
    return audit(file, [(f"{d}.json", history.bundles[d]) for d in chosen], now=_now())


def failed(report: Report) -> dict[str, str]:
    return {c.name: c.detail for c in report.checks if c.status is Status.FAILED}


# --- the genuine history --------------------------------------------------------------


def test_the_archive_reports_three_holders_their_times_and_their_grants(history: History) -> None:
    report = run(history, history.archive)
    assert report.ok, failed(report)
    assert report.kind is Kind.ARCHIVE and report.object_id == OBJECT
    assert report.presenter == HOST_C and report.hops == 2
    assert [s.holder for s in report.stays] == [HOST_A, HOST_B, HOST_C]
    assert [s.received_from for s in report.stays] == ["", HOST_A, HOST_B]
    assert [s.departed_to for s in report.stays] == [HOST_B, HOST_C, ""]
    a, b, c = report.stays
    # Times and migrations come from the signed departures and arrivals, in order.
    assert a.departed_at is not None and b.arrived_at is not None
    assert a.departed_at <= b.arrived_at <= (b.departed_at or b.arrived_at)
    assert a.departure_migration == b.arrival_migration and a.departure_epoch == b.arrival_epoch
    assert b.departure_migration == c.arrival_migration
    # A held its root; B narrowed on arrival, so B and C hold from grant 1 (by B).
    assert len(report.grants) == 2
    root, child = report.grants
    assert root.issuer == HOST_A and root.parent is None and root.constraints == {"max_hops": 5}
    assert child.issuer == HOST_B and child.parent == 0
    # The creator is always an audience of the root it issues.
    assert set(root.audiences) == {HOST_A, "spiffe://org-b.example", "spiffe://org-c.example"}
    assert (a.grants_in_force, a.authority_from) == (1, 0)
    assert (b.grants_in_force, b.authority_from) == (2, 1)
    assert (c.grants_in_force, c.authority_from) == (2, 1)
    names = [check.name for check in report.checks]
    for expected in (
        "trust bundle org-a.example",
        f"file signature by {HOST_C}",
        "lineage",
        f"departure 0 by {HOST_A}",
        f"departure 1 by {HOST_B}",
        "custody",
        f"arrival 0 at {HOST_B}",
        f"arrival 1 at {HOST_C}",
        "archive holder",
        "grant 0",
        "grant 1",
        "grant chain",
        "narrowings kept",
        "authority at departure 0",
        "authority at departure 1",
    ):
        assert expected in names
    document = report.to_json()
    assert document["verified"] is True and len(document["custody"]) == 3
    assert json.loads(json.dumps(document)) == document


def test_a_transfer_reports_the_source_in_transit_to_its_destination(history: History) -> None:
    report = run(history, history.transfer)
    assert report.ok, failed(report)
    assert report.kind is Kind.TRANSFER and report.destination == HOST_D
    assert [s.holder for s in report.stays] == [HOST_A, HOST_B, HOST_C]
    last = report.stays[-1]
    assert last.departed_to == HOST_D and last.in_transit and report.hops == 3
    assert "the file's own departure" in [c.name for c in report.checks]


# --- tampered files and wrong bundles ---------------------------------------------------


def _flip_payload_byte(signed_json: bytes, marker: bytes, offset: int) -> bytes:
    """One byte of the signed payload changed (``offset`` bytes after ``marker``)."""
    envelope = dsse.from_json(signed_json, max_size=1 << 24)
    payload = bytearray(envelope.payload)
    where = payload.index(marker) + offset
    payload[where] ^= 0x01
    return dsse.to_json(replace(envelope, payload=bytes(payload)))


def _resigned(history: History, obj: GovernedObject, **changes: object) -> bytes:
    """C, dishonest, exports an altered archive and signs it with its real key."""
    return _archive(obj, HOST_C, history.signer, **changes)


def test_a_flipped_byte_fails_the_file_signature(history: History) -> None:
    report = run(history, _flip_payload_byte(history.archive, b'"tenant":"', 11))
    problems = failed(report)
    assert list(problems) == [f"file signature by {HOST_C}"], report.checks
    assert "does not verify" in problems[f"file signature by {HOST_C}"]


def test_a_flipped_byte_in_the_lineage_fails_before_anything_is_believed(
    history: History,
) -> None:
    report = run(history, _flip_payload_byte(history.archive, b'"lineage":"', 40))
    assert not report.ok and report.stays == () and report.grants == ()
    assert set(failed(report)) <= {"file payload", f"file signature by {HOST_C}"}


def test_a_flipped_byte_anywhere_in_the_file_never_verifies(history: History) -> None:
    """Every 97th byte of the archive file, flipped: bad input (2) or a failed check (1),
    never a verified report."""
    raw = history.archive
    for index in range(0, len(raw), 97):
        changed = bytearray(raw)
        changed[index] ^= 0x01
        try:
            report = run(history, bytes(changed))
        except ConfigError:
            continue
        assert not report.ok, f"byte {index} flipped still verifies"


def test_a_missing_arrival_fails_custody(history: History) -> None:
    obj = history.at_c
    dropped = replace(obj, lineage=replace(obj.lineage, arrivals=obj.lineage.arrivals[:1]))
    report = run(history, _resigned(history, dropped))
    problems = failed(report)
    assert list(problems) == ["custody"], report.checks
    assert "2 departures and 1 arrivals" in problems["custody"]


def test_a_stripped_grant_fails_the_kept_narrowing(history: History) -> None:
    obj = history.at_c
    report = run(history, _resigned(history, obj, grants=obj.grants[:1]))
    problems = failed(report)
    # B's narrowing is recorded at B's departure, which C cannot unsay; C's own last
    # entry also recorded the two grants.
    assert set(problems) == {"narrowings kept", "archive grants"}, report.checks
    assert "narrowing made on the way was dropped" in problems["narrowings kept"]


def test_a_bundle_of_the_wrong_domain_leaves_b_signatures_unverified(history: History) -> None:
    report = run(history, history.archive, ["org-a.example", "org-d.example", "org-c.example"])
    problems = failed(report)
    assert "lineage" in problems and "no trust bundle for org-b.example" in problems["lineage"]
    assert "grant 1" in problems


def test_a_forged_bundle_for_a_domain_fails_its_self_signature(history: History) -> None:
    # A bundle whose payload names org-b but whose signature is by org-d's keys.
    genuine = dsse.from_json(history.bundles["org-b.example"], max_size=1 << 20)
    by_d = dsse.from_json(history.bundles["org-d.example"], max_size=1 << 20)
    forged = dsse.to_json(replace(genuine, signatures=by_d.signatures))
    report = audit(
        history.archive,
        [
            ("a.json", history.bundles["org-a.example"]),
            ("b.json", forged),
            ("c.json", history.bundles["org-c.example"]),
        ],
        now=_now(),
    )
    problems = failed(report)
    assert "trust bundle org-b.example" in problems, report.checks
    assert not report.ok


def test_an_archive_signed_by_a_host_that_does_not_hold_it_fails(history: History) -> None:
    # B, which held the object before, exports C's copy as its own.
    obj = history.at_c
    b_key = history.signer  # C signs, but the archive names B: the file signature fails
    report = run(history, _archive(obj, HOST_B, b_key))
    assert f"file signature by {HOST_B}" in failed(report)


def test_the_cli_exits_1_with_one_error_line_naming_the_failed_check(
    history: History, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    obj = history.at_c
    bad = tmp_path / "bad.json"
    bad.write_bytes(_resigned(history, obj, grants=obj.grants[:1]))
    trusts: list[str] = []
    for domain in ("org-a.example", "org-b.example", "org-c.example"):
        path = tmp_path / f"{domain}.json"
        path.write_bytes(history.bundles[domain])
        trusts += ["--trust", str(path)]
    assert main(["verify", str(bad), *trusts, "-o", "json"]) == 1
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    assert document["verified"] is False
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gateway: error:")
    assert "narrowings kept" in lines[0] or "archive grants" in lines[0]
    good = tmp_path / "good.json"
    good.write_bytes(history.archive)
    assert main(["verify", str(good), *trusts]) == 0
    text = capsys.readouterr().out
    assert "verified: all" in text and "custody: who held it" in text


@pytest.mark.parametrize(
    ("content", "mentions"),
    [
        (b"not json at all", "not a signed gateway envelope"),
        (b"{}", "not a signed gateway envelope"),
        (None, "this file is a trust bundle"),
    ],
    ids=["garbage", "empty-object", "bundle-as-file"],
)
def test_input_that_is_not_a_verifiable_file_is_bad_input(
    history: History, content: bytes | None, mentions: str
) -> None:
    with pytest.raises(ConfigError, match=mentions):
        run(history, content if content is not None else history.bundles["org-a.example"])


def test_a_bundle_file_that_is_not_a_bundle_is_bad_input(history: History) -> None:
    with pytest.raises(ConfigError, match="not a signed trust bundle"):
        audit(history.archive, [("x.json", history.archive)], now=_now())


def test_the_archive_decoder_accepts_only_its_canonical_form(history: History) -> None:
    payload = dsse.from_json(history.archive, max_size=1 << 24).payload
    assert Archive.decode(payload).encode() == payload
    document = json.loads(payload)
    spaced = json.dumps(document, sort_keys=True).encode()
    with pytest.raises(Exception, match="canonical"):
        Archive.decode(spaced)


def test_an_archive_that_says_its_exporter_no_longer_holds_it_fails(history: History) -> None:
    report = run(history, _resigned(history, history.at_c, state="moved"))
    problems = failed(report)
    assert list(problems) == ["archive holder"], report.checks
    assert "does not hold it" in problems["archive holder"]


EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "verify"


def test_the_shipped_example_verifies_with_only_its_two_bundles(tmp_path: Path) -> None:
    """examples/verify/ (made by examples/verify_example.py --write, which the examples
    test runs afresh): `gateway verify` in an empty directory, judged at its signing time."""
    from gateway.testing import run_cli

    args = ["verify", EXAMPLE / "invoice-42.archive.json", "-o", "json"]
    for bundle in ("org-a.bundle.json", "org-b.bundle.json"):
        args += ["--trust", EXAMPLE / bundle]
    result = run_cli(*args, cwd=tmp_path, env={"GATEWAY_CONFIG": None})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["verified"] is True and report["hops"] == 1
    assert [s["holder"] for s in report["custody"]] == [
        "spiffe://org-a.example/cluster/east/gateway",
        "spiffe://org-b.example/cluster/west/gateway",
    ]
    assert [g["issuer"] for g in report["grants"]] == [
        "spiffe://org-a.example/cluster/east/gateway",
        "spiffe://org-b.example/cluster/west/gateway",
    ]
    # Without org-b's bundle nothing org-b signed verifies.
    alone = run_cli(
        "verify",
        EXAMPLE / "invoice-42.archive.json",
        "--trust",
        EXAMPLE / "org-a.bundle.json",
        cwd=tmp_path,
    )
    assert alone.returncode == 1 and alone.stderr.startswith("gateway: error:")
    assert len(alone.stderr.strip().splitlines()) == 1
