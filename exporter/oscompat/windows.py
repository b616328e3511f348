"""Windows: ACLs instead of modes, console events instead of signals, a config watch instead of SIGHUP.

What Windows CPython lacks or does differently, and what we do instead:
- no SIGHUP and no `loop.add_signal_handler` (ProactorEventLoop): Ctrl+C (SIGINT) and Ctrl+Break
  (SIGBREAK) go through `signal.signal` and `loop.call_soon_threadsafe`; WinSW and NSSM stop a
  service by sending Ctrl+C. Console close and system shutdown arrive as console control events
  (handled through SetConsoleCtrlHandler, waiting a bounded time for the shutdown to finish);
  log-off events are ignored, since a service's console receives them for every user who logs off.
  Reload: POST /-/reload, and a bounded poll of the config file (one stat every few seconds,
  reload when it changed and then held still for one poll, so a half-written file is not read).
- `os.chmod` only toggles the read-only flag: a file is made private with a protected DACL
  granting full access to the current user and SYSTEM only (no inherited entries), before any
  secret byte is written. Exposure is read back from the DACL: any allow entry for someone other
  than the owner, the current user, SYSTEM or Administrators is reported, with an icacls fix.
- `os.replace` onto a file another process has open fails with a sharing violation: retried.
- no directory fsync (NTFS journals the rename's metadata); the file itself is fsync'd.
- legacy consoles print ANSI escapes as garbage unless virtual-terminal mode is switched on.

All Win32 calls go through `api` (winapi.Win32 by default), a thin ctypes layer that speaks SDDL
strings, so this logic is tested on Linux against a fake (tests/winsim.py).
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import ntpath
import os
import re
import signal
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol, TextIO

from .base import Exposure, Platform, Triggers

log = logging.getLogger("exporter.oscompat")

SYSTEM_SID = "S-1-5-18"
ADMINISTRATORS_SID = "S-1-5-32-544"
# SDDL abbreviations of well-known SIDs (those ConvertSecurityDescriptorToStringSecurityDescriptor emits
# for the accounts that usually appear on files), as names for messages and SIDs for icacls.
WELL_KNOWN = {
    "SY": (SYSTEM_SID, "SYSTEM"), "BA": (ADMINISTRATORS_SID, "Administrators"),
    "BU": ("S-1-5-32-545", "Users"), "BG": ("S-1-5-32-546", "Guests"), "PU": ("S-1-5-32-547", "Power Users"),
    "WD": ("S-1-1-0", "Everyone"), "AU": ("S-1-5-11", "Authenticated Users"), "AN": ("S-1-5-7", "ANONYMOUS"),
    "IU": ("S-1-5-4", "INTERACTIVE"), "NU": ("S-1-5-2", "NETWORK"), "SU": ("S-1-5-6", "SERVICE"),
    "LS": ("S-1-5-19", "LOCAL SERVICE"), "NS": ("S-1-5-20", "NETWORK SERVICE"),
    "CO": ("S-1-3-0", "CREATOR OWNER"), "OW": ("S-1-3-4", "OWNER RIGHTS"),
    "RD": ("S-1-5-32-555", "Remote Desktop Users"),
}
ALLOW_TYPES = frozenset({"A", "OA", "XA", "ZA"})
CTRL_C_EVENT, CTRL_BREAK_EVENT, CTRL_CLOSE_EVENT, CTRL_LOGOFF_EVENT, CTRL_SHUTDOWN_EVENT = 0, 1, 2, 5, 6
CONFIG_POLL_SECONDS = 5.0
SHUTDOWN_GRACE_SECONDS = 4.5  # Windows ends the process 5 s after a close/shutdown event anyway


class Win32Api(Protocol):
    """The Win32 operations used here (winapi.Win32 implements them with ctypes)."""

    def current_user_sid(self) -> str: ...
    def get_security_sddl(self, path: str) -> str: ...
    def set_protected_dacl(self, path: str, sddl: str) -> None: ...
    def enable_vt_mode(self, fd: int) -> bool: ...
    def set_console_ctrl_handler(self, handler: Callable[[int], bool]) -> Callable[[], None]: ...


def private_sddl(user_sid: str, directory: bool = False) -> str:
    """Protected DACL (P: no inherited entries): full access for SYSTEM and the user; for a directory
    also inherited by what is created in it (OICI: objects and containers)."""
    inherit = "OICI" if directory else ""
    return f"D:P(A;{inherit};FA;;;SY)(A;{inherit};FA;;;{user_sid})"


_ACE = re.compile(r"\(([^()]*)\)")


def _sid_of(trustee: str) -> str:
    return WELL_KNOWN[trustee][0] if trustee in WELL_KNOWN else trustee


def _name_of(trustee: str) -> str:
    return WELL_KNOWN[trustee][1] if trustee in WELL_KNOWN else trustee


def parse_sddl(sddl: str) -> tuple[str | None, str | None, list[list[str]]]:
    """(owner, DACL flags or None when there is no DACL, [ACE fields]) of an SDDL string."""
    owner_m = re.search(r"O:(.+?)(?=[GDS]:|$)", sddl)
    dacl_m = re.search(r"D:(.*?)(?=S:\w*\(|S:$|$)", sddl)
    if dacl_m is None:
        return (owner_m.group(1) if owner_m else None), None, []
    body = dacl_m.group(1)
    flags = re.match(r"[A-Z_]*", body)
    aces = [m.group(1).split(";") for m in _ACE.finditer(body)]
    return (owner_m.group(1) if owner_m else None), (flags.group(0) if flags else ""), aces


def exposed_trustees(sddl: str, user_sid: str) -> list[str] | None:
    """Trustees besides the owner, the current user, SYSTEM and Administrators that an allow entry
    grants access to (an empty list: private). None: no DACL at all, so everyone has full access."""
    owner, flags, aces = parse_sddl(sddl)
    if flags is None or flags.startswith("NO_ACCESS_CONTROL"):
        return None
    trusted = {SYSTEM_SID, ADMINISTRATORS_SID, "S-1-3-4", _sid_of(user_sid)}
    if owner:
        trusted.add(_sid_of(owner))
    out: list[str] = []
    for ace in aces:
        if len(ace) < 6:
            out.append("an unreadable access entry")
            continue
        ace_type, ace_flags, rights, trustee = ace[0], ace[1], ace[2], ace[5]
        if ace_type not in ALLOW_TYPES or "IO" in ace_flags or rights in ("", "0x0", "0"):
            continue  # deny entries, inherit-only entries (they do not apply to this object), no rights
        if _sid_of(trustee) not in trusted and trustee not in out:
            out.append(trustee)
    return out


class WindowsPlatform(Platform):
    name = "windows"

    def __init__(self, api: Win32Api | None = None, config_poll_seconds: float = CONFIG_POLL_SECONDS) -> None:
        self._api = api
        self._sid: str | None = None
        self._vt: dict[int, bool] = {}
        self.config_poll_seconds = config_poll_seconds
        self.shutdown_grace_seconds = SHUTDOWN_GRACE_SECONDS

    @property
    def api(self) -> Win32Api:
        if self._api is None:
            from .winapi import Win32

            self._api = Win32()
        return self._api

    def user_sid(self) -> str:
        if self._sid is None:
            self._sid = self.api.current_user_sid()
        return self._sid

    def default_config_path(self) -> str:
        base = os.environ.get("ProgramData") or r"C:\ProgramData"
        return ntpath.join(base, "m365-mail-exporter", "m365-mail-exporter.yml")

    def is_sharing_violation(self, exc: OSError) -> bool:
        from .base import SHARING_WINERRORS

        return getattr(exc, "winerror", None) in SHARING_WINERRORS

    # ------------------------------------------------------------------ files

    def protect_file(self, path: Path, fd: int | None, mode: int) -> None:
        self.api.set_protected_dacl(str(path), private_sddl(self.user_sid()))

    def make_private_dir(self, path: Path) -> None:
        if path.is_dir():
            return  # an existing directory keeps its ACL (exposure() warns about it)
        path.mkdir(parents=True, exist_ok=True)
        self.api.set_protected_dacl(str(path), private_sddl(self.user_sid(), directory=True))

    def exposure(self, path: Path) -> Exposure | None:
        try:
            is_dir = path.is_dir()
            if not path.exists():
                return None
            sddl = self.api.get_security_sddl(str(path))
        except OSError as exc:
            log.debug("cannot read the ACL of %s: %s", path, exc)
            return None
        sid = self.user_sid()
        who = exposed_trustees(sddl, sid)
        if who == []:
            return None
        names = "Everyone (the file has no DACL)" if who is None else ", ".join(_name_of(t) for t in who)
        removes = "" if not who else " /remove:g " + " ".join(f"*{_sid_of(t)}" for t in who)
        perm = "(OI)(CI)F" if is_dir else "F"
        fix = (f'icacls "{path}" /inheritance:r /grant:r *{sid}:{perm} /grant:r *{SYSTEM_SID}:{perm}{removes}'
               " (or remove it and let the exporter or `login` create it)")
        return Exposure(f"{names} (not only its owner, SYSTEM and Administrators)", fix)

    def fsync_dir(self, path: Path) -> None:
        return None  # no directory handles to fsync on Windows; NTFS journals the rename

    def enable_ansi(self, stream: TextIO) -> bool:
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):
            return False
        if fd not in self._vt:
            try:
                self._vt[fd] = bool(self.api.enable_vt_mode(fd))
            except OSError:
                self._vt[fd] = False
        return self._vt[fd]

    # ------------------------------------------------------------------ stop and reload

    def install_triggers(self, loop: asyncio.AbstractEventLoop, stop: Callable[[], None],
                         reload: Callable[[], Awaitable[object]], config_path: str | Path | None) -> Triggers:
        t = Triggers(loop, stop, reload)

        def on_signal(signum: int, frame: Any) -> None:
            loop.call_soon_threadsafe(t.request_stop)

        for name in ("SIGINT", "SIGBREAK", "SIGTERM"):
            sig = getattr(signal, name, None)
            if sig is None:
                continue
            previous = signal.signal(sig, on_signal)
            t.on_close(lambda sig=sig, previous=previous: signal.signal(sig, previous))

        finished = threading.Event()
        atexit.register(finished.set)  # the interpreter is done: let Windows end the process

        def on_console_event(event: int) -> bool:
            if event == CTRL_LOGOFF_EVENT:
                return True  # a service's console gets this whenever any user logs off: not for us
            if event in (CTRL_CLOSE_EVENT, CTRL_SHUTDOWN_EVENT):
                loop.call_soon_threadsafe(t.request_stop)
                finished.wait(self.shutdown_grace_seconds)
                return True
            return False  # Ctrl+C / Ctrl+Break: the signal handlers above take them

        try:
            t.on_close(self.api.set_console_ctrl_handler(on_console_event))
        except OSError as exc:
            log.warning("console close/shutdown events will not stop the exporter cleanly: %s", exc)
        t.on_close(lambda: atexit.unregister(finished.set))
        if config_path is not None:
            t.add_task(loop.create_task(self.watch_config(Path(config_path), t)))
        return t

    async def watch_config(self, path: Path, triggers: Triggers) -> None:
        """Reload when the config file changed and then stayed unchanged for one poll (bounded: one stat
        per poll; the reload itself keeps the running config if the new one does not load)."""
        def stamp() -> tuple[int, int] | None:
            try:
                st = path.stat()
            except OSError:
                return None
            return st.st_mtime_ns, st.st_size

        seen = await asyncio.to_thread(stamp)
        pending: tuple[int, int] | None = None
        changed = False
        while True:
            await asyncio.sleep(self.config_poll_seconds)
            now = await asyncio.to_thread(stamp)
            if now != seen:
                seen, changed, pending = now, True, now
                continue
            if changed and now == pending:
                changed = False
                log.info("config file %s changed: reloading", path)
                triggers.request_reload()
