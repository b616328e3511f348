"""Token cache file: atomic, durable, owner-only; a crash mid-write never loses the cache."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import msal
import pytest

from exporter import oscompat
from exporter.auth import cache as cache_mod
from exporter.auth.cache import CacheCorrupt, CacheMissing, atomic_write, load_cache, save_cache
from tests.winsim import expose


def assert_private(path: Path) -> None:
    """Owner-only: no exposure by the platform's own check and, on POSIX, exactly mode 0600."""
    assert oscompat.exposure(path) is None
    if not oscompat.is_windows():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600

WRITER = r"""
import json, sys
from pathlib import Path
from exporter.auth.cache import atomic_write
path = Path(sys.argv[1])
i = 0
print("ready", flush=True)
while True:  # killed by the test
    i += 1
    # a realistic-size cache (~200 KiB) so the kill often lands inside a write
    atomic_write(path, json.dumps({"AccessToken": {}, "RefreshToken": {"n": i, "pad": "x" * 200_000}}))
"""


def test_kill_during_writes_always_leaves_a_loadable_cache(tmp_path: Path) -> None:
    path = tmp_path / "cache.json"
    atomic_write(path, json.dumps({"AccessToken": {}, "RefreshToken": {"n": 0}}))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    seen = set()
    for attempt in range(12):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, env=env)
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        time.sleep(0.05 + 0.013 * attempt)  # land at different points of the write cycle
        proc.kill()  # SIGKILL on POSIX, TerminateProcess on Windows
        proc.wait(timeout=10)
        cache = load_cache(path)  # must never raise CacheCorrupt
        data = json.loads(path.read_text())
        seen.add(data["RefreshToken"]["n"])
        assert isinstance(cache, msal.SerializableTokenCache)
        assert_private(path)
    assert len(seen) > 1, "the writer should have completed several writes between kills"
    # the kills left temp files (complete caches with a refresh token): once stale, the next load removes them
    leftovers = list(tmp_path.glob(".cache.json.*.tmp"))
    old = time.time() - cache_mod.STALE_TEMP_SECONDS - 5
    for p in leftovers:
        os.utime(p, (old, old))
    load_cache(path)
    assert not list(tmp_path.glob(".cache.json.*.tmp"))


def test_written_file_is_0600_from_creation(tmp_path: Path) -> None:
    os.umask(0o022)
    path = tmp_path / "sub" / "cache.json"
    save_cache(path, msal.SerializableTokenCache())
    assert_private(path)
    assert oscompat.exposure(path.parent) is None  # the directory we created is owner-only too
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_missing_and_corrupt_cache_are_distinguished(tmp_path: Path) -> None:
    with pytest.raises(CacheMissing):
        load_cache(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CacheCorrupt):
        load_cache(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(CacheCorrupt):
        load_cache(bad)
    empty = tmp_path / "empty.json"
    empty.write_text("")
    assert isinstance(load_cache(empty), msal.SerializableTokenCache)


def test_world_readable_secret_material_is_warned_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from exporter.auth.cache import warn_if_exposed

    exposed = tmp_path / "cache.json"
    save_cache(exposed, msal.SerializableTokenCache())
    assert not warn_if_exposed(exposed)
    expose(exposed)
    with caplog.at_level("WARNING"):
        assert warn_if_exposed(exposed)
        load_cache(exposed)  # loading warns too, but only once per file
    warnings = [r.getMessage() for r in caplog.records if str(exposed) in r.getMessage()]
    assert len(warnings) == 1
    if oscompat.is_windows():
        assert "accessible by Users" in warnings[0] and "icacls" in warnings[0] and "chmod" not in warnings[0]
    else:
        assert "accessible by group/others" in warnings[0] and "mode 644" in warnings[0]


def test_exposed_existing_cache_directory_is_warned(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    shared = tmp_path / "shared-dir"
    shared.mkdir()
    path = shared / "cache.json"
    save_cache(path, msal.SerializableTokenCache())
    expose(shared)
    with caplog.at_level("WARNING"):
        load_cache(path)
    msgs = [r.getMessage() for r in caplog.records if r.getMessage().startswith(str(shared) + " ")]
    assert len(msgs) == 1, caplog.text
    assert ("chmod 700" in msgs[0]) != oscompat.is_windows()
    assert not [r for r in caplog.records if r.getMessage().startswith(str(path))], "the file itself is private"


def test_stale_temp_files_are_removed_and_fresh_or_foreign_ones_kept(tmp_path: Path) -> None:
    path = tmp_path / "cache.json"
    atomic_write(path, json.dumps({"RefreshToken": {"n": 1}}))
    old = time.time() - cache_mod.STALE_TEMP_SECONDS - 5
    stale = tmp_path / ".cache.json.abcd_123.tmp"  # what a kill -9 mid-write leaves
    fresh = tmp_path / ".cache.json.zzzz9999.tmp"  # may be a write in progress in another process
    foreign = [tmp_path / ".cache.json.bak.abcd1234.tmp", tmp_path / ".other.json.abcd1234.tmp",
               tmp_path / "cache.json.abcd1234.tmp"]
    for p in [stale, fresh, *foreign]:
        p.write_text("{}")
    for p in [stale, *foreign]:
        os.utime(p, (old, old))
    load_cache(path)
    assert not stale.exists()
    assert fresh.exists() and all(p.exists() for p in foreign)
    os.utime(fresh, (old, old))
    atomic_write(path, json.dumps({"RefreshToken": {"n": 2}}))  # every write cleans up too
    assert not fresh.exists() and all(p.exists() for p in foreign)


def test_failed_write_removes_its_temp_and_stale_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "cache.json"
    atomic_write(path, json.dumps({"RefreshToken": {"n": 1}}))
    stale = tmp_path / ".cache.json.qqqqqqqq.tmp"
    stale.write_text("{}")
    old = time.time() - cache_mod.STALE_TEMP_SECONDS - 5
    os.utime(stale, (old, old))

    def refuse(src: object, dst: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(oscompat.current(), "replace", refuse)
    with caplog.at_level(logging.INFO), pytest.raises(PermissionError):
        atomic_write(path, json.dumps({"RefreshToken": {"n": 2}}))
    assert [p.name for p in tmp_path.iterdir()] == ["cache.json"]
    assert json.loads(path.read_text())["RefreshToken"]["n"] == 1
    assert "removed 1 temp file(s)" in caplog.text
