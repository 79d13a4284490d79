"""Training debt: the gradient steps the model is owed for what it has learned, and when the loop pays.

The service trains on a background thread at a low priority so that ingestion gets the CPU first.
On a busy host, or while a backlog keeps ingestion busy, that thread may get almost nothing: the
model would go on learning documents on a network that never trains, and never even finishes its
warm-up, for as long as the backlog lasts.

The debt makes the trainer's share independent of how busy the host is. Once XTRA is initialised:

- the warm-up steps are owed over the next ``warmup_within_docs`` documents;
- every document learned after those owes ``steps_per_doc`` steps (``train_steps /
  train_every_docs``); a model already warm when the account opens owes them from the start. The
  warm-up's own steps train on the documents of its window, so a trainer that finishes the warm-up
  late is not asked, on top, for the steady steps of the documents that arrived meanwhile.

The debt is what is owed minus the steps done since. When it passes ``max_steps``, or the warm-up is
overdue, the loop itself trains (at the loop's priority, while intake waits) until nothing is owed:
intake slows exactly as much as training needs. While the background thread is inside a slice it is
paying already, and the loop does not queue behind it unless the warm-up is late or, once the model
is warm, the debt is past twice its bound. On an idle host the background thread keeps the debt
near zero and the loop never pays.

The origin is taken when this process first sees an initialised model; a restarted process starts
a fresh account from the checkpoint's state (including the warm-up steps it still had to run).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from xtream.model.online import OnlineTopicModel

__all__ = ["TrainingDebt"]


class TrainingDebt:
    """Steps owed by the trainer, from the model's document and step counters.

    Parameters
    ----------
    steps_per_doc
        Gradient steps each learned document is worth.
    warmup_within_docs
        Documents after XTRA's initialisation by which its warm-up steps must be done.
    max_steps
        Debt past which the loop pays it (``> 0``).

    Attributes
    ----------
    paid_steps : int
        Steps the loop ran to pay the debt (not those of the background trainer).
    """

    def __init__(self, steps_per_doc: float, warmup_within_docs: int, max_steps: float) -> None:
        if steps_per_doc < 0 or warmup_within_docs < 1 or max_steps <= 0:
            raise ValueError("steps_per_doc >= 0, warmup_within_docs >= 1 and max_steps > 0 are required")
        self.steps_per_doc = float(steps_per_doc)
        self.warmup_within_docs = int(warmup_within_docs)
        self.max_steps = float(max_steps)
        self.paid_steps = 0
        self._origin: tuple[int, int, int] | None = None   # (documents, steps, warm-up steps left)

    def steps(self, model: OnlineTopicModel) -> float:
        """Steps owed now (negative when the trainer is ahead; 0 before XTRA exists)."""
        if not model.is_initialised:
            return 0.0
        done = model.training_steps
        if self._origin is None:
            self._origin = (model.n_docs, done, model.warmup_steps_left)
        docs0, steps0, warmup0 = self._origin
        docs = model.n_docs - docs0
        steady = max(0, docs - self.warmup_within_docs) if warmup0 else docs
        owed = warmup0 * min(1.0, docs / self.warmup_within_docs) + self.steps_per_doc * steady
        return owed - (done - steps0)

    def overdue(self, model: OnlineTopicModel, factor: float = 1.0) -> bool:
        """The debt passed ``factor`` times its bound, or the warm-up is :meth:`late`."""
        return self.steps(model) > factor * self.max_steps or self.late(model)

    def late(self, model: OnlineTopicModel) -> bool:
        """The warm-up outlived ``warmup_within_docs`` documents with steps still owed."""
        started = self._origin is not None and model.n_docs - self._origin[0] >= self.warmup_within_docs
        return started and not model.is_warm and self.steps(model) > 0

    def pay(self, model: OnlineTopicModel, stop: Callable[[], bool]) -> int:
        """Train on the calling thread until nothing is owed (or ``stop()``); returns the steps run."""
        done = model.train(max(1, math.ceil(self.steps(model))), stop=lambda: stop() or self.steps(model) <= 0).steps
        self.paid_steps += done
        return done
