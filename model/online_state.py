"""The online model's whole state as plain containers and arrays, and back.

:meth:`OnlineTopicModel.state_dict <xtream.model.online.OnlineTopicModel.state_dict>` and
``load_state_dict`` call these under both of the model's locks. The state holds copies (torch's
state dicts alias the live tensors, which later steps update in place), so a checkpoint written
later is not changed by training meanwhile. Keys added since the first checkpoints are optional.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from xtream.model.training import XTRATrainer
from xtream.model.xtra import XTRA, XTRAConfig

if TYPE_CHECKING:
    from xtream.model.online import OnlineTopicModel

__all__ = ["dump_state", "load_state"]


def dump_state(model: OnlineTopicModel) -> dict[str, Any]:
    state = {
        "cfg": dict(model.cfg.__dict__), "embedding_dim": model.embedding_dim,
        "kmeans": model.kmeans.state_dict(), "buffer": model.buffer.state_dict(),
        "exemplars": model.exemplars.state_dict(),
        "vocabs": {lang: v.state_dict() for lang, v in model.vocabs.items()},
        "version": model.version, "n_docs": model.n_docs, "docs_by_lang": dict(model.docs_by_lang),
        "warmup_left": model._warmup_left,
        "words_to_embed": {} if model._words is None else model._words.state_dict(),
        **model._prevalence.state_dict(), "since_refresh": model._since_refresh,
        "fresh_topics": dict(model._serving.fresh),
        "torch_rng": model._torch_rng.numpy().copy(),
        "pending": {lang: {"tokens": [t for t, _ in held], "emb": np.stack([e for _, e in held])}
                    for lang, held in model._pending.items() if held},
        "xtra": None,
    }
    if model.xtra is not None and model.trainer is not None:
        state["xtra"] = {"config": model.xtra.cfg.to_dict(),
                         "weights": {k: v.detach().clone() for k, v in model.xtra.state_dict().items()},
                         "optimizer": copy.deepcopy(model.trainer.optimizer.state_dict()),
                         "scheduler": model.trainer.scheduler.state_dict(), "steps": model.trainer.steps}
    return state


def load_state(model: OnlineTopicModel, state: dict[str, Any]) -> None:
    """Load ``state`` into ``model``, which holds fresh state for ``state["cfg"]``."""
    model.kmeans.load_state_dict(state["kmeans"])
    model.buffer.load_state_dict(state["buffer"])
    if "exemplars" in state:
        model.exemplars.load_state_dict(state["exemplars"])
    for lang, vs in state["vocabs"].items():
        model._vocab(lang).load_state_dict(vs)
    model.version, model.n_docs = int(state["version"]), int(state["n_docs"])
    model._warmup_left = int(state.get("warmup_left", 0))
    if model._words is not None:
        model._words.load_state_dict(state.get("words_to_embed", {}))
    model.docs_by_lang = dict(state["docs_by_lang"])
    model._prevalence.load_state_dict(state)
    model._since_refresh = int(state["since_refresh"])
    model._serving.fresh = {int(k): float(v) for k, v in state.get("fresh_topics", {}).items()}
    model._pending = {lang: list(zip(p["tokens"], np.asarray(p["emb"]))) for lang, p in state["pending"].items()}
    if state["xtra"] is not None:
        _load_network(model, state["xtra"])
    if "torch_rng" in state:
        model._torch_rng = torch.from_numpy(np.asarray(state["torch_rng"], dtype=np.uint8).copy())


def _load_network(model: OnlineTopicModel, x: dict[str, Any]) -> None:
    cfg = model.cfg
    with model._own_torch_rng():   # the throw-away initial weights draw from torch's RNG
        model.xtra = XTRA(XTRAConfig(**x["config"]))
        model.trainer = XTRATrainer(model.xtra, lr=cfg.lr, lr_step=cfg.lr_step, batch_size=cfg.batch_size,
                                    seed=cfg.seed)
    model.xtra.load_state_dict(x["weights"])
    if model.trainer.load_optimizer_state(copy.deepcopy(x["optimizer"])):
        model.trainer.scheduler.load_state_dict(x["scheduler"])
    model.trainer.steps = int(x["steps"])
    model._publish_serving()
