"""The ``gateway`` command fits the tools around it (docs/cli.md): every argument has help,
every command that prints data takes ``-o json`` and prints one JSON document, output that
is piped is neither wrapped nor cut, ``--version`` answers, and every failure is one line
with an exit status from the documented table.

The parser is walked, not listed: a command added later without help or without
``-o json`` fails here by name. Behaviour runs through real processes (``run_cli``,
``ServerProcess``) on worlds built by ``gateway.testing.build_world``.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.cli import EXIT_STATUS, build_parser
from gateway.testing import HostSpec, ServerProcess, World, build_world, run_cli
from tests.conftest import HOST_A, HOST_B

DOCS = Path(__file__).resolve().parents[1] / "docs" / "cli.md"

#: Commands that print no data (they act, and say what they did in a sentence), each with
#: why. Every other command must take ``-o json``.
NO_DATA = {
    "demo": "a walkthrough for people; its data is in the hosts it leaves behind",
    "init": "writes a host directory",
    "serve": "a server; prints one line when ready",
    "certs ca": "writes files",
    "certs host": "writes files",
    "keys init": "prints the new keys as `keys list` does; `keys list -o json` is the data",
    "keys add": "writes a key",
    "keys retire": "changes a key",
    "keys revoke": "changes a key; `--dry-run` lists affected objects for people",
    "trust export": "writes the bundle itself (JSON) to a file or standard output",
    "trust import": "changes trust",
    "object release": "changes scheduling",
    "export": "writes handoff files; its -o names the file",
    "import": "writes handoff files; its -o names the file",
}


#: Data commands whose ``-o json`` another process test runs and parses (file, test): they
#: need a scene of their own (a running peer, an interrupted migration, a moved object).
ELSEWHERE = {
    "sweep": (
        "tests/test_storage_sweep.py",
        "test_gateway_sweep_lists_then_deletes_only_the_orphan_and_names_an_unreadable_record",
    ),
    "object archive": (
        "tests/test_compaction_runtime.py",
        "test_an_object_compacted_on_two_hosts_verifies_offline_from_both_archives",
    ),
    "call": (
        "tests/test_calls.py",
        "test_calls_admitted_denied_counted_and_moved_through_processes",
    ),
    "drain": ("tests/test_operations.py", "test_drain_of_100_objects_with_progress_on_a_terminal"),
    "health": ("tests/test_observability.py", "test_health_follows_readiness_and_draining"),
    "migration list": (
        "tests/test_operations.py",
        "test_migration_list_show_resume_abort_on_interrupted_migrations",
    ),
    "migration show": (
        "tests/test_operations.py",
        "test_migration_list_show_resume_abort_on_interrupted_migrations",
    ),
    "migration resume": (
        "tests/test_operations.py",
        "test_migration_list_show_resume_abort_on_interrupted_migrations",
    ),
    "migration abort": (
        "tests/test_operations.py",
        "test_migration_list_show_resume_abort_on_interrupted_migrations",
    ),
    "object label": (
        "tests/test_operations.py",
        "test_migrate_several_by_label_with_a_failure_listed",
    ),
}


def _commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every parser in the tree with its command path; leaves and groups alike."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*path, name))


def _is_leaf(parser: argparse.ArgumentParser) -> bool:
    return not any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)


COMMANDS = list(_commands(build_parser()))
LEAVES = {" ".join(path): parser for path, parser in COMMANDS if path and _is_leaf(parser)}


def test_the_tree_was_walked() -> None:
    """A guard for the tests below: they check something only if commands were found."""
    assert {"serve", "object list", "trust list", "keys list", "verify"} <= set(LEAVES)


def test_every_argument_has_help() -> None:
    missing = [
        f"gateway {' '.join(path)}: {action.dest}".strip()
        for path, parser in COMMANDS
        for action in parser._actions
        if not isinstance(action, argparse._SubParsersAction)
        and (not action.help or action.help == argparse.SUPPRESS)
    ]
    assert not missing, "arguments without help:\n" + "\n".join(missing)


def test_every_command_has_help() -> None:
    """Each subcommand has the one-line help that `gateway COMMAND --help` lists."""
    missing = []
    for path, parser in COMMANDS:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helped = {c.dest for c in action._choices_actions if c.help}
                missing += [f"{' '.join((*path, n))}" for n in action.choices if n not in helped]
    assert not missing, f"commands without help: {missing}"


def _json_option(parser: argparse.ArgumentParser) -> argparse.Action | None:
    for action in parser._actions:
        if "-o" in action.option_strings and action.choices and "json" in action.choices:
            return action
    return None


def test_every_data_command_takes_output_json() -> None:
    """A command prints data (and takes -o json) unless NO_DATA says why it does not."""
    without = sorted(n for n, p in LEAVES.items() if n not in NO_DATA and not _json_option(p))
    assert not without, f"commands that print data but take no -o json: {without}"
    stale = sorted(set(NO_DATA) - set(LEAVES))
    assert not stale, f"NO_DATA names commands that no longer exist: {stale}"


def test_the_exit_status_table_is_documented() -> None:
    """docs/cli.md lists every status `gateway --help` lists, and no other."""
    helped = set(re.findall(r"^\s+(\d+)\s", EXIT_STATUS, re.M))
    documented = set(re.findall(r"^\| (\d+) \|", DOCS.read_text(encoding="utf-8"), re.M))
    assert helped == documented == {"0", "1", "2", "3", "70", "130", "143"}


def test_algorithm_choices_are_the_algorithms() -> None:
    """The parser spells them out (no cryptography import for --help): the same names."""
    from gateway.cli import ALGORITHMS
    from gateway.keys import Algorithm

    assert tuple(a.value for a in Algorithm) == ALGORITHMS


def test_version(tmp_path: Path) -> None:
    done = run_cli("--version", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(
        r"gateway \d+\.\d+\.\d+\S* \(protocol [\d,]+; formats [\d,]+; features \S+\)\n",
        done.stdout,
    ), done.stdout


# --- behaviour, through processes -----------------------------------------------------


def _one_line_error(done: Any, code: int, *needles: str) -> str:
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.startswith("gateway:")]
    assert len(lines) == 1 and lines[0].startswith("gateway: error: "), done.stderr
    assert "Traceback" not in done.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_a_malformed_listen_is_refused_at_once(tmp_path: Path) -> None:
    """`init --listen` that is not HOST:PORT: exit 2 naming the expected form, and no
    host directory half written."""
    target = tmp_path / "host"
    done = run_cli("init", target, "--host-id", HOST_A, "--listen", "localhost", cwd=tmp_path)
    _one_line_error(done, 2, "HOST:PORT", "localhost")
    assert not target.exists()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("conventions")
    offers = {"offers": [{"resource": "state:self", "actions": ["read", "write"]}]}
    return build_world(
        root,
        [
            HostSpec(host_id=HOST_A, policy=offers, handoff={"retry_attempts": 2}),
            HostSpec(host_id=HOST_B, policy=offers, handoff={"retry_attempts": 2}),
        ],
    )


def test_a_missing_store_is_an_error_not_a_new_store(world: World, tmp_path: Path) -> None:
    """A mistyped store path: exit 2 naming the file; nothing is created there."""
    document = yaml.safe_load(world.config(HOST_A).read_text(encoding="utf-8"))
    document["store"] = {"sqlite": "stat.db"}  # a typo of state.db
    config = world.config(HOST_A).with_name("typo.yaml")
    config.write_text(yaml.safe_dump(document), encoding="utf-8")
    done = run_cli("object", "list", config=config, cwd=tmp_path)
    _one_line_error(done, 2, "stat.db", "does not exist")
    assert not (config.parent / "stat.db").exists()


@pytest.mark.slow
def test_a_port_in_use_is_an_error(world: World, tmp_path: Path) -> None:
    """A second `serve` on the port of a running one exits 2 at once (no SO_REUSEPORT
    sharing), and the first keeps serving."""
    first = ServerProcess(world.config(HOST_A)).start()
    try:
        done = run_cli("serve", config=world.config(HOST_A), cwd=tmp_path, timeout=60)
        _one_line_error(done, 2, "cannot listen on", "in use")
        assert first.process is not None and first.process.poll() is None
    finally:
        first.stop()


LONG_ID = "obj://org-a.example/billing/" + "a-rather-long-invoice-name-" * 4 + "42"


def test_piped_output_is_neither_wrapped_nor_cut(world: World, tmp_path: Path) -> None:
    """With no COLUMNS and stdout a pipe, rich would assume 80 columns: fingerprints and
    long ids must still come out whole, each row on one line."""
    created = run_cli(
        "object", "create", LONG_ID, "--data", "{}", config=world.config(HOST_A), cwd=tmp_path
    )
    assert created.returncode == 0, created.stderr
    listing = run_cli(
        "object",
        "list",
        config=world.config(HOST_A),
        cwd=tmp_path,
        columns=None,
        env={"COLUMNS": None},
    )
    assert listing.returncode == 0, listing.stderr
    assert any(LONG_ID in line for line in listing.stdout.splitlines()), listing.stdout
    trust = run_cli(
        "trust",
        "list",
        config=world.config(HOST_A),
        cwd=tmp_path,
        columns=None,
        env={"COLUMNS": None},
    )
    assert trust.returncode == 0, trust.stderr
    fingerprints = re.findall(r"\b[0-9a-f]{64}\b", trust.stdout)
    assert len(fingerprints) == 2, trust.stdout  # own domain and the peer's, whole
    assert "…" not in trust.stdout
    keys = run_cli(
        "keys",
        "list",
        config=world.config(HOST_A),
        cwd=tmp_path,
        columns=None,
        env={"COLUMNS": None},
    )
    assert keys.returncode == 0, keys.stderr
    assert re.search(r"\b[0-9a-f]{32,}\b", keys.stdout) and "…" not in keys.stdout, keys.stdout


TRAILED = "obj://org-a.example/billing/piped-lines"


def test_piped_lines_end_at_their_last_character(world: World, tmp_path: Path) -> None:
    """Piped, no line carries trailing blanks: rich pads a borderless table's last column
    (``object show``'s values, ``migration show``) and a table's title (``lineage``) to the
    table's width, which every program reading the lines would have to strip."""
    created = run_cli(
        "object",
        "create",
        TRAILED,
        "--data",
        '{"n": 1}',
        config=world.config(HOST_A),
        cwd=tmp_path,
    )
    assert created.returncode == 0, created.stderr
    for args in (
        ("object", "show", TRAILED),
        ("object", "list"),
        ("lineage", TRAILED),
        ("trust", "list"),
        ("keys", "list"),
    ):
        done = run_cli(*args, config=world.config(HOST_A), cwd=tmp_path, columns=None)
        assert done.returncode == 0, (args, done.stderr)
        lines = done.stdout.splitlines()
        assert len(lines) > 2, (args, done.stdout)
        padded = [line for line in lines if line != line.rstrip()]
        assert not padded, (args, padded)


def _json(*args: str | Path, world: World, host: str, cwd: Path) -> Any:
    done = run_cli(*args, "-o", "json", config=world.config(host), cwd=cwd)
    assert done.returncode == 0, (args, done.stderr)
    try:
        return json.loads(done.stdout)
    except json.JSONDecodeError as exc:
        pytest.fail(
            f"gateway {' '.join(map(str, args))} -o json printed no JSON: {exc}\n{done.stdout}"
        )


@pytest.mark.slow
def test_every_data_command_prints_json(world: World, tmp_path: Path) -> None:
    """Each command that takes -o json, run for real, prints one parseable document with
    the facts the table shows; the set run here is checked against the parser's."""
    ran: set[str] = set()
    obj = "obj://org-a.example/billing/json-1"

    def run(name: str, *args: str | Path, host: str = HOST_A) -> Any:
        ran.add(name)
        return _json(*name.split(), *args, world=world, host=host, cwd=tmp_path)

    created = run("object create", obj, "--data", '{"amount": 5}')
    assert created["object_id"] == obj and created["state"] == "active"
    assert run("object show", obj)["lineage_entries"] >= 1
    assert obj in {o["object_id"] for o in run("object list")}
    lineage = run("lineage", obj)
    assert lineage["entries"][0]["seq"] == 0 and "verified" in lineage["verified"]
    assert isinstance(run("events"), list)
    assert {k["key_id"] for k in run("keys list")["keys"]}
    assert {b["trust_domain"] for b in run("trust list")} == {"org-a.example", "org-b.example"}
    assert run("forks") == []

    server = ServerProcess(world.config(HOST_B)).start()
    try:
        evaluation = run("migrate", obj, "--to", HOST_B, "--dry-run")
        assert evaluation["host"] == HOST_B and evaluation["admitted"] is True
        proposal = tmp_path / "proposal.json"
        exported = run_cli(
            "export",
            obj,
            "--to",
            HOST_B,
            "--dry-run",
            "-o",
            proposal,
            config=world.config(HOST_A),
            cwd=tmp_path,
        )
        assert exported.returncode == 0, exported.stderr
        assert run("admit", proposal, "--dry-run", host=HOST_B)["admitted"] is True
        published = run("publish", "alerts/conventions", "--data", '{"n": 1}')
        assert isinstance(published, dict) and published
        moved = run("migrate", obj, "--to", HOST_B)
        # One id or many, -o json is the batch report (gateway.fleet.report).
        assert moved["destination"] == HOST_B and moved["total"] == 1 and moved["failed"] == 0
        assert [(r["object_id"], r["outcome"]) for r in moved["results"]] in (
            [(obj, "moved")],
            [(obj, "committed")],
        )
    finally:
        server.stop()

    archive = tmp_path / "archive.json"
    shown = run_cli(
        "object", "show", obj, "--export", archive, config=world.config(HOST_B), cwd=tmp_path
    )
    assert shown.returncode == 0, shown.stderr
    bundles = []
    for host in (HOST_A, HOST_B):
        bundle = tmp_path / f"{host.split('/')[2]}.bundle"
        done = run_cli("trust", "export", "--out", bundle, config=world.config(host), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        bundles += ["--trust", str(bundle)]
    ran.add("verify")
    verified = run_cli("verify", archive, *bundles, "-o", "json", cwd=tmp_path)
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout)["verified"] is True

    data_commands = {n for n in LEAVES if n not in NO_DATA}
    elsewhere = set(ELSEWHERE)
    assert ran | elsewhere == data_commands, (
        f"not run with -o json here: {sorted(data_commands - ran - elsewhere)}"
    )
    root = Path(__file__).resolve().parent.parent
    for command, (path, test) in ELSEWHERE.items():
        source = (root / path).read_text(encoding="utf-8")
        body = source.split(f"def {test}(", 1)[1].split("\ndef ", 1)[0]
        words = command.split()
        assert all(w in body for w in words) and '"json"' in source, (command, path, test)
