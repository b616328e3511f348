"""Build information: version, revision, branch and build date, computed once per process.

Why several sources: a container image or package has no `.git`, so the build writes
`exporter/_build.json` (or sets M365_EXPORTER_REVISION / _BRANCH / _BUILD_DATE); a checkout
asks `git` once (bounded by a timeout); otherwise "unknown". Exported as
`m365_exporter_build_info` and printed by `--version`, like Go exporters' version package.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

from . import __version__

BUILD_FILE = Path(__file__).with_name("_build.json")
GIT_TIMEOUT = 2.0


@dataclass(frozen=True)
class BuildInfo:
    version: str
    revision: str
    branch: str
    build_date: str
    python_version: str
    msal_version: str

    def labels(self) -> dict[str, str]:
        """The label set of m365_exporter_build_info."""
        return {"version": self.version, "revision": self.revision, "branch": self.branch,
                "python_version": self.python_version, "msal_version": self.msal_version}

    def text(self) -> str:
        """`--version` output (same shape as Prometheus' Go exporters)."""
        return (f"m365-mail-exporter, version {self.version} (branch: {self.branch}, revision: {self.revision})\n"
                f"  build date:       {self.build_date}\n"
                f"  python version:   {self.python_version}\n"
                f"  msal version:     {self.msal_version}\n")


def _git(*args: str) -> str | None:
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                             timeout=GIT_TIMEOUT, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    value = out.stdout.strip()
    return value if out.returncode == 0 and value else None


def _from_file() -> dict[str, str]:
    try:
        data = json.loads(BUILD_FILE.read_text())
    except (OSError, ValueError):
        return {}
    return {k: str(v) for k, v in data.items()} if isinstance(data, dict) else {}


@functools.cache
def build_info() -> BuildInfo:
    try:
        import msal

        msal_version = str(msal.__version__)
    except ImportError:  # pragma: no cover - msal is a hard dependency
        msal_version = "unknown"
    f = _from_file()

    def pick(name: str, *git_args: str) -> str:
        env = os.environ.get(f"M365_EXPORTER_{name.upper()}")
        return env or f.get(name) or (_git(*git_args) if git_args else None) or "unknown"

    return BuildInfo(
        version=__version__,
        revision=pick("revision", "rev-parse", "HEAD"),
        branch=pick("branch", "rev-parse", "--abbrev-ref", "HEAD"),
        build_date=pick("build_date", "log", "-1", "--format=%cI"),
        python_version=platform.python_version(),
        msal_version=msal_version,
    )
