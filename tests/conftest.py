"""Shared fixtures: one real Apache Kafka (KRaft) broker per test session, unique names per test.

Set ``XTREAM_TEST_KAFKA=host:port`` to run the suite against a broker you already have instead.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from stream.kafka_broker import LocalKafkaBroker

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory) -> str:
    """Bootstrap address of the session's broker, started once with a fresh data dir."""
    external = os.environ.get("XTREAM_TEST_KAFKA")
    if external:
        yield external
        return
    broker = LocalKafkaBroker.start_new(tmp_path_factory.mktemp("kafka"))
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture
def unique_name(request) -> str:
    """A topic/group name no other test uses: test name + random suffix, Kafka-legal characters."""
    base = "".join(c if c.isalnum() else "-" for c in request.node.name)[:60]
    return f"{base}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the project; tests that need it skip with the reason when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared datasets not found at {SHARED_DATA}")
    return SHARED_DATA


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


@pytest.fixture
def produce():
    """``produce(bootstrap, topic, values, keys=None, partitions=1)``: create the topic, send raw bytes."""
    from kafka import KafkaAdminClient, KafkaProducer
    from kafka.admin import NewTopic

    def _produce(bootstrap: str, topic: str, values: list[bytes | None], keys=None, partitions: int = 1,
                 timestamps: list[int] | None = None) -> None:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        try:
            admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
        finally:
            admin.close()
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=16 * 1024 * 1024)
        for i, v in enumerate(values):
            producer.send(topic, value=v, key=None if keys is None else keys[i],
                          timestamp_ms=None if timestamps is None else timestamps[i])
        producer.flush()
        producer.close()

    return _produce


def read_topic(bootstrap: str, topic: str, expected: int | None = None, timeout: float = 30.0) -> list:
    """All records of ``topic`` (stops at ``expected`` or after 3 s without news)."""
    import time as _time

    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, group_id=None)
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
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        ends = consumer.end_offsets(tps)
        return {tp.partition: consumer.committed(tp) for tp in tps}, {tp.partition: ends[tp] for tp in tps}
    finally:
        consumer.close()
