"""Cost per document after the embedder: xtream against BERTopic online, river and its own k-means.

    python -m bench.cost [--quick] [--docs N] [--threads 1] [--repeats 3] [--river-docs 5000]
                         [--out bench/results/cost.json]

Every contender reads the same EC News stream (English and Chinese interleaved, 77,480 documents)
with the same cached multilingual-USE embeddings, so embedding is left out on purpose and the
figures compare what each system does with a vector and its tokens:

``xtream``            ``OnlineTopicModel.learn_many`` + ``predict_many`` + ``observe_topics`` per
                      service batch (256), plus ``train(10)`` every 512 documents once warm, and the
                      warm-up initialisation (200 XTRA steps): the service's defaults (a stream
                      shorter than four warm-ups, ``--quick``, warms up within its first quarter).
``xtream_no_train``   the same with no gradient step at all (``warmup_steps=0``, no periodic
                      training): clustering, vocabularies, buffer and theta inference only.
``tokenizer``         ``model.text.Tokenizer.tokenize_many`` per batch (the service does it in the
                      embed stage; it is reported apart and folded into ``xtream+tok``).
``bertopic_b256``     ``BERTopic.partial_fit`` with the online recipe of its documentation
``bertopic_b1000``    (IncrementalPCA(5) + sklearn MiniBatchKMeans(50) + OnlineCountVectorizer(
                      decay=.01)), ``language="multilingual"``, float64 embeddings, in batches of
                      256 (the service's) and 1,000 (its documentation's example). The documents
                      it gets are xtream's tokens joined by spaces and split back on whitespace.
``river_kmeans``      ``river.cluster.KMeans(n_clusters=50)``: ``learn_one`` + ``predict_one`` per
                      document on dict features (the dict conversion is timed apart), on the first
                      ``--river-docs`` documents because it is slow.
``kmeans_b256``       ``model.clustering.MiniBatchKMeans`` alone (K=50, 512-d, the service's decay
``kmeans_b4096``      and novelty settings): ``learn_many`` + ``predict_many``, batches of 256 and
                      4,096, several passes over the stream.

Each contender runs in its own child process, ``--repeats`` times in alternating order (the host is
shared, so its load drifts); the table shows the median. ``docs/s`` is wall-clock throughput,
``cpu us/doc`` the process's CPU time per document (less sensitive to other jobs on the host), and
``mem MiB`` the growth of the peak resident set over what the child held after loading the data
(``VmHWM`` is reset with ``/proc/self/clear_refs`` before the contender starts). Torch, BLAS, OpenMP
and numba are pinned to ``--threads`` threads in every child. The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from bench._common import (
    RESULTS,
    STREAM_WARMUP_SHARE,
    VocabularyWordEmbedder,
    cpu_seconds,
    emit,
    load_stream,
    pin_threads,
    print_table,
    rss_mib,
    service_defaults,
    setup_logging,
    warmup_within,
    write_json,
)

logger = logging.getLogger("bench.cost")

CONTENDERS = ("xtream", "xtream_no_train", "tokenizer", "bertopic_b256", "bertopic_b1000", "river_kmeans",
              "kmeans_b256", "kmeans_b4096")
TARGETS = {"xtream_over_bertopic": 3.0, "kmeans_docs_per_s": 200_000.0}


# -- measurement inside a child ----------------------------------------------------------------------
def _reset_peak() -> float:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0) and return that RSS in MiB."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return rss_mib()


def _warm_blas() -> None:
    """First GEMMs allocate BLAS work buffers (tens of MiB, once per process); pay them before the mark."""
    import torch

    for dtype in (np.float32, np.float64):
        np.ones((256, 512), dtype) @ np.ones((512, 64), dtype)
    torch.ones(256, 512) @ torch.ones(512, 64)


def _hwm_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class _Clock:
    """Wall and CPU time of a block, plus named sub-stages."""

    def __init__(self) -> None:
        self.stages: dict[str, float] = {}

    def __enter__(self) -> "_Clock":
        self.wall, self.cpu = time.perf_counter(), cpu_seconds()
        return self

    def __exit__(self, *exc) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, cpu_seconds() - self.cpu

    def add(self, stage: str, seconds: float) -> None:
        self.stages[stage] = self.stages.get(stage, 0.0) + seconds


def _tokens(stream) -> list[list[str]]:
    from xtream.model.text import Tokenizer

    return Tokenizer().tokenize_many(stream.texts, stream.langs)


def run_xtream(stream, tokens: list[list[str]], train: bool) -> tuple[_Clock, int, dict]:
    from xtream.model.online import OnlineTopicModel

    d = service_defaults()
    cfg = d["online"] if train else replace(d["online"], warmup_steps=0)
    cfg = warmup_within(cfg, len(tokens), STREAM_WARMUP_SHARE)
    batch, every, steps = d["batch"], d["train_every_docs"], d["train_steps"]
    emb, langs = stream.embeddings, stream.langs
    model = OnlineTopicModel(cfg, emb.shape[1], embed_words=VocabularyWordEmbedder())
    since = 0
    perf = time.perf_counter
    with _Clock() as clock:
        for i in range(0, len(tokens), batch):
            tok, x, lg = tokens[i:i + batch], emb[i:i + batch], langs[i:i + batch]
            t0 = perf()
            warm = model.is_initialised
            model.learn_many(tok, x, lg)
            t1 = perf()
            _, theta = model.predict_many(tok, x, lg)
            model.observe_topics(theta, lg)
            t2 = perf()
            clock.add("init" if model.is_initialised and not warm else "learn", t1 - t0)
            clock.add("predict", t2 - t1)
            since += len(tok)
            if train and model.is_initialised and since >= every:
                since = 0
                model.train(steps)
                clock.add("train", perf() - t2)
    extra = {"train_steps": model.trainer.steps if model.trainer else 0, "batch": batch,
             "vocab": {lang: len(v) for lang, v in model.vocabs.items()}}
    return clock, len(tokens), extra


def run_tokenizer(stream) -> tuple[_Clock, int, dict]:
    from xtream.model.text import Tokenizer

    tok, batch = Tokenizer(), service_defaults()["batch"]
    with _Clock() as clock:
        for i in range(0, len(stream), batch):
            tok.tokenize_many(stream.texts[i:i + batch], stream.langs[i:i + batch])
    return clock, len(stream), {"batch": batch}


def make_bertopic(seed: int = 0):
    """BERTopic's documented online recipe, with a whitespace analyser for pre-tokenised text."""
    from bertopic import BERTopic
    from bertopic.vectorizers import OnlineCountVectorizer
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.decomposition import IncrementalPCA

    return BERTopic(umap_model=IncrementalPCA(n_components=5),
                    hdbscan_model=MiniBatchKMeans(n_clusters=50, random_state=seed),
                    vectorizer_model=OnlineCountVectorizer(decay=0.01, token_pattern=r"(?u)\S+", lowercase=False),
                    language="multilingual")


def run_bertopic(docs: list[str], emb: np.ndarray, batch: int) -> tuple[_Clock, int, dict]:
    import bertopic

    model = make_bertopic()
    with _Clock() as clock:
        for i in range(0, len(docs), batch):
            model.partial_fit(docs[i:i + batch], embeddings=emb[i:i + batch])
    return clock, len(docs), {"batch": batch, "topics": len(model.topic_sizes_), "version": bertopic.__version__,
                              "vocab": len(model.vectorizer_model.get_feature_names_out())}


def run_river(xs: list[dict], convert_seconds: float) -> tuple[_Clock, int, dict]:
    import river
    from river import cluster

    km = cluster.KMeans(n_clusters=50, seed=0)
    with _Clock() as clock:
        for x in xs:
            km.learn_one(x)
            km.predict_one(x)
    return clock, len(xs), {"dict_conversion_docs_per_s": len(xs) / max(convert_seconds, 1e-9),
                            "version": river.__version__}


def run_kmeans(emb: np.ndarray, batch: int, passes: int) -> tuple[_Clock, int, dict]:
    from xtream.model.clustering import MiniBatchKMeans

    cfg = service_defaults()["online"]
    km = MiniBatchKMeans(cfg.num_topics, decay=cfg.kmeans_decay, seed=cfg.seed,
                         novelty_quantile=cfg.novelty_quantile, min_novel=cfg.min_novel,
                         novelty_margin=cfg.novelty_margin)
    with _Clock() as clock:
        for _ in range(passes):
            for i in range(0, len(emb), batch):
                x = emb[i:i + batch]
                km.learn_many(x)
                km.predict_many(x)
    return clock, passes * len(emb), {"batch": batch, "passes": passes, "K": cfg.num_topics, "dim": emb.shape[1]}


def worker(name: str, docs: int | None, river_docs: int, threads: int) -> dict:
    """One contender in this process: inputs are prepared first (tokens, strings, float64 arrays,
    dicts), then the peak-RSS mark is reset, so ``mem_mib`` is the contender's own state."""
    pin_threads(threads)
    stream = load_stream().take(docs)
    service_defaults()          # imports consumers.*; like every import below, before the memory mark
    import xtream.model.clustering  # noqa: F401
    import xtream.model.online  # noqa: F401
    import xtream.model.text  # noqa: F401
    if name in ("xtream", "xtream_no_train"):
        tokens = _tokens(stream)
        run = lambda: run_xtream(stream, tokens, train=name == "xtream")  # noqa: E731
    elif name == "tokenizer":
        run = lambda: run_tokenizer(stream)  # noqa: E731
    elif name.startswith("bertopic_b"):
        import bertopic  # noqa: F401  (import time and its import-time work stay out of the figures)

        docs_ = [" ".join(t) for t in _tokens(stream)]
        emb64 = stream.embeddings.astype(np.float64)
        run = lambda: run_bertopic(docs_, emb64, int(name.removeprefix("bertopic_b")))  # noqa: E731
    elif name == "river_kmeans":
        import river.cluster  # noqa: F401

        started = time.perf_counter()
        xs = [dict(enumerate(row)) for row in stream.embeddings[:river_docs].tolist()]
        convert = time.perf_counter() - started
        run = lambda: run_river(xs, convert)  # noqa: E731
    elif name.startswith("kmeans_b"):
        passes = 4
        run = lambda: run_kmeans(stream.embeddings, int(name.removeprefix("kmeans_b")), passes)  # noqa: E731
    else:
        raise ValueError(f"unknown contender {name!r}; choose from {CONTENDERS}")
    _warm_blas()
    base = _reset_peak()
    clock, n, extra = run()
    return {"name": name, "docs": n, "seconds": clock.wall, "cpu_seconds": clock.cpu,
            "docs_per_s": n / clock.wall, "cpu_us_per_doc": 1e6 * clock.cpu / n,
            "mem_mib": _hwm_mib() - base, "rss_after_load_mib": base,
            "stages": {k: round(v, 3) for k, v in clock.stages.items()}, **extra}


# -- the parent: rounds of children, summary, table ---------------------------------------------------
def _child(name: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, "-m", "bench.cost", "--worker", name, "--threads", str(args.threads),
           "--river-docs", str(args.river_docs)] + (["--docs", str(args.docs)] if args.docs else [])
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    logger.info("%-16s %9.0f docs/s  %8.1f cpu us/doc  %7.1f MiB  (%.0f s with start-up)", name,
                result["docs_per_s"], result["cpu_us_per_doc"], result["mem_mib"], time.perf_counter() - started)
    return result


def summarise(runs: dict[str, list[dict]]) -> dict[str, dict]:
    out = {}
    for name, rs in runs.items():
        med = lambda key: statistics.median(r[key] for r in rs)  # noqa: E731
        first = rs[0]
        out[name] = {"docs": first["docs"], "docs_per_s": med("docs_per_s"), "cpu_us_per_doc": med("cpu_us_per_doc"),
                     "mem_mib": max(r["mem_mib"] for r in rs), "seconds": med("seconds"),
                     "docs_per_s_runs": [round(r["docs_per_s"], 1) for r in rs],
                     **{k: v for k, v in first.items() if k not in ("name", "docs", "seconds", "cpu_seconds",
                                                                    "docs_per_s", "cpu_us_per_doc", "mem_mib")}}
    if "xtream" in out and "tokenizer" in out:   # the service tokenises in its embed stage
        for base in ("xtream", "xtream_no_train"):
            if base in out:
                rate = 1.0 / (1.0 / out[base]["docs_per_s"] + 1.0 / out["tokenizer"]["docs_per_s"])
                out[f"{base}+tok"] = {"docs": out[base]["docs"], "docs_per_s": rate,
                                      "cpu_us_per_doc": out[base]["cpu_us_per_doc"] + out["tokenizer"]["cpu_us_per_doc"],
                                      "mem_mib": None, "derived": f"{base} and tokenizer in series"}
    return out


def ratios(s: dict[str, dict]) -> dict[str, float]:
    r = {}
    for x in ("xtream", "xtream_no_train", "xtream+tok"):
        for b in ("bertopic_b256", "bertopic_b1000"):
            if x in s and b in s:
                r[f"{x}/{b}"] = s[x]["docs_per_s"] / s[b]["docs_per_s"]
    if "kmeans_b256" in s and "river_kmeans" in s:
        r["kmeans_b256/river_kmeans"] = s["kmeans_b256"]["docs_per_s"] / s["river_kmeans"]["docs_per_s"]
    return r


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="6,000 documents, river on 500, one round")
    p.add_argument("--docs", type=int, default=None, help="documents of the stream (default: all 77,480)")
    p.add_argument("--river-docs", type=int, default=None, help="documents for river (default 5,000; 500 quick)")
    p.add_argument("--repeats", type=int, default=None, help="rounds of all contenders (default 3; 1 quick)")
    p.add_argument("--threads", type=int, default=1, help="torch/BLAS/OpenMP/numba threads per child (default 1)")
    p.add_argument("--only", default=",".join(CONTENDERS), help="comma-separated subset of " + ",".join(CONTENDERS))
    p.add_argument("--out", type=Path, default=None, help="default bench/results/cost[_quick].json")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.docs = args.docs or 6000
    args.river_docs = args.river_docs or (500 if args.quick else 5000)
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.only = [c.strip() for c in args.only.split(",") if c.strip()]
    if unknown := [c for c in args.only if c not in CONTENDERS]:
        p.error(f"unknown contenders {unknown}")
    if args.threads < 1 or args.repeats < 1:
        p.error("--threads and --repeats must be >= 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    setup_logging()
    if args.worker:
        result = worker(args.worker, args.docs, args.river_docs, args.threads)
        emit(result)
        return result
    started = time.perf_counter()
    runs: dict[str, list[dict]] = {name: [] for name in args.only}
    for r in range(args.repeats):
        order = args.only if r % 2 == 0 else list(reversed(args.only))
        logger.info("round %d/%d: %s", r + 1, args.repeats, ", ".join(order))
        for name in order:
            runs[name].append(_child(name, args))
    s = summarise(runs)
    rows = [[name, m["docs"], m["docs_per_s"], m["cpu_us_per_doc"], m["mem_mib"]] for name, m in s.items()]
    print_table(f"Cost after the embedder, EC News stream (median of {args.repeats}; {args.threads} thread(s))",
                ["contender", "docs", "docs/s", "cpu us/doc", "mem MiB"], rows)
    rt = ratios(s)
    best_b = max((s[b]["docs_per_s"] for b in ("bertopic_b256", "bertopic_b1000") if b in s), default=None)
    targets = {}
    if "xtream" in s and best_b:
        targets["xtream_over_best_bertopic"] = {"value": s["xtream"]["docs_per_s"] / best_b,
                                                "target": TARGETS["xtream_over_bertopic"]}
    if "kmeans_b256" in s:
        targets["kmeans_b256_docs_per_s"] = {"value": s["kmeans_b256"]["docs_per_s"],
                                             "target": TARGETS["kmeans_docs_per_s"]}
    for t in targets.values():
        t["met"] = t["value"] >= t["target"]
    print_table("Ratios (docs/s over docs/s)", ["ratio", "value"], [[k, v] for k, v in rt.items()])
    print_table("Targets", ["target", "value", "wanted", "met"],
                [[k, t["value"], t["target"], str(t["met"])] for k, t in targets.items()])
    summary = {"benchmark": "cost", "quick": args.quick, "threads": args.threads, "repeats": args.repeats,
               "docs": max((m["docs"] for n, m in s.items() if n.startswith(("xtream", "tokenizer", "bertopic"))), default=None), "river_docs": args.river_docs,
               "contenders": s, "ratios": rt, "targets": targets,
               "total_seconds": round(time.perf_counter() - started, 1)}
    out = args.out or RESULTS / f"cost{'_quick' if args.quick else ''}.json"
    write_json(out, {"summary": summary, "runs": runs})
    logger.info("results written to %s", out)
    emit(summary)
    return summary


if __name__ == "__main__":
    main()
