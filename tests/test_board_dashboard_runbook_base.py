"""The dashboards' runbook links follow one base-URL setting, like the alerts' runbook_base_url."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("grafana_foundation_sdk")


def links(out: Path) -> list[str]:
    urls: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("url"), str):
                urls.append(node["url"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for f in sorted(out.glob("*.json")):
        walk(json.loads(f.read_text(encoding="utf-8")))
    return urls


def test_runbook_base_url_option(tmp_path: Path) -> None:
    base = "https://wiki.example.net/noc/m365"
    subprocess.run([sys.executable, "-m", "grafana.generate", "--out", str(tmp_path), "--runbook-base-url", base],
                   cwd=ROOT, check=True, capture_output=True, timeout=120)
    urls = links(tmp_path)
    runbooks = [u for u in urls if "runbook" in u.lower() or u.startswith(base)]
    assert runbooks and all(u.startswith(base + "/") for u in runbooks), runbooks
    assert f"{base}/index.md" in urls and f"{base}/token.md" in urls
    assert not [u for u in urls if "/docs/runbooks/" in u]


def test_default_is_the_alerts_setting() -> None:
    import yaml

    from grafana.generate import default_runbook_base
    alerts = yaml.safe_load((ROOT / "alerts" / "config.yml").read_text(encoding="utf-8"))
    assert default_runbook_base() == alerts["runbook_base_url"]


def test_rejects_a_non_http_base(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "grafana.generate", "--out", str(tmp_path), "--runbook-base-url",
                        "javascript:alert(1)"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "http(s)" in r.stderr
    assert not list(tmp_path.glob("*.json"))
