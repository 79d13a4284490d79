"""The topic alert reaches a person: a live Prometheus evaluates deploy/prometheus/alerts.yml on the
running service's /metrics, a live Alertmanager (Debian's ``prometheus-alertmanager``) routes it
with deploy/alertmanager/alertmanager.yml, and a webhook receiver run by the test gets it.

Only the timings differ from the deployed files (rules' ``for`` and Alertmanager's group waits are
one second, scrape and evaluation every second); expressions, thresholds, labels, routes and
annotations are the shipped ones. The delivered alert must name the topic (id and slot) with a
``/topics`` link that answers, and carry only the rule's bounded labels.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml
from kafka_support import poll, service_settings, themed

from xtream.consumers.api import ApiServer
from xtream.consumers.wiring import build_service
from xtream.stream.kafka_broker import free_port

pytestmark = pytest.mark.kafka
ROOT = Path(__file__).resolve().parents[2]
TOPIC_ALERTS = {"XtreamTopicEmerged", "XtreamTopicDriftHigh"}
# The labels the topic rules may carry: the rule's own, the target's and the emergence kind.
BOUNDED_LABELS = {"alertname", "severity", "service", "team", "job", "instance", "kind"}


def _alertmanager_binary() -> str | None:
    return shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")




class Webhook:
    """An HTTP server that keeps every Alertmanager notification, by path (/topics, /on-call)."""

    def __init__(self) -> None:
        received: list[tuple[str, dict]] = []
        self.received = received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append((self.path, json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def alerts(self, path: str) -> list[dict]:
        return [a for p, n in list(self.received) if p == path for a in n["alerts"]]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _alertmanager_config(webhook: Webhook) -> dict:
    """The shipped routing with one-second waits and the test's receivers."""
    cfg = yaml.safe_load((ROOT / "deploy/alertmanager/alertmanager.yml").read_text(encoding="utf-8"))

    def quick(route):
        for key in ("group_wait", "group_interval"):
            if key in route:
                route[key] = "1s"
        for sub in route.get("routes", []):
            quick(sub)

    quick(cfg["route"])
    for receiver in cfg["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = f"{webhook.url}/{receiver['name']}"
    return cfg


def _start(args, log: Path) -> subprocess.Popen:
    return subprocess.Popen(args, stdout=open(log, "wb"), stderr=subprocess.STDOUT)


@pytest.fixture
def monitoring(tmp_path):
    """(start, webhook): ``start(target)`` runs Alertmanager and a Prometheus scraping ``target``."""
    binary = _alertmanager_binary()
    if shutil.which("prometheus") is None or binary is None:
        pytest.skip("Debian's prometheus and prometheus-alertmanager packages are not installed "
                    "(scripts/test.sh installs them)")
    webhook = Webhook()
    procs: list[subprocess.Popen] = []

    def start(target: str) -> str:
        am_port, prom_port = free_port(), free_port()
        (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(_alertmanager_config(webhook)))
        procs.append(_start([binary, f"--config.file={tmp_path / 'alertmanager.yml'}",
                             f"--storage.path={tmp_path / 'am'}", f"--web.listen-address=127.0.0.1:{am_port}",
                             "--cluster.listen-address="], tmp_path / "am.log"))
        rules = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text(encoding="utf-8"))
        for group in rules["groups"]:
            for rule in group["rules"]:
                rule["for"] = "1s"
        (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rules))
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(tmp_path / "alerts.yml")],
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]},
            "scrape_configs": [{"job_name": "xtream", "static_configs": [{"targets": [target]}]}],
        }))
        procs.append(_start(["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
                            tmp_path / "prom.log"))
        assert poll(lambda: _get(f"http://127.0.0.1:{am_port}/-/ready"), 30), (tmp_path / "am.log").read_text()
        return f"http://127.0.0.1:{prom_port}/api/v1"

    yield start, webhook
    for proc in procs:
        proc.terminate()
        proc.wait(30)
    webhook.close()


def _get(url):
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def test_topic_alert_is_delivered_by_alertmanager_with_the_topic(kafka_bootstrap, unique_name, produce, tmp_path,
                                                                   monitoring):
    from kafka import KafkaProducer

    start, webhook = monitoring
    settings = service_settings(
        kafka_bootstrap, unique_name, tmp_path / "data",
        model=dict(num_topics=6, warmup_docs=200, warmup_steps=10, batch_size=32, vocab_max_size=1500, vocab_min_df=2,
                   train_every_docs=100, train_steps=2, kmeans_decay=0.9),
        snapshots=dict(every_docs=200, every_seconds=1.0), batch=dict(max_records=100),
        http=dict(port=0))
    produce(kafka_bootstrap, settings.kafka.input_topic,
            [json.dumps(d).encode() for d in themed(["sports", "technology"], 800, "a")])
    service = build_service(settings)
    api = ApiServer(service).start()
    url = f"http://127.0.0.1:{api.port}"
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    try:
        prom = start(url.removeprefix("http://"))
        assert poll(lambda: _get(f"{url}/readyz"), 120), "service never became ready"
        assert poll(lambda: _query(prom, 'up{job="xtream"}') == 1.0, 30), "prometheus never scraped the service"
        assert not webhook.alerts("/topics"), "no topic alert on the first themes"
        # A new story: the theme mix switches abruptly.
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
        for d in themed(["health", "climate", "economy"], 1500, "b"):
            producer.send(settings.kafka.input_topic, json.dumps(d).encode())
        producer.flush()
        producer.close()
        delivered = poll(lambda: [a for a in webhook.alerts("/topics") if a["labels"]["alertname"] in TOPIC_ALERTS],
                         120)
        print("\nnotifications:", json.dumps(webhook.received, indent=1)[:4000])
        assert delivered, f"no topic alert reached the topics receiver; prometheus alerts: {_alerts(prom)}"
        for alert in delivered:
            labels, notes = alert["labels"], alert["annotations"]
            assert set(labels) <= BOUNDED_LABELS, f"unbounded labels: {set(labels) - BOUNDED_LABELS}"
            link = re.search(r"http://([\d.:]+)/topics/(\d+)", notes["topic_url"])
            assert link and link.group(1) == url.removeprefix("http://"), notes["topic_url"]
            topic_id = int(link.group(2))
            assert f"{topic_id}" in notes["description"] and re.search(r"slot \d+", notes["description"]), notes
            assert f"{url}/topics" in notes["description"]
            answer = httpx.get(notes["topic_url"], timeout=10)
            if answer.status_code == 404:   # the topic may have left the latest snapshot since
                assert any(t.topic_id == topic_id for v in service.store.versions()
                           for t in service.store.get(v).topics), notes["topic_url"]
            else:
                assert answer.status_code == 200 and answer.json()["topic"]["topic_id"] == topic_id
        on_call = webhook.alerts("/on-call")
        assert not [a for a in on_call if a["labels"]["alertname"] in TOPIC_ALERTS], "a topic alert paged on-call"
    finally:
        service.stop()
        thread.join(60)
        api.stop()
        service.close()


def _query(api, expr):
    try:
        res = httpx.get(f"{api}/query", params={"query": expr}, timeout=5).json()["data"]["result"]
    except (httpx.HTTPError, KeyError, ValueError):
        return None
    return float(res[0]["value"][1]) if res else None


def _alerts(api):
    try:
        return httpx.get(f"{api}/alerts", timeout=5).json()["data"]["alerts"]
    except (httpx.HTTPError, KeyError, ValueError):
        return None
