"""How the cost after the embedder grows with the stream length and with the number of topics.

    python -m bench.scaling [--quick] [--full] [--threads 1] [--sizes 10000,100000] [--ks 20,50,100,200]
                            [--k-docs 20000] [--out bench/results/scaling.json]

The non-embedding path is the service's: ``OnlineTopicModel.learn_many`` + ``predict_many`` +
``observe_topics`` per batch of 256 and, in mode ``train``, ``train(10)`` every 512 documents
(service defaults); mode ``no_train`` runs no gradient step at all. Streams longer than EC News
(77,480 documents) are synthesised by resampling its documents with replacement: the tokens of
the drawn document, its cached USE embedding plus Gaussian noise (``--noise``, per dimension) and
re-normalised. Only the model calls are timed, not the synthesis.

Points: stream lengths ``--sizes`` at K=50 (``--full`` adds 1,000,000, which takes about half an
hour with training on one thread), and K in ``--ks`` at ``--k-docs`` documents. Each point runs in
its own child process, so ``mem MiB`` (growth of the peak resident set after the data is loaded)
and ``rss MiB`` (resident set at the end) belong to that point alone. Writes a PNG chart next to
the JSON. The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
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

logger = logging.getLogger("bench.scaling")


def _hwm_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def worker(docs: int, k: int, train: bool, noise: float, threads: int, seed: int) -> dict:
    from xtream.model.online import OnlineTopicModel
    from xtream.model.text import Tokenizer

    pin_threads(threads)
    base_stream = load_stream()
    if docs <= len(base_stream):
        base_stream = base_stream.take(docs)      # the real stream, in order, no resampling
    tokens = Tokenizer().tokenize_many(base_stream.texts, base_stream.langs)
    emb, langs = base_stream.embeddings, np.asarray(base_stream.langs)
    d = service_defaults()
    cfg = warmup_within(replace(d["online"], num_topics=k, **({} if train else {"warmup_steps": 0})), docs,
                        STREAM_WARMUP_SHARE)
    batch, every, steps = d["batch"], d["train_every_docs"], d["train_steps"]
    model = OnlineTopicModel(cfg, emb.shape[1], embed_words=VocabularyWordEmbedder())
    rng = np.random.default_rng(seed)
    synthetic = docs > len(emb)
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                       # reset VmHWM: memory below counts the model only
    base = rss_mib()
    wall = cpu = 0.0
    since = 0
    checkpoints = []                       # (docs, cumulative model seconds, rss) along the way
    perf = time.perf_counter
    for start in range(0, docs, batch):
        n = min(batch, docs - start)
        if not synthetic:
            idx = np.arange(start, start + n)
            x = emb[idx]
        else:
            idx = rng.integers(0, len(emb), n)
            x = emb[idx] + rng.normal(0.0, noise, (n, emb.shape[1])).astype(np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
        tok, lg = [tokens[i] for i in idx], langs[idx].tolist()
        t0, c0 = perf(), cpu_seconds()
        model.learn_many(tok, x, lg)
        _, theta = model.predict_many(tok, x, lg)
        model.observe_topics(theta, lg)
        since += n
        if train and model.is_initialised and since >= every:
            since = 0
            model.train(steps)
        wall += perf() - t0
        cpu += cpu_seconds() - c0
        if (start // batch) % max(1, docs // batch // 20) == 0:
            checkpoints.append((start + n, round(wall, 3), round(rss_mib(), 1)))
    return {"docs": docs, "k": k, "mode": "train" if train else "no_train", "seconds": wall,
            "docs_per_s": docs / wall, "cpu_us_per_doc": 1e6 * cpu / docs, "mem_mib": _hwm_mib() - base,
            "rss_mib": rss_mib(), "rss_after_load_mib": base, "synthetic": synthetic,
            "train_steps": model.trainer.steps if model.trainer else 0,
            "vocab": {lang: len(v) for lang, v in model.vocabs.items()},
            "buffer": model.buffer.sizes(), "progress": checkpoints}


def _child(docs: int, k: int, mode: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, "-m", "bench.scaling", "--worker", f"{docs}:{k}:{mode}", "--threads", str(args.threads),
           "--noise", str(args.noise), "--seed", str(args.seed)]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"point {docs}:{k}:{mode} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    logger.info("N=%-8d K=%-4d %-8s %8.0f docs/s  %7.1f cpu us/doc  %7.1f MiB  (%.0f s)", docs, k, mode,
                r["docs_per_s"], r["cpu_us_per_doc"], r["mem_mib"], time.perf_counter() - started)
    return r


def chart(points: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for col, (axis, fixed) in enumerate((("docs", "k"), ("k", "docs"))):
        sel = [p for p in points if p["sweep"] == axis]
        for mode, style in (("train", "o-"), ("no_train", "s--")):
            ps = sorted((p for p in sel if p["mode"] == mode), key=lambda p: p[axis])
            if not ps:
                continue
            xs = [p[axis] for p in ps]
            axes[0][col].plot(xs, [p["docs_per_s"] for p in ps], style, label=mode)
            axes[1][col].plot(xs, [p["mem_mib"] for p in ps], style, label=mode)
        for row, ylabel in ((0, "documents / s (model calls only)"), (1, "peak RSS growth, MiB")):
            ax = axes[row][col]
            ax.set_xlabel("stream length (documents)" if axis == "docs" else "topics K")
            ax.set_ylabel(ylabel)
            if axis == "docs":
                ax.set_xscale("log")
            if row == 0:
                ax.set_yscale("log")
            else:
                ax.set_ylim(bottom=0)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
        fixed_vals = sorted({p[fixed] for p in sel})
        axes[0][col].set_title(f"{'K' if fixed == 'k' else 'N'} = {', '.join(map(str, fixed_vals))}")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="sizes 2,500 and 5,000; K 20 and 50 at 2,500 docs")
    p.add_argument("--full", action="store_true", help="add the 1,000,000-document point (slow)")
    p.add_argument("--sizes", default=None, help="comma-separated stream lengths (default 10000,100000; 'none' for no length sweep)")
    p.add_argument("--ks", default=None, help="comma-separated K values (default 20,50,100,200; 'none' for no K sweep)")
    p.add_argument("--k-docs", type=int, default=None, help="stream length of the K sweep (default 20000)")
    p.add_argument("--modes", default="train,no_train", help="train, no_train or both")
    p.add_argument("--noise", type=float, default=0.005, help="std of the noise added to resampled embeddings")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="default bench/results/scaling[_quick].json (+ .png)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    ints = lambda s: [] if s == "none" else [int(x) for x in s.split(",") if x.strip()]  # noqa: E731
    args.sizes = ints(args.sizes) if args.sizes else ([2500, 5000] if args.quick else [10_000, 100_000])
    if args.full and 1_000_000 not in args.sizes:
        args.sizes.append(1_000_000)
    args.ks = ints(args.ks) if args.ks else ([20, 50] if args.quick else [20, 50, 100, 200])
    args.k_docs = args.k_docs or (2500 if args.quick else 20_000)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if set(args.modes) - {"train", "no_train"} or not args.modes:
        p.error("--modes takes train and/or no_train")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    setup_logging()
    if args.worker:
        docs, k, mode = args.worker.split(":")
        result = worker(int(docs), int(k), mode == "train", args.noise, args.threads, args.seed)
        emit(result)
        return result
    started = time.perf_counter()
    points, done = [], {}
    for mode in args.modes:
        for sweep, n, k in [("docs", n, 50) for n in args.sizes] + [("k", args.k_docs, k) for k in args.ks]:
            if (n, k, mode) not in done:      # a point on both sweeps runs once
                done[n, k, mode] = _child(n, k, mode, args)
            points.append(done[n, k, mode] | {"sweep": sweep})
    rows = [[p["sweep"], p["mode"], p["docs"], p["k"], p["docs_per_s"], p["cpu_us_per_doc"], p["mem_mib"], p["rss_mib"],
             p["train_steps"]] for p in points]
    print_table(f"Non-embedding path vs stream length and K ({args.threads} thread(s))",
                ["sweep", "mode", "docs", "K", "docs/s", "cpu us/doc", "mem MiB", "rss MiB", "steps"], rows)
    out = args.out or RESULTS / f"scaling{'_quick' if args.quick else ''}.json"
    png = out.with_suffix(".png")
    chart(points, png, f"xtream after the embedder: scaling (1 process per point, {args.threads} thread(s))")
    summary = {"benchmark": "scaling", "quick": args.quick, "full": args.full, "threads": args.threads,
               "noise": args.noise, "chart": str(png),
               "points": [{k: v for k, v in p.items() if k != "progress"} for p in points],
               "total_seconds": round(time.perf_counter() - started, 1)}
    write_json(out, {"summary": summary, "progress": {f"{p['sweep']}:{p['mode']}:{p['docs']}:{p['k']}": p["progress"]
                                                      for p in points}})
    logger.info("results written to %s and %s", out, png)
    emit(summary)
    return summary


if __name__ == "__main__":
    main()
