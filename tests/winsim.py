"""Run the exporter as Windows CPython would see it, on Linux (pytest plugin: `-p tests.winsim_plugin`).

There is no Windows machine in CI, so this approximates one, honestly bounded:
- the POSIX-only names Windows CPython 3.11/3.12 lacks are deleted from `os` and `signal`
  (os.fchmod, os.getuid, os.chown, os.O_DIRECTORY, signal.SIGHUP, ...) and the Windows-only
  ones added (signal.SIGBREAK, CTRL_C_EVENT, CTRL_BREAK_EVENT);
- `loop.add_signal_handler` raises NotImplementedError (as ProactorEventLoop does) and
  `os.open` on a directory raises PermissionError (as on Windows: no directory fsync);
- exporter.oscompat runs its Windows implementation, including the real ctypes sequences of
  oscompat/winapi.py, against FakeAdvapi32/FakeKernel32 below: an ACL store keyed by inode (a
  rename keeps a file's security descriptor, as on NTFS), new files inheriting from a protected
  parent directory or else getting a ProgramData-like DACL that lets Users read;
- child Python processes the tests start (`python -m exporter ...`) get the same simulation
  through tests/winsim_boot/sitecustomize.py.
What it cannot show: real NTFS ACL semantics, real sharing violations between processes,
console events, VT mode on a real console, Windows paths (drive letters) and ProactorEventLoop.
Those need a real Windows host (docs/windows.md lists them).
"""

from __future__ import annotations

import asyncio.unix_events
import atexit
import ctypes
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from exporter import oscompat
from exporter.oscompat.winapi import Win32
from exporter.oscompat.windows import WindowsPlatform, parse_sddl

USER_SID = "S-1-5-21-3623811015-3361044348-30300820-1013"
BOOT_DIR = str(Path(__file__).resolve().parent / "winsim_boot")
ROOT = str(Path(__file__).resolve().parent.parent)
POSIX_ONLY_OS = ("fchmod", "lchmod", "getuid", "geteuid", "getgid", "getegid", "chown", "fchown", "lchown",
                 "O_DIRECTORY", "O_NOFOLLOW", "killpg", "getpgid", "setsid", "getpwnam")
POSIX_ONLY_SIGNAL = ("SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM", "alarm", "pause", "setitimer",
                     "getitimer", "siginterrupt")
UNPROTECTED = f"O:{USER_SID}D:AI(A;ID;FA;;;SY)(A;ID;FA;;;BA)(A;ID;0x1200a9;;;BU)(A;ID;FA;;;{USER_SID})"
ERROR_FILE_NOT_FOUND, ERROR_INVALID_PARAMETER, ERROR_INSUFFICIENT_BUFFER = 2, 87, 122
SID_ADDR, TOKEN_HANDLE = 0x5151, 0x7777


def _arg(ref: Any) -> Any:
    """The ctypes object behind a byref() argument."""
    return ref._obj


class AclStore:
    """Security descriptors by (device, inode), with NTFS-like inheritance from the parent directory.

    Shared by every simulated process through a JSON file (`file`), as the file system is."""

    def __init__(self, file: str | None = None) -> None:
        self.file = file
        self._mem: dict[str, str] = {}

    @property
    def by_inode(self) -> dict[str, str]:
        if self.file is None:
            return self._mem
        try:
            with open(self.file, encoding="utf-8") as fh:
                return dict(json.load(fh))
        except (FileNotFoundError, ValueError):
            return {}

    @staticmethod
    def key(path: str) -> str:
        st = os.stat(path)
        return f"{st.st_dev}:{st.st_ino}"

    def get(self, path: str) -> str:
        k, table = self.key(path), self.by_inode
        if k in table:
            return table[k]
        parent = os.path.dirname(os.path.abspath(path))
        if parent != path and self.key(parent) in table:
            _, _, aces = parse_sddl(table[self.key(parent)])
            inherited = "".join(f"({a[0]};ID;{a[2]};;;{a[5]})" for a in aces if "OI" in a[1] or "CI" in a[1])
            if inherited:
                return f"O:{USER_SID}D:AI{inherited}"
        return UNPROTECTED

    def set(self, path: str, sddl: str) -> None:
        if self.file is None:
            self._mem[self.key(path)] = sddl
            return
        table = self.by_inode
        table[self.key(path)] = sddl
        tmp = f"{self.file}.{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(table, fh)
        os.replace(tmp, self.file)

    def grant(self, path: str, trustee: str, rights: str = "0x1200a9") -> None:
        """What an administrator's icacls /grant would do (tests: make a file exposed)."""
        owner, flags, aces = parse_sddl(self.get(path))
        body = "".join(f"({';'.join(a)})" for a in aces) + f"(A;;{rights};;;{trustee})"
        self.set(path, f"O:{owner or USER_SID}D:{flags or ''}{body}")


class Memory:
    """Fake LocalAlloc'd blocks: every block handed out must come back through LocalFree."""

    def __init__(self) -> None:
        self.blocks: dict[int, Any] = {}
        self.strings = 0
        self._next = 0x10000

    def alloc(self, value: Any) -> int:
        self._next += 16
        self.blocks[self._next] = value
        return self._next

    def outstanding(self) -> int:
        return len(self.blocks) + self.strings


class FakeAdvapi32:
    """The advapi32 functions winapi.Win32 calls, with their real out-parameter conventions."""

    def __init__(self, store: AclStore, memory: Memory, kernel: FakeKernel32) -> None:
        self.store, self.mem, self.kernel = store, memory, kernel
        self.calls: list[str] = []
        self._dacl_of: dict[int, str] = {}

    def _fail(self, code: int) -> int:
        self.kernel.last_error = code
        return 0

    def OpenProcessToken(self, process: Any, access: int, token: Any) -> int:
        self.calls.append("OpenProcessToken")
        assert access == 0x0008, "TOKEN_QUERY is all we need"
        _arg(token).value = TOKEN_HANDLE
        return 1

    def GetTokenInformation(self, token: Any, cls: int, buf: Any, size: Any, ret: Any) -> int:
        self.calls.append("GetTokenInformation")
        assert token.value == TOKEN_HANDLE and cls == 1
        if buf is None:
            _arg(ret).value = 16
            return self._fail(ERROR_INSUFFICIENT_BUFFER)
        assert size.value >= 16
        ctypes.cast(buf, ctypes.POINTER(ctypes.c_void_p))[0] = SID_ADDR
        return 1

    def ConvertSidToStringSidW(self, sid: Any, out: Any) -> int:
        self.calls.append("ConvertSidToStringSidW")
        assert sid.value == SID_ADDR
        _arg(out).value = USER_SID
        self.mem.strings += 1
        return 1

    def GetNamedSecurityInfoW(self, path: Any, objtype: int, info: int, o: Any, g: Any, d: Any, s: Any,
                              sd: Any) -> int:
        self.calls.append("GetNamedSecurityInfoW")
        assert objtype == 1 and info & 0x4
        if not os.path.exists(path.value):
            return ERROR_FILE_NOT_FOUND
        _arg(sd).value = self.mem.alloc(("sd", self.store.get(path.value)))
        return 0

    def ConvertSecurityDescriptorToStringSecurityDescriptorW(self, sd: Any, rev: int, info: int, out: Any,
                                                              length: Any) -> int:
        self.calls.append("ConvertSecurityDescriptorToStringSecurityDescriptorW")
        kind, sddl = self.mem.blocks[sd.value]
        assert kind == "sd" and rev == 1
        _arg(out).value = sddl
        self.mem.strings += 1
        return 1

    def ConvertStringSecurityDescriptorToSecurityDescriptorW(self, sddl: Any, rev: int, sd: Any, size: Any) -> int:
        self.calls.append("ConvertStringSecurityDescriptorToSecurityDescriptorW")
        text = sddl.value
        _, flags, aces = parse_sddl(text)
        if rev != 1 or flags is None or not aces or any(len(a) != 6 for a in aces):
            return self._fail(1336)  # ERROR_INVALID_ACL
        _arg(sd).value = self.mem.alloc(("sd", text))
        return 1

    def GetSecurityDescriptorDacl(self, sd: Any, present: Any, dacl: Any, defaulted: Any) -> int:
        self.calls.append("GetSecurityDescriptorDacl")
        _, sddl = self.mem.blocks[sd.value]
        _arg(present).value = 1
        _arg(defaulted).value = 0
        addr = sd.value + 8  # points into the descriptor: freed with it, not separately
        self._dacl_of[addr] = sddl
        _arg(dacl).value = addr
        return 1

    def SetNamedSecurityInfoW(self, path: Any, objtype: int, info: int, owner: Any, group: Any, dacl: Any,
                              sacl: Any) -> int:
        self.calls.append("SetNamedSecurityInfoW")
        if objtype != 1 or info != (0x4 | 0x80000000) or owner is not None or group is not None:
            return ERROR_INVALID_PARAMETER
        if not os.path.exists(path.value):
            return ERROR_FILE_NOT_FOUND
        sddl = self._dacl_of[dacl.value]
        self.store.set(path.value, f"O:{USER_SID}{sddl[sddl.index('D:'):]}")
        return 0


class FakeKernel32:
    def __init__(self, memory: Memory) -> None:
        self.mem = memory
        self.last_error = 0
        self.consoles: dict[int, int] = {}  # handle -> console mode (others are files/pipes)
        self.ctrl_handlers: list[Any] = []

    def GetCurrentProcess(self) -> int:
        return -1

    def CloseHandle(self, handle: Any) -> int:
        return 1

    def LocalFree(self, block: Any) -> None:
        if isinstance(block, ctypes.c_wchar_p):
            assert block.value is not None
            self.mem.strings -= 1
        else:
            del self.mem.blocks[block.value]

    def GetConsoleMode(self, handle: int, mode: Any) -> int:
        if handle not in self.consoles:
            self.last_error = 6  # ERROR_INVALID_HANDLE: not a console
            return 0
        _arg(mode).value = self.consoles[handle]
        return 1

    def SetConsoleMode(self, handle: int, mode: int) -> int:
        self.consoles[handle] = mode
        return 1

    def SetConsoleCtrlHandler(self, routine: Any, add: bool) -> int:
        if add:
            self.ctrl_handlers.append(routine)
        else:
            self.ctrl_handlers.remove(routine)
        return 1


class FakeWindows:
    """One simulated Windows host: the ACL store, the fake DLLs and a WindowsPlatform using them."""

    def __init__(self, config_poll_seconds: float = 5.0, store_file: str | None = None) -> None:
        self.store, self.mem = AclStore(store_file), Memory()
        self.kernel32 = FakeKernel32(self.mem)
        self.advapi32 = FakeAdvapi32(self.store, self.mem, self.kernel32)
        self.api = Win32(self.advapi32, self.kernel32, get_last_error=lambda: self.kernel32.last_error,
                         get_osfhandle=lambda fd: 1000 + fd)
        self.platform = WindowsPlatform(self.api, config_poll_seconds=config_poll_seconds)


HOST: FakeWindows | None = None
_applied: set[str] = set()


def apply_signal() -> None:
    if "signal" in _applied:
        return
    _applied.add("signal")
    for name in POSIX_ONLY_SIGNAL:
        if hasattr(signal, name):
            delattr(signal, name)
    signal.SIGBREAK = 21  # type: ignore[attr-defined]
    signal.CTRL_C_EVENT, signal.CTRL_BREAK_EVENT = 0, 1  # type: ignore[attr-defined]

    def no_signal_handlers(self: Any, sig: int, callback: Any, *args: Any) -> None:
        raise NotImplementedError  # what ProactorEventLoop does

    asyncio.unix_events._UnixSelectorEventLoop.add_signal_handler = no_signal_handlers  # type: ignore[method-assign]


def apply_os() -> None:
    global HOST
    if "os" in _applied:
        return
    _applied.add("os")
    for name in POSIX_ONLY_OS:
        if hasattr(os, name):
            delattr(os, name)
    real_open = os.open

    def windows_open(path: Any, flags: int, mode: int = 0o777, *, dir_fd: Any = None) -> int:
        if dir_fd is None and os.path.isdir(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, mode, dir_fd=dir_fd)

    os.open = windows_open
    if not os.environ.get("M365_WINSIM_ACL_STORE"):
        top = tempfile.mkdtemp(prefix="winsim-")
        atexit.register(shutil.rmtree, top, True)
        os.environ["M365_WINSIM_ACL_STORE"] = os.path.join(top, "acl.json")
    HOST = FakeWindows(float(os.environ.get("M365_WINSIM_CONFIG_POLL", "5")), os.environ["M365_WINSIM_ACL_STORE"])
    oscompat.select(HOST.platform)
    os.environ["M365_SIMULATE_WINDOWS"] = "1"
    _patch_children()


def child_env(env: dict[str, str] | None) -> dict[str, str]:
    """Environment for a child Python process that must run simulated too."""
    env = dict(os.environ if env is None else env)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([BOOT_DIR, *[p for p in paths if p != BOOT_DIR], ROOT])
    env["M365_SIMULATE_WINDOWS"] = "1"
    return env


def _patch_children() -> None:
    real_init = subprocess.Popen.__init__

    def init(self: subprocess.Popen[Any], args: Any, *a: Any, **kw: Any) -> None:
        argv = [args] if isinstance(args, str | bytes) else list(args)
        if argv and argv[0] == sys.executable:
            kw["env"] = child_env(kw.get("env"))
        real_init(self, args, *a, **kw)

    subprocess.Popen.__init__ = init  # type: ignore[method-assign]


def apply() -> None:
    apply_signal()
    apply_os()


# ------------------------------------------------------------------ helpers for tests that run both ways

def expose(path: Path) -> None:
    """Make `path` accessible to other local users: chmod on POSIX, a Users grant on (simulated) Windows."""
    if oscompat.is_windows():
        assert HOST is not None, "the Windows implementation is only simulated here"
        HOST.store.grant(str(path), "BU")
    else:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
