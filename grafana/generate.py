"""Write the dashboards as JSON: `python -m grafana.generate [--out DIR] [--check] [--runbook-base-url URL]`.

Runbook links point at `--runbook-base-url`, by default the alerts' `runbook_base_url` in alerts/config.yml
(one setting for alerts and dashboards; point it at a fork or internal mirror if on-call cannot reach GitHub).

The default output directory is grafana/dashboards/. Output is deterministic (sorted keys, stable uids and
panel ids), so the committed JSON can be compared with a fresh generation (tests/test_dashboards.py does).
Needs the `dashboards` extra: grafana-foundation-sdk.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

if __package__ in (None, ""):  # run as `python grafana/generate.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from grafana_foundation_sdk.cog.encoder import JSONEncoder

from grafana import common, credentials, mailbox, overview

OUT = Path(__file__).resolve().parent / "dashboards"
ALERTS_CONFIG = Path(__file__).resolve().parent.parent / "alerts" / "config.yml"


def default_runbook_base() -> str:
    """alerts/config.yml's runbook_base_url, else the project's own runbooks."""
    try:
        cfg = yaml.safe_load(ALERTS_CONFIG.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return common.RUNBOOK_URL
    url = cfg.get("runbook_base_url") if isinstance(cfg, dict) else None
    return url if isinstance(url, str) and url.startswith(("http://", "https://")) else common.RUNBOOK_URL
MODULES = (overview, mailbox, credentials)


def render() -> dict[str, str]:
    """File name -> JSON text for every dashboard."""
    files = {}
    for module in MODULES:
        dashboard = module.build().build()
        files[f"{dashboard.uid}.json"] = (
            json.dumps(dashboard, cls=JSONEncoder, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
        )
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="output directory (default: %(default)s)")
    parser.add_argument("--check", action="store_true", help="exit 1 if the files in --out are out of date")
    parser.add_argument("--runbook-base-url", default=None,
                        help="base URL of the runbook pages (default: runbook_base_url in alerts/config.yml)")
    args = parser.parse_args(argv)
    try:
        common.set_runbook_base(args.runbook_base_url or default_runbook_base())
    except ValueError as exc:
        parser.error(str(exc))
    files = render()
    if args.check:
        stale = [
            name
            for name, text in files.items()
            if not (args.out / name).is_file() or (args.out / name).read_text(encoding="utf-8") != text
        ]
        for name in stale:
            print(f"{args.out / name} is out of date: run `python -m grafana.generate`", file=sys.stderr)
        return 1 if stale else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (args.out / name).write_text(text, encoding="utf-8")
        print(args.out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
