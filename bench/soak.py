"""Soak: a million documents through the running service; memory, file descriptors and threads.

    python -m bench.soak [--quick] [--docs 1000000] [--embedder hashing:512] [--sample-every 50000]
                         [--threads 1] [--out bench/results/soak.json]

What it does, all on this machine:

1. starts a local Apache Kafka broker and the service as its own process (``xtream run``, default
   model settings: K=50, replay buffer, vocabulary refresh, background XTRA training, snapshots,
   checkpoints) with an input topic of 4 partitions;
2. produces synthetic documents made from the EC News vocabulary (each one a random draw of 15-40
   words of a random EC News training document, en and zh alternating), staying at most 100k
   documents ahead of the service;
3. every ``--sample-every`` processed documents reads the ``VmRSS`` of the service process and its
   children (the embedder process, multiprocessing's resource tracker), the service's open file
   descriptors (``/proc/<pid>/fd``) and thread count (``/proc/<pid>/status``), plus its own
   ``xtream_documents_processed_total`` from ``/metrics``.

The embedder defaults to ``hashing:512`` (hashed character n-grams, no model): the multilingual USE
runs at ~300 docs/s here, so a million documents would take an hour of embedding alone; the
embedder is stateless, and what can grow over a long run (model, buffer, vocabularies, snapshots,
lineage, checkpoints, Kafka clients) is all downstream of it. Pass ``--embedder use-multilingual-v3``
to soak with the real one. Growth is reported from the first sample at or after 100k documents to
the last one. The last stdout line is one JSON object; a PNG chart goes beside ``--out``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from bench._common import DATA, FILE_LANG, RESULTS, emit, print_table, read_lines, rss_mib, setup_logging, write_json

logger = logging.getLogger("bench.soak")
ROOT = Path(__file__).resolve().parent.parent
TOPIC = "bench.soak.documents"
AHEAD = 100_000


def synthetic_documents(n: int, seed: int = 0):
    """``n`` documents, en/zh alternating, each 15-40 words drawn from one EC News training text."""
    rng = np.random.default_rng(seed)
    sources = {lang: [line.split() for line in read_lines(DATA / f"train_texts_{FILE_LANG[lang]}.txt") if line.split()]
               for lang in ("en", "zh")}
    for i in range(n):
        lang = "en" if i % 2 == 0 else "zh"
        words = sources[lang][rng.integers(len(sources[lang]))]
        picked = rng.choice(len(words), size=int(rng.integers(15, 41)))
        yield {"id": f"soak-{i}", "lang": lang, "text": " ".join(words[j] for j in picked)}


def proc_stats(pid: int) -> dict:
    """RSS of the service and its child processes (the embedder's, multiprocessing's resource
    tracker), threads and open files of the service itself."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    children = [int(c) for task in Path(f"/proc/{pid}/task").iterdir()
                for c in (task / "children").read_text().split()]
    own, theirs = int(fields["VmRSS"].split()[0]) / 1024, sum(rss_mib(c) for c in children)
    return {"rss_mib": own + theirs, "rss_mib_service": own, "rss_mib_children": theirs,
            "threads": int(fields["Threads"]), "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def processed(url: str) -> int:
    try:
        text = httpx.get(f"{url}/metrics", timeout=5).text
    except httpx.HTTPError:
        return -1
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("xtream_documents_processed_total{")))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="100,000 documents, samples every 10,000")
    ap.add_argument("--docs", type=int, default=1_000_000)
    ap.add_argument("--embedder", default="hashing:512")
    ap.add_argument("--sample-every", type=int, default=50_000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    setup_logging()
    for noisy in ("httpx", "kafka"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.quick:
        args.docs, args.sample_every = 100_000, 10_000
    out = args.out or RESULTS / ("soak_quick.json" if args.quick else "soak.json")

    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    from xtream.stream.kafka_broker import LocalKafkaBroker, free_port

    work = Path(tempfile.mkdtemp(prefix="xtream-soak-"))
    broker = LocalKafkaBroker.start_new(work / "kafka")
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    admin.create_topics([NewTopic(TOPIC, num_partitions=4, replication_factor=1)])
    admin.close()
    port = free_port()
    env = dict(os.environ, XTREAM_KAFKA__BOOTSTRAP_SERVERS=broker.bootstrap, XTREAM_KAFKA__INPUT_TOPIC=TOPIC,
               XTREAM_KAFKA__GROUP_ID="bench.soak", XTREAM_MODEL__EMBEDDER=args.embedder,
               XTREAM_MODEL__THREADS=str(args.threads), XTREAM_HTTP__PORT=str(port), HF_HUB_OFFLINE="1")
    log = open(work / "service.log", "ab")
    service = subprocess.Popen([sys.executable, "-m", "xtream.consumers.cli", "run", "--data-dir", str(work / "data")],
                               env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    produced = [0]
    done = threading.Event()

    def produce() -> None:
        import json

        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=50, batch_size=256 * 1024)
        for doc in synthetic_documents(args.docs):
            producer.send(TOPIC, json.dumps(doc, ensure_ascii=False).encode(), key=doc["id"].encode())
            produced[0] += 1
            if produced[0] % 10_000 == 0:
                producer.flush()
                while produced[0] - max(processed(url), 0) > AHEAD and not done.is_set():
                    time.sleep(1.0)
        producer.flush()
        producer.close()

    producer_thread = threading.Thread(target=produce, daemon=True)
    samples: list[dict] = []
    started = time.monotonic()
    try:
        from rich.progress import Progress

        producer_thread.start()
        next_sample = args.sample_every
        with Progress() as bar:
            task = bar.add_task("soak", total=args.docs)
            while True:
                if service.poll() is not None:
                    raise RuntimeError(f"the service exited with {service.returncode}; see {work / 'service.log'}")
                n = processed(url)
                bar.update(task, completed=max(n, 0))
                if n >= next_sample:
                    sample = {"documents": n, "seconds": round(time.monotonic() - started, 1), **proc_stats(service.pid)}
                    samples.append(sample)
                    logger.info("soak sample %s", sample)
                    next_sample += args.sample_every
                if n >= args.docs:
                    break
                time.sleep(0.5)
    finally:
        done.set()
        service.send_signal(signal.SIGTERM)
        try:
            service.wait(120)
        except subprocess.TimeoutExpired:
            service.kill()
        broker.stop()

    base = next(s for s in samples if s["documents"] >= min(100_000, args.docs // 10))
    last = samples[-1]
    rows = [[s["documents"], s["seconds"], s["rss_mib"], s["fds"], s["threads"]] for s in samples]
    print_table(f"Soak: {args.docs:,} documents, embedder {args.embedder}", ["documents", "seconds", "RSS MiB",
                                                                                  "open fds", "threads"], rows)
    result = {
        "benchmark": "soak", "documents": args.docs, "embedder": args.embedder, "threads": args.threads,
        "docs_per_second": round(last["documents"] / last["seconds"], 1),
        "rss_mib_at_base": base["rss_mib"], "base_documents": base["documents"], "rss_mib_at_end": last["rss_mib"],
        "rss_growth_ratio": round(last["rss_mib"] / base["rss_mib"] - 1.0, 4),
        "fds_at_base": base["fds"], "fds_at_end": last["fds"], "threads_at_base": base["threads"],
        "threads_at_end": last["threads"], "samples": samples,
    }
    write_json(out, result)
    _chart(samples, out.with_suffix(".png"), args)
    emit({k: v for k, v in result.items() if k != "samples"})
    return result


def _chart(samples: list[dict], path: Path, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    docs = [s["documents"] / 1000 for s in samples]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    ax[0].plot(docs, [s["rss_mib"] for s in samples], marker="o")
    ax[0].set(xlabel="documents processed (thousands)", ylabel="RSS (MiB)", title="Service memory")
    ax[0].set_ylim(bottom=0)
    ax[1].plot(docs, [s["fds"] for s in samples], marker="o", label="open fds")
    ax[1].plot(docs, [s["threads"] for s in samples], marker="s", label="threads")
    ax[1].set(xlabel="documents processed (thousands)", title="File descriptors and threads")
    ax[1].set_ylim(bottom=0)
    ax[1].legend()
    fig.suptitle(f"xtream soak, {args.docs:,} documents, embedder {args.embedder}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main(sys.argv[1:])
