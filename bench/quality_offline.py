"""Offline topic quality of XTRA on a research corpus, with the alignment-loss ablations.

Run from the project root::

    python -m bench.quality_offline --data ../shared/data/ecnews [--epochs N] [--quick]
        [--variants full,no_cluster,no_beta,no_nce,learned_beta,no_align] [--threads 1]
        [--clusters embedder|reference] [--checkpoint-dir DIR [--checkpoint-every 10]]
        [--out bench/results/quality_ecnews.json]

Why it exists: the streaming service trains the same network online, so this is the yardstick
for "is the model any good", and the ablations say which alignment loss earns its cost. Steps:
load BoW + texts + labels per language; embed every text with the service's default embedder
(cached under ``~/.cache/xtream/embeddings``); cluster the training documents of both languages
*jointly* (the service clusters all languages together; ``--clusters reference`` uses the XTRA
authors' bge-m3 clusters instead); embed each vocabulary word for the default beta alignment;
train one XTRA per variant with the paper's settings; score TU, NPMI (``npmi_<lang>`` on the test
texts with never-co-occurring pairs = -1; ``npmi0_<lang>`` on train + test texts with them = 0, and
``tq`` = TU x mean ``npmi0``), dictionary alignment (en/zh with a dictionary) and intra/cross-lingual
classification. The languages are those of the dataset's files (``cn`` = zh) and every figure is
named by language, so a dataset in the same layout with another pair runs as it is. The last
stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

logger = logging.getLogger("bench.quality_offline")

#: Loss-weight overrides of each ablation; ``no_align`` is "the same network without alignment".
VARIANTS: dict[str, dict[str, float | str]] = {
    "full": {},
    "no_cluster": {"lambda_cluster": 0.0},
    "no_beta": {"lambda_beta": 0.0},
    "no_nce": {"lambda_nce": 0.0},
    "learned_beta": {"beta_alignment": "learned_projection"},
    "no_align": {"lambda_cluster": 0.0, "lambda_beta": 0.0, "lambda_nce": 0.0},
}
QUICK_DOCS = 3000


def score_names(langs: list[str]) -> list[str]:
    """The headline quality figures, named by language."""
    return ["tu", *(f"npmi_{lang}" for lang in langs), *(f"npmi0_{lang}" for lang in langs), "tq",
            "dict_alignment", *(f"clf_intra_{lang}" for lang in langs), *(f"clf_cross_{lang}" for lang in langs)]


class BenchDataError(FileNotFoundError):
    """A dataset file is missing or its parts disagree in length."""


@dataclass
class LanguageData:
    """One language of a dataset; ``*_texts`` are space-joined tokens, one document each."""

    vocab: list[str]
    train_bow: sp.csr_matrix
    test_bow: sp.csr_matrix
    train_texts: list[str]
    test_texts: list[str]
    train_labels: np.ndarray
    test_labels: np.ndarray
    reference_clusters: np.ndarray | None
    train_idx: np.ndarray | None = None   # rows kept from the full split (None: all)
    test_idx: np.ndarray | None = None


def _read_lines(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


def bow_to_texts(bow: sp.csr_matrix, vocab: list[str]) -> list[str]:
    """Rebuild token lists from counts (each word repeated by its count, vocabulary order).

    Amazon Review ships no Chinese training texts, but document embeddings need text; a bag of
    words is the closest thing the data allows.
    """
    bow = sp.csr_matrix(bow)
    words = np.asarray(vocab, dtype=object)
    counts = bow.data.astype(np.int64)
    tokens = np.repeat(words[bow.indices], counts)
    per_row = np.diff(np.concatenate([[0], np.cumsum(counts)])[bow.indptr])
    ends = np.cumsum(per_row)
    starts = np.concatenate([[0], ends[:-1]])
    return [" ".join(tokens[s:e]) for s, e in zip(starts.tolist(), ends.tolist())]


def _subset(n: int, size: int | None, rng: np.random.Generator) -> np.ndarray | None:
    return None if size is None or size >= n else np.sort(rng.choice(n, size=size, replace=False))


def load_language(root: Path, lang: str, subset: int | None, seed: int) -> LanguageData:
    """Read one language's files; ``subset`` keeps that many random documents per split."""
    from bench._common import file_code

    f = file_code(lang, root)
    need = [root / f"vocab_{f}"] + [root / f"{s}_{kind}_{f}.{ext}" for s in ("train", "test")
                                     for kind, ext in (("bow_matrix", "npz"), ("labels", "txt"))]
    missing = [str(p) for p in need if not p.is_file()]
    if missing:
        raise BenchDataError(f"missing dataset files: {missing}")
    vocab = _read_lines(root / f"vocab_{f}")
    rng = np.random.default_rng(seed)
    parts = {}
    for split in ("train", "test"):
        bow = sp.load_npz(root / f"{split}_bow_matrix_{f}.npz").tocsr()
        labels = np.loadtxt(root / f"{split}_labels_{f}.txt", dtype=np.int64).ravel()
        text_path = root / f"{split}_texts_{f}.txt"
        if text_path.is_file():
            texts = _read_lines(text_path)
        else:
            logger.warning("no %s; rebuilding %s texts from the BoW matrix", text_path.name, split)
            texts = bow_to_texts(bow, vocab)
        if not bow.shape[0] == len(labels) == len(texts) or bow.shape[1] != len(vocab):
            raise BenchDataError(f"{root} {split} {lang}: bow {bow.shape}, {len(labels)} labels, "
                                 f"{len(texts)} texts, {len(vocab)} vocab words disagree")
        idx = _subset(bow.shape[0], subset, rng)
        if idx is not None:
            bow, labels, texts = bow[idx], labels[idx], [texts[i] for i in idx]
        parts[split] = (bow, labels, texts, idx)
    ref_path = root / f"cluster_labels_{f}_cosine.npy"
    ref = np.load(ref_path).astype(np.int64) if ref_path.is_file() else None
    if ref is not None and parts["train"][3] is not None:
        ref = ref[parts["train"][3]]
    return LanguageData(vocab=vocab, train_bow=parts["train"][0], test_bow=parts["test"][0],
                        train_texts=parts["train"][2], test_texts=parts["test"][2],
                        train_labels=parts["train"][1], test_labels=parts["test"][1],
                        reference_clusters=ref, train_idx=parts["train"][3], test_idx=parts["test"][3])


def embed_split(embedder, texts: list[str], idx: np.ndarray | None, key: str) -> np.ndarray:
    """Embeddings of ``texts``, which are rows ``idx`` of a split (``None``: the whole split).

    A subset is sliced from the whole split's cache when that exists, else embedded and cached
    under its own key.
    """
    from xtream.model.quality import cache_file, embed_cached

    full = cache_file(key, embedder.name)
    if idx is not None:
        if full.is_file():
            arr = np.load(full)
            if arr.shape[0] > int(idx.max()) and arr.shape[1] == embedder.dim:
                return arr[idx]
        return embed_cached(embedder, texts, cache_file(f"{key}-sub{len(idx)}", embedder.name), desc=key)
    return embed_cached(embedder, texts, full, desc=key)


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(payload, f, ensure_ascii=False, indent=1)
    os.chmod(tmp, 0o644)  # mkstemp makes it private; results are meant to be read
    os.replace(tmp, path)


def run_variant(name: str, data: dict[str, LanguageData], corpora, word_embeddings, dictionary,
                epochs: int, seed: int, checkpoint: Path | None = None,
                checkpoint_every: int = 10) -> tuple[dict, list, dict]:
    """Train one ablation and score it; returns (metrics, loss history, top-15 words)."""
    import torch

    from xtream.model.quality import fit_xtra, quality_metrics, topic_top_words
    from xtream.model.training import infer_theta

    trained = fit_xtra(corpora, epochs=epochs, num_topics=50, word_embeddings=word_embeddings, seed=seed,
                       checkpoint=checkpoint, checkpoint_every=checkpoint_every, **VARIANTS[name])
    started = time.perf_counter()
    model = trained.model
    vocabs = {lang: d.vocab for lang, d in data.items()}
    clf = {lang: (infer_theta(model, d.train_bow, lang), d.train_labels,
                  infer_theta(model, d.test_bow, lang), d.test_labels) for lang, d in data.items()}
    with torch.no_grad():
        topic_word = {lang: model.topic_word(lang).numpy() for lang in data}
    test_tokens = {lang: [t.split() for t in d.test_texts] for lang, d in data.items()}
    metrics = quality_metrics(
        topic_word, vocabs, test_tokens,
        dictionary=dictionary, dictionary_langs=("zh", "en") if dictionary is not None else None,
        classification=clf,
        full_reference={lang: [t.split() for t in d.train_texts] + test_tokens[lang] for lang, d in data.items()})
    last = trained.history[-1]
    metrics |= {"train_seconds": round(trained.train_seconds, 2),
                "seconds_per_epoch": round(trained.seconds_per_epoch, 2), "epochs": epochs,
                "median_epoch_seconds": round(median_epoch_seconds(trained.history), 2),
                "eval_seconds": round(time.perf_counter() - started, 2),
                "final_loss": round(float(last["total"]), 4), "peak_rss_mib": round(peak_rss_mib(), 1)}
    return metrics, trained.history, topic_top_words(model, vocabs, n=15)


def median_epoch_seconds(history: list[dict[str, float]]) -> float:
    """Median wall time of one epoch, from the per-epoch ``seconds`` stamps of the training history.

    The stamps restart at every ``fit`` call (a resumed or checkpointed run calls it once per chunk),
    so a stamp lower than its predecessor starts a new chunk. The median is what an epoch costs; the
    total also holds whatever the run waited for (a paused process, a busy host).
    """
    stamps = [h["seconds"] for h in history]
    spans = [s if i == 0 or s < stamps[i - 1] else s - stamps[i - 1] for i, s in enumerate(stamps)]
    return float(np.median(spans)) if spans else float("nan")


def render_table(results: dict[str, dict]) -> None:
    """One row per variant: quality metrics to 4 decimals, then cost columns as measured."""
    from rich.console import Console
    from rich.table import Table

    langs = sorted({k[len("clf_intra_"):] for m in results.values() for k in m
                    if k.startswith("clf_intra_") and not k.endswith("_f1")})
    scores = score_names(langs)
    costs = ["median_epoch_seconds", "seconds_per_epoch", "train_seconds", "peak_rss_mib"]
    table = Table(title="XTRA offline quality (clf_* = SVM accuracy)")
    for c in ["variant", *scores, *costs]:
        table.add_column(c, justify="left" if c == "variant" else "right")
    for name, m in results.items():
        table.add_row(name, *[f"{m[c]:.4f}" if c in m else "-" for c in scores],
                      *[str(m.get(c, "-")) for c in costs])
    Console(width=220).print(table)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="dataset folder, e.g. ../shared/data/ecnews")
    p.add_argument("--epochs", type=int, default=None, help="default 20 (2 with --quick)")
    p.add_argument("--quick", action="store_true", help=f"2 epochs, {QUICK_DOCS} docs per language and split")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ",".join(VARIANTS))
    p.add_argument("--threads", type=int, default=1, help="torch + BLAS threads (1 on a shared 2-core host)")
    p.add_argument("--clusters", choices=("embedder", "reference"), default="embedder")
    p.add_argument("--n-init", type=int, default=3, help="k-means restarts")
    p.add_argument("--embedder", default=None, help="embedder spec (default: the service default)")
    p.add_argument("--dictionary", type=Path, default=None,
                   help="zh<TAB>en dictionary, used when the dataset has en and zh (default: <data>/../dict/zh_en.tsv)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-dir", type=Path, default=None,
                   help="keep each variant's training state here and resume from it (long runs over several sittings)")
    p.add_argument("--checkpoint-every", type=int, default=10, help="epochs between checkpoints")
    p.add_argument("--out", type=Path, default=None, help="default bench/results/quality_<dataset>[_quick].json")
    args = p.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown or not args.variants:
        p.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    if args.epochs is None:
        args.epochs = 2 if args.quick else 20
    if args.threads < 1:
        p.error("--threads must be >= 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    import torch
    from threadpoolctl import threadpool_limits

    from xtream.model.allocator import retain_freed_memory

    retain_freed_memory()
    torch.set_num_threads(args.threads)      # intra-op threads of training
    with threadpool_limits(limits=args.threads):  # BLAS of numpy (USE, k-means) and sklearn SVC
        return _run(args)


def _run(args: argparse.Namespace) -> dict:
    from xtream.model.embedding import DEFAULT_EMBEDDER, load_embedder
    from xtream.model.evaluation import load_bilingual_dictionary
    from xtream.model.quality import DEFAULT_CACHE_DIR, cache_file, embed_cached, joint_kmeans
    from xtream.model.training import LanguageCorpus

    started = time.perf_counter()
    dataset = args.data.resolve().name
    subset = QUICK_DOCS if args.quick else None
    from bench._common import discover_languages

    data = {lang: load_language(args.data, lang, subset, args.seed) for lang in discover_languages(args.data)}
    logger.info("loaded %s: %s", dataset, {lang: (d.train_bow.shape[0], d.test_bow.shape[0]) for lang, d in data.items()})

    embedder = load_embedder(args.embedder or DEFAULT_EMBEDDER, threads=args.threads)
    doc_emb = {lang: embed_split(embedder, d.train_texts, d.train_idx, f"{dataset}-train-{lang}")
               for lang, d in data.items()}
    for lang, d in data.items():  # test embeddings: unused by these metrics, cached for other benches
        embed_split(embedder, d.test_texts, d.test_idx, f"{dataset}-test-{lang}")
    word_emb = {lang: embed_cached(embedder, d.vocab, cache_file(f"{dataset}-vocab-{lang}", embedder.name),
                                   desc=f"{dataset}-vocab-{lang}") for lang, d in data.items()}
    embed_seconds = time.perf_counter() - started

    if args.clusters == "embedder":
        clusters = joint_kmeans(doc_emb, n_clusters=50, n_init=args.n_init, seed=args.seed,
                                cache_dir=DEFAULT_CACHE_DIR.parent / "kmeans")
    else:
        clusters = {lang: d.reference_clusters for lang, d in data.items()}
        if any(c is None for c in clusters.values()):
            raise BenchDataError(f"{args.data} has no cluster_labels_*_cosine.npy for --clusters reference")
    corpora = {lang: LanguageCorpus(d.train_bow, doc_emb[lang], clusters[lang]) for lang, d in data.items()}
    dict_path = args.dictionary or args.data.parent / "dict" / "zh_en.tsv"
    dictionary = None
    if {"en", "zh"} <= set(data) and dict_path.is_file():
        dictionary = load_bilingual_dictionary(dict_path)
    else:
        logger.warning("no en-zh dictionary for %s (%s): dict_alignment skipped", sorted(data), dict_path)

    out = args.out or Path("bench/results") / f"quality_{dataset}{'_quick' if args.quick else ''}.json"
    results: dict[str, dict] = {}
    histories: dict[str, list] = {}
    top: dict = {}
    meta = {"dataset": dataset, "embedder": embedder.name, "clusters": args.clusters, "epochs": args.epochs,
            "quick": args.quick, "threads": args.threads, "seed": args.seed, "n_init": args.n_init,
            "train_docs": {lang: int(d.train_bow.shape[0]) for lang, d in data.items()},
            "test_docs": {lang: int(d.test_bow.shape[0]) for lang, d in data.items()},
            "langs": list(data), "embed_seconds": round(embed_seconds, 1),
            "npmi_reference": "test texts of the same language (npmi_*, pairs never together = -1); "
                              "train + test texts (npmi0_*, pairs never together = 0)", "classifier": "sklearn SVC() (RBF)"}
    for name in args.variants:
        logger.info("variant %s: training %d epochs", name, args.epochs)
        ckpt = None if args.checkpoint_dir is None else \
            args.checkpoint_dir / f"{dataset}{'_quick' if args.quick else ''}-{args.clusters}-{name}-seed{args.seed}.pt"
        metrics, history, words = run_variant(name, data, corpora, word_emb, dictionary, args.epochs, args.seed,
                                              ckpt, args.checkpoint_every)
        results[name], histories[name] = metrics, history
        if name == "full":
            top = words
        logger.info("variant %s: %s", name, json.dumps(metrics))
        _write_json(out, {"summary": _summary(meta, results), "history": histories, "top_words_full": top})
    summary = _summary(meta, results)
    summary["total_seconds"] = round(time.perf_counter() - started, 1)
    _write_json(out, {"summary": summary, "history": histories, "top_words_full": top})
    render_table(results)
    logger.info("results written to %s", out)
    print(json.dumps(summary, ensure_ascii=False), flush=True)
    return summary


def _summary(meta: dict, results: dict[str, dict]) -> dict:
    summary = dict(meta) | {name: m for name, m in results.items()}
    if "full" in results:
        headline = [*score_names(meta["langs"]), "train_seconds", "epochs"]
        summary |= {k: results["full"][k] for k in headline if k in results["full"]}
    return summary


if __name__ == "__main__":
    main()
