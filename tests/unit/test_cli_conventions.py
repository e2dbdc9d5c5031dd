"""The operator's command follows the usual conventions: --version from the one version
source, help on every command and option, --json on the read commands, exit codes as
docs/cli.md says, a bash completion that knows every command."""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import threading

import pytest

from flatnet import __version__
from flatnet.completion import bash
from flatnet.main import build_parser, main


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
    for cmd in (
        "flatnet status",
        "flatnet peers",
        "flatnet service list",
        "flatnet doctor",
        "flatnet lighthouse status",
    ):
        assert any("--json" in a.option_strings for a in parsers[cmd]._actions), cmd


def test_doctor_json_without_an_engine_is_a_problem_and_exit_1(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "flatnet",
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
    proc = subprocess.run([sys.executable, "-m", "flatnet", "no-such-command"], capture_output=True, timeout=60)
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


STATUS = {
    "node": "lh1",
    "network": "10.87.0.0/16",
    "uptime": 12.5,
    "nodes": {"host-a": {"subnet": "10.87.1.0/24", "endpoints": ["192.0.2.1:4787"], "last_seen": 1.0}},
    "leases": {"host-a": "10.87.1.0/24"},
    "queries": 3,
    "relayed": 0,
    "rejected": 0,
    "drops": {"bad_mac": 0},
    "control_errors": {},
}


def fake_lighthouse(path: str) -> threading.Thread:
    """One /status answer on a Unix socket, as the lighthouse's control API gives it."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    srv.settimeout(10)

    def serve() -> None:
        with srv:
            conn, _ = srv.accept()
            with conn:
                assert conn.recv(4096).startswith(b"GET /status ")
                body = json.dumps(STATUS).encode()
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t


def test_lighthouse_status_json_and_table(tmp_path, capsys):
    sock = str(tmp_path / "lh.sock")
    t = fake_lighthouse(sock)
    assert main(["lighthouse", "status", "--json", "--socket", sock]) == 0
    t.join(10)
    assert json.loads(capsys.readouterr().out) == STATUS
    t = fake_lighthouse(sock + "2")
    assert main(["lighthouse", "status", "--socket", sock + "2"]) == 0
    t.join(10)
    out = capsys.readouterr().out
    assert "lighthouse lh1" in out and "host-a" in out and "10.87.1.0/24" in out
    assert "tcp relay  off" in out  # STATUS has no tcp_relay (an older lighthouse, or [relay] tcp_port = 0)
    assert "sessions " not in out  # nor sessions (an older lighthouse)
    STATUS["sessions"] = {
        "held": 1,
        "with_keys": 1,
        "rekeys_started": 0,
        "handshakes_initiator": 0,
        "handshakes_responder": 3,
        "sessions_expired": 2,
        "handshakes_failed": 1,
        "peers_removed": 0,
    }
    try:
        t = fake_lighthouse(sock + "3")
        assert main(["lighthouse", "status", "--socket", sock + "3"]) == 0
        t.join(10)
    finally:
        del STATUS["sessions"]
    assert (
        "sessions   1 held, 1 with keys; since the start: expired 2, handshakes given up 1" in capsys.readouterr().out
    )


def test_lighthouse_status_without_a_lighthouse_says_so(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "flatnet", "lighthouse", "status", "--socket", str(tmp_path / "none.sock")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1 and "no lighthouse answers on" in proc.stderr and "flatnet-lighthouse" in proc.stderr
