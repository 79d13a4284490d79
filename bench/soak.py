"""Soak: a million documents, hostile records, API load and kill -9 restarts through the service.

    python -m bench.soak [--quick] [--docs 1000000] [--kills 3] [--hostile-every 100]
                         [--sample-every 50000] [--embedder use-multilingual-v3] [--threads 1]
                         [--out bench/results/soak.json]

What it does, all on this machine:

1. starts a local Apache Kafka broker and the service as its own process (``xtream run``, default
   settings: the multilingual USE embedder in its own child process, K=50, replay buffer,
   vocabulary refresh, background XTRA training, snapshots, checkpoints) on an input topic of
   4 partitions;
2. produces ``--docs`` clean documents, the EC News training texts cycled (en and zh alternating,
   each with a unique id ``soak-<n>``), plus one hostile record every ``--hostile-every`` records,
   drawn from the corpus of ``tests/consumers/test_bad_input.py`` (its dead-lettered kinds, in the
   proportions of their ``count``: invisible texts, bad ids, 60,000-key metadata, far timestamps,
   malformed JSON, records of 1 and 10 MiB, ...), staying at most ``AHEAD`` records ahead of the
   service's committed offsets;
3. runs a looping API client for the whole soak (``POST /documents:assign``, ``GET /topics``,
   ``GET /snapshots?at=``), counting status codes: 2xx/4xx (429 included) are answers, 5xx failures;
4. kills the service with SIGKILL ``--kills`` times, at evenly spread shares of the stream, and
   restarts it on the same data directory, checking that the embedder child died with it;
5. every ``--sample-every`` committed input records reads the RSS of every process (service,
   embedder child, multiprocessing's resource tracker, and the broker for reference), the
   service's open files and threads, and the size of the data directory split into its state
   (checkpoints, lock) and the snapshot history (the SQLite store, which keeps every snapshot by
   design for as-of queries);
6. at the end, reads the assignments and dead-letter topics and checks *positions*, not counts:
   every clean record below the committed offsets has an assignment under its id, every hostile
   one a dead letter with the expected reason.

Progress is measured by the consumer group's committed offsets (records, hostile ones included),
which survive restarts, unlike the service's own counters. The verdict (exit status 0 only on PASS):

- RSS: for each service-side process, the peak and the last sample from the 200k mark on are at
  most 10% above the sample at that mark (the peak, because a kill resets a process's memory);
- disk: the state part stays within ``keep + 2`` checkpoints (those kept, one being written, one
  left by a kill), a checkpoint grows by at most 10% from the 200k mark on, and the snapshot
  history holds at most 10% more bytes per stored snapshot at the end than at that mark (it is
  linear in snapshots by design: the store has no retention);
- no clean record lost, no hostile record un-dead-lettered, no 5xx from the API, no exit of the
  service other than the kills.

A run that ends before the 200k mark (``--quick``: 30,000 documents, one kill) reports memory and
disk but asserts only the last item.

Results are rewritten as JSON (and a PNG chart beside it) at every sample, so a stopped run
(SIGINT/SIGTERM) keeps what it measured; its verdict then covers the records reached.
"""

from __future__ import annotations

import argparse
import faulthandler
import importlib.util
import json
import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import numpy as np

from bench._common import DATA, FILE_LANG, RESULTS, emit, print_table, read_lines, rss_mib, setup_logging, write_json

logger = logging.getLogger("bench.soak")
ROOT = Path(__file__).resolve().parent.parent
TOPIC = "bench.soak.documents"
OUTPUTS = {"assignments": "bench.soak.assignments", "dead_letters": "bench.soak.dlq"}
PARTITIONS = 4
AHEAD = 50_000
GROUP = "bench.soak"
MAX_GROWTH = 0.10
BASE_DOCS = 200_000
SNAPSHOT_STORE = "snapshots.sqlite"


# -- the plan: where kills go, which records are hostile --------------------------------------------
def kill_points(records: int, kills: int) -> list[int]:
    """Committed-record counts at which to kill: evenly spread between 30% and 70% of the stream
    (one kill: the middle), so the 200k mark and the last stretch each lie inside one process life."""
    if kills <= 0:
        return []
    if kills == 1:
        return [records // 2]
    return [int(records * (0.3 + 0.4 * j / (kills - 1))) for j in range(kills)]


def is_hostile(n: int, every: int) -> bool:
    """Record ``n`` of the stream is hostile: one in ``every``, the first after ``every // 2`` clean ones."""
    return every > 0 and n % every == every // 2


def total_records(docs: int, every: int) -> int:
    """Records needed for ``docs`` clean documents with one hostile record in ``every``."""
    n = docs
    while n - hostile_before(n, every) < docs:
        n += 1
    return n


def hostile_before(n: int, every: int) -> int:
    """How many of records ``0 .. n-1`` are hostile."""
    if every <= 0:
        return 0
    return n // every + (1 if n % every > every // 2 else 0)


def base_index(samples: list[dict], base_docs: int) -> int:
    """Index of the first sample at or past ``base_docs`` records (the last one if none is)."""
    return next((i for i, s in enumerate(samples) if s["records"] >= base_docs), len(samples) - 1)


def growth(samples: list[dict], key: str, base_docs: int) -> dict:
    """``key``'s value at the base sample, at the end and its peak from the base on, with ratios."""
    i = base_index(samples, base_docs)
    values = [s[key] for s in samples[i:] if s.get(key) is not None]
    base = samples[i].get(key)
    if not values or not base:
        return {"base": base, "end": None, "peak": None, "end_ratio": None, "peak_ratio": None}
    return {"base": base, "end": values[-1], "peak": max(values), "end_ratio": round(values[-1] / base - 1, 4),
            "peak_ratio": round(max(values) / base - 1, 4)}


# -- documents --------------------------------------------------------------------------------------
def hostile_kinds() -> list:
    """The dead-lettered kinds of the test suite's hostile corpus, each as often as its ``count``."""
    sys.path.insert(0, str(ROOT / "tests"))
    spec = importlib.util.spec_from_file_location("xtream_hostile_corpus", ROOT / "tests/consumers/test_bad_input.py")
    corpus = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = corpus   # dataclasses look their module up while the file runs
    spec.loader.exec_module(corpus)
    weighted = [kind for kind in corpus.BAD for _ in range(kind.count)]
    random.Random(7).shuffle(weighted)
    return weighted


def clean_texts() -> dict[str, list[str]]:
    return {lang: [t for t in read_lines(DATA / f"train_texts_{FILE_LANG[lang]}.txt") if t.strip()]
            for lang in ("en", "zh")}


def record(n: int, texts: dict[str, list[str]], kinds: list, every: int) -> tuple[bytes | None, bytes | None, list, str | None]:
    """Record ``n`` as (value, key, headers, expected dead-letter reason or None for a clean one)."""
    if is_hostile(n, every):
        j = hostile_before(n, every)
        kind = kinds[j % len(kinds)]
        rec = kind.make(n)
        return rec.value, rec.key if rec.key is not None else f"hostile-{n}".encode(), rec.headers, kind.reason
    lang = "en" if n % 2 == 0 else "zh"
    pool = texts[lang]
    doc = {"id": f"soak-{n}", "lang": lang, "text": pool[(n // 2) % len(pool)]}
    return json.dumps(doc, ensure_ascii=False).encode(), doc["id"].encode(), [], None


# -- processes and disk -----------------------------------------------------------------------------
def children(pid: int) -> list[int]:
    try:
        return [int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]
    except OSError:
        return []


def process_name(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "gone"
    return "resource_tracker" if "resource_tracker" in cmd else "embedder" if "spawn_main" in cmd else "child"


def process_stats(service_pid: int, broker_pid: int | None) -> dict:
    """RSS (MiB) of the service, each child by role, the broker; threads and open files of the service."""
    out = {"rss_service": rss_mib(service_pid)}
    for c in children(service_pid):
        name = process_name(c)
        out[f"rss_{name}"] = out.get(f"rss_{name}", 0.0) + rss_mib(c)
    out["rss_total"] = sum(v for k, v in out.items() if k.startswith("rss_"))
    if broker_pid:
        out["rss_broker"] = rss_mib(broker_pid)
    try:
        status = Path(f"/proc/{service_pid}/status").read_text()
        out["threads"] = int(next(line.split()[1] for line in status.splitlines() if line.startswith("Threads:")))
        out["fds"] = len(os.listdir(f"/proc/{service_pid}/fd"))
    except (OSError, StopIteration):
        out["threads"] = out["fds"] = None
    return out


def disk_stats(data: Path) -> dict:
    """Bytes of the data directory: the snapshot history, the state (the rest), the largest checkpoint,
    and the snapshots stored."""
    sizes = {}
    for p in data.rglob("*"):
        try:
            if p.is_file():
                sizes[p] = p.stat().st_size
        except OSError:
            pass   # a temp file renamed or removed meanwhile
    history = sum(v for p, v in sizes.items() if p.name.startswith(SNAPSHOT_STORE))
    checkpoints = [v for p, v in sizes.items() if p.name.startswith("ckpt-") and not p.name.endswith(".tmp")]
    return {"disk_bytes": sum(sizes.values()), "history_bytes": history, "state_bytes": sum(sizes.values()) - history,
            "largest_checkpoint_bytes": max(checkpoints, default=0), "snapshots_stored": stored_snapshots(data)}


def stored_snapshots(data: Path) -> int | None:
    db = next(iter(data.rglob(SNAPSHOT_STORE)), None)
    if db is None:
        return None
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("SELECT count(*) FROM snapshots").fetchone()[0]
    except sqlite3.Error:
        return None


# -- the looping API client -------------------------------------------------------------------------
@dataclass
class ApiClient:
    """Loops over ``/documents:assign``, ``/topics`` and ``/snapshots?at=`` until stopped, counting answers
    per endpoint and status; ``unreachable`` counts connection failures (the service down for a restart),
    ``503-warming-up`` the 503 whose detail says the model is warming up."""

    url: str
    pause: float = 0.1
    counts: Counter = field(default_factory=Counter)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        texts = clean_texts()
        calls = [
            ("assign", lambda c, i: c.post("/documents:assign", json={"documents": [
                {"text": texts["en"][i % len(texts["en"])], "lang": "en"},
                {"text": texts["zh"][i % len(texts["zh"])]}]})),
            ("topics", lambda c, i: c.get("/topics")),
            ("snapshots", lambda c, i: c.get("/snapshots", params={"at": (
                datetime.now(timezone.utc) - timedelta(seconds=60)).isoformat() if i % 2 else f"0:{i * 37}"})),
        ]
        with httpx.Client(base_url=self.url, timeout=30) as client:
            i = 0
            while not self.stop.is_set():
                name, call = calls[i % len(calls)]
                try:
                    answer = call(client, i)
                    warming = answer.status_code == 503 and "warming up" in answer.text
                    self.counts[f"{name} {'503-warming-up' if warming else answer.status_code}"] += 1
                except httpx.HTTPError:
                    self.counts[f"{name} unreachable"] += 1
                    self.stop.wait(1.0)
                i += 1
                self.stop.wait(self.pause)

    def failures(self) -> int:
        """5xx answers, except the 503 that says the model is warming up (after a start or a restart,
        until the restored model is ready: the API's readiness answer, like 429 its load answer)."""
        return sum(n for k, n in self.counts.items() if k.split()[1].startswith("5") and "warming" not in k)


# -- the producer -----------------------------------------------------------------------------------
class Producer(threading.Thread):
    """Produces records ``0 .. total-1`` (partitioned by key), at most ``AHEAD`` past what ``committed()``
    reports; remembers every record's partition and offset and each hostile record's expected reason."""

    def __init__(self, bootstrap: str, total: int, every: int, committed, kinds: list) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.total, self.every, self.committed, self.kinds = bootstrap, total, every, committed, kinds
        self.partitions = np.zeros(total, dtype=np.int8)
        self.offsets = np.full(total, -1, dtype=np.int64)
        self.reasons: dict[int, str] = {}
        self.sent = 0
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        from kafka import KafkaProducer

        texts, kinds = clean_texts(), self.kinds
        producer = KafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=50, batch_size=256 * 1024, acks="all",
                                 max_request_size=16 * 1024 * 1024)
        try:
            for n in range(self.total):
                while n - self.committed() > AHEAD and not self.stop.is_set():
                    time.sleep(0.5)
                if self.stop.is_set():
                    break
                value, key, headers, reason = record(n, texts, kinds, self.every)
                if reason is not None:
                    self.reasons[n] = reason
                producer.send(TOPIC, value=value, key=key, headers=headers).add_callback(self._delivered, n)
                self.sent = n + 1
                if n % 10_000 == 9_999:
                    producer.flush()
            producer.flush()
        except BaseException as exc:   # reported by the main loop
            self.error = exc
        finally:
            producer.close()

    def _delivered(self, n: int, metadata) -> None:
        self.partitions[n], self.offsets[n] = metadata.partition, metadata.offset


# -- the service ------------------------------------------------------------------------------------
class Service:
    """``xtream run`` as a child process on ``data``; ``kill()`` is SIGKILL, ``stop()`` SIGTERM."""

    def __init__(self, env: dict, data: Path, log: Path) -> None:
        self.env, self.data, self.log = env, data, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "xtream.consumers.cli", "run", "--data-dir", str(self.data)],
                                         env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)

    def kill(self) -> list[int]:
        """SIGKILL the service; the children still alive 10 s later (then killed here) are returned."""
        kids = children(self.proc.pid)
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        deadline = time.monotonic() + 10
        alive = kids
        while alive and time.monotonic() < deadline:
            time.sleep(0.2)
            alive = [c for c in kids if Path(f"/proc/{c}").exists() and process_name(c) != "gone"]
        for c in alive:
            os.kill(c, signal.SIGKILL)
        return alive

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def committed_by_partition(admin) -> dict[int, int]:
    """The consumer group's committed offset per input partition."""
    offsets = admin.list_group_offsets(GROUP).get(GROUP, {})
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == TOPIC and meta.offset >= 0}


def committed_total(admin) -> int:
    """Records behind the consumer group's committed offsets, over all partitions (-1 if unknown)."""
    try:
        return sum(committed_by_partition(admin).values())
    except Exception:   # kafka-python raises several unrelated types while the group rebalances
        return -1


# -- the check at the end ---------------------------------------------------------------------------
def read_outputs(bootstrap: str, topic: str, on_record) -> int:
    """Call ``on_record`` on every record of ``topic`` up to its end offsets; returns how many."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                             max_partition_fetch_bytes=32 * 1024 * 1024, fetch_max_bytes=64 * 1024 * 1024)
    try:
        parts = [TopicPartition(topic, p) for p in (consumer.partitions_for_topic(topic) or [])]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        ends = consumer.end_offsets(parts)
        n = 0
        while any(consumer.position(tp) < ends[tp] for tp in parts):
            for batch in consumer.poll(timeout_ms=1000, max_records=50_000).values():
                for r in batch:
                    on_record(r)
                    n += 1
        return n
    finally:
        consumer.close()


def verify(bootstrap: str, producer: Producer, committed: dict[int, int]) -> dict:
    """Positions, not counts: every produced record below its partition's committed offset is
    assigned under its id (clean) or dead-lettered with its expected reason (hostile)."""
    total = producer.sent
    assigned = np.zeros(total, dtype=np.int32)
    dead: dict[tuple[int, int], str] = {}

    def on_assignment(r) -> None:
        key = (r.key or b"").decode(errors="replace")
        if key.startswith("soak-") and int(key[5:]) < total:
            assigned[int(key[5:])] += 1

    def on_dead_letter(r) -> None:
        h = {k: v for k, v in r.headers}
        if h.get("xtream.source.topic") == TOPIC.encode():
            dead[(int(h["xtream.source.partition"]), int(h["xtream.source.offset"]))] = h["xtream.error.reason"].decode()

    n_assignments = read_outputs(bootstrap, OUTPUTS["assignments"], on_assignment)
    read_outputs(bootstrap, OUTPUTS["dead_letters"], on_dead_letter)
    offsets, partitions = producer.offsets[:total], producer.partitions[:total]
    limit = np.array([committed.get(int(p), 0) for p in range(PARTITIONS)])[partitions]
    covered = (offsets >= 0) & (offsets < limit)
    hostile = np.array([n in producer.reasons for n in range(total)]) if total else np.zeros(0, bool)
    clean_covered = covered & ~hostile
    lost = np.flatnonzero(clean_covered & (assigned == 0))
    lost_reasons = Counter(dead.get((int(partitions[n]), int(offsets[n])), "none") for n in lost)
    wrong = Counter()
    for n in np.flatnonzero(covered & hostile):
        got = dead.get((int(partitions[n]), int(offsets[n])), "none")
        if got != producer.reasons[int(n)]:
            wrong[f"{producer.reasons[int(n)]} -> {got}"] += 1
    return {"records_covered": int(covered.sum()), "clean_covered": int(clean_covered.sum()),
            "hostile_covered": int((covered & hostile).sum()), "assignment_records": n_assignments,
            "clean_assigned_more_than_once": int((assigned[clean_covered] > 1).sum()),
            "clean_lost": int(len(lost)), "clean_lost_examples": [f"soak-{n}" for n in lost[:10]],
            "clean_lost_dead_letter_reasons": dict(lost_reasons),
            "hostile_not_dead_lettered_as_expected": sum(wrong.values()), "hostile_mismatches": dict(wrong),
            "hostile_reasons": dict(Counter(producer.reasons[int(n)] for n in np.flatnonzero(covered & hostile)))}


def verdict(result: dict) -> dict:
    """PASS/FAIL per criterion (see the module docstring) from the samples and the check."""
    samples, checks = result["samples"], {}
    base_docs = result["base_records"]
    if samples and samples[-1]["records"] >= base_docs:
        for proc in ("rss_service", "rss_embedder", "rss_total"):
            g = growth(samples, proc, base_docs)
            if g["peak_ratio"] is not None:
                checks[f"{proc} growth <= {MAX_GROWTH:.0%}"] = max(g["end_ratio"], g["peak_ratio"]) <= MAX_GROWTH
        state_bound = (result["checkpoint_keep"] + 2) * max(s["largest_checkpoint_bytes"] for s in samples)
        checks["state bytes <= (keep + 2) checkpoints"] = max(s["state_bytes"] for s in samples) <= state_bound
        ckpt = growth(samples, "largest_checkpoint_bytes", base_docs)
        if ckpt["peak_ratio"] is not None:
            checks[f"checkpoint size growth <= {MAX_GROWTH:.0%}"] = ckpt["peak_ratio"] <= MAX_GROWTH
        per_snapshot = [s["history_bytes"] / s["snapshots_stored"] if s.get("snapshots_stored") else None
                        for s in samples]
        i = base_index(samples, base_docs)
        if per_snapshot[i] and per_snapshot[-1]:
            checks[f"history bytes per snapshot growth <= {MAX_GROWTH:.0%}"] = \
                per_snapshot[-1] <= per_snapshot[i] * (1 + MAX_GROWTH)
    check = result.get("check") or {}
    if check:
        checks["no clean record lost"] = check["clean_lost"] == 0
        checks["every hostile record dead-lettered as expected"] = check["hostile_not_dead_lettered_as_expected"] == 0
    checks["no 5xx from the API"] = result["api_5xx"] == 0
    checks["the service never exited by itself"] = not result.get("unexpected_exits")
    return checks


# -- the run ----------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="30,000 documents, one kill, samples every 1,500; "
                                                         "growth is not asserted (it needs the 200k mark)")
    ap.add_argument("--docs", type=int, default=1_000_000, help="clean documents")
    ap.add_argument("--kills", type=int, default=3)
    ap.add_argument("--hostile-every", type=int, default=100, help="one hostile record in this many (0 = none)")
    ap.add_argument("--sample-every", type=int, default=None, help="committed records between samples "
                                                                   "(default: 1/20 of the stream)")
    ap.add_argument("--embedder", default="use-multilingual-v3")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--api-pause", type=float, default=0.1, help="seconds between the API client's requests")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.docs, args.kills = 30_000, 1
    args.sample_every = args.sample_every or max(1000, args.docs // 20)
    args.out = args.out or RESULTS / ("soak_quick.json" if args.quick else "soak.json")
    return args


def service_env(args, bootstrap: str, port: int) -> dict:
    threads = str(args.threads)
    return dict(os.environ, XTREAM_KAFKA__BOOTSTRAP_SERVERS=bootstrap, XTREAM_KAFKA__INPUT_TOPIC=TOPIC,
                XTREAM_KAFKA__GROUP_ID=GROUP, XTREAM_KAFKA__ASSIGNMENTS_TOPIC=OUTPUTS["assignments"],
                XTREAM_KAFKA__DEAD_LETTER_TOPIC=OUTPUTS["dead_letters"],
                XTREAM_KAFKA__SNAPSHOTS_TOPIC="bench.soak.snapshots", XTREAM_KAFKA__LINEAGE_TOPIC="bench.soak.lineage",
                XTREAM_MODEL__EMBEDDER=args.embedder, XTREAM_MODEL__THREADS=threads, XTREAM_HTTP__PORT=str(port),
                OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads, MKL_NUM_THREADS=threads,
                HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    setup_logging()
    for noisy in ("httpx", "kafka"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)   # refused connections while the service restarts
    for sig in (signal.SIGTERM, signal.SIGINT):   # a stop keeps the partial results (SIGINT too when started with &)
        signal.signal(sig, signal.default_int_handler)
    faulthandler.register(signal.SIGUSR1, all_threads=True)      # kill -USR1: where is it?

    from kafka.admin import KafkaAdminClient, NewTopic

    from xtream.consumers.config import Settings
    from xtream.stream.kafka_broker import LocalKafkaBroker, free_port

    work = Path(tempfile.mkdtemp(prefix="xtream-soak-"))
    total = total_records(args.docs, args.hostile_every)
    kills = kill_points(total, args.kills)
    broker = LocalKafkaBroker.start_new(work / "kafka")
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    admin.create_topics([NewTopic(TOPIC, num_partitions=PARTITIONS, replication_factor=1,
                                  topic_configs={"message.timestamp.after.max.ms": str(2**63 - 1)})])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    service = Service(service_env(args, broker.bootstrap, port), work / "data", work / "service.log")
    last_committed = [0]

    def committed() -> int:
        return last_committed[0]

    producer = Producer(broker.bootstrap, total, args.hostile_every, committed, hostile_kinds())
    api = ApiClient(url, pause=args.api_pause)
    result = {"benchmark": "soak", "status": "running", "documents": args.docs, "records": total,
              "hostile_every": args.hostile_every, "embedder": args.embedder, "threads": args.threads,
              "kill_points": kills, "kills": [], "unexpected_exits": [], "base_records": BASE_DOCS,
              "checkpoint_keep": Settings().checkpoint.keep, "work_dir": str(work),
              "host": f"{os.cpu_count()} cores, shared with other engineers' jobs", "samples": [], "api": {},
              "api_5xx": 0, "check": None}
    started = time.monotonic()
    logger.info("soak: %d records (%d clean), kills at %s, work dir %s", total, args.docs, kills, work)
    try:
        from rich.progress import Progress

        service.start()
        producer.start()
        threading.Thread(target=api.run, daemon=True).start()
        next_sample, pending_kills = args.sample_every, list(kills)
        with Progress() as bar:
            task = bar.add_task("soak (committed records)", total=total)
            while True:
                if producer.error is not None:
                    raise RuntimeError(f"the producer failed: {producer.error!r}")
                if service.proc.poll() is not None:
                    result["unexpected_exits"].append({"records": last_committed[0], "code": service.proc.returncode})
                    logger.error("the service exited with %s; restarting it", service.proc.returncode)
                    service.start()
                n = committed_total(admin)
                last_committed[0] = max(last_committed[0], n)
                n = last_committed[0]
                bar.update(task, completed=n)
                if n >= next_sample or n >= total:
                    sample = {"records": n, "seconds": round(time.monotonic() - started, 1),
                              **process_stats(service.proc.pid, broker._proc.pid if broker._proc else None),
                              **disk_stats(service.data)}
                    result["samples"].append(sample)
                    logger.info("sample %s", {k: round(v, 1) if isinstance(v, float) else v for k, v in sample.items()})
                    next_sample = (n // args.sample_every + 1) * args.sample_every
                    save(result, api, args)
                if pending_kills and n >= pending_kills[0]:
                    pending_kills.pop(0)
                    orphans = service.kill()
                    t0 = time.monotonic()
                    service.start()
                    result["kills"].append({"records": n, "seconds": round(t0 - started, 1), "orphans": orphans})
                    logger.info("kill -9 at %d committed records (orphaned children: %s); restarted", n, orphans)
                if n >= total:
                    break
                time.sleep(1.0)
        result["status"] = "complete"
    except KeyboardInterrupt:
        result["status"] = "stopped"
        logger.warning("stopped at %d committed records; checking what was reached", last_committed[0])
    finally:
        producer.stop.set()
        api.stop.set()
        result["service_exit_on_sigterm"] = service.stop()
        result["seconds"] = round(time.monotonic() - started, 1)
        try:
            result["check"] = verify(broker.bootstrap, producer, committed_by_partition(admin))
        finally:
            admin.close()
            broker.stop()
    save(result, api, args)
    report(result)
    return result


def save(result: dict, api: ApiClient, args) -> None:
    """Rewrite the JSON (with the verdict so far) and the chart."""
    result["api"] = dict(sorted(api.counts.items()))
    result["api_5xx"] = api.failures()
    samples = result["samples"]
    if samples:
        last = samples[-1]
        result["records_per_second"] = round(last["records"] / max(last["seconds"], 1e-9), 1)
        result["growth"] = {k: growth(samples, k, result["base_records"])
                            for k in ("rss_service", "rss_embedder", "rss_total", "rss_broker", "state_bytes",
                                      "largest_checkpoint_bytes", "history_bytes")}
    result["checks"] = verdict(result)
    result["pass"] = all(result["checks"].values())
    write_json(args.out, result)
    if samples:
        chart(result, args.out.with_suffix(".png"))


def report(result: dict) -> None:
    rows = [[s["records"], s["seconds"], s["rss_service"], s.get("rss_embedder"), s.get("rss_resource_tracker"),
             s.get("rss_broker"), round(s["state_bytes"] / 2**20, 1), round(s["history_bytes"] / 2**20, 1),
             s.get("snapshots_stored"), s["fds"], s["threads"]] for s in result["samples"]]
    print_table(f"Soak: {result['records']:,} records, embedder {result['embedder']}, kills at {result['kill_points']}",
                ["records", "seconds", "service MiB", "embedder MiB", "tracker MiB", "broker MiB", "state MiB",
                 "history MiB", "snapshots", "fds", "threads"], rows)
    for name, ok in result["checks"].items():
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
    if not result["samples"] or result["samples"][-1]["records"] < result["base_records"]:
        print(f"(memory and disk growth not asserted: the run ended before the {result['base_records']:,} mark)")
    print(f"{'PASS' if result['pass'] else 'FAIL'}: soak {result['status']} at "
          f"{result['samples'][-1]['records'] if result['samples'] else 0:,} committed records", flush=True)
    emit({k: v for k, v in result.items() if k != "samples"})


def markdown(result: dict) -> list[str]:
    """The RESULTS.md section: what ran, the verdict, RSS and disk per sample, the chart."""
    g, check, api = result.get("growth", {}), result.get("check") or {}, result.get("api", {})
    mib = lambda b: round(b / 2**20, 1)   # noqa: E731
    rows = [[s["records"], s["seconds"], sum(k["seconds"] < s["seconds"] for k in result["kills"]), s["rss_service"],
             s.get("rss_embedder"), s.get("rss_resource_tracker"), s.get("rss_broker"), mib(s["state_bytes"]),
             mib(s["largest_checkpoint_bytes"]), mib(s["history_bytes"]), s.get("snapshots_stored"), s["fds"],
             s["threads"]] for s in result["samples"]]
    kills = ", ".join(f"{k['records']:,}" for k in result["kills"]) or "none"
    answers = Counter()
    for key, n in api.items():
        endpoint, status = key.split()
        answers[f"{endpoint} {status}"] += n
    lines = [
        "## Soak: memory and disk over a long stream with faults (`bench.soak`)", "",
        f"{result['documents']:,} clean EC News documents (en/zh, unique ids) plus one hostile record in "
        f"{result['hostile_every']} from the test suite's dead-letter corpus, {result['records']:,} records in all, "
        f"through the service process with the `{result['embedder']}` embedder in its own process (default settings, "
        f"{result['threads']} thread), a looping API client, and kill -9 of the service at {kills} committed records, "
        f"each followed by a restart on the same data directory. Status: **{result['status']}** at "
        f"{result['samples'][-1]['records'] if result['samples'] else 0:,} committed records after "
        f"{result.get('seconds', 0):,.0f} s ({result.get('records_per_second', 0):,.0f} records/s, "
        f"kills and restarts included); host: {result['host']}.", "",
        f"**{'PASS' if result['pass'] else 'FAIL'}**: " + "; ".join(
            f"{name} {'ok' if ok else 'FAILED'}" for name, ok in result["checks"].items()) + ".", ""]
    if g:
        lines += [f"RSS from the sample at {result['base_records']:,} records on (base -> end, peak): " + "; ".join(
            f"{k.removeprefix('rss_')} {v['base']:,.0f} -> {v['end']:,.0f} MiB ({v['end_ratio']:+.1%}), peak "
            f"{v['peak_ratio']:+.1%}" for k, v in g.items() if k.startswith("rss_") and v["end"] is not None) + ".", ""]
    if check:
        lines += [f"Check by position: {check['clean_covered']:,} clean records below the committed offsets, "
                  f"{check['clean_lost']:,} without an assignment ({check['clean_assigned_more_than_once']:,} assigned "
                  f"more than once, replays after the kills); {check['hostile_covered']:,} hostile records, "
                  f"{check['hostile_not_dead_lettered_as_expected']:,} not dead-lettered with their expected reason "
                  f"(reasons: {', '.join(f'{k} {v}' for k, v in sorted(check['hostile_reasons'].items()))}).", ""]
    lines += [f"API answers: {', '.join(f'{k}: {v:,}' for k, v in sorted(answers.items()))} "
              f"({result['api_5xx']} 5xx; `unreachable` = the service down between a kill and its restart).", "",
              "| records | seconds | kills so far | service MiB | embedder MiB | tracker MiB | broker MiB | state MiB "
              "| checkpoint MiB | history MiB | snapshots | fds | threads |", "|---" + "|---:" * 12 + "|"]
    lines += ["| " + " | ".join("-" if v is None else f"{v:,.0f}" if isinstance(v, float) else f"{v:,}"
                                for v in row) + " |" for row in rows]
    return lines + ["", "![soak](results/soak.png)", ""]


def chart(result: dict, path: Path) -> None:
    """RSS per process against committed records, kills marked; data-directory bytes on a second axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = result["samples"]
    x = [s["records"] / 1000 for s in samples]
    fig, ax = plt.subplots(figsize=(9, 4.2))
    for key, label in (("rss_service", "service"), ("rss_embedder", "embedder process"),
                       ("rss_resource_tracker", "resource tracker"), ("rss_broker", "Kafka broker (reference)")):
        ys = [s.get(key) for s in samples]
        if any(y is not None for y in ys):
            ax.plot(x, ys, marker=".", label=label, linestyle="--" if key == "rss_broker" else "-")
    for k in result["kills"]:
        ax.axvline(k["records"] / 1000, color="red", alpha=0.5, linestyle=":")
    ax.set(xlabel="committed input records (thousands)", ylabel="RSS (MiB)", ylim=(0, None))
    disk = ax.twinx()
    disk.plot(x, [s["state_bytes"] / 2**20 for s in samples], color="grey", label="data dir: state")
    disk.plot(x, [s["history_bytes"] / 2**20 for s in samples], color="black", label="data dir: snapshot history")
    disk.set(ylabel="data directory (MiB)", ylim=(0, None))
    lines = ax.get_legend_handles_labels()
    more = disk.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="upper left")
    ax.set_title(f"xtream soak: {result['records']:,} records, {result['embedder']}, kill -9 at red lines", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(0 if main(sys.argv[1:])["pass"] else 1)
