"""Theta blending, relevance and topic labels (model.readout)."""

from __future__ import annotations

import numpy as np
import pytest

from xtream.model.readout import blend_theta, cluster_memberships, relevance, topic_labels


def test_cluster_memberships_are_distributions_peaking_at_the_nearest_centre():
    m = cluster_memberships(np.array([[1.0, 0.1], [0.1, 1.0]]), np.eye(2), temperature=0.1)
    assert np.allclose(m.sum(axis=1), 1) and m.argmax(axis=1).tolist() == [0, 1]
    with pytest.raises(ValueError):
        cluster_memberships(np.ones((1, 2)), np.eye(2), 0.0)


def test_blend_theta_interpolates_and_checks_arguments():
    theta, member = np.array([[0.8, 0.2]]), np.array([[0.0, 1.0]])
    assert np.allclose(blend_theta(theta, member, 0.5), [[0.4, 0.6]])
    assert blend_theta(theta, member, 0.0) is theta
    with pytest.raises(ValueError):
        blend_theta(theta, member, 1.5)
    with pytest.raises(ValueError):
        blend_theta(theta, np.ones((2, 2)), 0.5)


def test_labels_prefer_distinctive_words_over_shared_ones():
    vocab = ["the", "goal", "match", "vote", "party"]
    # "the" is the most probable word of both topics; labels must skip it
    p = np.array([[0.5, 0.3, 0.15, 0.03, 0.02], [0.5, 0.02, 0.03, 0.3, 0.15]])
    assert topic_labels(p, vocab, n_words=2) == ["goal match", "vote party"]
    assert topic_labels(np.array([[0.6, 0.4]]), ["股市", "上涨"], n_words=2) == ["股市·上涨"]
    assert relevance(p, 1.0).argmax(axis=1).tolist() == [0, 0]   # by probability alone: "the"
