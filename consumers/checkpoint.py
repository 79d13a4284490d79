"""Durable, verifiable checkpoints of the whole service state, with the offsets they cover.

File layout (``ckpt-<seq>.xck``)::

    XTREAM-CKPT 2\n
    {"sha256": ..., "size": ..., "offsets": {...}, "compat": {...}, ..., "header_sha256": ...}\n  <- one JSON line
    <payload: torch.save of the state, tensors and plain containers only>

Written to a temp file, fsync'd, renamed into place and the directory fsync'd, so a crash leaves
either the old or the new checkpoint, never half of one. A write that fails (a full disk) removes
its temp file, keeps the previous checkpoints and raises :class:`CheckpointWriteError`. Loading
verifies both checksums (the payload's, and the header's own, which covers the offsets the service
seeks to) and the header's shape, and falls back to the previous good file; payloads load with
``weights_only=True`` (no pickle code runs). Version 1 files (no header checksum) still load.

One process at a time: :meth:`CheckpointStore.acquire` takes an exclusive ``flock`` on the
directory's ``LOCK`` file, held until :meth:`~CheckpointStore.release` or the process ends.

:class:`Checkpoint` is the service's side: when a checkpoint is due (:meth:`Checkpoint.expired`)
and the numbered steps that make the state durable and commit its offsets (:meth:`Checkpoint.commit`).

Errors::

    CheckpointError
    ├── IncompatibleCheckpoint   written with another model/config
    ├── DataDirectoryLocked      another process holds the directory
    ├── CheckpointsUnreadable    checkpoints exist but none verifies
    └── CheckpointWriteError     a save failed (e.g. no space left); the last good one is kept
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import logging
import os
import pickle
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from xtream.errors import XtreamError
from xtream.model.atomic import atomic_write
from xtream.stream.errors import SinkError, SourceUnavailable, TransactionFailed

if TYPE_CHECKING:
    from xtream.consumers.config import CheckpointSettings
    from xtream.consumers.metrics import ServiceMetrics
    from xtream.consumers.outbox import Outbox
    from xtream.stream.sources import Source
    from xtream.stream.transactions import OutputTransactions

__all__ = ["Checkpoint", "CheckpointError", "CheckpointStore", "CheckpointWriteError", "CheckpointsUnreadable",
           "DataDirectoryLocked", "IncompatibleCheckpoint"]

logger = logging.getLogger(__name__)

MAGIC_V1 = b"XTREAM-CKPT 1\n"
MAGIC = b"XTREAM-CKPT 2\n"   # adds "header_sha256"


def _header_digest(header: dict) -> str:
    """SHA-256 of the header's canonical JSON, without the digest itself."""
    rest = {k: v for k, v in header.items() if k != "header_sha256"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()


class CheckpointError(XtreamError, RuntimeError):
    """Root of checkpoint store errors."""


class IncompatibleCheckpoint(CheckpointError):
    """The checkpoint was written with a model/config this service cannot continue from."""


class DataDirectoryLocked(CheckpointError):
    """Another process holds the checkpoint directory's lock."""


class CheckpointsUnreadable(CheckpointError):
    """Checkpoints exist but none verifies: starting anyway would lose what they covered."""

    def __init__(self, message: str, damaged: list[Path]) -> None:
        super().__init__(message)
        self.damaged = damaged


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written; the previous ones are untouched."""


def _check_header(header: Any) -> dict:
    """The header's required fields and their types, or ``ValueError``."""
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    for key, kind in (("sha256", str), ("size", int), ("offsets", dict), ("compat", dict)):
        if not isinstance(header.get(key), kind):
            raise ValueError(f"header field {key!r} is missing or not a {kind.__name__}")
    if not all(isinstance(k, str) and type(v) is int and v >= 0 for k, v in header["offsets"].items()):
        raise ValueError("header offsets are not 'topic:partition' -> offset")
    return header


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
        #: Files :meth:`load_latest` skipped as damaged, newest first.
        self.damaged: list[Path] = []
        self._lock_file: Any = None

    def acquire(self) -> "CheckpointStore":
        """Take the directory's exclusive lock, or raise :class:`DataDirectoryLocked` at once."""
        if self._lock_file is not None:
            return self
        f = open(self.directory / "LOCK", "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise DataDirectoryLocked(
                f"{self.directory} is in use by another xtream process (pid {holder}); give each process "
                f"its own --data-dir") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._lock_file = f
        for stale in self.directory.glob("ckpt-*.tmp"):   # left by a writer that died; none is alive now
            stale.unlink(missing_ok=True)
        return self

    def release(self) -> None:
        """Drop the directory lock (closing the file releases the flock)."""
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

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
        try:
            atomic_write(final, lambda f: f.write(MAGIC + json.dumps(header).encode() + b"\n" + payload),
                         prefix=f"ckpt-{seq:09d}.")
        except OSError as exc:
            raise CheckpointWriteError(f"checkpoint {final.name} not written ({exc.strerror or exc}); "
                                       f"the previous checkpoints are kept") from exc
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
        header = _check_header(json.loads(data[len(MAGIC):end]))
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
        Damaged files are skipped with an error log and listed in :attr:`damaged`; refused ones are
        skipped with a warning."""
        self.damaged = []
        for path in reversed(self._files()):
            try:
                header, state = self.read(path)
            except (ValueError, KeyError, TypeError, OSError, RuntimeError, EOFError) as exc:
                logger.error("checkpoint %s is damaged (%s); falling back to the previous one", path.name, exc)
                self.damaged.append(path)
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


class Checkpoint:
    """When the service's state is made durable (:meth:`expired`) and the steps that do it (:meth:`commit`).

    Parameters
    ----------
    settings
        The cadence: every ``every_docs`` documents or ``every_seconds`` seconds, whichever comes first.
    source
        Returns the source whose offsets step 3 commits (asked at each commit: it may be swapped).
    capture
        Called (by the loop's thread) for ``(state, offsets, compat, info)``: the whole state, the
        offsets it covers, what a checkpoint must match, and header fields (``n_docs``, ``model_version``).
    stopping
        Set when the service is stopping: no new transaction begins, and a failed write waits on it.

    Attributes
    ----------
    dirty
        Something was learned, trained or published since the last checkpoint.
    """

    def __init__(self, settings: CheckpointSettings, store: CheckpointStore, outbox: Outbox,
                 source: Callable[[], Source],
                 metrics: ServiceMetrics, transactions: OutputTransactions | None,
                 capture: Callable[[], tuple[dict, dict[str, int], dict[str, Any], dict[str, Any]]],
                 stopping: threading.Event) -> None:
        self.settings = settings
        self.store = store
        self.outbox = outbox
        self.source = source
        self.metrics = metrics
        self.transactions = transactions
        self.capture = capture
        self.stopping = stopping
        self.dirty = False
        self.docs_since = 0
        self.last = time.monotonic()
        self.count = 0
        self._resumed_offsets: dict[str, int] = {}   # of the checkpoint resumed from, until committed

    def learned(self, documents: int) -> None:
        self.docs_since += documents
        self.dirty = True

    def resumed(self, offsets: dict[str, int]) -> None:
        """The service continues from a checkpoint that covers ``offsets``."""
        self._resumed_offsets = dict(offsets)

    def recommit(self) -> None:
        """At least once, on the first assignment after resuming: commit the resumed checkpoint's
        offsets (the source seeks to them). A kill between a checkpoint's write and its commit
        leaves the group's offsets behind it, and with nothing new to read no later checkpoint would
        commit them. Exactly once needs nothing: it only resumes from a checkpoint the group committed."""
        if self.transactions is None and self._resumed_offsets and self._commit_offsets(self._resumed_offsets):
            self._resumed_offsets = {}

    def expired(self) -> bool:
        """Dirty, and ``every_docs`` documents or ``every_seconds`` seconds since the last one."""
        return self.dirty and (self.docs_since >= self.settings.every_docs
                               or time.monotonic() - self.last >= self.settings.every_seconds)

    def commit(self, flush_timeout: float | None = None) -> bool:
        """Make everything processed so far durable, then commit its offsets; False if postponed.

        Step 0: every output of a learned batch was handed to its sink (else: postponed).
        Step 1: flush the sinks (assignments, dead letters, snapshots): outputs of covered records
                are on the broker/disk (within ``flush_timeout`` seconds if given, else postponed).
        Step 2: write the checkpoint (model + offsets it covers) atomically.
        Step 3: commit those offsets to the consumer group (exactly-once: inside the open output
                transaction, which then commits, and the next one begins).

        At least once: a crash before step 2 replays the records from the previous checkpoint
        (outputs may repeat, the model counts each record once); a crash between 2 and 3 resumes
        from the checkpoint's offsets, which the source seeks to, so nothing is lost or counted twice.
        Exactly once: a crash before step 3 aborts the transaction, and on start the checkpoint of
        step 2 is skipped as not covered by the group's committed offsets, so the records since the
        last committed transaction are learned and their outputs produced again, once.
        A transaction that fails raises :class:`TransactionFailed`: the process must restart.
        """
        # Step 0
        if not self.outbox.drain():
            logger.error("checkpoint postponed: %d outputs not accepted by their sinks", len(self.outbox))
            return False
        # Step 1
        if not self._flush_outputs(flush_timeout):
            return False
        # Step 2
        offsets = self._save()
        if offsets is None:
            return False
        # Step 3
        committed = self._commit_offsets(offsets)
        self.metrics.checkpointed()
        self.dirty = not committed   # a commit the broker did not take is tried again at the next one
        self.docs_since = 0
        self.last = time.monotonic()
        self.count += 1
        return True

    def _flush_outputs(self, flush_timeout: float | None) -> bool:
        """Step 1; False if a sink could not flush (exactly once: the transaction fails)."""
        try:
            self.outbox.flush(flush_timeout)
        except SinkError as exc:
            if self.transactions is not None:   # a send of the open transaction failed: it cannot commit
                self.transactions.abort()
                raise TransactionFailed(f"outputs of the open transaction not delivered: {exc}") from exc
            logger.error("checkpoint postponed, sinks not flushed: %s", exc)
            return False
        return True

    def _save(self) -> dict[str, int] | None:
        """Step 2; the offsets saved, or None if the write failed (then, far enough behind, consumption waits)."""
        try:
            with self.metrics.stage_seconds.labels("checkpoint").time():
                state, offsets, compat, info = self.capture()
                self.store.save(state, offsets, compat, **info)
        except CheckpointWriteError as exc:   # nothing committed: a restart resumes from the last good one
            self.metrics.checkpoint_failures.inc()
            logger.error("%s (%d documents since the last good checkpoint)", exc, self.docs_since)
            self.last = time.monotonic()
            if self.docs_since >= self.settings.max_docs_unsaved:   # consume only as far as we can save
                self.stopping.wait(min(self.settings.every_seconds, 30.0))
            return None
        return offsets

    def _commit_offsets(self, offsets: dict[str, int]) -> bool:
        """Step 3; False (logged) if the broker did not take the commit (the checkpoint holds the offsets)."""
        try:
            with self.metrics.stage_seconds.labels("commit").time():
                if self.transactions is not None:
                    self.transactions.commit(offsets, self.source().group_metadata())
                    if not self.stopping.is_set():
                        self.transactions.begin()
                else:
                    self.source().commit(offsets)
        except SourceUnavailable as exc:
            logger.warning("offset commit failed (checkpoint is durable): %s", exc)
            return False
        return True
