"""Every metric the exporter emits, every config field and every CLI flag is documented."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from pydantic import BaseModel

from exporter.cli import build_parser
from exporter.config import Config
from tests.simenv import env_fixture, runtime_for

ROOT = Path(__file__).resolve().parent.parent
env = env_fixture()


async def test_every_emitted_metric_family_is_documented(env) -> None:  # type: ignore[no-untyped-def]
    cfg = env.config()
    raw = cfg.model_dump(mode="json")
    raw["credentials"]["app"]["graph_audit"] = True
    raw["credentials"]["app"]["app_external_url"] = "https://ece.contoso.example/"
    raw["credentials"]["cert"]["secret_expiry"] = "2027-01-01T00:00:00Z"
    rt = await runtime_for(Config.model_validate(raw))
    for name in ("app", "cert", "delegate"):
        await rt.run_token_probe(name)
    for m in rt.config.mailboxes:
        for check in m.checks:
            await rt.probe_now(m.address, check)
    for ep in rt.unique_endpoints(rt.config).values():
        await rt.run_endpoint_probe(ep)
    for job in rt.scheduler.jobs or rt.build_jobs(rt.config):
        if job.key[0] == "audit":
            await job.run()
    rt.store.set_fact("m365_scheduler_queue_wait_seconds", 0.0)
    rt.store.set_fact("m365_config_last_reload_successful", 1.0)
    rt.store.set_fact("m365_config_last_reload_success_timestamp_seconds", 1.0)
    body = rt.renderer.render_sync().decode()
    await rt.stop()
    emitted = set(re.findall(r"^# TYPE (m365_\w+) ", body, re.M))
    assert len(emitted) >= 40, sorted(emitted)
    doc = (ROOT / "docs" / "metrics.md").read_text()
    documented = set(re.findall(r"`(m365_\w+)", doc))
    missing = {n for n in emitted if n not in documented and n.removesuffix("_total") + "_total" not in documented}
    assert not missing, f"undocumented metrics: {sorted(missing)}"


def _fields(model: type[BaseModel], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for name, field in model.model_fields.items():
        out.add(name)
        ann = field.annotation
        for candidate in getattr(ann, "__args__", ()) + (ann,):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                out |= _fields(candidate, prefix + name + ".")
            for inner in getattr(candidate, "__args__", ()):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    out |= _fields(inner, prefix + name + ".")
    return out


def test_every_config_field_is_documented() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    forms = ("`{f}`", ".{f}`", "{f}`", "`{f}.", "`{f}[", ".{f}.")
    missing = sorted(f for f in _fields(Config) if not any(form.format(f=f) in doc for form in forms))
    assert not missing, f"config fields missing from docs/configuration.md: {missing}"


def test_every_cli_flag_is_documented() -> None:
    docs = (ROOT / "docs" / "configuration.md").read_text() + (ROOT / "docs" / "troubleshooting.md").read_text()
    parser = build_parser()
    flags: set[str] = set()

    def walk(p: argparse.ArgumentParser) -> None:
        for action in p._actions:
            flags.update(o for o in action.option_strings if o.startswith("--") and o not in ("--help", "--version"))
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    walk(sub)

    walk(parser)
    missing = sorted(f for f in flags if f"`{f}" not in docs)
    assert not missing, f"CLI flags missing from the docs: {missing}"
