"""CLI gaps found in session 35, each failing before its fix (session 36).

* ``gateway import ABORT_FILE -o FILE`` wrote nothing and said nothing about ``-o``:
  importing an abort file answers nothing, so ``-o`` is refused (exit 2, one line)
  before anything is done. ``import`` and ``export`` only act; their ``-o`` is the file
  they write (docs/cli.md), never an output format. The same for ``gateway export
  --complete ACTIVATION -o FILE`` (finishing writes nothing either).
* ``gateway object list`` had no ``--label`` filter although objects carry labels
  (``gateway object label``): ``--label KEY=VALUE``, repeatable, all must match, with
  ``-o json`` too; a malformed one is exit 2, one line, before the store is opened.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from gateway.testing import HostSpec, World, build_world, read_store, run_cli
from tests.conftest import HOST_A, HOST_B

pytestmark = pytest.mark.slow

CONFIG_ERROR = 2
PREFIX = "obj://org-a.example/s36/"


def one_error_line(result: subprocess.CompletedProcess[str], status: int) -> str:
    assert result.returncode == status, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("gateway: error: ") and " — " in lines[0], lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""
    return lines[0]


def ok(world: World, host: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    result = run_cli(*args, config=world.config(host))
    assert result.returncode == 0, result.stderr
    return result


# --- import of an abort file ------------------------------------------------------------


@pytest.fixture
def aborted(tmp_path: Path) -> tuple[World, Path]:
    """A transfer staged on B, then aborted on A: the abort file B has to import."""
    world = build_world(tmp_path / "world", [HostSpec(host_id=h) for h in (HOST_A, HOST_B)])
    object_id = PREFIX + "aborted"
    ok(world, HOST_A, "object", "create", object_id, "--data", "{}")
    transfer, receipt, abort = tmp_path / "t.gwx", tmp_path / "r.json", tmp_path / "x.json"
    ok(world, HOST_A, "export", object_id, "--to", HOST_B, "-o", transfer)
    ok(world, HOST_B, "import", transfer, "-o", receipt)
    keys = read_store(world.config(HOST_A), lambda s: s.list("journal/source/"))
    ok(world, HOST_A, "export", "--abort", keys[0].removeprefix("journal/source/"), "-o", abort)
    return world, abort


def staged_on_b(world: World) -> list[str]:
    return read_store(world.config(HOST_B), lambda s: s.list("open/"))


def test_import_of_an_abort_file_refuses_an_output_file_before_acting(
    aborted: tuple[World, Path], tmp_path: Path
) -> None:
    world, abort = aborted
    assert staged_on_b(world)
    for out in ("json", str(tmp_path / "answer.json")):
        line = one_error_line(
            run_cli("import", abort, "-o", out, config=world.config(HOST_B)), CONFIG_ERROR
        )
        assert "abort file" in line and "-o" in line
        assert not (tmp_path / "answer.json").exists()
        assert staged_on_b(world), "refused before anything was discarded"
    done = ok(world, HOST_B, "import", abort)
    assert "staged copy discarded" in done.stdout
    assert staged_on_b(world) == []


# --- object list --label ----------------------------------------------------------------


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> World:
    world = build_world(tmp_path_factory.mktemp("labels"), [HostSpec(host_id=HOST_A)])
    for name in ("gold", "plain", "bare", "other"):
        ok(world, HOST_A, "object", "create", PREFIX + name, "--data", "{}")
    ok(world, HOST_A, "object", "label", PREFIX + "gold", "team=billing", "tier=gold")
    ok(world, HOST_A, "object", "label", PREFIX + "plain", "team=billing")
    ok(world, HOST_A, "object", "label", PREFIX + "other", "team=sales", "tier=gold")
    return world


def listed(world: World, *labels: str) -> list[str]:
    args: list[str] = []
    for label in labels:
        args += ["--label", label]
    result = ok(world, HOST_A, "object", "list", *args, "-o", "json")
    return sorted(o["object_id"].removeprefix(PREFIX) for o in json.loads(result.stdout))


@pytest.mark.parametrize(
    ("labels", "expected", "reason"),
    [
        ((), ["bare", "gold", "other", "plain"], "no filter: every object"),
        (("team=billing",), ["gold", "plain"], "one label"),
        (("team=billing", "tier=gold"), ["gold"], "repeated: all must match"),
        (("tier=gold",), ["gold", "other"], "the other key alone"),
        (("team=nobody",), [], "no object matches: an empty list"),
        (("team=",), [], "an empty value matches only an empty value"),
    ],
)
def test_object_list_filters_by_label(
    labelled: World, labels: tuple[str, ...], expected: list[str], reason: str
) -> None:
    assert listed(labelled, *labels) == expected, reason


def test_object_list_table_is_filtered_too(labelled: World) -> None:
    table = ok(labelled, HOST_A, "object", "list", "--label", "tier=gold").stdout
    assert PREFIX + "gold" in table and PREFIX + "other" in table
    assert PREFIX + "plain" not in table and PREFIX + "bare" not in table
    none = ok(labelled, HOST_A, "object", "list", "--label", "team=nobody").stdout
    assert "no objects" in none and "team=nobody" in none


@pytest.mark.parametrize(
    ("label", "needle"),
    [("team", "not KEY=VALUE"), ("Team=x", "not a label key"), ("team=a b", "not a label value")],
)
def test_object_list_refuses_a_malformed_label(labelled: World, label: str, needle: str) -> None:
    line = one_error_line(
        run_cli("object", "list", "--label", label, config=labelled.config(HOST_A)), CONFIG_ERROR
    )
    assert needle in line


def test_object_list_help_names_the_label_filter() -> None:
    result = run_cli("object", "list", "--help")
    assert result.returncode == 0
    assert "--label KEY=VALUE" in result.stdout and "all must match" in result.stdout


def test_finishing_with_an_activation_receipt_refuses_an_output_file_before_acting(
    tmp_path: Path,
) -> None:
    world = build_world(tmp_path / "world", [HostSpec(host_id=h) for h in (HOST_A, HOST_B)])
    object_id = PREFIX + "finished"
    ok(world, HOST_A, "object", "create", object_id, "--data", "{}")
    t, r, c, d = (tmp_path / name for name in ("t.gwx", "r.json", "c.json", "d.json"))
    ok(world, HOST_A, "export", object_id, "--to", HOST_B, "-o", t)
    ok(world, HOST_B, "import", t, "-o", r)
    ok(world, HOST_A, "export", "--complete", r, "-o", c)
    ok(world, HOST_B, "import", c, "-o", d)

    def open_here() -> list[str]:
        listed = ok(world, HOST_A, "migration", "list", "-o", "json").stdout
        return [m["object_id"] for m in json.loads(listed)]

    assert open_here() == [object_id]
    line = one_error_line(
        run_cli("export", "--complete", d, "-o", tmp_path / "e.json", config=world.config(HOST_A)),
        CONFIG_ERROR,
    )
    assert "activation receipt" in line and "-o" in line
    assert not (tmp_path / "e.json").exists() and open_here() == [object_id]
    assert "done" in ok(world, HOST_A, "export", "--complete", d).stdout
    assert open_here() == []
