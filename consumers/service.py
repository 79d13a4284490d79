"""The running service: poll -> parse -> embed -> cluster/learn -> assign -> train -> snapshot -> checkpoint.

Parsing and embedding run one batch ahead on a worker thread (:mod:`consumers.prefetch`); the rest
of the loop, and every call to the consumer, stays on the loop's thread.

The service wires its rooms: the outbox of outputs (:mod:`consumers.outbox`), the trainer
(:mod:`consumers.training_runner`) and the snapshot and lineage publisher (:mod:`consumers.publisher`).
It learns and assigns the batches, keeps the offsets, and owns the order of durability: see
:meth:`TopicService.checkpoint`.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone

import numpy as np

from xtream.errors import ModelError
from xtream.model.embedding import Embedder, LanguageCentering
from xtream.model.lineage import TopicTracker
from xtream.model.online import MaintenanceFailed, OnlineConfig, OnlineTopicModel
from xtream.model.text import Tokenizer
from xtream.stream.dead_letter import dead_letter_headers
from xtream.stream.errors import SinkError, SourceUnavailable, TransactionFailed
from xtream.stream.records import Record
from xtream.stream.schemas import Assignment, TopicSnapshot
from xtream.stream.sinks import Sink, close_sinks
from xtream.stream.snapshot_store import SnapshotStore
from xtream.stream.sources import Source
from xtream.stream.transactions import OutputTransactions

from xtream.consumers.checkpoint import CheckpointStore, CheckpointWriteError
from xtream.consumers.intake import EmbeddedIntake, PreparedBatch, TextIntake
from xtream.consumers.prefetch import BatchPrefetcher
from xtream.consumers.config import Settings
from xtream.consumers.metrics import ServiceMetrics
from xtream.consumers.outbox import Outbox
from xtream.consumers.backpressure import AdaptiveBatchSize
from xtream.consumers.publisher import TopicPublisher
from xtream.consumers.training_debt import TrainingDebt
from xtream.consumers.training_runner import TrainingRunner

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
    started: float = field(default_factory=time.monotonic)


def _utc_from_ms(ms: int) -> datetime:
    """A record timestamp as an aware datetime; values past year 9999 clamp instead of raising."""
    try:
        return datetime.fromtimestamp(ms / 1000, timezone.utc)
    except (OverflowError, OSError, ValueError):
        return datetime.max.replace(tzinfo=timezone.utc)


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
                 role: str = "all", transactions: OutputTransactions | None = None) -> None:
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
        self._docs_since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        self._dirty = False
        self.healthy_source = True
        self._languages = frozenset(settings.model.languages)
        self.role = role
        self.intake = (EmbeddedIntake(embedder.dim) if role == "trainer" else
                       TextIntake(embedder, self.tokenizer, self._languages, settings.batch.max_record_bytes))
        self.metrics = metrics or ServiceMetrics(sorted(self._languages))
        # Only text is worth preparing ahead: decoding embedded records is cheap, and the trainer's
        # intake keeps per-partition state that its checkpoint reads.
        self._prefetch = (BatchPrefetcher(self._prepare, workers=1 if embedder.in_process else 2)
                          if settings.batch.prefetch_batches and isinstance(self.intake, TextIntake) else None)
        # Read at scrape time, so they stay true while the loop is blocked (e.g. flushing to a dead broker).
        self.metrics.source_up.set_function(lambda: float(self.source_reachable))
        self.metrics.ready.set_function(lambda: float(self.ready and self.model.is_warm))
        #: Held while the model changes; the HTTP API takes it to read a consistent model.
        self.lock = threading.RLock()
        self.heartbeat = time.monotonic()
        # The thread runs the service's ``_train_worker``, looked up when it starts (tests stand in for it).
        self.training = TrainingRunner(settings, self.model, self.metrics, stopping=self._stop.is_set,
                                       on_slice=self._trained, worker=lambda: self._train_worker())
        self.stream_time: datetime | None = None   # latest event time processed
        #: Outputs of learned batches not yet accepted by their sink: while it holds anything, no
        #: new batch is learned and no checkpoint is written.
        self.outbox = Outbox(self._sink, self.metrics, interrupted=lambda: self._stop.is_set() and not self._finishing)
        self._last_offset: dict[str, int] = {}   # last record offset seen per partition
        self.publisher = TopicPublisher(settings, self.model, self.metrics, lock=self.lock, outbox=self.outbox,
                                        store=snapshot_store)

    # -- state --------------------------------------------------------------------------------
    def compat(self) -> dict:
        """What a checkpoint must match to be continued from."""
        return {"embedder": self.embedder.name, "embedding_dim": self.embedder.dim,
                "num_topics": self.settings.model.num_topics}

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "offsets": dict(self.offsets), **self.publisher.state_dict(),
                "intake": self.intake.state_dict() if isinstance(self.intake, EmbeddedIntake) else None,
                "stream_time": None if self.stream_time is None else self.stream_time.timestamp(),
                "centering": None if self.centering is None else self.centering.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.offsets = dict(state["offsets"])
        self.publisher.load_state_dict(state)
        if state.get("intake") and isinstance(self.intake, EmbeddedIntake):
            self.intake.load_state_dict(state["intake"])
        ts = state.get("stream_time")
        self.stream_time = None if ts is None else datetime.fromtimestamp(ts, timezone.utc)
        if self.centering is not None and state.get("centering"):
            self.centering.load_state_dict(state["centering"])

    def stop(self, *_args) -> None:
        """Signal-safe: only sets a flag; the loop finishes its batch and checkpoints."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    @property
    def ready(self) -> bool:
        return self.source_reachable and self.source.assigned()

    @property
    def source_reachable(self) -> bool:
        """The last poll did not fail and the broker answers now (checked live: the loop may be
        blocked in a flush while the broker is gone, and must not be reported ready meanwhile)."""
        return self.healthy_source and self.source.reachable()

    # -- the loop -----------------------------------------------------------------------------
    def run(self, max_idle_polls: int | None = None) -> ServiceStats:
        """Process until ``stop()``, or until a finite source is drained."""
        sizing = AdaptiveBatchSize.for_poll_interval(self.settings.batch.max_records,
                                                     self.settings.kafka.max_poll_interval_ms)
        idle = self._rebalances = 0
        self._last_lag = 0.0
        if self.transactions is not None:
            self.transactions.begin()
        while not self._stop.is_set():
            self.heartbeat = time.monotonic()
            if not self.outbox.drain():
                self._stop.wait(self.outbox.retry_wait)
                continue
            asked = sizing.next()
            records = self._poll(asked)
            if records is None:
                continue
            turn_started = time.perf_counter()
            self._observe_lag()
            processed = self._learn_polled(records, asked)
            idle = 0 if records or processed else idle + 1
            if idle and not self._prefetching() and not self.outbox:
                self._advance_past_markers()
            if self._stop.is_set():   # SIGTERM: finish this batch, skip training, checkpoint
                break
            self._run_due_work()
            sizing.observe(processed, time.perf_counter() - turn_started)
            self.metrics.batch_records_limit.set(sizing.next())
            if idle and (self.source.exhausted() or (max_idle_polls is not None and idle >= max_idle_polls)):
                break
        while self._prefetching():   # what was handed out is learned before the last checkpoint
            self._process_prefetched()
        self.outbox.drain()
        self.finish(complete_warmup=not self._stop.is_set())
        return self.stats

    def _poll(self, asked: int) -> list[Record] | None:
        """Up to ``asked`` records; None (after a pause) while the source is unavailable."""
        try:
            # Always the full wait, never timeout_ms=0: with zero-timeout polls, kafka-python
            # 3.0.12's consumer stopped sending fetches for good in 3 of 7 runs of
            # tests/consumers/test_slow_embedder.py (after another Kafka test).
            records = self.source.poll_batch(asked, self.settings.batch.max_wait_ms)
            self.healthy_source = True
            if self.source.rebalances > self._rebalances:
                self.metrics.rebalances.inc(self.source.rebalances - self._rebalances)
                self._rebalances = self.source.rebalances
        except SourceUnavailable as exc:
            self.healthy_source = False
            logger.warning("source unavailable: %s", exc)
            time.sleep(1.0)
            return None
        return records

    def _observe_lag(self) -> None:
        """The consumer's lag per partition, every 5 seconds at most."""
        if time.monotonic() - self._last_lag > 5.0:
            for part, lag in self.source.lag().items():
                self.metrics.consumer_lag.labels(part.rsplit(":", 1)[1]).set(lag)
            self._last_lag = time.monotonic()

    def _learn_polled(self, records: list[Record], asked: int) -> int:
        """Learn ``records`` now, or hand them to the prefetch worker and learn what it prepared;
        returns the records learned (with prefetch, polled turns earlier)."""
        if self._prefetch is None:
            if records:
                self.process_batch(records)
            return len(records)
        processed = 0
        if records:
            self._prefetch.submit(records)
        # A full poll means more is waiting: keep batches embedding while the loop learns
        # the one before (more than one, so that a long turn, e.g. a checkpoint, does not
        # idle the embedder). A short poll means the stream is caught up: finish what is in
        # flight now rather than at the next poll, which may wait up to max_wait_ms.
        keep = self.settings.batch.prefetch_batches if len(records) >= asked else 0
        while self._prefetching() > keep:
            processed += self._process_prefetched()
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
                self._dirty = True

    def _run_due_work(self) -> None:
        """Training slice, snapshot, checkpoint: each only when its cadence says so."""
        self.maybe_train()
        self.maybe_snapshot(force=self.publisher.requested.is_set())
        self.maybe_checkpoint()

    def _prefetching(self) -> int:
        """Batches polled and handed to the prefetch worker, not yet learned."""
        return len(self._prefetch) if self._prefetch is not None else 0

    def _process_prefetched(self) -> int:
        with self.metrics.stage_seconds.labels("embed_wait").time():
            records, batch = self._prefetch.take()
        self.process_batch(records, batch)
        return len(records)

    def finish(self, complete_warmup: bool = False) -> None:
        """Clean stop: stop training, a last snapshot if the model moved, a forced checkpoint + commit.

        At the end of a finite input (not on SIGTERM, which must stop promptly) the warm-up steps a
        short stream may have left undone are run, so the last snapshot comes from XTRA.
        """
        self.training.stop()
        self._finishing = True
        if complete_warmup and self.model.is_initialised and not self.model.is_warm:
            logger.info("input ended during the warm-up: finishing its gradient steps")
            self.model.train(0)
            self._dirty = True
        if self._stop.is_set() and not self.source_reachable:   # nothing could be delivered in time
            logger.error("stopping with the broker unreachable: no last snapshot or checkpoint; a restart "
                         "resumes from the last checkpoint")
            return
        if self.outbox:   # a checkpoint now would cover outputs that were never sent
            logger.error("stopping with %d outputs unsent: no last checkpoint, so a restart learns and "
                         "publishes again from the previous one", len(self.outbox))
            return
        self.maybe_snapshot(force=True)
        if self._dirty:
            # On SIGTERM the last flush is bounded, and short when the broker is known to be gone.
            timeout = None if not self._stop.is_set() else STOP_FLUSH_SECONDS if self.source_reachable else 1.0
            self.checkpoint(flush_timeout=timeout)

    def _prepare(self, records: list[Record]) -> PreparedBatch:
        """Parse and embed (or decode) a batch: touches neither the model nor the consumer, so it
        may run on the prefetch worker."""
        started = time.perf_counter()
        if isinstance(self.intake, TextIntake):
            parsed = self.intake.parse(records)
            self.metrics.stage_seconds.labels("parse").observe(time.perf_counter() - started)
            with self.metrics.stage_seconds.labels("embed").time():
                return self.intake.prepare(records, parsed)
        before = self.intake.duplicates
        batch = self.intake.prepare(records)
        self.metrics.duplicates_skipped.inc(self.intake.duplicates - before)
        self.metrics.stage_seconds.labels("parse").observe(time.perf_counter() - started)
        return batch

    def process_batch(self, records: list[Record], batch: PreparedBatch | None = None) -> None:
        """Dead-letter the bad, learn from and assign the good, advance the offsets past ``records``.

        ``batch`` is ``records`` already prepared (by the prefetch worker); else it is prepared here.
        Never raises on input: what the intake or the model rejects goes to the dead-letter topic.
        """
        if batch is None:
            batch = self._prepare(records)
        records, batch = self._after_regressions(records, batch)
        for rec, reason, detail in batch.dead:
            self._dead_letter(rec, reason, detail)
        if len(batch):
            try:
                self._learn_and_assign(batch)
            except ModelError as exc:
                # The model refused the batch before changing anything (learning is all or nothing):
                # retry one by one, dead-lettering the culprits.
                logger.exception("batch of %d failed (%s); retrying document by document", len(batch), exc)
                for i, item in enumerate(batch.items):
                    one = PreparedBatch(items=[item], tokens=[batch.tokens[i]], embeddings=batch.embeddings[i:i + 1],
                                        records=[batch.records[i]])
                    try:
                        self._learn_and_assign(one)
                    except ModelError as err:
                        self._dead_letter(batch.records[i], "processing_error", repr(err)[:500])
        for rec in records:
            self.offsets[rec.position] = rec.offset + 1
        self.outbox.drain()
        self.stats.records += len(records)
        self.stats.batches += 1
        self.metrics.records_consumed.inc(len(records))
        self.metrics.batches.inc()
        self._dirty = True

    def _after_regressions(self, records: list[Record], batch: PreparedBatch) -> tuple[list[Record], PreparedBatch]:
        """Count (and log) each time a partition's offsets go backwards; with ``on_offset_regression=skip``
        drop the records below what was already learned."""
        for rec in records:
            last = self._last_offset.get(rec.position)
            if last is not None and rec.offset <= last:
                self.metrics.offset_regressions.inc()
                logger.warning("offsets of %s went backwards (%d after %d: topic recreated or offsets reset); %s",
                               rec.position, rec.offset, last,
                               "skipping what was learned" if self.settings.kafka.on_offset_regression == "skip"
                               else "learning again from the new position")
            self._last_offset[rec.position] = rec.offset
        if self.settings.kafka.on_offset_regression != "skip":
            return records, batch
        fresh = {id(r) for r in records if r.offset >= self.offsets.get(r.position, 0)}
        return [r for r in records if id(r) in fresh], batch.only(lambda r: id(r) in fresh)

    def _learn_and_assign(self, batch: PreparedBatch) -> None:
        """Learn the batch (all or nothing) and queue its assignments; a document the model learned
        but could not assign is dead-lettered (``processing_error``), never learned twice."""
        m = self.metrics
        items, tokens, embeddings = batch.items, batch.tokens, batch.embeddings
        langs = [it.lang for it in items]
        with self.lock:
            centering_before = None if self.centering is None else self.centering.state_dict()
            if self.centering is not None:
                self.centering.learn_many(embeddings, langs)
                embeddings = self.centering.transform_many(embeddings, langs)
            with m.stage_seconds.labels("assign").time():
                try:
                    self.model.learn_many(tokens, embeddings, langs)
                except MaintenanceFailed as exc:
                    logger.error("%s (cause: %r)", exc, exc.__cause__)
                except ModelError:
                    if centering_before is not None:   # nothing of the batch may stay learned
                        self.centering.load_state_dict(centering_before)
                    raise
            try:
                with m.stage_seconds.labels("infer").time():
                    clusters, theta = self.model.predict_many(tokens, embeddings, langs)
                    self.model.observe_topics(theta, langs)
                    self.publisher.prevalence_shift.learn_many(clusters)
                    self.model.remember_documents([(it.id, it.text_prefix) for it in items], embeddings, langs)
            except ModelError as exc:
                logger.exception("documents learned but not assigned: dead-lettered")
                for rec in batch.records:
                    self._dead_letter(rec, "processing_error", f"learned, not assigned: {exc!r}"[:500])
                self._count_learned(items)
                return
            version = self.model.version
        self._publish(items, clusters, theta, version)

    def _publish(self, items, clusters, theta, version) -> None:
        m = self.metrics
        langs = [it.lang for it in items]
        now = datetime.now(timezone.utc)
        top = np.argsort(-theta, axis=1)[:, :3]
        for i, it in enumerate(items):
            a = Assignment(document_id=it.id, lang=it.lang, cluster=int(clusters[i]),
                           topics=[(int(t), round(float(theta[i, t]), 5)) for t in top[i]],
                           model_version=version, source_topic=it.source_topic,
                           source_partition=it.source_partition, source_offset=it.source_offset,
                           event_time=it.timestamp, processed_at=now)
            self.outbox.emit("assignments", a.model_dump_json().encode(), key=it.id.encode())
        record_times = [it.source_timestamp_ms for it in items if it.source_timestamp_ms and it.source_timestamp_ms > 0]
        event_times = [it.timestamp for it in items if it.timestamp is not None]
        event_times += [_utc_from_ms(ms) for ms in record_times]
        if event_times:
            latest_event = min(max(event_times), now)   # a timestamp from the future is clamped to now
            self.stream_time = latest_event if self.stream_time is None else max(self.stream_time, latest_event)
        now_ms = now.timestamp() * 1000
        for ms in record_times:
            m.document_latency.observe(max(0.0, (now_ms - ms) / 1000))
        self._count_learned(items)

    def _count_learned(self, items) -> None:
        for lang, n in zip(*np.unique(np.asarray([it.lang for it in items]), return_counts=True)):
            self.metrics.documents_processed.labels(str(lang)).inc(int(n))
        self.stats.documents += len(items)
        self.training.learned(len(items))
        self.publisher.learned(len(items))
        self._docs_since_checkpoint += len(items)

    def _dead_letter(self, rec: Record, reason: str, detail: str) -> None:
        value = rec.value if rec.value is not None else b""
        limit = getattr(self.dead_letters, "max_value_bytes", None)
        headers = dead_letter_headers(rec, reason, detail)
        if limit is not None and len(value) > limit - 4096:
            headers.append(("xtream.error.truncated_from", str(len(value)).encode()))
            value = value[:max(0, limit - 4096)]
        self.outbox.emit("dead_letters", value, key=rec.key, headers=headers)
        self.stats.dead_letters[reason] = self.stats.dead_letters.get(reason, 0) + 1
        self.metrics.dead_lettered.labels(reason).inc()

    def maybe_train(self) -> None:
        """A training slice when one is due (:meth:`TrainingRunner.maybe_train`)."""
        self.training.maybe_train()

    def _train_worker(self) -> None:
        self.training.work()

    def _trained(self, steps: int) -> None:
        if steps:
            self._dirty = True
        self.stats.train_slices += 1

    @property
    def debt(self) -> TrainingDebt:
        return self.training.debt

    @property
    def _stop_training(self) -> threading.Event:
        return self.training.stop_event

    def maybe_snapshot(self, force: bool = False) -> TopicSnapshot | None:
        """A snapshot of what was learned so far, when one is due (:meth:`TopicPublisher.maybe_snapshot`)."""
        snap = self.publisher.maybe_snapshot(self.offsets, self.stream_time, force=force)
        if snap is not None:
            self.stats.snapshots += 1
            self._dirty = True
        return snap

    def maybe_checkpoint(self) -> None:
        c = self.settings.checkpoint
        if self._dirty and (self._docs_since_checkpoint >= c.every_docs
                            or time.monotonic() - self._last_checkpoint >= c.every_seconds):
            self.checkpoint()

    def checkpoint(self, flush_timeout: float | None = None) -> None:
        """Make everything processed so far durable, then commit its offsets.

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
            return
        # Step 1
        if not self._flush_outputs(flush_timeout):
            return
        # Step 2
        if not self._save_checkpoint():
            return
        # Step 3
        try:
            with self.metrics.stage_seconds.labels("commit").time():
                if self.transactions is not None:
                    self.transactions.commit(self.offsets, self.source.group_metadata())
                    if not self._stop.is_set():
                        self.transactions.begin()
                else:
                    self.source.commit(self.offsets)
        except SourceUnavailable as exc:   # the checkpoint holds the offsets; commit next time
            logger.warning("offset commit failed (checkpoint is durable): %s", exc)
        self.metrics.checkpoints.inc()
        self.metrics.last_checkpoint.set(time.time())
        self._dirty = False
        self._docs_since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        self.stats.checkpoints += 1

    def _flush_outputs(self, flush_timeout: float | None) -> bool:
        """Checkpoint step 1; False if a sink could not flush (exactly once: the transaction fails)."""
        try:
            self.outbox.flush(flush_timeout)
        except SinkError as exc:
            if self.transactions is not None:   # a send of the open transaction failed: it cannot commit
                self.transactions.abort()
                raise TransactionFailed(f"outputs of the open transaction not delivered: {exc}") from exc
            logger.error("checkpoint postponed, sinks not flushed: %s", exc)
            return False
        return True

    def _save_checkpoint(self) -> bool:
        """Checkpoint step 2; False if the write failed (then, far enough behind, consumption waits)."""
        try:
            with self.metrics.stage_seconds.labels("checkpoint").time():
                with self.lock:
                    state = self.state_dict()
                self.checkpoints.save(state, self.offsets, self.compat(), n_docs=self.model.n_docs,
                                      model_version=self.model.version)
        except CheckpointWriteError as exc:   # nothing committed: a restart resumes from the last good one
            self.metrics.checkpoint_failures.inc()
            behind = self._docs_since_checkpoint
            logger.error("%s (%d documents since the last good checkpoint)", exc, behind)
            self._last_checkpoint = time.monotonic()
            if behind >= self.settings.checkpoint.max_docs_unsaved:   # consume only as far as we can save
                self._stop.wait(min(self.settings.checkpoint.every_seconds, 30.0))
            return False
        return True

    def request_snapshot(self) -> None:
        """Ask the loop for a snapshot at its next turn (thread-safe; used by the admin API)."""
        self.publisher.request()

    @property
    def tracker(self) -> TopicTracker:
        return self.publisher.tracker

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
        delivered = not self._dirty   # else the last checkpoint did not happen: do not wait long again
        for exc in close_sinks(*self.outbox.sinks(), timeout=STOP_FLUSH_SECONDS if delivered else 1.0):
            logger.warning("closing a sink failed: %s", exc)
        self.source.close()
        self.store.close()
        self.checkpoints.release()

