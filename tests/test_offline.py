"""The handoff over files (gateway.handoff.offline), through the real CLI as separate
processes, with no gateway serving and no network between the hosts: only files move.

Each organization has its own CA, keys and SQLite file; the stores are read back after
every step to check that at most one copy is live, and exactly one once settled.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import pytest

from gateway import envelope as dsse
from gateway.handoff.journal import Journal
from gateway.handoff.offline import MAGIC
from gateway.model import GovernedObject, LifecycleState
from gateway.stores import StateStore
from gateway.testing import HostSpec, World, build_world, read_store, run_cli
from tests.conftest import HOST_A, HOST_B

pytestmark = pytest.mark.slow

HOST_C = "spiffe://org-c.example/cluster/one/gateway"
OBJECT = "obj://org-a.example/billing/invoice-77"


@pytest.fixture
def world(tmp_path: Path) -> World:
    return build_world(tmp_path / "world", [HostSpec(host_id=h) for h in (HOST_A, HOST_B, HOST_C)])


def cli(
    world: World, host: str, *args: str | Path, env: dict[str, str] | None = None, ok: bool = True
):  # type: ignore[no-untyped-def]
    result = run_cli(*args, config=world.config(host), env=env)
    if ok:
        assert result.returncode == 0, result.stderr
    return result


def state(world: World, host: str) -> GovernedObject | None:
    async def read(store: StateStore) -> GovernedObject | None:
        loaded = await Journal(store).object("default", OBJECT)
        return loaded.value if loaded else None

    return read_store(world.config(host), read)


def live(world: World) -> list[str]:
    """The hosts where the object is live (ACTIVE, or FROZEN with the right to resume)."""
    found = []
    for host in (HOST_A, HOST_B, HOST_C):
        obj = state(world, host)
        if obj is not None and obj.live:
            found.append(host)
    return found


def create(world: World, *, data: dict[str, object] | None = None) -> None:
    cli(world, HOST_A, "object", "create", OBJECT, "--data", json.dumps(data or {"n": 77}))


def test_a_round_of_files_moves_the_only_live_copy(world: World, tmp_path: Path) -> None:
    create(world)
    t, r, c, d = (tmp_path / name for name in ("t.gwx", "r.json", "c.json", "d.json"))
    exported = cli(world, HOST_A, "export", OBJECT, "--to", HOST_B, "-o", t)
    assert "frozen for" in exported.stdout and t.read_bytes().startswith(MAGIC)
    assert live(world) == [HOST_A] and state(world, HOST_A).state is LifecycleState.FROZEN  # type: ignore[union-attr]

    # A third party verifies the transfer file with org-a's bundle alone, offline.
    bundle = tmp_path / "org-a.bundle.json"
    cli(world, HOST_A, "trust", "export", "--out", bundle)
    verified = run_cli("verify", t, "--trust", bundle, "-o", "json", cwd=tmp_path)
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout)["object_id"] == OBJECT

    cli(world, HOST_B, "import", t, "-o", r)
    assert live(world) == [HOST_A], "staged is not live"
    assert json.loads(r.read_text())["payloadType"] == dsse.PayloadType.STAGED_RECEIPT
    again = tmp_path / "r2.json"
    cli(world, HOST_B, "import", t, "-o", again)  # the same file again: the same receipt
    assert again.read_bytes() == r.read_bytes()

    cli(world, HOST_A, "export", "--complete", r, "-o", c)
    assert live(world) == [], "committed: the source is MOVED, the destination not yet live"
    cli(world, HOST_B, "import", c, "-o", d)
    assert live(world) == [HOST_B]
    done = cli(world, HOST_A, "export", "--complete", d)
    assert "done" in done.stdout

    on_b = state(world, HOST_B)
    assert on_b is not None and on_b.state is LifecycleState.ACTIVE and on_b.epoch == 1
    assert on_b.data == json.dumps({"n": 77}).encode()
    lineage = cli(world, HOST_B, "lineage", OBJECT)
    assert "custody verified: 1 handoff(s)" in lineage.stdout
    # A replayed transfer file, after it settled, changes nothing.
    replayed = cli(world, HOST_B, "import", t, "-o", tmp_path / "x.json", ok=False)
    assert replayed.returncode == 1 and "already accepted" in replayed.stderr


def test_abort_before_commit_resumes_the_source_and_the_receiver_discards(
    world: World, tmp_path: Path
) -> None:
    create(world)
    t, r, x = tmp_path / "t.gwx", tmp_path / "r.json", tmp_path / "x.json"
    cli(world, HOST_A, "export", OBJECT, "--to", HOST_B, "-o", t)
    cli(world, HOST_B, "import", t, "-o", r)
    source_keys = read_store(world.config(HOST_A), lambda s: s.list("journal/source/"))
    migration_id = source_keys[0].removeprefix("journal/source/")
    cli(world, HOST_A, "export", "--abort", migration_id, "-o", x)
    assert live(world) == [HOST_A] and state(world, HOST_A).state is LifecycleState.ACTIVE  # type: ignore[union-attr]
    # A receipt after the abort cannot commit.
    late = cli(world, HOST_A, "export", "--complete", r, "-o", tmp_path / "c.json", ok=False)
    assert late.returncode == 1 and "aborted" in late.stderr
    cli(world, HOST_B, "import", x)
    opened = read_store(world.config(HOST_B), lambda s: s.list("open/"))
    assert opened == [], "the staged copy was discarded"
    assert live(world) == [HOST_A]


def test_tampered_foreign_and_out_of_order_files_are_refused(world: World, tmp_path: Path) -> None:
    create(world)
    t, r = tmp_path / "t.gwx", tmp_path / "r.json"
    cli(world, HOST_A, "export", OBJECT, "--to", HOST_B, "-o", t)

    # Addressed to B: C refuses it (audience), and nothing is staged on C.
    foreign = cli(world, HOST_C, "import", t, "-o", tmp_path / "rc.json", ok=False)
    assert foreign.returncode == 1 and "addressed to" in foreign.stderr
    # One changed byte in the signed part: refused.
    raw = bytearray(t.read_bytes())
    raw[len(MAGIC) + 200] ^= 0x01
    tampered = tmp_path / "tampered.gwx"
    tampered.write_bytes(bytes(raw))
    refused = cli(world, HOST_B, "import", tampered, "-o", tmp_path / "rt.json", ok=False)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    # Truncated: refused with a clear line.
    truncated = tmp_path / "truncated.gwx"
    truncated.write_bytes(t.read_bytes()[:-10])
    cut = cli(world, HOST_B, "import", truncated, "-o", tmp_path / "rr.json", ok=False)
    assert cut.returncode != 0 and "truncated" in cut.stderr
    # Out of order: a receipt the sender never asked for, a commit file before the stage.
    cli(world, HOST_B, "import", t, "-o", r)
    c = tmp_path / "c.json"
    cli(world, HOST_A, "export", "--complete", r, "-o", c)
    # The commit file given to C, which staged nothing: refused (not addressed to it).
    wrong = cli(world, HOST_C, "import", c, "-o", tmp_path / "dc.json", ok=False)
    assert wrong.returncode == 1
    assert live(world) == []
    cli(world, HOST_B, "import", c, "-o", tmp_path / "d.json")
    assert live(world) == [HOST_B]
    for host in (HOST_C,):
        assert read_store(world.config(host), lambda s: s.list("journal/")) == []


def test_an_expired_transfer_file_is_refused(tmp_path: Path) -> None:
    # B tolerates 1 s of clock skew, so a transfer valid for ~1 s is expired 3 s later.
    world = build_world(
        tmp_path / "world",
        [HostSpec(host_id=HOST_A), HostSpec(host_id=HOST_B, handoff={"clock_skew_seconds": 1})],
    )
    create(world)
    t = tmp_path / "t.gwx"
    cli(world, HOST_A, "export", OBJECT, "--to", HOST_B, "--ttl-hours", "0.0003", "-o", t)
    time.sleep(3)
    expired = cli(world, HOST_B, "import", t, "-o", tmp_path / "r.json", ok=False)
    assert expired.returncode == 1 and "expired" in expired.stderr, expired.stderr
    assert read_store(world.config(HOST_B), lambda s: s.list("journal/")) == []


@pytest.mark.parametrize(
    ("step", "point"),
    [
        ("export", "source.after-freeze"),
        ("import", "destination.before-stage"),
        ("import", "destination.after-stage"),
        ("complete", "source.after-commit-journal"),
        ("commit", "destination.before-activate"),
        ("commit", "destination.after-activate"),
    ],
)
def test_a_kill_at_every_step_recovers_by_running_it_again(
    world: World, tmp_path: Path, step: str, point: str
) -> None:
    create(world)
    t, r, c, d = (tmp_path / name for name in ("t.gwx", "r.json", "c.json", "d.json"))
    crash = {"GATEWAY_TEST_CRASH_AT": point}

    def run(this: str, host: str, *args: str | Path) -> None:
        if this == step:
            killed = run_cli(*args, config=world.config(host), env=crash)
            assert killed.returncode == -9, killed.stderr
            assert len(live(world)) <= 1
        cli(world, host, *args)

    if step == "export":
        killed = run_cli(
            "export", OBJECT, "--to", HOST_B, "-o", t, config=world.config(HOST_A), env=crash
        )
        assert killed.returncode == -9 and not t.exists()
        # Frozen, no file: write the file again from the journal.
        keys = read_store(world.config(HOST_A), lambda s: s.list("journal/source/"))
        cli(world, HOST_A, "export", "--resume", keys[0].removeprefix("journal/source/"), "-o", t)
    else:
        cli(world, HOST_A, "export", OBJECT, "--to", HOST_B, "-o", t)
    run("import", HOST_B, "import", t, "-o", r)
    run("complete", HOST_A, "export", "--complete", r, "-o", c)
    run("commit", HOST_B, "import", c, "-o", d)
    cli(world, HOST_A, "export", "--complete", d)
    assert live(world) == [HOST_B]
    on_b = state(world, HOST_B)
    assert on_b is not None and on_b.data == json.dumps({"n": 77}).encode()


def test_a_large_object_streams_through_the_file(world: World, tmp_path: Path) -> None:
    blob = tmp_path / "big.bin"
    blob.write_bytes(bytes(range(256)) * (3 * 4096 + 7))  # ~3 MiB: three chunks and a bit
    cli(
        world,
        HOST_A,
        "object",
        "create",
        OBJECT,
        "--data-file",
        blob,
        "--content-type",
        "application/octet-stream",
    )
    t, r, c, d = (tmp_path / name for name in ("t.gwx", "r.json", "c.json", "d.json"))
    cli(world, HOST_A, "export", OBJECT, "--to", HOST_B, "-o", t)
    assert t.stat().st_size > blob.stat().st_size
    cli(world, HOST_B, "import", t, "-o", r)
    cli(world, HOST_A, "export", "--complete", r, "-o", c)
    cli(world, HOST_B, "import", c, "-o", d)
    on_b = state(world, HOST_B)
    assert on_b is not None and on_b.blob is not None and on_b.size == blob.stat().st_size
    assert replace(on_b, lineage=on_b.lineage).state is LifecycleState.ACTIVE
