"""An embedder in a child process, so that it shares no GIL with the service's own threads.

Why: multilingual USE runs as thousands of small numpy calls per batch, and each one gives the GIL
up and must win it back. In one process with the service's loop and trainer threads (both doing
Python-level work between their own numpy/torch calls) the embedder waits for the GIL after each
of them; beside a thread that holds the GIL it all but stops. In its own process the embedder
competes only for a core, which the operating system shares fairly.

:class:`ProcessEmbedder` is an :class:`~model.embedding.Embedder` like any other: texts go to the
child and unit vectors come back through shared memory (only lengths and short replies use the
pipe). The child is started with ``spawn`` (never ``fork``: the parent holds torch, Kafka and HTTP
threads), loads the model named by the same spec string
:func:`~model.embedding.load_embedder` takes, and exits when its pipe closes, so a ``kill -9`` of
the service leaves no orphan behind. If the child dies (killed, out of memory), the call that saw
it starts a new one and retries once; a second death is reported as an :class:`EmbedderProcessError`, which
the intake treats like any embedding failure (documents retried one by one, the culprit
dead-lettered).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import sys
import time
import weakref
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np

from xtream.errors import ModelError
from xtream.model.embedding import Embedder, load_embedder
from xtream.model.threads import pin_threads

__all__ = ["EmbedderProcessError", "ProcessEmbedder"]

logger = logging.getLogger(__name__)


class EmbedderProcessError(ModelError, RuntimeError):
    """The child process failed to start, died twice on one call, or raised while encoding."""


class ProcessEmbedder(Embedder):
    """Run ``load_embedder(spec, ...)`` in a child process and encode through it.

    Parameters
    ----------
    spec, threads, batch_size, device
        As for :func:`~model.embedding.load_embedder`; ``threads`` also pins the child's BLAS and
        torch thread pools.
    start_timeout
        Seconds to wait for the child to load its model (a large sentence-transformers model can
        take a minute from a cold disk).
    """

    in_process = False

    def __init__(self, spec: str, *, threads: int = 1, batch_size: int = 64, device: str = "cpu",
                 start_timeout: float = 300.0) -> None:
        self.spec = spec
        self._args = (spec, threads, batch_size, device)
        self.start_timeout = start_timeout
        self.restarts = 0
        #: How the last child spent its life, once :meth:`close` has heard from it: ``texts``,
        #: ``encode_seconds``, ``wall_seconds`` (from ready to the close), ``cpu_seconds``.
        self.stats: dict[str, float] | None = None
        self._proc: mp.process.BaseProcess | None = None
        self._conn: Connection | None = None
        self._request: SharedMemory | None = None
        self._reply: SharedMemory | None = None
        self._start()
        self._reply = SharedMemory(create=True, size=self.chunk * self.dim * 4)
        # encode() sends at most `chunk` texts of at most `max_chars` characters, 4 UTF-8 bytes each.
        self._request = SharedMemory(create=True, size=self.chunk * self.max_chars * 4)
        self._closer = weakref.finalize(self, _release, self._request, self._reply)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _start(self) -> None:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe(duplex=True)
        proc = ctx.Process(target=_serve, args=(child, *self._args), name="xtream-embedder", daemon=True)
        proc.start()
        child.close()   # the child holds the only other end: its death shows here as EOF
        started = time.monotonic()
        try:
            if not parent.poll(self.start_timeout):
                raise EmbedderProcessError(f"embedder {self.spec!r} did not load within {self.start_timeout:.0f} s")
            kind, *payload = parent.recv()
        except (EOFError, OSError) as exc:
            proc.join(5)
            raise EmbedderProcessError(f"embedder process for {self.spec!r} exited while loading "
                                       f"(exit code {proc.exitcode})") from exc
        except BaseException:
            proc.kill()
            proc.join(5)
            parent.close()
            raise
        if kind != "ready":
            proc.join(5)
            parent.close()
            raise EmbedderProcessError(f"embedder {self.spec!r} failed to load: {payload[0]}")
        self.name, self.dim, self.max_chars = payload
        self._proc, self._conn = proc, parent
        logger.info("embedder %s running in process %d (loaded in %.1f s)", self.name, proc.pid,
                    time.monotonic() - started)

    def _encode(self, texts: list[str]) -> np.ndarray:
        if self._conn is None:
            raise EmbedderProcessError("the embedder process was closed")
        request = self._write_request(texts)
        for attempt in (1, 2):
            if self._conn is None:
                raise EmbedderProcessError("the embedder process was closed")
            try:
                self._conn.send(request)
                kind, payload = self._conn.recv()
            except (EOFError, OSError) as exc:
                code = self._reap()
                if attempt == 2:
                    raise EmbedderProcessError(f"the embedder process died twice on one batch of {len(texts)} "
                                               f"texts (exit code {code})") from exc
                logger.error("the embedder process died (exit code %s); starting a new one", code)
                self.restarts += 1
                self._start()
                continue
            if kind == "error":
                raise EmbedderProcessError(payload)
            if kind == "inline":
                return payload
            return np.ndarray((payload, self.dim), np.float32, buffer=self._segments()[1].buf).copy()
        raise AssertionError("unreachable")

    def _segments(self) -> tuple[SharedMemory, SharedMemory]:
        """The request and reply segments (created with the embedder, released by close)."""
        if self._request is None or self._reply is None:
            raise EmbedderProcessError("the embedder process was closed")
        return self._request, self._reply

    def _write_request(self, texts: list[str]) -> tuple[Any, ...]:
        """Texts as UTF-8 in shared memory (one copy, no pickling); only lengths go through the pipe.

        Why not the pipe: a 256-document batch is ~0.5 MB each way, pickled and moved through a
        64 KiB socket buffer a piece at a time, and between pieces this process's thread must win
        the GIL back from the loop and the trainer.
        """
        data = [t.encode("utf-8", "surrogatepass") for t in texts]
        lengths = np.fromiter(map(len, data), np.int64, len(data))
        size = int(lengths.sum())
        request, reply = self._segments()
        if len(texts) > self.chunk or size > request.size:
            raise ValueError(f"{len(texts)} texts of {size} bytes exceed one request; call encode(), "
                             "which clips and chunks them")
        _view(request)[:size] = b"".join(data)
        return request.name, lengths, reply.name

    def _reap(self) -> int | None:
        """Forget a dead (or dying) child and return its exit code."""
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if conn is not None:
            conn.close()
        if proc is None:
            return None
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
        return proc.exitcode

    def close(self) -> None:
        """Ask the child to exit (it also exits on its own when this process dies)."""
        conn = self._conn
        if conn is not None:
            try:
                conn.send(None)
                if conn.poll(2.0):
                    _, stats = conn.recv()
                    self.stats = stats
                    logger.info("embedder process %s: %d texts in %.1f s of encoding (%.0f/s), busy %.0f%% of "
                                "%.1f s, CPU %.1f s", self.pid, stats["texts"], stats["encode_seconds"],
                                stats["texts"] / max(stats["encode_seconds"], 1e-9),
                                100 * stats["encode_seconds"] / max(stats["wall_seconds"], 1e-9),
                                stats["wall_seconds"], stats["cpu_seconds"])
            except (EOFError, OSError):
                pass
        self._reap()
        self._closer()


def _release(*segments: SharedMemory | None) -> None:
    for shm in segments:
        if shm is not None:
            shm.close()
            shm.unlink()


def _view(shm: SharedMemory) -> memoryview:
    """The segment's bytes (None only once it is closed)."""
    if shm.buf is None:
        raise EmbedderProcessError(f"shared memory {shm.name} is closed")
    return shm.buf


def _load(conn: Connection, spec: str, threads: int, batch_size: int, device: str) -> Embedder | None:
    """Load the embedder in the child and tell the parent ("ready", ...) or ("error", message)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        pin_threads(threads, torch=False)
        embedder = load_embedder(spec, threads=threads, batch_size=batch_size, device=device)
        pin_threads(threads, torch=False)   # a sentence-transformers model has loaded torch now
        embedder.encode(["ready"])   # models load their weights on first use: not on the first batch
    except Exception as exc:   # reported to the parent, which raises it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return None
    conn.send(("ready", embedder.name, embedder.dim, embedder.max_chars))
    return embedder


def _serve(conn: Connection, spec: str, threads: int, batch_size: int, device: str) -> None:
    """The child: load the model, then answer ``texts -> ("ok", vectors) | ("error", message)``."""
    # Ctrl-C, and a SIGTERM sent to the whole group (systemd, ``kill -- -pgid``), reach this process
    # too: the parent decides, finishes its batch with this child's help, and closes it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    embedder = _load(conn, spec, threads, batch_size, device)
    if embedder is None:
        return
    n, busy, cpu0, wall0 = 0, 0.0, time.process_time(), time.perf_counter()
    attached: dict[str, SharedMemory] = {}

    def segment(name: str) -> SharedMemory:
        if name not in attached:
            attached[name] = SharedMemory(name=name)
        return attached[name]

    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return   # the parent is gone
        if request is None:
            break
        started = time.perf_counter()
        reply: tuple[Any, ...]
        try:
            name, lengths, reply_name = request
            blob = bytes(_view(segment(name))[: int(lengths.sum())])
            ends = np.cumsum(lengths).tolist()
            texts = [blob[e - k:e].decode("utf-8", "surrogatepass") for e, k in zip(ends, lengths.tolist())]
            vectors = embedder.encode(texts)
            out = segment(reply_name)
            if vectors.nbytes <= out.size:
                np.ndarray(vectors.shape, np.float32, buffer=out.buf)[...] = vectors
                reply = ("ok", len(vectors))
            else:
                reply = ("inline", vectors)
            n += len(texts)
        except Exception as exc:
            reply = ("error", f"{type(exc).__name__}: {exc}")
        busy += time.perf_counter() - started
        try:
            conn.send(reply)
        except OSError:
            return
    try:   # the parent logs how the child spent its life
        conn.send(("stats", {"texts": n, "encode_seconds": busy, "wall_seconds": time.perf_counter() - wall0,
                             "cpu_seconds": time.process_time() - cpu0}))
    except OSError:
        pass
    for shm in attached.values():
        shm.close()
    # Nothing is left to flush or release: skip the interpreter's teardown of the model, which
    # the parent's close() would otherwise wait for.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
