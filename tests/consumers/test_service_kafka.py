"""The service against a real broker: every document processed, every bad record dead-lettered,
snapshots published, offsets committed."""

from __future__ import annotations

import json

import pytest
from kafka_support import committed_offsets, read_topic, run_until_committed, service_settings, stream_documents

from xtream.consumers.config import Settings
from xtream.consumers.wiring import build_service

pytestmark = pytest.mark.kafka

MALFORMED_KINDS = {
    "invalid_json": lambda i: b'{"id": "bad-%d", "text": ' % i,
    "invalid_field": lambda i: json.dumps({"id": f"bad-{i}"}).encode(),               # missing text
    "wrong_type": lambda i: json.dumps({"id": f"bad-{i}", "text": 12345}).encode(),
    "empty_text": lambda i: json.dumps({"id": f"bad-{i}", "text": "   "}).encode(),
    "too_large": lambda i: json.dumps({"id": f"bad-{i}", "text": "x" * (10 * 1024 * 1024)}).encode(),
    "unknown_language": lambda i: json.dumps({"id": f"bad-{i}", "text": "hello there", "lang": "xx"}).encode(),
    "invalid_utf8": lambda i: bytes([0xFF, 0xFE, 0x80, i % 256]) * 8,
}
EXPECTED_REASON = {"wrong_type": "invalid_field"}


def small_settings(bootstrap: str, name: str, tmp_path, **model) -> Settings:
    return service_settings(
        bootstrap, name, tmp_path / "data",
        model=dict(num_topics=20, warmup_docs=400, warmup_steps=20, batch_size=64, vocab_max_size=2000,
                   train_every_docs=256, train_steps=4, vocab_refresh_every=1000) | model,
        snapshots=dict(every_docs=500, every_seconds=3600), checkpoint=dict(every_seconds=2.0, every_docs=1000),
        batch=dict(max_records=200, max_wait_ms=200))


def test_service_consumes_everything_and_dead_letters_the_malformed(kafka_bootstrap, unique_name, produce, tmp_path):
    docs = stream_documents(2000)
    bad = [(kind, make(i)) for i, (kind, make) in enumerate(list(MALFORMED_KINDS.items()) * 8)][:50]
    values = [json.dumps(d).encode() for d in docs]
    for j, (_, raw) in enumerate(bad):   # interleave the bad among the good
        values.insert(37 * j + 5, raw)
    settings = small_settings(kafka_bootstrap, unique_name, tmp_path)
    produce(kafka_bootstrap, settings.kafka.input_topic, values, partitions=3,
            keys=[str(i).encode() for i in range(len(values))])

    service = build_service(settings)
    try:
        run_until_committed(service, kafka_bootstrap, settings.kafka.input_topic, settings.kafka.group_id)
    finally:
        service.close()

    committed, ends = committed_offsets(kafka_bootstrap, settings.kafka.input_topic, settings.kafka.group_id)
    assert committed == ends and sum(ends.values()) == len(values), "every input offset committed"
    assert service.model.n_docs == len(docs)

    assignments = [json.loads(r.value) for r in read_topic(kafka_bootstrap, settings.kafka.assignments_topic, len(docs))]
    assert sorted(a["document_id"] for a in assignments) == sorted(d["id"] for d in docs), "one per valid doc"

    dlq = read_topic(kafka_bootstrap, settings.kafka.dead_letter_topic, len(bad))
    assert len(dlq) == len(bad)
    reasons = sorted(dict(r.headers)["xtream.error.reason"].decode() for r in dlq)
    assert reasons == sorted(EXPECTED_REASON.get(kind, kind) for kind, _ in bad)
    assert sorted(r.value for r in dlq) == sorted(raw for _, raw in bad), "original bytes preserved"
    assert all({"xtream.source.offset", "xtream.source.partition", "xtream.error.detail"} <= set(dict(r.headers))
               for r in dlq)

    snaps = [json.loads(r.value) for r in read_topic(kafka_bootstrap, settings.kafka.snapshots_topic)]
    assert len(snaps) >= 2
    last = snaps[-1]
    langs = {d["lang"] for d in docs}   # en + zh (EC News), or en/zh/ja when the demo stream stands in
    assert len(last["topics"]) == 20 and set(last["languages"]) == langs
    assert all(len(t["words"][lang]["words"]) == 15 for t in last["topics"] for lang in langs)
    assert all(set(t["drift"]) == langs and 0.0 <= t["drift"]["en"] <= 1.0 for t in last["topics"])
    assert any(t["drift"]["en"] > 0 for t in last["topics"]), "topics moved between snapshots"
    assert last["documents_seen"] == len(docs)
