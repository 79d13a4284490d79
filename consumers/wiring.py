"""Building a :class:`TopicService` from :class:`Settings`: Kafka or file in, Kafka or files out."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from model.embedding import load_embedder
from stream.sinks import JsonlSink, KafkaSink, make_producer
from stream.snapshot_store import SnapshotStore
from stream.sources import JsonlFileSource, KafkaSource

from consumers.checkpoint import CheckpointStore
from consumers.config import Settings
from consumers.service import TopicService

__all__ = ["DEMO_STREAM", "build_service", "set_threads"]

logger = logging.getLogger(__name__)

DEMO_STREAM = Path(__file__).resolve().parent / "demo" / "news.jsonl"


def set_threads(n: int) -> None:
    """Pin torch and BLAS thread pools: oversubscribed BLAS on 2 cores was measured 28-45x slower."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(n)
    threadpool_limits(n)


def build_service(settings: Settings) -> TopicService:
    set_threads(settings.model.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")   # never reach for a model hub at run time
    data = Path(settings.data_dir)
    checkpoints = CheckpointStore(data / "checkpoints", keep=settings.checkpoint.keep)
    embedder = load_embedder(settings.model.embedder, threads=settings.model.threads,
                             batch_size=settings.model.embed_batch_size)
    compat = {"embedder": embedder.name, "embedding_dim": embedder.dim, "num_topics": settings.model.num_topics}
    resumed = checkpoints.load_latest(compat)
    start_offsets = resumed[0]["offsets"] if resumed else {}
    store = SnapshotStore(data / "snapshots.sqlite")
    k = settings.kafka
    service_ref: list[TopicService] = []
    if k.bootstrap_servers and settings.input_file is None:
        client = k.client_config()
        source = KafkaSource(k.bootstrap_servers, [k.input_topic], k.group_id, start_offsets=start_offsets,
                             on_revoke=lambda parts: service_ref[0].on_partitions_revoked(parts),
                             auto_offset_reset=k.auto_offset_reset, max_poll_interval_ms=k.max_poll_interval_ms,
                             session_timeout_ms=k.session_timeout_ms, client_config=client)
        producer = make_producer(k.bootstrap_servers, client)
        sinks = dict(assignments=KafkaSink(producer, k.assignments_topic),
                     dead_letters=KafkaSink(producer, k.dead_letter_topic),
                     snapshots=KafkaSink(producer, k.snapshots_topic),
                     lineage=KafkaSink(producer, k.lineage_topic))
    else:
        source = JsonlFileSource(settings.input_file or DEMO_STREAM, start_offsets=start_offsets)
        sinks = dict(assignments=JsonlSink(data / "assignments.jsonl"),
                     dead_letters=JsonlSink(data / "dead_letters.jsonl"), snapshots=None,
                     lineage=JsonlSink(data / "lineage.jsonl"))
    service = TopicService(settings, source, embedder, snapshot_store=store, checkpoints=checkpoints,
                           start_offsets=start_offsets, **sinks)
    service_ref.append(service)
    if resumed:
        service.load_state_dict(resumed[1])
    return service
