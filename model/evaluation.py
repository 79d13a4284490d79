"""Topic-model evaluation: the metrics of the cross-lingual topic-modelling papers (InfoCTM, XTRA).

Topic quality is judged by uniqueness (TU), monolingual coherence (NPMI), cross-lingual coherence
over a parallel corpus (CNPMI) and bilingual-dictionary alignment; document-topic vectors are judged
by intra- and cross-lingual classification. Everything here sees arrays and token lists only.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from collections.abc import Set as AbstractSet
from itertools import repeat
from pathlib import Path
from typing import Any, Literal, TypeAlias

import numpy as np
import scipy.sparse as sp
from sklearn.metrics import accuracy_score, f1_score
from sklearn.svm import SVC, LinearSVC

__all__ = [
    "top_words", "topic_uniqueness", "multilingual_topic_uniqueness", "topic_quality",
    "npmi_per_topic", "npmi_coherence", "cnpmi_per_topic", "cnpmi",
    "load_bilingual_dictionary", "dictionary_alignment",
    "classification_scores", "crosslingual_classification",
]

Topics = Sequence[Sequence[str]]
#: Token lists, or a sparse document-term matrix (``sp.sparray | sp.spmatrix``; scipy is untyped).
Docs: TypeAlias = Any
Dictionary = Mapping[str, Collection[str]] | AbstractSet[tuple[str, str]]


def top_words(beta: np.ndarray, vocab: Sequence[str], n: int = 15) -> list[list[str]]:
    """The ``n`` highest-weight words of each topic row of ``beta`` (K x V), best first.

    ``argpartition`` keeps it O(V) per topic; ties go to the lower vocabulary index, so the lists
    are deterministic (plain ``argpartition`` picks among tied words arbitrarily).

    >>> top_words(np.array([[0.1, 0.5, 0.4], [0.7, 0.1, 0.2]]), ["a", "b", "c"], n=2)
    [['b', 'c'], ['a', 'c']]
    """
    beta = np.asarray(beta, dtype=np.float64)
    if beta.ndim != 2 or beta.shape[1] != len(vocab):
        raise ValueError(f"beta must be K x {len(vocab)} (the vocab size), got shape {beta.shape}")
    if not 1 <= n <= beta.shape[1]:
        raise ValueError(f"n must be in [1, {beta.shape[1]}], got {n}")
    if not np.isfinite(beta).all():
        raise ValueError("beta contains NaN or infinite values")
    kth = np.argpartition(-beta, n - 1, axis=1)[:, n - 1 : n]
    thr = np.take_along_axis(beta, kth, axis=1)  # n-th largest weight of each topic
    above, tie = beta > thr, beta == thr
    # all words above the threshold, then the lowest-index tied words up to n
    keep = above | (tie & (np.cumsum(tie, axis=1) <= n - above.sum(axis=1, keepdims=True)))
    idx = np.nonzero(keep)[1].reshape(len(beta), n)  # ascending vocab index per topic
    order = np.argsort(-np.take_along_axis(beta, idx, axis=1), axis=1, kind="stable")
    return np.asarray(vocab, dtype=object)[np.take_along_axis(idx, order, axis=1)].tolist()


def _topic_index(topics: Topics, top_n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique words of the topics' top-``top_n`` lists and a K x N index (-1 pads)."""
    if top_n is not None and top_n < 1:
        raise ValueError(f"top_n must be >= 1, got {top_n}")
    if any(isinstance(t, str) for t in topics):
        raise ValueError("each topic must be a list of words, not a string")
    cut = [list(t[:top_n]) for t in topics]
    if not cut or any(len(t) == 0 for t in cut):
        raise ValueError("need at least one topic, and every topic needs at least one word")
    lens = np.fromiter(map(len, cut), dtype=np.intp, count=len(cut))
    flat = np.array([w for t in cut for w in t], dtype=str)
    words, inverse = np.unique(flat, return_inverse=True)
    idx = np.full((len(cut), lens.max()), -1, dtype=np.intp)
    rows = np.repeat(np.arange(len(cut)), lens)
    cols = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
    idx[rows, cols] = inverse
    return words, idx


def topic_uniqueness(top_words: Topics) -> float:
    """TU: mean over topics of the mean over its words of 1 / (occurrences across all topic lists).

    1.0 means no word is shared between topics; 1/K means all K topics list the same words.
    Pass the lists already cut to the top-T words (the papers use T = 15).

    >>> round(topic_uniqueness([["a", "b"], ["a", "c"], ["d", "e"]]), 4)
    0.8333
    """
    _, idx = _topic_index(top_words)
    valid = idx >= 0
    counts = np.bincount(idx[valid])
    inv_count = np.where(valid, 1.0 / counts[np.where(valid, idx, 0)], 0.0)
    return float(np.mean(inv_count.sum(axis=1) / valid.sum(axis=1)))


def multilingual_topic_uniqueness(top_words_by_lang: Mapping[str, Topics]) -> float:
    """Mean of the per-language TU; words of different languages never count as shared."""
    if not top_words_by_lang:
        raise ValueError("need top words for at least one language")
    return float(np.mean([topic_uniqueness(t) for t in top_words_by_lang.values()]))


def topic_quality(tu: float, npmi: float) -> float:
    """TQ = TU x NPMI, the single topic-quality figure the neural topic-model papers report.

    Pass NPMI with never-co-occurring pairs counted as 0 (their convention), so that TQ is 0 for
    topics whose words never meet and not a negative product that rewards duplicated topics.

    >>> topic_quality(0.9, 0.1)
    0.09000000000000001
    """
    if not 0.0 <= tu <= 1.0 or not -1.0 <= npmi <= 1.0:
        raise ValueError(f"need TU in [0, 1] and NPMI in [-1, 1], got {tu}, {npmi}")
    return float(tu * npmi)


def _presence(docs: Docs, words: np.ndarray, vocab: Sequence[str] | None) -> sp.csr_array:
    """Binary D x len(words) matrix: 1 where sorted ``words[j]`` occurs in document i."""
    if sp.issparse(docs):
        if vocab is None or docs.shape[1] != len(vocab) or docs.shape[0] == 0:
            raise ValueError("a sparse doc-term matrix needs rows and the vocab of its columns")
        col = {w: i for i, w in enumerate(vocab)}
        src = np.array([col.get(w, -1) for w in words], dtype=np.intp)
        known = np.flatnonzero(src >= 0)
        select = sp.csr_array((np.ones(known.size), (src[known], known)), (len(vocab), len(words)))
        return sp.csr_array((sp.csr_array(docs) != 0).astype(np.float64) @ select)
    if len(docs) == 0 or isinstance(docs[0], str):
        raise ValueError("reference docs must be a non-empty list of token lists (split strings)")
    lens = np.fromiter(map(len, docs), dtype=np.intp, count=len(docs))
    flat = np.array([t for d in docs for t in d], dtype=np.str_)
    pos = np.minimum(np.searchsorted(words, flat), len(words) - 1)
    hit = words[pos] == flat
    rows = np.repeat(np.arange(len(docs)), lens)[hit]
    x = sp.csr_array((np.ones(hit.sum()), (rows, pos[hit])), shape=(len(docs), len(words)))
    x.sum_duplicates()
    x.data[:] = 1.0  # presence only
    return x


def _npmi(joint: np.ndarray, df_a: np.ndarray, df_b: np.ndarray, n: int, zero: float) -> np.ndarray:
    """NPMI from document counts; ``zero`` where a pair never co-occurs, 1 where it always does."""
    with np.errstate(divide="ignore", invalid="ignore"):
        p_ab = joint / n
        score = np.log(p_ab / np.outer(df_a / n, df_b / n)) / -np.log(p_ab)
    return np.where(joint == 0, zero, np.where(joint == n, 1.0, score))


def _topic_means(scores: np.ndarray, idx_a: np.ndarray, idx_b: np.ndarray, known_a: np.ndarray,
                 known_b: np.ndarray, upper_only: bool) -> np.ndarray:
    """Mean of ``scores`` over each topic's valid (a, b) word pairs; NaN for a topic with none."""
    ok_a = (idx_a >= 0) & known_a[np.maximum(idx_a, 0)]
    ok_b = (idx_b >= 0) & known_b[np.maximum(idx_b, 0)]
    mask = ok_a[:, :, None] & ok_b[:, None, :]
    if upper_only:
        mask &= np.triu(np.ones((idx_a.shape[1],) * 2, dtype=bool), k=1)
    pair = scores[np.maximum(idx_a, 0)[:, :, None], np.maximum(idx_b, 0)[:, None, :]]
    counts = mask.sum(axis=(1, 2))
    sums = np.where(mask, pair, 0.0).sum(axis=(1, 2))
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _mean_of_topics(per_topic: np.ndarray) -> float:
    if np.isnan(per_topic).all():
        raise ValueError("no topic has a word pair that occurs in the reference corpus")
    return float(np.nanmean(per_topic))


def npmi_per_topic(
    top_words: Topics, reference_docs: Docs, top_n: int = 10, *,
    vocab: Sequence[str] | None = None, zero_cooccurrence: float = -1.0,
) -> np.ndarray:
    """Per-topic NPMI of the top-``top_n`` words against document co-occurrence in a reference.

    Each document is one window with boolean presence. NPMI(wi, wj) = log(P(wi,wj) / (P(wi)P(wj)))
    / -log P(wi,wj), averaged over all pairs i < j. Conventions: a pair that never co-occurs scores
    ``zero_cooccurrence`` (-1, the limit of NPMI as P(wi,wj) -> 0, Bouma 2009; gensim's c_npmi
    approximates it through an epsilon, while Lau et al.'s toolkit and the CNPMI script used by
    InfoCTM/XTRA score 0 -- pass 0.0 to match those); a pair in every document scores 1. Words that
    occur in no reference document (including words outside ``vocab``) are dropped before pairing;
    a topic left with fewer than two words is NaN. ``reference_docs`` is a list of token lists, or a
    sparse doc-term matrix whose column words are ``vocab``.
    """
    words, idx = _topic_index(top_words, top_n)
    x = _presence(reference_docs, words, vocab)
    joint = (x.T @ x).toarray()
    df = np.diag(joint).copy()
    scores = _npmi(joint, df, df, x.shape[0], zero_cooccurrence)
    return _topic_means(scores, idx, idx, df > 0, df > 0, upper_only=True)


def npmi_coherence(
    top_words: Topics, reference_docs: Docs, top_n: int = 10, *,
    vocab: Sequence[str] | None = None, zero_cooccurrence: float = -1.0,
) -> float:
    """Mean NPMI over topics (those with no scorable pair are left out); see ``npmi_per_topic``."""
    return _mean_of_topics(npmi_per_topic(
        top_words, reference_docs, top_n, vocab=vocab, zero_cooccurrence=zero_cooccurrence
    ))


def cnpmi_per_topic(
    top_words_a: Topics, top_words_b: Topics, parallel_docs_a: Docs, parallel_docs_b: Docs,
    top_n: int = 10, *, vocab_a: Sequence[str] | None = None, vocab_b: Sequence[str] | None = None,
    zero_cooccurrence: float = -1.0,
) -> np.ndarray:
    """Per-topic cross-lingual NPMI (Hao & Paul 2018) over aligned document pairs.

    For topic k, every pair (wi from a's top-N, wj from b's top-N) is scored with NPMI where
    P(wi, wj) is the share of aligned pairs (a_d, b_d) with wi in a_d and wj in b_d, and P(wi),
    P(wj) are document frequencies on each side; the N x N pairs are averaged. Conventions are
    those of ``npmi_per_topic`` (the InfoCTM/XTRA CNPMI script scores never-co-occurring pairs 0
    and keeps unseen words; pass ``zero_cooccurrence=0.0`` for the first).
    """
    if len(top_words_a) != len(top_words_b):
        raise ValueError(f"topic counts differ: {len(top_words_a)} vs {len(top_words_b)}")
    words_a, idx_a = _topic_index(top_words_a, top_n)
    words_b, idx_b = _topic_index(top_words_b, top_n)
    xa = _presence(parallel_docs_a, words_a, vocab_a)
    xb = _presence(parallel_docs_b, words_b, vocab_b)
    if xa.shape[0] != xb.shape[0]:
        raise ValueError(f"parallel corpora differ in length: {xa.shape[0]} vs {xb.shape[0]}")
    df_a, df_b = np.asarray(xa.sum(axis=0)).ravel(), np.asarray(xb.sum(axis=0)).ravel()
    scores = _npmi((xa.T @ xb).toarray(), df_a, df_b, xa.shape[0], zero_cooccurrence)
    return _topic_means(scores, idx_a, idx_b, df_a > 0, df_b > 0, upper_only=False)


def cnpmi(
    top_words_a: Topics, top_words_b: Topics, parallel_docs_a: Docs, parallel_docs_b: Docs,
    top_n: int = 10, *, vocab_a: Sequence[str] | None = None, vocab_b: Sequence[str] | None = None,
    zero_cooccurrence: float = -1.0,
) -> float:
    """Mean CNPMI over topics (those with no scorable pair left out); see ``cnpmi_per_topic``."""
    return _mean_of_topics(cnpmi_per_topic(
        top_words_a, top_words_b, parallel_docs_a, parallel_docs_b, top_n,
        vocab_a=vocab_a, vocab_b=vocab_b, zero_cooccurrence=zero_cooccurrence,
    ))


def load_bilingual_dictionary(
    path: str | Path, *, reverse: bool = False
) -> frozenset[tuple[str, str]]:
    """Read ``src<TAB>tgt`` lines into a set of (src, tgt) pairs; ``reverse`` gives (tgt, src).

    A set of pairs (not a dict of sets) because it builds in C-level passes (~0.3 s for the
    487k-line zh-en file); ``dictionary_alignment`` takes it with language a on the left, so load
    zh_en.tsv with ``reverse=True`` when language a is English. Blank lines are skipped.
    """
    with open(path, encoding="utf-8-sig") as f:
        lines = list(filter(None, f.read().splitlines()))
    pairs = list(map(tuple, map(str.split, lines, repeat("\t"))))
    if set(map(len, pairs)) - {2}:
        bad = next(i for i, p in enumerate(pairs) if len(p) != 2)
        raise ValueError(f"{path}: non-blank line {bad + 1} is not 'src<TAB>tgt': {lines[bad]!r}")
    return frozenset((b, a) if reverse else (a, b) for a, b in pairs)


def dictionary_alignment(
    top_words_a: Topics, top_words_b: Topics, dictionary: Dictionary, top_n: int = 15
) -> float:
    """Share of topic k's (wa, wb) top-word pairs that the dictionary links, averaged over topics.

    ``dictionary`` is a set of (word_a, word_b) pairs or a mapping word_a -> set of word_b, with
    language a on the left. Each topic contributes linked pairs / (N_a * N_b).
    """
    if len(top_words_a) != len(top_words_b) or not top_words_a:
        raise ValueError(
            f"need equal, non-zero topic counts: {len(top_words_a)} vs {len(top_words_b)}"
        )
    if top_n < 1:
        raise ValueError(f"top_n must be >= 1, got {top_n}")
    links = dictionary
    if isinstance(dictionary, Mapping):
        words_a = {w for t in top_words_a for w in t[:top_n]}
        links = {(a, b) for a in words_a for b in dictionary.get(a, ())}
    shares = []
    for ta, tb in zip(top_words_a, top_words_b):
        ta, tb = list(ta[:top_n]), list(tb[:top_n])
        if not ta or not tb:
            raise ValueError("every topic needs at least one word in both languages")
        shares.append(sum((a, b) in links for a in ta for b in tb) / (len(ta) * len(tb)))
    return float(np.mean(shares))


Classifier = Literal["svc", "linear"]


def _fit(theta: np.ndarray, y: np.ndarray, model: Classifier) -> SVC | LinearSVC:
    if model == "svc":
        return SVC().fit(theta, y)
    if model == "linear":
        return LinearSVC(dual="auto", random_state=0).fit(theta, y)
    raise ValueError(f"model must be 'svc' or 'linear', got {model!r}")


def _check_xy(theta: Any, y: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    theta, y = np.asarray(theta, dtype=np.float64), np.asarray(y).ravel()
    if theta.ndim != 2 or theta.shape[0] != y.shape[0] or theta.shape[0] == 0:
        raise ValueError(f"{what}: theta must be n x K with n = len(y) > 0, got {theta.shape}")
    return theta, y


def _scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
    }


def classification_scores(
    theta_train: Any, y_train: Any, theta_test: Any, y_test: Any, *, model: Classifier = "svc"
) -> dict[str, float]:
    """Accuracy and macro-F1 of an SVM trained on document-topic vectors.

    ``model="svc"`` is ``sklearn.svm.SVC()`` with defaults (RBF, gamma='scale'), the classifier of
    the InfoCTM/XTRA evaluation code, so numbers are comparable with the papers; it slows down
    sharply on overlapping classes. ``model="linear"`` is ``LinearSVC(dual="auto")``, for quick
    checks. Macro-F1 counts a class that is
    never predicted as F1 = 0.
    """
    x_tr, y_tr = _check_xy(theta_train, y_train, "train")
    x_te, y_te = _check_xy(theta_test, y_test, "test")
    if x_tr.shape[1] != x_te.shape[1]:
        raise ValueError(f"train and test theta differ in K: {x_tr.shape[1]} vs {x_te.shape[1]}")
    return _scores(y_te, _fit(x_tr, y_tr, model).predict(x_te))


def crosslingual_classification(
    theta_by_lang: Mapping[str, tuple[Any, ...]], *, model: Classifier = "svc"
) -> dict[str, dict[str, float]]:
    """Intra- and cross-lingual classification over a shared topic space.

    ``theta_by_lang[l] = (theta_train, y_train, theta_test, y_test)``. One classifier is trained
    per language and tested on every language. Keys, each mapping to accuracy and macro-F1:
    ``train_<a>_test_<b>`` for every ordered pair (a == b included); ``intra_<l>`` = trained and
    tested on l; ``cross_<l>`` = tested on l, trained on another language (the papers' "train on
    one language, test on the other"; with more than two languages, the mean over training
    languages != l).
    """
    if len(theta_by_lang) < 2:
        raise ValueError("cross-lingual classification needs at least two languages")
    data = {
        lang: (*_check_xy(v[0], v[1], f"{lang} train"), *_check_xy(v[2], v[3], f"{lang} test"))
        for lang, v in theta_by_lang.items()
    }
    if len({d[0].shape[1] for d in data.values()} | {d[2].shape[1] for d in data.values()}) != 1:
        raise ValueError("all languages must share the same number of topics K")
    out: dict[str, dict[str, float]] = {}
    for src, (x_tr, y_tr, _, _) in data.items():
        clf = _fit(x_tr, y_tr, model)
        for tgt, (_, _, x_te, y_te) in data.items():
            out[f"train_{src}_test_{tgt}"] = _scores(y_te, clf.predict(x_te))
    for lang in data:
        out[f"intra_{lang}"] = out[f"train_{lang}_test_{lang}"]
        cross = [out[f"train_{s}_test_{lang}"] for s in data if s != lang]
        out[f"cross_{lang}"] = {m: float(np.mean([c[m] for c in cross])) for m in cross[0]}
    return out
