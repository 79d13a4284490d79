"""End-to-end latency of the service at about half its maximum throughput, through a real Kafka.

    python -m bench.latency [--quick] [--seconds 120] [--load 0.5] [--rate R] [--threads 1]
                            [--out bench/results/latency.json]

Steps, in one process (the pattern of ``bench.stream_ecnews``):

1. start a local Apache Kafka (``stream.kafka_broker.LocalKafkaBroker``) and the whole service
   (``consumers.wiring.build_service``, defaults: USE embedder, batches of up to 256 records or
   500 ms, background training) on a thread;
2. *warm-up and maximum*: produce ``--warm-docs`` EC News documents at once; the first 2,000
   warm the model up, and the rate at which the service drains the rest is its maximum throughput
   (embedding included);
3. *paced load*: produce documents at ``--load`` x that maximum (or ``--rate`` docs/s) for
   ``--seconds``, each record stamped by the producer (Kafka ``CreateTime``);
4. read back the assignments topic: the latency of a document is the timestamp of its
   ``Assignment`` record (set when the service published it) minus the timestamp of its input
   record, both in milliseconds of this machine's clock. p50/p90/p99/max are exact over the paced
   documents. The service's own ``xtream_document_latency_seconds`` histogram (record timestamp to
   assignment) is also read for the same window and its quantiles interpolated in its buckets.

The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench._common import (
    DATA,
    FILE_LANG,
    RESULTS,
    embedder_process_peak_mib,
    emit,
    peak_rss_mib,
    print_table,
    read_lines,
    setup_logging,
    write_json,
)

logger = logging.getLogger("bench.latency")
TOPIC = "bench.latency.documents"


def _histogram(registry, name: str) -> dict[float, float]:
    """Cumulative bucket counts of a histogram: {upper bound: count}."""
    out = {}
    for metric in registry.collect():
        for s in metric.samples:
            if s.name == f"{name}_bucket":
                out[float(s.labels["le"])] = s.value
    return dict(sorted(out.items()))


def _bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float | None:
    """Prometheus-style ``histogram_quantile`` over the increase between two bucket snapshots."""
    bounds = list(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0
    if total <= 0:
        return None
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in zip(bounds, counts):
        if count >= rank:
            if bound == float("inf"):
                return prev_bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / max(count - prev_count, 1e-12)
        prev_bound, prev_count = bound, count
    return None


def _interleaved_texts() -> list[tuple[str, str]]:
    """(text, lang) of the EC News training split, English and Chinese alternating."""
    en, zh = (read_lines(DATA / f"train_texts_{FILE_LANG[lang]}.txt") for lang in ("en", "zh"))
    out = []
    for i in range(max(len(en), len(zh))):
        out += [(en[i], "en")] if i < len(en) else []
        out += [(zh[i], "zh")] if i < len(zh) else []
    return out


def _documents(n: int, prefix: str, offset: int = 0) -> list[tuple[bytes, bytes]]:
    texts = _interleaved_texts()
    out = []
    for j in range(n):
        text, lang = texts[(offset + j) % len(texts)]
        doc = {"id": f"{prefix}-{j}", "text": text, "lang": lang}
        out.append((doc["id"].encode(), json.dumps(doc, ensure_ascii=False).encode()))
    return out


def _wait_docs(service, target: int, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while service.model.n_docs < target:
        if time.monotonic() > deadline:
            raise TimeoutError(f"service reached {service.model.n_docs} of {target} documents in {timeout:.0f} s")
        time.sleep(0.05)
    return time.perf_counter()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="3,000 warm-up documents, 20 s of paced load")
    p.add_argument("--seconds", type=float, default=None, help="paced-load duration (default 120; 20 quick)")
    p.add_argument("--warm-docs", type=int, default=None, help="burst documents (default 10000; 3000 quick)")
    p.add_argument("--load", type=float, default=0.5, help="share of the measured maximum to offer")
    p.add_argument("--rate", type=float, default=None, help="offered docs/s (overrides --load)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="default bench/results/latency[_quick].json")
    args = p.parse_args(argv)
    args.seconds = args.seconds or (20.0 if args.quick else 120.0)
    args.warm_docs = args.warm_docs or (3000 if args.quick else 10_000)
    if args.warm_docs <= 2000:
        p.error("--warm-docs must exceed the 2,000-document warm-up")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    setup_logging()
    logging.getLogger("kafka").setLevel(logging.WARNING)
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
    from kafka.admin import NewTopic

    from xtream.consumers.config import Settings
    from xtream.consumers.wiring import build_service
    from xtream.stream.kafka_broker import LocalKafkaBroker

    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="xtream-bench-latency-"))
    broker = LocalKafkaBroker.start_new(work / "kafka")
    service = thread = None
    try:
        admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
        admin.create_topics([NewTopic(TOPIC, num_partitions=3, replication_factor=1)])
        admin.close()
        base = Settings(data_dir=work / "data")
        settings = base.model_copy(update={
            "kafka": base.kafka.model_copy(update=dict(bootstrap_servers=broker.bootstrap, input_topic=TOPIC,
                                                       group_id="bench-latency")),
            "model": base.model.model_copy(update=dict(threads=args.threads)),
        })
        service = build_service(settings)
        thread = threading.Thread(target=service.run, name="xtream-service", daemon=True)
        thread.start()
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=0)

        # Phase 1: a burst; the drain rate after the warm-up is the maximum throughput.
        warm = service.settings.model.warmup_docs
        for key, value in _documents(args.warm_docs, "burst"):
            producer.send(TOPIC, key=key, value=value)
        producer.flush()
        t_warm = _wait_docs(service, warm + 256, timeout=1200)
        n_warm = service.model.n_docs
        t_end = _wait_docs(service, args.warm_docs, timeout=1200)
        max_rate = (args.warm_docs - n_warm) / max(t_end - t_warm, 1e-9)
        rate = args.rate or args.load * max_rate
        logger.info("maximum %.1f docs/s (embedding included); offering %.1f docs/s for %.0f s",
                    max_rate, rate, args.seconds)

        # Phase 2: paced load.
        n_paced = max(1, int(rate * args.seconds))
        paced = _documents(n_paced, "paced", offset=args.warm_docs)
        before = _histogram(service.metrics.registry, "xtream_document_latency_seconds")
        t0 = time.perf_counter()
        for j, (key, value) in enumerate(paced):
            delay = t0 + j / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            producer.send(TOPIC, key=key, value=value)
        producer.flush()
        offered_seconds = time.perf_counter() - t0
        _wait_docs(service, args.warm_docs + n_paced, timeout=600)
        processed_seconds = time.perf_counter() - t0
        time.sleep(1.0)                     # the assignment producer lingers 20 ms; let it flush
        after = _histogram(service.metrics.registry, "xtream_document_latency_seconds")
        producer.close()

        # Read back: input timestamps by (partition, offset), assignment timestamps by document.
        def read_all(topic: str) -> list:
            consumer = KafkaConsumer(topic, bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest",
                                     enable_auto_commit=False, group_id=None, consumer_timeout_ms=5000)
            records = list(consumer)
            consumer.close()
            return records

        inputs = {(r.partition, r.offset): r.timestamp for r in read_all(TOPIC)}
        lat, missing = [], 0
        for r in read_all(settings.kafka.assignments_topic):
            a = json.loads(r.value)
            if not a["document_id"].startswith("paced-"):
                continue
            ts = inputs.get((a["source_partition"], a["source_offset"]))
            if ts is None:
                missing += 1
                continue
            lat.append((r.timestamp - ts) / 1000.0)
        lat_arr = np.asarray(lat)
        stats = service.stats
    finally:
        if service is not None:
            service.stop()
            if thread is not None:
                thread.join(120)
            embedder_peak = embedder_process_peak_mib(service)
            service.close()
        broker.stop()
    if not len(lat_arr):
        raise RuntimeError("no assignment of a paced document was read back")
    q = lambda p: float(np.quantile(lat_arr, p))  # noqa: E731
    figures = {
        "max_docs_per_s": max_rate, "offered_docs_per_s": rate, "load": rate / max_rate,
        "achieved_docs_per_s": n_paced / processed_seconds, "offered_seconds": offered_seconds,
        "paced_docs": n_paced, "latencies_read": int(len(lat_arr)), "unmatched": missing,
        "p50_s": q(0.5), "p90_s": q(0.9), "p99_s": q(0.99), "max_s": float(lat_arr.max()), "mean_s": float(lat_arr.mean()),
        "hist_p50_s": _bucket_quantile(before, after, 0.5), "hist_p99_s": _bucket_quantile(before, after, 0.99),
        "train_slices": stats.train_slices, "snapshots": stats.snapshots, "checkpoints": stats.checkpoints,
        # This process and the embedder's (model.embedder_process), each at its own peak.
        "peak_rss_mib": peak_rss_mib() + embedder_peak, "embedder_process_peak_rss_mib": embedder_peak,
    }
    print_table(f"End-to-end latency at {figures['load']:.0%} of maximum ({args.threads} thread(s))",
                ["figure", "value"], [[k, v] for k, v in figures.items()])
    summary = {"benchmark": "latency", "quick": args.quick, "threads": args.threads, "seconds": args.seconds,
               "warm_docs": args.warm_docs, **figures, "total_seconds": round(time.perf_counter() - started, 1)}
    out = args.out or RESULTS / f"latency{'_quick' if args.quick else ''}.json"
    write_json(out, {"summary": summary, "latency_s_percentiles": {str(p): q(p / 100) for p in range(0, 101, 5)}})
    logger.info("results written to %s", out)
    emit(summary)
    return summary


if __name__ == "__main__":
    main()
