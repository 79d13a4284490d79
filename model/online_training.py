"""Training slices of the online model: gradient steps on replay-buffer samples, off the learner's thread.

:meth:`OnlineTopicModel.train <xtream.model.online.OnlineTopicModel.train>` calls :func:`run_slice`.
Each step draws its sample under the model's data lock and steps under its parameter lock, so the
learner waits for neither; a step whose sample predates a change of the network's shape is dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch

from xtream.model.network_surgery import live_network
from xtream.model.serving import serving_copy
from xtream.model.training import LanguageCorpus, corpus_batch
from xtream.model.xtra import XTRA

if TYPE_CHECKING:
    from xtream.model.online import OnlineTopicModel

__all__ = ["TrainedSlice", "run_slice"]


class TrainedSlice(dict[str, float]):
    """What :meth:`OnlineTopicModel.train` did: the mean loss parts (the mapping) and ``steps``, the
    gradient steps it ran."""

    def __init__(self, losses: dict[str, float] | None = None, steps: int = 0) -> None:
        super().__init__(losses or {})
        self.steps = steps


def run_slice(model: OnlineTopicModel, steps: int, stop: Callable[[], bool] | None) -> int:
    """Up to ``steps`` steps (fewer when ``stop()`` turns true), then publish; returns the steps run."""
    _embed_queued_words(model)
    done, sums = _steps(model, steps, stop)
    with model._params_lock:
        generation = model._shape_generation
        serving = serving_copy(model.xtra) if done and not model._warmup_left and model.xtra is not None else None
    with model._data_lock:
        _finish_slice(model, done, sums, generation, serving)
    return done


def _embed_queued_words(model: OnlineTopicModel) -> None:
    queue = model._words
    if queue is None:
        return
    with model._data_lock:
        todo = queue.todo()
    if not todo:
        return
    vectors = queue.embed(todo)   # the slow part, outside both locks
    with model._data_lock, model._params_lock:
        queue.fill(live_network(model)[0], model.vocabs, todo, vectors)


def _steps(model: OnlineTopicModel, steps: int, stop: Callable[[], bool] | None) -> tuple[int, dict[str, float]]:
    sums: dict[str, float] = {}
    done = 0
    for _ in range(steps):
        if stop is not None and stop():
            break
        with model._data_lock:
            generation = model._shape_generation
            batch = _sample_batch(model)
        if not batch:
            break
        with model._params_lock:
            if generation != model._shape_generation:
                continue   # the vocabulary changed after the draw: its columns no longer match
            with model._own_torch_rng():
                parts = live_network(model)[1].step(batch)
            model._warmup_left = max(0, model._warmup_left - 1)
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v
        done += 1
    return done, sums


def _sample_batch(model: OnlineTopicModel) -> dict[str, dict[str, torch.Tensor]]:
    sample = model.buffer.sample(model.cfg.batch_size, languages=list(live_network(model)[0].cfg.vocab_sizes))
    batch = {}
    for lang, (bow, emb, _) in sample.items():
        if bow.shape[0] < 2:
            continue
        corpus = LanguageCorpus(bow, emb, model.kmeans.predict_many(emb))
        batch[lang] = corpus_batch(corpus, np.arange(len(corpus)))
    return batch


def _finish_slice(model: OnlineTopicModel, done: int, sums: dict[str, float], generation: int,
                  serving: XTRA | None) -> None:
    """Publish a slice that stepped (a new version), once the warm-up is over."""
    if not done:
        return
    model.last_losses = {k: v / done for k, v in sums.items()}
    if model._warmup_left:
        return
    if serving is None or generation != model._shape_generation:
        with model._params_lock:   # re-shaped meanwhile: copy the network as it is now
            model._publish_serving()
    else:
        model._serving.network = serving
    model.version += 1
