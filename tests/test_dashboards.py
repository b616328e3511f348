"""Grafana dashboards, provisioning and the compose stack.

(a) the committed JSON is what `python -m grafana.generate` produces, and follows the conventions
    (datasource variable everywhere, stable uids, unique panel ids, units/titles/descriptions, job/instance
    filters, metric names from docs/metrics.md, reason mapping in step with exporter/reasons.py);
(b) deploy/docker-compose.yml parses and every host path it mounts exists; prometheus.yml and the Grafana
    provisioning files agree with it;
(c) every PromQL expression of every dashboard, with the variables substituted, is valid and returns data
    from a real Prometheus (Debian's /usr/bin/prometheus) scraping the exporter in --demo mode.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.reasons import CATALOGUE

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_DIR = ROOT / "grafana" / "dashboards"
PROVISIONING = ROOT / "grafana" / "provisioning"
DEPLOY = ROOT / "deploy"
IN_CI = bool(os.environ.get("CI"))

UIDS = {
    "m365-overview.json": "m365-overview",
    "m365-mailbox.json": "m365-mailbox",
    "m365-credentials.json": "m365-credentials",
}
DS_REF = {"type": "prometheus", "uid": "${datasource}"}
TAGS = ["m365", "mail", "oauth2"]
RUNBOOK_PREFIX = "https://github.com/m365-mail-exporter/m365-mail-exporter/blob/main/docs/runbooks/"
RUNBOOK_PAGES = {info.runbook for info in CATALOGUE.values()} | {"index"}

# Expressions that may legitimately return nothing in demo mode: (dashboard uid, panel title, refId) -> why.
# Everything else must return at least one series.
MAY_BE_EMPTY = {
    ("m365-overview", "Failing endpoints and why", "A"): "demo endpoints are all reachable",
    ("m365-credentials", "Token refresh failures now", "A"): "demo token refreshes succeed",
    ("m365-credentials", "Token refresh failures by reason", "A"): "demo token refreshes succeed",
    ("m365-mailbox", "Token refresh failure and what to do", "A"): "demo token refreshes succeed",
}

# Grafana built-in variables -> values used when evaluating the expressions.
BUILTINS = {"__rate_interval": "1m", "__interval": "1m", "__range": "1h", "__range_s": "3600",
            "__range_ms": "3600000", "__interval_ms": "60000"}
VAR_RE = re.compile(r"\$\{([A-Za-z_]\w*)(?::[\w]+)?\}|\$([A-Za-z_]\w*)")


# --- helpers ---------------------------------------------------------------------------------------------


def load_dashboards() -> dict[str, dict[str, Any]]:
    return {name: json.loads((DASHBOARD_DIR / name).read_text(encoding="utf-8")) for name in UIDS}


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # collapsed rows nest their panels


def data_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    return (p for p in all_panels(dashboard) if p.get("type") != "row")


def walk(node: Any, path: str = "") -> Iterator[tuple[str, Any, Any]]:
    """(path, key, value) for every key of every dict, recursively."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, key, value
            yield from walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, f"{path}[{i}]")


def expressions(dashboard: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """(panel title, refId, expr) of every target, and ('variable <name>', '', query) of query variables."""
    for panel in data_panels(dashboard):
        for target in panel.get("targets", []):
            yield panel["title"], target["refId"], target["expr"]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            yield f"variable {var['name']}", "", var["query"]


def substitute(expr: str, values: dict[str, str] | None = None) -> str:
    """Replace Grafana variables the way a dashboard with 'All' selected would (or by `values`: regexes)."""

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name.startswith("__"):
            if name not in BUILTINS:
                raise AssertionError(f"unknown Grafana built-in ${name} in {expr}")
            return BUILTINS[name]
        return (values or {}).get(name, ".*")

    return VAR_RE.sub(repl, expr)


def to_promql(expr: str) -> str:
    """label_values(metric{sel}, label) (variable queries) -> count by (label) (metric{sel})."""
    m = re.fullmatch(r"\s*label_values\((.+),\s*(\w+)\s*\)\s*", expr, re.S)
    return f"count by ({m.group(2)}) ({m.group(1)})" if m else expr


def documented_metrics() -> set[str]:
    text = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
    return set(re.findall(r"`(m365_[a-z0-9_]+)", text))


def sdk_available() -> bool:
    try:
        import grafana_foundation_sdk  # noqa: F401
    except ImportError:
        return False
    return True


# --- (a) generated JSON and conventions -----------------------------------------------------------------


def test_generated_dashboards_are_committed(tmp_path: Path) -> None:
    if not sdk_available():
        if IN_CI:
            pytest.fail("grafana-foundation-sdk missing in CI: install the `dashboards` extra")
        pytest.skip("grafana-foundation-sdk not installed (pip install -e '.[dashboards]')")
    subprocess.run([sys.executable, "-m", "grafana.generate", "--out", str(tmp_path)], cwd=ROOT, check=True,
                   timeout=60, capture_output=True)
    generated = {p.name: p.read_text(encoding="utf-8") for p in tmp_path.glob("*.json")}
    committed = {p.name: p.read_text(encoding="utf-8") for p in DASHBOARD_DIR.glob("*.json")}
    assert sorted(generated) == sorted(committed) == sorted(UIDS)
    for name in UIDS:
        assert generated[name] == committed[name], (
            f"grafana/dashboards/{name} is stale: run `python -m grafana.generate` and commit")


def test_dashboard_identity_tags_and_links() -> None:
    for name, dashboard in load_dashboards().items():
        assert dashboard["uid"] == UIDS[name]
        assert dashboard["title"] and dashboard["description"]
        assert dashboard["tags"] == TAGS
        assert "id" not in dashboard or dashboard["id"] is None, "an instance-specific id would break import"
        links = dashboard["links"]
        assert any(lk["type"] == "dashboards" and "m365" in lk["tags"] and lk["includeVars"] for lk in links)
        assert any(lk.get("url", "").startswith(RUNBOOK_PREFIX) for lk in links)


@pytest.mark.parametrize("name", sorted(UIDS))
def test_panel_ids_unique_and_stable(name: str) -> None:
    ids = [p["id"] for p in all_panels(load_dashboards()[name])]
    assert len(ids) == len(set(ids)), f"duplicate panel ids in {name}"
    assert ids == list(range(1, len(ids) + 1)), "ids are assigned sequentially in build order"


@pytest.mark.parametrize("name", sorted(UIDS))
def test_datasource_variable_used_everywhere(name: str) -> None:
    dashboard = load_dashboards()[name]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in data_panels(dashboard):
        assert panel["datasource"] == DS_REF, panel["title"]
        assert panel["targets"], f"{panel['title']}: no targets"
        for target in panel["targets"]:
            assert target["datasource"] == DS_REF, f"{panel['title']} {target['refId']}"
            assert target["refId"], panel["title"]
    for var in variables.values():
        if var["type"] == "query":
            assert var["datasource"] == DS_REF, var["name"]
    # No hard-coded datasource anywhere: every datasource reference is the variable, no other uid than the
    # dashboard's own, and no __inputs placeholders (not needed with a datasource variable).
    assert "__inputs" not in dashboard
    for path, key, value in walk(dashboard):
        if key == "datasource":
            assert value == DS_REF, f"{path}: {value}"
        if key == "uid" and path:
            assert value == "${datasource}", f"{path}.uid = {value}"
    assert "DS_PROMETHEUS" not in json.dumps(dashboard)


@pytest.mark.parametrize("name", sorted(UIDS))
def test_panels_have_title_description_unit(name: str) -> None:
    for panel in data_panels(load_dashboards()[name]):
        assert panel.get("title"), panel["id"]
        assert panel.get("description"), panel["title"]
        assert panel.get("fieldConfig", {}).get("defaults", {}).get("unit"), f"{panel['title']}: no unit"
        w, x = panel["gridPos"]["w"], panel["gridPos"]["x"]
        assert 0 < w and x + w <= 24, panel["title"]
        for link in panel.get("links", []):
            if link["url"].startswith(RUNBOOK_PREFIX):
                page = link["url"].removeprefix(RUNBOOK_PREFIX).split(".md")[0]
                assert page in RUNBOOK_PAGES, link["url"]


@pytest.mark.parametrize("name", sorted(UIDS))
def test_variables_and_filters(name: str) -> None:
    dashboard = load_dashboards()[name]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert {"datasource", "job", "instance"} <= set(variables)
    for name_ in ("job", "instance"):  # "All" = the exporter's jobs/instances, so `up` matches nothing else
        assert "allValue" not in variables[name_], name_
    for var in variables.values():
        if var["type"] == "query":
            assert var["query"].startswith("label_values("), var["name"]
    if name != "m365-credentials.json":
        assert {"mailbox", "check"} <= set(variables)
    metrics = documented_metrics()
    assert len(metrics) > 30, "docs/metrics.md catalogue not found"
    selector = re.compile(r"\b(m365_[a-z0-9_]+|up)\b(\{[^}]*\})?")
    for title, ref, expr in expressions(dashboard):
        if title == "variable job":
            continue  # the job variable itself lists the jobs
        found = selector.findall(expr)
        assert found, f"{title} {ref}: no metric in {expr}"
        for metric, sel in found:
            assert metric == "up" or metric in metrics, f"{title} {ref}: {metric} is not in docs/metrics.md"
            assert 'job=~"$job"' in sel, f"{title} {ref}: {metric} not filtered by $job"
            if title != "variable instance":
                assert 'instance=~"$instance"' in sel, f"{title} {ref}: {metric} not filtered by $instance"
            for label in ("mailbox", "check", "credential", "host"):
                if label in variables and f"{label}=~" in sel:
                    assert f'{label}=~"${label}"' in sel, f"{title} {ref}"


def test_mailbox_credential_follows_mailbox() -> None:
    """The detail dashboard's credential is derived from the mailbox (m365_mailbox_info), not picked by hand."""
    dashboard = load_dashboards()["m365-mailbox.json"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    names = list(variables)
    assert names.index("credential") > names.index("mailbox"), "credential must come after the mailbox it follows"
    cred = variables["credential"]
    assert cred["type"] == "query"
    assert cred["query"] == (
        'label_values(m365_mailbox_info{job=~"$job",instance=~"$instance",mailbox=~"$mailbox"}, credential)')
    assert cred["refresh"] in (1, 2), "must refresh on dashboard load (and time range change)"
    assert cred["hide"] == 2, "derived from the mailbox: nothing to pick"
    # "All" must mean the credentials listed for the selected mailbox(es), not every credential (`.*`).
    assert cred["includeAll"] and cred["multi"] and "allValue" not in cred
    assert cred["current"]["value"] == ["$__all"]
    # The credential panels use it; the row title names the mailbox (the credentials show in the panels).
    cred_panels = [p["title"] for p in data_panels(dashboard)
                   if any('credential=~"$credential"' in t["expr"] for t in p["targets"])]
    assert len(cred_panels) >= 8, cred_panels
    docs = (ROOT / "docs" / "dashboards.md").read_text(encoding="utf-8")
    assert "pick the credential" not in docs and "chosen separately" not in docs
    assert "pick" not in cred["description"].lower()


def test_reason_mapping_follows_catalogue() -> None:
    expected = {reason.value: info.summary for reason, info in CATALOGUE.items()}
    pages = {reason.value: info.runbook for reason, info in CATALOGUE.items()}
    tables = 0
    for dashboard in load_dashboards().values():
        for panel in data_panels(dashboard):
            for override in panel["fieldConfig"].get("overrides", []):
                field = override["matcher"]["options"]
                props = {p["id"]: p.get("value") for p in override["properties"]}
                if field == "meaning":
                    tables += 1
                    options = props["mappings"][0]["options"]
                    assert {k: v["text"] for k, v in options.items()} == expected, panel["title"]
                    assert 'label_replace' in panel["targets"][0]["expr"]
                if field == "runbook":
                    options = props["mappings"][0]["options"]
                    assert {k: v["text"] for k, v in options.items()} == pages, panel["title"]
                    assert props["links"][0]["url"].startswith(RUNBOOK_PREFIX)
    assert tables >= 4, "failure tables with a plain-words column are missing"


def test_expressions_substitute_cleanly() -> None:
    for dashboard in load_dashboards().values():
        for title, ref, expr in expressions(dashboard):
            promql = substitute(expr)
            leftover = re.findall(r"\$[A-Za-z_{]", promql)
            assert not leftover, f"{title} {ref}: unsubstituted variable in {promql}"


def test_allow_list_names_real_targets() -> None:
    present = {(d["uid"], title, ref) for d in load_dashboards().values() for title, ref, _ in expressions(d)}
    assert set(MAY_BE_EMPTY) <= present, set(MAY_BE_EMPTY) - present


# --- (b) compose stack, prometheus.yml, provisioning ----------------------------------------------------


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text(encoding="utf-8"))


def mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host source, container target) of the bind mounts (short syntax) of a service."""
    out = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            out.append((source, target))
    return out


def host_path(source: str) -> Path:
    return (DEPLOY / source).resolve()


def test_compose_parses_and_mounts_exist() -> None:
    doc = compose()
    services = doc["services"]
    assert {"exporter", "prometheus", "alertmanager", "grafana"} <= set(services)
    for name, service in services.items():
        if "image" in service and "build" not in service:
            image = service["image"]
            assert ":" in image and not image.endswith(":latest"), f"{name}: pin the image tag ({image})"
        for source, target in mounts(service):
            assert host_path(source).exists(), f"{name}: mounted {source} -> {target} does not exist"
            assert host_path(source).is_relative_to(ROOT), f"{name}: {source} is outside the repository"
    build = services["exporter"]["build"]
    context = host_path(build["context"])
    assert context == ROOT
    if not (context / build.get("dockerfile", "Dockerfile")).exists():
        pytest.skip("Dockerfile not in the repository yet (the rest of the compose file checked out)")


def test_compose_wiring() -> None:
    services = compose()["services"]
    exporter = services["exporter"]
    assert exporter["command"] == ["--demo", "--web.listen-address", "0.0.0.0:9731"]
    assert any(str(p).endswith(":9731") for p in exporter["ports"])
    grafana = services["grafana"]
    env = grafana["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true" and env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    graf_mounts = dict(mounts(grafana))
    dash_target = graf_mounts["../grafana/dashboards"]
    assert env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == f"{dash_target}/m365-overview.json"
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "m365-mail-exporter.yml").read_text())
    (prov,) = provider["providers"]
    assert prov["options"]["path"] == dash_target
    assert prov["folder"] == "Microsoft 365 mail"
    assert graf_mounts["../grafana/provisioning/dashboards"] == "/etc/grafana/provisioning/dashboards"
    assert graf_mounts["../grafana/provisioning/datasources"] == "/etc/grafana/provisioning/datasources"
    datasources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())["datasources"]
    (ds,) = datasources
    assert (ds["uid"], ds["type"], ds["url"]) == ("prometheus", "prometheus", "http://prometheus:9090")
    am_mounts = dict(mounts(services["alertmanager"]))
    assert am_mounts["../alerts/alertmanager.example.yml"] == "/etc/alertmanager/alertmanager.yml"
    assert "--config.file=/etc/alertmanager/alertmanager.yml" in services["alertmanager"]["command"]


def prometheus_config_on_host(tmp_path: Path) -> Path:
    """deploy/prometheus.yml with container paths of rule files mapped back to the repository."""
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text(encoding="utf-8"))
    prom_mounts = mounts(compose()["services"]["prometheus"])
    rule_files = []
    for rule_file in config["rule_files"]:
        for source, target in prom_mounts:
            if rule_file == target or rule_file.startswith(target.rstrip("/") + "/"):
                rule_files.append(str(host_path(source) / os.path.relpath(rule_file, target)))
                break
        else:
            pytest.fail(f"rule file {rule_file} is not inside a mount of the prometheus service")
    config["rule_files"] = rule_files
    out = tmp_path / "prometheus.yml"
    out.write_text(yaml.safe_dump(config), encoding="utf-8")
    return out


def test_prometheus_config(tmp_path: Path) -> None:
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text(encoding="utf-8"))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = jobs["m365-mail-exporter"]["static_configs"][0]["targets"]
    assert targets == ["exporter:9731"]
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]
    host_config = prometheus_config_on_host(tmp_path)
    for rule_file in yaml.safe_load(host_config.read_text())["rule_files"]:
        assert Path(rule_file).is_file(), f"{rule_file} missing (alerts/ generates it)"
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (apt-get install prometheus)")
    result = subprocess.run([promtool, "check", "config", str(host_config)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# --- (c) every expression against a real Prometheus scraping the demo exporter ---------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # loopback only
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def wait_until(check, deadline: float, what: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        with contextlib.suppress(OSError):
            if check():
                return
        time.sleep(0.2)
    pytest.fail(f"{what} not ready in time:\n{log.read_text(errors='replace')[-3000:]}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture(scope="module")
def prometheus_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not (ROOT / "exporter" / "simulator" / "demo.py").exists():
        pytest.skip("exporter demo mode (exporter/simulator/demo.py) not there yet")
    binary = shutil.which("prometheus") or "/usr/bin/prometheus"
    if not Path(binary).exists():
        if IN_CI:
            pytest.fail("prometheus binary missing in CI (apt-get install prometheus)")
        pytest.skip("prometheus binary not installed (apt-get install prometheus)")
    tmp = tmp_path_factory.mktemp("prom")
    deadline = time.monotonic() + 40
    exporter_port, prom_port = free_port(), free_port()
    exporter_log, prom_log = tmp / "exporter.log", tmp / "prometheus.log"
    with exporter_log.open("wb") as out:
        exporter = subprocess.Popen(
            [sys.executable, "-m", "exporter", "--demo", "--web.listen-address",
             f"127.0.0.1:{exporter_port}", "--demo.interval", "1s"],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_until(lambda: http_get(f"http://127.0.0.1:{exporter_port}/metrics")[0] == 200, deadline,
                   "exporter --demo", exporter, exporter_log)
        config = tmp / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "m365-mail-exporter",
                                "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}]}],
        }), encoding="utf-8")
        with prom_log.open("wb") as out:
            prom = subprocess.Popen(
                [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
                 f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
                cwd=tmp, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{prom_port}"
            wait_until(lambda: http_get(f"{url}/-/ready")[0] == 200, deadline, "prometheus", prom, prom_log)
            yield url
        finally:
            stop(prom)
    finally:
        stop(exporter)


def instant_query(url: str, promql: str) -> dict[str, Any]:
    status, body = http_get(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}", timeout=10)
    doc = json.loads(body)
    assert status == 200 and doc["status"] == "success", f"{promql}\n-> {status} {doc.get('error')}"
    return doc["data"]


@pytest.mark.e2e
@pytest.mark.timeout(90)
def test_every_expression_returns_data(prometheus_url: str) -> None:
    cases = []
    for dashboard in load_dashboards().values():
        for title, ref, expr in expressions(dashboard):
            cases.append(((dashboard["uid"], title, ref), to_promql(substitute(expr))))
    # Each expression must be valid at once; data needs a few scrapes (increase() needs two samples, the
    # failing demo mailbox a first probe), so poll until everything outside the allow-list has data.
    deadline = time.monotonic() + 45
    while True:
        empty = []
        for key, promql in cases:
            data = instant_query(prometheus_url, promql)
            if not data["result"] and key not in MAY_BE_EMPTY:
                empty.append(f"{' / '.join(key)}: {promql}")
        if not empty:
            return
        if time.monotonic() > deadline:
            pytest.fail("expressions without data after 45 s:\n" + "\n".join(empty))
        time.sleep(1)


def prom_regex(values: list[str]) -> str:
    """What Grafana puts in `label=~"$var"` for these values: regex-escaped, alternated if several."""
    escaped = [re.sub(r"([\\^$.|?*+()\[\]{}])", r"\\\\\1", v) for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def label_values(url: str, expr: str, values: dict[str, str]) -> set[str]:
    """Evaluate a label_values() variable query like Grafana does with the given variable values."""
    promql = to_promql(substitute(expr, values))
    label = re.fullmatch(r"count by \((\w+)\) .*", promql, re.S).group(1)
    return {series["metric"][label] for series in instant_query(url, promql)["result"]}


@pytest.mark.e2e
@pytest.mark.timeout(90)
def test_credential_follows_mailbox(prometheus_url: str) -> None:
    """Selecting a mailbox selects exactly its credential, and the credential panels show that credential
    (and no other); with two mailboxes selected, "All" covers the credentials of both."""
    dashboard = load_dashboards()["m365-mailbox.json"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    cred_targets = [(p["title"], t["refId"], t["expr"]) for p in data_panels(dashboard) for t in p["targets"]
                    if 'credential=~"$credential"' in t["expr"]
                    and ("m365-mailbox", p["title"], t["refId"]) not in MAY_BE_EMPTY]

    def problems() -> list[str]:
        out = []
        mailboxes = sorted(label_values(prometheus_url, variables["mailbox"]["query"], {}))
        if len(mailboxes) < 4:
            return [f"demo mailboxes not all there yet: {mailboxes}"]
        found = {mb: label_values(prometheus_url, variables["credential"]["query"], {"mailbox": prom_regex([mb])})
                 for mb in mailboxes}
        out += [f"{mb} -> {creds}: expected exactly one credential" for mb, creds in found.items() if len(creds) != 1]
        if out:
            return out
        first = mailboxes[0]
        other = next(mb for mb in mailboxes if found[mb] != found[first])  # the demo uses 3 credentials
        both = label_values(prometheus_url, variables["credential"]["query"], {"mailbox": prom_regex([first, other])})
        if both != found[first] | found[other]:
            out.append(f"[{first}, {other}] -> {both}")
        for selection in [[mb] for mb in mailboxes] + [[first, other]]:
            credentials = sorted(set().union(*(found[mb] for mb in selection)))
            values = {"mailbox": prom_regex(selection), "credential": prom_regex(credentials)}
            for title, ref, expr in cred_targets:
                result = instant_query(prometheus_url, substitute(expr, values))["result"]
                shown = sorted({series["metric"].get("credential") for series in result})
                if shown != credentials:
                    out.append(f"{selection}: {title} {ref} shows {shown}, expected {credentials}")
        return out

    deadline = time.monotonic() + 45
    while found := problems():
        if time.monotonic() > deadline:
            pytest.fail("\n".join(found))
        time.sleep(1)
