"""Deployment and monitoring files under deploy/: they load, and they agree with the code.

* Prometheus: ``promtool check rules``, ``promtool check config`` and ``promtool test rules`` pass
  (the unit tests show every alert both firing and silent); every dashboard query parses.
* Every metric name in the alert rules and the Grafana dashboard is one that
  ``consumers.metrics.ServiceMetrics`` exports, and every label they group by exists.
* Every YAML file (compose, Kubernetes, Prometheus, Grafana provisioning) parses; every ``XTREAM_*``
  variable they set names a real setting of ``consumers.config.Settings`` (unknown ones would be
  ignored silently, e.g. a misspelt HTTP host leaving the API bound to 127.0.0.1).

promtool comes from Debian's ``prometheus`` package; the promtool tests skip only when it is absent.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase
from pydantic import BaseModel

from xtream.consumers.config import Settings
from xtream.consumers.metrics import ServiceMetrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROM = DEPLOY / "prometheus"
ALERTS = PROM / "alerts.yml"
ALERTS_TEST = PROM / "alerts_test.yml"
PROM_CONFIG = PROM / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "xtream.json"
COMPOSE = DEPLOY / "docker-compose.yml"
K8S = DEPLOY / "k8s"
DOCKERFILE = DEPLOY / "Dockerfile"

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool is not installed: apt-get install -y --no-install-recommends prometheus")

# Series that Prometheus itself adds to every target, not the service.
PROMETHEUS_SERIES = {"up"}
TARGET_LABELS = {"job", "instance"}
METRIC_RE = re.compile(r"\b(?:xtream|process|python)_[a-zA-Z0-9_]+\b|\bup\b(?=\s*\{)")
GROUPING_RE = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


def _promtool(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120)
    print(proc.stdout, proc.stderr)
    return proc


# -- what the service exports --------------------------------------------------------------------

def _exported() -> tuple[set[str], set[str], dict[str, set[str]]]:
    """(series names, family names, labels of each series name) of a fresh ServiceMetrics."""
    metrics = ServiceMetrics(["en", "zh"])
    series: set[str] = set()
    families: set[str] = set()
    for fam in metrics.registry.collect():
        families.add(fam.name)
        series.update(s.name for s in fam.samples)
        if fam.type == "counter":
            series.update({fam.name + "_total", fam.name + "_created"})
        elif fam.type == "histogram":
            series.update(fam.name + sfx for sfx in ("_bucket", "_sum", "_count", "_created"))
        elif fam.type == "summary":
            series.update(fam.name + sfx for sfx in ("", "_sum", "_count", "_created"))
        else:
            series.add(fam.name)
    labels: dict[str, set[str]] = {}
    for fam in metrics.registry.collect():          # labels of series that have samples now
        for s in fam.samples:
            labels.setdefault(s.name, set()).update(s.labels)
    for wrapper in vars(metrics).values():          # and of labelled metrics with no child yet
        if isinstance(wrapper, MetricWrapperBase):
            fam = next(iter(wrapper.describe()))
            for name in series:
                if name == fam.name or (name.startswith(fam.name + "_") and name[len(fam.name) + 1:]
                                        in ("total", "created", "bucket", "sum", "count")):
                    labels.setdefault(name, set()).update(wrapper._labelnames)
    for name in series:
        labels.setdefault(name, set())
        if name.endswith("_bucket"):
            labels[name].add("le")
    return series, families, labels


SERIES, FAMILIES, LABELS = _exported()
if not Path("/proc/self/stat").exists():
    # prometheus_client's ProcessCollector exports these on Linux only (where the service runs).
    SERIES |= {"process_cpu_seconds_total", "process_resident_memory_bytes", "process_virtual_memory_bytes",
               "process_start_time_seconds", "process_open_fds", "process_max_fds"}


def _alert_rules() -> list[dict]:
    doc = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def _panels(dash: dict) -> list[dict]:
    out = []
    for p in dash["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))             # panels inside collapsed rows
    return out


def _dashboard_queries(dash: dict) -> list[str]:
    queries = [t["expr"] for p in _panels(dash) for t in p.get("targets", [])]
    for var in dash.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            q = var["query"]
            queries.append(q["query"] if isinstance(q, dict) else q)
    return queries


def _names_in(text: str) -> set[str]:
    return set(METRIC_RE.findall(text))


def _check_metric_names(exprs: list[str], where: str) -> None:
    used = set().union(*(_names_in(e) for e in exprs))
    assert used, f"no metric names found in {where}"
    unknown = sorted(n for n in used if n not in SERIES and n not in PROMETHEUS_SERIES)
    assert not unknown, f"{where} uses metrics that consumers/metrics.py does not export: {unknown}"


def _check_grouping_labels(exprs: list[str], where: str) -> None:
    for expr in exprs:
        names = _names_in(expr)
        allowed = set(TARGET_LABELS).union(*(LABELS.get(n, set()) for n in names))
        for group in GROUPING_RE.findall(expr):
            for label in filter(None, (s.strip() for s in group.split(","))):
                assert label in allowed, f"{where}: label {label!r} in {expr!r} is not on {sorted(names)}"


# -- promtool ---------------------------------------------------------------------------------------

@needs_promtool
def test_promtool_check_rules():
    proc = _promtool("check", "rules", str(ALERTS))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_promtool
def test_promtool_check_config():
    # rule_files are resolved relative to the config file, wherever promtool is started from.
    proc = _promtool("check", "config", str(PROM_CONFIG))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_promtool
def test_promtool_test_rules():
    proc = _promtool("test", "rules", str(ALERTS_TEST))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


@needs_promtool
def test_dashboard_queries_parse(tmp_path):
    """Each panel query, with Grafana's variables filled in, is valid PromQL (checked as a rule)."""
    exprs = [t["expr"] for p in _panels(_dashboard()) for t in p.get("targets", [])]
    rules = []
    for i, expr in enumerate(exprs):
        expr = re.sub(r"\$__\w+", "5m", expr)
        expr = re.sub(r"\$\{?(\w+)\}?", "x", expr)
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8")
    proc = _promtool("check", "rules", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- alert rules ----------------------------------------------------------------------------------

EXPECTED_ALERTS = {"XtreamTopicEmerged", "XtreamTopicDriftHigh", "XtreamManyTopicsDrifting", "XtreamNoRecentSnapshot",
                   "XtreamConsumerLagGrowing", "XtreamDeadLetterRateHigh", "XtreamDown", "XtreamNotReady",
                   "XtreamOutputsBlocked", "XtreamOutputRecordsRejected", "XtreamOffsetsWentBackwards",
                   "XtreamCheckpointsFailing"}


def test_alerts_are_complete():
    rules = _alert_rules()
    assert {r["alert"] for r in rules} == EXPECTED_ALERTS
    for r in rules:
        assert r["labels"]["severity"] in {"critical", "warning", "info"}, r["alert"]
        for key in ("summary", "description", "runbook"):
            assert r["annotations"].get(key, "").strip(), f"{r['alert']} lacks annotation {key}"
        assert "for" in r, f"{r['alert']} would fire on a single evaluation"


def test_alert_unit_tests_show_each_alert_firing_and_silent():
    doc = yaml.safe_load(ALERTS_TEST.read_text(encoding="utf-8"))
    assert doc["rule_files"] == ["alerts.yml"]
    fires, silent = set(), set()
    for test in doc["tests"]:
        for case in test.get("alert_rule_test", []):
            (fires if case.get("exp_alerts") else silent).add(case["alertname"])
    assert fires == EXPECTED_ALERTS, f"alerts never shown firing: {EXPECTED_ALERTS - fires}"
    assert silent == EXPECTED_ALERTS, f"alerts never shown silent: {EXPECTED_ALERTS - silent}"


def test_alert_metrics_exist():
    rules = _alert_rules()
    _check_metric_names([r["expr"] for r in rules], "alerts.yml")
    _check_grouping_labels([r["expr"] for r in rules], "alerts.yml")
    # Annotations may name a metric family (e.g. a histogram) as well as a series.
    text = " ".join(v for r in rules for v in r["annotations"].values())
    unknown = sorted(n for n in _names_in(text) if n not in SERIES | FAMILIES)
    assert not unknown, f"alerts.yml annotations mention unknown metrics: {unknown}"


# -- dashboard -------------------------------------------------------------------------------------

def test_dashboard_is_a_valid_provisioned_dashboard():
    dash = _dashboard()
    assert dash["uid"] == "xtream" and dash["title"]
    assert 36 <= dash["schemaVersion"] <= 41
    panels = _panels(dash)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    graphs = [p for p in panels if p["type"] != "row"]
    assert len(graphs) >= 12
    for p in panels:
        assert p["datasource"]["uid"] == "prometheus", p["title"]
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, p["title"]
    for p in graphs:
        assert p.get("targets"), f"panel {p['title']!r} has no query"
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "prometheus", p["title"]
            assert t["expr"].strip()
    for var in dash["templating"]["list"]:
        assert var["datasource"]["uid"] == "prometheus"


def test_dashboard_covers_the_service_metrics():
    exprs = " ".join(_dashboard_queries(_dashboard()))
    for needed in ("xtream_documents_processed_total", "xtream_records_consumed_total",
                   "xtream_documents_dead_lettered_total", "xtream_consumer_lag_records",
                   "xtream_stage_seconds_bucket", "xtream_document_latency_seconds_bucket",
                   "xtream_topic_drift", "xtream_topic_drift_max", "xtream_topics_drifting_ratio",
                   "xtream_topic_births_total", "xtream_topic_deaths_total", "xtream_training_loss",
                   "xtream_training_steps_total", "xtream_replay_buffer_documents", "xtream_vocabulary_words",
                   "xtream_model_version", "xtream_last_snapshot_timestamp_seconds", "xtream_ready",
                   "xtream_source_up"):
        assert re.search(rf"\b{needed}\b", exprs), f"dashboard has no panel on {needed}"


def test_dashboard_metrics_exist():
    dash = _dashboard()
    queries = _dashboard_queries(dash)
    _check_metric_names(queries, "xtream.json")
    _check_grouping_labels(queries, "xtream.json")
    text = " ".join(p.get("description", "") for p in _panels(dash))
    unknown = sorted(n for n in _names_in(text) if n not in SERIES | FAMILIES)
    assert not unknown, f"dashboard descriptions mention unknown metrics: {unknown}"


def test_metric_name_check_catches_a_wrong_name():
    with pytest.raises(AssertionError, match="xtream_documents_processed"):
        _check_metric_names(["rate(xtream_documents_processed[5m])"], "probe")   # no _total
    with pytest.raises(AssertionError, match="language"):
        _check_grouping_labels(["sum by (language) (xtream_vocabulary_words)"], "probe")


# -- YAML, compose, Kubernetes ------------------------------------------------------------------------

def _yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml") and "kafka" not in p.parts)


def _load_all(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses(path):
    assert _load_all(path), f"{path} is empty"


def test_kubernetes_manifests():
    kinds = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in _load_all(path):
            assert doc.get("apiVersion") and doc.get("kind"), path
            assert "namespace" not in doc.get("metadata", {}), f"{path.name} must stay namespace-less"
            kinds.setdefault(doc["kind"], []).append(doc)
    assert {"ConfigMap", "Secret", "PersistentVolumeClaim", "Deployment", "Service", "PodMonitor",
            "Kustomization"} <= set(kinds)
    kustomization = kinds["Kustomization"][0]
    for res in kustomization["resources"]:
        assert (K8S / res).is_file(), res
    assert "secret.example.yaml" not in kustomization["resources"], "the example Secret must not be applied"

    dep = kinds["Deployment"][0]["spec"]
    assert dep["replicas"] == 1 and dep["strategy"]["type"] == "Recreate"
    pod = dep["template"]["spec"]
    ann = dep["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/port"] == "8000"
    assert pod["securityContext"]["runAsNonRoot"] is True
    (c,) = pod["containers"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["resources"]["requests"] and c["resources"]["limits"]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "persistentVolumeClaim" in volumes[mounts["/var/lib/xtream"]]
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert volumes[mounts["/var/lib/xtream"]]["persistentVolumeClaim"]["claimName"] == \
        kinds["PersistentVolumeClaim"][0]["metadata"]["name"]
    (port,) = kinds["Service"][0]["spec"]["ports"]
    assert port["name"] == "http-metrics" and port["port"] == 8000
    pm = kinds["PodMonitor"][0]
    assert pm["apiVersion"] == "monitoring.coreos.com/v1"
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "http-metrics"
    # The alerts select job="xtream": the PodMonitor takes the job name from this pod label.
    assert dep["template"]["metadata"]["labels"][pm["spec"]["jobLabel"]] == "xtream"


def test_compose_stack():
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    services = compose["services"]
    assert {"kafka", "xtream", "prometheus", "grafana"} <= set(services)
    assert services["kafka"]["image"] == "apache/kafka:4.1.1"
    assert "broker" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]
    assert "controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]
    build = services["xtream"]["build"]
    assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE.resolve()
    assert services["xtream"]["environment"]["XTREAM_KAFKA__BOOTSTRAP_SERVERS"] == "kafka:9092"
    for name in ("prometheus", "grafana"):
        for vol in services[name]["volumes"]:
            src = vol.split(":")[0]
            if src.startswith("."):
                assert (COMPOSE.parent / src).exists(), f"{name} mounts missing {src}"
    # The prometheus scrape target is the compose service.
    cfg = yaml.safe_load(PROM_CONFIG.read_text(encoding="utf-8"))
    (job,) = [j for j in cfg["scrape_configs"] if j["job_name"] == "xtream"]
    assert job["static_configs"][0]["targets"] == ["xtream:8000"]


def _settings_paths(model: type[BaseModel], prefix: str = "XTREAM_") -> set[str]:
    out = set()
    for name, field in model.model_fields.items():
        key = prefix + name.upper()
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out |= _settings_paths(ann, key + "__")
        else:
            out.add(key)
    return out


def _xtream_env_names() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    found["docker-compose.yml"] = {k for k in compose["services"]["xtream"]["environment"]}
    cm = [d for p in K8S.glob("*.yaml") for d in _load_all(p) if d["kind"] == "ConfigMap"][0]
    found["k8s ConfigMap"] = set(cm["data"])
    dep = [d for p in K8S.glob("*.yaml") for d in _load_all(p) if d["kind"] == "Deployment"][0]
    found["k8s Deployment"] = {e["name"] for c in dep["spec"]["template"]["spec"]["containers"]
                               for e in c.get("env", [])}
    found["Dockerfile"] = set(re.findall(r"\b(XTREAM_[A-Z_]+)=", DOCKERFILE.read_text(encoding="utf-8")))
    return {k: {n for n in v if n.startswith("XTREAM_")} for k, v in found.items()}


def test_xtream_environment_names_are_real_settings():
    valid = _settings_paths(Settings) | {"XTREAM_CONFIG_FILE"}
    for where, names in _xtream_env_names().items():
        assert names, where
        unknown = sorted(names - valid)
        assert not unknown, f"{where} sets XTREAM_ variables that no setting reads: {unknown}"


def test_container_settings_load(monkeypatch):
    """The compose and ConfigMap environments give the settings a container needs."""
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    cm = [d for p in K8S.glob("*.yaml") for d in _load_all(p) if d["kind"] == "ConfigMap"][0]
    for env in (compose["services"]["xtream"]["environment"], cm["data"]):
        for key in [k for k in os.environ if k.startswith("XTREAM_")]:
            monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, str(value))
        s = Settings()
        assert s.http.host == "0.0.0.0" and s.http.port == 8000
        assert str(s.data_dir) == "/var/lib/xtream"
        assert s.kafka.bootstrap_servers


# -- alertmanager ----------------------------------------------------------------------------------

ALERTMANAGER = DEPLOY / "alertmanager" / "alertmanager.yml"
AMTOOL = shutil.which("amtool")
needs_amtool = pytest.mark.skipif(
    AMTOOL is None,
    reason="amtool is not installed: apt-get install -y --no-install-recommends prometheus-alertmanager")


def _route(*labels: str) -> str:
    proc = subprocess.run([AMTOOL, "config", "routes", "test", f"--config.file={ALERTMANAGER}", *labels],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.strip()


@needs_amtool
def test_alertmanager_config_is_valid():
    proc = subprocess.run([AMTOOL, "check-config", str(ALERTMANAGER)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_amtool
def test_topic_alerts_are_routed_apart_from_on_call():
    """Every alert of alerts.yml, with its own labels, reaches the receiver of its audience."""
    for rule in _alert_rules():
        labels = [f"alertname={rule['alert']}"] + [f"{k}={v}" for k, v in rule["labels"].items()]
        topical = rule["labels"].get("team") == "topics" or rule["labels"]["severity"] == "info"
        assert _route(*labels) == ("topics" if topical else "on-call"), rule["alert"]
    assert any(r["labels"].get("team") == "topics" for r in _alert_rules())


def test_alertmanager_in_compose_and_kubernetes():
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    am = compose["services"]["alertmanager"]
    assert any(v.startswith("./alertmanager/alertmanager.yml:") for v in am["volumes"])
    cfg = yaml.safe_load(PROM_CONFIG.read_text(encoding="utf-8"))
    assert cfg["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]
    docs = [d for p in sorted(K8S.glob("*.yaml")) for d in _load_all(p)]
    (amc,) = [d for d in docs if d["kind"] == "AlertmanagerConfig"]
    kustomization = next(d for d in docs if d["kind"] == "Kustomization")
    assert "alertmanagerconfig.yaml" in kustomization["resources"]
    route = amc["spec"]["route"]
    topics = [r for r in route["routes"] if {"name": "team", "value": "topics"} in r["matchers"]]
    assert topics and topics[0]["receiver"] != route["receiver"]
