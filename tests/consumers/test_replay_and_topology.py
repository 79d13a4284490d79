"""Replay from a past time, and the scale-out topology (embedders + one trainer) on a real broker."""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from datetime import datetime, timezone

import pytest
from kafka_support import committed_offsets, fully_committed, read_topic, stream_documents
from test_process_lifecycle import latest_checkpoint, service_env, start, wait_until

from xtream.consumers.config import Settings
from xtream.consumers.wiring import build_service, replay_settings

pytestmark = pytest.mark.kafka


def test_replay_from_a_timestamp_processes_exactly_the_later_documents(kafka_bootstrap, unique_name, produce, tmp_path):
    docs = stream_documents(10_000)
    t0 = 1_760_000_000_000
    stamps = [t0 + i * 1000 for i in range(len(docs))]
    topic = f"{unique_name}-in"
    produce(kafka_bootstrap, topic, [json.dumps(d).encode() for d in docs], partitions=2,
            keys=[d["id"].encode() for d in docs], timestamps=stamps)
    cut = 7_000
    since = datetime.fromtimestamp(stamps[cut] / 1000, timezone.utc).isoformat()

    base = Settings(data_dir=tmp_path / "data")
    settings = base.model_copy(update={
        "kafka": base.kafka.model_copy(update=dict(bootstrap_servers=kafka_bootstrap, input_topic=topic,
                                                   group_id=f"{unique_name}-live", assignments_topic=f"{unique_name}-a",
                                                   snapshots_topic=f"{unique_name}-s", lineage_topic=f"{unique_name}-l",
                                                   dead_letter_topic=f"{unique_name}-d")),
        "model": base.model.model_copy(update=dict(num_topics=10, warmup_docs=500, warmup_steps=5, batch_size=32,
                                                   vocab_max_size=1000, train_every_docs=1000, train_steps=2)),
        "batch": base.batch.model_copy(update=dict(max_records=500)),
    })
    replay = replay_settings(settings, "since-7000")
    service = build_service(replay, replay=(since, None))
    try:
        assert service.source.total == len(docs) - cut
        service.run()
    finally:
        service.close()

    assert service.model.n_docs == len(docs) - cut
    out = read_topic(kafka_bootstrap, replay.kafka.assignments_topic, expected=len(docs) - cut)
    assert sorted(json.loads(r.value)["document_id"] for r in out) == sorted(d["id"] for d in docs[cut:])
    live_committed, _ = committed_offsets(kafka_bootstrap, topic, f"{unique_name}-live")
    assert all(v is None for v in live_committed.values()), "the live group was not touched"
    assert replay.kafka.group_id != settings.kafka.group_id and replay.data_dir != settings.data_dir


def test_two_embedders_one_trainer_survive_an_embedder_kill_exactly_once(kafka_bootstrap, unique_name, produce, tmp_path):
    docs = stream_documents(4000)
    env = service_env(kafka_bootstrap, unique_name, XTREAM_KAFKA__EMBEDDED_TOPIC=f"{unique_name}-emb",
                      XTREAM_KAFKA__SESSION_TIMEOUT_MS="10000", XTREAM_BATCH__MAX_RECORDS="50")
    topic, group = f"{unique_name}-in", f"{unique_name}-g"
    produce(kafka_bootstrap, f"{unique_name}-emb", [], partitions=4)
    produce(kafka_bootstrap, topic, [json.dumps(d).encode() for d in docs], partitions=4,
            keys=[d["id"].encode() for d in docs])
    log = open(tmp_path / "procs.log", "ab")
    data = tmp_path / "trainer"
    procs = {name: start(tmp_path / name, env, log, role=role)
             for name, role in (("e1", "embedder"), ("e2", "embedder"), ("trainer", "trainer"))}
    procs["trainer"] = procs.pop("trainer")
    try:
        # Kill one embedder once the stream is flowing through both.
        assert wait_until(lambda: sum(v or 0 for v in committed_offsets(kafka_bootstrap, topic, group)[0].values()) > 800, 120)
        procs["e1"].send_signal(signal.SIGKILL)
        procs["e1"].wait(10)
        done = lambda: fully_committed(kafka_bootstrap, topic, group)  # noqa: E731
        assert wait_until(done, 240), "the surviving embedder did not take over the partitions"
        emb_done = lambda: fully_committed(kafka_bootstrap, f"{unique_name}-emb", f"{group}.trainer")
        if not wait_until(emb_done, 240):
            procs["trainer"].send_signal(signal.SIGUSR1)   # stack dump into procs.log, for diagnosis
            time.sleep(2)
            emb_committed, emb_end = committed_offsets(kafka_bootstrap, f"{unique_name}-emb", f"{group}.trainer")
            raise AssertionError(f"the trainer did not drain the embedded topic (stacks in procs.log): "
                                 f"committed {emb_committed} of {emb_end}")
        for name in ("e2", "trainer"):
            procs[name].send_signal(signal.SIGTERM)
        assert procs["trainer"].wait(30) == 0 and procs["e2"].wait(30) == 0
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    embedded = read_topic(kafka_bootstrap, f"{unique_name}-emb")
    final = latest_checkpoint(data)["state"]
    print(f"\nembedded records {len(embedded)} for {len(docs)} documents; trainer learned {final['model']['n_docs']}")
    assert len(embedded) >= len(docs), "every document was embedded (some perhaps twice)"
    assert final["model"]["n_docs"] == len(docs), "each document learned exactly once"
    assert final["model"]["docs_by_lang"] == dict(Counter(d["lang"] for d in docs))
