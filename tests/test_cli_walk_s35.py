"""Mistakes a new operator makes walking README's "Running hosts yourself": each gets one
``gateway: error:`` line that says what was wrong *and what to do* (the part after " — "),
and the documented exit status.

Found by walking the CLI by hand in session 35; each case failed before its fix.
"""

from __future__ import annotations

import argparse
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.cli import build_parser
from gateway.testing import HostSpec, World, build_world, run_cli
from tests.conftest import HOST_A

pytestmark = pytest.mark.slow

CONFIG_ERROR = 2


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return build_world(tmp_path_factory.mktemp("cli-walk"), [HostSpec(host_id=HOST_A)])


def the_error(result: subprocess.CompletedProcess[str], status: int) -> str:
    """The one error line, checked to carry a what-to-do after its reason."""
    assert result.returncode == status, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("gateway: error: "), result.stderr
    assert "Traceback" not in result.stderr
    assert " — " in lines[0], f"no what-to-do in: {lines[0]}"
    return lines[0]


def test_config_naming_the_host_directory_says_which_file_to_name(world: World) -> None:
    # `gateway init hosts/a` makes a directory; `--config hosts/a` is the natural slip.
    directory = world.config(HOST_A).parent
    line = the_error(run_cli("object", "list", "--config", directory), CONFIG_ERROR)
    assert "is a directory" in line
    assert str(directory / "gateway.yaml") in line


@dataclass(frozen=True)
class MissingFileCase:
    reason: str
    argv: tuple[str, ...]
    with_config: bool = True


MISSING = "no-such-file.json"

MISSING_FILE_CASES = [
    MissingFileCase("offline import of a file not handed over yet", ("import", MISSING)),
    MissingFileCase(
        "verify of a mistyped archive path", ("verify", MISSING, "--trust", MISSING), False
    ),
    MissingFileCase("trust import of a bundle not received", ("trust", "import", MISSING)),
    MissingFileCase(
        "object create from a mistyped data path",
        ("object", "create", "obj://org-a.example/billing/x", "--data-file", MISSING),
    ),
    MissingFileCase("admit of a proposal not received", ("admit", "--dry-run", MISSING)),
    MissingFileCase(
        "export --complete of a receipt not received", ("export", "--complete", MISSING)
    ),
    MissingFileCase(
        "object create from a mistyped spec path",
        ("object", "create", "obj://org-a.example/billing/y", "--spec", MISSING),
    ),
]


@pytest.mark.parametrize("case", MISSING_FILE_CASES, ids=lambda case: case.reason)
def test_a_missing_input_file_says_what_to_do(
    world: World, case: MissingFileCase, tmp_path: Path
) -> None:
    config = world.config(HOST_A) if case.with_config else None
    line = the_error(run_cli(*case.argv, config=config, cwd=tmp_path), CONFIG_ERROR)
    assert MISSING in line


def _options(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.Action]]:
    """Every option of every command in the tree, with its command path."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, (*path, name))
        elif action.option_strings:
            yield path, action


def test_every_option_with_a_default_says_it_in_its_help() -> None:
    # `--algorithm` and `--content-type` said nothing of ed25519 and application/json:
    # an operator reading --help could not tell what leaving them out does.
    silent = [
        f"gateway {' '.join(path)} {action.option_strings[0]} (default {action.default!r})"
        for path, action in _options(build_parser())
        if isinstance(action.default, str | int | float)
        and not isinstance(action.default, bool)
        and action.default != argparse.SUPPRESS
        and "default" not in (action.help or "")
    ]
    assert not silent, "options whose help hides their default:\n" + "\n".join(silent)


def test_object_create_interval_says_what_leaving_it_out_does() -> None:
    (interval,) = [
        action
        for path, action in _options(build_parser())
        if path == ("object", "create") and "--interval" in action.option_strings
    ]
    assert "default" in (interval.help or "")


def test_events_of_a_mistyped_object_id_is_an_error_not_no_events(world: World) -> None:
    # `--object invoice-42` matched nothing and printed "no events", exit 0: the typo hid.
    result = run_cli("events", "--object", "invoice-42", config=world.config(HOST_A))
    line = the_error(result, CONFIG_ERROR)
    assert "invoice-42" in line and "obj://" in line


def test_events_of_an_object_with_none_names_the_object(world: World) -> None:
    quiet = "obj://org-a.example/billing/never-created"
    result = run_cli("events", "--object", quiet, config=world.config(HOST_A))
    assert result.returncode == 0, result.stderr
    assert quiet in result.stdout


def test_importing_a_trust_bundle_as_a_handoff_file_says_where_it_goes(
    world: World, tmp_path: Path
) -> None:
    bundle = tmp_path / "org-a.bundle.json"
    exported = run_cli("trust", "export", "--out", bundle, config=world.config(HOST_A))
    assert exported.returncode == 0, exported.stderr
    done = run_cli("import", bundle, config=world.config(HOST_A), cwd=tmp_path)
    assert done.returncode != 0
    line = the_error(done, done.returncode)
    assert "gateway trust import" in line.split(" — ", 1)[1]


def test_verify_missing_a_bundle_says_to_pass_it_not_import_it(tmp_path: Path) -> None:
    """`gateway verify` keeps no store: the bundle a check needs is one more --trust."""
    from tests.test_offline import HOST_B, OBJECT

    world = build_world(tmp_path / "w", [HostSpec(host_id=h) for h in (HOST_A, HOST_B)])
    created = run_cli("object", "create", OBJECT, "--data", "{}", config=world.config(HOST_A))
    assert created.returncode == 0, created.stderr
    transfer = tmp_path / "t.gwx"
    exported = run_cli(
        "export", OBJECT, "--to", HOST_B, "-o", transfer, config=world.config(HOST_A)
    )
    assert exported.returncode == 0, exported.stderr
    bundle = tmp_path / "org-b.bundle.json"  # the receiver's bundle, not the signer's
    assert run_cli("trust", "export", "--out", bundle, config=world.config(HOST_B)).returncode == 0
    done = run_cli("verify", transfer, "--trust", bundle, cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "with --trust" in done.stderr, done.stderr
    assert "gateway trust import" not in done.stderr, done.stderr
