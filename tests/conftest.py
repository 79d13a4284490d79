"""Shared fixtures: one real Apache Kafka (KRaft) broker per test session, unique names per test.

Set ``XTREAM_TEST_KAFKA=host:port`` to run the suite against a broker you already have instead.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from kafka_support import SHARED_DATA

from xtream.stream.kafka_broker import LocalKafkaBroker


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


@pytest.fixture(scope="session")
def kafka_default_bootstrap(tmp_path_factory) -> str:
    """A second broker with Kafka's default limits (``message.max.bytes`` 1,048,588 and the rest):
    only the single-node replication settings differ from a stock ``server.properties``. Interop
    tests run here; the main broker raises the record limit for tests that dead-letter huge records.
    ``XTREAM_TEST_KAFKA_DEFAULT=host:port`` points at one you already have."""
    external = os.environ.get("XTREAM_TEST_KAFKA_DEFAULT")
    if external:
        yield external
        return
    broker = LocalKafkaBroker.start_new(tmp_path_factory.mktemp("kafka-default"), large_messages=False)
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
