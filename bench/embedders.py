"""Scale-out throughput: 1 vs 2 ``--role embedder`` processes on a 4-partition input topic.

    python -m bench.embedders [--docs 4000] [--threads 1]

Starts a local Kafka, produces the same EC News documents (or the demo stream) to a fresh topic
for each run, starts N embedder processes in one consumer group and times how long until every
input offset is committed (start-up excluded: the clock starts at the first committed offset).
Prints a table and one JSON line. On a 2-core host two embedders compete with each other, the
broker and the producer for the same cores, so the speed-up is bounded well below 2x.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _committed(bootstrap: str, topic: str, group: str) -> tuple[int, int]:
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or [])]
        ends = c.end_offsets(tps)
        return sum(c.committed(tp) or 0 for tp in tps), sum(ends.values())
    finally:
        c.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=4000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/ecnews"))
    parser.add_argument("--quick", action="store_true", help="1,000 documents")
    args = parser.parse_args()
    n = 1000 if args.quick else args.docs

    from kafka import KafkaAdminClient, KafkaProducer
    from kafka.admin import NewTopic
    from rich.console import Console
    from rich.table import Table

    from xtream.stream.kafka_broker import LocalKafkaBroker

    if args.data.is_dir():
        en = (args.data / "train_texts_en.txt").read_text(encoding="utf-8").splitlines()
        zh = (args.data / "train_texts_cn.txt").read_text(encoding="utf-8").splitlines()
        docs = [{"id": f"d{i}", "text": (en if i % 2 == 0 else zh)[i // 2], "lang": "en" if i % 2 == 0 else "zh"}
                for i in range(n)]
    else:
        demo = Path(__file__).resolve().parents[1] / "consumers" / "demo" / "news.jsonl"
        pool = [json.loads(line) for line in demo.read_text(encoding="utf-8").splitlines()]
        docs = [{**pool[i % len(pool)], "id": f"d{i}"} for i in range(n)]
    work = Path(tempfile.mkdtemp(prefix="xtream-embedders-"))
    broker = LocalKafkaBroker.start_new(work / "kafka")
    results = {}
    try:
        for workers in (1, 2):
            topic, group = f"in-{workers}", f"emb-{workers}"
            admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
            admin.create_topics([NewTopic(topic, 4, 1), NewTopic(f"embedded-{workers}", 4, 1)])
            admin.close()
            producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=20)
            for d in docs:
                producer.send(topic, key=d["id"].encode(), value=json.dumps(d, ensure_ascii=False).encode())
            producer.flush()
            producer.close()
            env = dict(os.environ, XTREAM_KAFKA__BOOTSTRAP_SERVERS=broker.bootstrap, XTREAM_KAFKA__INPUT_TOPIC=topic,
                       XTREAM_KAFKA__GROUP_ID=group, XTREAM_KAFKA__EMBEDDED_TOPIC=f"embedded-{workers}",
                       XTREAM_MODEL__THREADS=str(args.threads), XTREAM_HTTP__ENABLED="false",
                       XTREAM_BATCH__MAX_RECORDS="128")
            log = open(work / f"embedders-{workers}.log", "ab")
            procs = [subprocess.Popen([sys.executable, "-m", "xtream.consumers.cli", "run", "--role", "embedder"],
                                      env=env, stdout=log, stderr=subprocess.STDOUT) for _ in range(workers)]
            try:
                first = None
                while True:
                    done, total = _committed(broker.bootstrap, topic, group)
                    if done and first is None:
                        first = (time.perf_counter(), done)
                    if done >= total:
                        break
                    time.sleep(0.5)
                elapsed = time.perf_counter() - first[0]
                results[workers] = (total - first[1]) / max(elapsed, 1e-9)
            finally:
                for p in procs:
                    p.terminate()
                for p in procs:
                    p.wait(30)
    finally:
        broker.stop()
    figures = {"documents": n, "threads_per_embedder": args.threads, "cores": os.cpu_count(),
               "docs_per_s_1_embedder": results[1], "docs_per_s_2_embedders": results[2],
               "speedup": results[2] / results[1]}
    table = Table(title="embedder scale-out (same documents, same machine, one run)")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for k, v in figures.items():
        table.add_row(k, f"{v:.3g}" if isinstance(v, float) else str(v))
    Console().print(table)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
