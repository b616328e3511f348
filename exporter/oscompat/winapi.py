"""The ctypes layer of the Windows platform: a handful of advapi32/kernel32 calls, SDDL strings in and out.

Why SDDL strings: building and walking ACL structures through ctypes is where bugs hide; letting
Windows convert between SDDL text and security descriptors keeps this file to plain call
sequences (each checked for failure, every buffer Windows allocates freed with LocalFree) and
leaves the logic in windows.py, testable anywhere. The DLLs are injectable: tests/winsim.py
passes fakes that record the calls and write the out-parameters, so the sequences run on Linux.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from ctypes import wintypes
from typing import Any

SE_FILE_OBJECT = 1
OWNER_SECURITY_INFORMATION = 0x1
DACL_SECURITY_INFORMATION = 0x4
PROTECTED_DACL_SECURITY_INFORMATION = 0x80000000
SDDL_REVISION_1 = 1
TOKEN_QUERY = 0x0008
TOKEN_USER_CLASS = 1
ERROR_INSUFFICIENT_BUFFER = 122
ENABLE_VIRTUAL_TERMINAL_PROCESSING = 0x0004

HANDLER_ROUTINE = getattr(ctypes, "WINFUNCTYPE", ctypes.CFUNCTYPE)(wintypes.BOOL, wintypes.DWORD)


def _winerror(code: int, what: str) -> OSError:
    err = OSError(f"{what} failed (Windows error {code})")
    err.winerror = code  # type: ignore[attr-defined]
    return err


def declare(advapi32: Any, kernel32: Any) -> None:
    """Argument and result types of the real functions (64-bit handles and pointers must not be
    truncated to C ints, which is what ctypes assumes for undeclared functions)."""
    H, D, B, P, W = wintypes.HANDLE, wintypes.DWORD, wintypes.BOOL, ctypes.c_void_p, wintypes.LPCWSTR
    PP = ctypes.POINTER(ctypes.c_void_p)
    table: dict[str, tuple[Any, list[Any], Any]] = {
        "OpenProcessToken": (advapi32, [H, D, ctypes.POINTER(H)], B),
        "GetTokenInformation": (advapi32, [H, ctypes.c_int, P, D, ctypes.POINTER(D)], B),
        "ConvertSidToStringSidW": (advapi32, [P, ctypes.POINTER(wintypes.LPWSTR)], B),
        "GetNamedSecurityInfoW": (advapi32, [W, ctypes.c_int, D, PP, PP, PP, PP, PP], D),
        "ConvertSecurityDescriptorToStringSecurityDescriptorW":
            (advapi32, [P, D, D, ctypes.POINTER(wintypes.LPWSTR), ctypes.POINTER(ctypes.c_ulong)], B),
        "ConvertStringSecurityDescriptorToSecurityDescriptorW":
            (advapi32, [W, D, PP, ctypes.POINTER(ctypes.c_ulong)], B),
        "GetSecurityDescriptorDacl": (advapi32, [P, ctypes.POINTER(B), PP, ctypes.POINTER(B)], B),
        "SetNamedSecurityInfoW": (advapi32, [W, ctypes.c_int, D, P, P, P, P], D),
        "GetCurrentProcess": (kernel32, [], H),
        "CloseHandle": (kernel32, [H], B),
        "LocalFree": (kernel32, [P], P),
        "GetConsoleMode": (kernel32, [H, ctypes.POINTER(D)], B),
        "SetConsoleMode": (kernel32, [H, D], B),
        "SetConsoleCtrlHandler": (kernel32, [HANDLER_ROUTINE, B], B),
    }
    for name, (dll, argtypes, restype) in table.items():
        fn = getattr(dll, name)
        fn.argtypes, fn.restype = argtypes, restype


class Win32:
    """Real Win32 calls. `advapi32`, `kernel32`, `get_last_error` and `get_osfhandle` default to the
    system's (only available on Windows)."""

    def __init__(self, advapi32: Any = None, kernel32: Any = None,
                 get_last_error: Callable[[], int] | None = None,
                 get_osfhandle: Callable[[int], int] | None = None) -> None:
        if advapi32 is None or kernel32 is None:
            windll: Any = getattr(ctypes, "WinDLL")  # noqa: B009 - Windows only
            advapi32 = advapi32 or windll("advapi32", use_last_error=True)
            kernel32 = kernel32 or windll("kernel32", use_last_error=True)
            declare(advapi32, kernel32)
        if get_osfhandle is None:
            import msvcrt  # Windows only

            get_osfhandle = msvcrt.get_osfhandle  # type: ignore[attr-defined]
        self.advapi32, self.kernel32 = advapi32, kernel32
        self.get_last_error = get_last_error or getattr(ctypes, "get_last_error", lambda: 0)
        self.get_osfhandle = get_osfhandle
        self._handlers: list[Any] = []  # ctypes callbacks must stay referenced while registered

    def current_user_sid(self) -> str:
        """The SID of the user this process runs as (OpenProcessToken + GetTokenInformation(TokenUser))."""
        token = wintypes.HANDLE()
        if not self.advapi32.OpenProcessToken(self.kernel32.GetCurrentProcess(), TOKEN_QUERY, ctypes.byref(token)):
            raise _winerror(self.get_last_error(), "OpenProcessToken")
        try:
            size = wintypes.DWORD(0)
            self.advapi32.GetTokenInformation(token, TOKEN_USER_CLASS, None, 0, ctypes.byref(size))
            if not size.value:
                raise _winerror(self.get_last_error(), "GetTokenInformation")
            buf = ctypes.create_string_buffer(size.value)
            if not self.advapi32.GetTokenInformation(token, TOKEN_USER_CLASS, buf, size, ctypes.byref(size)):
                raise _winerror(self.get_last_error(), "GetTokenInformation")
            sid = ctypes.cast(buf, ctypes.POINTER(ctypes.c_void_p))[0]  # TOKEN_USER.User.Sid
            text = wintypes.LPWSTR()
            if not self.advapi32.ConvertSidToStringSidW(ctypes.c_void_p(sid), ctypes.byref(text)):
                raise _winerror(self.get_last_error(), "ConvertSidToStringSidW")
            try:
                return str(text.value)
            finally:
                self.kernel32.LocalFree(text)
        finally:
            self.kernel32.CloseHandle(token)

    def get_security_sddl(self, path: str) -> str:
        """Owner and DACL of a file or directory as SDDL (GetNamedSecurityInfoW + conversion to text)."""
        sd = ctypes.c_void_p()
        info = OWNER_SECURITY_INFORMATION | DACL_SECURITY_INFORMATION
        rc = self.advapi32.GetNamedSecurityInfoW(ctypes.c_wchar_p(path), SE_FILE_OBJECT, info,
                                                 None, None, None, None, ctypes.byref(sd))
        if rc != 0:
            raise _winerror(rc, "GetNamedSecurityInfoW")
        try:
            text = wintypes.LPWSTR()
            if not self.advapi32.ConvertSecurityDescriptorToStringSecurityDescriptorW(
                    sd, SDDL_REVISION_1, info, ctypes.byref(text), None):
                raise _winerror(self.get_last_error(), "ConvertSecurityDescriptorToStringSecurityDescriptorW")
            try:
                return str(text.value)
            finally:
                self.kernel32.LocalFree(text)
        finally:
            self.kernel32.LocalFree(sd)

    def set_protected_dacl(self, path: str, sddl: str) -> None:
        """Replace the DACL of `path` by the one in `sddl`, protected from inheritance."""
        sd = ctypes.c_void_p()
        if not self.advapi32.ConvertStringSecurityDescriptorToSecurityDescriptorW(
                ctypes.c_wchar_p(sddl), SDDL_REVISION_1, ctypes.byref(sd), None):
            raise _winerror(self.get_last_error(), "ConvertStringSecurityDescriptorToSecurityDescriptorW")
        try:
            present, defaulted = wintypes.BOOL(), wintypes.BOOL()
            dacl = ctypes.c_void_p()
            if not self.advapi32.GetSecurityDescriptorDacl(sd, ctypes.byref(present), ctypes.byref(dacl),
                                                          ctypes.byref(defaulted)) or not present.value:
                raise _winerror(self.get_last_error(), "GetSecurityDescriptorDacl")
            rc = self.advapi32.SetNamedSecurityInfoW(
                ctypes.c_wchar_p(path), SE_FILE_OBJECT,
                DACL_SECURITY_INFORMATION | PROTECTED_DACL_SECURITY_INFORMATION, None, None, dacl, None)
            if rc != 0:
                raise _winerror(rc, f"SetNamedSecurityInfoW on {path}")
        finally:
            self.kernel32.LocalFree(sd)

    def enable_vt_mode(self, fd: int) -> bool:
        """Switch the console behind `fd` to virtual-terminal processing; False if it is no console."""
        handle = self.get_osfhandle(fd)
        mode = wintypes.DWORD()
        if not self.kernel32.GetConsoleMode(handle, ctypes.byref(mode)):
            return False  # redirected to a file or pipe
        if mode.value & ENABLE_VIRTUAL_TERMINAL_PROCESSING:
            return True
        return bool(self.kernel32.SetConsoleMode(handle, mode.value | ENABLE_VIRTUAL_TERMINAL_PROCESSING))

    def set_console_ctrl_handler(self, handler: Callable[[int], bool]) -> Callable[[], None]:
        """Register `handler` for console control events; returns the function that removes it."""
        routine = HANDLER_ROUTINE(lambda event: bool(handler(int(event))))
        if not self.kernel32.SetConsoleCtrlHandler(routine, True):
            raise _winerror(self.get_last_error(), "SetConsoleCtrlHandler")
        self._handlers.append(routine)

        def remove() -> None:
            self.kernel32.SetConsoleCtrlHandler(routine, False)
            if routine in self._handlers:
                self._handlers.remove(routine)

        return remove
