"""Durable, verifiable checkpoints of the whole service state, with the offsets they cover.

File layout (``ckpt-<seq>.xck``)::

    XTREAM-CKPT 2\n
    {"sha256": ..., "size": ..., "offsets": {...}, "compat": {...}, ..., "header_sha256": ...}\n  <- one JSON line
    <payload: torch.save of the state, tensors and plain containers only>

Written to a temp file, fsync'd, renamed into place and the directory fsync'd, so a crash leaves
either the old or the new checkpoint, never half of one. Loading verifies both checksums (the
payload's, and the header's own, which covers the offsets the service seeks to) and falls back to
the previous good file; payloads load with ``weights_only=True`` (no pickle code runs). Version 1
files (no header checksum) still load.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pickle
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["CheckpointStore", "IncompatibleCheckpoint"]

logger = logging.getLogger(__name__)

MAGIC_V1 = b"XTREAM-CKPT 1\n"
MAGIC = b"XTREAM-CKPT 2\n"   # adds "header_sha256"


def _header_digest(header: dict) -> str:
    """SHA-256 of the header's canonical JSON, without the digest itself."""
    rest = {k: v for k, v in header.items() if k != "header_sha256"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()


class IncompatibleCheckpoint(RuntimeError):
    """The checkpoint was written with a model/config this service cannot continue from."""


def _encode(obj: Any) -> Any:
    """numpy arrays -> tagged tensors, recursively, so ``weights_only`` loading accepts the state."""
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": torch.from_numpy(np.ascontiguousarray(obj))}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: _encode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_encode(v) for v in obj]
    return obj


def _decode(obj: Any) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__ndarray__"}:
            return obj["__ndarray__"].numpy()
        return {k: _decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v) for v in obj]
    return obj


class CheckpointStore:
    def __init__(self, directory: str | Path, keep: int = 3) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.keep = max(1, keep)

    def _files(self) -> list[Path]:
        return sorted(self.directory.glob("ckpt-*.xck"))

    def save(self, state: dict, offsets: dict[str, int], compat: dict[str, Any], **info: Any) -> Path:
        buf = io.BytesIO()
        torch.save(_encode(state), buf)
        payload = buf.getvalue()
        header = {"sha256": hashlib.sha256(payload).hexdigest(), "size": len(payload), "offsets": offsets,
                  "compat": compat, "created": time.time(), **info}
        header["header_sha256"] = _header_digest(header)
        files = self._files()
        seq = int(files[-1].stem.split("-")[1]) + 1 if files else 1
        final = self.directory / f"ckpt-{seq:09d}.xck"
        tmp = final.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(MAGIC + json.dumps(header).encode() + b"\n" + payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        for old in self._files()[: -self.keep]:
            old.unlink(missing_ok=True)
        return final

    @staticmethod
    def read(path: Path) -> tuple[dict, dict]:
        """``(header, state)`` of one file; raises ``ValueError`` if it is damaged."""
        data = path.read_bytes()
        if not data.startswith((MAGIC, MAGIC_V1)):
            raise ValueError("bad magic")
        end = data.index(b"\n", len(MAGIC))
        header = json.loads(data[len(MAGIC):end])
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        if data.startswith(MAGIC) and header.get("header_sha256") != _header_digest(header):
            raise ValueError("header checksum mismatch")
        payload = data[end + 1:]
        if len(payload) != header["size"] or hashlib.sha256(payload).hexdigest() != header["sha256"]:
            raise ValueError(f"checksum mismatch ({len(payload)} of {header['size']} bytes)")
        try:
            state = torch.load(io.BytesIO(payload), weights_only=True)
        except pickle.UnpicklingError:   # torch's message suggests weights_only=False: never
            raise ValueError("payload holds objects other than tensors and plain containers; refused") from None
        return header, _decode(state)

    def load_latest(self, compat: dict[str, Any] | None = None,
                    accept: Callable[[dict], bool] | None = None) -> tuple[dict, dict] | None:
        """Newest checkpoint that verifies (and that ``accept(header)`` takes, when given), or None.
        Damaged files are skipped with an error log, refused ones with a warning."""
        for path in reversed(self._files()):
            try:
                header, state = self.read(path)
            except (ValueError, KeyError, OSError, RuntimeError, EOFError) as exc:
                logger.error("checkpoint %s is damaged (%s); falling back to the previous one", path.name, exc)
                continue
            if accept is not None and not accept(header):
                logger.warning("checkpoint %s is not covered by the committed offsets (its transaction did "
                               "not commit); falling back to the previous one", path.name)
                continue
            if compat is not None:
                diff = {k: (header["compat"].get(k), v) for k, v in compat.items() if header["compat"].get(k) != v}
                if diff:
                    raise IncompatibleCheckpoint(
                        f"checkpoint {path} was written with a different model/config "
                        f"(setting: (checkpoint, now)) {diff}; use another --data-dir or restore that config")
            logger.info("resuming from checkpoint %s (%d documents)", path.name, header.get("n_docs", -1))
            return header, state
        return None
