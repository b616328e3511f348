"""Persistent MSAL token cache file: crash-safe writes, owner-only permissions.

Why: a delegated credential's refresh token is the only thing that keeps mail flowing
without a human; losing or corrupting it means somebody must sign in again. Writes go to a
temp file in the same directory (mode 0600 from creation, never world-readable even for a
moment), are fsync'd, then atomically renamed over the old file and the directory is
fsync'd, so a crash at any instant leaves either the old or the new complete cache.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import msal

log = logging.getLogger(__name__)


_warned: set[str] = set()


def warn_if_exposed(path: Path) -> bool:
    """Log once per file when a secret, key or token cache is readable by group or others.

    Not an error (the operator may have reasons), but a refresh token or client secret that
    any local user can read is a credential leak waiting to happen. Returns True if exposed."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    if mode & 0o077 and str(path) not in _warned:
        _warned.add(str(path))
        log.warning("%s is accessible by group/others (mode %o): chmod 600 it", path, mode & 0o777)
    return bool(mode & 0o077)


class CacheMissing(Exception):
    """No cache file yet (run `login`)."""


class CacheCorrupt(Exception):
    """The file exists but cannot be read or parsed."""


def load_cache(path: Path) -> msal.SerializableTokenCache:
    cache = msal.SerializableTokenCache()
    warn_if_exposed(path)
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
    """Replace `path` with `data` atomically and durably, file created with `mode`."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_cache(path: Path, cache: msal.SerializableTokenCache) -> None:
    atomic_write(path, cache.serialize())
