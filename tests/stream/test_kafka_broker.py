"""The local broker is a real Kafka: these are the guarantees the service relies on."""

from __future__ import annotations

import json
import time
from collections import defaultdict

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

from xtream.stream.kafka_broker import LocalKafkaBroker

pytestmark = pytest.mark.kafka


def _create_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    finally:
        admin.close()


def _produce_keyed(bootstrap: str, topic: str, n: int, **send_kwargs) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all",
                             key_serializer=str.encode, value_serializer=lambda v: json.dumps(v).encode())
    for i in range(n):
        producer.send(topic, key=f"key-{i % 17}", value={"seq": i, "key": f"key-{i % 17}"},
                      headers=[("source", b"test"), ("seq", str(i).encode())], **send_kwargs)
    producer.flush()
    producer.close()


def _consume_all(bootstrap: str, topic: str, group: str, expected: int, timeout: float = 60.0):
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
                             enable_auto_commit=False, auto_offset_reset="earliest")
    records = []
    deadline = time.monotonic() + timeout
    try:
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
            consumer.commit()
        consumer.commit()
    finally:
        consumer.close()
    return records


def test_admin_creates_topic_with_three_partitions(kafka_bootstrap, unique_name):
    _create_topic(kafka_bootstrap, unique_name, partitions=3)
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap)
    try:
        deadline = time.monotonic() + 20
        partitions = consumer.partitions_for_topic(unique_name)
        while not partitions and time.monotonic() < deadline:
            time.sleep(0.2)
            partitions = consumer.partitions_for_topic(unique_name)
    finally:
        consumer.close()
    assert partitions == {0, 1, 2}


def test_keyed_json_with_headers_round_trips_with_manual_commits(kafka_bootstrap, unique_name):
    _create_topic(kafka_bootstrap, unique_name, partitions=3)
    _produce_keyed(kafka_bootstrap, unique_name, 1000)

    records = _consume_all(kafka_bootstrap, unique_name, group=unique_name, expected=1000)

    seqs = [json.loads(r.value)["seq"] for r in records]
    assert sorted(seqs) == list(range(1000)), "every message read back exactly once"
    assert all(dict(r.headers)["seq"] == str(json.loads(r.value)["seq"]).encode() for r in records)
    by_partition = defaultdict(list)
    for r in records:
        by_partition[r.partition].append(r)
        assert r.key.decode() == json.loads(r.value)["key"]
    assert len(by_partition) == 3, "17 keys spread over all 3 partitions"
    for part in by_partition.values():
        offsets = [r.offset for r in part]
        assert offsets == sorted(offsets)
        assert [json.loads(r.value)["seq"] for r in part] == sorted(json.loads(r.value)["seq"] for r in part)
    keys_to_partition = {}
    for r in records:
        assert keys_to_partition.setdefault(r.key, r.partition) == r.partition, "a key stays on one partition"

    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=unique_name, enable_auto_commit=False)
    try:
        tps = [TopicPartition(unique_name, p) for p in range(3)]
        ends = consumer.end_offsets(tps)
        assert {tp: consumer.committed(tp) for tp in tps} == ends, "manual commits cover everything read"
    finally:
        consumer.close()


def test_offsets_for_times_finds_first_record_at_or_after_timestamp(kafka_bootstrap, unique_name):
    _create_topic(kafka_bootstrap, unique_name, partitions=1)
    base = 1_700_000_000_000
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    for i in range(50):
        producer.send(unique_name, value=f"m{i}".encode(), timestamp_ms=base + i * 1000)
    producer.flush()
    producer.close()

    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap)
    try:
        tp = TopicPartition(unique_name, 0)
        exact = consumer.offsets_for_times({tp: base + 20_000})[tp]
        between = consumer.offsets_for_times({tp: base + 20_500})[tp]
        after_end = consumer.offsets_for_times({tp: base + 60_000})[tp]
    finally:
        consumer.close()
    assert (exact.offset, exact.timestamp) == (20, base + 20_000)
    assert (between.offset, between.timestamp) == (21, base + 21_000)
    assert after_end is None


def test_broker_restart_keeps_messages_and_committed_offsets(tmp_path, unique_name):
    with LocalKafkaBroker.start_new(tmp_path / "kafka") as broker:
        _create_topic(broker.bootstrap, unique_name, partitions=2)
        _produce_keyed(broker.bootstrap, unique_name, 200)
        first = _consume_all(broker.bootstrap, unique_name, group=unique_name, expected=200)
        assert len(first) == 200

        broker.stop()
        assert not broker.running
        broker.restart()

        # Committed offsets survived: the same group sees nothing new...
        consumer = KafkaConsumer(unique_name, bootstrap_servers=broker.bootstrap, group_id=unique_name,
                                 enable_auto_commit=False, auto_offset_reset="earliest")
        try:
            leftover = []
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline:
                for batch in consumer.poll(timeout_ms=500).values():
                    leftover.extend(batch)
            assert leftover == []
        finally:
            consumer.close()
        # ...and the messages survived: a new group reads all 200 again.
        again = _consume_all(broker.bootstrap, unique_name, group=unique_name + "-fresh", expected=200)
        assert sorted(json.loads(r.value)["seq"] for r in again) == list(range(200))


def test_cluster_ids_never_start_with_a_dash_which_the_storage_tool_would_read_as_an_option():
    from xtream.stream.kafka_broker import _kafka_uuid

    ids = [_kafka_uuid() for _ in range(5000)]   # 1 in 64 random ids starts with "-"
    assert not [i for i in ids if i.startswith("-")]
    assert all(len(i) == 22 for i in ids) and len(set(ids)) == len(ids)
