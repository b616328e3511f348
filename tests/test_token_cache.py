"""Token cache file: atomic, durable, owner-only; a crash mid-write never loses the cache."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import msal
import pytest

from exporter.auth.cache import CacheCorrupt, CacheMissing, atomic_write, load_cache, save_cache

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
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        cache = load_cache(path)  # must never raise CacheCorrupt
        data = json.loads(path.read_text())
        seen.add(data["RefreshToken"]["n"])
        assert isinstance(cache, msal.SerializableTokenCache)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(seen) > 1, "the writer should have completed several writes between kills"


def test_written_file_is_0600_from_creation(tmp_path: Path) -> None:
    os.umask(0o022)
    path = tmp_path / "sub" / "cache.json"
    save_cache(path, msal.SerializableTokenCache())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
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
    os.chmod(exposed, 0o644)
    with caplog.at_level("WARNING"):
        assert warn_if_exposed(exposed)
        load_cache(exposed)  # loading warns too, but only once per file
    warnings = [r for r in caplog.records if "accessible by group/others" in r.getMessage()]
    assert len(warnings) == 1 and "mode 644" in warnings[0].getMessage()
