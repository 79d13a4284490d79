"""Saving and loading a trained XTRA with its vocabularies: safetensors weights + JSON metadata.

A saved model is a directory::

    model.safetensors   every tensor of the state dict (no pickle: loading runs no code)
    model.json          format version, XTRAConfig, vocabularies, free-form metadata

It is written to a temporary sibling and renamed into place, so a crash never leaves half a model.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import fields
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from xtream.errors import ModelError
from xtream.model.atomic import atomic_write, fsync_path
from xtream.model.xtra import XTRA, XTRAConfig

__all__ = ["FORMAT_VERSION", "IncompatibleModel", "load_xtra", "save_xtra"]

FORMAT_VERSION = 1


class IncompatibleModel(ModelError, ValueError):
    """The saved model was written by a format this code cannot read."""


def save_xtra(path: str | Path, model: XTRA, vocabularies: dict[str, list[str]],
              metadata: dict[str, Any] | None = None) -> Path:
    path = Path(path)
    for lang, size in model.cfg.vocab_sizes.items():
        if len(vocabularies.get(lang, ())) != size:
            raise ValueError(f"vocabulary of {lang!r} has {len(vocabularies.get(lang, ()))} words, "
                             f"model expects {size}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"))
        fsync_path(tmp / "model.safetensors")   # save_file does not: a crash could keep the rename, not the data
        meta = {"format_version": FORMAT_VERSION, "config": model.cfg.to_dict(),
                "vocabularies": vocabularies, "metadata": metadata or {}}
        atomic_write(tmp / "model.json", lambda f: f.write(json.dumps(meta, ensure_ascii=False).encode("utf-8")))
        if path.exists():
            old = path.with_name(path.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
        fsync_path(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def load_xtra(path: str | Path) -> tuple[XTRA, dict[str, list[str]], dict[str, Any]]:
    """Returns ``(model in eval mode, vocabularies, metadata)``."""
    path = Path(path)
    meta = json.loads((path / "model.json").read_text(encoding="utf-8"))
    if meta.get("format_version") != FORMAT_VERSION:
        raise IncompatibleModel(f"{path} has format {meta.get('format_version')}, this xtream reads {FORMAT_VERSION}")
    known = {f.name for f in fields(XTRAConfig)}
    cfg = XTRAConfig(**{k: v for k, v in meta["config"].items() if k in known})
    model = XTRA(cfg)
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    model.eval()
    return model, meta["vocabularies"], meta["metadata"]
