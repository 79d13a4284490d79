"""The service against topics written by another client (librdkafka, through confluent-kafka) on a
broker with Kafka's default limits: compressed batches, transactions, snapshots near the record limit.
"""

from __future__ import annotations

import json

import pytest
from kafka_support import read_topic, run_until_committed, service_settings, stream_documents

from xtream.consumers.wiring import build_service

pytestmark = pytest.mark.kafka

confluent_kafka = pytest.importorskip("confluent_kafka", reason="confluent-kafka is a dev dependency")

CODECS = ("none", "gzip", "snappy", "lz4", "zstd")
BROKER_DEFAULT_MAX_MESSAGE_BYTES = 1_048_588


def _create_topic(bootstrap: str, topic: str, partitions: int = 1, config: dict | None = None) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1,
                                            config=config or {})])
    for fut in futures.values():
        fut.result(30)


def _librdkafka_produce(bootstrap: str, topic: str, docs: list[dict], **config) -> None:
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, **config})
    for d in docs:
        producer.produce(topic, value=json.dumps(d).encode(), key=d["id"].encode())
    assert producer.flush(30) == 0


def _librdkafka_read(bootstrap: str, topic: str, expected: int, timeout: float = 30.0) -> list:
    """Records of ``topic`` as a ``read_committed`` librdkafka consumer sees them."""
    import time
    import uuid

    consumer = confluent_kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                                         "isolation.level": "read_committed"})
    consumer.subscribe([topic])
    out, deadline = [], time.monotonic() + timeout
    try:
        while len(out) < expected and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            out.append(msg)
    finally:
        consumer.close()
    return out


def _settings(bootstrap: str, name: str, tmp_path, **model):
    return service_settings(
        bootstrap, name, tmp_path / "data",
        model=dict(num_topics=8, warmup_docs=200, warmup_steps=4, batch_size=32, vocab_max_size=1000,
                   train_every_docs=200, train_steps=2, vocab_refresh_every=5000) | model,
        snapshots=dict(every_docs=200, every_seconds=3600), checkpoint=dict(every_seconds=1.0, every_docs=200),
        batch=dict(max_records=100, max_wait_ms=200))


def test_compressed_input_from_librdkafka_is_learned_and_outputs_read_back(kafka_default_bootstrap, unique_name,
                                                                          tmp_path):
    """Batches compressed with every codec Kafka has, written by librdkafka: each document is learned
    and assigned, and librdkafka reads the (compressed) outputs back."""
    bootstrap = kafka_default_bootstrap
    settings = _settings(bootstrap, unique_name, tmp_path)
    docs = stream_documents(5 * 80)
    _create_topic(bootstrap, settings.kafka.input_topic, partitions=2)
    for i, codec in enumerate(CODECS):
        _librdkafka_produce(bootstrap, settings.kafka.input_topic, docs[80 * i:80 * (i + 1)], **{"compression.type": codec})

    service = build_service(settings)
    try:
        run_until_committed(service, bootstrap, settings.kafka.input_topic, settings.kafka.group_id, timeout=180)
    finally:
        service.close()
    assert service.model.n_docs == len(docs)
    assigned = [json.loads(m.value()) for m in _librdkafka_read(bootstrap, settings.kafka.assignments_topic, len(docs))]
    assert sorted(a["document_id"] for a in assigned) == sorted(d["id"] for d in docs)


def test_aborted_transactions_are_never_learned(kafka_default_bootstrap, unique_name, tmp_path):
    """A transactional producer commits, aborts, commits: only the committed documents are learned
    and assigned (the input is read ``read_committed``)."""
    bootstrap = kafka_default_bootstrap
    settings = _settings(bootstrap, unique_name, tmp_path)
    docs = stream_documents(360)
    committed_first, aborted, committed_last = docs[:120], docs[120:240], docs[240:]
    _create_topic(bootstrap, settings.kafka.input_topic)
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "transactional.id": f"{unique_name}-tx"})
    producer.init_transactions(30)
    for batch, commit in ((committed_first, True), (aborted, False), (committed_last, True)):
        producer.begin_transaction()
        for d in batch:
            producer.produce(settings.kafka.input_topic, value=json.dumps(d).encode(), key=d["id"].encode())
        producer.flush(30)
        (producer.commit_transaction if commit else producer.abort_transaction)(30)

    service = build_service(settings)
    try:
        run_until_committed(service, bootstrap, settings.kafka.input_topic, settings.kafka.group_id, timeout=180)
    finally:
        service.close()
    expected = sorted(d["id"] for d in committed_first + committed_last)
    assert service.model.n_docs == len(expected)
    assigned = read_topic(bootstrap, settings.kafka.assignments_topic, len(expected))
    assert sorted(json.loads(r.value)["document_id"] for r in assigned) == expected


def test_snapshot_with_100_topics_fits_the_default_record_limit(kafka_default_bootstrap, unique_name, tmp_path):
    """K=100 with the 512-d default embedder: the snapshot reaches a broker with the default
    ``message.max.bytes``, and checkpoints (which wait for the outputs) keep committing."""
    bootstrap = kafka_default_bootstrap
    settings = _settings(bootstrap, unique_name, tmp_path, num_topics=100, warmup_docs=600, warmup_steps=2)
    docs = stream_documents(800)
    _create_topic(bootstrap, settings.kafka.input_topic)
    _librdkafka_produce(bootstrap, settings.kafka.input_topic, docs)

    service = build_service(settings)
    try:
        run_until_committed(service, bootstrap, settings.kafka.input_topic, settings.kafka.group_id, timeout=240)
    finally:
        service.close()
    snaps = _librdkafka_read(bootstrap, settings.kafka.snapshots_topic, 1)
    assert snaps, "a snapshot was published"
    snap = json.loads(snaps[-1].value())
    assert len(snap["topics"]) == 100
    assert len(snaps[-1].value()) <= BROKER_DEFAULT_MAX_MESSAGE_BYTES
    assert all(t["embedding"] is not None and len(t["embedding"]) == 512 for t in snap["topics"])


@pytest.mark.parametrize("codec", CODECS[1:])
def test_each_output_codec_is_read_back_by_librdkafka(kafka_default_bootstrap, unique_name, codec):
    from xtream.stream.sinks import KafkaSink, make_producer

    topic = f"{unique_name}-out"
    _create_topic(kafka_default_bootstrap, topic)
    producer = make_producer(kafka_default_bootstrap, compression=codec)
    sink = KafkaSink(producer, topic)
    values = [json.dumps({"n": i, "text": "words " * 50}).encode() for i in range(200)]
    for i, v in enumerate(values):
        sink.add(v, key=str(i).encode())
    sink.flush()
    producer.close()
    assert sorted(m.value() for m in _librdkafka_read(kafka_default_bootstrap, topic, len(values))) == sorted(values)


def test_a_record_over_the_topic_limit_is_refused_and_counted_not_retried_forever(kafka_default_bootstrap, unique_name):
    """The topic's ``max.message.bytes`` is read at start: a record over it raises ``RecordTooLarge``
    at once; one the size check cannot see (it compresses badly) is dropped at flush and reported."""
    import os

    from xtream.stream.errors import RecordTooLarge
    from xtream.stream.sinks import KafkaSink, make_producer, topic_record_limits

    topic = f"{unique_name}-small"
    _create_topic(kafka_default_bootstrap, topic, config={"max.message.bytes": "20000"})
    limit = topic_record_limits(kafka_default_bootstrap, [topic])[topic]
    assert limit == 20000
    rejected = []
    producer = make_producer(kafka_default_bootstrap, compression="none")
    sink = KafkaSink(producer, topic, max_record_bytes=limit, on_rejected=lambda t, reason: rejected.append(reason))
    with pytest.raises(RecordTooLarge):
        sink.add(b"x" * 30_000)
    sink.max_record_bytes = None   # the broker's own check: an incompressible record just over the limit
    sink.add(os.urandom(25_000))
    sink.add(b"small")
    sink.flush()   # returns: the refused record is not sent again
    sink.flush()
    producer.close()
    assert rejected == ["MessageSizeTooLargeError"]
    assert [m.value() for m in _librdkafka_read(kafka_default_bootstrap, topic, 1)] == [b"small"]


def test_exactly_once_outputs_and_offsets_commit_together(kafka_default_bootstrap, unique_name, tmp_path):
    """Exactly-once mode: a read_committed librdkafka reader sees one assignment per document, and
    the group's committed offsets are those of the last checkpoint."""
    from xtream.consumers.checkpoint import CheckpointStore

    bootstrap = kafka_default_bootstrap
    settings = _settings(bootstrap, unique_name, tmp_path)
    settings = settings.model_copy(update={"kafka": settings.kafka.model_copy(update={"delivery": "exactly_once"})})
    docs = stream_documents(600)
    _create_topic(bootstrap, settings.kafka.input_topic, partitions=2)
    _librdkafka_produce(bootstrap, settings.kafka.input_topic, docs, **{"compression.type": "lz4"})

    service = build_service(settings)
    try:
        run_until_committed(service, bootstrap, settings.kafka.input_topic, settings.kafka.group_id, timeout=180)
    finally:
        service.close()
    assigned = [json.loads(m.value()) for m in _librdkafka_read(bootstrap, settings.kafka.assignments_topic,
                                                                 len(docs) + 1, timeout=15)]
    assert sorted(a["document_id"] for a in assigned) == sorted(d["id"] for d in docs), "exactly one each"
    header, state = CheckpointStore(tmp_path / "data" / "checkpoints").load_latest()
    assert state["model"]["n_docs"] == len(docs)
    assert sum(header["offsets"].values()) >= len(docs)
