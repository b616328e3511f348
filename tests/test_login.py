"""`login`: device-code bootstrap of a delegated token cache, against the simulated identity platform.

What matters to an operator: a sign-in completed as the wrong user is refused and leaves the
existing cache byte-for-byte untouched; the right user gets a 0600 cache the exporter then uses;
running it again replaces the cache safely; the confidential (secret) variant works; failures say
why and write nothing. `run_login` is blocking MSAL, so it runs in a thread while the simulator
serves from the test's event loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter import oscompat
from exporter.auth.cache import load_cache
from exporter.cli import main as cli_main
from exporter.commands.login import LoginResult, run_login
from exporter.config import Config
from exporter.reasons import Reason
from exporter.simulator.idp import approve_device_code
from exporter.simulator.seed import add_app
from tests.simenv import DELEGATE, OTHER_USER, PUBLIC_APP_ID, Env, env_fixture, runtime_for

ROOT = Path(__file__).resolve().parent.parent
CONF_APP_ID = "aaaaaaaa-0000-0000-0000-0000000000c5"
CONF_SECRET = "conf-delegated-secret-value-123"


env = env_fixture(delegated_login=False)


def approve_as(env: Env, upn: str, seen: list[dict[str, Any]] | None = None) -> Callable[[dict[str, Any]], None]:
    """What the person at the browser does: enter the code and sign in as `upn`."""

    def on_flow(flow: dict[str, Any]) -> None:
        if seen is not None:
            seen.append(flow)
        assert approve_device_code(env.state, flow["user_code"], upn)

    return on_flow


async def login(cfg: Config, name: str = "delegate", **kw: Any) -> LoginResult:
    return await asyncio.to_thread(run_login, cfg, name, **kw)


def cache_accounts(path: Path) -> list[str]:
    """Usernames of the accounts in an MSAL token cache file (and it parses as a cache)."""
    load_cache(path)
    return sorted(a["username"] for a in json.loads(path.read_text()).get("Account", {}).values())


async def test_right_user_writes_0600_cache_the_exporter_uses(env: Env) -> None:
    cfg = env.config()
    flows: list[dict[str, Any]] = []
    result = await login(cfg, on_flow=approve_as(env, DELEGATE, flows))
    assert result.exit_code == 0, result.message
    assert result.identity == DELEGATE
    assert "microsoft.com/devicelogin" in flows[0]["message"] and flows[0]["user_code"] in flows[0]["message"]
    cache = env.files["cache"]
    assert (cache.stat().st_mode & 0o777) == 0o600
    assert oscompat.exposure(cache) is None  # and, under tests/winsim.py, its Windows ACL
    assert cache_accounts(cache) == [DELEGATE]
    text = cache.read_text()
    assert "refresh_token" in text.lower() or "RefreshToken" in text
    rt = await runtime_for(cfg)
    probe = await rt.run_token_probe("delegate")
    assert probe.success, (probe.reason, probe.detail)
    # the scopes requested were the delegated scopes of the checks the credential's mailboxes use
    assert set(probe.facts) >= {"scope:IMAP.AccessAsUser.All", "scope:POP.AccessAsUser.All", "scope:SMTP.Send"}
    await rt.stop()


async def test_wrong_user_is_refused_and_nothing_is_written(env: Env) -> None:
    cfg = env.config()
    assert not env.files["cache"].exists()
    result = await login(cfg, on_flow=approve_as(env, OTHER_USER))
    assert result.exit_code == 1
    assert result.reason is Reason.WRONG_IDENTITY
    assert "REFUSED" in result.message and OTHER_USER in result.message and DELEGATE in result.message
    assert "private" in result.message and "browser window" in result.message
    assert not env.files["cache"].exists()
    assert not list(env.files["cache"].parent.glob(f".{env.files['cache'].name}.*"))  # no temp file left


async def test_wrong_user_leaves_an_existing_cache_byte_for_byte(env: Env) -> None:
    cfg = env.config()
    assert (await login(cfg, on_flow=approve_as(env, DELEGATE))).exit_code == 0
    before = env.files["cache"].read_bytes()
    stat = env.files["cache"].stat()
    result = await login(cfg, on_flow=approve_as(env, OTHER_USER))
    assert result.exit_code == 1 and result.reason is Reason.WRONG_IDENTITY
    assert env.files["cache"].read_bytes() == before
    assert env.files["cache"].stat().st_ino == stat.st_ino  # not even rewritten with the same bytes
    rt = await runtime_for(cfg)
    assert (await rt.run_token_probe("delegate")).success
    await rt.stop()


async def test_relogin_replaces_the_cache_safely(env: Env) -> None:
    cfg = env.config()
    # a cache bootstrapped as the wrong user (e.g. by hand): the exporter refuses it ...
    await env.login(OTHER_USER)
    rt = await runtime_for(cfg)
    assert (await rt.run_token_probe("delegate")).reason is Reason.WRONG_IDENTITY
    old = env.files["cache"].read_bytes()
    # ... and `login` as the right user replaces it, keeping only that account
    result = await login(cfg, on_flow=approve_as(env, DELEGATE))
    assert result.exit_code == 0, result.message
    assert env.files["cache"].read_bytes() != old
    assert cache_accounts(env.files["cache"]) == [DELEGATE]
    assert (env.files["cache"].stat().st_mode & 0o777) == 0o600
    # the running exporter picks the new cache up without a restart
    assert (await rt.run_token_probe("delegate")).success
    first = env.files["cache"].read_bytes()
    assert (await login(cfg, on_flow=approve_as(env, DELEGATE))).exit_code == 0
    assert env.files["cache"].read_bytes() != first
    assert (await rt.run_token_probe("delegate")).success
    await rt.stop()


async def test_app_only_and_unknown_credentials_are_config_errors(env: Env) -> None:
    cfg = env.config()
    app_only = await login(cfg, "app")
    assert app_only.exit_code == 2 and "app-only" in app_only.message
    unknown = await login(cfg, "nope")
    assert unknown.exit_code == 2 and "delegate" in unknown.message


async def test_public_client_flows_disabled_explains_and_writes_nothing(env: Env) -> None:
    env.state.apps[PUBLIC_APP_ID].public_client = False
    result = await login(env.config(), on_flow=approve_as(env, DELEGATE))
    assert result.exit_code == 1
    assert result.reason is Reason.PUBLIC_CLIENT_DISABLED
    assert "Allow public client flows" in result.message
    assert "Nothing was written" in result.message
    assert not env.files["cache"].exists()


async def test_code_not_used_in_time_writes_nothing(env: Env) -> None:
    result = await login(env.config(), on_flow=lambda flow: None, max_wait=1.5)
    assert result.exit_code == 1 and "expired" in result.message
    assert not env.files["cache"].exists()


async def test_confidential_delegated_credential_uses_its_secret(env: Env, tmp_path: Path) -> None:
    """A delegated app with a client secret (no public client flows): the device flow runs as a
    confidential client and the exporter then refreshes with the secret."""
    add_app(env.state, CONF_APP_ID, secret=CONF_SECRET, roles=[], public_client=False)
    secret_file = tmp_path / "conf.secret"
    secret_file.write_text(CONF_SECRET)
    raw = json.loads(env.config().model_dump_json(exclude_none=True))
    raw["credentials"]["delegate"].update(client_id=CONF_APP_ID, client_secret_file=str(secret_file))
    cfg = Config.model_validate(raw)
    result = await login(cfg, on_flow=approve_as(env, DELEGATE))
    assert result.exit_code == 0, result.message
    rt = await runtime_for(cfg)
    probe = await rt.run_token_probe("delegate")
    assert probe.success, (probe.reason, probe.detail)
    await rt.stop()
    assert CONF_SECRET not in result.message


def test_cli_login_config_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("credentials:\n  x:\n    tenant_id: t\n    client_id: c\n    flow: delegated\n    acount: a\n")
    assert cli_main(["login", "--credential", "x", "--config.file", str(bad)]) == 2
    assert re.search(r"bad\.yml:\d+: ", capsys.readouterr().err)
    ok = tmp_path / "ok.yml"
    ok.write_text(yaml.safe_dump({"credentials": {"app": {"tenant_id": "t", "client_id": "c",
                                                          "client_secret_env": "NOPE"}}}))
    assert cli_main(["login", "--credential", "app", "--config.file", str(ok)]) == 2
    assert "app-only" in capsys.readouterr().err


async def test_cli_prints_the_code_and_refuses_the_wrong_user(env: Env, tmp_path: Path) -> None:
    """The real command line: the code is printed, a person signs in (here: as the wrong user)."""
    cfg_file = tmp_path / "config.yml"
    cfg_file.write_text(yaml.safe_dump(json.loads(env.config().model_dump_json(exclude_none=True))))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "exporter", "login", "--credential", "delegate", "--config.file", str(cfg_file),
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
    code = re.search(r"enter the code (\w+)", line)
    assert code, line
    rest = (await asyncio.wait_for(proc.stdout.readline(), 5)).decode()
    assert f"Sign in as {DELEGATE}" in rest and "private" in rest
    assert approve_device_code(env.state, code.group(1), OTHER_USER)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1, (out, err)
    assert b"REFUSED" in err and not env.files["cache"].exists()
