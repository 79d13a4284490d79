"""Incremental spherical mini-batch k-means (Sculley 2010) for a stream of unit embeddings.

Each centre keeps a count ``v_c``; a batch moves it toward the mean of its new members with step
``n_c / v_c``, which is the exact running mean (Sculley's per-centre learning rate ``1/v_c``
applied to the whole batch at once, no per-document loop). ``decay < 1`` shrinks the counts every
batch, so old documents weigh less and centres follow a drifting stream. Centres are kept on the
unit sphere because the embeddings are compared by cosine.

Centres that receive (almost) nothing for long are *dead*: with ``reassign_ratio`` set they are
re-seeded from the batch's worst-fitted documents, which is how a new theme gets a cluster.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MiniBatchKMeans"]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class MiniBatchKMeans:
    """Online k-means on L2-normalised vectors with river-style ``learn_many``/``predict_many``.

    Parameters
    ----------
    n_clusters
        K; XTRA uses one cluster per topic.
    decay
        Per-batch multiplier of the centre counts (1.0 = no forgetting). With ``decay=0.99`` and
        batches of 100 documents the effective memory is about 100 batches.
    max_count
        Cap on a centre's count, so centres never freeze: the smallest step is ``n_c / max_count``.
    reassign_ratio
        A centre whose count falls below this share of the mean count is re-seeded from a badly
        fitted document of the current batch. ``None`` disables it.
    novelty_threshold, min_novel, min_novel_share
        When at least ``min_novel`` documents (and ``min_novel_share`` of the batch) have cosine similarity below
        ``novelty_threshold`` to every centre, the weakest centre is re-seeded on them (a new
        theme). ``None`` disables it.
    seed
        Seeds k-means++ initialisation and re-seeding.

    Attributes
    ----------
    centers : np.ndarray, shape (K, d)
        Unit-norm centres (``None`` until initialised).
    counts : np.ndarray, shape (K,)
        (Decayed) number of documents each centre has absorbed.
    n_seen : int
        Documents learned in total.
    """

    def __init__(self, n_clusters: int = 50, decay: float = 1.0, max_count: float = 1e6,
                 reassign_ratio: float | None = 0.01, seed: int = 0, novelty_threshold: float | None = None,
                 min_novel: int = 8, min_novel_share: float = 0.04) -> None:
        if n_clusters < 1:
            raise ValueError(f"n_clusters must be >= 1, got {n_clusters}")
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"decay must be in (0, 1], got {decay}")
        self.n_clusters = n_clusters
        self.decay = decay
        self.max_count = max_count
        self.reassign_ratio = reassign_ratio
        self.seed = seed
        self.novelty_threshold = novelty_threshold
        self.min_novel = min_novel
        self.min_novel_share = min_novel_share
        #: Centres re-seeded on a new theme since the owner last cleared this set.
        self.reseeded: set[int] = set()
        self.centers: np.ndarray | None = None
        self.counts = np.zeros(n_clusters, dtype=np.float64)
        self.n_seen = 0
        self._rng = np.random.default_rng(seed)
        self._pending: list[np.ndarray] = []  # documents held until there are K to initialise from

    @property
    def is_initialised(self) -> bool:
        return self.centers is not None

    # -- learning ------------------------------------------------------------------------------
    def learn_many(self, x: np.ndarray) -> None:
        x = _unit(np.asarray(x, dtype=np.float32))
        if len(x) == 0:
            return
        if self.centers is None:
            self._pending.append(x)
            held = np.concatenate(self._pending)
            if len(held) < self.n_clusters:
                return
            self._pending = []
            self.centers = self._kmeans_plus_plus(held)
            x = held
        sims = self.similarities(x)
        labels = np.argmax(sims, axis=1)
        self._seed_novel(x, sims, labels)
        # Per-cluster sums as one (K, n) @ (n, d) product: np.add.at was 86% of the time.
        onehot = np.zeros((self.n_clusters, len(x)), dtype=np.float32)
        onehot[labels, np.arange(len(x))] = 1.0
        sums = (onehot @ x).astype(np.float64)
        batch_counts = np.bincount(labels, minlength=self.n_clusters).astype(np.float64)
        self.counts *= self.decay
        self.counts = np.minimum(self.counts + batch_counts, self.max_count)
        hit = batch_counts > 0
        step = np.zeros(self.n_clusters)
        step[hit] = batch_counts[hit] / np.maximum(self.counts[hit], batch_counts[hit])
        batch_means = sums[hit] / batch_counts[hit, None]
        moved = (1.0 - step[hit, None]) * self.centers[hit] + step[hit, None] * batch_means
        self.centers[hit] = _unit(moved).astype(np.float32)
        self.n_seen += len(x)
        self._reassign_dead(x, labels)

    def _kmeans_plus_plus(self, x: np.ndarray) -> np.ndarray:
        """k-means++ seeding (cosine distance), vectorised over documents."""
        centers = np.empty((self.n_clusters, x.shape[1]), dtype=np.float32)
        centers[0] = x[self._rng.integers(len(x))]
        closest = 1.0 - x @ centers[0]
        for k in range(1, self.n_clusters):
            weights = np.clip(closest, 0.0, None) ** 2
            total = weights.sum()
            idx = self._rng.choice(len(x), p=weights / total) if total > 0 else self._rng.integers(len(x))
            centers[k] = x[idx]
            closest = np.minimum(closest, 1.0 - x @ centers[k])
        return centers

    def _seed_novel(self, x: np.ndarray, sims: np.ndarray, labels: np.ndarray) -> None:
        """A batch with ``min_novel`` documents unlike every centre gets a centre of its own.

        The weakest centre (smallest count) moves to the mean of those documents, which are
        relabelled to it in place. This is how a theme that appears mid-stream is born quickly
        instead of being smeared over its nearest neighbours until some centre dies of old age.
        """
        if self.novelty_threshold is None or self.n_seen < 10 * self.n_clusters:
            return
        novel = np.flatnonzero(sims.max(axis=1) < self.novelty_threshold)
        if len(novel) < max(self.min_novel, self.min_novel_share * len(x)):
            return
        weakest = int(np.argmin(self.counts))
        self.centers[weakest] = _unit(x[novel].mean(axis=0)).astype(np.float32)
        self.reseeded.add(weakest)
        others = np.delete(self.counts, weakest)
        self.counts[weakest] = others.min() if len(others) else 1.0
        labels[novel] = weakest

    def _reassign_dead(self, x: np.ndarray, labels: np.ndarray) -> None:
        if self.reassign_ratio is None or self.n_seen < 10 * self.n_clusters:
            return
        dead = np.flatnonzero(self.counts < self.reassign_ratio * self.counts.mean())
        if len(dead) == 0:
            return
        fit = np.einsum("nd,nd->n", x, self.centers[labels])
        worst = np.argsort(fit)[: len(dead)]
        alive = np.delete(self.counts, dead)
        self.centers[dead[: len(worst)]] = x[worst]
        self.reseeded.update(dead[: len(worst)].tolist())
        # As sklearn does: start at the smallest live count, not 1, or the next batch finds the
        # centre dead again unless its theme alone fills ``reassign_ratio`` of a mean count at once.
        self.counts[dead[: len(worst)]] = alive.min() if len(alive) else 1.0

    # -- inference -----------------------------------------------------------------------------
    def similarities(self, x: np.ndarray) -> np.ndarray:
        """Cosine similarity of each document to each centre, shape (n, K)."""
        if self.centers is None:
            raise ValueError("MiniBatchKMeans is not initialised: learn at least n_clusters documents first")
        return _unit(np.asarray(x, dtype=np.float32)) @ self.centers.T

    def predict_many(self, x: np.ndarray) -> np.ndarray:
        """Index of the nearest centre for each document (int64)."""
        return np.argmax(self.similarities(x), axis=1)

    # -- persistence ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "n_clusters": self.n_clusters, "decay": self.decay, "max_count": self.max_count,
            "reassign_ratio": self.reassign_ratio, "seed": self.seed, "n_seen": self.n_seen,
            "novelty_threshold": self.novelty_threshold, "min_novel": self.min_novel,
            "min_novel_share": self.min_novel_share,
            "centers": None if self.centers is None else self.centers.copy(),
            "counts": self.counts.copy(),
            "pending": np.concatenate(self._pending) if self._pending else None,
            "rng": self._rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict) -> None:
        self.n_clusters = state["n_clusters"]
        self.decay = state["decay"]
        self.max_count = state["max_count"]
        self.reassign_ratio = state["reassign_ratio"]
        self.seed = state["seed"]
        self.novelty_threshold = state.get("novelty_threshold")
        self.min_novel = int(state.get("min_novel", 8))
        self.min_novel_share = float(state.get("min_novel_share", 0.04))
        self.n_seen = state["n_seen"]
        self.centers = None if state["centers"] is None else np.asarray(state["centers"], dtype=np.float32).copy()
        self.counts = np.asarray(state["counts"], dtype=np.float64).copy()
        self._pending = [] if state["pending"] is None else [np.asarray(state["pending"], dtype=np.float32)]
        self._rng = np.random.default_rng()
        self._rng.bit_generator.state = state["rng"]
