"""The operator's commands besides `serve`: `check` (the troubleshooting checklist) and `login`
(the delegated token bootstrap), one module each here, registered with the command line.

Why a package: the daemon's core (runtime, scheduler, store, exposition, web) lies at the top of
`exporter/`; what an operator runs by hand on a server lives here and only uses the core (a
`check` builds a Runtime and runs its probes once), never the other way round.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable


def register_commands(sub: argparse._SubParsersAction, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    try:
        from .check import register as register_check
    except ImportError:
        register_check = None
    try:
        from .login import register as register_login
    except ImportError:
        register_login = None
    for register in (register_check, register_login):
        if register is not None:
            register(sub, add_common)
