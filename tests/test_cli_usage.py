"""Command-line mistakes: one clear line and exit 2, never a traceback; probes start only
after the web port is bound (a second instance on a taken port must not probe at all)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from exporter import cli
from exporter.listen import parse_listen_address
from exporter.runtime import Runtime
from tests.simenv import Env, env_fixture

ROOT = Path(__file__).resolve().parent.parent
env = env_fixture(delegated_login=False)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "exporter", *args], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.parametrize(("args", "message"), [
    (["--web.listen-address", "9731"], "address 9731: missing port in address (did you mean :9731?)"),
    (["--web.listen-address", "abc"], "address abc: missing port in address"),
    (["--web.listen-address", ":99999"], "invalid port"),
    (["--web.listen-address", "::1:9731"], "too many colons"),
    (["--demo", "--demo.interval", "soon"], "--demo.interval: invalid duration"),
    (["--demo", "--demo.interval", "1ms"], "--demo.interval: 1ms is shorter than 1s"),
    (["--demo", "--demo.sim-port", "70000"], "--demo.sim-port: 70000 is not a port"),
])
def test_bad_flags_give_one_line_and_exit_2(args: list[str], message: str) -> None:
    r = run(*args)
    assert r.returncode == 2, r
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr


def test_listen_address_forms() -> None:
    assert parse_listen_address(":9731") == ("", 9731)
    assert parse_listen_address("127.0.0.1:9731") == ("127.0.0.1", 9731)
    assert parse_listen_address("[::1]:9731") == ("::1", 9731)
    assert parse_listen_address("localhost:0") == ("localhost", 0)
    for bad in ("", "[::1]", "[::1", "host:", "host:port", "a b:1"):
        with pytest.raises(ValueError):
            parse_listen_address(bad)


async def test_probes_do_not_start_before_the_port_is_bound(env: Env, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    path = tmp_path / "cfg.yml"
    path.write_text(yaml.safe_dump(env.config().model_dump(mode="json", exclude_none=True)))
    started: list[Runtime] = []
    monkeypatch.setattr(Runtime, "start", lambda self: started.append(self))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = cli.build_parser().parse_args(["--config.file", str(path), "--web.listen-address",
                                              f"127.0.0.1:{port}"])
        assert await cli.serve(args) == 1
    assert started == []  # the port was taken: not one probe, not one token request
    assert env.state.token_requests() == 0
