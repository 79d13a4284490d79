"""A real Prometheus scrapes the running service; an abrupt change of themes fires the drift alert.
Also: the HTTP API over real HTTP, and the dashboard's metric names against a live /metrics."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
from pathlib import Path

import httpx
import pytest
import yaml
from kafka_support import poll, service_settings, themed
from pydantic import SecretStr

from xtream.consumers.api import ApiServer
from xtream.consumers.wiring import build_service
from xtream.stream.kafka_broker import free_port

pytestmark = pytest.mark.kafka
ROOT = Path(__file__).resolve().parents[2]
TOKEN = "t0ken-for-the-live-test"   # http.token needs at least 16 characters




@pytest.fixture
def running_service(kafka_bootstrap, unique_name, produce, tmp_path):
    settings = service_settings(
        kafka_bootstrap, unique_name, tmp_path / "data",
        model=dict(num_topics=6, warmup_docs=200, warmup_steps=10, batch_size=32, vocab_max_size=1500, vocab_min_df=2,
                   train_every_docs=100, train_steps=2, kmeans_decay=0.9),
        snapshots=dict(every_docs=200, every_seconds=2.0), batch=dict(max_records=100),
        http=dict(port=0, token=SecretStr(TOKEN), max_body_bytes=10_000))
    produce(kafka_bootstrap, settings.kafka.input_topic, [json.dumps(d).encode() for d in themed(["sports", "technology"], 1200, "a")])
    service = build_service(settings)
    api = ApiServer(service).start()
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    yield service, f"http://127.0.0.1:{api.port}", settings
    service.stop()
    thread.join(60)
    api.stop()
    service.close()


def test_drift_alert_fires_in_a_real_prometheus(running_service, kafka_bootstrap, tmp_path):
    if shutil.which("prometheus") is None:
        pytest.skip("Debian's prometheus package is not installed (scripts/test.sh installs it)")
    from kafka import KafkaProducer

    service, url, settings = running_service
    assert poll(lambda: httpx.get(f"{url}/readyz").status_code == 200, 120), "service never became ready"

    rules = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule["for"] = "2s"          # same expressions and thresholds, no 15-minute pending period
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rules))
    port = free_port()
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(tmp_path / "alerts.yml")],
        "scrape_configs": [{"job_name": "xtream", "static_configs": [{"targets": [url.removeprefix("http://")]}]}],
    }))
    prom = subprocess.Popen(["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=open(tmp_path / "prom.log", "wb"), stderr=subprocess.STDOUT)
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        assert poll(lambda: _query(api, 'up{job="xtream"}') == 1.0, 60), "prometheus never scraped the service"
        assert _alert_state(api, "XtreamTopicDriftHigh") is None, "no drift alert on the first themes"
        # Abruptly switch the theme mix.
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
        for d in themed(["health", "climate", "economy"], 1500, "b"):
            producer.send(settings.kafka.input_topic, json.dumps(d).encode())
        producer.flush()
        producer.close()
        firing = poll(lambda: _alert_state(api, "XtreamTopicDriftHigh") == "firing", 240, interval=2.0)
        drift = _query(api, "xtream_topic_drift_max")
        print(f"\ndrift alert firing; xtream_topic_drift_max = {drift}")
        assert firing, f"drift alert did not fire (xtream_topic_drift_max = {drift})"
    finally:
        prom.terminate()
        prom.wait(30)


def _query(api, expr):
    try:
        res = httpx.get(f"{api}/query", params={"query": expr}, timeout=5).json()["data"]["result"]
    except (httpx.HTTPError, KeyError, ValueError):
        return None
    return float(res[0]["value"][1]) if res else None


def _alert_state(api, name):
    try:
        alerts = httpx.get(f"{api}/alerts", timeout=5).json()["data"]["alerts"]
    except (httpx.HTTPError, KeyError, ValueError):
        return None
    states = [a["state"] for a in alerts if a["labels"]["alertname"] == name]
    return "firing" if "firing" in states else (states[0] if states else None)


def test_api_over_http_against_the_running_service(running_service):
    service, url, _ = running_service
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
    assert poll(lambda: httpx.get(f"{url}/readyz").status_code == 200, 120)
    assert poll(lambda: httpx.get(f"{url}/topics").status_code == 200, 60)
    assert httpx.post(f"{url}/admin/snapshot").status_code == 401
    assert httpx.post(f"{url}/admin/snapshot", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert httpx.post(f"{url}/admin/snapshot", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 202
    big = {"documents": [{"text": "x" * 20_000}]}
    assert httpx.post(f"{url}/documents:assign", json=big).status_code == 413
    ok = httpx.post(f"{url}/documents:assign", json={"documents": [{"text": "The team won the final", "lang": "en"}]})
    assert ok.status_code == 200 and len(ok.json()["documents"][0]["theta"]) == 6


def test_dashboard_and_alerts_use_only_metrics_the_live_service_exports(running_service):
    _, url, _ = running_service
    # Per-partition lag exists once partitions are assigned and the first lag reading is taken.
    live = poll(lambda: (lambda t: t if "xtream_consumer_lag_records{" in t else None)(httpx.get(f"{url}/metrics").text), 60)
    assert live, "lag per partition is exported once partitions are assigned"
    exported = {line.split("{")[0].split(" ")[0] for line in live.splitlines() if line and not line.startswith("#")}
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/xtream.json").read_text())
    exprs = [t["expr"] for p in _panels(dashboard) for t in p.get("targets", []) if "expr" in t]
    exprs += [r["expr"] for g in yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())["groups"]
              for r in g["rules"]]
    names = {n for e in exprs for n in re.findall(r"\bxtream_[a-z_]+", e)}
    assert names, "the dashboard queries xtream metrics"
    missing = sorted(n for n in names if n not in exported)
    assert not missing, f"referenced but not exported by the live service: {missing}"


def _panels(dash):
    for p in dash.get("panels", []):
        yield p
        yield from p.get("panels", [])
