"""Child processes of the Windows simulation (tests/winsim.py) start simulated too.

Only on PYTHONPATH when tests/winsim.py put it there, and only active with M365_SIMULATE_WINDOWS=1."""

import os
import sys

if os.environ.get("M365_SIMULATE_WINDOWS") == "1":
    _root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if _root not in sys.path:
        sys.path.append(_root)
    from tests import winsim

    winsim.apply()
