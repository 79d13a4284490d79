"""Helpers shared by the integration tests: real documents, reading topics, committed offsets.

A plain module (not ``conftest``): ``tests/model/conftest.py`` exists too, and two modules both
importable as ``conftest`` shadow each other.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


DEMO = Path(__file__).resolve().parents[1] / "consumers" / "demo" / "news.jsonl"


def stream_documents(n: int, shared: Path | None = SHARED_DATA) -> list[dict]:
    """``n`` real documents, en and zh interleaved: EC News train lines, or the demo stream cycled."""
    import json as _json

    ec = shared / "ecnews" if shared is not None else None
    if ec is not None and ec.is_dir():
        en = (ec / "train_texts_en.txt").read_text(encoding="utf-8").splitlines()
        zh = (ec / "train_texts_cn.txt").read_text(encoding="utf-8").splitlines()
        docs = []
        for i in range(n):
            lang, lines = ("en", en) if i % 2 == 0 else ("zh", zh)
            docs.append({"id": f"ec-{lang}-{i // 2}", "text": lines[i // 2], "lang": lang})
        return docs
    demo = [_json.loads(line) for line in DEMO.read_text(encoding="utf-8").splitlines()]
    return [{**demo[i % len(demo)], "id": f"{demo[i % len(demo)]['id']}-{i}"} for i in range(n)]


def read_topic(bootstrap: str, topic: str, expected: int | None = None, timeout: float = 30.0,
               isolation_level: str = "read_uncommitted") -> list:
    """All records of ``topic`` (stops at ``expected`` or after 3 s without news)."""
    import time as _time

    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, group_id=None, isolation_level=isolation_level)
    out, deadline, quiet_since = [], _time.monotonic() + timeout, _time.monotonic()
    try:
        while _time.monotonic() < deadline:
            got = consumer.poll(timeout_ms=300)
            for batch in got.values():
                out.extend(batch)
            if got:
                quiet_since = _time.monotonic()
            if expected is not None and len(out) >= expected:
                break
            if expected is None and out and _time.monotonic() - quiet_since > 3:
                break
    finally:
        consumer.close()
    return out


def committed_offsets(bootstrap: str, topic: str, group: str) -> tuple[dict[int, int | None], dict[int, int]]:
    """``(committed, end)`` offsets per partition of ``topic`` for ``group``."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        # A fresh client may not have the topic's metadata yet: an empty answer would make every
        # "all partitions committed" check pass vacuously, so wait for it (briefly).
        deadline = time.monotonic() + 10
        while not consumer.partitions_for_topic(topic) and time.monotonic() < deadline:
            time.sleep(0.1)
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        ends = consumer.end_offsets(tps)
        return {tp.partition: consumer.committed(tp) for tp in tps}, {tp.partition: ends[tp] for tp in tps}
    finally:
        consumer.close()


def service_settings(bootstrap: str, name: str, data_dir: Path, **sections: dict):
    """Settings for a service under test: every topic and the group named after ``name``
    (``<name>-in``, ``<name>-g``, ``<name>-assign``...), then per-section overrides, e.g.
    ``model=dict(num_topics=6)``, ``batch=dict(max_records=50)``."""
    from xtream.consumers.config import Settings

    base = Settings(data_dir=data_dir)
    kafka = dict(bootstrap_servers=bootstrap, input_topic=f"{name}-in", group_id=f"{name}-g",
                 assignments_topic=f"{name}-assign", snapshots_topic=f"{name}-snap", dead_letter_topic=f"{name}-dlq",
                 lineage_topic=f"{name}-lineage", embedded_topic=f"{name}-emb") | sections.pop("kafka", {})
    update = {"kafka": base.kafka.model_copy(update=kafka)}
    for section, values in sections.items():
        update[section] = getattr(base, section).model_copy(update=values)
    return base.model_copy(update=update)


def create_output_topics(settings) -> None:
    """Create the service's output topics up front, as a deployment does.

    Left to auto-creation, the first batch's producer creates them while the consumer has just
    joined, and the metadata churn can make the group assign partitions a second time, which a
    test that counts assignments would read as a rebalance caused by the service.
    """
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    k = settings.kafka
    admin = KafkaAdminClient(bootstrap_servers=k.bootstrap_servers)
    try:
        admin.create_topics([NewTopic(t, num_partitions=1, replication_factor=1)
                             for t in (k.assignments_topic, k.snapshots_topic, k.dead_letter_topic, k.lineage_topic)])
    finally:
        admin.close()


def fully_committed(bootstrap: str, topic: str, group: str) -> bool:
    """Whether ``group`` has committed the end of every partition of ``topic`` (an empty partition,
    which nobody ever commits, counts as done)."""
    committed, end = committed_offsets(bootstrap, topic, group)
    return bool(end) and all((committed[p] or 0) == end[p] for p in end)


def run_until_records(service, n: int, timeout: float = 60.0) -> None:
    """Run the service in a thread until it has handled ``n`` records (or ``timeout``), then stop and
    close it: for tests judged on what the service did with the records, not on commits."""
    import threading
    import time

    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while service.stats.records < n and time.monotonic() < deadline and thread.is_alive():
            time.sleep(0.5)
    finally:
        service.stop()
        thread.join(60)
        service.close()


def run_until_committed(service, bootstrap: str, topic: str, group: str, timeout: float = 240.0) -> None:
    """Run the service in a thread until every input offset is committed; it must stay alive throughout.

    Stops the service (it finishes its batch and checkpoints); closing it is the caller's job.
    """
    import threading
    import time

    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if fully_committed(bootstrap, topic, group):
                break
            assert thread.is_alive(), "the service stopped early"
            time.sleep(1.0)
        assert thread.is_alive(), "the service stopped early"
    finally:
        service.stop()
        thread.join(60)
    assert not thread.is_alive()


def themed(themes, n: int, tag: str) -> list[dict]:
    """``n`` demo documents of the given themes, cycled, with ids ``<tag>-<i>``."""
    pool = [json.loads(line) for line in DEMO.read_text(encoding="utf-8").splitlines()]
    pool = [d for d in pool if d["metadata"]["theme"] in themes]
    return [{**pool[i % len(pool)], "id": f"{tag}-{i}"} for i in range(n)]


def poll(pred, timeout: float, interval: float = 1.0):
    """``pred()``'s first truthy value within ``timeout`` seconds, else None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    return None
