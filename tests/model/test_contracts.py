"""The contract every checkpointable estimator of ``model`` keeps (house style, rule 3).

For each estimator a small adapter says how to build it, feed it one batch and observe its
behaviour; the same checks then run over all of them:

- a ``state_dict`` -> ``load_state_dict`` round trip into a differently configured fresh object
  gives identical behaviour, now and after both go on learning the same batches;
- a ``state_dict`` is a snapshot: learning after taking it does not change what it restores;
- two instances built with the same seed and fed identically behave identically;
- learning does not mutate its input arrays (or token lists).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

from xtream.model.clustering import MiniBatchKMeans
from xtream.model.embedding import LanguageCentering
from xtream.model.online import OnlineConfig, OnlineTopicModel
from xtream.model.prevalence_shift import PrevalenceShift
from xtream.model.replay_buffer import ReplayBuffer
from xtream.model.vocabulary import Vocabulary

DIM = 16


@dataclass
class Case:
    """How to build (``make(seed)``), teach (``feed(est, batch)``) and observe (``observe(est)``) an estimator."""

    make: Callable[[int], Any]
    feed: Callable[[Any, tuple], None]
    observe: Callable[[Any], Any]
    batches: list[tuple]


def _stream_batches(make_stream, n: int, size: int, seed: int = 0, **kw) -> list[tuple]:
    s = make_stream(n, seed=seed, dim=DIM, **kw)
    return [(tokens, emb, langs) for tokens, emb, langs in s.batches(size)]


def _probe(make_stream):
    return make_stream(30, seed=99, dim=DIM, words_per_topic=4)


def kmeans_case(make_stream) -> Case:
    batches = [(emb,) for _, emb, _ in _stream_batches(make_stream, 300, 30)]
    probe = _probe(make_stream)
    return Case(
        make=lambda seed: MiniBatchKMeans(n_clusters=5, decay=0.9, reassign_ratio=0.2, seed=seed),
        feed=lambda est, b: est.learn_many(b[0]),
        observe=lambda est: (est.predict_many(probe.embeddings), est.centers, est.counts, est.n_seen),
        batches=batches)


def buffer_case(make_stream) -> Case:
    rng = np.random.default_rng(0)
    batches = []
    for i in range(10):
        n = int(rng.integers(5, 40))
        bow = sp.random(n, 12, density=0.4, format="csr", dtype=np.float32, random_state=i) * 5
        batches.append((str(rng.choice(["en", "de"])), sp.csr_matrix(bow), rng.normal(size=(n, DIM)).astype(np.float32),
                        rng.integers(4, size=n)))
    return Case(
        make=lambda seed: ReplayBuffer(capacity_per_language=40, dim=DIM, max_terms=3, seed=seed),
        feed=lambda est, b: est.add_many(*b),
        observe=lambda est: (est.sizes(), [est.all(lang) for lang in est.languages], est.sample(7)),
        batches=batches)


def vocabulary_case(make_stream) -> Case:
    probe = _probe(make_stream)

    def feed(est: Vocabulary, b: tuple) -> None:
        est.learn_many(b[0])
        est.refresh()

    return Case(
        make=lambda seed: Vocabulary(max_size=20, min_df=2, max_df_ratio=0.5),
        feed=feed,
        observe=lambda est: (est.words, est.transform(probe.tokens), est.n_docs,
                             [est.document_frequency(w) for t in probe.tokens[:3] for w in t]),
        batches=[(tokens,) for tokens, _, _ in _stream_batches(make_stream, 200, 25, langs=("en",))])


def centering_case(make_stream) -> Case:
    probe = _probe(make_stream)
    rng = np.random.default_rng(1)
    batches = []
    for _ in range(6):   # float64 input on purpose: the embedders give float32, the contract holds for both
        langs = rng.choice(["en", "de", "ja"], size=25).tolist()
        batches.append((rng.normal(size=(25, DIM)) + (np.asarray(langs) == "en")[:, None], langs))
    return Case(
        make=lambda seed: LanguageCentering(momentum=0.8, min_count=10),
        feed=lambda est, b: est.learn_many(*b),
        observe=lambda est: est.transform_many(probe.embeddings, probe.langs),
        batches=batches)


def online_case(make_stream) -> Case:
    probe = _probe(make_stream)
    cfg = {"num_topics": 4, "warmup_docs": 60, "warmup_steps": 3, "batch_size": 8, "buffer_per_language": 32,
           "vocab_max_size": 40, "vocab_min_df": 2, "vocab_max_df_ratio": 0.5, "vocab_refresh_every": 40,
           "min_docs_new_language": 10}

    def feed(est: OnlineTopicModel, b: tuple) -> None:
        est.learn_many(*b)
        est.train(2)

    # 3 languages, then a 4th after warm-up, and new words: every code path of learn_many
    batches = (_stream_batches(make_stream, 80, 20, words_per_topic=4)
               + _stream_batches(make_stream, 60, 20, seed=1, langs=("en", "de", "ja", "fr"), words_per_topic=6))
    return Case(
        make=lambda seed: OnlineTopicModel(OnlineConfig(seed=seed, **cfg), DIM),
        feed=feed,
        observe=lambda est: (est.predict_many(probe.tokens, probe.embeddings, probe.langs), est.n_docs,
                             est.version, est.docs_by_lang,
                             None if est.xtra is None else dict(est.xtra.cfg.vocab_sizes)),
        batches=batches)


def prevalence_shift_case(make_stream) -> Case:
    rng = np.random.default_rng(0)
    weights = rng.dirichlet(np.full(6, 5.0))
    batches = [(rng.choice(6, size=int(rng.integers(20, 90)), p=weights),) for _ in range(40)]
    story = np.full(60, 2)

    def observe(est: PrevalenceShift):
        # what the detectors would say next: a copy fed a jump in slot 2 over 12 windows
        probe = copy.deepcopy(est)
        jumps = []
        for _ in range(12 * probe.window_docs // len(story)):
            probe.learn_many(story)
            jumps += probe.take_jumps()
        return est.windows, est.state_dict()["counts"], sorted(est._jumped), jumps, probe.windows

    return Case(make=lambda seed: PrevalenceShift(6, window_docs=32, threshold=3.0, min_instances=3),
                feed=lambda est, b: est.learn_many(b[0]), observe=observe, batches=batches)


CASES = {"PrevalenceShift": prevalence_shift_case, "MiniBatchKMeans": kmeans_case, "ReplayBuffer": buffer_case, "Vocabulary": vocabulary_case,
         "LanguageCentering": centering_case, "OnlineTopicModel": online_case}


@pytest.fixture(params=list(CASES))
def case(request, planted_stream) -> Case:
    return CASES[request.param](planted_stream)


def assert_same(got: Any, want: Any, where: str = "") -> None:
    """Exact, recursive equality of observations (arrays bit for bit, sparse matrices by content)."""
    if sp.issparse(want):
        assert sp.issparse(got) and got.shape == want.shape, where
        np.testing.assert_array_equal(got.toarray(), want.toarray(), err_msg=where)
    elif isinstance(want, np.ndarray):
        np.testing.assert_array_equal(got, want, err_msg=where)
        assert np.asarray(got).dtype == want.dtype, where
    elif isinstance(want, dict):
        assert set(got) == set(want), where
        for k in want:
            assert_same(got[k], want[k], f"{where}[{k!r}]")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same(g, w, f"{where}[{i}]")
    else:
        assert got == want, where


def snapshot(batch: tuple) -> tuple:
    return copy.deepcopy(batch)


# --------------------------------------------------------------------------- the contract
def test_state_dict_round_trip_gives_identical_behaviour(case):
    half = len(case.batches) // 2
    original = case.make(0)
    for b in case.batches[:half]:
        case.feed(original, b)
    restored = case.make(123)             # another seed: everything must come from the state
    restored.load_state_dict(original.state_dict())
    assert_same(case.observe(restored), case.observe(original), "right after loading")
    for b in case.batches[half:]:
        case.feed(original, b)
        case.feed(restored, b)
    assert_same(case.observe(restored), case.observe(original), "after learning on")


def test_a_state_dict_is_a_snapshot(case):
    half = len(case.batches) // 2
    est = case.make(0)
    for b in case.batches[:half]:
        case.feed(est, b)
    state = est.state_dict()
    reference = case.make(0)
    reference.load_state_dict(copy.deepcopy(state))
    for b in case.batches[half:]:
        case.feed(est, b)
    later = case.make(0)
    later.load_state_dict(state)
    assert_same(case.observe(later), case.observe(reference))


def test_same_seed_and_same_input_give_identical_behaviour(case):
    a, b = case.make(7), case.make(7)
    for batch in case.batches:
        case.feed(a, batch)
        case.feed(b, batch)
        assert_same(case.observe(b), case.observe(a))


def test_learning_does_not_mutate_its_input(case):
    est = case.make(0)
    for batch in case.batches:
        before = snapshot(batch)
        case.feed(est, batch)
        assert_same(batch, before)


def test_learning_from_an_empty_state_is_not_affected_by_other_instances(case):
    """Instances share no hidden state: interleaving two streams changes neither."""
    alone = case.make(3)
    for b in case.batches:
        case.feed(alone, b)
    a, other = case.make(3), case.make(4)
    for b, noise in zip(case.batches, reversed(case.batches)):
        case.feed(a, b)
        case.feed(other, noise)
    assert_same(case.observe(a), case.observe(alone))
