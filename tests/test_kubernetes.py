"""deploy/kubernetes: renders with `kubectl kustomize`, validates offline, and wires the shards the exporter expects.

- the generated copies (PrometheusRule from alerts/, dashboards from grafana/) equal a fresh generation;
- base and the example overlay render; every built-in object validates strictly against the Kubernetes
  OpenAPI schemas shipped by `kubernetes-validate` (no cluster, no network); the Prometheus Operator objects,
  for which no schema package exists, are checked structurally and their rule groups pass `promtool`;
- the rendered StatefulSet's args, with $(VAR) expanded the way the kubelet does for each pod name, parse
  with the exporter's own argument parser into shards that cover 0..N-1 exactly `--shard.replicas` times,
  and the config in the ConfigMap loads and finds its secret files where the Secret is mounted.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.cli import build_parser
from exporter.config import load_config
from exporter.sharding import ShardError, shard_from_args

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
TREES = {"base": K8S / "base", "overlay": K8S / "overlays" / "example"}
KUBE_VERSION = "1.30"  # oldest Kubernetes the manifests target (pod-index label, policy/v1, RuntimeDefault)


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        reason = ("kubectl not found: install it (CI: .ci/run installs Debian's kubernetes-client when kubectl is "
                  "missing) to render deploy/kubernetes with kustomize")
        print(reason, file=sys.stderr)
        pytest.skip(reason)
    out = subprocess.run([path, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=30)
    version = json.loads(out.stdout or "{}").get("kustomizeVersion", "")
    major = re.match(r"v(\d+)", version)
    if not major or int(major.group(1)) < 4:
        reason = (f"kubectl's embedded kustomize {version or '(unknown)'} is too old (need v4+, kubectl 1.21+): "
                  "Debian 12's kubernetes-client is 1.20")
        print(reason, file=sys.stderr)
        pytest.skip(reason)
    return path


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    exe = kubectl()
    out: dict[str, list[dict[str, Any]]] = {}
    for name, tree in TREES.items():
        p = subprocess.run([exe, "kustomize", str(tree)], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        out[name] = [d for d in yaml.safe_load_all(p.stdout) if d]
    return out


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, (kind, [d["metadata"]["name"] for d in found])
    return found[0]


def test_generated_copies_are_up_to_date() -> None:
    p = subprocess.run([sys.executable, str(K8S / "generate.py"), "--check"], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    rule = yaml.safe_load((K8S / "base" / "prometheusrule.yaml").read_text(encoding="utf-8"))
    source = yaml.safe_load((ROOT / "alerts" / "m365-mail-exporter.rules.yml").read_text(encoding="utf-8"))
    assert rule["spec"]["groups"] == source["groups"]


@pytest.mark.parametrize("tree", list(TREES))
def test_builtin_objects_validate_against_the_kubernetes_schemas(rendered: dict[str, Any], tree: str) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (test extra)")
    kinds = Counter()
    for doc in rendered[tree]:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # CRDs: no schema package; checked below
        kv.validate(doc, KUBE_VERSION, strict=True)  # raises on unknown fields, wrong types, missing required
        kinds[doc["kind"]] += 1
    assert kinds["StatefulSet"] == 1 and kinds["Service"] == 1 and kinds["Secret"] == 1
    assert kinds["ConfigMap"] == 1 + len(list((ROOT / "grafana" / "dashboards").glob("*.json")))


def test_the_validator_rejects_a_typo() -> None:
    """The strict validation above can fail: a misspelt field is an error, not ignored."""
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (test extra)")
    sts = yaml.safe_load((K8S / "base" / "statefulset.yaml").read_text(encoding="utf-8"))
    sts["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = sts["spec"]["template"]["spec"][
        "containers"][0].pop("readinessProbe")
    with pytest.raises(kv.ValidationError):
        kv.validate(sts, KUBE_VERSION, strict=True)


@pytest.mark.parametrize("tree", list(TREES))
def test_prometheus_operator_objects_are_well_formed_and_rules_pass_promtool(
        rendered: dict[str, Any], tree: str, tmp_path: Path) -> None:
    docs = rendered[tree]
    svc, sm, rule = one(docs, "Service"), one(docs, "ServiceMonitor"), one(docs, "PrometheusRule")
    assert sm["apiVersion"] == rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(sm["spec"]) <= {"jobLabel", "selector", "endpoints", "namespaceSelector"}, sm["spec"]
    labels = svc["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items())  # selects the Service
    assert labels[sm["spec"]["jobLabel"]] == "m365-mail-exporter"  # job label the alert rules select
    ports = {p["name"] for p in svc["spec"]["ports"]}
    for ep in sm["spec"]["endpoints"]:
        assert set(ep) <= {"port", "path", "interval", "scrapeTimeout"}, ep
        assert ep["port"] in ports and ep["path"] == "/metrics"
    assert set(rule["spec"]) == {"groups"}
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}), encoding="utf-8")
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not found (Debian: apt-get install prometheus)")
    p = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    if tree == "overlay":
        assert sm["metadata"]["labels"]["release"] == rule["metadata"]["labels"]["release"]


@pytest.mark.parametrize("tree", list(TREES))
def test_dashboards_are_configmaps_for_the_grafana_sidecar(rendered: dict[str, Any], tree: str) -> None:
    maps = [d for d in rendered[tree] if d["kind"] == "ConfigMap" and "grafana_dashboard" in d["metadata"].get(
        "labels", {})]
    sources = {p.name: p.read_text(encoding="utf-8") for p in (ROOT / "grafana" / "dashboards").glob("*.json")}
    assert {k: v for m in maps for k, v in m["data"].items()} == sources
    assert all(m["metadata"]["labels"]["grafana_dashboard"] == "1" for m in maps)


def expand(text: str, env: dict[str, str]) -> str:
    """The kubelet's $(VAR) expansion in args ($$ escapes, unknown variables stay as written)."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


@pytest.mark.parametrize("tree", list(TREES))
def test_statefulset_shard_wiring_matches_the_exporter_flags(rendered: dict[str, Any], tree: str,
                                                            tmp_path: Path) -> None:
    docs = rendered[tree]
    sts = one(docs, "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    replicas = sts["spec"]["replicas"]
    static_env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"] if "valueFrom" in e} == {
        "POD_NAME": "metadata.name"}
    shards: Counter[int] = Counter()
    totals = set()
    for ordinal in range(replicas + 1):
        env = {**static_env, "POD_NAME": f"{sts['metadata']['name']}-{ordinal}"}
        args = build_parser().parse_args([expand(a, env) for a in container["args"]])
        if ordinal == replicas:  # one pod too many (replicas and SHARD_* out of step) is refused, exit 2
            with pytest.raises(ShardError):
                shard_from_args(args)
            continue
        shard = shard_from_args(args)
        shards[shard.index] += 1
        totals.add(shard.total)
    (total,) = totals
    copies = int(static_env["SHARD_REPLICAS"])
    assert replicas == total * copies
    assert shards == Counter({s: copies for s in range(total)})  # every shard, each exactly --shard.replicas times
    if tree == "overlay":
        assert (total, copies) == (3, 2)

    # the flags point at what the pod mounts: port, config file, secret files
    assert args.listen.rsplit(":", 1)[1] == str(container["ports"][0]["containerPort"])
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    cm_name = volumes["config"]["configMap"]["name"]
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == cm_name)
    cfg_key = Path(args.config_file).relative_to(mounts["config"]).as_posix()
    secret = next(d for d in docs if d["kind"] == "Secret"
                  and d["metadata"]["name"] == volumes["credentials"]["secret"]["secretName"])
    keys = set(secret.get("data", {})) | set(secret.get("stringData", {}))
    local = tmp_path / "config.yml"
    local.write_text(cm["data"][cfg_key], encoding="utf-8")
    config = load_config(local)
    for name, cred in config.credentials.items():
        for field in ("client_secret_file", "certificate_file", "private_key_file"):
            ref = getattr(cred, field, None)
            if ref:
                assert Path(ref).parent == Path(mounts["credentials"]) and Path(ref).name in keys, (name, ref)
        if cred.flow == "delegated":
            assert Path(str(cred.token_cache)).is_relative_to(mounts["token-cache"]), name


@pytest.mark.parametrize("tree", list(TREES))
def test_pod_is_locked_down_and_probes_the_lifecycle_endpoints(rendered: dict[str, Any], tree: str) -> None:
    sts = one(rendered[tree], "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/-/healthy"
    assert c["readinessProbe"]["httpGet"]["path"] == "/-/ready"
    assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
    assert "cpu" not in c["resources"].get("limits", {})  # throttling would delay probes and scrapes
    claims = [t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]]
    assert claims == ["token-cache"]  # delegated refresh tokens survive a restart
    assert sts["spec"]["serviceName"] == one(rendered[tree], "Service")["metadata"]["name"]
