"""Prevalence jumps: a topic whose share of the stream rises abruptly (a story breaking).

Each topic slot has a Page-Hinkley detector (``river.drift.PageHinkley``, upward mode) on its share
of the stream, measured over consecutive windows of ``window_docs`` documents, so the series does
not depend on how the caller batches documents. Shares are scaled by K (a topic of average size reads
1.0), so one threshold fits every K. A slot that becomes another topic (re-seeded, new identity)
gets a fresh detector: its history is another topic's.

The detectors are checkpointed with the model (``state_dict``) as the series each one has seen
since it last started over (a detection restarts it, as river's does): loading replays them into
fresh detectors, which reproduces their state exactly. Each series keeps its last ``max_history``
points, so a detector that has not fired for longer than that is rebuilt from its recent history.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from xtream.model.lineage import LineageEvent

__all__ = ["PrevalenceShift"]


class PrevalenceShift:
    """Page-Hinkley per topic slot on windowed topic shares; ``take_jumps`` says which rose.

    Parameters
    ----------
    n_topics
        K, the number of slots.
    window_docs
        Documents per point of each detector's series.
    threshold, delta, min_instances
        Page-Hinkley's (river): the cumulative excess over the running mean (in units of the
        average topic share) that counts as a jump, the excess tolerated per point, and the points
        seen before any detection.

    Attributes
    ----------
    windows : int
        Windows completed so far.
    """

    def __init__(self, n_topics: int, window_docs: int = 256, threshold: float = 8.0, delta: float = 0.5,
                 min_instances: int = 10, max_history: int = 4096) -> None:
        if n_topics < 1 or window_docs < 1:
            raise ValueError("n_topics and window_docs must be >= 1")
        self.n_topics = n_topics
        self.window_docs = window_docs
        self.threshold = threshold
        self.delta = delta
        self.min_instances = min_instances
        self.max_history = max_history
        self.windows = 0
        self._counts = np.zeros(n_topics, dtype=np.int64)
        self._detectors = [self._detector() for _ in range(n_topics)]
        self._history: list[list[float]] = [[] for _ in range(n_topics)]   # points since each restart
        self._jumped: set[int] = set()

    def _detector(self) -> Any:
        from river.drift import PageHinkley

        return PageHinkley(min_instances=self.min_instances, delta=self.delta, threshold=self.threshold, mode="up")

    def learn_many(self, slots: np.ndarray) -> None:
        """Count a batch's topic slots (one per document); closes a window every ``window_docs``."""
        slots = np.asarray(slots, dtype=np.int64)
        slots = slots[(slots >= 0) & (slots < self.n_topics)]
        while len(slots):
            room = self.window_docs - int(self._counts.sum())
            self._counts += np.bincount(slots[:room], minlength=self.n_topics)
            slots = slots[room:]
            if self._counts.sum() >= self.window_docs:
                self._close_window()

    def _close_window(self) -> None:
        shares = self._counts / self._counts.sum() * self.n_topics
        for k, x in enumerate(shares.tolist()):
            detector = self._detectors[k]
            if detector.drift_detected:   # river restarts it at this update
                self._history[k] = []
            self._history[k].append(x)
            del self._history[k][:-self.max_history]
            detector.update(x)
            if detector.drift_detected:
                self._jumped.add(k)
        self._counts[:] = 0
        self.windows += 1

    def reset(self, slots: Iterable[int]) -> None:
        """Forget the history of ``slots`` (they hold another topic now)."""
        for k in slots:
            self._detectors[k] = self._detector()
            self._history[k] = []
            self._jumped.discard(k)

    def take_jumps(self) -> list[int]:
        """Slots whose share jumped since the last call (sorted), and forget them."""
        jumped = sorted(self._jumped)
        self._jumped.clear()
        return jumped

    def state_dict(self) -> dict[str, Any]:
        return {"n_topics": self.n_topics, "window_docs": self.window_docs, "threshold": self.threshold,
                "delta": self.delta, "min_instances": self.min_instances, "max_history": self.max_history,
                "windows": self.windows, "counts": self._counts.copy(),
                "history": [np.asarray(h, dtype=np.float64) for h in self._history], "jumped": sorted(self._jumped)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("n_topics", "window_docs", "min_instances", "max_history", "windows"):
            setattr(self, key, int(state[key]))
        self.threshold, self.delta = float(state["threshold"]), float(state["delta"])
        self._counts = np.asarray(state["counts"], dtype=np.int64).copy()
        self._history = [[float(x) for x in h] for h in state["history"]]
        self._detectors = []
        for series in self._history:
            detector = self._detector()
            for x in series:
                detector.update(x)
            self._detectors.append(detector)
        self._jumped = {int(k) for k in state["jumped"]}

    def events(self, previous_ids: list[int], ids: list[int], words: list[tuple[str, ...]]) -> list[LineageEvent]:
        """At a snapshot: reset the slots whose topic id changed, and a ``prevalence_jump`` event
        (with the topic's stable id and top words) for every slot that jumped since the last one."""
        self.reset([k for k, (a, b) in enumerate(zip(previous_ids, ids)) if a != b])
        return [LineageEvent("prevalence_jump", ids[k], words=tuple(words[k])) for k in self.take_jumps()]
