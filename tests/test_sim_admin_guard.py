"""The simulator's admin API answers loopback clients only (it can rewrite the tenant)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from exporter.simulator.admin import _is_loopback, loopback_only


@pytest.mark.parametrize(("remote", "allowed"), [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("::ffff:127.0.0.1", True),
    ("10.0.0.5", False), ("192.168.1.2", False), ("::ffff:10.0.0.5", False), ("fe80::1%eth0", False),
    ("", False), (None, False), ("not-an-ip", False),
])
def test_loopback_detection(remote: str | None, allowed: bool) -> None:
    assert _is_loopback(remote) is allowed


async def test_guard_blocks_admin_paths_from_other_hosts_only() -> None:
    async def handler(request):  # type: ignore[no-untyped-def]
        return "handled"

    def req(path: str, remote: str):  # type: ignore[no-untyped-def]
        return SimpleNamespace(path=path, remote=remote)

    blocked = await loopback_only(req("/_sim/reset", "10.0.0.5"), handler)  # type: ignore[arg-type]
    assert blocked.status == 403
    assert await loopback_only(req("/_sim/reset", "127.0.0.1"), handler) == "handled"  # type: ignore[arg-type]
    # the identity endpoints themselves are not admin paths
    assert await loopback_only(req("/tenant/oauth2/v2.0/token", "10.0.0.5"), handler) == "handled"  # type: ignore[arg-type]
