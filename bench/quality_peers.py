"""Topic quality of xtream against its peers and baselines on the same stream and test split.

    python -m bench.quality_peers [--data ../shared/data/ecnews] [--quick] [--epochs 10]
        [--infoctm-epochs 3] [--threads 1] [--bertopic-batch 1000] [--cadences 0,2,5]
        [--only raw_embeddings,kmeans,xtream_stream,xtream_offline,bertopic_online,infoctm]
        [--out bench/results/quality_peers[_<dataset>].json]

The languages are those of the dataset's files (``train_bow_matrix_<code>.npz``, ``cn`` = zh), and
every figure is named by language (``npmi_ja``, ``clf_cross_ja``, ...): a dataset in the same layout
with another language pair runs as it is (its embeddings cached once by ``bench.quality_offline``).

Systems (all see the cached multilingual-USE embeddings where they use embeddings at all):

``raw_embeddings``   SVC on the sentence embeddings themselves (512-d): the ceiling (no topic words).
``kmeans_soft``      cosine similarity to the K = 50 centres of ``joint_kmeans`` over the training
                     embeddings of all languages (50-d): the "no topic model" floor (no topic words).
``kmeans_ctfidf``    the same clusters as topics, words by per-language c-TF-IDF over the dataset's
                     BoW (``bench.baselines``); theta = the soft memberships above.

``xtream_stream``    one pass of the interleaved training stream through ``OnlineTopicModel`` with
                     the service's defaults (batches of 256, 10 XTRA steps every 512 documents after
                     an 8,000-document warm-up; a quarter of the stream if that is less, as with
                     ``--quick``), then ``predict_many`` theta for train and test
                     (blended with the cluster memberships, as the service serves it). Its
                     vocabularies are the ones it grew online (at most 5,000 words per language).
``xtream_stream_stepsN`` the same with N gradient steps per 512-document slice instead of the
                     service's 10 (``--cadences``, default 0,2,5; 0 = the 200 warm-up steps only):
                     what online training costs per document and what it buys in quality.
``xtream_offline``   ``model.quality.fit_xtra`` on the dataset's BoW (its 5,000-word vocabularies),
                     clusters from ``joint_kmeans`` of the same embeddings, ``--epochs`` epochs.
``xtream_offline_blend`` the same fit, theta blended with the cluster memberships as the service's
                     ``predict_many`` does (``model.theta_cluster_weight`` / ``_temperature``).
``bertopic_online``  ``BERTopic.partial_fit`` over the same stream in batches of ``--bertopic-batch``
                     with its documented online recipe (IncrementalPCA(5), MiniBatchKMeans(50),
                     OnlineCountVectorizer(decay=.01)); documents are xtream's tokens joined by
                     spaces. Topic-word = its c-TF-IDF matrix; the one shared vocabulary is split
                     into English and Chinese columns by script. Theta for classification: the
                     one-hot topic of ``transform`` (MiniBatchKMeans gives no probabilities);
                     ``bertopic_online_approx`` is the same model scored with the topic
                     distributions of ``approximate_distribution`` instead.
``infoctm``          InfoCTM (AAAI 2023) from the ``topmost`` package, offline on the dataset's BoW with
                     the dataset's word2vec embeddings and the zh-en dictionary, trained by a loop that
                     follows topmost's ``CrosslingualTrainer`` (Adam 0.002, batch 200); theta = the
                     encoder mean, as topmost's ``infer_theta``. ``topmost`` is loaded without running
                     its package ``__init__`` (which imports torchvision; see bench/README.md).
                     Its default budget is 3 epochs (the paper trains 500): its word-level contrast
                     builds several 5,000 x 5,000 tensors per step, ~1.3 s a step on one thread
                     here, 200 steps an epoch.

Each system is fitted and scored in its own child process (its own peak RSS; the glibc malloc
settings of ``MALLOC_ENV``, which keep large freed blocks for reuse, for all of them alike).

Metrics (``model.quality.quality_metrics``): TU over top-15 words; NPMI of the top-10 words on the
test texts of each language (never-co-occurring pairs = -1); ``npmi0_<lang>``: the same with those
pairs = 0 (the papers' convention) on all texts of the language (train + test), ``tq`` = TU x mean
``npmi0``; dictionary alignment (zh_en.tsv, reversed, English on the left; en/zh only); RBF-SVC
accuracy trained on train theta and tested on test theta of the same language (intra) and of the
other languages (cross). Systems that need what a dataset lacks (InfoCTM: an en-zh dictionary;
BERTopic: languages told apart by script) or a package that is not installed are skipped with the
reason in ``skipped``. The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from bench._common import (
    DATA,
    RESULTS,
    STREAM_WARMUP_SHARE,
    VocabularyWordEmbedder,
    discover_languages,
    emit,
    file_code,
    load_split,
    load_stream,
    peak_rss_mib,
    pin_threads,
    print_table,
    read_lines,
    service_defaults,
    setup_logging,
    split_by_script,
    warmup_within,
    write_json,
)

logger = logging.getLogger("bench.quality_peers")

SYSTEMS = ("raw_embeddings", "kmeans", "xtream_stream", "xtream_offline", "bertopic_online", "infoctm")
QUICK_TRAIN, QUICK_TEST = 3000, 1000   # documents per language with --quick
NUM_TOPICS = 50


class SystemSkipped(Exception):
    """A system cannot run on this dataset (a language pair or resource it does not support)."""


def score_names(langs: list[str]) -> list[str]:
    """The headline figures of the results table, named by language."""
    return ["tu", *(f"npmi_{lang}" for lang in langs), *(f"npmi0_{lang}" for lang in langs), "tq",
            "dict_alignment", *(f"clf_intra_{lang}" for lang in langs), *(f"clf_cross_{lang}" for lang in langs)]


class Data:
    """The stream, the test split and the dataset's BoW, cut to the same documents."""

    def __init__(self, root: Path, per_lang_train: int | None, per_lang_test: int | None) -> None:
        self.root = root
        self.langs = discover_languages(root)
        stream = load_stream(root, langs=self.langs)
        if per_lang_train is not None:   # interleaved: the first n of each language
            stream = stream.take(len(self.langs) * per_lang_train)
        self.stream = stream
        langs = np.asarray(stream.langs)
        self.train_rows = {lang: np.flatnonzero(langs == lang) for lang in self.langs}
        self.train_labels = {lang: stream.labels[rows] for lang, rows in self.train_rows.items()}
        self.test_texts, self.test_labels, self.test_emb, self.train_bow, self.test_bow, self.vocab = {}, {}, {}, {}, {}, {}
        for lang in self.langs:
            texts, labels, emb = load_split("test", lang, root)
            n_test = len(texts) if per_lang_test is None else per_lang_test
            self.test_texts[lang], self.test_labels[lang], self.test_emb[lang] = texts[:n_test], labels[:n_test], emb[:n_test]
            f = file_code(lang, root)
            n_train = len(self.train_rows[lang])
            if not np.array_equal(stream.index[self.train_rows[lang]], np.arange(n_train)):
                raise ValueError("stream rows of a language are not the split's first rows in order")
            self.train_bow[lang] = sp.load_npz(root / f"train_bow_matrix_{f}.npz").tocsr()[:n_train]
            self.test_bow[lang] = sp.load_npz(root / f"test_bow_matrix_{f}.npz").tocsr()[:n_test]
            self.vocab[lang] = read_lines(root / f"vocab_{f}")
        self.test_tokens = {lang: [t.split() for t in self.test_texts[lang]] for lang in self.langs}
        #: NPMI reference of the zero convention: every text of the language (train + test) in use.
        self.full_tokens = {lang: [stream.texts[i].split() for i in self.train_rows[lang]] + self.test_tokens[lang]
                            for lang in self.langs}

    def train_embeddings(self, lang: str) -> np.ndarray:
        return self.stream.embeddings[self.train_rows[lang]]

    def sizes(self) -> dict:
        return {"train": {lang: int(len(r)) for lang, r in self.train_rows.items()},
                "test": {lang: len(t) for lang, t in self.test_texts.items()}}


# -- the systems ----------------------------------------------------------------------------------------
def run_raw_embeddings(data: Data, args) -> dict:
    """The ceiling: the classifier on the embeddings themselves."""
    theta = {lang: (data.train_embeddings(lang), data.test_emb[lang]) for lang in data.langs}
    return {"theta": theta, "fit_seconds": 0.0, "theta_kind": "the 512-d sentence embedding"}


def run_kmeans(data: Data, args) -> tuple[dict, dict]:
    """The floor (soft memberships) and the k-means + c-TF-IDF topic model, on the same clusters."""
    from bench.baselines import cluster_centres, ctfidf, soft_memberships
    from xtream.model.quality import joint_kmeans

    emb = {lang: data.train_embeddings(lang) for lang in data.langs}
    started = time.perf_counter()
    labels = joint_kmeans(emb, n_clusters=NUM_TOPICS, n_init=3, seed=args.seed)
    centres = cluster_centres(emb, labels, NUM_TOPICS)
    theta = {lang: (soft_memberships(emb[lang], centres), soft_memberships(data.test_emb[lang], centres))
             for lang in data.langs}
    seconds = time.perf_counter() - started
    topic_word = {lang: ctfidf(data.train_bow[lang], labels[lang], NUM_TOPICS) for lang in data.langs}
    soft = {"theta": theta, "fit_seconds": seconds, "theta_kind": f"cosine to {NUM_TOPICS} joint k-means centres"}
    return soft, soft | {"topic_word": topic_word, "vocab": dict(data.vocab),
                         "ctfidf_seconds": time.perf_counter() - started - seconds,
                         "topic_word_kind": "per-language c-TF-IDF of the k-means clusters"}


def run_xtream_stream(data: Data, args) -> dict:
    from xtream.model.online import OnlineTopicModel
    from xtream.model.text import Tokenizer

    d = service_defaults()
    s, tokenizer = data.stream, Tokenizer()
    tokens = tokenizer.tokenize_many(s.texts, s.langs)
    cfg = warmup_within(d["online"], len(tokens), STREAM_WARMUP_SHARE)
    model = OnlineTopicModel(cfg, 512, embed_words=VocabularyWordEmbedder(data.root))
    batch, every, steps = d["batch"], d["train_every_docs"], d["train_steps"]
    since = 0
    started = time.perf_counter()
    for i in range(0, len(tokens), batch):
        tok, x, lg = tokens[i:i + batch], s.embeddings[i:i + batch], s.langs[i:i + batch]
        model.learn_many(tok, x, lg)
        _, theta = model.predict_many(tok, x, lg)
        model.observe_topics(theta, lg)
        since += len(tok)
        if model.is_initialised and since >= every:
            since = 0
            model.train(steps)
    seconds = time.perf_counter() - started
    _, theta_stream = model.predict_many(tokens, s.embeddings, s.langs)
    theta = {}
    for lang in data.langs:
        test_tok = tokenizer.tokenize_many(data.test_texts[lang], lang)
        _, th_test = model.predict_many(test_tok, data.test_emb[lang], [lang] * len(test_tok))
        theta[lang] = (theta_stream[data.train_rows[lang]], th_test)
    return {"topic_word": {lang: model.topic_distribution(lang) for lang in data.langs},
            "vocab": {lang: model.vocabs[lang].words for lang in data.langs}, "theta": theta,
            "fit_seconds": seconds, "docs_per_s": len(tokens) / seconds, "steps_per_slice": steps,
            "train_every_docs": every, "train_steps": model.trainer.steps if model.trainer else 0,
            "warmup_docs": model.cfg.warmup_docs,
            "vocab_size": {lang: len(model.vocabs[lang]) for lang in data.langs},
            "centres": model.kmeans.centers.copy(),
            "theta_kind": "predict_many: XTRA encoder theta" + (
                f" blended with the cluster memberships (weight {model.cfg.theta_cluster_weight}, temperature "
                f"{model.cfg.theta_cluster_temperature})" if model.cfg.theta_cluster_weight > 0 else "")}


def run_xtream_offline(data: Data, args) -> dict:
    import torch

    from bench.baselines import cluster_centres
    from xtream.model.quality import fit_xtra, joint_kmeans
    from xtream.model.training import LanguageCorpus, infer_theta

    emb = {lang: data.train_embeddings(lang) for lang in data.langs}
    words = VocabularyWordEmbedder(data.root)
    started = time.perf_counter()
    clusters = joint_kmeans(emb, n_clusters=50, n_init=3, seed=args.seed)
    corpora = {lang: LanguageCorpus(data.train_bow[lang], emb[lang], clusters[lang]) for lang in data.langs}
    trained = fit_xtra(corpora, epochs=args.epochs, num_topics=NUM_TOPICS, seed=args.seed,
                       word_embeddings={lang: words(data.vocab[lang]) for lang in data.langs}, progress=False)
    seconds = time.perf_counter() - started
    model = trained.model
    theta = {lang: (infer_theta(model, data.train_bow[lang], lang), infer_theta(model, data.test_bow[lang], lang))
             for lang in data.langs}
    with torch.no_grad():
        topic_word = {lang: model.topic_word(lang).numpy() for lang in data.langs}
    return {"topic_word": topic_word, "vocab": dict(data.vocab), "theta": theta, "fit_seconds": seconds,
            "centres": cluster_centres(emb, clusters, NUM_TOPICS),
            "train_seconds": trained.train_seconds, "epochs": args.epochs,
            "final_loss": float(trained.history[-1]["total"]), "theta_kind": "XTRA encoder theta (infer_theta)"}


def blended(result: dict, data: Data) -> dict:
    """The same fit, theta mixed with the cluster memberships as the service's ``predict_many`` mixes it."""
    from xtream.model.readout import blend_theta, cluster_memberships

    cfg = service_defaults()["online"]
    theta = {}
    for lang in data.langs:
        member = (cluster_memberships(x, result["centres"], cfg.theta_cluster_temperature)
                  for x in (data.train_embeddings(lang), data.test_emb[lang]))
        theta[lang] = tuple(blend_theta(th, m, cfg.theta_cluster_weight) for th, m in zip(result["theta"][lang], member))
    return result | {"theta": theta, "theta_kind": f"XTRA theta blended with the cluster memberships "
                                                   f"(weight {cfg.theta_cluster_weight}, temperature "
                                                   f"{cfg.theta_cluster_temperature})"}


def run_bertopic(data: Data, args) -> tuple[dict, dict]:
    from bench.cost import make_bertopic
    from xtream.model.text import Tokenizer

    scripts = [lang for lang in data.langs if lang in ("zh", "ja", "ko")]
    if len(data.langs) != 2 or len(scripts) != 1:
        raise SystemSkipped(f"BERTopic's one vocabulary is split into languages by script, which needs one CJK "
                            f"and one other language; this dataset has {data.langs}")
    pair = (next(lang for lang in data.langs if lang not in scripts), scripts[0])
    s = data.stream
    tokenizer = Tokenizer()
    docs = [" ".join(t) for t in tokenizer.tokenize_many(s.texts, s.langs)]
    emb = s.embeddings.astype(np.float64)
    model = make_bertopic(args.seed)
    started = time.perf_counter()
    for i in range(0, len(docs), args.bertopic_batch):
        model.partial_fit(docs[i:i + args.bertopic_batch], embeddings=emb[i:i + args.bertopic_batch])
    seconds = time.perf_counter() - started
    k = model.c_tf_idf_.shape[0] - model._outliers
    vocab = list(model.vectorizer_model.get_feature_names_out())
    ctfidf = model.c_tf_idf_.toarray()[model._outliers:]
    sides = split_by_script(ctfidf, vocab, pair)
    test_docs = {lang: [" ".join(t) for t in tokenizer.tokenize_many(data.test_texts[lang], lang)] for lang in data.langs}

    def onehot(topics) -> np.ndarray:
        topics = np.asarray(topics)
        out = np.zeros((len(topics), k), np.float32)
        ok = (topics >= 0) & (topics < k)
        out[np.flatnonzero(ok), topics[ok]] = 1.0
        return out

    started = time.perf_counter()
    theta, theta_approx = {}, {}
    for lang in data.langs:
        rows = data.train_rows[lang]
        train_docs = [docs[i] for i in rows]
        tr, _ = model.transform(train_docs, embeddings=emb[rows])
        te, _ = model.transform(test_docs[lang], embeddings=data.test_emb[lang].astype(np.float64))
        theta[lang] = (onehot(tr), onehot(te))
        if args.bertopic_approx:
            a_tr, _ = model.approximate_distribution(train_docs)
            a_te, _ = model.approximate_distribution(test_docs[lang])
            theta_approx[lang] = (np.asarray(a_tr, np.float32), np.asarray(a_te, np.float32))
    infer_seconds = time.perf_counter() - started
    import bertopic

    base = {"topic_word": {lang: m for lang, (m, _) in sides.items()},
            "vocab": {lang: v for lang, (_, v) in sides.items()}, "fit_seconds": seconds,
            "docs_per_s": len(data.stream.texts) / seconds, "infer_seconds": infer_seconds, "topics": int(k), "batch": args.bertopic_batch,
            "vocab_size": {lang: len(v) for lang, (_, v) in sides.items()}, "version": bertopic.__version__}
    one = base | {"theta": theta, "theta_kind": "one-hot topic of transform()"}
    approx = base | {"theta": theta_approx, "theta_kind": "approximate_distribution() (c-TF-IDF token windows)"}
    return one, approx


def import_infoctm():
    """topmost's InfoCTM class without running ``topmost/__init__`` (it imports torchvision,
    gensim and fastopic, none of which InfoCTM uses)."""
    spec = importlib.util.find_spec("topmost")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("topmost is not installed: pip install --no-deps 'topmost==1.0.2' (see bench/README.md)")
    if "topmost" not in sys.modules:
        pkg = types.ModuleType("topmost")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["topmost"] = pkg
    from topmost.models.crosslingual.InfoCTM.InfoCTM import InfoCTM

    return InfoCTM


def run_infoctm(data: Data, args) -> dict:
    import torch

    from xtream.model.evaluation import load_bilingual_dictionary

    if data.langs != ["en", "zh"] or not args.dictionary.is_file():
        raise SystemSkipped(f"InfoCTM here is wired for English-Chinese with the zh-en dictionary "
                            f"({args.dictionary}); this dataset has {data.langs}")
    InfoCTM = import_infoctm()
    vocab_en, vocab_zh = data.vocab["en"], data.vocab["zh"]
    en_id = {w: i for i, w in enumerate(vocab_en)}
    zh_id = {w: i for i, w in enumerate(vocab_zh)}
    trans_e2c = np.zeros((len(vocab_en), len(vocab_zh)), dtype=np.float32)
    for zh, en in load_bilingual_dictionary(args.dictionary):   # lines are zh<TAB>en, as topmost parses them
        if zh in zh_id and en in en_id:
            trans_e2c[en_id[en], zh_id[zh]] = 1.0
    we = {lang: sp.load_npz(data.root / f"word2vec_{file_code(lang, data.root)}.npz").toarray().astype(np.float32)
          for lang in data.langs}
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model = InfoCTM(trans_e2c, we["en"], we["zh"], len(vocab_en), len(vocab_zh), num_topics=50)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.002)
    bow = {lang: data.train_bow[lang].astype(np.float32) for lang in data.langs}
    n = {lang: bow[lang].shape[0] for lang in data.langs}
    size, batch = max(n.values()), 200
    dense = lambda m, idx: torch.from_numpy(m[idx].toarray())  # noqa: E731
    epochs = args.infoctm_epochs
    started = time.perf_counter()
    losses = []
    for epoch in range(epochs):
        model.train()
        order = rng.permutation(size)
        total = 0.0
        for i in range(0, size, batch):
            idx = order[i:i + batch]
            if len(idx) < 2:      # BatchNorm needs two rows (topmost's loader would crash on one)
                continue
            loss = model(dense(bow["en"], idx % n["en"]), dense(bow["zh"], idx % n["zh"]))["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss)
        losses.append(total / size)
        logger.info("InfoCTM epoch %d/%d: loss %.3f (%.0f s)", epoch + 1, epochs, losses[-1], time.perf_counter() - started)
    seconds = time.perf_counter() - started
    model.eval()

    def theta_of(m: sp.csr_matrix, lang: str) -> np.ndarray:
        with torch.no_grad():
            return np.concatenate([model.get_theta(torch.from_numpy(m[i:i + 2048].toarray().astype(np.float32)),
                                                   "en" if lang == "en" else "cn").numpy()
                                   for i in range(0, m.shape[0], 2048)])

    theta = {lang: (theta_of(data.train_bow[lang], lang), theta_of(data.test_bow[lang], lang)) for lang in data.langs}
    with torch.no_grad():
        beta_en, beta_zh = (b.numpy() for b in model.get_beta())
    return {"topic_word": {"en": beta_en, "zh": beta_zh}, "vocab": dict(data.vocab), "theta": theta,
            "fit_seconds": seconds, "epochs": epochs, "seconds_per_epoch": seconds / max(epochs, 1),
            "final_loss": losses[-1] if losses else None, "dictionary_pairs_in_vocab": int(trans_e2c.sum()),
            "theta_kind": "encoder mean (topmost infer_theta, eval mode)"}


# -- scoring -------------------------------------------------------------------------------------------
def score(result: dict, data: Data, dictionary) -> dict:
    from xtream.model.evaluation import top_words
    from xtream.model.quality import quality_metrics

    started = time.perf_counter()
    clf = {lang: (result["theta"][lang][0], data.train_labels[lang], result["theta"][lang][1], data.test_labels[lang])
           for lang in data.langs}
    if "topic_word" not in result:   # a baseline without topics: classification only
        metrics = quality_metrics({}, {}, {}, classification=clf)
        metrics["eval_seconds"] = time.perf_counter() - started
        return metrics
    metrics = quality_metrics(result["topic_word"], result["vocab"], data.test_tokens, dictionary=dictionary,
                              dictionary_langs=("en", "zh") if dictionary is not None else None,
                              classification=clf, full_reference=data.full_tokens)
    metrics["eval_seconds"] = time.perf_counter() - started
    metrics["top_words"] = {lang: [" ".join(t) for t in top_words(np.asarray(result["topic_word"][lang]),
                                                                  result["vocab"][lang], n=10)[:10]]
                            for lang in data.langs}
    return metrics


#: glibc keeps freed large blocks for reuse instead of unmapping them and faulting fresh pages in
#: on the next allocation. InfoCTM allocates several 5,000 x 5,000 tensors per step; with these its
#: step took 1.3 s instead of 2.6 s here. Set for every system's child alike.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "17179869184",
              "MALLOC_TOP_PAD_": "1073741824"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DATA, help="dataset folder (default: EC News)")
    p.add_argument("--dictionary", type=Path, default=None,
                   help="zh<TAB>en dictionary for InfoCTM and dict_alignment (default <data>/../dict/zh_en.tsv)")
    p.add_argument("--quick", action="store_true",
                   help=f"{QUICK_TRAIN} train + {QUICK_TEST} test docs per language, 2 epochs")
    p.add_argument("--epochs", type=int, default=None, help="offline XTRA epochs (default 10; 2 quick)")
    p.add_argument("--infoctm-epochs", type=int, default=None, help="InfoCTM epochs (default 3; 1 quick): one step takes ~1.3 s on one thread here, 200 steps an epoch")
    p.add_argument("--bertopic-batch", type=int, default=1000, help="documents per partial_fit (its docs' example)")
    p.add_argument("--no-bertopic-approx", dest="bertopic_approx", action="store_false",
                   help="skip the approximate_distribution theta of BERTopic")
    p.add_argument("--threads", type=int, default=1, help="torch/BLAS/OpenMP/numba threads (default 1)")
    p.add_argument("--only", default=",".join(SYSTEMS), help="comma-separated subset of " + ",".join(SYSTEMS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cadences", default="0,2,5",
                   help="extra xtream_stream runs with these gradient steps per slice (the default is 10 "
                        "per 512 documents): the cost/quality trade-off of online training; '' for none")
    p.add_argument("--out", type=Path, default=None, help="default bench/results/quality_peers[_quick].json")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.epochs = args.epochs or (2 if args.quick else 10)
    args.dictionary = args.dictionary or args.data.parent / "dict" / "zh_en.tsv"
    args.infoctm_epochs = args.infoctm_epochs or (1 if args.quick else 3)
    args.only = [x.strip() for x in args.only.split(",") if x.strip()]
    try:
        args.cadences = [int(x) for x in args.cadences.split(",") if x.strip()]
    except ValueError:
        p.error(f"--cadences must be comma-separated integers, got {args.cadences!r}")
    if any(c < 0 for c in args.cadences):
        p.error("--cadences must be >= 0")
    if unknown := [x for x in args.only if x not in SYSTEMS]:
        p.error(f"unknown systems {unknown}; choose from {SYSTEMS}")
    if args.threads < 1 or args.epochs < 1 or args.infoctm_epochs < 1 or args.bertopic_batch < 50:
        p.error("--threads, --epochs, --infoctm-epochs must be >= 1 and --bertopic-batch >= 50")
    return args


def worker(name: str, args: argparse.Namespace) -> dict:
    """Fit and score one system in this process; returns {system name: figures}."""
    from xtream.model.evaluation import load_bilingual_dictionary

    pin_threads(args.threads)
    data = Data(args.data, QUICK_TRAIN if args.quick else None, QUICK_TEST if args.quick else None)
    dictionary = None
    if {"en", "zh"} <= set(data.langs) and args.dictionary.is_file():
        dictionary = load_bilingual_dictionary(args.dictionary, reverse=True)
    logger.info("%s on %s", name, data.sizes())
    results = {}

    def record(key: str, result: dict) -> None:
        metrics = score(result, data, dictionary)
        keep = {k: v for k, v in result.items() if k not in ("topic_word", "vocab", "theta", "centres")}
        results[key] = {**{k: v for k, v in metrics.items() if k != "top_words"}, **keep,
                        "top_words": metrics.get("top_words"), "peak_rss_mib": peak_rss_mib()}
        logger.info("%s: %s", key, {k: round(results[key][k], 4) for k in score_names(data.langs) if k in results[key]})

    if name == "raw_embeddings":
        record(name, run_raw_embeddings(data, args))
    elif name == "kmeans":
        soft, topics = run_kmeans(data, args)
        record("kmeans_soft", soft)
        record("kmeans_ctfidf", topics)
    elif name == "xtream_stream":
        cadence = os.environ.get("XTREAM_MODEL__TRAIN_STEPS")
        record(name if cadence is None else f"xtream_stream_steps{cadence}", run_xtream_stream(data, args))
    elif name == "xtream_offline":
        offline = run_xtream_offline(data, args)
        record(name, offline)
        record("xtream_offline_blend", blended(offline, data))
    elif name == "bertopic_online":
        one, approx = run_bertopic(data, args)
        record(name, one)
        if args.bertopic_approx:
            record("bertopic_online_approx", approx)
    elif name == "infoctm":
        record(name, run_infoctm(data, args))
    return {"systems": results, "data": data.sizes(), "langs": data.langs}


def _child(name: str, args: argparse.Namespace, argv: list[str], train_steps: int | None = None) -> dict:
    """Run one system in a child process (own memory, the malloc settings above).

    ``train_steps`` overrides the service's gradient steps per slice the way an operator would,
    through its environment variable.
    """
    env = dict(os.environ) | MALLOC_ENV
    env.pop("XTREAM_MODEL__TRAIN_STEPS", None)
    if train_steps is not None:
        env["XTREAM_MODEL__TRAIN_STEPS"] = str(train_steps)
    cmd = [sys.executable, "-m", "bench.quality_peers", *argv, "--worker", name]
    started = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None, text=True, env=env, check=False)
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode} after {time.perf_counter() - started:.0f} s (its stderr is above)"}
    lines = [line for line in proc.stdout.strip().splitlines() if line.startswith("{")]
    return json.loads(lines[-1])


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    setup_logging()
    if args.worker:
        try:
            out = worker(args.worker, args)
        except ImportError as exc:     # a peer that is not installed is reported, not fatal
            out = {"skipped": f"ImportError: {exc}"}
        except SystemSkipped as exc:
            out = {"skipped": str(exc)}
        emit(out)
        return out
    started = time.perf_counter()
    dataset = args.data.resolve().name
    out = args.out or RESULTS / f"quality_peers{'' if dataset == 'ecnews' else '_' + dataset}{'_quick' if args.quick else ''}.json"
    results: dict[str, dict] = {}
    skipped: dict[str, str] = {}
    sizes: dict = {}
    langs = discover_languages(args.data)

    def summary() -> dict:
        return {"benchmark": "quality_peers", "dataset": dataset, "langs": langs, "quick": args.quick, "threads": args.threads, "seed": args.seed,
                "epochs_xtra_offline": args.epochs, "epochs_infoctm": args.infoctm_epochs,
                "bertopic_batch": args.bertopic_batch, "data": sizes, "embedder": "use-multilingual-v3",
                "npmi_reference": "test texts of the same language (npmi_*, pairs never together = -1); "
                                  "train + test texts in use (npmi0_*, pairs never together = 0)", "classifier": "sklearn SVC() (RBF)",
                "cadences": args.cadences, "malloc_env": MALLOC_ENV, "systems": results, "skipped": skipped}

    runs = [(name, None) for name in args.only]
    if "xtream_stream" in args.only:
        runs += [("xtream_stream", steps) for steps in args.cadences]
    for name, steps in runs:
        logger.info("system %s%s (child process)", name, "" if steps is None else f", {steps} steps per slice")
        r = _child(name, args, argv, steps)
        if "systems" in r:
            results.update(r["systems"])
            sizes = r["data"]
        else:
            key = name if steps is None else f"xtream_stream_steps{steps}"
            skipped[key] = r.get("skipped") or r.get("error", "no result")
            logger.warning("%s: %s", key, skipped[key])
        write_json(out, {"summary": summary(), "partial": True})
    scores = score_names(langs)
    rows = [[name, *[m.get(k) for k in scores], m.get("fit_seconds"), m.get("docs_per_s")] for name, m in results.items()]
    print_table(f"Topic quality on {dataset} (test split; {args.threads} thread(s))",
                ["system", *scores, "fit s", "docs/s"], rows)
    final = summary() | {"total_seconds": round(time.perf_counter() - started, 1)}
    write_json(out, {"summary": final})
    logger.info("results written to %s", out)
    emit({**final, "systems": {n: {k: v for k, v in m.items() if k != "top_words"} for n, m in results.items()}})
    return final


if __name__ == "__main__":
    main()
