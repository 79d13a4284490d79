"""Kafka mode of ``bench.emergence``: the same stream through a local broker at a set rate, the
service's /metrics scraped by a live Prometheus that loads ``deploy/prometheus/alerts.yml`` as it
ships (scrape and evaluation every second; rules, thresholds and ``for`` untouched), and when the
topic alerts go pending and fire, read from Prometheus' ``/api/v1/alerts``.

Figures (seconds of wall time from the first story document sent):

- ``story_topic_born_s``: the first snapshot with a ``born`` topic id that did not exist when the
  story started (what ``xtream_topic_emergences_total{kind="born"}`` counts), and
  ``story_topic_born_after_documents``, the documents that snapshot covers;
- ``<alert>_pending_s`` / ``<alert>_firing_s`` for XtreamTopicEmerged and XtreamTopicDriftHigh;
- ``quiet_topic_alerts``: topic alerts pending or firing before the story started, with when they
  were first seen (seconds, negative: before the story);
- ``snapshot_interval_s``: mean wall time between the story phase's snapshots, the unit of the
  issue's target (the alert within two snapshot intervals of the story's topic).
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import threading
import time
from pathlib import Path

import yaml

from bench._common import warmup_within

logger = logging.getLogger("bench.emergence")

ROOT = Path(__file__).resolve().parents[1]
TOPIC_ALERTS = ("XtreamTopicEmerged", "XtreamTopicDriftHigh", "XtreamManyTopicsDrifting")


def _alerts(api: str) -> list[dict]:
    import httpx

    try:
        return httpx.get(f"{api}/alerts", timeout=5).json()["data"]["alerts"]
    except (httpx.HTTPError, KeyError, ValueError):
        return []


def _start_prometheus(work: Path, target: str) -> tuple[subprocess.Popen, str]:
    from xtream.stream.kafka_broker import free_port

    if shutil.which("prometheus") is None:
        raise SystemExit("--mode kafka needs Debian's prometheus package (apt-get install prometheus)")
    port = free_port()
    config = work / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ROOT / "deploy" / "prometheus" / "alerts.yml")],
        "scrape_configs": [{"job_name": "xtream", "static_configs": [{"targets": [target]}]}],
    }))
    proc = subprocess.Popen(["prometheus", f"--config.file={config}", f"--storage.tsdb.path={work / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=open(work / "prometheus.log", "wb"), stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}/api/v1"


def _settings(work: Path, bootstrap: str, every_docs: int, rate: float, quiet: int):
    from bench.emergence import WARMUP_SHARE
    from xtream.consumers.config import Settings

    base = Settings(data_dir=work / "data")
    kafka = dict(bootstrap_servers=bootstrap, input_topic="emergence.in", group_id="emergence",
                 assignments_topic="emergence.assign", snapshots_topic="emergence.snap",
                 dead_letter_topic="emergence.dlq", lineage_topic="emergence.lineage",
                 embedded_topic="emergence.emb")
    return base.model_copy(update={
        "kafka": base.kafka.model_copy(update=kafka),
        "model": warmup_within(base.model, quiet, WARMUP_SHARE),
        # Stream time is the records' (wall) time here: the drift window is one snapshot interval,
        # as the 300 s window is in file mode (documents 0.3 s apart, a snapshot every 1,000).
        "snapshots": base.snapshots.model_copy(update=dict(every_docs=every_docs, every_seconds=1e9,
                                                           drift_window_seconds=every_docs / rate)),
        "http": base.http.model_copy(update=dict(port=0))})


def _create_topics(settings) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    k = settings.kafka
    admin = KafkaAdminClient(bootstrap_servers=k.bootstrap_servers)
    try:
        admin.create_topics([NewTopic(t, num_partitions=1, replication_factor=1) for t in
                             (k.input_topic, k.assignments_topic, k.snapshots_topic, k.dead_letter_topic,
                              k.lineage_topic)])
    finally:
        admin.close()


def _produce(bootstrap: str, topic: str, records: list[bytes], rate: float, quiet: int, marks: dict) -> None:
    """Send ``records`` at ``rate`` per second; ``marks['story']`` is when record ``quiet`` went."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
    started = time.monotonic()
    for i, value in enumerate(records):
        wait = started + i / rate - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        if i == quiet:
            producer.flush()
            marks["story"] = time.monotonic()
        producer.send(topic, value)
    producer.flush()
    producer.close()
    marks["sent"] = time.monotonic()


def run_kafka(work: Path, texts, langs, labels, vectors, quiet: int, every_docs: int, rate: float,
              linger: float, embedder) -> dict:
    """The stream through Kafka and the service with a live Prometheus; the alert timings."""
    from datetime import datetime, timezone

    from bench.emergence import write_jsonl
    from xtream.consumers.api import ApiServer
    from xtream.consumers.checkpoint import CheckpointStore
    from xtream.consumers.wiring import _assemble_service
    from xtream.stream.kafka_broker import LocalKafkaBroker

    path = work / "stream.jsonl"
    write_jsonl(path, texts, langs, labels, datetime(2026, 1, 1, tzinfo=timezone.utc), 0.3)
    records = [line.encode() for line in path.read_text(encoding="utf-8").splitlines()]
    broker = LocalKafkaBroker.start_new(work / "kafka")
    prom = api = service = thread = None
    try:
        settings = _settings(work, broker.bootstrap, every_docs, rate, quiet)
        _create_topics(settings)
        service = _assemble_service(settings, embedder, CheckpointStore(work / "data" / "checkpoints"), None, "all")
        api = ApiServer(service).start()
        thread = threading.Thread(target=service.run, name="xtream-loop", daemon=True)
        thread.start()
        prom, prom_api = _start_prometheus(work, f"127.0.0.1:{api.port}")
        marks: dict = {}
        producer = threading.Thread(target=_produce, args=(broker.bootstrap, settings.kafka.input_topic, records,
                                                           rate, quiet, marks), daemon=True)
        started = time.monotonic()
        producer.start()
        seen: dict[tuple[str, str], float] = {}   # (alert, state) -> first time seen
        quiet_alerts: dict[str, float] = {}   # "alert:state" -> first seen, seconds before the story
        known_ids = None
        while True:
            now = time.monotonic()
            story = marks.get("story")
            if story is not None and known_ids is None:
                known_ids = service.publisher.tracker.next_id
            for a in _alerts(prom_api):
                name = a["labels"]["alertname"]
                if name not in TOPIC_ALERTS:
                    continue
                if story is None:
                    quiet_alerts.setdefault(f"{name}:{a['state']}", now - started)
                else:
                    seen.setdefault((name, a["state"]), now - story)
            done = "sent" in marks and (("XtreamTopicEmerged", "firing") in seen
                                        and ("XtreamTopicDriftHigh", "firing") in seen
                                        or now - marks["sent"] > linger)
            if done:
                break
            time.sleep(1.0)
        wall_story = time.time() - (time.monotonic() - marks["story"])
        quiet_alerts = {k: round(v - (marks["story"] - started), 1) for k, v in quiet_alerts.items()}
        figures = _figures(service, seen, quiet_alerts, known_ids, wall_story)
        figures.update({"mode": "kafka", "rate_docs_per_s": rate, "kafka_seconds": time.monotonic() - started,
                        "documents_learned": service.model.n_docs})
        return figures
    finally:
        if service is not None:
            service.stop()
        if thread is not None:
            thread.join(60)
        if api is not None:
            api.stop()
        if service is not None:
            service.close()
        if prom is not None:
            prom.terminate()
            prom.wait(30)
        broker.stop()


def _figures(service, seen: dict, quiet_alerts: dict[str, float], known_ids: int | None, wall_story: float) -> dict:
    snaps = [service.store.get(v) for v in service.store.versions()]
    story_snaps = [s.created_at.timestamp() for s in snaps if s.created_at.timestamp() >= wall_story]
    interval = ((story_snaps[-1] - story_snaps[0]) / (len(story_snaps) - 1)) if len(story_snaps) > 1 else None
    born = [r for r in service.store.lineage() if r.kind == "born" and known_ids is not None
            and r.topic_id >= known_ids and r.at.timestamp() >= wall_story]
    born_s = min((r.at.timestamp() - wall_story for r in born), default=None)
    learned = {s.model_version: s.documents_seen for s in snaps}
    born_docs = min((learned[r.model_version] for r in born if r.model_version in learned), default=None)
    figures = {"story_topic_born_s": born_s, "story_topic_born_after_documents": born_docs,
               "snapshot_interval_s": interval,
               "quiet_topic_alerts": quiet_alerts}
    for name in ("XtreamTopicEmerged", "XtreamTopicDriftHigh"):
        for state in ("pending", "firing"):
            figures[f"{name}_{state}_s"] = seen.get((name, state))
    emerged = figures["XtreamTopicEmerged_firing_s"]
    if emerged is not None and born_s is not None and interval:
        figures["XtreamTopicEmerged_firing_after_born_snapshot_intervals"] = (emerged - born_s) / interval
    logger.info("kafka mode: %s", json.dumps(figures))
    return figures
