"""Prometheus metrics of the service, named by Prometheus conventions.

Labels are bounded: language (a handful), stage (9), reason (a dozen codes), partition (the input
topic's partitions), loss component (6), quantile (4), emergence kind (2). Never a topic id or a document id
as a label: the topic an alert is about is a gauge's *value* (``xtream_topic_event_id``,
``xtream_topic_drift_max_id`` and their ``_slot`` twins), which the alert annotations read.
Every series that will exist is created at start with value 0, so alerts and dashboards see a
flat line instead of "no data" before the first event.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector, ProcessCollector

__all__ = ["STAGES", "ServiceMetrics"]

STAGES = ("parse", "embed", "assign", "infer", "train", "snapshot", "checkpoint", "commit", "embed_wait")
DLQ_REASONS = ("tombstone", "invalid_utf8", "invalid_json", "not_an_object", "too_deep", "invalid_field",
               "empty_text", "unknown_language", "unsupported_language", "too_large", "processing_error")
LOSS_PARTS = ("total", "reconstruction_kl", "cluster", "infonce", "beta")
QUANTILES = ("0.5", "0.9", "0.99", "1")


class ServiceMetrics:
    """All series of one service process, on their own registry (tests can make many)."""

    def __init__(self, languages: list[str], registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self._intake_series(r)
        self._model_series(r)
        self._topic_series(r)
        self._output_series(r)
        self._create_labels(languages)

    def _intake_series(self, r: CollectorRegistry) -> None:
        self.records_consumed = Counter("xtream_records_consumed_total", "Records polled from the source", registry=r)
        self.documents_processed = Counter("xtream_documents_processed_total",
                                           "Valid documents learned and assigned", ["lang"], registry=r)
        self.dead_lettered = Counter("xtream_documents_dead_lettered_total",
                                     "Records sent to the dead-letter topic", ["reason"], registry=r)
        self.batches = Counter("xtream_batches_total", "Processing batches", registry=r)
        self.rebalances = Counter("xtream_consumer_rebalances_total",
                                  "Partition assignments received from the consumer group", registry=r)
        self.batch_records_limit = Gauge("xtream_batch_records_limit",
                                         "Records asked for per poll (shrinks when processing slows, to stay "
                                         "within max.poll.interval.ms)", registry=r)
        self.stage_seconds = Histogram("xtream_stage_seconds",
                                       "Time per batch spent in each stage (embed runs ahead of the loop on a "
                                       "worker; embed_wait is the loop waiting for it)", ["stage"],
                                       buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
                                       registry=r)
        self.consumer_lag = Gauge("xtream_consumer_lag_records", "Records behind the end of each input partition",
                                  ["partition"], registry=r)
        self.document_latency = Histogram("xtream_document_latency_seconds",
                                          "Record timestamp to assignment published",
                                          buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900), registry=r)
        self.offset_regressions = Counter("xtream_offset_regressions_total",
                                          "Times a partition's offsets went backwards (topic recreated, reset)",
                                          registry=r)
        self.duplicates_skipped = Counter("xtream_duplicates_skipped_total",
                                          "Embedded records skipped as re-deliveries of learned documents",
                                          registry=r)
        self.ready = Gauge("xtream_ready", "1 when consuming with a warm model", registry=r)
        self.source_up = Gauge("xtream_source_up",
                               "1 when polls succeed and the group coordinator answers heartbeats", registry=r)

    def _model_series(self, r: CollectorRegistry) -> None:
        self.buffer_documents = Gauge("xtream_replay_buffer_documents", "Documents held in the replay buffer",
                                      ["lang"], registry=r)
        self.vocabulary_words = Gauge("xtream_vocabulary_words", "Words in the vocabulary", ["lang"], registry=r)
        self.training_steps = Counter("xtream_training_steps_total", "XTRA gradient steps", registry=r)
        self.training_debt = Gauge("xtream_training_debt_steps",
                                   "Gradient steps the trainer owes for the documents learned (the loop "
                                   "trains itself past model.max_training_debt_steps)", registry=r)
        self.training_loss = Gauge("xtream_training_loss", "Mean loss of the last training slice", ["component"],
                                   registry=r)
        self.snapshots = Counter("xtream_snapshots_published_total", "Topic snapshots published", registry=r)
        self.last_snapshot = Gauge("xtream_last_snapshot_timestamp_seconds", "Unix time of the last snapshot",
                                   registry=r)
        self.checkpoints = Counter("xtream_checkpoints_total", "Checkpoints written", registry=r)
        self.checkpoint_failures = Counter("xtream_checkpoint_failures_total",
                                           "Checkpoints that could not be written (e.g. no space left); the "
                                           "last good one is kept", registry=r)
        self.last_checkpoint = Gauge("xtream_last_checkpoint_timestamp_seconds", "Unix time of the last checkpoint",
                                     registry=r)
        self.model_version = Gauge("xtream_model_version", "Version of the topic model", registry=r)
        self.model_documents = Gauge("xtream_model_documents", "Documents the durable model has learned", registry=r)

    def _topic_series(self, r: CollectorRegistry) -> None:
        self.drift_max = Gauge("xtream_topic_drift_max", "Largest per-topic JS divergence vs the previous snapshot",
                               registry=r)
        self.drift_quantile = Gauge("xtream_topic_drift",
                                    "Quantiles of per-topic JS divergence vs the previous snapshot",
                                    ["quantile"], registry=r)
        self.drifting_ratio = Gauge("xtream_topics_drifting_ratio", "Share of topics whose drift exceeds the threshold",
                                    registry=r)
        self.births = Counter("xtream_topic_births_total", "Topics that became alive", registry=r)
        self.deaths = Counter("xtream_topic_deaths_total", "Topics that died", registry=r)
        self.topic_emergences = Counter("xtream_topic_emergences_total",
                                        "Topics born that did not exist when the model became warm, and topics whose "
                                        "prevalence jumped (Page-Hinkley) since",
                                        ["kind"], registry=r)
        self.topic_event_id = Gauge("xtream_topic_event_id",
                                    "Stable id of the topic of the latest emergence event of each kind (-1: none)",
                                    ["kind"], registry=r)
        self.topic_event_slot = Gauge("xtream_topic_event_slot",
                                      "Topic slot of the latest emergence event of each kind (-1: none)",
                                      ["kind"], registry=r)
        self.drift_max_topic_id = Gauge("xtream_topic_drift_max_id",
                                        "Stable id of the topic with the largest drift in the latest snapshot "
                                        "(-1: none)", registry=r)
        self.drift_max_slot = Gauge("xtream_topic_drift_max_slot",
                                    "Slot of the topic with the largest drift in the latest snapshot (-1: none)",
                                    registry=r)
        self.topics_alive = Gauge("xtream_topics_alive", "Topics currently alive", registry=r)
        self.cluster_size = Gauge("xtream_cluster_size_documents", "Quantiles of cluster sizes (decayed documents)",
                                  ["quantile"], registry=r)

    def _output_series(self, r: CollectorRegistry) -> None:
        self.output_errors = Counter("xtream_output_errors_total",
                                     "Times a sink refused an output (it is kept and sent again)", ["output"],
                                     registry=r)
        self.output_rejected = Counter("xtream_output_records_rejected_total",
                                       "Output records dropped because the topic can never take them "
                                       "(over its size limit, or refused as invalid)", ["output"], registry=r)
        self.outputs_pending = Gauge("xtream_outputs_pending",
                                     "Outputs of learned batches waiting for a sink; no checkpoint meanwhile",
                                     registry=r)

    def _create_labels(self, languages: list[str]) -> None:
        for lang in languages:
            self.documents_processed.labels(lang)
            self.buffer_documents.labels(lang)
            self.vocabulary_words.labels(lang)
        for reason in DLQ_REASONS:
            self.dead_lettered.labels(reason)
        for output in ("assignments", "dead_letters", "snapshots", "lineage"):
            self.output_errors.labels(output)
            self.output_rejected.labels(output)
        for stage in STAGES:
            self.stage_seconds.labels(stage)
        for part in LOSS_PARTS:
            self.training_loss.labels(part)
        for kind in ("born", "prevalence_jump"):
            self.topic_emergences.labels(kind)
            self.topic_event_id.labels(kind).set(-1)
            self.topic_event_slot.labels(kind).set(-1)
        self.drift_max_topic_id.set(-1)
        self.drift_max_slot.set(-1)
        for q in QUANTILES:
            self.drift_quantile.labels(q)
            self.cluster_size.labels(q)

    # -- updates, once per batch or event ------------------------------------------------------
    def batch_done(self, records: int) -> None:
        self.records_consumed.inc(records)
        self.batches.inc()

    def documents_learned(self, langs: Sequence[str]) -> None:
        for lang, n in zip(*np.unique(np.asarray(langs), return_counts=True)):
            self.documents_processed.labels(str(lang)).inc(int(n))

    def dead_letter(self, reason: str) -> None:
        self.dead_lettered.labels(reason).inc()

    def latencies(self, seconds: Iterable[float]) -> None:
        """Record timestamp to assignment published, per document."""
        for s in seconds:
            self.document_latency.observe(s)

    def partition_lag(self, lags: Mapping[str, int]) -> None:
        """``{"topic:partition": records behind}``, labelled by partition."""
        for part, lag in lags.items():
            self.consumer_lag.labels(part.rsplit(":", 1)[1]).set(lag)

    def checkpointed(self) -> None:
        self.checkpoints.inc()
        self.last_checkpoint.set(time.time())
