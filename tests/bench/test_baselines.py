"""Shapes and meaning of the baselines built from the embeddings (bench.baselines)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from bench.baselines import cluster_centres, ctfidf, soft_memberships


def test_centres_and_soft_memberships_shapes():
    rng = np.random.default_rng(0)
    emb = {"en": rng.standard_normal((30, 8)), "ja": rng.standard_normal((20, 8))}
    labels = {"en": np.arange(30) % 5, "ja": np.arange(20) % 5}
    centres = cluster_centres(emb, labels, 6)   # cluster 5 has no documents
    assert centres.shape == (6, 8)
    assert np.allclose(np.linalg.norm(centres[:5], axis=1), 1) and not centres[5].any()
    soft = soft_memberships(emb["ja"], centres)
    assert soft.shape == (20, 6) and soft.dtype == np.float32
    assert np.all(np.abs(soft) <= 1 + 1e-5)


def test_soft_memberships_peak_at_the_own_centre():
    centres = np.eye(3, 4, dtype=np.float32)
    x = np.eye(3, 4) * 5 + 0.01
    assert soft_memberships(x, centres).argmax(axis=1).tolist() == [0, 1, 2]


def test_ctfidf_shape_and_distinctive_words():
    # cluster 0 uses words 0, 1 and the common word 3; cluster 1 uses 2 and 3; word 4 never occurs
    bow = sp.csr_matrix(np.array([[2, 1, 0, 1, 0], [1, 2, 0, 1, 0], [0, 0, 3, 1, 0], [0, 0, 2, 1, 0]]))
    w = ctfidf(bow, np.array([0, 0, 1, 1]), 3)
    assert w.shape == (3, 5) and np.all(w >= 0)
    assert not w[2].any() and not w[:, 4].any()
    assert w[0].argmax() in (0, 1) and w[1].argmax() == 2
    assert w[0, 0] > w[0, 3]   # the word both clusters share ranks below the cluster's own


def test_baselines_reject_bad_labels():
    with pytest.raises(ValueError):
        ctfidf(sp.csr_matrix(np.ones((2, 3))), np.array([0, 5]), 3)
    with pytest.raises(ValueError):
        cluster_centres({"en": np.ones((2, 3))}, {"en": np.array([0])}, 2)
