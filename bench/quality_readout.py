"""What XTRA's output gains from the clusters and from a relevance readout, measured side by side.

    python -m bench.quality_readout [--data ../shared/data/ecnews] [--train 8000] [--test 2000]
        [--epochs 10] [--systems xtream_offline,xtream_stream] [--threads 1]
        [--out bench/results/quality_readout[_<dataset>].json]

For each XTRA system of ``bench.quality_peers`` (same data, same splits, same RBF SVC), one fit, then:

* theta blended with the softmax cluster memberships, ``(1 - w) * theta + w * softmax(cos / t)``
  (``model.readout``), for a grid of weights ``w`` and temperatures ``t``: classification figures;
* topic words ranked by relevance ``r * log p(w|k) + (1 - r) * log lift`` for a grid of ``r``:
  TU, NPMI (test, -1 convention) and NPMI0 / TQ (train + test, 0 convention).

The baselines (raw embeddings, k-means soft memberships, k-means + c-TF-IDF) are scored on the same
documents in the same run. The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

import numpy as np

from bench._common import (
    DATA,
    RESULTS,
    emit,
    pin_threads,
    print_table,
    setup_logging,
    write_json,
)

logger = logging.getLogger("bench.quality_readout")

WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
TEMPERATURES = (0.05, 0.1, 0.3)
RELEVANCE = (1.0, 0.8, 0.6, 0.4)


def _clf(data, theta: dict) -> dict:
    from xtream.model.quality import quality_metrics

    clf = {lang: (theta[lang][0], data.train_labels[lang], theta[lang][1], data.test_labels[lang]) for lang in data.langs}
    return {k: v for k, v in quality_metrics({}, {}, {}, classification=clf).items() if not k.endswith("_f1")}


def _topics(data, topic_word: dict, vocab: dict) -> dict:
    from xtream.model.quality import quality_metrics

    m = quality_metrics(topic_word, vocab, data.test_tokens, full_reference=data.full_tokens)
    return {k: v for k, v in m.items()}


def sweep(data, name: str, result: dict) -> dict:
    from xtream.model.readout import blend_theta, cluster_memberships, relevance

    out: dict[str, dict] = {}
    for t in TEMPERATURES:
        member = {lang: tuple(cluster_memberships(x, result["centres"], t)
                              for x in (data.train_embeddings(lang), data.test_emb[lang])) for lang in data.langs}
        for w in WEIGHTS:
            if w == 0.0 and t != TEMPERATURES[0]:
                continue
            theta = {lang: tuple(blend_theta(th, m, w) for th, m in zip(result["theta"][lang], member[lang]))
                     for lang in data.langs}
            out[f"{name} theta w={w} t={t}"] = _clf(data, theta)
            logger.info("%s w=%s t=%s: %s", name, w, t, out[f"{name} theta w={w} t={t}"])
    for r in RELEVANCE:
        tw = {lang: np.exp(relevance(result["topic_word"][lang], r)) for lang in data.langs}
        out[f"{name} words r={r}"] = _topics(data, tw, result["vocab"])
        logger.info("%s r=%s: %s", name, r, out[f"{name} words r={r}"])
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--train", type=int, default=8000, help="training documents per language (0: all)")
    p.add_argument("--test", type=int, default=2000, help="test documents per language (0: all)")
    p.add_argument("--epochs", type=int, default=10, help="offline XTRA epochs")
    p.add_argument("--systems", default="xtream_offline,xtream_stream")
    p.add_argument("--no-baselines", dest="baselines", action="store_false", help="skip the baseline rows")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    setup_logging()
    pin_threads(args.threads)
    # the sweep blends theta itself: the stream's own theta must come unblended
    os.environ["XTREAM_MODEL__THETA_CLUSTER_WEIGHT"] = "0"
    from bench import quality_peers as qp

    started = time.perf_counter()
    data = qp.Data(args.data, args.train or None, args.test or None)
    logger.info("data %s", data.sizes())
    rows: dict[str, dict] = {}
    if args.baselines:
        rows["raw_embeddings"] = _clf(data, qp.run_raw_embeddings(data, args)["theta"])
        soft, topics = qp.run_kmeans(data, args)
        rows["kmeans_soft"] = _clf(data, soft["theta"])
        rows["kmeans_ctfidf"] = _topics(data, topics["topic_word"], topics["vocab"])
    fit_seconds = {}
    for name in [s.strip() for s in args.systems.split(",") if s.strip()]:
        result = {"xtream_offline": qp.run_xtream_offline, "xtream_stream": qp.run_xtream_stream}[name](data, args)
        fit_seconds[name] = result["fit_seconds"]
        rows |= sweep(data, name, result)
    dataset = args.data.resolve().name
    out = args.out or RESULTS / f"quality_readout{'' if dataset == 'ecnews' else '_' + dataset}.json"
    cols = ["tu", *(f"npmi_{lang}" for lang in data.langs), "npmi0", "tq",
            *(f"clf_intra_{lang}" for lang in data.langs), *(f"clf_cross_{lang}" for lang in data.langs)]
    print_table(f"XTRA readouts on {dataset} ({data.sizes()})", ["row", *cols],
                [[name, *[m.get(c) for c in cols]] for name, m in rows.items()])
    env = {k: v for k, v in os.environ.items() if k.startswith("XTREAM_MODEL__")}
    summary = {"benchmark": "quality_readout", "dataset": dataset, "env": env, "data": data.sizes(), "epochs": args.epochs,
               "threads": args.threads, "fit_seconds": fit_seconds, "rows": rows,
               "total_seconds": round(time.perf_counter() - started, 1)}
    write_json(out, summary)
    emit(summary)
    return summary


if __name__ == "__main__":
    main()
