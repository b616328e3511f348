"""Shards as real processes: together they cover every check exactly once; a stopped shard pages.

One simulator (in a thread of this test process, so its login counters are read directly) and
`python -m exporter` processes with one config file and different `--shard.*` flags, all on
loopback. The probe interval is an hour, so within the test every check runs exactly once (its
start-up run) and the simulator's per-mailbox, per-protocol login counters show who probed what.
Then a real Prometheus (Debian's) scrapes the three shards with the shipped rules (durations
shortened through the generator): stopping one shard fires M365ExporterDown for that instance,
and the shard-missing expression of docs/scaling.md names the shard. The HA test runs two
replicas of each of two shards from StatefulSet-style pod names and expects every check exactly
twice, once per pair member.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import alerts.generate as gen
from exporter.simulator.seed import add_mailbox
from tests.simenv import APP_ID, CERT_APP_ID, Env, start_env
from tests.test_alerting_e2e import Processes, free_port, http_get, need, prom_query, wait_for

# the shipped rules with every duration shortened to seconds (the shard tests run for ~15 s)
SHORT = {
    "gap_tolerance": "3s",
    "alerts": {
        "M365MailboxAuthFailing": {"window": "3s", "for": "1s"},
        "M365TokenRefreshFailing": {"window": "4s", "for": "1s"},
        "M365TokenWrongIdentity": {"window": "3s", "for": "1s"},
        "M365TokenMissingScope": {"window": "3s", "for": "1s"},
        "M365ClientSecretExpiringSoon": {"for": "1s"},
        "M365ClientSecretExpired": {"for": "1s"},
        "M365TLSCertificateExpiringSoon": {"for": "1s"},
        "M365TLSCertificateInvalid": {"window": "3s", "for": "1s"},
        "M365EndpointUnreachable": {"window": "3s", "for": "1s"},
        "M365ProbesStale": {"for": "5s"},
        "M365ExporterDown": {"for": "5s"},
        "M365ConfigReloadFailed": {"for": "1s"},
    },
}


ROOT = Path(__file__).resolve().parent.parent
JOB = "m365-mail-exporter"
N_MAILBOXES = 24
CHECKS = (["imap", "pop3", "smtp"], ["imap", "smtp"], ["pop3"])

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

# Proposed in docs/scaling.md (for the alerts/ owners): a shard of the current sharding that some
# replica reported in the last hour and no replica reports now.
SHARD_MISSING = (
    f'max by (job, shard, shards) (last_over_time(m365_exporter_shard_info{{job="{JOB}"}}[1h]))'
    f' unless on (job, shard, shards) max by (job, shard, shards) (m365_exporter_shard_info{{job="{JOB}"}})'
    f' and on (job, shards) group by (job, shards) (m365_exporter_shard_info{{job="{JOB}"}})'
)


class SimThread:
    """The simulator on its own event loop in a daemon thread (the exporters are other processes)."""

    def __init__(self, tmp: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.env: Env = asyncio.run_coroutine_threadsafe(start_env(tmp, delegated_login=False), self.loop).result(30)
        for i in range(N_MAILBOXES):
            add_mailbox(self.env.state, f"box{i:02d}@contoso.example", app_access=[APP_ID, CERT_APP_ID])

    def logins(self) -> Counter[tuple[str, str]]:
        """(protocol, address) -> XOAUTH2 logins so far (accepted or refused)."""
        with self.env.state.lock:
            items = list(self.env.state.counters.items())
        out: Counter[tuple[str, str]] = Counter()
        for key, n in items:
            if len(key) == 3 and key[0] in ("imap", "pop3", "smtp") and key[1]:
                out[(key[0], key[1])] += n
        return out

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.env.sim.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def write_config(sim: SimThread, path: Path) -> list[tuple[str, str]]:
    """One config for every shard: 24 mailboxes over two credentials; returns every (check, address)."""
    mailboxes = [{"address": f"box{i:02d}@contoso.example", "credential": "cert" if i % 5 == 0 else "app",
                  "checks": CHECKS[i % 3]} for i in range(N_MAILBOXES)]
    raw = sim.env.config(mailboxes=mailboxes, interval=3600, token_interval=3600, timeout=5).model_dump(mode="json")
    del raw["credentials"]["delegate"]  # a delegated login is not what this test is about
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return [(c, m["address"]) for m in mailboxes for c in m["checks"]]


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[SimThread]:
    s = SimThread(tmp_path)
    yield s
    s.close()


def start_exporters(procs: Processes, cfg: Path, flags: dict[str, list[str]]) -> dict[str, int]:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["PYTHONUNBUFFERED"] = "1"
    ports: dict[str, int] = {}
    for name, extra in flags.items():
        ports[name] = free_port()
        procs.start(name, [sys.executable, "-m", "exporter", "--config.file", str(cfg),
                           "--web.listen-address", f"127.0.0.1:{ports[name]}", *extra], cwd=ROOT, env=env)
    for name, port in ports.items():
        def ready(port: int = port) -> bool:
            procs.check_alive()
            return http_get(f"http://127.0.0.1:{port}/-/ready") is not None  # 503 raises (an OSError)
        wait_for(f"{name} ready", ready, 40.0, procs.logs)
    return ports


def start_prometheus(procs: Processes, tmp: Path, ports: dict[str, int]) -> int:
    """Debian's Prometheus scraping every exporter every second, with the shipped rules, durations shortened."""
    prometheus = need("prometheus")
    prom_port = free_port()
    rules = tmp / "m365.rules.yml"
    short = json.loads(json.dumps(SHORT))
    short["alerts"]["M365ExporterDown"] = {"for": "2s"}
    rules.write_text(gen.render(gen.load_config(overrides=short)), encoding="utf-8")
    prom_cfg = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [{"job_name": JOB, "static_configs": [
            {"targets": [f"127.0.0.1:{p}"], "labels": {"replica": n}} for n, p in ports.items()]}],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(prom_cfg), encoding="utf-8")
    procs.start("prometheus", [prometheus, f"--config.file={tmp / 'prometheus.yml'}",
                               f"--storage.tsdb.path={tmp / 'prom-data'}",
                               f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"], cwd=tmp)
    wait_for("every exporter up in Prometheus",
             lambda: len(prom_query(prom_port, f'up{{job="{JOB}"}} == 1')) == len(ports), 30.0, procs.logs)
    return prom_port


def firing(prom_port: int, alertname: str) -> list[dict[str, Any]]:
    data = json.loads(http_get(f"http://127.0.0.1:{prom_port}/api/v1/alerts"))["data"]["alerts"]
    return [a for a in data if a["labels"]["alertname"] == alertname and a["state"] == "firing"]


def mailbox_checks(port: int) -> set[tuple[str, str]]:
    """(check, mailbox) of every mail probe that ran in this exporter, from its /metrics."""
    out = set()
    for line in http_get(f"http://127.0.0.1:{port}/metrics").decode().splitlines():
        if line.startswith("m365_probes_total{"):
            labels = dict(kv.split("=", 1) for kv in line[line.index("{") + 1:line.index("}")].split(","))
            check, mailbox = labels["check"].strip('"'), labels["mailbox"].strip('"')
            if check != "token":
                out.add((check, mailbox))
    return out


def test_three_shards_cover_every_check_once_and_a_stopped_shard_pages(sim: SimThread, tmp_path: Path) -> None:
    need("prometheus")
    cfg = tmp_path / "config.yml"
    expected = write_config(sim, cfg)
    procs = Processes(tmp_path)
    try:
        names = [f"shard{i}" for i in range(3)]
        ports = start_exporters(procs, cfg, {n: ["--shard.total", "3", "--shard.index", str(i)]
                                             for i, n in enumerate(names)})
        # every check exactly once, across the three processes (the simulator counted the logins)
        def all_logged_in() -> Counter[tuple[str, str]] | None:
            got = sim.logins()
            return got if sum(got.values()) >= len(expected) else None
        wait_for("every check's login", all_logged_in, 20.0, procs.logs)
        time.sleep(0.5)  # a duplicate would arrive about now
        assert sim.logins() == Counter(expected), procs.logs()
        per_shard = {n: mailbox_checks(p) for n, p in ports.items()}
        assert sorted(x for s in per_shard.values() for x in s) == sorted(expected)  # disjoint and complete
        assert all(per_shard.values()), per_shard  # 24 mailboxes: every shard got some
        # token requests only where a shard uses the credential; the info metric names the shard
        for i, (n, port) in enumerate(ports.items()):
            text = http_get(f"http://127.0.0.1:{port}/metrics").decode()
            assert f'm365_exporter_shard_info{{shard="{i}",shards="3"}} 1.0' in text
            uses_cert = any(int(addr[3:5]) % 5 == 0 for _, addr in per_shard[n])
            assert ('m365_token_requests_total{credential="cert"}' in text) == uses_cert, (n, per_shard[n])

        # Prometheus scrapes the three shards with the shipped (generated) rules
        prom_port = start_prometheus(procs, tmp_path, ports)
        assert prom_query(prom_port, f'sum(m365_mailboxes{{job="{JOB}"}})')[0]["value"][1] == str(N_MAILBOXES)

        # stop shard 1: its checks must not just vanish
        victim = procs.procs["shard1"][0]
        victim.terminate()
        victim.wait(10)
        del procs.procs["shard1"]

        down = wait_for("M365ExporterDown firing for the stopped shard", lambda: [
            a for a in firing(prom_port, "M365ExporterDown") if "instance" in a["labels"]], 30.0, procs.logs)
        assert [a["labels"]["instance"] for a in down] == [f"127.0.0.1:{ports['shard1']}"]
        assert down[0]["labels"]["severity"] and down[0]["annotations"]["runbook_url"].endswith("M365ExporterDown.md")
        missing = prom_query(prom_port, SHARD_MISSING)
        assert [m["metric"]["shard"] for m in missing] == ["1"]
    finally:
        procs.close()


def test_ha_pairs_probe_every_check_exactly_twice(sim: SimThread, tmp_path: Path) -> None:
    """Two shards x two replicas from StatefulSet pod names (ordinal o runs shard o mod 2).

    And what the shipped rules make of a pair: one failing mailbox check (SMTP AUTH disabled for box01)
    is an alert per replica; `max without (instance, ...)` over the rule (docs/scaling.md) makes it one.
    """
    need("prometheus")
    cfg = tmp_path / "config.yml"
    expected = write_config(sim, cfg)
    sim.env.state.mailboxes["box01@contoso.example"].smtp_auth_disabled = True
    procs = Processes(tmp_path)
    try:
        pods = [f"m365-mail-exporter-{o}" for o in range(4)]
        ports = start_exporters(procs, cfg, {p: ["--shard.total=2", "--shard.replicas=2", f"--shard.index={p}"]
                                             for p in pods})
        wait_for("every check's two logins", lambda: sum(sim.logins().values()) >= 2 * len(expected), 20.0,
                 procs.logs)
        time.sleep(0.5)
        assert sim.logins() == Counter({k: 2 for k in expected}), procs.logs()  # the HA cost: logins x2
        seen = {p: mailbox_checks(port) for p, port in ports.items()}
        assert seen[pods[0]] == seen[pods[2]] and seen[pods[1]] == seen[pods[3]]  # pairs: identical work
        assert not seen[pods[0]] & seen[pods[1]]
        assert sorted(seen[pods[0]] | seen[pods[1]]) == sorted(expected)

        prom_port = start_prometheus(procs, tmp_path, ports)
        alerts = wait_for("M365MailboxAuthFailing from both replicas of box01's shard",
                          lambda: (lambda a: a if len(a) >= 2 else None)(firing(prom_port, "M365MailboxAuthFailing")),
                          30.0, procs.logs)
        assert {(a["labels"]["mailbox"], a["labels"]["check"], a["labels"]["reason"]) for a in alerts} == {
            ("box01@contoso.example", "smtp", "smtp_auth_disabled")}
        owner = "m365-mail-exporter-0" if ("smtp", "box01@contoso.example") in seen[pods[0]] else (
            "m365-mail-exporter-1")
        pair = {owner, owner[:-1] + str(int(owner[-1]) + 2)}
        assert sorted(a["labels"]["replica"] for a in alerts) == sorted(pair)  # today: one alert per replica
        rule = next(r for g in yaml.safe_load((tmp_path / "m365.rules.yml").read_text())["groups"]
                    for r in g["rules"] if r.get("alert") == "M365MailboxAuthFailing")
        total = (f'sum(max by (shard) (m365_mailboxes{{job="{JOB}"}} * on (job, instance) group_left (shard) '
                 f'm365_exporter_shard_info{{job="{JOB}"}}))')  # docs/scaling.md: total with shards and pairs
        assert prom_query(prom_port, total)[0]["value"][1] == str(N_MAILBOXES)
        assert prom_query(prom_port, f'sum(m365_mailboxes{{job="{JOB}"}})')[0]["value"][1] == str(2 * N_MAILBOXES)
        deduped = prom_query(prom_port, f"max without (instance, replica) ({rule['expr']})")
        assert [(r["metric"]["mailbox"], r["metric"]["check"]) for r in deduped] == [
            ("box01@contoso.example", "smtp")]
    finally:
        procs.close()
