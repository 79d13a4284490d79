"""The running service: poll -> parse -> embed -> cluster/learn -> assign -> train -> snapshot -> checkpoint.

Parsing and embedding run one batch ahead on a worker thread (:mod:`consumers.prefetch`); the rest
of the loop, and every call to the consumer, stays on the loop's thread.

The service wires its rooms: the intake (:mod:`consumers.intake`), the outbox of outputs
(:mod:`consumers.outbox`), the trainer (:mod:`consumers.training_runner`), the snapshot and lineage
publisher (:mod:`consumers.publisher`) and the checkpoint (:class:`consumers.checkpoint.Checkpoint`,
which owns the cadence and the numbered steps that make the state durable). It learns and assigns
the batches and keeps the offsets.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from typing import Any

import numpy as np

from xtream.consumers.checkpoint import Checkpoint, CheckpointStore
from xtream.consumers.config import Settings
from xtream.consumers.intake import Intake, PreparedBatch, PreparedItem, TextIntake
from xtream.consumers.learner import BatchLearner
from xtream.consumers.metrics import ServiceMetrics
from xtream.consumers.offset_regressions import OffsetRegressions
from xtream.consumers.outbox import Outbox
from xtream.consumers.poll_loop import PollLoop
from xtream.consumers.prefetch import BatchPrefetcher
from xtream.consumers.publisher import TopicPublisher
from xtream.consumers.training_debt import TrainingDebt
from xtream.consumers.training_runner import TrainingRunner
from xtream.model.embedding import Embedder, LanguageCentering
from xtream.model.online import OnlineConfig, OnlineTopicModel
from xtream.model.text import Tokenizer
from xtream.stream.records import Record
from xtream.stream.schemas import TopicSnapshot
from xtream.stream.sinks import Sink, close_sinks
from xtream.stream.snapshot_store import SnapshotStore
from xtream.stream.sources import Source
from xtream.stream.transactions import OutputTransactions

__all__ = ["ServiceStats", "TopicService"]

logger = logging.getLogger(__name__)


@dataclass
class ServiceStats:
    """Counters of this process's life (the model's own ``n_docs`` is the durable count)."""

    records: int = 0
    documents: int = 0
    dead_letters: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    snapshots: int = 0
    checkpoints: int = 0
    train_slices: int = 0


def online_config(settings: Settings) -> OnlineConfig:
    """The model section's settings that the online model takes (same names on both sides)."""
    m = settings.model
    return OnlineConfig(**{f.name: getattr(m, f.name) for f in fields(OnlineConfig) if f.name in type(m).model_fields})


#: On a clean stop, the longest the last flush may take before the stop gives up on it.
STOP_FLUSH_SECONDS = 3.0


class TopicService:
    """Wires a source, the model and the sinks. ``run()`` until stopped or a file source ends."""

    def __init__(self, settings: Settings, source: Source, embedder: Embedder, *,
                 assignments: Sink, dead_letters: Sink, snapshots: Sink | None,
                 snapshot_store: SnapshotStore, checkpoints: CheckpointStore,
                 model: OnlineTopicModel | None = None, start_offsets: dict[str, int] | None = None,
                 metrics: ServiceMetrics | None = None, lineage: Sink | None = None,
                 intake: Intake | None = None, transactions: OutputTransactions | None = None) -> None:
        self.settings = settings
        self.source = source
        self.embedder = embedder
        self.assignments = assignments
        self.dead_letters = dead_letters
        self.snapshot_sink = snapshots
        self.lineage_sink = lineage
        self.store = snapshot_store
        self.checkpoints = checkpoints
        #: Exactly-once mode: outputs and input offsets commit together, one transaction per checkpoint.
        self.transactions = transactions
        self.model = model or OnlineTopicModel(online_config(settings), embedder.dim, embed_words=embedder.encode)
        self.centering = LanguageCentering() if settings.model.language_centering else None
        self.tokenizer = Tokenizer()
        self.offsets: dict[str, int] = dict(start_offsets or {})   # next offset per partition, processed
        self.stats = ServiceStats()
        self._stop = threading.Event()
        self._finishing = False   # the last flush and checkpoint of a clean stop are under way
        languages = frozenset(settings.model.languages)
        self.intake: Intake = intake or TextIntake(embedder, self.tokenizer, languages, settings.batch.max_record_bytes)
        self.metrics = metrics or ServiceMetrics(sorted(languages))
        self._prefetch = (BatchPrefetcher(self._prepare, workers=1 if embedder.in_process else 2)
                          if settings.batch.prefetch_batches and self.intake.prefetch else None)
        self.poller = PollLoop(lambda: self.source, self.metrics, self._stop, settings.batch.max_wait_ms)
        # Read at scrape time, so they stay true while the loop is blocked (e.g. flushing to a dead broker).
        self.metrics.source_up.set_function(lambda: float(self.source_reachable))
        self.metrics.ready.set_function(lambda: float(self.ready and self.model.is_warm))
        #: Held while the model changes; :meth:`assign_texts` takes it to read a consistent model.
        self.lock = threading.RLock()
        # The thread runs the service's ``_train_worker``, looked up when it starts (tests stand in for it).
        self.training = TrainingRunner(settings, self.model, self.metrics, stopping=self._stop.is_set,
                                       on_slice=self._trained, worker=lambda: self._train_worker())
        #: Outputs of learned batches not yet accepted by their sink: while it holds anything, no
        #: new batch is learned and no checkpoint is written.
        self.outbox = Outbox(self._sink, self.metrics, interrupted=lambda: self._stop.is_set() and not self._finishing)
        self.regressions = OffsetRegressions(settings.kafka.on_offset_regression == "skip", self.metrics)
        self.publisher = TopicPublisher(settings, self.model, self.metrics, lock=self.lock, outbox=self.outbox,
                                        store=snapshot_store)
        self.learner = BatchLearner(self.model, self.centering, self.publisher.prevalence_shift, self.outbox,
                                    self.metrics, self.lock, on_learned=self._count_learned, on_dead=self._count_dead)
        self.checkpoint_due = Checkpoint(settings.checkpoint, checkpoints, self.outbox, lambda: self.source,
                                         self.metrics, transactions, self._capture, self._stop)

    @property
    def stream_time(self) -> datetime | None:
        """The latest event time processed."""
        return self.learner.stream_time

    # -- state --------------------------------------------------------------------------------
    def compat(self) -> dict:
        """What a checkpoint must match to be continued from."""
        return {"embedder": self.embedder.name, "embedding_dim": self.embedder.dim,
                "num_topics": self.settings.model.num_topics}

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "offsets": dict(self.offsets), **self.publisher.state_dict(),
                "intake": self.intake.state_dict(),
                "stream_time": None if self.stream_time is None else self.stream_time.timestamp(),
                "centering": None if self.centering is None else self.centering.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.offsets = dict(state["offsets"])
        self.checkpoint_due.resumed(self.offsets)
        self.publisher.load_state_dict(state)
        if state.get("intake"):
            self.intake.load_state_dict(state["intake"])
        ts = state.get("stream_time")
        self.learner.stream_time = None if ts is None else datetime.fromtimestamp(ts, timezone.utc)
        if self.centering is not None and state.get("centering"):
            self.centering.load_state_dict(state["centering"])

    def _capture(self) -> tuple[dict, dict[str, int], dict[str, Any], dict[str, Any]]:
        """What a checkpoint saves (:class:`Checkpoint`), read under the service lock."""
        with self.lock:
            state = self.state_dict()
        return state, self.offsets, self.compat(), {"n_docs": self.model.n_docs,
                                                    "model_version": self.model.version}

    def stop(self, *_args) -> None:
        """Signal-safe: only sets a flag; the loop finishes its batch and checkpoints."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    @property
    def heartbeat(self) -> float:
        """When the loop last started a turn (``time.monotonic``)."""
        return self.poller.heartbeat

    @property
    def ready(self) -> bool:
        return self.source_reachable and self.source.assigned()

    @property
    def source_reachable(self) -> bool:
        """The last poll did not fail and the broker answers now (checked live: the loop may be
        blocked in a flush while the broker is gone, and must not be reported ready meanwhile)."""
        return self.poller.healthy and self.source.reachable()

    # -- the loop -----------------------------------------------------------------------------
    def run(self, max_idle_polls: int | None = None) -> ServiceStats:
        """Process until ``stop()``, or until a finite source is drained."""
        sizing = self.poller.sizing(self.settings.batch.max_records, self.settings.kafka.max_poll_interval_ms)
        idle = 0
        if self.transactions is not None:
            self.transactions.begin()
        while not self._stop.is_set():
            if not self.poller.turn(self.outbox):
                continue
            asked = sizing.next()
            records = self.poller.poll(asked)
            if records is None:
                continue
            if self.poller.reassigned:   # the resumed checkpoint's offsets may not be committed yet
                self.poller.reassigned = False
                self.checkpoint_due.recommit()
            turn_started = time.perf_counter()
            self.poller.observe_lag()
            processed = self._learn_polled(records, asked, sizing.budget)
            idle = 0 if records or processed else idle + 1
            if idle and not self._prefetching() and not self.outbox:
                self._advance_past_markers()
            if self._stop.is_set():   # SIGTERM: finish this batch, skip training, checkpoint
                break
            self._run_due_work()
            self.poller.observe_turn(sizing, processed, time.perf_counter() - turn_started)
            if idle and (self.source.exhausted() or (max_idle_polls is not None and idle >= max_idle_polls)):
                break
        while self._prefetching():   # what was handed out is learned before the last checkpoint
            self._process_prefetched()
        self.outbox.drain()
        self.finish(complete_warmup=not self._stop.is_set())
        return self.stats

    def _learn_polled(self, records: list[Record], asked: int, budget_seconds: float) -> int:
        """Learn ``records`` now, or hand them to the prefetch worker and learn what it prepared;
        returns the records learned (with prefetch, polled turns earlier)."""
        if self._prefetch is None:
            if records:
                self.process_batch(records)
            return len(records)
        processed, started = 0, time.perf_counter()
        if records:
            self._prefetch.submit(records)
        # A full poll means more is waiting: keep batches embedding while the loop learns the one
        # before (more than one, so that a long turn, e.g. a checkpoint, does not idle the
        # embedder). A short poll means the stream is caught up: finish what is in flight now
        # rather than at the next poll (up to max_wait_ms away), for the turn's budget at most.
        keep = self.settings.batch.prefetch_batches if len(records) >= asked else 0
        while self._prefetching() > keep:
            processed += self._process_prefetched()
            if not keep and time.perf_counter() - started >= budget_seconds:
                break
            if self._prefetching() > keep:   # the cadences count batches, not turns
                self._run_due_work()
        return processed

    def _sink(self, name: str) -> Sink | None:
        return {"assignments": self.assignments, "dead_letters": self.dead_letters,
                "snapshots": self.snapshot_sink, "lineage": self.lineage_sink}[name]

    def _advance_past_markers(self) -> None:
        """After an empty poll with nothing in flight, move each partition's offset to the consumer's
        position, past transaction markers and aborted records that never reach the loop."""
        for key, pos in self.source.positions().items():
            if key in self.offsets and pos > self.offsets[key]:
                self.offsets[key] = pos
                self.checkpoint_due.dirty = True

    def _run_due_work(self) -> None:
        """Training slice, snapshot, checkpoint: each only when its cadence says so."""
        self.maybe_train()
        self.maybe_snapshot(force=self.publisher.requested.is_set())
        self.maybe_checkpoint()

    def _prefetching(self) -> int:
        """Batches polled and handed to the prefetch worker, not yet learned."""
        return len(self._prefetch) if self._prefetch is not None else 0

    def _process_prefetched(self) -> int:
        if self._prefetch is None:
            return 0
        with self.metrics.stage_seconds.labels("embed_wait").time():
            records, batch = self._prefetch.take()
        self.process_batch(records, batch)
        return len(records)

    def finish(self, complete_warmup: bool = False) -> None:
        """Clean stop: stop training, a last snapshot if the model moved, a forced checkpoint + commit.

        At the end of a finite input (not on SIGTERM, which must stop promptly) the warm-up steps a
        short stream may have left undone are run, so the last snapshot comes from XTRA.
        """
        if complete_warmup:   # the end of a finite input: the last snapshot too is of a model trained for it
            self.training.settle()
        self.training.stop()
        self._finishing = True
        if complete_warmup and self.model.is_initialised and not self.model.is_warm:
            logger.info("input ended during the warm-up: finishing its gradient steps")
            self.model.train(0)
            self.checkpoint_due.dirty = True
        if self._stop.is_set() and not self.source_reachable:   # nothing could be delivered in time
            logger.error("stopping with the broker unreachable: no last snapshot or checkpoint; a restart "
                         "resumes from the last checkpoint")
            return
        if self.outbox:   # a checkpoint now would cover outputs that were never sent
            logger.error("stopping with %d outputs unsent: no last checkpoint, so a restart learns and "
                         "publishes again from the previous one", len(self.outbox))
            return
        self.maybe_snapshot(force=True)
        if self.checkpoint_due.dirty:
            # On SIGTERM the last flush is bounded, and short when the broker is known to be gone.
            timeout = None if not self._stop.is_set() else STOP_FLUSH_SECONDS if self.source_reachable else 1.0
            self.checkpoint(flush_timeout=timeout)

    def _prepare(self, records: list[Record]) -> PreparedBatch:
        """Parse and embed (or decode) a batch: touches neither the model nor the consumer, so it
        may run on the prefetch worker."""
        return self.intake.prepare(records, self.metrics)

    def process_batch(self, records: list[Record], batch: PreparedBatch | None = None) -> None:
        """Dead-letter the bad, learn from and assign the good, advance the offsets past ``records``.

        ``batch`` is ``records`` already prepared (by the prefetch worker); else it is prepared here.
        Never raises on input: what the intake or the model rejects goes to the dead-letter topic.
        """
        if batch is None:
            batch = self._prepare(records)
        records, batch = self.regressions.filter(records, batch, self.offsets)
        self.learner.learn(batch)
        for rec in records:
            self.offsets[rec.position] = rec.offset + 1
        self.outbox.drain()
        self.stats.records += len(records)
        self.stats.batches += 1
        self.metrics.batch_done(len(records))
        self.checkpoint_due.dirty = True

    def assign_texts(self, texts: list[str], langs: list[str]) -> tuple[np.ndarray, np.ndarray, int]:
        """``(clusters, theta, model version)`` of new texts under the current model, which does not change."""
        return self.learner.assign_texts(self.embedder, self.tokenizer, texts, langs)

    def _count_learned(self, items: list[PreparedItem]) -> None:
        self.metrics.documents_learned([it.lang for it in items])
        self.stats.documents += len(items)
        self.training.learned(len(items))
        self.publisher.learned(len(items))
        self.checkpoint_due.learned(len(items))

    def _count_dead(self, reason: str) -> None:
        self.stats.dead_letters[reason] = self.stats.dead_letters.get(reason, 0) + 1

    def maybe_train(self) -> None:
        """A training slice when one is due (:meth:`TrainingRunner.maybe_train`)."""
        self.training.maybe_train()

    def _train_worker(self) -> None:
        self.training.work()

    def _trained(self, steps: int) -> None:
        if steps:
            self.checkpoint_due.dirty = True
        self.stats.train_slices += 1

    @property
    def debt(self) -> TrainingDebt:
        return self.training.debt

    @property
    def _stop_training(self) -> threading.Event:
        return self.training.stop_event

    def maybe_snapshot(self, force: bool = False) -> TopicSnapshot | None:
        """A snapshot of what was learned so far, when one is due (:meth:`TopicPublisher.maybe_snapshot`),
        of a model that has run the training steps those documents are owed."""
        if self.publisher.due(force):
            self.training.settle()
        snap = self.publisher.maybe_snapshot(self.offsets, self.stream_time, force=force)
        if snap is not None:
            self.stats.snapshots += 1
            self.checkpoint_due.dirty = True
        return snap

    def maybe_checkpoint(self) -> None:
        if self.checkpoint_due.expired():
            self.checkpoint()

    def checkpoint(self, flush_timeout: float | None = None) -> None:
        """Make everything processed so far durable, then commit its offsets (:meth:`Checkpoint.commit`)."""
        if self.checkpoint_due.commit(flush_timeout):
            self.stats.checkpoints += 1

    def request_snapshot(self) -> None:
        """Ask the loop for a snapshot at its next turn (thread-safe; used by the admin API)."""
        self.publisher.request()

    @property
    def _snapshot_requested(self) -> threading.Event:
        return self.publisher.requested

    def close(self) -> None:
        """Release the source, sinks (and their producer), the snapshot store and the embedder."""
        self.training.stop()
        if self._prefetch is not None:
            self._prefetch.close()
        self.embedder.close()
        if self.transactions is not None:   # outputs not covered by a checkpoint are void
            self.transactions.abort()
        delivered = not self.checkpoint_due.dirty   # else the last checkpoint did not happen: do not wait long again
        for exc in close_sinks(*self.outbox.sinks(), timeout=STOP_FLUSH_SECONDS if delivered else 1.0):
            logger.warning("closing a sink failed: %s", exc)
        self.source.close()
        self.store.close()
        self.checkpoints.release()
