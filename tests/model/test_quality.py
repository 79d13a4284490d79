"""Specifications for model.quality: caching, joint clustering, training wrapper, metrics bundle.

Everything runs on tiny synthetic corpora with planted topics, so each test takes seconds on one
CPU core and the expected outcome is known in advance.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.metrics import adjusted_rand_score

from xtream.model.embedding import Embedder
from xtream.model.quality import (
    PAPER_SETTINGS,
    QualityError,
    cache_file,
    content_key,
    embed_cached,
    fit_xtra,
    joint_kmeans,
    quality_metrics,
    topic_top_words,
)
from xtream.model.training import LanguageCorpus, infer_theta

K, WORDS_PER_TOPIC, DIM = 3, 10, 16
LANGS = ("en", "zh")


class CountingEmbedder(Embedder):
    """Deterministic fake: a text's vector depends only on its characters; counts its calls."""

    name = "fake/embedder v1"
    dim = 4

    def __init__(self) -> None:
        self.calls = 0

    def _encode(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        return np.array([[len(t) + 1.0, sum(map(ord, t)) % 7 + 1.0, 1.0, t.count("a") + 0.5] for t in texts])


def planted_corpus(n_docs: int = 240, seed: int = 0):
    """Two languages sharing K planted topics: words, documents, embeddings and a dictionary.

    Word i of topic t is ``{lang}_t{t}_w{i}`` in both languages, and the dictionary links the
    zh word to the en word with the same (t, i). Documents draw 12 words from one topic;
    sentence embeddings are the topic's centre plus noise, in a space shared by both languages.
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(K, DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    vocabs = {lang: [f"{lang}_t{t}_w{i}" for t in range(K) for i in range(WORDS_PER_TOPIC)] for lang in LANGS}
    out = {}
    for lang in LANGS:
        topic = rng.integers(0, K, size=n_docs)
        words = topic[:, None] * WORDS_PER_TOPIC + rng.integers(0, WORDS_PER_TOPIC, size=(n_docs, 12))
        rows = np.repeat(np.arange(n_docs), 12)
        bow = sp.csr_matrix((np.ones(rows.size), (rows, words.ravel())), shape=(n_docs, K * WORDS_PER_TOPIC))
        emb = centres[topic] + 0.2 * rng.normal(size=(n_docs, DIM))
        word_emb = np.repeat(centres, WORDS_PER_TOPIC, axis=0) + 0.1 * rng.normal(size=(K * WORDS_PER_TOPIC, DIM))
        tokens = [[vocabs[lang][j] for j in row] for row in words]
        out[lang] = {"bow": bow, "topic": topic, "emb": emb.astype(np.float32), "tokens": tokens,
                     "word_emb": word_emb.astype(np.float32)}
    dictionary = frozenset((f"zh_t{t}_w{i}", f"en_t{t}_w{i}") for t in range(K) for i in range(WORDS_PER_TOPIC))
    return out, vocabs, dictionary


# ------------------------------------------------------------------------------- embeddings cache
def test_embed_cached_writes_then_reads_the_cache(tmp_path):
    emb, texts = CountingEmbedder(), ["alpha", "beta", "gamma"]
    path = cache_file("set-a", emb.name, tmp_path)
    assert path.parent == tmp_path and "/" not in path.name[:-4] and " " not in path.name
    first = embed_cached(emb, texts, path, chunk_size=2, progress=False)
    assert emb.calls == 2 and path.is_file()  # 2 chunks of at most 2 texts
    again = embed_cached(emb, texts, path, progress=False)
    assert emb.calls == 2  # served from the cache
    np.testing.assert_array_equal(first, again)
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, rtol=1e-6)


def test_embed_cached_ignores_a_cache_of_other_shape(tmp_path):
    emb = CountingEmbedder()
    path = cache_file("set-b", emb.name, tmp_path)
    embed_cached(emb, ["a", "b"], path, progress=False)
    out = embed_cached(emb, ["a", "b", "c"], path, progress=False)
    assert out.shape == (3, 4) and emb.calls == 2 and np.load(path).shape == (3, 4)


def test_content_key_follows_the_texts():
    assert content_key("x", ["a", "b"]) == content_key("x", ["a", "b"])
    assert content_key("x", ["a", "b"]) != content_key("x", ["ab"])


# ------------------------------------------------------------------------------- joint clustering
def test_joint_kmeans_gives_both_languages_the_same_cluster_ids():
    data, _, _ = planted_corpus()
    labels = joint_kmeans({lang: data[lang]["emb"] for lang in LANGS}, n_clusters=K, n_init=2, seed=0)
    assert {lang: len(v) for lang, v in labels.items()} == {lang: len(data[lang]["emb"]) for lang in LANGS}
    truth = np.concatenate([data[lang]["topic"] for lang in LANGS])
    assert adjusted_rand_score(truth, np.concatenate([labels[lang] for lang in LANGS])) == pytest.approx(1.0)


def test_joint_kmeans_labels_are_cached_under_the_vectors_and_parameters(tmp_path):
    data, _, _ = planted_corpus()
    emb = {lang: data[lang]["emb"] for lang in LANGS}
    first = joint_kmeans(emb, n_clusters=K, n_init=2, seed=0, cache_dir=tmp_path)
    [cached] = tmp_path.glob("kmeans-*.npy")
    np.save(cached, np.zeros(sum(len(e) for e in emb.values()), np.int64))  # a cache hit must be read, not recomputed
    assert all((v == 0).all() for v in joint_kmeans(emb, n_clusters=K, n_init=2, seed=0, cache_dir=tmp_path).values())
    again = joint_kmeans(emb, n_clusters=K, n_init=2, seed=1, cache_dir=tmp_path)   # other parameters, other entry
    assert len(list(tmp_path.glob("kmeans-*.npy"))) == 2
    assert adjusted_rand_score(np.concatenate(list(first.values())), np.concatenate(list(again.values()))) == pytest.approx(1.0)


def test_joint_kmeans_rejects_too_few_documents():
    with pytest.raises(QualityError):
        joint_kmeans({"en": np.ones((2, 3))}, n_clusters=5)


# ------------------------------------------------------------------------------- metrics bundle
def test_quality_metrics_returns_every_key_in_range():
    data, vocabs, dictionary = planted_corpus(n_docs=90)
    rng = np.random.default_rng(1)
    topic_word = {lang: rng.random((K, K * WORDS_PER_TOPIC)) for lang in LANGS}
    clf = {}
    for lang in LANGS:
        theta = np.eye(K)[data[lang]["topic"]] + 0.3 * rng.random((90, K))
        clf[lang] = (theta[:60], data[lang]["topic"][:60], theta[60:], data[lang]["topic"][60:])
    m = quality_metrics(topic_word, vocabs, {lang: data[lang]["tokens"] for lang in LANGS},
                        dictionary=dictionary, dictionary_langs=("zh", "en"), classification=clf,
                        tu_top=5, npmi_top=5, dict_top=5)
    expected = {"tu", "npmi_en", "npmi_zh", "dict_alignment"} | {
        f"clf_{kind}_{lang}{suffix}" for kind in ("intra", "cross") for lang in LANGS for suffix in ("", "_f1")}
    assert set(m) == expected
    assert 1 / K <= m["tu"] <= 1
    assert all(-1 <= m[f"npmi_{lang}"] <= 1 for lang in LANGS)
    assert all(0 <= m[k] <= 1 for k in expected if k.startswith(("clf_", "dict_")))
    assert m["clf_intra_en"] > 0.9 and m["clf_cross_zh"] > 0.9  # theta carries the planted topic


def test_quality_metrics_scores_planted_topics_as_perfect():
    data, vocabs, dictionary = planted_corpus(n_docs=90)
    planted = np.kron(np.eye(K), np.ones(WORDS_PER_TOPIC)) + 1e-3 * np.arange(K * WORDS_PER_TOPIC)[::-1]
    m = quality_metrics({lang: planted for lang in LANGS}, vocabs, {lang: data[lang]["tokens"] for lang in LANGS},
                        dictionary=dictionary, dictionary_langs=("zh", "en"), tu_top=10, npmi_top=10, dict_top=10)
    assert m["tu"] == pytest.approx(1.0)
    assert m["dict_alignment"] == pytest.approx(1 / WORDS_PER_TOPIC)  # 10 linked pairs of 100 per topic


def test_quality_metrics_one_language_classification_has_no_cross_key():
    rng = np.random.default_rng(2)
    y = np.arange(40) % 2
    theta = np.eye(2)[y] + 0.1 * rng.random((40, 2))
    m = quality_metrics({"en": rng.random((2, 5))}, {"en": list("abcde")}, {},
                        classification={"en": (theta, y, theta, y)}, tu_top=2)
    assert m["clf_intra_en"] == 1.0 and not any(k.startswith("clf_cross") for k in m)


def test_quality_metrics_checks_dictionary_languages():
    with pytest.raises(QualityError):
        quality_metrics({"en": np.ones((2, 3))}, {"en": list("abc")}, {}, dictionary=frozenset(),
                        dictionary_langs=("zh", "en"), tu_top=2)


# ------------------------------------------------------------------------------- training
def test_fit_xtra_learns_planted_topics_in_30_steps():
    data, vocabs, dictionary = planted_corpus(n_docs=320)
    clusters = joint_kmeans({lang: data[lang]["emb"] for lang in LANGS}, n_clusters=K, n_init=1, seed=0)
    corpora = {lang: LanguageCorpus(data[lang]["bow"], data[lang]["emb"], clusters[lang]) for lang in LANGS}
    # 320 docs / batch 32 = 10 steps per epoch, 3 epochs = 30 steps; a small network keeps it fast
    trained = fit_xtra(corpora, epochs=3, num_topics=K, seed=0, progress=False, batch_size=32, lr=0.01,
                       projection_units=64, encoder_units=32,
                       word_embeddings={lang: data[lang]["word_emb"] for lang in LANGS})
    assert len(trained.history) == 3 and trained.epochs == 3 and trained.train_seconds > 0
    assert trained.history[-1]["total"] < trained.history[0]["total"]
    tops = topic_top_words(trained.model, vocabs, n=WORDS_PER_TOPIC)
    clf = {lang: (infer_theta(trained.model, corpora[lang].bow, lang), data[lang]["topic"],
                  infer_theta(trained.model, corpora[lang].bow, lang), data[lang]["topic"]) for lang in LANGS}
    topic_word = {lang: trained.model.topic_word(lang).detach().numpy() for lang in LANGS}
    m = quality_metrics(topic_word, vocabs, {lang: data[lang]["tokens"] for lang in LANGS}, dictionary=dictionary,
                        dictionary_langs=("zh", "en"), classification=clf, classifier="linear",
                        tu_top=WORDS_PER_TOPIC, npmi_top=5, dict_top=WORDS_PER_TOPIC)
    assert m["tu"] > 0.9, tops
    assert m["dict_alignment"] > 0.5 / WORDS_PER_TOPIC  # topic k means the same thing in both languages
    assert m["clf_cross_en"] > 0.9 and m["clf_cross_zh"] > 0.9


def test_fit_xtra_routes_settings_and_validates_epochs():
    data, _, _ = planted_corpus(n_docs=64)
    corpora = {lang: LanguageCorpus(data[lang]["bow"], data[lang]["emb"], data[lang]["topic"]) for lang in LANGS}
    trained = fit_xtra(corpora, epochs=1, num_topics=K, progress=False, batch_size=32, lambda_nce=0.0,
                       beta_alignment="learned_projection", projection_units=16, encoder_units=8)
    cfg = trained.model.cfg
    assert cfg.lambda_nce == 0.0 and cfg.lambda_cluster == PAPER_SETTINGS["lambda_cluster"]
    assert cfg.beta_alignment == "learned_projection" and "infonce" not in trained.history[0]
    with pytest.raises(QualityError):
        fit_xtra(corpora, epochs=0, num_topics=K)


def test_a_fit_resumed_from_its_checkpoint_ends_where_an_uninterrupted_fit_ends(tmp_path):
    data, _, _ = planted_corpus(n_docs=96)
    corpora = {lang: LanguageCorpus(data[lang]["bow"], data[lang]["emb"], data[lang]["topic"]) for lang in LANGS}
    small = {"progress": False, "batch_size": 32, "projection_units": 16, "encoder_units": 8,
             "num_topics": K, "checkpoint_every": 1}
    whole = fit_xtra(corpora, epochs=3, checkpoint=tmp_path / "whole.pt", **small)
    fit_xtra(corpora, epochs=1, checkpoint=tmp_path / "split.pt", **small)   # the run is stopped here...
    resumed = fit_xtra(corpora, epochs=3, checkpoint=tmp_path / "split.pt", **small)   # ...and started again
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    for lang in LANGS:
        assert torch.equal(resumed.model.betas[lang], whole.model.betas[lang])
    with pytest.raises(QualityError, match="other data or settings"):
        fit_xtra(corpora, epochs=3, checkpoint=tmp_path / "split.pt", **(small | {"lr": 0.01}))
    reclustered = {lang: LanguageCorpus(c.bow, c.embeddings, (c.clusters + 1) % K) for lang, c in corpora.items()}
    with pytest.raises(QualityError, match="other data or settings"):
        fit_xtra(reclustered, epochs=3, checkpoint=tmp_path / "split.pt", **small)
    with pytest.raises(QualityError, match="more than"):
        fit_xtra(corpora, epochs=2, checkpoint=tmp_path / "split.pt", **small)


def test_quality_metrics_full_reference_adds_zero_convention_npmi_and_tq():
    data, vocabs, _ = planted_corpus(n_docs=90)
    rng = np.random.default_rng(3)
    topic_word = {lang: rng.random((K, K * WORDS_PER_TOPIC)) for lang in LANGS}
    test = {lang: data[lang]["tokens"][60:] for lang in LANGS}
    full = {lang: data[lang]["tokens"] for lang in LANGS}
    m = quality_metrics(topic_word, vocabs, test, full_reference=full, tu_top=5, npmi_top=5)
    assert {"npmi0_en", "npmi0_zh", "npmi0", "tq"} <= set(m)
    for lang in LANGS:   # the zero convention never scores below the -1 one on the same reference
        minus_one = quality_metrics(topic_word, vocabs, {lang: full[lang]}, tu_top=5, npmi_top=5)[f"npmi_{lang}"]
        assert m[f"npmi0_{lang}"] >= minus_one
    assert m["npmi0"] == pytest.approx((m["npmi0_en"] + m["npmi0_zh"]) / 2)
    assert m["tq"] == pytest.approx(m["tu"] * m["npmi0"])


def test_quality_metrics_planted_topics_have_positive_tq():
    data, vocabs, _ = planted_corpus(n_docs=90)
    planted = np.kron(np.eye(K), np.ones(WORDS_PER_TOPIC)) + 1e-3 * np.arange(K * WORDS_PER_TOPIC)[::-1]
    m = quality_metrics({lang: planted for lang in LANGS}, vocabs, {},
                        full_reference={lang: data[lang]["tokens"] for lang in LANGS}, tu_top=10, npmi_top=10)
    assert m["tq"] > 0 and m["tq"] == pytest.approx(m["npmi0"])   # TU = 1


class _RunsCodeWhenUnpickled:
    """A pickle that calls ``os.mkdir(marker)`` when loaded."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.mkdir, (self.marker,)


def test_a_checkpoint_holding_a_pickled_callable_is_refused_and_never_run(tmp_path):
    data, _, _ = planted_corpus(n_docs=96)
    corpora = {lang: LanguageCorpus(data[lang]["bow"], data[lang]["emb"], data[lang]["topic"]) for lang in LANGS}
    marker = tmp_path / "code-ran"
    torch.save({"signature": _RunsCodeWhenUnpickled(marker), "trainer": {}, "train_seconds": 0.0},
               tmp_path / "evil.pt")
    with pytest.raises(QualityError, match="refused"):
        fit_xtra(corpora, epochs=1, checkpoint=tmp_path / "evil.pt", progress=False, batch_size=32,
                 projection_units=16, encoder_units=8, num_topics=K)
    assert not marker.exists(), "loading the checkpoint ran code from it"
