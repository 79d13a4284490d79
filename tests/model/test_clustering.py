"""Specification of the streaming spherical mini-batch k-means (model.clustering)."""

from __future__ import annotations

import numpy as np
import pytest

from xtream.model.clustering import MiniBatchKMeans

DIM = 8


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def axis(*weights: tuple[int, float]) -> np.ndarray:
    """A unit direction from (coordinate, weight) pairs."""
    v = np.zeros(DIM)
    for i, w in weights:
        v[i] = w
    return unit(v)


def blobs(directions: np.ndarray, n: int, rng: np.random.Generator, noise: float = 0.1):
    """``n`` unit vectors scattered around the given directions, with their true blob ids."""
    labels = rng.integers(len(directions), size=n)
    x = directions[labels] + noise * rng.normal(size=(n, directions.shape[1])) / np.sqrt(directions.shape[1])
    return unit(x).astype(np.float32), labels


def stream(km: MiniBatchKMeans, directions: np.ndarray, batches: int, rng, batch_size: int = 60):
    for _ in range(batches):
        km.learn_many(blobs(directions, batch_size, rng)[0])


def purity(pred: np.ndarray, truth: np.ndarray) -> float:
    """Share of documents whose predicted cluster's majority true label is their own."""
    hits = sum(np.bincount(truth[pred == c]).max() for c in np.unique(pred))
    return hits / len(pred)


def best_cosine(centres: np.ndarray, direction: np.ndarray) -> float:
    return float(np.max(centres @ direction))


THREE = np.stack([axis((0, 1)), axis((1, 1)), axis((2, 1))])


# --------------------------------------------------------------------------- clustering quality
def test_streamed_well_separated_blobs_are_recovered_with_unit_norm_centres():
    rng = np.random.default_rng(0)
    km = MiniBatchKMeans(n_clusters=3, seed=0)
    stream(km, THREE, batches=20, rng=rng)
    x, truth = blobs(THREE, 600, rng)
    pred = km.predict_many(x)
    assert purity(pred, truth) == 1.0
    assert len(np.unique(pred)) == 3
    np.testing.assert_allclose(np.linalg.norm(km.centers, axis=1), 1.0, atol=1e-5)
    for d in THREE:
        assert best_cosine(km.centers, d) > 0.99


def test_predict_many_returns_int_labels_in_range_and_matches_similarities():
    rng = np.random.default_rng(1)
    km = MiniBatchKMeans(n_clusters=3, seed=0)
    stream(km, THREE, batches=3, rng=rng)
    x, _ = blobs(THREE, 50, rng)
    pred = km.predict_many(x)
    sims = km.similarities(x)
    assert pred.shape == (50,) and np.issubdtype(pred.dtype, np.integer)
    assert sims.shape == (50, 3)
    assert pred.min() >= 0 and pred.max() < 3
    np.testing.assert_array_equal(pred, sims.argmax(1))
    assert np.all(sims <= 1.0 + 1e-5) and np.all(sims >= -1.0 - 1e-5)


def test_inputs_are_compared_by_cosine_so_scale_does_not_matter():
    rng = np.random.default_rng(2)
    km = MiniBatchKMeans(n_clusters=3, seed=0)
    stream(km, THREE, batches=3, rng=rng)
    x, _ = blobs(THREE, 40, rng)
    scale = rng.uniform(0.1, 50.0, size=(40, 1)).astype(np.float32)
    np.testing.assert_array_equal(km.predict_many(x * scale), km.predict_many(x))


# --------------------------------------------------------------------------- Sculley update
def test_each_centre_count_equals_the_documents_assigned_to_it_without_decay():
    rng = np.random.default_rng(3)
    km = MiniBatchKMeans(n_clusters=3, decay=1.0, reassign_ratio=None, seed=0)
    first, _ = blobs(THREE, 45, rng)
    km.learn_many(first)   # initialises from this batch, then learns it
    expected = np.bincount(km.predict_many(first), minlength=3).astype(float)
    for _ in range(9):
        x, _ = blobs(THREE, 45, rng)
        expected += np.bincount(km.predict_many(x), minlength=3)
        km.learn_many(x)
    np.testing.assert_array_equal(km.counts, expected)
    assert km.counts.sum() == km.n_seen == 450


def test_first_batch_sets_each_centre_to_its_members_mean_direction():
    x = unit(np.array([[1, 0.1, 0, 0, 0, 0, 0, 0], [1, -0.1, 0, 0, 0, 0, 0, 0], [1, 0, 0.2, 0, 0, 0, 0, 0]],
                      dtype=np.float32))
    km = MiniBatchKMeans(n_clusters=1, reassign_ratio=None, seed=0)
    km.learn_many(x)
    np.testing.assert_allclose(km.centers[0], unit(x.mean(0)), atol=1e-6)
    assert km.counts[0] == 3


def test_later_batch_moves_a_centre_by_its_share_of_the_count():
    """Sculley: step n_c / v_c toward the batch mean, i.e. the running mean, then back onto the sphere."""
    rng = np.random.default_rng(4)
    km = MiniBatchKMeans(n_clusters=1, reassign_ratio=None, seed=0)
    first, _ = blobs(THREE[:1], 30, rng, noise=0.5)
    km.learn_many(first)
    c1 = km.centers[0].astype(np.float64).copy()
    second, _ = blobs(THREE[1:2], 10, rng, noise=0.5)
    km.learn_many(second)
    expected = unit(30 / 40 * c1 + 10 / 40 * second.astype(np.float64).mean(0))
    np.testing.assert_allclose(km.centers[0], expected, atol=1e-5)
    assert km.counts[0] == 40


def test_max_count_keeps_the_step_from_vanishing():
    rng = np.random.default_rng(5)
    km = MiniBatchKMeans(n_clusters=1, max_count=50, reassign_ratio=None, seed=0)
    for _ in range(10):
        km.learn_many(blobs(THREE[:1], 25, rng)[0])
    assert km.counts[0] == 50
    before = km.centers[0].astype(np.float64).copy()
    batch, _ = blobs(THREE[1:2], 25, rng)
    km.learn_many(batch)
    # step = 25 / 50: halfway toward the new batch, however long the stream has run
    np.testing.assert_allclose(km.centers[0], unit(0.5 * before + 0.5 * batch.astype(np.float64).mean(0)), atol=1e-5)


# --------------------------------------------------------------------------- forgetting
SHIFTED = np.stack([axis((0, 1), (3, 1)), axis((1, 1), (4, 1)), axis((2, 1), (5, 1))])  # 45 degrees from THREE


def _follow(decay: float) -> float:
    rng = np.random.default_rng(6)
    km = MiniBatchKMeans(n_clusters=3, decay=decay, reassign_ratio=None, seed=0)
    stream(km, THREE, batches=30, rng=rng)
    stream(km, SHIFTED, batches=10, rng=rng)
    return min(best_cosine(km.centers, d) for d in SHIFTED)


def test_with_decay_the_centres_follow_a_stream_that_changed_distribution():
    assert _follow(decay=0.7) > 0.98


def test_without_decay_the_centres_follow_a_changed_stream_less():
    forgetting, remembering = _follow(decay=0.7), _follow(decay=1.0)
    assert remembering < 0.95
    assert forgetting > remembering + 0.03


def test_decay_shrinks_the_counts_of_every_centre_each_batch():
    rng = np.random.default_rng(7)
    km = MiniBatchKMeans(n_clusters=3, decay=0.5, reassign_ratio=None, seed=0)
    stream(km, THREE, batches=1, rng=rng)
    counts = km.counts.copy()
    batch, _ = blobs(THREE, 60, rng)
    assigned = np.bincount(km.predict_many(batch), minlength=3)
    km.learn_many(batch)
    np.testing.assert_allclose(km.counts, 0.5 * counts + assigned)


# --------------------------------------------------------------------------- dead centres
FOUR = np.stack([axis((0, 1)), axis((1, 1)), axis((2, 1)), axis((3, 1))])
# A new theme that is nearer to blob 0 than to anything else: without re-seeding it merges into cluster 0.
NEW_THEME = axis((6, 1), (0, 0.5))
AFTER = np.stack([FOUR[0], FOUR[1], FOUR[2], NEW_THEME])


def _new_theme_run(reassign_ratio: float | None) -> tuple[MiniBatchKMeans, float]:
    rng = np.random.default_rng(8)
    km = MiniBatchKMeans(n_clusters=4, decay=0.7, reassign_ratio=reassign_ratio, seed=0)
    stream(km, FOUR, batches=15, rng=rng)
    assert min(best_cosine(km.centers, d) for d in FOUR) > 0.98
    stream(km, AFTER, batches=30, rng=rng)   # blob 3 stops, the new theme starts
    x, truth = blobs(AFTER, 400, rng)
    return km, purity(km.predict_many(x), truth)


def test_a_dead_centre_is_reseeded_so_a_new_theme_gets_its_own_cluster():
    km, score = _new_theme_run(reassign_ratio=0.2)
    assert best_cosine(km.centers, NEW_THEME) > 0.97
    assert best_cosine(km.centers, FOUR[0]) > 0.97
    assert score == 1.0


def test_without_reseeding_the_new_theme_is_merged_into_its_nearest_cluster():
    km, score = _new_theme_run(reassign_ratio=None)
    assert best_cosine(km.centers, NEW_THEME) < 0.97
    assert score < 0.9


def test_a_reseeded_centre_keeps_a_small_new_theme_that_goes_on_arriving():
    """A theme at 2% of each batch sustains a decayed count well above the dead threshold, so once a
    dead centre is re-seeded onto it, it must not be declared dead again the very next batch."""
    rng = np.random.default_rng(12)
    km = MiniBatchKMeans(n_clusters=4, decay=0.95, reassign_ratio=0.05, seed=0)
    stream(km, FOUR, batches=50, rng=rng, batch_size=100)
    found = []
    for _ in range(300):
        x, _ = blobs(FOUR[:3], 100, rng)
        theme = rng.random(100) < 0.02
        x[theme] = blobs(NEW_THEME[None], int(theme.sum()), rng)[0]
        km.learn_many(x)
        found.append(best_cosine(km.centers, NEW_THEME) > 0.95)
    first = found.index(True)
    assert first < 150
    assert all(found[first:]), f"lost the new theme {found[first:].count(False)} times after finding it"


def test_reseeding_waits_until_ten_documents_per_cluster_were_seen():
    km = MiniBatchKMeans(n_clusters=3, reassign_ratio=0.99, seed=0)
    rng = np.random.default_rng(9)
    x, _ = blobs(THREE[:1], 20, rng)   # every document in one blob: two centres starve at once
    km.learn_many(x)
    centres = km.centers.copy()
    assert km.n_seen == 20 < 30
    # no re-seeding yet: the centres are exactly what the update made of the k-means++ seeds
    km2 = MiniBatchKMeans(n_clusters=3, reassign_ratio=None, seed=0)
    km2.learn_many(x)
    np.testing.assert_array_equal(centres, km2.centers)


# --------------------------------------------------------------------------- initialisation
def test_batches_smaller_than_k_are_held_until_k_documents_have_arrived():
    points = np.eye(DIM, dtype=np.float32)[:5]
    km = MiniBatchKMeans(n_clusters=5, seed=0)
    km.learn_many(points[:2])
    km.learn_many(points[2:4])
    assert not km.is_initialised and km.n_seen == 0
    with pytest.raises(ValueError, match="not initialised"):
        km.predict_many(points)
    km.learn_many(points[4:])
    assert km.is_initialised and km.n_seen == 5
    # k-means++ never picks a point twice while an unpicked one is farther away: every point is a centre
    order = km.predict_many(points)
    assert sorted(order.tolist()) == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(km.centers[order], points, atol=1e-6)
    np.testing.assert_array_equal(km.counts, np.ones(5))


def test_predict_before_any_learning_raises_value_error():
    km = MiniBatchKMeans(n_clusters=3)
    with pytest.raises(ValueError):
        km.predict_many(np.ones((2, DIM), np.float32))
    with pytest.raises(ValueError):
        km.similarities(np.ones((2, DIM), np.float32))


def test_kmeans_plus_plus_spreads_the_seeds_over_the_blobs():
    rng = np.random.default_rng(10)
    x, _ = blobs(THREE, 300, rng, noise=0.05)
    for seed in range(5):
        km = MiniBatchKMeans(n_clusters=3, reassign_ratio=None, seed=seed)
        km.learn_many(x)
        assert min(best_cosine(km.centers, d) for d in THREE) > 0.98


def test_an_empty_batch_changes_nothing():
    km = MiniBatchKMeans(n_clusters=2, seed=0)
    km.learn_many(np.zeros((0, DIM), np.float32))
    assert not km.is_initialised and km.n_seen == 0


@pytest.mark.parametrize("kwargs", [{"n_clusters": 0}, {"decay": 0.0}, {"decay": 1.5}])
def test_invalid_parameters_are_rejected(kwargs):
    with pytest.raises(ValueError):
        MiniBatchKMeans(**kwargs)


# --------------------------------------------------------------------------- persistence
@pytest.mark.parametrize("first_batch", [2, 60], ids=["pending", "initialised"])
def test_state_dict_round_trip_continues_exactly_like_the_original(first_batch):
    rng = np.random.default_rng(11)
    km = MiniBatchKMeans(n_clusters=4, decay=0.9, reassign_ratio=0.1, seed=3)
    km.learn_many(blobs(FOUR, first_batch, rng)[0])
    clone = MiniBatchKMeans(n_clusters=1)
    clone.load_state_dict(km.state_dict())
    assert clone.is_initialised == km.is_initialised
    for _ in range(8):
        x, _ = blobs(AFTER, 50, rng)
        km.learn_many(x)
        clone.learn_many(x)
    np.testing.assert_array_equal(clone.centers, km.centers)
    np.testing.assert_array_equal(clone.counts, km.counts)
    assert (clone.n_clusters, clone.decay, clone.n_seen) == (4, 0.9, km.n_seen)


# --------------------------------------------------------------------------- novelty pool
def _themes(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    return unit(rng.normal(size=(n, dim)))


def _noisy(directions: np.ndarray, which: np.ndarray, rng: np.random.Generator, noise: float = 1.4) -> np.ndarray:
    """Documents around their theme with a cosine to it of about 0.5 (as sentence embeddings have)."""
    dim = directions.shape[1]
    return unit(directions[which] + noise * rng.normal(size=(len(which), dim)) / np.sqrt(dim)).astype(np.float32)


def test_a_burst_far_from_every_centre_becomes_a_cluster_within_a_bounded_number_of_documents():
    """Six themes over twelve clusters (several per theme, as K=50 over news classes); then a seventh
    theme at a quarter of the stream. The novelty pool seeds it within 300 of its documents, and the
    centre it seeds holds most of what follows; the quiet stream before seeds nothing."""
    rng = np.random.default_rng(0)
    themes = _themes(7, 48, rng)
    km = MiniBatchKMeans(n_clusters=12, decay=0.999, reassign_ratio=None, seed=0, novelty_quantile=0.2)
    for _ in range(60):   # quiet: 15,000 documents of the six known themes
        km.learn_many(_noisy(themes[:6], rng.integers(6, size=250), rng))
        assert not km.reseeded, "the quiet stream seeded a new cluster"
    new_seen = 0
    for _ in range(40):
        which = rng.integers(6, size=250)
        story = rng.random(250) < 0.25
        which[story] = 6
        km.learn_many(_noisy(themes, which, rng))
        new_seen += int(story.sum())
        if km.reseeded:
            break
    assert km.reseeded and new_seen <= 300, f"no cluster after {new_seen} documents of the new theme"
    slot = next(iter(km.reseeded))
    for _ in range(20):
        which = rng.integers(7, size=250)
        km.learn_many(_noisy(themes, which, rng))
    which = rng.integers(7, size=2000)
    got = km.predict_many(_noisy(themes, which, rng))
    precision = float((which[got == slot] == 6).mean())
    recall = float((got[which == 6] == slot).mean())
    assert precision >= 0.7 and recall >= 0.5, (precision, recall)


def test_a_seeded_centre_weighs_the_documents_it_stands_for_so_it_follows_its_theme():
    """The seeded centre is the mean of a group of pooled documents: its count is theirs (plus what
    it took since), about the new theme's documents seen, so the next ones move it as a
    running mean would instead of being drowned by a count borrowed from another cluster."""
    rng = np.random.default_rng(0)
    themes = _themes(7, 48, rng)
    km = MiniBatchKMeans(n_clusters=12, decay=0.999, reassign_ratio=None, seed=0, novelty_quantile=0.2)
    for _ in range(60):
        km.learn_many(_noisy(themes[:6], rng.integers(6, size=250), rng))
    new_seen = 0
    while not km.reseeded:
        which = rng.integers(6, size=250)
        which[rng.random(250) < 0.25] = 6
        km.learn_many(_noisy(themes, which, rng))
        new_seen += int((which == 6).sum())
    slot = next(iter(km.reseeded))
    assert km.min_novel <= km.counts[slot] <= 1.2 * new_seen, (km.counts[slot], new_seen)
    gap = 1.0 - float(km.centers[slot] @ themes[6])
    km.learn_many(_noisy(themes, np.full(100, 6), rng))
    assert 1.0 - float(km.centers[slot] @ themes[6]) < 0.7 * gap


def test_without_the_novelty_pool_the_burst_is_absorbed_by_existing_clusters():
    rng = np.random.default_rng(0)
    themes = _themes(7, 48, rng)
    km = MiniBatchKMeans(n_clusters=12, decay=0.999, reassign_ratio=None, seed=0, novelty_quantile=None)
    for _ in range(60):
        km.learn_many(_noisy(themes[:6], rng.integers(6, size=250), rng))
    for _ in range(20):
        which = rng.integers(7, size=250)
        km.learn_many(_noisy(themes, which, rng))
    assert not km.reseeded
    which = rng.integers(7, size=2000)
    got = km.predict_many(_noisy(themes, which, rng))
    best = max(float((which[got == k] == 6).mean()) * float((got[which == 6] == k).mean() >= 0.5)
               for k in np.unique(got))
    assert best < 0.7


def test_novelty_quantile_is_validated():
    with pytest.raises(ValueError):
        MiniBatchKMeans(4, novelty_quantile=0.7)
