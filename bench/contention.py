"""How much the embedder slows down next to XTRA training, and whether niceness or a process helps.

    python -m bench.contention [--docs 3000] [--modes alone,thread,thread_nice,process,process_nice]
        [--nice 10] [--hogs 0] [--out bench/results/contention.json]

Why it exists: inside the service the embedder ran ~20% slower than alone (``bench.stream_ecnews``),
which caps the service/embedder throughput ratio. Three things share the CPU with it there: the
training thread, the Kafka broker's JVM and kafka-python's network threads. This benchmark isolates
the first one on the same documents, one BLAS/torch thread each:

``alone``         the embedder (default multilingual USE) on ``--docs`` EC News test texts;
``thread``        the same while a thread of the same process runs XTRA gradient steps back to back
                  (paper-sized network: 5,000 words per language, two languages, batch 128) -- what
                  the service does with ``model.train_in_background``;
``thread_nice``   the training thread at niceness ``--nice`` (``model.train_nice``);
``process``       the training loop in another process instead (no shared interpreter lock);
``process_nice``  that process at niceness ``--nice``.

Each mode also reports the training steps/s it left to the trainer. ``--hogs N`` keeps N other
processes spinning on the CPU throughout (a co-located broker, another job): on a 2-core host,
``--hogs 1`` is the case where another process holds a core. The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import threading
import time
from pathlib import Path

import numpy as np

from bench._common import DATA, RESULTS, emit, pin_threads, print_table, read_lines, setup_logging, write_json

logger = logging.getLogger("bench.contention")

MODES = ("alone", "thread", "thread_nice", "process", "process_nice")
WARMUP_SECONDS = 5.0   # the trainer builds its network and settles before the embedder is timed


def _trainer(seed: int = 0):
    """A paper-sized XTRA and a batch sampler over random sparse documents."""
    import scipy.sparse as sp

    from xtream.model.training import LanguageCorpus, XTRATrainer, build_xtra, corpus_batch

    rng = np.random.default_rng(seed)
    corpora = {}
    for lang in ("en", "zh"):
        bow = sp.random(2048, 5000, density=0.006, random_state=rng, format="csr", data_rvs=np.ones)
        corpora[lang] = LanguageCorpus(bow, rng.normal(size=(2048, 512)).astype(np.float32),
                                       rng.integers(50, size=2048))
    words = {lang: rng.normal(size=(5000, 512)).astype(np.float32) for lang in corpora}
    trainer = XTRATrainer(build_xtra(corpora, 50, word_embeddings=words), seed=seed)

    def step() -> None:
        trainer.step({lang: corpus_batch(c, rng.choice(len(c), 128, replace=False)) for lang, c in corpora.items()})
    return step


def train_until(stop, nice: int, steps) -> None:
    """Gradient steps until ``stop`` is set; counts steps taken after the warm-up into ``steps``."""
    pin_threads(1)
    if nice:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + nice)
    step = _trainer()
    step()
    while not stop.is_set():
        step()
        with steps.get_lock():
            steps.value += 1


def _spin(stop) -> None:
    """Hold one CPU until ``stop`` is set (a stand-in for any other busy process on the host)."""
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def run(modes: list[str], docs: int, nice: int) -> dict[str, dict]:
    from xtream.model.embedding import DEFAULT_EMBEDDER, load_embedder

    pin_threads(1)
    half = docs // 2
    texts = read_lines(DATA / "test_texts_en.txt")[:half] + read_lines(DATA / "test_texts_cn.txt")[:docs - half]
    embedder = load_embedder(DEFAULT_EMBEDDER, threads=1)
    embedder.encode(texts[:256])

    def embed_rate() -> float:
        started = time.perf_counter()
        for i in range(0, len(texts), 256):
            embedder.encode(texts[i:i + 256])
        return len(texts) / (time.perf_counter() - started)

    out: dict[str, dict] = {}
    for mode in modes:
        if mode == "alone":
            out[mode] = {"embed_docs_per_s": embed_rate(), "train_steps_per_s": 0.0}
        else:
            level = nice if mode.endswith("_nice") else 0
            steps = mp.Value("l", 0)
            if mode.startswith("thread"):
                stop = threading.Event()
                worker = threading.Thread(target=train_until, args=(stop, level, steps), daemon=True)
            else:
                stop = mp.get_context("fork").Event()
                worker = mp.get_context("fork").Process(target=train_until, args=(stop, level, steps), daemon=True)
            worker.start()
            time.sleep(WARMUP_SECONDS)
            before, started = steps.value, time.perf_counter()
            rate = embed_rate()
            taken = (steps.value - before) / (time.perf_counter() - started)
            stop.set()
            worker.join()
            out[mode] = {"embed_docs_per_s": rate, "train_steps_per_s": taken}
        if "alone" in out:
            out[mode]["embed_vs_alone"] = out[mode]["embed_docs_per_s"] / out["alone"]["embed_docs_per_s"]
        logger.info("%s: %s", mode, {k: round(v, 3) for k, v in out[mode].items()})
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--docs", type=int, default=3000, help="EC News test texts to embed per mode (half en, half zh)")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of " + ",".join(MODES))
    p.add_argument("--nice", type=int, default=10, help="niceness of the *_nice modes")
    p.add_argument("--hogs", type=int, default=0, help="other processes spinning on the CPU throughout")
    p.add_argument("--out", type=Path, default=None, help="default bench/results/contention[_hogsN].json")
    args = p.parse_args(argv)
    args.out = args.out or RESULTS / f"contention{f'_hogs{args.hogs}' if args.hogs else ''}.json"
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if unknown := [m for m in modes if m not in MODES]:
        p.error(f"unknown modes {unknown}; choose from {MODES}")
    if modes and modes[0] != "alone" and "alone" in modes:
        modes.remove("alone")
        modes.insert(0, "alone")   # the other modes are reported relative to it
    setup_logging()
    started = time.perf_counter()
    ctx = mp.get_context("fork")
    stop_hogs = ctx.Event()
    hogs = [ctx.Process(target=_spin, args=(stop_hogs,), daemon=True) for _ in range(args.hogs)]
    for h in hogs:
        h.start()
    try:
        results = run(modes, args.docs, args.nice)
    finally:
        stop_hogs.set()
        for h in hogs:
            h.join()
    print_table(f"Embedder next to XTRA training ({args.docs} docs, 1 thread each, nice {args.nice}; "
                f"{os.cpu_count()} CPUs, {args.hogs} other busy process(es))", ["mode", "embed docs/s", "vs alone", "train steps/s"],
                [[m, r["embed_docs_per_s"], r.get("embed_vs_alone"), r["train_steps_per_s"]] for m, r in results.items()])
    summary = {"benchmark": "contention", "docs": args.docs, "nice": args.nice, "cpus": os.cpu_count(), "hogs": args.hogs,
               "modes": results, "total_seconds": round(time.perf_counter() - started, 1)}
    write_json(args.out, {"summary": summary})
    emit(summary)
    return summary


if __name__ == "__main__":
    main()
