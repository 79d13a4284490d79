"""Incremental spherical mini-batch k-means (Sculley 2010) for a stream of unit embeddings.

Each centre keeps a count ``v_c``; a batch moves it toward the mean of its new members with step
``n_c / v_c``, which is the exact running mean (Sculley's per-centre learning rate ``1/v_c``
applied to the whole batch at once, no per-document loop). ``decay < 1`` shrinks the counts every
batch, so old documents weigh less and centres follow a drifting stream. Centres are kept on the
unit sphere because the embeddings are compared by cosine.

Centres that receive (almost) nothing for long are *dead*: with ``reassign_ratio`` set they are
re-seeded from the batch's worst-fitted documents. A new theme gets a cluster sooner through the
*novelty pool*: documents that fit their centre worse than most of the stream wait there, across
batches, and when enough of them are much closer to each other than to any centre, the weakest
centre moves to them. "Worse than most" is calibrated on the stream itself (a running quantile of
the documents' fit), because what cosine similarity a good fit has depends on the embedder.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xtream.model.vectors import unit_rows

__all__ = ["MiniBatchKMeans"]

#: Cosine above which a pooled document counts as a copy of another (a theme is many documents,
#: not one document many times).
DUPLICATE = 0.95


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
    novelty_quantile
        Documents whose similarity to their centre is below this running quantile of the stream's
        (e.g. 0.2: the worst-fitted fifth) enter the novelty pool. ``None`` disables the pool.
    min_novel
        Distinct pooled documents a new theme needs, each at least as close to the group's seed as
        halfway between a poor and a typical document-to-centre fit.
    novelty_margin
        How much closer (mean cosine) the group must be to its own mean than to the centres it
        has now: a loose tail of an existing cluster does not pass, a theme of its own does.
    novelty_pool
        Most documents the pool holds (the oldest leave first). It is also the time span a theme's
        documents must gather in: with ``novelty_quantile`` 0.2 a pool of 256 covers about the last
        1,300 documents, so a burst fills it while a theme that trickles in over the whole stream
        (a corner of existing topics) leaves before it gathers.
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
                 reassign_ratio: float | None = 0.01, seed: int = 0, novelty_quantile: float | None = None,
                 min_novel: int = 8, novelty_margin: float = 0.1, novelty_pool: int = 256) -> None:
        if n_clusters < 1:
            raise ValueError(f"n_clusters must be >= 1, got {n_clusters}")
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"decay must be in (0, 1], got {decay}")
        self.n_clusters = n_clusters
        self.decay = decay
        self.max_count = max_count
        self.reassign_ratio = reassign_ratio
        self.seed = seed
        if novelty_quantile is not None and not 0.0 < novelty_quantile < 0.5:
            raise ValueError(f"novelty_quantile must be in (0, 0.5), got {novelty_quantile}")
        self.novelty_quantile = novelty_quantile
        self.min_novel = min_novel
        self.novelty_margin = novelty_margin
        self.novelty_pool = novelty_pool
        #: Centres re-seeded on a new theme since the owner last cleared this set.
        self.reseeded: set[int] = set()
        self.centers: np.ndarray | None = None
        self.counts = np.zeros(n_clusters, dtype=np.float64)
        self.n_seen = 0
        self._rng = np.random.default_rng(seed)
        self._pending: list[np.ndarray] = []  # documents held until there are K to initialise from
        #: Running estimates of a poor fit (the ``novelty_quantile``) and a typical one (the median).
        self.fit_low: float | None = None
        self.fit_typical: float | None = None
        self._pool = np.zeros((0, 0), dtype=np.float32)   # poorly fitted documents awaiting a theme

    @property
    def is_initialised(self) -> bool:
        return self.centers is not None

    # -- learning ------------------------------------------------------------------------------
    def learn_many(self, x: np.ndarray) -> None:
        x = unit_rows(np.asarray(x, dtype=np.float32))
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
        # Per-cluster sums as one (K, n) @ (n, d) product, not a per-row np.add.at.
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
        self.centers[hit] = unit_rows(moved).astype(np.float32)
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
        """Pool the batch's poorly fitted documents; seed the weakest centre on a theme among them.

        The seed group is the pooled document with the most pooled neighbours at least as close as
        a fit halfway between a poor and a typical one, widened to the pooled documents near the
        group's mean. It becomes a centre only if its members are ``novelty_margin`` closer to that
        mean than to their current centres, and the mean is farther from every centre than most
        centres are from their nearest other centre (the worst-fitted tail of a broad cluster is
        near that cluster; a new theme is not). Copies of a pooled document are not pooled. The
        batch's documents are relabelled against the moved centre in place.
        """
        centers = self.centers
        if centers is None:
            return
        if self.novelty_quantile is None or self.n_seen < 10 * self.n_clusters:
            return
        best = sims.max(axis=1)
        weight = 1.0 - 0.999 ** len(x)   # a memory of about a thousand documents
        low, typical = np.quantile(best, [self.novelty_quantile, 0.5])
        if self.fit_low is None or self.fit_typical is None:
            self.fit_low, self.fit_typical = float(low), float(typical)
        else:
            self.fit_low += weight * (float(low) - self.fit_low)
            self.fit_typical += weight * (float(typical) - self.fit_typical)
        poor = x[best < self.fit_low]
        held = self._pool if self._pool.size else np.zeros((0, x.shape[1]), np.float32)
        if len(poor):
            copies = poor @ np.concatenate([held, poor]).T > DUPLICATE
            earlier = np.arange(copies.shape[1])[None, :] < (len(held) + np.arange(len(poor)))[:, None]
            poor = poor[~(copies & earlier).any(axis=1)]
        pool = np.concatenate([held, poor])
        self._pool = pool = pool[-self.novelty_pool:]
        if len(pool) < self.min_novel or len(poor) == 0:
            return
        near = (pool @ pool.T) >= 0.5 * (self.fit_low + self.fit_typical)
        neighbours = near.sum(axis=1)
        seed = int(np.argmax(neighbours))
        if neighbours[seed] < self.min_novel:
            return
        centre = unit_rows(pool[near[seed]].mean(axis=0))
        members = pool @ centre >= 0.8 * self.fit_typical
        centre = unit_rows(pool[members].mean(axis=0))
        own = float((pool[members] @ centre).mean())
        current = float((pool[members] @ centers.T).max(axis=1).mean())
        if members.sum() < self.min_novel or own - current < self.novelty_margin:
            return
        between = centers @ centers.T
        np.fill_diagonal(between, -1.0)
        if float((centers @ centre).max()) >= float(np.median(between.max(axis=1))):
            return
        weakest = int(np.argmin(self.counts))
        centers[weakest] = centre.astype(np.float32)
        self.reseeded.add(weakest)
        # The centre stands for its members; those of this batch are counted when it is learned.
        self.counts[weakest] = max(float(members[: max(len(pool) - len(poor), 0)].sum()), 1.0)
        self._pool = pool[~members]
        sims[:, weakest] = x @ centers[weakest]
        labels[:] = np.argmax(sims, axis=1)

    def _reassign_dead(self, x: np.ndarray, labels: np.ndarray) -> None:
        centers = self.centers
        if centers is None:
            return
        if self.reassign_ratio is None or self.n_seen < 10 * self.n_clusters:
            return
        dead = np.flatnonzero(self.counts < self.reassign_ratio * self.counts.mean())
        if len(dead) == 0:
            return
        fit = np.einsum("nd,nd->n", x, centers[labels])
        worst = np.argsort(fit)[: len(dead)]
        alive = np.delete(self.counts, dead)
        centers[dead[: len(worst)]] = x[worst]
        self.reseeded.update(dead[: len(worst)].tolist())
        # As sklearn does: start at the smallest live count, not 1, or the next batch finds the
        # centre dead again unless its theme alone fills ``reassign_ratio`` of a mean count at once.
        self.counts[dead[: len(worst)]] = alive.min() if len(alive) else 1.0

    # -- inference -----------------------------------------------------------------------------
    def similarities(self, x: np.ndarray) -> np.ndarray:
        """Cosine similarity of each document to each centre, shape (n, K)."""
        if self.centers is None:
            raise ValueError("MiniBatchKMeans is not initialised: learn at least n_clusters documents first")
        return unit_rows(np.asarray(x, dtype=np.float32)) @ self.centers.T

    def predict_many(self, x: np.ndarray) -> np.ndarray:
        """Index of the nearest centre for each document (int64)."""
        return np.argmax(self.similarities(x), axis=1)

    # -- persistence ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "n_clusters": self.n_clusters, "decay": self.decay, "max_count": self.max_count,
            "reassign_ratio": self.reassign_ratio, "seed": self.seed, "n_seen": self.n_seen,
            "novelty_quantile": self.novelty_quantile, "min_novel": self.min_novel,
            "novelty_margin": self.novelty_margin, "novelty_pool": self.novelty_pool,
            "fit_low": self.fit_low, "fit_typical": self.fit_typical, "novel_pool": self._pool.copy(),
            "centers": None if self.centers is None else self.centers.copy(),
            "counts": self.counts.copy(),
            "pending": np.concatenate(self._pending) if self._pending else None,
            "rng": self._rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.n_clusters = state["n_clusters"]
        self.decay = state["decay"]
        self.max_count = state["max_count"]
        self.reassign_ratio = state["reassign_ratio"]
        self.seed = state["seed"]
        self.novelty_quantile = state.get("novelty_quantile")
        self.min_novel = int(state.get("min_novel", 8))
        self.novelty_margin = float(state.get("novelty_margin", 0.1))
        self.novelty_pool = int(state.get("novelty_pool", 256))
        self.fit_low, self.fit_typical = state.get("fit_low"), state.get("fit_typical")
        self._pool = np.asarray(state.get("novel_pool", np.zeros((0, 0))), dtype=np.float32).copy()
        self.n_seen = state["n_seen"]
        self.centers = None if state["centers"] is None else np.asarray(state["centers"], dtype=np.float32).copy()
        self.counts = np.asarray(state["counts"], dtype=np.float64).copy()
        self._pending = [] if state["pending"] is None else [np.asarray(state["pending"], dtype=np.float32)]
        self._rng = np.random.default_rng()
        self._rng.bit_generator.state = state["rng"]
