"""The publisher: when a topic snapshot is due, building it with its lineage, and where it goes.

A snapshot is due every ``snapshots.every_docs`` documents or ``every_seconds`` seconds (or when
asked), once the model has learned something since the last one. The topics' identities are kept
across snapshots by a :class:`~model.lineage.TopicTracker`, whose events (births, deaths, renames,
prevalence jumps) are published as lineage records; drift is measured against a
:class:`~consumers.snapshots.DriftBaseline` of stream time. Snapshots and lineage go to the outbox
(Kafka) and to the local snapshot store.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from datetime import datetime, timezone

import numpy as np

from xtream.consumers.config import Settings
from xtream.consumers.metrics import ServiceMetrics
from xtream.consumers.outbox import Outbox
from xtream.consumers.snapshots import DriftBaseline, build_snapshot
from xtream.consumers.training_runner import observe_model
from xtream.model.lineage import LineageEvent, TopicTracker
from xtream.model.online import OnlineTopicModel
from xtream.model.prevalence_shift import PrevalenceShift
from xtream.stream.errors import RecordTooLarge
from xtream.stream.schemas import LineageRecord, TopicSnapshot
from xtream.stream.snapshot_store import SnapshotStore

__all__ = ["TopicPublisher"]

logger = logging.getLogger(__name__)

#: Snapshots of a newly warm model whose drift the gauges skip (the warm-up transition, then XTRA
#: settling after its warm-up steps).
SETTLING_SNAPSHOTS = 2


class TopicPublisher:
    """Snapshots of ``model`` with their lineage; ``lock`` is held while the model is read."""

    def __init__(self, settings: Settings, model: OnlineTopicModel, metrics: ServiceMetrics, *,
                 lock: threading.RLock, outbox: Outbox, store: SnapshotStore) -> None:
        self.settings = settings
        self.model = model
        self.metrics = metrics
        self.lock = lock
        self.outbox = outbox
        self.store = store
        s = settings.snapshots
        self.drift_baseline = DriftBaseline(s.drift_window_seconds)
        self.tracker = TopicTracker(match_threshold=s.match_threshold, death_horizon=s.death_horizon)
        self.prevalence_shift = PrevalenceShift(settings.model.num_topics)
        self.version = -1   # model version of the last snapshot
        self._docs = -1   # model.n_docs at the last snapshot
        self.docs_since = 0   # documents learned since the last snapshot
        self._last = time.monotonic()
        #: Set by :meth:`request` (any thread): the next due check publishes whatever the cadence says.
        self.requested = threading.Event()
        self._warm_ids: int | None = None   # topic ids below this existed when the model became warm
        self._warm_snapshots = 0   # snapshots of a warm model published by this process
        #: Whether the drift baseline holds XTRA's words only (it is emptied when the model becomes
        #: warm: the clusters' words of the warm-up are no reference for XTRA's).
        self._baseline_warm = False

    # -- state (the keys are those of the service's checkpoint) ---------------------------------
    def state_dict(self) -> dict:
        return {"drift_baseline": self.drift_baseline.state_dict(), "snapshot_version": self.version,
                "tracker": self.tracker.state_dict(), "drift_baseline_warm": self._baseline_warm,
                "prevalence_shift": self.prevalence_shift.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("drift_baseline"):
            self.drift_baseline.load_state_dict(state["drift_baseline"])
        self._baseline_warm = bool(state.get("drift_baseline_warm", self.model.is_warm))
        if state.get("prevalence_shift") and state["prevalence_shift"]["n_topics"] == self.prevalence_shift.n_topics:
            self.prevalence_shift.load_state_dict(state["prevalence_shift"])
        self.version = int(state["snapshot_version"])
        if state.get("tracker"):
            self.tracker.load_state_dict(state["tracker"])

    def request(self) -> None:
        """Ask for a snapshot at the next due check (thread-safe)."""
        self.requested.set()

    def learned(self, documents: int) -> None:
        self.docs_since += documents

    def due(self, force: bool = False) -> bool:
        """Due by documents or time, whatever training did: the clusters' topics exist from the
        first batch, XTRA's once it is warm. Nothing new learned, nothing to publish."""
        s = self.settings.snapshots
        if not self.model.has_clusters or (self.model.version == self.version
                                                    and self.model.n_docs == self._docs):
            return False
        return self.docs_since >= s.every_docs or time.monotonic() - self._last >= s.every_seconds or force

    def maybe_snapshot(self, offsets: Mapping[str, int], stream_time: datetime | None,
                       force: bool = False) -> TopicSnapshot | None:
        """Build, publish and store a snapshot if one is due; ``offsets`` and ``stream_time`` are
        what the model has learned so far."""
        if not self.due(force):
            return None
        self.requested.clear()
        started = time.perf_counter()
        snap, events, alive = self._build(offsets, stream_time)
        records = [LineageRecord(kind=e.kind, topic_id=e.topic_id, related_topic_id=e.related_topic_id,
                                 model_version=snap.model_version, at=snap.created_at, words=list(e.words),
                                 previous_words=list(e.previous_words)) for e in events]
        self._publish(snap, records)
        # The drift gauges and emergence counters are what the topic alerts watch. Drift counts from
        # the third snapshot of a warm model on: the first one's drift is from the clusters' words to
        # XTRA's, the second one's is XTRA still settling right after its warm-up steps (neither is
        # the stream changing). Emergences count from the first.
        self._warm_snapshots += int(self.model.is_warm)
        settled = self._warm_snapshots > SETTLING_SNAPSHOTS
        if self.model.is_warm:
            if self._warm_ids is None:
                self._warm_ids = self.tracker.next_id
            self._count_emergences(snap, [r for r in records if (r.kind == "born" and r.topic_id >= self._warm_ids)
                                          or r.kind == "prevalence_jump"])
        self.metrics.topics_alive.set(int(alive.sum()))
        self.version = snap.model_version
        self._docs = snap.documents_seen
        self.docs_since = 0
        self._last = time.monotonic()
        self._observe(snap, drift=settled)
        self.metrics.stage_seconds.labels("snapshot").observe(time.perf_counter() - started)
        logger.info("snapshot v%d: %d documents, %d topics", snap.model_version, snap.documents_seen, len(snap.topics))
        return snap

    def _build(self, offsets: Mapping[str, int],
               stream_time: datetime | None) -> tuple[TopicSnapshot, list[LineageEvent], np.ndarray]:
        """The snapshot, its lineage events and which topics are alive, read under the lock."""
        s = self.settings.snapshots
        with self.lock:
            model = self.model
            if model.version == self.version:   # learned since, not trained: a version of its own
                model.bump_version()
            sizes = model.cluster_sizes
            alive = sizes >= s.alive_share * sizes.sum() / max(len(sizes), 1)
            top = {lang: model.topic_words(lang, 5)[0] for lang in model.languages}
            signature = [tuple(w for lang in model.languages for w in top[lang][k])
                         for k in range(model.cfg.num_topics)]
            previous_ids = list(self.tracker.slot_ids)
            centers = model.cluster_centers
            if centers is None:
                raise ValueError("no snapshot before the first topics are clustered")
            ids, events = self.tracker.update(centers, alive, signature)
            events += self.prevalence_shift.events(previous_ids, ids, signature)
            now = datetime.now(timezone.utc)
            at = (stream_time or now).timestamp()
            if model.is_warm and not self._baseline_warm:
                self.drift_baseline = DriftBaseline(s.drift_window_seconds)
                self._baseline_warm = True
            reference = self.drift_baseline.reference(at)
            new_slots = frozenset(k for k, i in enumerate(ids) if previous_ids and i not in previous_ids)
            snap, dists = build_snapshot(model, reference, offsets, top_n=s.top_words, now=now,
                                         stream_time=stream_time, topic_ids=ids, alive=alive, new_slots=new_slots)
            self.drift_baseline.add(at, dists)
        return snap, events, alive

    def _count_emergences(self, snap: TopicSnapshot, records: list[LineageRecord]) -> None:
        """Count the emergence events and name the topic of the latest of each kind (id and slot
        as gauge values, which the alert annotations read: never as labels)."""
        slot_of = {t.topic_id: t.slot for t in snap.topics}
        for kind in ("born", "prevalence_jump"):
            mine = [r for r in records if r.kind == kind]
            if not mine:
                continue
            self.metrics.topic_emergences.labels(kind).inc(len(mine))
            self.metrics.topic_event_id.labels(kind).set(mine[-1].topic_id)
            self.metrics.topic_event_slot.labels(kind).set(slot_of.get(mine[-1].topic_id, -1))

    def _publish(self, snap: TopicSnapshot, records: list[LineageRecord]) -> None:
        """To the outbox (Kafka, where configured) and to the local store; births and deaths counted."""
        sink = self.outbox.sink("snapshots")
        if sink is not None:
            try:
                value = snap.fitted_json_bytes(sink.max_value_bytes)
            except RecordTooLarge as exc:
                logger.error("snapshot not published to Kafka (kept in the local store): %s", exc)
                self.metrics.output_rejected.labels("snapshots").inc()
            else:
                self.outbox.emit("snapshots", value, key=str(snap.model_version).encode())
        for rec in records:
            self.outbox.emit("lineage", rec.model_dump_json().encode(), key=str(rec.topic_id).encode())
        self.outbox.drain()
        self.store.add(snap)
        self.store.add_lineage(records)
        self.metrics.births.inc(sum(r.kind == "born" for r in records))
        self.metrics.deaths.inc(sum(r.kind == "died" for r in records))

    def _observe(self, snap: TopicSnapshot, drift: bool = True) -> None:
        """Drift quantiles over topics (max over languages per topic; with ``drift``), sizes."""
        m = self.metrics
        m.snapshots.inc()
        m.last_snapshot.set(snap.created_at.timestamp())
        if drift and any(t.drift for t in snap.topics):
            settled = self.tracker.settled_ids()   # a topic just come to life has no words to drift from
            values = np.array([max(t.drift.values()) if t.drift and t.topic_id in settled else 0.0
                               for t in snap.topics])
            m.drift_max.set(float(values.max()))
            top = snap.topics[int(values.argmax())]
            m.drift_max_topic_id.set(top.topic_id)
            m.drift_max_slot.set(top.slot)
            for q in ("0.5", "0.9", "0.99", "1"):
                m.drift_quantile.labels(q).set(float(np.quantile(values, float(q))))
            m.drifting_ratio.set(float((values > self.settings.snapshots.drift_threshold).mean()))
        sizes = np.array([t.size for t in snap.topics])
        for q in ("0.5", "0.9", "0.99", "1"):
            m.cluster_size.labels(q).set(float(np.quantile(sizes, float(q))))
        observe_model(m, self.model, 0)
