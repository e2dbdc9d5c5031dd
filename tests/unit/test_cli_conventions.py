"""The operator's command follows the usual conventions: --version from the one version
source, help on every command and option, --json on the read commands, exit codes as
docs/cli.md says, a bash completion that knows every command."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from flatnet_cli import __version__
from flatnet_cli.completion import bash
from flatnet_cli.main import build_parser, main


def walk(parser: argparse.ArgumentParser, path: str = "flatnet"):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from walk(child, f"{path} {name}")


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"flatnet {__version__}"


def test_every_command_and_option_has_help():
    missing = []
    for path, parser in walk(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                missing += [f"{path} {c.dest}" for c in action._choices_actions if not c.help]
            elif not action.help:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, missing


def test_read_commands_have_json():
    parsers = dict(walk(build_parser()))
    for cmd in ("flatnet status", "flatnet peers", "flatnet service list", "flatnet doctor"):
        assert any("--json" in a.option_strings for a in parsers[cmd]._actions), cmd


def test_doctor_json_without_an_engine_is_a_problem_and_exit_1(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "flatnet_cli",
            "doctor",
            "--json",
            "--no-podman",
            "--socket",
            str(tmp_path / "none.sock"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    doc = json.loads(proc.stdout)
    assert proc.returncode == 1 and doc["ok"] is False
    engine = [f for f in doc["findings"] if f["check"] == "engine"]
    assert engine and not engine[0]["ok"] and engine[0]["fix"]


def test_bad_usage_exits_2():
    proc = subprocess.run([sys.executable, "-m", "flatnet_cli", "no-such-command"], capture_output=True, timeout=60)
    assert proc.returncode == 2


def test_completion_knows_every_command():
    script = bash(build_parser())
    for path, _ in walk(build_parser()):
        words = path.split()[1:]
        if words:
            assert f'"{" ".join(words)}"*)' in script, path
    proc = subprocess.run(
        ["bash", "-c", script + '\nCOMP_WORDS=(flatnet gat); COMP_CWORD=1; _flatnet; echo "${COMPREPLY[@]}"'],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.stdout.split() == ["gateway"]
