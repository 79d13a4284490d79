"""Topic identity over time on a real broker: stable ids on a stationary stream, a birth when a
theme appears, a death when one stops."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from kafka_support import DEMO, read_topic, run_until_committed

from xtream.consumers.config import Settings
from xtream.consumers.wiring import build_service
from xtream.stream.snapshot_store import SnapshotStore, rebuild_from_kafka

pytestmark = pytest.mark.kafka


def themed(themes: list[str], n: int, tag: str) -> list[dict]:
    pool = [json.loads(line) for line in DEMO.read_text(encoding="utf-8").splitlines()]
    pool = [d for d in pool if d["metadata"]["theme"] in themes]
    return [{**pool[i % len(pool)], "id": f"{tag}-{i}"} for i in range(n)]


def test_ids_stable_then_birth_then_death(kafka_bootstrap, unique_name, produce, tmp_path):
    phase_a = themed(["sports", "technology", "economy", "health"], 2400, "a")
    phase_b = themed(["sports", "technology", "economy", "health", "climate"], 1500, "b")
    phase_c = themed(["technology", "economy", "health", "climate"], 2500, "c")
    docs = phase_a + phase_b + phase_c
    base = Settings(data_dir=tmp_path / "data")
    names = {f: f"{unique_name}-{f}" for f in ("in", "assign", "snap", "lineage", "dlq")}
    settings = base.model_copy(update={
        "kafka": base.kafka.model_copy(update=dict(
            bootstrap_servers=kafka_bootstrap, input_topic=names["in"], group_id=unique_name,
            assignments_topic=names["assign"], snapshots_topic=names["snap"], lineage_topic=names["lineage"],
            dead_letter_topic=names["dlq"])),
        "model": base.model.model_copy(update=dict(
            num_topics=6, warmup_docs=200, warmup_steps=10, batch_size=32, vocab_max_size=1500, vocab_min_df=2,
            train_every_docs=100, train_steps=1, train_in_background=False, kmeans_decay=0.9,
            novelty_quantile=0.2)),
        "snapshots": base.snapshots.model_copy(update=dict(every_docs=200, every_seconds=3600, death_horizon=2)),
        "batch": base.batch.model_copy(update=dict(max_records=100)),
    })
    produce(kafka_bootstrap, names["in"], [json.dumps(d).encode() for d in docs])
    service = build_service(settings)
    try:
        run_until_committed(service, kafka_bootstrap, names["in"], unique_name)
    finally:
        service.close()

    assignments = {a["document_id"]: a for a in (json.loads(r.value) for r in read_topic(kafka_bootstrap, names["assign"], len(docs)))}
    snaps = [json.loads(r.value) for r in read_topic(kafka_bootstrap, names["snap"])]
    events = [json.loads(r.value) for r in read_topic(kafka_bootstrap, names["lineage"])]
    seen = lambda snap: snap["documents_seen"]  # noqa: E731
    a_snaps = [s for s in snaps if 600 <= seen(s) <= len(phase_a)]
    assert len(a_snaps) >= 8
    alive_ids = [{t["topic_id"] for t in s["topics"] if t["alive"]} for s in a_snaps]
    assert all(ids == alive_ids[0] for ids in alive_ids), f"ids moved on a stationary stream: {alive_ids}"

    def slot_of(theme_docs):
        return Counter(assignments[d["id"]]["cluster"] for d in theme_docs).most_common(1)[0][0]

    def id_at(slot, snap):
        return next(t["topic_id"] for t in snap["topics"] if t["slot"] == slot)

    climate = [d for d in phase_b if d["metadata"]["theme"] == "climate"]
    climate_id = id_at(slot_of(climate), next(s for s in snaps if seen(s) >= len(phase_a) + len(phase_b)))
    born_after_a = [e for e in events if e["kind"] == "born" and e["topic_id"] == climate_id]
    assert born_after_a and climate_id not in alive_ids[0], "the injected theme was born as a new topic"

    sports = [d for d in phase_a if d["metadata"]["theme"] == "sports"]
    sports_id = id_at(slot_of(sports), a_snaps[-1])
    died = [e for e in events if e["kind"] in ("died", "merged_into") and e["topic_id"] == sports_id]
    assert died, f"the stopped theme died; events: {[(e['kind'], e['topic_id']) for e in events]}"
    print(f"\n{len(snaps)} snapshots, {len(events)} lineage events; climate born as {climate_id}, "
          f"sports ({sports_id}) {died[0]['kind']} at v{died[0]['model_version']}")

    # The local store is derived data: rebuilt from the topics it equals the service's own.
    rebuilt = SnapshotStore(tmp_path / "rebuilt.sqlite")
    n_snaps, n_events = rebuild_from_kafka(rebuilt, kafka_bootstrap, names["snap"], names["lineage"])
    original = SnapshotStore(settings.data_dir / "snapshots.sqlite")
    assert (n_snaps, n_events) == (len(snaps), len(events))
    assert rebuilt.versions() == original.versions()
    assert rebuilt.latest() == original.latest()
    assert [e.model_dump() for e in rebuilt.lineage()] == [e.model_dump() for e in original.lineage()]
