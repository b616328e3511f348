"""A fast Prometheus text-format writer for the exporter's own metric families.

Why: with 1,000 mailboxes /metrics holds ~30k samples, and prometheus_client's generic
writer spends most of its time validating and escaping label *names* per sample (for
UTF-8 name support). Our names are fixed, valid identifiers, so only label *values* need
escaping. The output is byte-identical to `generate_latest` for these families (a test
checks it on a store with values that need escaping); anything unusual (timestamps,
OpenMetrics-only sample suffixes, names outside the legacy charset) is delegated to
`generate_latest` itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.utils import floatToGoString

_LEGACY_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_TYPES = {"counter": "counter", "gauge": "gauge", "unknown": "untyped"}


class _Families:
    """Adapter so `generate_latest` can render a list of families (the fallback path)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


def _escape_value(v: str) -> str:
    if "\\" in v or "\n" in v or '"' in v:
        return v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return v


def _fast_path_ok(metric: Metric) -> bool:
    if metric.type not in _TYPES or not _LEGACY_NAME.match(metric.name):
        return False
    for s in metric.samples:
        if s.timestamp is not None or s.exemplar is not None or s.name.endswith(("_created", "_gsum", "_gcount")):
            return False
    return True


def render_families(families: Iterable[Metric]) -> bytes:
    out: list[str] = []
    append = out.append
    for metric in families:
        if not _fast_path_ok(metric):
            append(generate_latest(_Families([metric])).decode())  # type: ignore[arg-type]
            continue
        mname = metric.name + "_total" if metric.type == "counter" else metric.name
        doc = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
        append(f"# HELP {mname} {doc}\n# TYPE {mname} {_TYPES[metric.type]}\n")
        for s in metric.samples:
            labels = s.labels
            if labels:
                inner = ",".join(f'{k}="{_escape_value(labels[k])}"' for k in sorted(labels))
                append(f"{s.name}{{{inner}}} {floatToGoString(s.value)}\n")
            else:
                append(f"{s.name} {floatToGoString(s.value)}\n")
    return "".join(out).encode("utf-8")


def render_registry(registry: CollectorRegistry) -> bytes:
    return render_families(registry.collect())
