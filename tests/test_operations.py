"""An operator's day, through real processes (issue 14 points 5-7): reloads on SIGHUP and
on file change, migrations seen and finished from the journals, an interrupted migrate,
SIGTERM mid-handoff, and fleet moves (a 100-object drain watched on a pseudo-terminal).

Every check reads the outcome from the hosts' stores or from the commands' JSON output.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pty
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import load_config
from gateway.handoff.journal import Journal
from gateway.host import Host
from gateway.lineage import EntryKind
from gateway.model import GovernedObject, LifecycleState
from gateway.objectspec import parse_spec
from gateway.stores import Expect, StateStore
from gateway.testing import (
    HostSpec,
    ServerProcess,
    World,
    build_world,
    create_from_spec,
    read_store,
    run_cli,
    start_all,
)
from gateway.testing.invariants import assert_one_live_copy, snapshot
from tests.conftest import HOST_A, HOST_B

pytestmark = pytest.mark.slow

#: Short RPCs, but no staged copy asks its source on its own during a test: what settles
#: a handoff here is the command or signal under test, not background recovery.
HANDOFF = {"retry_attempts": 2, "rpc_timeout_seconds": 3, "stage_timeout_seconds": 300}
OFFERS = {"offers": [{"resource": "pubsub:*", "actions": ["publish"]}]}
WAIT_S = 40.0


def wait_for(what: str, condition: Callable[[], bool], timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def objects(config: Path, tenant: str = "default") -> dict[str, GovernedObject]:
    async def read(store: StateStore) -> dict[str, GovernedObject]:
        return {o.object_id: o for o in await Journal(store).objects(tenant)}

    return read_store(config, read)


def one_live_copy(world: World, object_id: str) -> str:
    snapshots = {}
    for host in (HOST_A, HOST_B):

        async def look(store: StateStore, host: str = host) -> Any:
            return await snapshot(store, host=host, tenant="default", object_id=object_id)

        snapshots[host] = read_store(world.config(host), look)
    return assert_one_live_copy(snapshots)


def create(config: Path, object_ids: list[str]) -> None:
    """Create small plain objects directly (the CLI would cost a process per object)."""

    async def main() -> None:
        host = await Host.open(load_config(config))
        try:
            for object_id in object_ids:
                await host.create_object(
                    object_id, tenant="default", data=b"{}", content_type="application/json"
                )
        finally:
            await host.close()

    asyncio.run(main())


def cli_json(*args: str, config: Path) -> Any:
    done = run_cli(*args, "-o", "json", config=config)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def log_of(server: ServerProcess) -> str:
    return server.log_path.read_text(errors="replace")


def world_of(tmp_path: Path, **b: Any) -> World:
    return build_world(
        tmp_path,
        [HostSpec(host_id=HOST_A, handoff=HANDOFF), HostSpec(host_id=HOST_B, handoff=HANDOFF, **b)],
    )


# --- point 5: reload without restart ----------------------------------------------------


def test_sighup_reload_lets_a_refused_peer_in_and_a_narrowed_policy_denies(
    tmp_path: Path,
) -> None:
    world = world_of(tmp_path, policy=OFFERS)
    config_a, config_b = world.config(HOST_A), world.config(HOST_B)
    # B forgets org-a: A's certificate and signatures are refused there.
    read_store(config_b, lambda s: s.delete("trust/org-a.example", etag=Expect.ANY))
    bundle = tmp_path / "org-a.bundle"
    assert run_cli("trust", "export", "--out", bundle, config=config_a).returncode == 0
    moving = "obj://org-a.example/ops/moving"
    create(config_a, [moving])
    resident = "obj://org-b.example/ops/resident"
    spec = parse_spec(
        {
            "data": {"amount": 2000},
            "grant": {
                "capabilities": [{"resource": "pubsub:alerts/overdue", "actions": ["publish"]}]
            },
            "cycle": {"interval_seconds": 0.3},
            "rules": [
                {
                    "name": "overdue",
                    "when": "data.amount > 1000",
                    "publish": {"topic": "alerts/overdue"},
                }
            ],
        },
        source="test",
    )

    async def make_resident() -> None:
        host = await Host.open(load_config(config_b))
        try:
            obj = await create_from_spec(host, resident, spec)
            assert obj.authority.permits("pubsub:alerts/overdue", "publish")
        finally:
            await host.close()

    asyncio.run(make_resident())

    with contextlib.ExitStack() as stack:
        # B reloads on SIGHUP only; A also watches its files (every 0.3 s).
        server_b = ServerProcess(config_b, args=["--reload-interval", "0"])
        server_a = ServerProcess(config_a, args=["--reload-interval", "0.3"])
        start_all(stack, server_a, server_b)

        refused = run_cli("migrate", moving, "--to", HOST_B, config=config_a)
        assert refused.returncode == 1, refused.stderr
        assert objects(config_a)[moving].state is LifecycleState.ACTIVE

        imported = run_cli("trust", "import", bundle, config=config_b)
        assert imported.returncode == 0, imported.stderr
        assert "SIGHUP" in imported.stdout and "restart" not in imported.stdout
        os.kill(server_b.pid, signal.SIGHUP)
        wait_for("B's reload", lambda: "reloaded (SIGHUP): trust org-a.example" in log_of(server_b))
        moved = run_cli("migrate", moving, "--to", HOST_B, config=config_a)
        assert moved.returncode == 0, moved.stderr
        assert one_live_copy(world, moving) == HOST_B

        # A configuration that does not parse: one line, and B goes on as it was.
        good = config_b.read_text()
        config_b.write_text(good + "policy: [\n")
        os.kill(server_b.pid, signal.SIGHUP)
        wait_for("the refused reload", lambda: "failed; still running" in log_of(server_b))
        failure = [
            line for line in log_of(server_b).splitlines() if "failed; still running" in line
        ]
        assert len(failure) == 1 and str(config_b) in failure[0], failure

        # A setting a running server cannot change: refused whole, saying to restart.
        document = yaml.safe_load(good)
        config_b.write_text(yaml.safe_dump({**document, "listen": "127.0.0.1:1"}))
        os.kill(server_b.pid, signal.SIGHUP)
        wait_for("the restart-only refusal", lambda: "listen changed" in log_of(server_b))
        assert "restart `gateway serve`" in log_of(server_b)

        # Narrow B's policy: the resident object is admitted again at once, recorded.
        document["policy"] = {"offers": [{"resource": "state:self", "actions": ["read"]}]}
        config_b.write_text(yaml.safe_dump(document))
        os.kill(server_b.pid, signal.SIGHUP)
        wait_for("B's policy reload", lambda: "reloaded (SIGHUP): policy" in log_of(server_b))

        def narrowed_and_denied() -> bool:
            obj = objects(config_b)[resident]
            updates = [e for e in obj.lineage.entries if e.kind is EntryKind.UPDATED]
            if not updates or obj.authority.permits("pubsub:alerts/overdue", "publish"):
                return False
            after = obj.lineage.entries[updates[-1].seq + 1 :]
            return any(e.kind is EntryKind.ACTION_DENIED for e in after)

        wait_for("the narrowed authority and a denial after it", narrowed_and_denied)
        entry = [
            e for e in objects(config_b)[resident].lineage.entries if e.kind is EntryKind.UPDATED
        ]
        assert "re-admitted under this host's reloaded configuration" in entry[-1].detail
        assert "pubsub:alerts/overdue" in entry[-1].detail

        # A reloads by itself when its configuration file changes.
        document_a = yaml.safe_load(config_a.read_text())
        document_a["policy"] = OFFERS
        config_a.write_text(yaml.safe_dump(document_a))
        wait_for(
            "A's reload on a file change",
            lambda: "reloaded (files changed): policy" in log_of(server_a),
        )


# --- point 6: migrations you can see and finish -------------------------------------------


def test_migration_list_show_resume_abort_on_interrupted_migrations(tmp_path: Path) -> None:
    world = world_of(tmp_path)
    config_a, config_b = world.config(HOST_A), world.config(HOST_B)
    first, second = "obj://org-a.example/ops/first", "obj://org-a.example/ops/second"
    create(config_a, [first, second])
    with contextlib.ExitStack() as stack:
        start_all(stack, ServerProcess(config_a), ServerProcess(config_b))

        # Killed right after freezing: nothing was sent.
        crashed = run_cli(
            "migrate",
            first,
            "--to",
            HOST_B,
            config=config_a,
            env={"GATEWAY_TEST_CRASH_AT": "source.after-freeze"},
        )
        assert crashed.returncode == -signal.SIGKILL
        listed = cli_json("migration", "list", config=config_a)
        assert [(m["object_id"], m["side"], m["step"]) for m in listed] == [
            (first, "source", "frozen")
        ]
        migration = listed[0]["migration_id"]
        shown = cli_json("migration", "show", migration, config=config_a)
        assert shown["records"][0]["object_state_here"] == "frozen"
        assert f"gateway migration resume {migration}" in shown["records"][0]["next"]
        resumed = cli_json("migration", "resume", migration, config=config_a)
        assert resumed["step"] == "done" and not resumed["open"]
        assert one_live_copy(world, first) == HOST_B
        assert cli_json("migration", "list", config=config_a) == []

        # Killed after B staged it: B sees a staged copy it may not abort itself.
        crashed = run_cli(
            "migrate",
            second,
            "--to",
            HOST_B,
            config=config_a,
            env={"GATEWAY_TEST_CRASH_AT": "source.after-prepare"},
        )
        assert crashed.returncode == -signal.SIGKILL
        staged = cli_json("migration", "list", config=config_b)
        assert [(m["object_id"], m["side"], m["step"]) for m in staged] == [
            (second, "destination", "staged")
        ]
        migration = staged[0]["migration_id"]
        refused = run_cli("migration", "abort", migration, config=config_b)
        assert refused.returncode == 1
        assert f"gateway migration resume {migration}" in refused.stderr
        aborted = cli_json("migration", "abort", migration, config=config_a)
        assert aborted["step"] == "aborted"
        wait_for(
            "B to discard its staged copy",
            lambda: (
                cli_json("migration", "show", migration, config=config_b)["records"][0]["step"]
                == "aborted"
            ),
        )
        assert one_live_copy(world, second) == HOST_A
        history = cli_json("migration", "list", "--all", config=config_a)
        assert sorted(m["step"] for m in history) == ["aborted", "done"]
        again = run_cli("migration", "abort", resumed["migration_id"], config=config_a)
        assert again.returncode == 1 and "can no longer be aborted" in again.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupted_migrate_says_how_to_finish_it(tmp_path: Path, signum: int) -> None:
    world = world_of(tmp_path)
    config_a = world.config(HOST_A)
    object_id = "obj://org-a.example/ops/stuck"
    create(config_a, [object_id])
    # B's port accepts connections and never answers: the Prepare hangs, as over a
    # network that went silent.
    port = int(next(p for p in load_config(config_a).peers).address.rsplit(":", 1)[1])
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", port))
        hole.listen(16)
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                "migrate",
                object_id,
                "--to",
                HOST_B,
                "--config",
                str(config_a),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "COLUMNS": "300"},
        )
        try:
            wait_for(
                "the freeze", lambda: objects(config_a)[object_id].state is LifecycleState.FROZEN
            )
            process.send_signal(signum)
            _out, err = process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
    assert process.returncode == {signal.SIGTERM: 143, signal.SIGINT: 130}[signum]
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    found = re.search(r"`gateway migration abort (mig-[0-9a-f]+) --config (\S+)`", lines[0])
    assert found and f"gateway migration resume {found[1]}" in lines[0], lines[0]
    undo = run_cli("migration", "abort", found[1], "--config", found[2])
    assert undo.returncode == 0, undo.stderr
    assert objects(config_a)[object_id].state is LifecycleState.ACTIVE


@pytest.mark.parametrize(
    ("crash_at", "holder"),
    [("source.after-prepare", HOST_A), ("source.after-commit-journal", HOST_B)],
)
def test_sigterm_mid_handoff_settles_it_and_exits_zero(
    tmp_path: Path, crash_at: str, holder: str
) -> None:
    world = world_of(tmp_path)
    config_a, config_b = world.config(HOST_A), world.config(HOST_B)
    object_id = "obj://org-a.example/ops/in-flight"
    create(config_a, [object_id])
    with contextlib.ExitStack() as stack:
        server_b = ServerProcess(config_b, args=["--grace", "4"])
        start_all(stack, ServerProcess(config_a), server_b)
        crashed = run_cli(
            "migrate",
            object_id,
            "--to",
            HOST_B,
            config=config_a,
            env={"GATEWAY_TEST_CRASH_AT": crash_at},
        )
        assert crashed.returncode == -signal.SIGKILL
        staged = cli_json("migration", "list", config=config_b)
        assert [m["step"] for m in staged] == ["staged"]
        assert server_b.process is not None
        server_b.process.send_signal(signal.SIGTERM)
        assert server_b.process.wait(timeout=30) == 0
        assert "drained" in log_of(server_b)
        # The staged copy followed its source: committed → live on B; not → back on A.
        assert one_live_copy(world, object_id) == holder
        assert cli_json("migration", "list", config=config_b) == []


# --- point 7: fleet moves ------------------------------------------------------------------


def _run_in_pty(argv: list[str]) -> tuple[int, str, str]:
    """Run with stderr on a pseudo-terminal and stdout on a pipe; (status, stdout, tty)."""
    master, slave = pty.openpty()
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return  # EIO: the child closed its end
            if not data:
                return
            chunks.append(data)

    env = {**os.environ, "COLUMNS": "120", "TERM": "xterm"}
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=slave, env=env)
    os.close(slave)
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    stdout, _ = process.communicate(timeout=240)
    reader.join(timeout=10)
    os.close(master)
    return process.returncode, stdout.decode(), b"".join(chunks).decode(errors="replace")


def test_drain_of_100_objects_with_progress_on_a_terminal(tmp_path: Path) -> None:
    world = build_world(
        tmp_path,
        [
            HostSpec(host_id=HOST_A, handoff={**HANDOFF, "rpc_timeout_seconds": 30}),
            HostSpec(host_id=HOST_B, handoff={**HANDOFF, "rpc_timeout_seconds": 30}),
        ],
    )
    config_a, config_b = world.config(HOST_A), world.config(HOST_B)
    ids = [f"obj://org-a.example/fleet/o-{n:03d}" for n in range(100)]
    create(config_a, ids)
    with contextlib.ExitStack() as stack:
        start_all(stack, ServerProcess(config_b))
        status, stdout, terminal = _run_in_pty(
            [
                sys.executable,
                "-m",
                "gateway",
                "drain",
                "--to",
                HOST_B,
                "--parallel",
                "8",
                "-o",
                "json",
                "--config",
                str(config_a),
            ]
        )
    assert status == 0, terminal
    report = json.loads(stdout)
    assert (report["total"], report["moved"], report["failed"]) == (100, 100, 0)
    assert sorted(r["object_id"] for r in report["results"]) == ids
    assert all(r["outcome"] == "moved" and r["migration_id"] for r in report["results"])
    assert "draining to" in terminal and "100/100" in terminal, terminal[-2000:]
    on_b = objects(config_b)
    assert all(on_b[i].state is LifecycleState.ACTIVE for i in ids)
    assert all(o.state is LifecycleState.MOVED for o in objects(config_a).values())


def test_migrate_several_by_label_with_a_failure_listed(tmp_path: Path) -> None:
    world = world_of(tmp_path)
    config_a, config_b = world.config(HOST_A), world.config(HOST_B)
    ids = [f"obj://org-a.example/fleet/l-{n}" for n in range(4)]
    create(config_a, ids)
    for object_id in ids[:2]:
        labelled = run_cli("object", "label", object_id, "team=billing", config=config_a)
        assert labelled.returncode == 0, labelled.stderr
    shown = cli_json("object", "label", ids[0], config=config_a)
    assert shown["labels"] == {"team": "billing"}
    with contextlib.ExitStack() as stack:
        start_all(stack, ServerProcess(config_b))
        by_label = cli_json("migrate", "--label", "team=billing", "--to", HOST_B, config=config_a)
        assert sorted(r["object_id"] for r in by_label["results"]) == ids[:2]
        assert by_label["moved"] == 2
        missing = "obj://org-a.example/fleet/missing"
        batch = run_cli("migrate", ids[2], missing, ids[3], "--to", HOST_B, config=config_a)
    assert batch.returncode == 3, batch.stderr
    assert "failed" in batch.stdout and missing in batch.stdout and "no object" in batch.stdout
    assert re.search(r"moved\s*│\s*2", batch.stdout), batch.stdout
    placed = objects(config_b)
    assert all(placed[i].state is LifecycleState.ACTIVE for i in ids)
    assert missing not in objects(config_a)


@pytest.mark.parametrize(
    ("text", "removal", "expected", "reason"),
    [
        ("team=billing", False, ("team", "billing"), "a label"),
        ("team=", False, ("team", ""), "an empty value is a value"),
        ("team-", True, ("team", None), "removal"),
        ("team-", False, None, "removal only where removing is allowed"),
        ("Team=x", False, None, "keys are lowercase"),
        ("team=" + "x" * 64, False, None, "values are at most 63 characters"),
        ("team=a b", False, None, "no spaces"),
        ("noequals", False, None, "KEY=VALUE"),
    ],
)
def test_label_syntax(
    text: str, removal: bool, expected: tuple[str, str | None] | None, reason: str
) -> None:
    from gateway.errors import ConfigError
    from gateway.fleet import parse_label

    if expected is None:
        with pytest.raises(ConfigError):
            parse_label(text, removal=removal)
    else:
        assert parse_label(text, removal=removal) == expected, reason
