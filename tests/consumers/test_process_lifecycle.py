"""The service as a real process: SIGKILL at any moment loses nothing and counts nothing twice;
SIGTERM finishes the batch, checkpoints, commits and exits 0 quickly."""

from __future__ import annotations

import json
import os
from collections import Counter
import random
import signal
import subprocess
import sys
import time

import pytest
from kafka_support import committed_offsets, fully_committed, stream_documents

from consumers.checkpoint import CheckpointStore

pytestmark = pytest.mark.kafka


def service_env(bootstrap: str, name: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "XTREAM_KAFKA__BOOTSTRAP_SERVERS": bootstrap, "XTREAM_KAFKA__INPUT_TOPIC": f"{name}-in",
        "XTREAM_KAFKA__GROUP_ID": f"{name}-g", "XTREAM_KAFKA__ASSIGNMENTS_TOPIC": f"{name}-assign",
        "XTREAM_KAFKA__SNAPSHOTS_TOPIC": f"{name}-snap", "XTREAM_KAFKA__DEAD_LETTER_TOPIC": f"{name}-dlq",
        "XTREAM_MODEL__NUM_TOPICS": "10", "XTREAM_MODEL__WARMUP_DOCS": "300", "XTREAM_MODEL__WARMUP_STEPS": "10",
        "XTREAM_MODEL__VOCAB_MAX_SIZE": "1000", "XTREAM_MODEL__BATCH_SIZE": "32",
        "XTREAM_MODEL__TRAIN_EVERY_DOCS": "400", "XTREAM_MODEL__TRAIN_STEPS": "2",
        "XTREAM_MODEL__VOCAB_REFRESH_EVERY": "1500",
        "XTREAM_SNAPSHOTS__EVERY_DOCS": "1000", "XTREAM_CHECKPOINT__EVERY_SECONDS": "0.5",
        "XTREAM_BATCH__MAX_RECORDS": "100", "XTREAM_BATCH__MAX_WAIT_MS": "200", "XTREAM_HTTP__PORT": "0",
    } | extra)
    return env


def start(data_dir, env, log, role: str = "all"):
    return subprocess.Popen([sys.executable, "-m", "consumers.cli", "run", "--data-dir", str(data_dir), "--role", role],
                            env=env, stdout=log, stderr=subprocess.STDOUT)


def latest_checkpoint(data_dir) -> dict | None:
    found = CheckpointStore(data_dir / "checkpoints").load_latest()
    return None if found is None else found[0] | {"state": found[1]}


def wait_until(pred, timeout, interval=0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return False


def test_sigkill_at_random_moments_loses_and_duplicates_nothing(kafka_bootstrap, unique_name, produce, tmp_path):
    docs = stream_documents(5000)
    env = service_env(kafka_bootstrap, unique_name)
    topic, group = f"{unique_name}-in", f"{unique_name}-g"
    produce(kafka_bootstrap, topic, [json.dumps(d).encode() for d in docs], partitions=2,
            keys=[d["id"].encode() for d in docs])
    data_dir = tmp_path / "data"
    rng = random.Random(7)
    log = open(tmp_path / "service.log", "ab")
    kills = 0
    for _ in range(4):
        proc = start(data_dir, env, log)
        time.sleep(rng.uniform(6.0, 14.0))   # start-up is ~5 s; then it is mid-stream
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        kills += 1
        ckpt = latest_checkpoint(data_dir)
        committed, _ = committed_offsets(kafka_bootstrap, topic, group)
        for part, off in committed.items():
            if off is not None:
                assert ckpt is not None and off <= ckpt["offsets"][f"{topic}:{part}"], \
                    "an offset was committed ahead of the checkpoint"
    assert kills >= 3

    proc = start(data_dir, env, log)
    try:
        assert wait_until(lambda: fully_committed(kafka_bootstrap, topic, group),
                          timeout=300), "the restarted service did not finish the stream"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    final = latest_checkpoint(data_dir)
    model = final["state"]["model"]
    print(f"\n{kills} SIGKILLs; final model count {model['n_docs']} for {len(docs)} documents")
    assert model["n_docs"] == len(docs), "each document counted exactly once"
    assert model["docs_by_lang"] == dict(Counter(d["lang"] for d in docs))


def test_sigterm_finishes_batch_checkpoints_commits_and_exits_zero(kafka_bootstrap, unique_name, produce, tmp_path):
    docs = stream_documents(3000)
    env = service_env(kafka_bootstrap, unique_name, XTREAM_CHECKPOINT__EVERY_SECONDS="3600",
                      XTREAM_CHECKPOINT__EVERY_DOCS="1000000")
    topic, group = f"{unique_name}-in", f"{unique_name}-g"
    produce(kafka_bootstrap, topic, [json.dumps(d).encode() for d in docs])
    data_dir = tmp_path / "data"
    with open(tmp_path / "service.log", "ab") as log:
        proc = start(data_dir, env, log)
        try:
            assert wait_until(lambda: "XTRA initialised" in (tmp_path / "service.log").read_text(errors="replace"), 120)
            sent = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(15)
            elapsed = time.monotonic() - sent
        finally:
            if proc.poll() is None:
                proc.kill()
    assert code == 0 and elapsed < 10, f"exit {code} after {elapsed:.1f}s"
    ckpt = latest_checkpoint(data_dir)
    committed, _ = committed_offsets(kafka_bootstrap, topic, group)
    assert committed[0] == ckpt["offsets"][f"{topic}:0"] > 0, "the final checkpoint's offsets were committed"
    assert ckpt["state"]["model"]["n_docs"] == committed[0], "every committed record is in the model"
