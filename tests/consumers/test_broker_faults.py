"""The broker goes away (stopped for 35 s) and then freezes (SIGSTOP for 10 s) while the service
streams: the service never crashes, says it is not ready while the broker is gone, resumes within
10 s of the broker's return, and in the end has learned every document exactly once.

35 s is longer than kafka-python's own ceiling on the reconnection backoff (30 s): with it, the
clients' next attempt after such an outage could come half a minute after the broker is back.

It runs its own broker: stopping the session's broker would disturb the other tests.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
from kafka_support import fully_committed, read_topic, service_settings, stream_documents

from xtream.consumers.wiring import build_service
from xtream.stream.kafka_broker import LocalKafkaBroker

pytestmark = pytest.mark.kafka

RESUME_WITHIN_S = 10.0
OUTAGE_S = 35.0


def settings_for(bootstrap: str, name: str, tmp_path):
    return service_settings(
        bootstrap, name, tmp_path / "data",
        model=dict(num_topics=8, warmup_docs=200, warmup_steps=5, batch_size=32, vocab_max_size=1000,
                   train_every_docs=300, train_steps=2),
        snapshots=dict(every_docs=500), checkpoint=dict(every_seconds=1.0), batch=dict(max_records=50, max_wait_ms=200))


def send(bootstrap: str, topic: str, docs: list[dict]) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for d in docs:
        producer.send(topic, json.dumps(d).encode(), key=d["id"].encode())
    producer.flush()
    producer.close()


def watch(service, thread, seconds: float) -> dict:
    """Sample readiness every 0.25 s for ``seconds``; the service thread must stay alive throughout."""
    seen, first_not_ready, start = set(), None, time.monotonic()
    while time.monotonic() - start < seconds:
        assert thread.is_alive(), "the service crashed"
        ready = service.ready
        seen.add(ready)
        if not ready and first_not_ready is None:
            first_not_ready = time.monotonic() - start
        time.sleep(0.25)
    return {"seen": seen, "not_ready_after_s": first_not_ready}


def time_to_progress(service, thread, timeout: float) -> float | None:
    """Seconds until the service learns another document."""
    start, before = time.monotonic(), service.model.n_docs
    while time.monotonic() - start < timeout:
        assert thread.is_alive(), "the service crashed"
        if service.model.n_docs > before:
            return time.monotonic() - start
        time.sleep(0.2)
    return None


def test_broker_stop_and_stall_lose_nothing_and_readiness_follows_the_broker(tmp_path, unique_name, produce):
    broker = LocalKafkaBroker.start_new(tmp_path / "kafka")
    docs = stream_documents(3000)
    first, second, third = docs[:1400], docs[1400:2200], docs[2200:]
    settings = settings_for(broker.bootstrap, unique_name, tmp_path)
    topic = settings.kafka.input_topic
    service = thread = None
    try:
        produce(broker.bootstrap, topic, [json.dumps(d).encode() for d in first], partitions=2,
                keys=[d["id"].encode() for d in first])
        service = build_service(settings)
        thread = threading.Thread(target=service.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 180
        while not (service.ready and service.model.n_docs >= 400) and time.monotonic() < deadline:
            assert thread.is_alive(), "the service crashed"
            time.sleep(0.2)
        assert service.ready and service.model.n_docs >= 400, "the service did not get going"

        # 1. The broker stops (clean shutdown) for OUTAGE_S.
        broker.stop()
        outage = watch(service, thread, OUTAGE_S)
        broker.restart()
        send(broker.bootstrap, topic, second)
        resumed_after_stop = time_to_progress(service, thread, 60.0)

        # 2. The broker freezes (SIGSTOP) for 10 s while records are waiting.
        send(broker.bootstrap, topic, third)
        broker.pause()
        stall = watch(service, thread, 10.0)
        broker.resume()
        resumed_after_stall = time_to_progress(service, thread, 60.0)

        deadline = time.monotonic() + 240
        while not fully_committed(broker.bootstrap, topic, settings.kafka.group_id) and time.monotonic() < deadline:
            assert thread.is_alive(), "the service crashed"
            time.sleep(1.0)
        print(f"\nbroker stopped {OUTAGE_S:.0f} s: not ready after {outage['not_ready_after_s']} s, resumed "
              f"{resumed_after_stop} s after restart; stalled 10 s: not ready after {stall['not_ready_after_s']} s, "
              f"resumed {resumed_after_stall} s after SIGCONT; learned {service.model.n_docs} of {len(docs)}")
        assert fully_committed(broker.bootstrap, topic, settings.kafka.group_id), "the service did not finish the stream"
        assert service.ready, "ready again once the broker is back"
        service.stop()
        thread.join(60)

        assert False in outage["seen"], "readiness stayed true while the broker was down"
        assert False in stall["seen"], "readiness stayed true while the broker was frozen"
        assert resumed_after_stop is not None and resumed_after_stop < RESUME_WITHIN_S
        assert resumed_after_stall is not None and resumed_after_stall < RESUME_WITHIN_S
        assert service.model.n_docs == len(docs), "every document learned exactly once"
        assigned = {json.loads(r.value)["document_id"] for r in read_topic(broker.bootstrap, settings.kafka.assignments_topic)}
        assert assigned == {d["id"] for d in docs}, "every document has a published assignment"
    finally:
        if service is not None:
            service.stop()
            if thread is not None:
                thread.join(60)
            service.close()
        broker.resume()
        broker.stop()


def partition_leader(bootstrap: str, topic: str, partition: int) -> int:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        (described,) = admin.describe_topics([topic])
    finally:
        admin.close()
    (part,) = [p for p in described["partitions"] if p.get("partition_index", p.get("partition")) == partition]
    return int(part.get("leader_id", part.get("leader")))


def test_three_broker_cluster_partition_leader_killed_mid_stream(tmp_path, unique_name):
    """Replication factor 3, min.insync.replicas 2: the input partition's leader is SIGKILLed while
    the service streams and restarted later; every document is assigned and learned once."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    from xtream.stream.kafka_broker import LocalKafkaCluster

    cluster = LocalKafkaCluster.start_new(tmp_path / "kafka", size=3)
    try:
        bootstrap = cluster.bootstrap
        settings = settings_for(bootstrap, unique_name, tmp_path)
        topic = settings.kafka.input_topic
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        try:
            admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=3)])
        finally:
            admin.close()
        docs = stream_documents(3000)
        send(bootstrap, topic, docs[:1500])
        service = build_service(settings)
        thread = threading.Thread(target=service.run, daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 180
            while service.model.n_docs < 600 and time.monotonic() < deadline:
                assert thread.is_alive(), "the service crashed"
                time.sleep(0.5)
            leader = partition_leader(bootstrap, topic, 0)
            cluster.node(leader).kill()
            send(bootstrap, topic, docs[1500:])   # acks=all: the two in-sync replicas take it
            assert time_to_progress(service, thread, 120) is not None, "no progress after the leader died"
            cluster.node(leader).restart()
            deadline = time.monotonic() + 300
            while not fully_committed(bootstrap, topic, settings.kafka.group_id) and time.monotonic() < deadline:
                assert thread.is_alive(), "the service crashed"
                time.sleep(1.0)
            assert fully_committed(bootstrap, topic, settings.kafka.group_id), "the stream was not finished"
        finally:
            service.stop()
            thread.join(60)
            service.close()
        assert service.model.n_docs == len(docs), "each document learned once"
        assigned = {json.loads(r.value)["document_id"] for r in read_topic(bootstrap, settings.kafka.assignments_topic)}
        assert assigned == {d["id"] for d in docs}, "every document assigned"
        print(f"\nleader {leader} of {topic}:0 killed at {service.model.n_docs} docs; all {len(docs)} learned once")
    finally:
        cluster.stop()
