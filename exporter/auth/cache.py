"""Persistent MSAL token cache file: crash-safe writes, owner-only permissions.

Why: a delegated credential's refresh token is the only thing that keeps mail flowing
without a human; losing or corrupting it means somebody must sign in again. Writes go to a
temp file in the same directory (owner-only before the first byte is written: mode 0600, or a
protected ACL on Windows), are fsync'd, then atomically renamed over the old file and the
directory is fsync'd where the OS has that (exporter/oscompat does the OS-specific parts), so a
crash at any instant leaves either the old or the new complete cache.

A crash (kill -9, power loss) between creating the temp file and renaming it leaves that temp
file behind, and it holds a complete cache with a refresh token. Such leftovers (our naming
only: `.<name>.<8 random chars>.tmp` beside the cache) are removed when the cache is loaded
(start, and whenever the file changed) and after every write, once they are older than
STALE_TEMP_SECONDS: a younger one may belong to a write in progress in another process (`login`
while the exporter runs).
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
from pathlib import Path

import msal

from .. import oscompat

log = logging.getLogger(__name__)

STALE_TEMP_SECONDS = 60.0
MAX_DIR_ENTRIES = 10_000  # bound the leftover scan of a (possibly shared) directory


_warned: set[str] = set()


def warn_if_exposed(path: Path) -> bool:
    """Log once per path when a secret, key, token cache or its directory is accessible by others
    (POSIX: group/other mode bits; Windows: anyone in the ACL but the owner, SYSTEM, Administrators).

    Not an error (the operator may have reasons), but a refresh token or client secret that
    any local user can read (or a directory in which anyone can swap the file) is a credential
    leak waiting to happen. Returns True if exposed."""
    found = oscompat.exposure(path)
    if found is not None and str(path) not in _warned:
        _warned.add(str(path))
        log.warning("%s", found.message(path))
    return found is not None


def _temp_pattern(path: Path) -> re.Pattern[str]:
    # tempfile.mkstemp(prefix=".<name>.", suffix=".tmp"): 8 characters of [a-z0-9_] between them
    return re.compile(re.escape(f".{path.name}.") + r"[a-z0-9_]{8}\.tmp")


def remove_stale_temps(path: Path, min_age: float = STALE_TEMP_SECONDS) -> int:
    """Delete temp files an interrupted write of `path` left behind; returns how many."""
    pattern, now, removed = _temp_pattern(path), time.time(), 0
    try:
        with os.scandir(path.parent) as entries:
            for i, entry in enumerate(entries):
                if i >= MAX_DIR_ENTRIES:
                    break
                if not pattern.fullmatch(entry.name) or not entry.is_file(follow_symlinks=False):
                    continue
                try:
                    if now - entry.stat(follow_symlinks=False).st_mtime < min_age:
                        continue
                    os.unlink(entry.path)
                    removed += 1
                except FileNotFoundError:
                    continue
    except OSError as exc:
        log.debug("cannot clean up temp files beside %s: %s", path, exc)
        return removed
    if removed:
        log.info("removed %d temp file(s) an interrupted write of %s left behind", removed, path)
    return removed


class CacheMissing(Exception):
    """No cache file yet (run `login`)."""


class CacheCorrupt(Exception):
    """The file exists but cannot be read or parsed."""


def load_cache(path: Path) -> msal.SerializableTokenCache:
    cache = msal.SerializableTokenCache()
    warn_if_exposed(path.parent)
    warn_if_exposed(path)
    remove_stale_temps(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CacheMissing(str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CacheCorrupt(f"{path}: {type(exc).__name__}") from None
    if text.strip():
        try:
            if not isinstance(json.loads(text), dict):
                raise ValueError("not a JSON object")
            cache.deserialize(text)
        except ValueError as exc:
            raise CacheCorrupt(f"{path}: not a valid token cache ({type(exc).__name__})") from None
    return cache


def atomic_write(path: Path, data: str, mode: int = 0o600) -> None:
    """Replace `path` with `data` atomically and durably, owner-only (`mode` on POSIX) from creation."""
    oscompat.make_private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        try:
            oscompat.protect_file(tmp, fd, mode)
            fh = os.fdopen(fd, "w", encoding="utf-8", newline="")
        except BaseException:
            os.close(fd)
            raise
        with fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        oscompat.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        remove_stale_temps(path)
        raise
    oscompat.fsync_dir(path.parent)
    remove_stale_temps(path)


def save_cache(path: Path, cache: msal.SerializableTokenCache) -> None:
    atomic_write(path, cache.serialize())
    warn_if_exposed(path.parent)  # `login` into an existing directory others can use (once per path)
