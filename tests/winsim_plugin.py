"""pytest plugin: `python -m pytest -p tests.winsim_plugin ...` runs the tests under the Windows simulation
(tests/winsim.py says what is simulated and what is not)."""

from __future__ import annotations

from typing import Any

import pytest

from tests import winsim

winsim.apply_signal()  # before pytest-timeout looks for SIGALRM (it then uses its thread method, as on Windows)


@pytest.hookimpl(trylast=True)
def pytest_configure(config: Any) -> None:
    factory = getattr(config, "_tmp_path_factory", None)
    if factory is not None:
        factory.getbasetemp()  # pytest's tmp_path setup calls os.getuid once, before we remove it
    winsim.apply_os()


def pytest_report_header(config: Any) -> str:
    return "Windows simulation (tests/winsim.py): oscompat Windows implementation, POSIX-only os/signal removed"


