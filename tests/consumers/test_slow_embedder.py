"""A throttled embedder (100 ms per document, so a batch of 200 would take 20 s) against a group with
max.poll.interval.ms = 12 s: batches shrink to fit, so the consumer polls well within the interval
and is never thrown out of its group, and no document is processed twice."""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest
from kafka_support import create_output_topics, read_topic, run_until_committed, service_settings, stream_documents

from xtream.consumers.wiring import build_service

pytestmark = pytest.mark.kafka

SECONDS_PER_DOCUMENT = 0.1


class Throttled:
    """The real embedder, slowed down."""

    def __init__(self, inner):
        self.inner, self.name, self.dim, self.calls = inner, inner.name, inner.dim, 0

    def encode(self, texts):
        self.calls += 1
        time.sleep(SECONDS_PER_DOCUMENT * len(texts))
        return self.inner.encode(texts)


def test_a_slow_embedder_causes_no_rebalance_and_no_duplicate(kafka_bootstrap, unique_name, produce, tmp_path):
    docs = stream_documents(400)
    settings = service_settings(
        kafka_bootstrap, unique_name, tmp_path / "data", kafka=dict(max_poll_interval_ms=12_000, session_timeout_ms=10_000),
        model=dict(num_topics=6, warmup_docs=150, warmup_steps=3, batch_size=32, train_every_docs=200, train_steps=1),
        batch=dict(max_records=200))
    produce(kafka_bootstrap, settings.kafka.input_topic, [json.dumps(d).encode() for d in docs], partitions=2)
    create_output_topics(settings)
    service = build_service(settings)
    service.intake.embedder = Throttled(service.intake.embedder)
    # A consumer is thrown out of its group when it does not poll within max.poll.interval.ms, so
    # that is what is measured: the gaps between polls once the first records are in. (The group
    # may also assign twice while the consumer first joins, metadata of a new topic settling; a
    # count of assignments cannot tell that apart from being thrown out.)
    polls: list[tuple[float, int]] = []
    poll_batch = service.source.poll_batch

    def timed_poll(max_records, timeout_ms):
        records = poll_batch(max_records, timeout_ms)
        polls.append((time.monotonic(), len(records)))
        return records

    service.source.poll_batch = timed_poll
    try:
        run_until_committed(service, kafka_bootstrap, settings.kafka.input_topic, settings.kafka.group_id, timeout=300)
    finally:
        service.close()
    assignments = Counter(json.loads(r.value)["document_id"] for r in
                          read_topic(kafka_bootstrap, settings.kafka.assignments_topic))
    first = next(i for i, (_, n) in enumerate(polls) if n)
    gaps = [b - a for (a, _), (b, _) in zip(polls[first:], polls[first + 1:])]
    print(f"\nthrottled embedder: {service.intake.embedder.calls} embedding calls for {len(docs)} documents, "
          f"longest gap between polls {max(gaps):.1f} s, {service.source.rebalances} partition assignment(s), "
          f"{sum(assignments.values())} assignments published")
    assert max(gaps) < 0.75 * settings.kafka.max_poll_interval_ms / 1000, "a loop turn came close to max.poll.interval"
    assert service.model.n_docs == len(docs)
    assert set(assignments) == {d["id"] for d in docs} and max(assignments.values()) == 1, "nothing processed twice"
