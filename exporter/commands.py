"""Sub-commands besides `serve`: registered here so cli.py stays small.

`check` and `login` live in their own modules (exporter/check.py, exporter/login.py).
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
