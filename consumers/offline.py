"""``xtream train`` / ``xtream evaluate``: fit XTRA on text files and judge a saved model.

Offline training gives the stream a good starting model and gives operators the same metrics the
benchmark reports, so both commands go through :mod:`model.quality` (the benchmark's own code)
instead of re-implementing embedding, clustering or scoring. Register them on a Typer app with
``app.command()(train)`` and ``app.command()(evaluate)``.

Inputs are ``lang=path`` pairs: UTF-8 files with one document per line. Already segmented text
(the research corpora) passes the tokenizer unchanged.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from xtream.model.embedding import DEFAULT_EMBEDDER

__all__ = ["evaluate", "parse_lang_paths", "train"]

logger = logging.getLogger(__name__)

_LANG_ALIASES = {"cn": "zh"}  # the research corpora name Chinese files "cn"


def parse_lang_paths(pairs: list[str] | None, what: str) -> dict[str, Path]:
    """``["en=a.txt", "zh=b.txt"]`` -> ``{"en": Path("a.txt"), "zh": Path("b.txt")}``; files must exist."""
    out: dict[str, Path] = {}
    for pair in pairs or []:
        lang, sep, path = pair.partition("=")
        lang = _LANG_ALIASES.get(lang.strip().lower(), lang.strip().lower())
        if not sep or not lang or not path:
            raise typer.BadParameter(f"{what}: expected 'lang=path', got {pair!r}")
        if lang in out:
            raise typer.BadParameter(f"{what}: language {lang!r} given twice")
        p = Path(path).expanduser()
        if not p.is_file():
            raise typer.BadParameter(f"{what}: {p} is not a file")
        out[lang] = p
    return out


def _read_lines(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


def _tokenize(texts: list[str], lang: str) -> list[list[str]]:
    """Tokenise in chunks behind a progress bar (jieba on raw Chinese takes minutes on big files)."""
    from tqdm.auto import tqdm

    from xtream.model.text import Tokenizer

    tok, out, chunk = Tokenizer(), [], 2048
    for i in tqdm(range(0, len(texts), chunk), desc=f"tokenising {lang}", unit="chunk"):
        out.extend(tok.tokenize_many(texts[i:i + chunk], lang))
    return out


def _print_table(title: str, rows: dict[str, object]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in rows.items():
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    Console().print(table)


def train(
    input: Annotated[list[str], typer.Option(
        "--input", "-i", help="lang=path of a text file, one document per line; repeat per language")],
    out: Annotated[Path, typer.Option("--out", "-o", help="directory to save the model in")],
    topics: Annotated[int, typer.Option(help="number of topics K (= k-means clusters)")] = 50,
    epochs: Annotated[int, typer.Option(help="passes over the largest language (the paper uses 800)")] = 100,
    embedder: Annotated[str, typer.Option(help="sentence embedder spec")] = DEFAULT_EMBEDDER,
    max_vocab: Annotated[int, typer.Option(help="most words per language")] = 5000,
    min_df: Annotated[float, typer.Option(help="documents a word must occur in")] = 3,
    max_df_ratio: Annotated[float, typer.Option(help="largest share of documents a word may occur in")] = 0.5,
    beta_alignment: Annotated[str, typer.Option(help="word_embedding | learned_projection | none")] = "word_embedding",
    n_init: Annotated[int, typer.Option(help="k-means restarts")] = 3,
    threads: Annotated[int, typer.Option(help="torch and BLAS threads")] = 1,
    seed: Annotated[int, typer.Option(help="seed of k-means, initialisation and batching")] = 0,
    checkpoint: Annotated[Path | None, typer.Option(
        help="file to save training state in every --checkpoint-every epochs; a rerun with the same inputs "
             "resumes from it")] = None,
    checkpoint_every: Annotated[int, typer.Option(help="epochs between checkpoints")] = 10,
) -> None:
    """Train XTRA on text files (one per language) and save it with its vocabularies."""
    from xtream.model.allocator import retain_freed_memory
    from xtream.model.embedding import load_embedder
    from xtream.model.persistence import save_xtra
    from xtream.model.quality import cache_file, content_key, embed_cached, fit_xtra, joint_kmeans
    from xtream.model.threads import pin_threads
    from xtream.model.training import LanguageCorpus

    files = parse_lang_paths(input, "--input")
    if not files:
        raise typer.BadParameter("give at least one --input lang=path")
    retain_freed_memory()
    pin_threads(threads)
    started = time.perf_counter()
    emb = load_embedder(embedder, threads=threads)
    texts, bows, vocabs = _corpora(files, max_vocab=max_vocab, min_df=min_df, max_df_ratio=max_df_ratio)
    doc_emb = {lang: embed_cached(emb, t, cache_file(content_key(f"docs-{lang}", t), emb.name),
                                  desc=f"embedding {lang}")
               for lang, t in texts.items()}
    word_emb = {lang: embed_cached(emb, v, cache_file(content_key(f"vocab-{lang}", v), emb.name), desc=f"words {lang}")
                for lang, v in vocabs.items()}
    clusters = joint_kmeans(doc_emb, n_clusters=topics, n_init=n_init, seed=seed)
    corpora = {lang: LanguageCorpus(bows[lang], doc_emb[lang], clusters[lang]) for lang in files}
    trained = fit_xtra(corpora, epochs=epochs, num_topics=topics, word_embeddings=word_emb, seed=seed,
                       beta_alignment=beta_alignment, checkpoint=checkpoint, checkpoint_every=checkpoint_every)
    metadata = {"embedder": emb.name, "epochs": epochs, "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "train_docs": {lang: len(t) for lang, t in texts.items()},
                "inputs": {k: str(v) for k, v in files.items()},
                "clustering": f"sklearn KMeans over all languages jointly, K={topics}, n_init={n_init}, seed={seed}",
                "train_seconds": round(trained.train_seconds, 1), "final_loss": trained.history[-1]}
    save_xtra(out, trained.model, vocabs, metadata)
    summary = {"model": str(out), "epochs": epochs, "train_seconds": round(trained.train_seconds, 1),
               "seconds_per_epoch": round(trained.seconds_per_epoch, 2),
               "total_seconds": round(time.perf_counter() - started, 1),
               "final_loss": round(float(trained.history[-1]["total"]), 4)} | \
        {f"docs_{lang}": len(t) for lang, t in texts.items()} | {f"vocab_{lang}": len(v) for lang, v in vocabs.items()}
    _print_table("xtream train", summary)
    print(json.dumps(summary, ensure_ascii=False))


def _corpora(files: dict[str, Path], *, max_vocab: int, min_df: float, max_df_ratio: float):
    """``(texts, bags of words, vocabularies)`` per language; documents without a vocabulary word
    are left out (they teach nothing)."""
    from xtream.model.vocabulary import Vocabulary

    texts, bows, vocabs = {}, {}, {}
    for lang, path in files.items():
        lines = [t for t in _read_lines(path) if t.strip()]
        tokens = _tokenize(lines, lang)
        vocab = Vocabulary(max_size=max_vocab, min_df=min_df, max_df_ratio=max_df_ratio)
        vocab.learn_many(tokens)
        vocab.refresh()
        if len(vocab) == 0:
            raise typer.BadParameter(f"{path}: no word reaches min_df={min_df}")
        bow = vocab.transform(tokens)
        keep = np.flatnonzero(bow.getnnz(axis=1) > 0)
        if len(keep) < len(lines):
            logger.info("lang=%s dropped=%d docs without vocabulary words", lang, len(lines) - len(keep))
        texts[lang], bows[lang], vocabs[lang] = [lines[i] for i in keep], bow[keep], vocab.words
    return texts, bows, vocabs


def _read_labels(path: Path, n: int, what: str) -> np.ndarray:
    labels = np.asarray([s.strip() for s in _read_lines(path) if s.strip()])
    if len(labels) != n:
        raise typer.BadParameter(f"{what}: {path} has {len(labels)} labels for {n} documents")
    return labels


def _dictionary_langs(path: Path, spec: str | None, langs: list[str]) -> tuple[str, str]:
    """``"zh,en"`` or, when not given, the file stem ``zh_en``; both must be model languages."""
    parts = (spec.split(",") if spec else path.stem.replace("-", "_").split("_"))
    parts = [_LANG_ALIASES.get(p.strip().lower(), p.strip().lower()) for p in parts]
    if len(parts) != 2 or any(p not in langs for p in parts):
        raise typer.BadParameter(f"cannot tell the dictionary's languages from {spec or path.name!r}; "
                                 f"pass --dictionary-langs src,tgt with two of {langs}")
    return parts[0], parts[1]


def evaluate(
    model: Annotated[Path, typer.Option("--model", "-m", help="directory written by `xtream train`")],
    input: Annotated[list[str], typer.Option("--input", "-i", help="lang=path of test texts; also the NPMI reference")],
    labels: Annotated[list[str] | None, typer.Option(help="lang=path of test labels, one per line")] = None,
    train_input: Annotated[list[str] | None, typer.Option(
        help="lang=path of training texts for the classifier")] = None,
    train_labels: Annotated[list[str] | None, typer.Option(help="lang=path of their labels")] = None,
    dictionary: Annotated[Path | None, typer.Option(help="bilingual dictionary, src<TAB>tgt per line")] = None,
    dictionary_langs: Annotated[str | None, typer.Option(help="src,tgt of the dictionary (default: file stem)")] = None,
    classifier: Annotated[str, typer.Option(help="svc (the papers') or linear (fast)")] = "svc",
    threads: Annotated[int, typer.Option(help="torch and BLAS threads")] = 1,
) -> None:
    """Score a saved model: TU, NPMI per language, dictionary alignment, classification."""
    import torch

    from xtream.model.evaluation import load_bilingual_dictionary
    from xtream.model.persistence import load_xtra
    from xtream.model.quality import quality_metrics
    from xtream.model.threads import pin_threads
    from xtream.model.training import infer_theta
    from xtream.model.vocabulary import Vocabulary

    tests = parse_lang_paths(input, "--input")
    test_labels = parse_lang_paths(labels, "--labels")
    train_files = parse_lang_paths(train_input, "--train-input")
    train_label_files = parse_lang_paths(train_labels, "--train-labels")
    net, vocab_words, meta = load_xtra(model)
    unknown = [lang for lang in tests if lang not in vocab_words]
    if unknown or not tests:
        raise typer.BadParameter(f"--input languages {unknown or 'none'}; the model knows {sorted(vocab_words)}")
    pin_threads(threads)
    vocabs = {lang: Vocabulary(words=w) for lang, w in vocab_words.items()}

    def theta_of(path: Path, lang: str) -> tuple[np.ndarray, list[list[str]]]:
        tokens = _tokenize(_read_lines(path), lang)  # no line dropped: labels align by line
        return infer_theta(net, vocabs[lang].transform(tokens), lang), tokens

    thetas, refs = {}, {}
    for lang, path in tests.items():
        thetas[lang], refs[lang] = theta_of(path, lang)
    clf = {}
    for lang in test_labels:
        if lang not in tests or lang not in train_files or lang not in train_label_files:
            raise typer.BadParameter(f"classification of {lang!r} needs --input, --labels, --train-input "
                                     "and --train-labels for it")
        theta_tr, _ = theta_of(train_files[lang], lang)
        clf[lang] = (theta_tr, _read_labels(train_label_files[lang], len(theta_tr), "--train-labels"),
                     thetas[lang], _read_labels(test_labels[lang], len(thetas[lang]), "--labels"))
    pairs = langs = None
    if dictionary is not None:
        langs = _dictionary_langs(dictionary, dictionary_langs, sorted(vocab_words))
        pairs = load_bilingual_dictionary(dictionary)
    with torch.no_grad():
        topic_word = {lang: net.topic_word(lang).numpy() for lang in vocab_words}
    metrics = quality_metrics(topic_word, vocab_words, refs, dictionary=pairs, dictionary_langs=langs,
                              classification=clf or None, classifier=classifier)
    summary = {"model": str(model), "embedder": meta.get("embedder"), "epochs": meta.get("epochs")} | metrics
    _print_table(f"xtream evaluate {model}", summary)
    print(json.dumps(summary, ensure_ascii=False))
