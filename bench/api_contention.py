"""Ingestion throughput with and without a client looping on ``POST /documents:assign``.

    python -m bench.api_contention [--docs 6000] [--rounds 2] [--request-docs 128] [--quick]
        [--out bench/results/api_contention.json]

The service reads EC News (English and Chinese interleaved) from a JSONL file with the default
embedder in its own process, its HTTP API on a free port. After the warm-up, one client thread
posts ``--request-docs`` (128) test documents to ``/documents:assign`` back to back, without waiting (it ignores 429 and
``Retry-After``): the worst a single misbehaving client does. Four configurations run in
alternating order over ``--rounds`` rounds, each from a fresh data directory:

``unlimited``          no rate limit, no share: assignments take the embedder whenever they ask
                       (what the API did before its admission control)
``unlimited+client``   the same with the looping client
``limited``            the default ``http`` settings (per-client rate limit, one assignment at a
                       time within ``assign_max_share`` of wall time)
``limited+client``     the same with the looping client

The figure is documents/s learned after the warm-up; the ratio ``+client / alone`` within one
setting is what the client costs ingestion. The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import threading
import time
from pathlib import Path

from bench._common import DATA, RESULTS, emit, print_table, read_lines, setup_logging, write_json

logger = logging.getLogger("bench.api_contention")

UNLIMITED = dict(rate_per_second=1e9, rate_burst=10**9, assign_max_share=1.0, assign_queue_depth=64,
                 assign_concurrency=4)
CONFIGS = ("unlimited", "unlimited+client", "limited", "limited+client")


def write_stream(path: Path, n: int) -> None:
    en, zh = read_lines(DATA / "train_texts_en.txt"), read_lines(DATA / "train_texts_cn.txt")
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            lang, texts = ("en", en) if i % 2 == 0 else ("zh", zh)
            f.write(json.dumps({"id": f"{lang}-{i}", "text": texts[i // 2], "lang": lang}, ensure_ascii=False) + "\n")


def client_loop(port: int, body: bytes, stop: threading.Event, counts: dict) -> None:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    while not stop.is_set():
        try:
            conn.request("POST", "/documents:assign", body, {"Content-Type": "application/json"})
            res = conn.getresponse()
            res.read()
            counts[res.status] = counts.get(res.status, 0) + 1
        except OSError:
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)


def run_one(config: str, stream: Path, body: bytes, warmup: int) -> dict:
    from xtream.consumers.api import ApiServer
    from xtream.consumers.config import HttpSettings, Settings
    from xtream.consumers.wiring import build_service

    with tempfile.TemporaryDirectory(prefix="xtream-api-bench-") as tmp:
        base = Settings(data_dir=Path(tmp), input_file=stream)
        http = HttpSettings(port=0, **(UNLIMITED if config.startswith("unlimited") else {}))
        settings = base.model_copy(update={
            # a short warm-up that is not niced, so every configuration is warm early on a busy host
            "model": base.model.model_copy(update=dict(num_topics=20, warmup_docs=warmup, warmup_steps=5,
                                                       train_every_docs=128, train_nice=0)),
            "http": http})
        service = build_service(settings)
        api = ApiServer(service, http=http).start()
        stop, counts, mark = threading.Event(), {}, {}

        def watch():   # note the moment the model is warm, then (maybe) start the client
            while not service.model.is_warm and not stop.is_set():
                time.sleep(0.05)
            mark.update(t=time.perf_counter(), n=service.model.n_docs)
            if config.endswith("+client"):
                client_loop(api.port, body, stop, counts)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            service.run()
            ended = time.perf_counter()
        finally:
            stop.set()
            watcher.join(60)
            api.stop()
            service.close()
    if "t" not in mark:
        raise RuntimeError(f"{config}: the model never became warm; give it more --docs")
    docs = service.model.n_docs - mark["n"]
    return {"config": config, "docs_after_warmup": docs, "seconds": ended - mark["t"],
            "docs_per_s": docs / (ended - mark["t"]), "client_answers": counts}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=6000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--request-docs", type=int, default=128, help="documents per assign request")
    parser.add_argument("--quick", action="store_true", help="1,200 documents, one round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "api_contention.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.docs, args.rounds = 1200, 1
    setup_logging()
    logging.getLogger("consumers").setLevel(logging.WARNING)
    logging.getLogger("model").setLevel(logging.WARNING)
    test_en = read_lines(DATA / "test_texts_en.txt")
    body = json.dumps({"documents": [{"text": t, "lang": "en"} for t in test_en[:args.request_docs]]}).encode()
    runs = []
    with tempfile.TemporaryDirectory(prefix="xtream-api-stream-") as tmp:
        stream = Path(tmp) / "stream.jsonl"
        write_stream(stream, args.docs)
        for r in range(args.rounds):
            order = CONFIGS if r % 2 == 0 else tuple(reversed(CONFIGS))
            for config in order:
                result = run_one(config, stream, body, args.warmup) | {"round": r}
                logger.info("%s", result)
                runs.append(result)
    median = {c: statistics.median(x["docs_per_s"] for x in runs if x["config"] == c) for c in CONFIGS}
    # Without a client the HTTP settings change nothing, so both "alone" configurations are one
    # baseline measured twice as often (less noise than either alone).
    alone = statistics.median(x["docs_per_s"] for x in runs if not x["config"].endswith("+client"))
    ratios = {"unlimited": median["unlimited+client"] / median["unlimited"],
              "limited": median["limited+client"] / median["limited"],
              "unlimited_vs_pooled_alone": median["unlimited+client"] / alone,
              "limited_vs_pooled_alone": median["limited+client"] / alone}
    print_table("ingestion documents/s after the warm-up (median over rounds)", ["config", "docs/s"],
                [[c, median[c]] for c in CONFIGS])
    print_table("ingestion with a looping assign client / alone", ["http settings", "ratio"],
                [[k, v] for k, v in ratios.items()])
    payload = {"bench": "api_contention", "docs": args.docs, "warmup": args.warmup, "rounds": args.rounds,
               "request_docs": args.request_docs, "pooled_alone_docs_per_s": alone,
               "median_docs_per_s": median, "ratio_with_client": ratios, "runs": runs}
    write_json(args.out, payload)
    emit({k: payload[k] for k in ("bench", "docs", "rounds", "median_docs_per_s", "ratio_with_client")})
    return payload


if __name__ == "__main__":
    main()
