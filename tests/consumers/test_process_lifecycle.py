"""The service as a real process: SIGKILL at any moment loses nothing and counts nothing twice;
SIGTERM finishes the batch, checkpoints, commits and exits 0 quickly."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
from kafka_support import committed_offsets, fully_committed, read_topic, stream_documents

from xtream.consumers.checkpoint import CheckpointStore

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
    return subprocess.Popen([sys.executable, "-m", "xtream.consumers.cli", "run", "--data-dir", str(data_dir), "--role", role],
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


@pytest.mark.parametrize("delivery", ["at_least_once", "exactly_once"])
def test_sigkill_at_random_moments_loses_and_duplicates_nothing(kafka_bootstrap, unique_name, produce, tmp_path,
                                                               delivery):
    """Per document id: at least one assignment (exactly one for a read_committed reader in
    exactly-once mode), and the model counts each document once."""
    docs = stream_documents(5000)
    env = service_env(kafka_bootstrap, unique_name, XTREAM_KAFKA__GROUP_INSTANCE_ID=f"{unique_name}-0",
                      XTREAM_KAFKA__DELIVERY=delivery)
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

    log_path, seen = tmp_path / "service.log", (tmp_path / "service.log").stat().st_size
    proc = start(data_dir, env, log)
    try:
        assert wait_until(lambda: fully_committed(kafka_bootstrap, topic, group),
                          timeout=300), "the restarted service did not finish the stream"
        # It may have had nothing left to do: let it finish starting before asking it to stop.
        assert wait_until(lambda: b"HTTP API on" in log_path.read_bytes()[seen:], timeout=60)
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
    outputs = read_topic(kafka_bootstrap, f"{unique_name}-assign", isolation_level="read_committed")
    per_id = Counter(json.loads(r.value)["document_id"] for r in outputs)
    assert set(per_id) == {d["id"] for d in docs}, "every document has an assignment"
    repeated = sum(n > 1 for n in per_id.values())
    print(f"{delivery}: {len(outputs)} assignments visible to read_committed, {repeated} ids more than once")
    if delivery == "exactly_once":
        assert repeated == 0, "exactly one assignment per document"


def malformed(i: int) -> bytes:
    """One of several kinds of record the service must dead-letter."""
    return [b"{not json", b"[1, 2, 3]", json.dumps({"id": f"bad-{i}", "text": "   "}).encode(),
            json.dumps({"id": f"bad-{i}", "text": "hello", "lang": "xx-nonsense"}).encode(),
            b"\xff\xfe not utf-8", json.dumps({"text": "no id"}).encode()][i % 6]


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_chaos_50k_documents_20_sigkills_nothing_lost_nothing_twice(kafka_bootstrap, unique_name, produce, tmp_path):
    """50,000 valid documents with 1% malformed records interleaved, over 4 partitions; the service is
    SIGKILLed at 20 random moments (start-up included) and restarted each time."""
    rng = random.Random(50_000)
    docs = stream_documents(50_000, shared=None)    # the short demo texts: the point is the kills, not the text
    values, keys, bad_at = [], [], set()
    for doc in docs:
        if rng.random() < 0.01:
            bad_at.add(len(values))
            values.append(malformed(len(values)))
            keys.append(f"bad-{len(values)}".encode())
        values.append(json.dumps(doc).encode())
        keys.append(doc["id"].encode())
    env = service_env(kafka_bootstrap, unique_name, XTREAM_MODEL__TRAIN_EVERY_DOCS="2000",
                      XTREAM_MODEL__TRAIN_STEPS="2", XTREAM_SNAPSHOTS__EVERY_DOCS="5000",
                      XTREAM_CHECKPOINT__EVERY_SECONDS="2", XTREAM_BATCH__MAX_RECORDS="200",
                      # Static membership: each restart takes the partitions back at once, instead of
                      # waiting out the dead process's session, so the kills land mid-stream.
                      XTREAM_KAFKA__GROUP_INSTANCE_ID=f"{unique_name}-0")
    topic, group = f"{unique_name}-in", f"{unique_name}-g"
    produce(kafka_bootstrap, topic, values, partitions=4, keys=keys)
    data_dir = tmp_path / "data"
    log = open(tmp_path / "service.log", "ab")
    kills, started, learned_at_kill = 0, time.monotonic(), []
    log_path = tmp_path / "service.log"
    while kills < 20:
        seen = log_path.stat().st_size
        proc = start(data_dir, env, log)
        if rng.random() < 0.25:   # during start-up (how long it takes depends on the host)
            time.sleep(rng.uniform(0.5, 5.0))
        else:                     # mid-stream: a random moment after this process got its partitions
            assert wait_until(lambda: b"partitions assigned" in log_path.read_bytes()[seen:], timeout=120)
            time.sleep(rng.uniform(2.0, 10.0))
        if proc.poll() is not None:
            pytest.fail(f"the service exited by itself with {proc.returncode} (see service.log)")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        kills += 1
        ckpt = latest_checkpoint(data_dir)
        learned_at_kill.append(0 if ckpt is None else ckpt["state"]["model"]["n_docs"])
    proc = start(data_dir, env, log)
    try:
        assert wait_until(lambda: fully_committed(kafka_bootstrap, topic, group), timeout=900), \
            "the service did not finish the stream after the kills"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    elapsed = time.monotonic() - started

    model = latest_checkpoint(data_dir)["state"]["model"]
    assignments = read_topic(kafka_bootstrap, f"{unique_name}-assign")
    assigned = Counter(json.loads(r.value)["document_id"] for r in assignments)
    dead = read_topic(kafka_bootstrap, f"{unique_name}-dlq")
    dead_positions = Counter((dict(r.headers)["xtream.source.partition"], dict(r.headers)["xtream.source.offset"])
                             for r in dead)
    dead_values = Counter(r.value for r in dead)
    print(f"\nchaos: {kills} SIGKILLs over {elapsed:.0f}s; {len(docs)} valid + {len(bad_at)} malformed records; "
          f"model learned {model['n_docs']}; {len(assigned)} distinct documents assigned "
          f"({sum(assigned.values()) - len(assigned)} assignment re-deliveries); dead letters {len(dead_positions)} "
          f"distinct ({sum(dead_positions.values()) - len(dead_positions)} re-deliveries)")
    mid_stream = sum(b > a for a, b in zip([0] + learned_at_kill, learned_at_kill))
    print(f"documents durably learned at each kill: {learned_at_kill}")
    assert mid_stream >= 10, "at least half the kills hit a service that was making progress"
    assert model["n_docs"] == len(docs), "every valid document learned exactly once"
    assert model["docs_by_lang"] == dict(Counter(d["lang"] for d in docs))
    assert set(assigned) == {d["id"] for d in docs}, "every valid document has an assignment, and nothing else"
    assert len(dead_positions) == len(bad_at), "each malformed record dead-lettered, and nothing else"
    assert set(dead_values) == {values[i] for i in bad_at}
    assert all(dict(r.headers).get("xtream.error.reason") for r in dead), "every dead letter says why"


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


def test_restart_commits_a_checkpoint_the_group_never_committed(kafka_bootstrap, unique_name, produce, tmp_path):
    """A kill between writing a checkpoint and committing its offsets, with nothing left to read:
    the restarted service commits the checkpoint's offsets (else the group's lag never clears).
    A second consumer group over the same data directory stands for the group that missed the commit."""
    docs = stream_documents(600)
    env = service_env(kafka_bootstrap, unique_name)
    topic = f"{unique_name}-in"
    produce(kafka_bootstrap, topic, [json.dumps(d).encode() for d in docs])
    data_dir = tmp_path / "data"
    with open(tmp_path / "service.log", "ab") as log:
        proc = start(data_dir, env, log)
        try:
            assert wait_until(lambda: fully_committed(kafka_bootstrap, topic, f"{unique_name}-g"), 120)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
        assert latest_checkpoint(data_dir)["offsets"][f"{topic}:0"] == len(docs)
        late_group = f"{unique_name}-late"
        proc = start(data_dir, env | {"XTREAM_KAFKA__GROUP_ID": late_group}, log)
        try:
            assert wait_until(lambda: fully_committed(kafka_bootstrap, topic, late_group), 90), \
                "the resumed checkpoint's offsets were never committed"
        finally:
            proc.kill()
            proc.wait(10)
    assert latest_checkpoint(data_dir)["state"]["model"]["n_docs"] == len(docs), "nothing learned twice"


@pytest.mark.parametrize("state", ["warming_up", "broker_gone"])
def test_sigterm_exits_within_10_seconds_in_every_state(unique_name, produce, tmp_path, state):
    """Warm-up steps running, or the broker gone (polls failing, outputs waiting to be flushed):
    SIGTERM ends the process within 10 s."""
    from xtream.stream.kafka_broker import LocalKafkaBroker

    broker = LocalKafkaBroker.start_new(tmp_path / "kafka")
    try:
        docs = stream_documents(3000)
        env = service_env(broker.bootstrap, unique_name, XTREAM_MODEL__WARMUP_STEPS="100000")
        produce(broker.bootstrap, f"{unique_name}-in", [json.dumps(d).encode() for d in docs])
        log_path = tmp_path / "service.log"
        with open(log_path, "ab") as log:
            proc = start(tmp_path / "data", env, log)
            try:
                assert wait_until(lambda: "XTRA initialised" in log_path.read_text(errors="replace"), 120)
                if state == "broker_gone":
                    broker.kill()
                    time.sleep(5)   # polls fail, flushes wait on the gone broker
                sent = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                try:
                    code = proc.wait(30)
                except subprocess.TimeoutExpired:
                    code = None
                elapsed = time.monotonic() - sent
            finally:
                if proc.poll() is None:
                    proc.kill()
        print(f"\nSIGTERM while {state}: exit {code} after {elapsed:.1f} s")
        assert code is not None and elapsed < 10, f"exit {code} after {elapsed:.1f} s"
    finally:
        broker.stop()
