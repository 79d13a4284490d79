"""Specifications for model.evaluation: hand-computed values, brute-force checks, directions."""

from __future__ import annotations

import math
from itertools import combinations, product

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import example, given, settings
from hypothesis import strategies as st

from xtream.model.evaluation import (
    classification_scores,
    cnpmi,
    cnpmi_per_topic,
    crosslingual_classification,
    dictionary_alignment,
    load_bilingual_dictionary,
    multilingual_topic_uniqueness,
    npmi_coherence,
    npmi_per_topic,
    top_words,
    topic_uniqueness,
)

# --------------------------------------------------------------------------- top words


def test_top_words_orders_best_first():
    beta = np.array([[0.10, 0.50, 0.30, 0.05, 0.05], [0.40, 0.01, 0.02, 0.07, 0.50]])
    assert top_words(beta, ["a", "b", "c", "d", "e"], n=3) == [["b", "c", "a"], ["e", "a", "d"]]


def test_top_words_matches_full_sort_and_breaks_ties_by_index():
    rng = np.random.default_rng(0)
    beta = rng.random((7, 300))
    vocab = [f"w{i}" for i in range(300)]
    expected = [[vocab[j] for j in np.argsort(-row, kind="stable")[:15]] for row in beta]
    assert top_words(beta, vocab, n=15) == expected
    assert top_words(np.ones((1, 4)), list("abcd"), n=2) == [["a", "b"]]


def test_top_words_ties_at_the_cut_go_to_the_lower_index():
    # rounding makes many tied weights, also at the n-th position, where argpartition alone
    # would pick arbitrary tied words
    beta = np.round(np.random.default_rng(1).random((6, 300)), 1)
    vocab = [f"w{i}" for i in range(300)]
    expected = [[vocab[j] for j in np.argsort(-row, kind="stable")[:7]] for row in beta]
    assert top_words(beta, vocab, n=7) == expected
    assert top_words(np.ones((1, 300)), vocab, n=3) == [["w0", "w1", "w2"]]


@pytest.mark.parametrize("n", [0, 6])
def test_top_words_rejects_bad_n(n):
    with pytest.raises(ValueError):
        top_words(np.ones((2, 5)), list("abcde"), n=n)


def test_top_words_rejects_vocab_mismatch():
    with pytest.raises(ValueError):
        top_words(np.ones((2, 5)), list("abcd"), n=2)


# --------------------------------------------------------------------------- topic uniqueness


def test_topic_uniqueness_hand_example():
    # counts: a=2, b=c=d=e=1 -> topic TUs (1/2+1)/2=0.75, 0.75, (1+1)/2=1 -> mean 2.5/3
    assert topic_uniqueness([["a", "b"], ["a", "c"], ["d", "e"]]) == pytest.approx(2.5 / 3)


def test_topic_uniqueness_extremes():
    assert topic_uniqueness([["a", "b"], ["c", "d"]]) == pytest.approx(1.0)
    assert topic_uniqueness([["a", "b", "c"]] * 4) == pytest.approx(1 / 4)


def test_multilingual_topic_uniqueness_is_mean_of_languages():
    # en as above (5/6); zh all distinct (1.0); 'a' in both languages is not "shared"
    by_lang = {"en": [["a", "b"], ["a", "c"], ["d", "e"]], "zh": [["a", "x"], ["y", "z"]]}
    assert multilingual_topic_uniqueness(by_lang) == pytest.approx((2.5 / 3 + 1.0) / 2)


def test_topic_uniqueness_rejects_empty():
    with pytest.raises(ValueError):
        topic_uniqueness([])
    with pytest.raises(ValueError):
        topic_uniqueness([["a"], []])


# --------------------------------------------------------------------------- NPMI

# D = 5 documents. Document frequencies: apple {0,1}=2, banana {0,1}=2, cherry {0,2,4}=3,
# dog {2,3}=2, egg {3,4}=2.
DOCS = [
    ["apple", "banana", "cherry"],
    ["apple", "apple", "banana"],  # repeated token: presence counts once
    ["cherry", "dog"],
    ["dog", "egg"],
    ["egg", "cherry"],
]
# apple-banana: P=2/5=P(a)=P(b) -> log((2/5)/(4/25)) / -log(2/5) = log(5/2)/log(5/2) = 1
# apple-dog: never together -> -1
# apple-cherry, banana-cherry, dog-cherry, egg-cherry: P=1/5, P(x)=2/5, P(cherry)=3/5
#   -> log((1/5)/(6/25)) / -log(1/5) = log(5/6)/log(5) = -0.11328
# dog-egg: P=1/5, P=2/5, P=2/5 -> log((1/5)/(4/25))/log(5) = log(5/4)/log(5) = 0.13865
C = math.log(5 / 6) / math.log(5)
DE = math.log(5 / 4) / math.log(5)
TOPICS = [["apple", "banana", "cherry"], ["apple", "dog"], ["dog", "egg", "cherry"]]
EXPECTED = [(1 + 2 * C) / 3, -1.0, (DE + 2 * C) / 3]


def test_npmi_hand_computed_per_topic_and_mean():
    assert npmi_per_topic(TOPICS, DOCS) == pytest.approx(EXPECTED)
    assert npmi_coherence(TOPICS, DOCS) == pytest.approx(np.mean(EXPECTED))
    assert npmi_per_topic([["apple", "banana"], ["apple", "dog"]], DOCS) == pytest.approx([1, -1])


def test_npmi_zero_cooccurrence_convention_is_configurable():
    assert npmi_per_topic([["apple", "dog"]], DOCS, zero_cooccurrence=0.0) == pytest.approx([0.0])


def test_npmi_pair_in_every_document_scores_one():
    docs = [["x", "y", "a"], ["x", "y"], ["x", "y", "b"]]
    assert npmi_per_topic([["x", "y"]], docs) == pytest.approx([1.0])


def test_npmi_top_n_cuts_topics():
    # only apple-banana survives top_n=2
    assert npmi_coherence([["apple", "banana", "dog"]], DOCS, top_n=2) == pytest.approx(1.0)


def test_npmi_skips_words_absent_from_reference():
    per_topic = npmi_per_topic([["apple", "zebra", "banana"], ["zebra", "apple"]], DOCS)
    assert per_topic[0] == pytest.approx(1.0)  # zebra dropped: only apple-banana is scored
    assert np.isnan(per_topic[1])  # one known word left: no pair
    mean = npmi_coherence([["apple", "zebra", "banana"], ["zebra", "apple"]], DOCS)
    assert mean == pytest.approx(1.0)  # the NaN topic is left out of the mean
    with pytest.raises(ValueError):
        npmi_coherence([["zebra", "yak"]], DOCS)


def test_npmi_sparse_matrix_matches_token_lists():
    vocab = ["egg", "dog", "cherry", "banana", "apple", "unused"]
    col = {w: i for i, w in enumerate(vocab)}
    counts = np.zeros((len(DOCS), len(vocab)))
    for i, doc in enumerate(DOCS):
        for w in doc:
            counts[i, col[w]] += 1  # raw counts (apple twice in doc 1): presence must binarise
    x = sp.csr_matrix(counts)
    assert npmi_per_topic(TOPICS, x, vocab=vocab) == pytest.approx(EXPECTED)
    with pytest.raises(ValueError):
        npmi_per_topic(TOPICS, x)  # no vocab


def test_npmi_rejects_untokenised_docs():
    with pytest.raises(ValueError):
        npmi_coherence(TOPICS, ["apple banana", "dog"])


def _brute_npmi(topics, docs, top_n):
    sets, n = [set(d) for d in docs], len(docs)

    def df(*ws):
        return sum(all(w in s for w in ws) for s in sets)

    out = []
    for t in topics:
        known = [w for w in t[:top_n] if df(w) > 0]
        vals = []
        for a, b in combinations(known, 2):
            j = df(a, b)
            if j == 0:
                vals.append(-1.0)
            elif j == n:
                vals.append(1.0)
            else:
                vals.append(math.log(j * n / (df(a) * df(b))) / -math.log(j / n))
        out.append(np.mean(vals) if vals else np.nan)
    return np.array(out)


WORDS = st.sampled_from(list("abcdefghij"))


@settings(max_examples=60, deadline=None, database=None)
@given(
    docs=st.lists(st.lists(WORDS, max_size=6), min_size=1, max_size=12),
    topics=st.lists(st.lists(WORDS, min_size=1, max_size=5, unique=True), min_size=1, max_size=4),
)
# An NPMI of zero that summation order leaves at -3.7e-17 or -7.4e-17: equal within float error.
@example(docs=[[], [], [], [], [], ["e"], ["a", "b", "f"]], topics=[["a", "e", "f", "b"]])
def test_npmi_matches_brute_force_and_stays_in_range(docs, topics):
    got = npmi_per_topic(topics, docs, top_n=4)
    want = _brute_npmi(topics, docs, 4)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    assert np.all((got[~np.isnan(got)] >= -1 - 1e-12) & (got[~np.isnan(got)] <= 1 + 1e-12))
    # word order inside a topic does not matter
    np.testing.assert_allclose(npmi_per_topic([t[:4][::-1] for t in topics], docs), got, rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------- CNPMI

EN = [
    "football match goal", "football team goal", "stock market price",
    "stock market bank", "movie star film", "movie film award",
]
ZH = ["足球 比赛 进球", "足球 球队 进球", "股票 市场 价格", "股票 市场 银行", "电影 明星", "电影 奖"]
EN_DOCS, ZH_DOCS = [d.split() for d in EN], [d.split() for d in ZH]
EN_TOPICS = [["football", "goal"], ["stock", "market"], ["movie", "film"]]
ZH_TOPICS = [["足球", "进球"], ["股票", "市场"], ["电影", "明星"]]
# Topics 0 and 1: every en word and zh word are in the same 2 of 6 aligned pairs -> NPMI 1 each.
# Topic 2: movie/film/电影 in pairs {4,5}; 明星 only in {4}:
#   movie-电影 = film-电影 = 1;  movie-明星 = film-明星: P=1/6, P(movie)=1/3, P(明星)=1/6
#   -> log((1/6)/(1/18)) / -log(1/6) = log 3 / log 6
T2 = (2 + 2 * math.log(3) / math.log(6)) / 4


def test_cnpmi_hand_computed_aligned_topics():
    assert cnpmi_per_topic(EN_TOPICS, ZH_TOPICS, EN_DOCS, ZH_DOCS) == pytest.approx([1, 1, T2])
    assert cnpmi(EN_TOPICS, ZH_TOPICS, EN_DOCS, ZH_DOCS) == pytest.approx((2 + T2) / 3)


def test_cnpmi_aligned_beats_misaligned():
    rotated = ZH_TOPICS[1:] + ZH_TOPICS[:1]
    aligned = cnpmi(EN_TOPICS, ZH_TOPICS, EN_DOCS, ZH_DOCS)
    # rotated topics never share an aligned document: every pair scores -1
    assert cnpmi(EN_TOPICS, rotated, EN_DOCS, ZH_DOCS) == pytest.approx(-1.0)
    assert aligned > 0.9
    assert cnpmi(EN_TOPICS, rotated, EN_DOCS, ZH_DOCS, zero_cooccurrence=0.0) == 0.0


def test_cnpmi_is_directional_in_pairs_not_symmetric_in_languages():
    # swapping languages (and corpora together) is the same set of pairs -> same score
    assert cnpmi(ZH_TOPICS, EN_TOPICS, ZH_DOCS, EN_DOCS) == pytest.approx((2 + T2) / 3)


def test_cnpmi_sparse_matches_token_lists():
    vocab_zh = sorted({w for d in ZH_DOCS for w in d})
    col = {w: i for i, w in enumerate(vocab_zh)}
    x = sp.csr_array(
        (np.ones(sum(map(len, ZH_DOCS))),
         ([i for i, d in enumerate(ZH_DOCS) for _ in d], [col[w] for d in ZH_DOCS for w in d])),
        shape=(len(ZH_DOCS), len(vocab_zh)),
    )
    assert cnpmi(EN_TOPICS, ZH_TOPICS, EN_DOCS, x, vocab_b=vocab_zh) == pytest.approx((2 + T2) / 3)


def test_cnpmi_validates_inputs():
    with pytest.raises(ValueError):
        cnpmi(EN_TOPICS, ZH_TOPICS[:2], EN_DOCS, ZH_DOCS)
    with pytest.raises(ValueError):
        cnpmi(EN_TOPICS, ZH_TOPICS, EN_DOCS, ZH_DOCS[:5])


@settings(max_examples=40, deadline=None, database=None)
@given(
    pairs=st.lists(
        st.tuples(st.lists(WORDS, max_size=5), st.lists(WORDS, max_size=5)), min_size=1, max_size=10
    ),
    ta=st.lists(WORDS, min_size=1, max_size=3, unique=True),
    tb=st.lists(WORDS, min_size=1, max_size=3, unique=True),
)
def test_cnpmi_matches_brute_force(pairs, ta, tb):
    docs_a, docs_b = [set(a) for a, _ in pairs], [set(b) for _, b in pairs]
    n, vals = len(pairs), []
    for a, b in product(ta, tb):
        da, db = sum(a in d for d in docs_a), sum(b in d for d in docs_b)
        j = sum(a in x and b in y for x, y in zip(docs_a, docs_b))
        if da == 0 or db == 0:
            continue
        vals.append(-1.0 if j == 0 else 1.0 if j == n else
                    math.log(j * n / (da * db)) / -math.log(j / n))
    got = cnpmi_per_topic([ta], [tb], [a for a, _ in pairs], [b for _, b in pairs])
    np.testing.assert_allclose(got, [np.mean(vals) if vals else np.nan], rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------- dictionary alignment

PAIRS = {("足球", "football"), ("进球", "goal"), ("股票", "stock"), ("市场", "market")}
ZH_T = [["足球", "进球"], ["股票", "银行"]]
EN_T = [["football", "goal"], ["stock", "market"]]
# topic 0: 足球-football, 进球-goal linked of 4 pairs -> 0.5; topic 1: only 股票-stock -> 0.25


def test_dictionary_alignment_exact_value_for_set_and_mapping():
    assert dictionary_alignment(ZH_T, EN_T, PAIRS) == pytest.approx(0.375)
    mapping = {"足球": {"football"}, "进球": {"goal"}, "股票": {"stock"}, "市场": {"market"}}
    assert dictionary_alignment(ZH_T, EN_T, mapping) == pytest.approx(0.375)
    # top_n=1 keeps 足球-football and 股票-stock: both linked
    assert dictionary_alignment(ZH_T, EN_T, PAIRS, top_n=1) == pytest.approx(1.0)


def test_dictionary_alignment_respects_direction():
    assert dictionary_alignment(EN_T, ZH_T, PAIRS) == 0.0  # pairs are (zh, en); a is en here


def test_load_bilingual_dictionary(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_text("足球\tfootball\n进球\tgoal\n\n股票\tstock\n市场\tmarket\n足球\tfootball\n", "utf-8")
    assert load_bilingual_dictionary(path) == PAIRS
    rev = load_bilingual_dictionary(path, reverse=True)
    assert dictionary_alignment(EN_T, ZH_T, rev) == pytest.approx(0.375)
    path.write_text("足球\tfootball\nbroken line\n", "utf-8")
    with pytest.raises(ValueError, match="line 2"):
        load_bilingual_dictionary(path)


# --------------------------------------------------------------------------- classification


def _separable(n, k=8, classes=4, seed=0, perm=None):
    """theta whose dominant topic is the class (through ``perm`` if given)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    theta = rng.dirichlet(np.full(k, 0.5), n) * 0.2
    topic = y if perm is None else np.asarray(perm)[y]
    theta[np.arange(n), topic] += 0.8
    return theta, y


@pytest.mark.parametrize("model", ["svc", "linear"])
def test_classification_separable_is_perfect(model):
    (xtr, ytr), (xte, yte) = _separable(300, seed=1), _separable(200, seed=2)
    assert classification_scores(xtr, ytr, xte, yte, model=model) == {
        "accuracy": 1.0, "macro_f1": 1.0,
    }


def test_classification_default_is_the_papers_rbf_svc():
    # XOR of two coordinates: no linear separator, the RBF SVC of the papers finds it
    rng = np.random.default_rng(5)
    x = rng.random((1200, 2))
    y = (x[:, 0] > 0.5) ^ (x[:, 1] > 0.5)
    assert classification_scores(x[:800], y[:800], x[800:], y[800:])["accuracy"] > 0.9
    linear = classification_scores(x[:800], y[:800], x[800:], y[800:], model="linear")
    assert linear["accuracy"] < 0.7


def test_classification_random_labels_near_chance():
    rng = np.random.default_rng(3)
    x = rng.dirichlet(np.ones(10), 3000)
    y = rng.integers(0, 2, 3000)
    scores = classification_scores(x[:2000], y[:2000], x[2000:], y[2000:])
    assert 0.43 < scores["accuracy"] < 0.57
    assert 0.35 < scores["macro_f1"] < 0.6


def test_classification_rejects_bad_shapes_and_model():
    x, y = _separable(20)
    with pytest.raises(ValueError):
        classification_scores(x, y[:-1], x, y)
    with pytest.raises(ValueError):
        classification_scores(x, y, x[:, :3], y)
    with pytest.raises(ValueError):
        classification_scores(x, y, x, y, model="rbf")


def test_crosslingual_direction_cross_l_means_tested_on_l():
    # en training labels are informative; zh training labels are random.
    en_tr, en_te = _separable(300, seed=1), _separable(200, seed=2)
    zh_tr_x, _ = _separable(300, seed=3)
    zh_tr_y = np.random.default_rng(4).integers(0, 4, 300)
    zh_te = _separable(200, seed=5)
    out = crosslingual_classification({
        "en": (*en_tr, *en_te),
        "zh": (zh_tr_x, zh_tr_y, *zh_te),
    })
    assert out["intra_en"]["accuracy"] == 1.0
    assert out["train_en_test_zh"]["accuracy"] == 1.0
    assert out["cross_zh"] == out["train_en_test_zh"]  # tested on zh, trained on en
    assert out["cross_en"] == out["train_zh_test_en"]  # tested on en, trained on zh
    assert out["cross_en"]["accuracy"] < 0.5  # zh classifier learned noise
    assert out["intra_zh"]["accuracy"] < 0.5


def test_crosslingual_misaligned_topic_spaces_fail_across_only():
    perm = [1, 2, 3, 0]  # zh puts class c on topic c+1
    data = {
        "en": (*_separable(300, seed=1), *_separable(200, seed=2)),
        "zh": (*_separable(300, seed=3, perm=perm), *_separable(200, seed=4, perm=perm)),
    }
    out = crosslingual_classification(data)
    assert out["intra_en"]["accuracy"] == out["intra_zh"]["accuracy"] == 1.0
    assert out["cross_en"]["accuracy"] < 0.3 and out["cross_zh"]["accuracy"] < 0.3


def test_crosslingual_three_languages_average_training_languages():
    data = {
        lang: (*_separable(200, seed=s), *_separable(100, seed=s + 10, perm=p))
        for lang, s, p in [("en", 1, None), ("zh", 2, None), ("ja", 3, [1, 2, 3, 0])]
    }
    out = crosslingual_classification(data)
    for lang in data:
        others = [out[f"train_{s}_test_{lang}"] for s in data if s != lang]
        assert out[f"cross_{lang}"] == pytest.approx(
            {m: np.mean([o[m] for o in others]) for m in ("accuracy", "macro_f1")}
        )
    with pytest.raises(ValueError):
        crosslingual_classification({"en": data["en"]})


def test_topic_quality_is_tu_times_npmi_and_checks_ranges():
    from xtream.model.evaluation import topic_quality

    assert topic_quality(0.8, 0.125) == pytest.approx(0.1)
    assert topic_quality(1.0, -0.5) == pytest.approx(-0.5)
    with pytest.raises(ValueError):
        topic_quality(1.2, 0.1)
    with pytest.raises(ValueError):
        topic_quality(0.5, 1.5)


def test_npmi_zero_convention_scores_disjoint_words_zero_not_minus_one():
    docs = [["a", "b"], ["c", "d"], ["a", "b"], ["c", "d"]]
    assert npmi_coherence([["a", "c"]], docs, zero_cooccurrence=0.0) == 0.0
    assert npmi_coherence([["a", "c"]], docs) == -1.0
