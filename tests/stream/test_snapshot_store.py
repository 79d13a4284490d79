"""The snapshot store answers as-of queries exactly and fast over long histories."""

from __future__ import annotations

import random
import time
from datetime import datetime, timedelta, timezone

import numpy as np

from xtream.stream.schemas import SnapshotTopic, TopicSnapshot, TopicWords
from xtream.stream.snapshot_store import SnapshotStore


def snapshot(version: int, at: datetime, k: int = 20) -> TopicSnapshot:
    topics = [SnapshotTopic(topic_id=t, slot=t, words={"en": TopicWords(words=[f"w{t}"] * 15, weights=[0.1] * 15)},
                            prevalence=1 / k, size=10.0) for t in range(k)]
    return TopicSnapshot(model_version=version, created_at=at, documents_seen=version * 100, languages=["en"],
                         topics=topics)


def test_as_of_returns_the_snapshot_in_force_for_random_times(tmp_path):
    store = SnapshotStore(tmp_path / "s.sqlite")
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    rng = random.Random(3)
    times = sorted(t0 + timedelta(seconds=rng.uniform(0, 1_000_000)) for _ in range(1000))
    for v, at in enumerate(times, start=1):
        store.add(snapshot(v, at))
    assert len(store) == 1000

    latencies = []
    for _ in range(100):
        query = t0 + timedelta(seconds=rng.uniform(-1000, 1_001_000))
        expected = max((v for v, at in enumerate(times, start=1) if at <= query), default=None)
        started = time.perf_counter()
        found = store.as_of(query)
        latencies.append(time.perf_counter() - started)
        assert (found.model_version if found else None) == expected
    p99 = float(np.quantile(latencies, 0.99))
    print(f"\nas-of over 1,000 snapshots: p50 {np.median(latencies) * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms")
    assert p99 < 0.05, "an as-of query is an index lookup, not a scan of 1,000 payloads"


def test_store_survives_reopening_and_replaying_a_version_is_idempotent(tmp_path):
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    store = SnapshotStore(tmp_path / "s.sqlite")
    store.add(snapshot(1, t0))
    store.add(snapshot(1, t0))
    store.close()
    again = SnapshotStore(tmp_path / "s.sqlite")
    assert again.versions() == [1] and again.latest().model_version == 1
