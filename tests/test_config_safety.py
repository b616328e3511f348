"""Config safety (issue 9): nothing the file system or an editor can do to the config file
breaks a running exporter; durations protect Microsoft; `--config.check` finds what cannot work."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from exporter import yamlload
from exporter.config import MAX_CONFIG_BYTES, ConfigError, load_config, parse_config
from exporter.runtime import Runtime
from tests.test_config import GOOD, ROOT, errors_of


def check(path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "exporter", "--config.check", "--config.file", str(path)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


@pytest.mark.parametrize("text", ["", "   \n\t\n", "# only a comment\n\n# and another\n", "---\n", "~\n"])
def test_empty_documents_are_refused(text: str) -> None:
    (problem,) = errors_of(text)
    assert problem.startswith("cfg.yml:1:") and "refusing it" in problem


def bad_files(tmp: Path) -> dict[str, Path]:
    files = {
        "empty": tmp / "empty.yml", "deep": tmp / "deep.yml", "latin1": tmp / "latin1.yml",
        "dir": tmp / "adir.yml", "huge": tmp / "huge.yml", "deep_block": tmp / "deep_block.yml",
    }
    files["empty"].write_text("")
    files["deep"].write_text("defaults: " + "[" * 100_000 + "]" * 100_000 + "\n")  # crashes libyaml's composer
    files["deep_block"].write_text("".join("  " * i + f"k{i}:\n" for i in range(700)))  # RecursionError in PyYAML
    files["latin1"].write_bytes(GOOD.replace("sales", "s\xe4les").encode("latin-1"))
    files["dir"].mkdir()
    with open(files["huge"], "w") as fh:
        fh.write(GOOD)
        fh.write(("# " + "x" * 1022 + "\n") * (MAX_CONFIG_BYTES // 1024 + 1))
    return files


def test_every_load_failure_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    for name, path in bad_files(tmp_path).items():
        t0 = time.monotonic()
        with pytest.raises(ConfigError) as exc:
            load_config(path)
        assert time.monotonic() - t0 < 2.0, name  # the size cap answers before any parsing
        assert str(exc.value).startswith(str(path)), (name, str(exc.value))


def test_unexpected_exception_while_loading_is_a_config_error(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "cfg.yml"
    path.write_text(GOOD)

    def boom(text: str) -> None:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr("exporter.config.load_document", boom)
    with pytest.raises(ConfigError, match=f"^{path}: cannot load config: RecursionError"):
        load_config(path)


def test_config_check_exits_2_without_traceback_for_each_bad_file(tmp_path: Path) -> None:
    for name, path in bad_files(tmp_path).items():
        r = check(path)
        assert r.returncode == 2, (name, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr and str(path) in r.stderr, (name, r.stderr)


async def test_reload_keeps_the_running_config_when_the_new_one_cannot_load(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yml"
    path.write_text(GOOD)
    cfg = load_config(path)
    rt = Runtime(cfg, str(path))  # not started: no probe leaves this host
    for name, bad in bad_files(tmp_path).items():
        if name == "dir":
            continue
        path.write_bytes(bad.read_bytes())
        ok, why = await rt.reload()
        assert not ok and str(path) in why, name
        assert rt.config is cfg
        assert rt.store.facts["m365_config_last_reload_successful"] == 0.0


def test_one_parse_with_the_c_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    if hasattr(yaml, "CSafeLoader"):
        assert yamlload.Loader is yaml.CSafeLoader
    for name in ("compose", "safe_load", "load"):
        monkeypatch.setattr(yaml, name, lambda *a, **k: pytest.fail("second parse"))
    cfg = parse_config(GOOD, "cfg.yml")
    assert len(cfg.mailboxes) == 2


def test_node_bound_grows_with_the_text_so_large_fleets_load() -> None:
    """30,000 mailboxes are ~300,000 nodes: more than the floor, well within text / 4."""
    many = "x:\n" + "  - ab\n" * 250_000  # 7 bytes per node
    assert len(yamlload.load_document(many).data["x"]) == 250_000
    dense = "x: [" + "a," * 250_000 + "a]\n"  # 2 bytes per node: more nodes than its length allows
    with pytest.raises(yamlload.YAMLProblem, match="YAML nodes"):
        yamlload.load_document(dense)


def test_anchors_merge_keys_and_alias_bombs() -> None:
    text = GOOD.replace("defaults:\n", "x-tls: &tls {insecure_skip_verify: false}\ndefaults:\n  tls: *tls\n")
    assert "unknown field" in errors_of(text)[0]  # x-tls is not a field: still one clear error
    bomb = "a: &a [1,1,1,1,1,1,1,1,1,1]\n" + "".join(  # 10^8 nodes when expanded
        f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefg", "bcdefgh", strict=True))
    (problem,) = errors_of(bomb)
    assert "YAML nodes" in problem


@pytest.mark.parametrize(("setting", "message"), [
    ("interval: .nan", "finite"), ("interval: .inf", "finite"), ("interval: 1ms", "at least 1s"),
    ("interval: 10s", "at least 30s"), ("token_interval: 30s", "at least 60s"),
    ("timeout: 30s", "below interval"), ("timeout: 10d", "at most 7d"), ("timeout: -5", "positive"),
    ("timeout: " + "9" * 400, "at most 7d"), ("interval: 99999999999999999999d", "at most 7d"),
])
def test_durations_are_finite_and_protect_microsoft(setting: str, message: str) -> None:
    field = setting.split(":")[0]
    lines = {"interval": "  interval: 30s\n", "timeout": "  timeout: 5s\n"}
    text = (GOOD.replace(lines[field], f"  {setting}\n") if field in lines
            else GOOD.replace("defaults:\n", f"defaults:\n  {setting}\n"))
    problems = errors_of(text)
    assert any(f"defaults.{field}:" in p and message in p for p in problems), problems


def test_mailbox_timeout_below_its_interval_and_the_override() -> None:
    bad = GOOD.replace("    checks: [pop3]\n", "    checks: [pop3]\n    interval: 40s\n    timeout: 40s\n")
    assert any("mailboxes[1].timeout: must be below the mailbox's interval" in p for p in errors_of(bad))
    short = GOOD.replace("  interval: 30s\n", "  interval: 5s\n  token_interval: 20s\n").replace("  timeout: 5s\n",
                                                                                                "  timeout: 2s\n")
    assert errors_of(short)
    cfg = parse_config("unsafe_allow_short_intervals: true\n" + short, "cfg.yml")
    assert cfg.defaults.interval == 5.0
    assert any("at least 1s" in p for p in errors_of(
        "unsafe_allow_short_intervals: true\n" + short.replace("interval: 5s", "interval: 1ms")))


def test_duplicate_keys_and_case_insensitive_duplicate_mailbox() -> None:
    problems = errors_of(GOOD.replace("    client_id: c\n", "    client_id: c\n    client_id: d\n", 1))
    assert any(p.startswith("cfg.yml:8: credentials.app.client_id: duplicate key") for p in problems), problems
    dup = GOOD + "  - address: Sales@Contoso.Example\n    credential: app\n"
    assert any("already mailboxes[0]" in p and "case-insensitive" in p for p in errors_of(dup))


@pytest.mark.parametrize(("field", "value", "message"), [
    ("host", "''", "host is empty"), ("host", "'https://outlook.office365.com'", "is a URL"),
    ("host", "'pop.example.test:995'", "port field"), ("host", "'bad host'", "not a valid host"),
])
def test_invalid_hosts(field: str, value: str, message: str) -> None:
    problems = errors_of(GOOD.replace("host: pop.example.test", f"{field}: {value}"))
    assert any(message in p and "endpoints.pop3.host" in p for p in problems), problems


@pytest.mark.parametrize("proxy", ["proxy:3128", "http://", "ftp://proxy:21", "http://proxy:99999", "http://p/x"])
def test_invalid_proxy_urls(proxy: str) -> None:
    problems = errors_of(GOOD.replace("  timeout: 5s\n", f"  timeout: 5s\n  https: {{proxy: '{proxy}'}}\n"))
    assert any("defaults.https.proxy" in p for p in problems), problems


def test_all_errors_in_one_pass() -> None:
    bad = GOOD.replace("    client_id: c2\n", "    client_idd: c2\n").replace("credential: app\n",
                                                                           "credential: nope\n")
    problems = errors_of(bad)
    assert any("client_idd: unknown field" in p for p in problems)
    assert any("unknown credential 'nope'" in p for p in problems)  # cross-reference, same pass
    assert problems == sorted(problems, key=lambda p: int(p.split(":")[1]))


def test_config_check_finds_what_cannot_work_on_this_host(tmp_path: Path) -> None:
    (tmp_path / "empty.secret").write_text("")
    (tmp_path / "secret.dir").mkdir()
    text = f"""\
defaults:
  tls: {{ca_file: {tmp_path}/no-ca.pem}}
credentials:
  a: {{tenant_id: t, client_id: c, client_secret_file: {tmp_path}/missing.secret}}
  b: {{tenant_id: t, client_id: c, client_secret_file: {tmp_path}/empty.secret}}
  c: {{tenant_id: t, client_id: c, client_secret_file: {tmp_path}/secret.dir}}
  d: {{tenant_id: t, client_id: c, client_secret_env: M365_TEST_UNSET_SECRET}}
  e: {{tenant_id: t, client_id: c, certificate_file: {tmp_path}/no.pem, private_key_file: {tmp_path}/no.key}}
  f: {{tenant_id: t, client_id: c, flow: delegated, account: u@contoso.example,
      token_cache: {tmp_path}/no-such-dir/cache.json}}
mailboxes:
  - {{address: a@contoso.example, credential: a}}
"""
    path = tmp_path / "cfg.yml"
    path.write_text(text)
    load_config(path)  # loads: these are check-only (files may be provisioned after start)
    r = check(path, {"M365_TEST_UNSET_SECRET": ""})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    for expected in ("credentials.a.client_secret_file", "does not exist", "credentials.b.client_secret_file",
                     "is empty", "credentials.c.client_secret_file", "is a directory", "M365_TEST_UNSET_SECRET",
                     "credentials.e.certificate_file", "credentials.e.private_key_file",
                     "credentials.f.token_cache", "defaults.tls.ca_file"):
        assert expected in r.stderr, (expected, r.stderr)
    if os.geteuid() != 0:  # root reads anything
        unreadable = tmp_path / "unreadable.secret"
        unreadable.write_text("x")
        unreadable.chmod(0)
        path.write_text(text.replace("missing.secret", "unreadable.secret"))
        assert "not readable" in check(path).stderr
