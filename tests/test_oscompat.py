"""exporter.oscompat: the POSIX implementation as it always behaved, the Windows one against fake DLLs.

The Windows tests drive oscompat/windows.py and the ctypes sequences of oscompat/winapi.py through
tests/winsim.py's FakeAdvapi32/FakeKernel32 (which check the flags and arguments the real API
needs and that every buffer Windows would allocate is freed)."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import stat
import threading
import time
from pathlib import Path

import pytest

from exporter import oscompat
from exporter.oscompat import base
from exporter.oscompat.posix import PosixPlatform
from exporter.oscompat.windows import CTRL_CLOSE_EVENT, CTRL_LOGOFF_EVENT, exposed_trustees, private_sddl
from tests.winsim import UNPROTECTED, USER_SID, FakeWindows

SIMULATED = oscompat.is_windows()  # this file also runs under tests/winsim_plugin.py


@pytest.fixture
def win() -> FakeWindows:
    return FakeWindows(config_poll_seconds=0.05)


# ------------------------------------------------------------------ Windows ACLs through the ctypes layer

def test_protect_file_sets_a_protected_dacl_for_user_and_system_only(win: FakeWindows, tmp_path: Path) -> None:
    f = tmp_path / "cache.json"
    f.write_text("{}")
    p = win.platform
    exp = p.exposure(f)
    assert exp is not None and "Users" in exp.who and "chmod" not in exp.fix  # inherited ProgramData-like DACL
    assert f'icacls "{f}" /inheritance:r' in exp.fix and "/remove:g *S-1-5-32-545" in exp.fix
    p.protect_file(f, None, 0o600)
    assert win.store.get(str(f)) == f"O:{USER_SID}D:P(A;;FA;;;SY)(A;;FA;;;{USER_SID})"
    assert p.exposure(f) is None
    assert win.mem.outstanding() == 0, "every SID string, descriptor and SDDL string was LocalFree'd"
    i = win.advapi32.calls.index("OpenProcessToken")  # the user's SID: size query, then the real call
    assert win.advapi32.calls[i:i + 4] == ["OpenProcessToken", "GetTokenInformation", "GetTokenInformation",
                                           "ConvertSidToStringSidW"]
    assert "SetNamedSecurityInfoW" in win.advapi32.calls


def test_rename_keeps_the_protected_dacl_and_new_dirs_pass_it_on(win: FakeWindows, tmp_path: Path) -> None:
    d = tmp_path / "tokens" / "sub"
    win.platform.make_private_dir(d)
    assert d.is_dir() and win.store.get(str(d)) == f"O:{USER_SID}" + private_sddl(USER_SID, directory=True)
    tmp = d / ".c.json.abcdefgh.tmp"
    tmp.write_text("{}")
    assert win.platform.exposure(tmp) is None  # inherits SYSTEM + user from the protected directory
    win.platform.protect_file(tmp, None, 0o600)
    os.replace(tmp, d / "c.json")
    assert win.platform.exposure(d / "c.json") is None
    win.store.grant(str(d), "WD")
    exp = win.platform.exposure(d)
    assert exp is not None and exp.who.startswith("Everyone") and "(OI)(CI)F" in exp.fix
    win.platform.make_private_dir(d)  # an existing directory keeps its ACL: warned, never rewritten
    assert win.platform.exposure(d) is not None


@pytest.mark.parametrize(("sddl", "who"), [
    (f"O:{USER_SID}D:P(A;;FA;;;SY)(A;;FA;;;{USER_SID})", []),
    ("O:BAD:PAI(A;;FA;;;SY)(A;;FA;;;BA)(A;OICIIO;GA;;;CO)(D;;FA;;;WD)", []),  # inherit-only, deny: no access
    ("O:S-1-5-21-9D:(A;;FA;;;S-1-5-21-9)(A;;FR;;;AU)", ["AU"]),  # the owner is trusted, others are not
    (UNPROTECTED, ["BU"]),
    ("O:BAD:NO_ACCESS_CONTROL", None),
    ("O:BA", None),
])
def test_exposure_is_read_from_the_dacl(sddl: str, who: list[str] | None) -> None:
    assert exposed_trustees(sddl, USER_SID) == who


def test_win32_failures_raise_oserror_with_the_windows_code(win: FakeWindows, tmp_path: Path) -> None:
    with pytest.raises(OSError) as info:
        win.api.set_protected_dacl(str(tmp_path / "missing"), private_sddl(USER_SID))
    assert getattr(info.value, "winerror", None) == 2
    with pytest.raises(OSError) as info:
        win.api.set_protected_dacl(str(tmp_path), "D:P(garbage)")
    assert getattr(info.value, "winerror", None) == 1336
    assert win.platform.exposure(tmp_path / "missing") is None
    assert win.mem.outstanding() == 0


def test_default_config_path_is_under_programdata(win: FakeWindows, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ProgramData", r"D:\ProgramData")
    assert win.platform.default_config_path() == r"D:\ProgramData\m365-mail-exporter\m365-mail-exporter.yml"
    monkeypatch.delenv("ProgramData")
    assert win.platform.default_config_path().startswith("C:\\ProgramData\\m365-mail-exporter\\")
    assert PosixPlatform().default_config_path() == "config/m365-mail-exporter.yml"


# ------------------------------------------------------------------ console

class FakeConsoleStream(io.StringIO):
    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def isatty(self) -> bool:
        return True


def test_vt_mode_is_switched_on_for_a_console_and_not_for_a_pipe(win: FakeWindows) -> None:
    win.kernel32.consoles[1001] = 0x3  # ENABLE_PROCESSED_OUTPUT | ENABLE_WRAP_AT_EOL_OUTPUT: a legacy console
    assert win.platform.enable_ansi(FakeConsoleStream(1)) is True
    assert win.kernel32.consoles[1001] == 0x3 | 0x4
    assert win.platform.enable_ansi(FakeConsoleStream(2)) is False  # fd 2 redirected: no console mode
    assert win.platform.enable_ansi(io.StringIO()) is False  # no file descriptor at all


def test_check_colours_only_where_the_console_renders_them(win: FakeWindows) -> None:
    from exporter.commands.check import use_colour

    previous = oscompat.select(win.platform)
    try:
        win.kernel32.consoles[1001] = 0x3
        assert use_colour(FakeConsoleStream(1), {}) is True
        assert use_colour(FakeConsoleStream(2), {}) is False
        assert use_colour(FakeConsoleStream(1), {"NO_COLOR": "1"}) is False
    finally:
        oscompat.select(previous)


# ------------------------------------------------------------------ replace

def test_replace_retries_sharing_violations_then_gives_up(win: FakeWindows, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    src, dst = tmp_path / "a", tmp_path / "b"
    src.write_text("new")
    dst.write_text("old")
    real, calls = os.replace, []
    win.platform.replace_delays = (0.01, 0.02, 0.03)

    def busy(times: int, winerror: int = 32):
        def replace(s: object, d: object) -> None:
            calls.append(d)
            if len(calls) <= times:
                err = PermissionError(13, "The process cannot access the file")
                err.winerror = winerror  # type: ignore[attr-defined]
                raise err
            real(s, d)  # type: ignore[arg-type]
        return replace

    monkeypatch.setattr(base.os, "replace", busy(3))
    win.platform.replace(src, dst)
    assert dst.read_text() == "new" and len(calls) == 4
    calls.clear()
    monkeypatch.setattr(base.os, "replace", busy(100))
    t0 = time.monotonic()
    with pytest.raises(PermissionError):
        win.platform.replace(src, dst)
    assert len(calls) == 4 and time.monotonic() - t0 < 2
    assert sum(base.REPLACE_DELAYS) < 2.5, "the real back-off is bounded too"
    calls.clear()
    monkeypatch.setattr(base.os, "replace", busy(1, winerror=1920))  # not a sharing violation: no retry
    with pytest.raises(PermissionError):
        win.platform.replace(src, dst)
    assert len(calls) == 1
    calls.clear()
    monkeypatch.setattr(base.os, "replace", busy(1))
    with pytest.raises(PermissionError):
        PosixPlatform().replace(src, dst)  # POSIX never retries: EACCES there is a real permission problem
    assert len(calls) == 1


# ------------------------------------------------------------------ stop and reload triggers

async def test_windows_triggers_ctrl_c_console_events_and_config_watch(win: FakeWindows, tmp_path: Path) -> None:
    cfg = tmp_path / "config.yml"
    cfg.write_text("a: 1\n")
    stop, reloads = asyncio.Event(), []

    async def reload() -> None:
        reloads.append(time.monotonic())

    before = signal.getsignal(signal.SIGINT)
    win.platform.shutdown_grace_seconds = 0.1
    t = win.platform.install_triggers(asyncio.get_running_loop(), stop.set, reload, cfg)
    try:
        await asyncio.sleep(0.2)
        assert reloads == []  # nothing changed yet
        cfg.write_text("a: 2\nb: 3\n")
        for _ in range(100):
            if reloads:
                break
            await asyncio.sleep(0.02)
        assert len(reloads) == 1
        await asyncio.sleep(0.2)
        assert len(reloads) == 1, "one change, one reload"
        (handler,) = win.kernel32.ctrl_handlers
        assert handler(CTRL_LOGOFF_EVENT) == 1 and not stop.is_set()  # a service ignores log-off
        signal.raise_signal(signal.SIGINT)  # Ctrl+C: WinSW and NSSM stop a service this way
        await asyncio.wait_for(stop.wait(), 5)
        stop.clear()
        result: list[int] = []
        th = threading.Thread(target=lambda: result.append(handler(CTRL_CLOSE_EVENT)))
        th.start()  # Windows calls console handlers on a thread of its own
        await asyncio.wait_for(stop.wait(), 5)
    finally:
        await t.close()
    th.join(10)
    assert result == [1]
    assert win.kernel32.ctrl_handlers == [] and signal.getsignal(signal.SIGINT) is before
    assert t._tasks == set() and t._helpers == set(), "the watch task ended"


@pytest.mark.skipif(SIMULATED, reason="POSIX signals (SIGHUP) do not exist in the Windows simulation")
async def test_posix_triggers_are_the_unix_signals() -> None:
    stop, reloads = asyncio.Event(), []

    async def reload() -> None:
        reloads.append(1)

    t = PosixPlatform().install_triggers(asyncio.get_running_loop(), stop.set, reload, None)
    try:
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(100):
            if reloads:
                break
            await asyncio.sleep(0.01)
        assert reloads == [1] and not stop.is_set()
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(stop.wait(), 5)
    finally:
        await t.close()
    os.kill(os.getpid(), signal.SIGHUP)  # still handled while the loop lives, but no reload once closed
    await asyncio.sleep(0.1)
    assert reloads == [1] and t.reloads == 1


@pytest.mark.skipif(SIMULATED, reason="file modes are meaningless on Windows")
def test_posix_files_and_dirs_are_owner_only(tmp_path: Path) -> None:
    p = PosixPlatform()
    d = tmp_path / "new"
    p.make_private_dir(d)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700 and p.exposure(d) is None
    os.chmod(d, 0o750)
    exp = p.exposure(d)
    assert exp is not None and exp.fix == "chmod 700 it"
    f = d / "x"
    f.write_text("")
    os.chmod(f, 0o640)
    assert p.exposure(f) == base.Exposure("group/others (mode 640)", "chmod 600 it")
    p.protect_file(f, None, 0o600)
    assert p.exposure(f) is None
    limit = p.descriptor_limit()
    assert limit is None or limit >= 64


def test_windows_has_no_descriptor_limit(win: FakeWindows) -> None:
    assert win.platform.descriptor_limit() is None
