"""Specification of the per-language replay buffer (model.replay_buffer)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from xtream.model.replay_buffer import ReplayBuffer

DIM = 4
WIDTH = 10


def docs(ids: np.ndarray, width: int = WIDTH):
    """Documents that carry their id everywhere, so rows can be checked for staying aligned:
    word ``id % width`` with count ``1 + id % 5``, embedding ``[id, 0, 0, 0]``, cluster ``id``."""
    ids = np.asarray(ids, dtype=np.int64)
    bow = sp.csr_matrix(((1 + ids % 5).astype(np.float32), (np.arange(len(ids)), ids % width)),
                        shape=(len(ids), width))
    emb = np.zeros((len(ids), DIM), np.float32)
    emb[:, 0] = ids
    return bow, emb, ids.copy()


def fill(buf: ReplayBuffer, lang: str, n: int, batch: int, start: int = 0) -> None:
    for s in range(start, start + n, batch):
        buf.add_many(lang, *docs(np.arange(s, min(start + n, s + batch))))


def assert_rows_aligned(bow: sp.csr_matrix, emb: np.ndarray, cluster: np.ndarray) -> None:
    ids = cluster
    np.testing.assert_array_equal(emb[:, 0], ids)
    expected = np.zeros((len(ids), bow.shape[1]), np.float32)
    expected[np.arange(len(ids)), ids % WIDTH] = 1 + ids % 5
    np.testing.assert_array_equal(bow.toarray(), expected)


def held_ids(buf: ReplayBuffer, lang: str) -> tuple[np.ndarray, np.ndarray]:
    """Ids in the recent ring and in the reservoir (``all`` lists recent first, then old)."""
    _, _, cluster = buf.all(lang)
    recent = buf._recent[lang].size
    return cluster[:recent], cluster[recent:]


# --------------------------------------------------------------------------- capacity and mix
@pytest.mark.parametrize("batch", [7, 64, 500])
def test_never_holds_more_than_its_capacity_per_language(batch):
    buf = ReplayBuffer(capacity_per_language=100, dim=DIM, max_terms=4, seed=0)
    fill(buf, "en", 1000, batch)
    fill(buf, "ja", 30, batch)
    assert buf.sizes() == {"en": 100, "ja": 30}
    assert len(buf) == 130
    assert buf.languages == ["en", "ja"]


@pytest.mark.parametrize("batch", [7, 64, 500])
def test_the_recent_half_holds_exactly_the_newest_documents(batch):
    buf = ReplayBuffer(capacity_per_language=100, dim=DIM, max_terms=4, seed=0)
    fill(buf, "en", 1000, batch)
    recent, old = held_ids(buf, "en")
    assert sorted(recent.tolist()) == list(range(950, 1000))
    assert len(old) == 50 and len(np.unique(old)) == 50
    assert old.max() < 950   # the reservoir only samples documents that left the recent ring


def test_documents_are_kept_whole_until_the_buffer_fills():
    buf = ReplayBuffer(capacity_per_language=100, dim=DIM, max_terms=4, seed=0)
    fill(buf, "en", 80, 9)
    recent, old = held_ids(buf, "en")
    assert sorted(np.concatenate([recent, old]).tolist()) == list(range(80))
    assert_rows_aligned(*buf.all("en"))


@pytest.mark.parametrize("batch", [137, 1500], ids=["small-batches", "batches-over-half-capacity"])
def test_reservoir_is_a_uniform_sample_of_the_evicted_documents(batch):
    n, capacity = 20_000, 1000
    buf = ReplayBuffer(capacity_per_language=capacity, dim=DIM, max_terms=2, seed=0)
    fill(buf, "en", n, batch)
    _, old = held_ids(buf, "en")
    evicted = n - capacity // 2                 # ids 0 .. evicted-1 have left the recent ring
    assert len(old) == capacity // 2 and old.max() < evicted
    # Uniform over [0, evicted): mean (evicted-1)/2 with standard error ~ 0.29 * evicted / sqrt(500) ~ 250
    assert abs(old.mean() - (evicted - 1) / 2) < 0.05 * evicted
    quarters = np.histogram(old, bins=4, range=(0, evicted))[0]
    assert np.all(np.abs(quarters - len(old) / 4) < 45), quarters   # binomial sd ~ 10


# --------------------------------------------------------------------------- sampling
def test_sampling_draws_the_same_number_from_every_language():
    buf = ReplayBuffer(capacity_per_language=200, dim=DIM, max_terms=4, seed=0)
    fill(buf, "en", 500, 50)
    fill(buf, "de", 20, 50, start=10_000)
    out = buf.sample(16)
    assert set(out) == {"en", "de"}
    assert [len(out[lang][2]) for lang in ("en", "de")] == [16, 16]
    out = buf.sample(50)
    assert len(out["en"][2]) == 50
    assert sorted(out["de"][2].tolist()) == list(range(10_000, 10_020))   # a small language gives all it has


def test_sample_shapes_and_rows_stay_aligned():
    buf = ReplayBuffer(capacity_per_language=60, dim=DIM, max_terms=4, seed=0)
    fill(buf, "en", 300, 25)
    bow, emb, cluster = buf.sample(24)["en"]
    assert isinstance(bow, sp.csr_matrix) and bow.shape == (24, WIDTH) and bow.dtype == np.float32
    assert emb.shape == (24, DIM) and cluster.shape == (24,)
    assert len(np.unique(cluster)) == 24   # without replacement
    assert_rows_aligned(bow, emb, cluster)


def test_sample_restricted_to_some_languages():
    buf = ReplayBuffer(capacity_per_language=20, dim=DIM, max_terms=4, seed=0)
    fill(buf, "en", 30, 10)
    fill(buf, "de", 30, 10)
    assert set(buf.sample(4, languages=["de"])) == {"de"}


def test_samples_from_the_same_seed_are_identical():
    a, b = (ReplayBuffer(capacity_per_language=40, dim=DIM, max_terms=4, seed=5) for _ in range(2))
    for buf in (a, b):
        fill(buf, "en", 400, 33)
    for _ in range(3):
        np.testing.assert_array_equal(a.sample(10)["en"][2], b.sample(10)["en"][2])


# --------------------------------------------------------------------------- stored BoW
def test_a_document_longer_than_max_terms_keeps_its_largest_counts():
    buf = ReplayBuffer(capacity_per_language=4, dim=DIM, max_terms=3, seed=0)
    counts = np.array([[5, 1, 7, 2, 9, 3, 0, 0], [0, 0, 0, 0, 0, 0, 4, 6]], dtype=np.float32)
    buf.add_many("en", sp.csr_matrix(counts), np.zeros((2, DIM), np.float32), np.array([0, 1]))
    bow, _, cluster = buf.all("en")
    kept = bow.toarray()[np.argsort(cluster)]
    np.testing.assert_array_equal(kept[0], [5, 0, 7, 0, 9, 0, 0, 0])
    np.testing.assert_array_equal(kept[1], counts[1])   # a short document is kept whole


def test_remap_vocabulary_moves_surviving_words_and_drops_retired_ones():
    buf = ReplayBuffer(capacity_per_language=6, dim=DIM, max_terms=4, seed=0)
    counts = np.array([[1, 2, 3, 0], [0, 0, 4, 5], [6, 0, 0, 0]], dtype=np.float32)
    buf.add_many("en", sp.csr_matrix(counts), np.zeros((3, DIM), np.float32), np.arange(3))
    fill(buf, "de", 3, 3)
    # word 0 retired, words 1..3 compacted to 0..2, two new words appended (size 4 -> 5)
    buf.remap_vocabulary("en", np.array([-1, 0, 1, 2]), new_size=5)
    bow, _, cluster = buf.all("en")
    assert bow.shape == (3, 5)
    expected = np.array([[2, 3, 0, 0, 0], [0, 4, 5, 0, 0], [0, 0, 0, 0, 0]], dtype=np.float32)
    np.testing.assert_array_equal(bow.toarray()[np.argsort(cluster)], expected)
    assert buf.sample(3)["de"][0].shape[1] == WIDTH   # other languages untouched
    # later documents arrive at the new width and mix with the remapped ones
    buf.add_many("en", sp.csr_matrix(np.array([[0, 0, 0, 0, 7]], np.float32)), np.zeros((1, DIM)), np.array([3]))
    bow, _, cluster = buf.all("en")
    assert bow.shape == (4, 5) and bow[np.flatnonzero(cluster == 3)[0], 4] == 7


def test_remap_clusters_rewrites_stored_cluster_ids():
    buf = ReplayBuffer(capacity_per_language=10, dim=DIM, max_terms=4, seed=0)
    buf.add_many("en", *docs(np.arange(3))[:2], np.array([0, 1, 2]))
    buf.remap_clusters(np.array([2, 0, 1]))
    assert sorted(buf.all("en")[2].tolist()) == [0, 1, 2]
    assert buf.all("en")[2][np.argsort(buf.all("en")[1][:, 0])].tolist() == [2, 0, 1]


def test_an_empty_batch_adds_no_language():
    buf = ReplayBuffer(capacity_per_language=4, dim=DIM, max_terms=4)
    buf.add_many("en", sp.csr_matrix((0, WIDTH), dtype=np.float32), np.zeros((0, DIM)), np.zeros(0, np.int64))
    assert len(buf) == 0 and buf.languages == []


def test_capacity_below_two_is_rejected():
    with pytest.raises(ValueError):
        ReplayBuffer(capacity_per_language=1)


# --------------------------------------------------------------------------- persistence
def test_state_dict_round_trip_holds_the_same_documents_and_continues_identically():
    buf = ReplayBuffer(capacity_per_language=30, dim=DIM, max_terms=4, seed=1)
    fill(buf, "en", 200, 17)
    fill(buf, "de", 9, 4, start=5000)
    clone = ReplayBuffer(capacity_per_language=2, dim=1)
    clone.load_state_dict(buf.state_dict())
    assert clone.sizes() == buf.sizes() and clone.languages == buf.languages
    for lang in buf.languages:
        for got, want in zip(clone.all(lang), buf.all(lang)):
            np.testing.assert_array_equal(got.toarray() if sp.issparse(got) else got,
                                          want.toarray() if sp.issparse(want) else want)
    fill(buf, "en", 100, 17, start=200)
    fill(clone, "en", 100, 17, start=200)
    np.testing.assert_array_equal(clone.all("en")[2], buf.all("en")[2])
    np.testing.assert_array_equal(clone.sample(8)["en"][2], buf.sample(8)["en"][2])
