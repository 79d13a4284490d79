"""Building a :class:`TopicService` from :class:`Settings`: Kafka or file in, Kafka or files out."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from xtream.consumers.checkpoint import CheckpointStore, CheckpointsUnreadable
from xtream.consumers.config import Settings
from xtream.consumers.embedding_worker import EmbeddingWorker
from xtream.consumers.intake import EmbeddedIntake, TextIntake
from xtream.consumers.metrics import ServiceMetrics
from xtream.consumers.service import TopicService
from xtream.model.allocator import release_freed_memory
from xtream.model.embedding import Embedder, load_embedder
from xtream.model.embedding_process import ProcessEmbedder
from xtream.stream.file_source import JsonlFileSource
from xtream.stream.kafka_replay import KafkaReplaySource, resolve_replay_window
from xtream.stream.kafka_source import KafkaSource, committed_offsets
from xtream.stream.sinks import JsonlSink, KafkaSink, make_producer, topic_record_limits
from xtream.stream.snapshot_store import SnapshotStore
from xtream.stream.sources import Source
from xtream.stream.transactions import OutputTransactions, covered_by

__all__ = ["DEMO_PROFILE", "DEMO_STREAM", "build_embedding_worker", "build_service", "replay_settings",
           "service_embedder", "set_threads"]

logger = logging.getLogger(__name__)

DEMO_STREAM = Path(__file__).resolve().parent / "demo" / "news.jsonl"
DEMO_PROFILE = Path(__file__).resolve().parent / "demo" / "profile.toml"   # the demo's settings over the defaults


def set_threads(n: int) -> None:
    """Pin torch and BLAS thread pools (oversubscribed BLAS threads slow every product down) and
    keep freed training buffers in the heap (:mod:`model.allocator`)."""
    from xtream.model.allocator import retain_freed_memory
    from xtream.model.threads import pin_threads

    retain_freed_memory()
    pin_threads(n)


def service_embedder(settings: Settings) -> Embedder:
    """The service's embedder: in a child process unless ``model.embedder_process`` is off."""
    m = settings.model
    if m.embedder_process:
        return ProcessEmbedder(m.embedder, threads=m.threads, batch_size=m.embed_batch_size)
    return load_embedder(m.embedder, threads=m.threads, batch_size=m.embed_batch_size)


def replay_settings(settings: Settings, namespace: str) -> Settings:
    """A replay's own data dir, consumer group and output topics, so the live service is untouched."""
    k = settings.kafka
    suffix = f".replay.{namespace}"
    return settings.model_copy(update={
        "data_dir": Path(settings.data_dir) / "replays" / namespace,
        "kafka": k.model_copy(update=dict(group_id=k.group_id + suffix,
                                          assignments_topic=k.assignments_topic + suffix,
                                          snapshots_topic=k.snapshots_topic + suffix,
                                          lineage_topic=k.lineage_topic + suffix,
                                          dead_letter_topic=k.dead_letter_topic + suffix)),
    })


def _kafka_sinks(settings: Settings, client: dict, producer=None) -> dict:
    """The service's four output topics on one shared producer, each knowing its record limit."""
    k = settings.kafka
    producer = producer or make_producer(k.servers(), client, compression=k.compression_type)
    topics = dict(assignments=k.assignments_topic, dead_letters=k.dead_letter_topic, snapshots=k.snapshots_topic,
                  lineage=k.lineage_topic)
    limits = topic_record_limits(k.servers(), list(topics.values()), client)
    return {name: KafkaSink(producer, topic, max_record_bytes=limits[topic]) for name, topic in topics.items()}


def build_embedding_worker(settings: Settings) -> EmbeddingWorker:
    """``--role embedder``: input topic -> parse/embed/tokenise -> embedded topic (+ dead letters)."""
    from xtream.model.text import Tokenizer

    set_threads(settings.model.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    k = settings.kafka
    if not k.bootstrap_servers:
        raise ValueError("--role embedder needs Kafka: set kafka.bootstrap_servers")
    embedder = load_embedder(settings.model.embedder, threads=settings.model.threads,
                             batch_size=settings.model.embed_batch_size)
    client = k.client_config()
    source = KafkaSource(k.bootstrap_servers, [k.input_topic], k.group_id, auto_offset_reset=k.auto_offset_reset,
                         max_poll_interval_ms=k.max_poll_interval_ms, session_timeout_ms=k.session_timeout_ms,
                         group_instance_id=k.group_instance_id, isolation_level=k.isolation_level,
                         client_config=client)
    producer = make_producer(k.bootstrap_servers, client, compression=k.compression_type)
    intake = TextIntake(embedder, Tokenizer(), frozenset(settings.model.languages), settings.batch.max_record_bytes)
    return EmbeddingWorker(source, intake, KafkaSink(producer, k.embedded_topic),
                           KafkaSink(producer, k.dead_letter_topic),
                           settings.batch.max_records, settings.batch.max_wait_ms,
                           ServiceMetrics(sorted(settings.model.languages)), k.max_poll_interval_ms)


def build_service(settings: Settings, replay: tuple[str, str | None] | None = None, role: str = "all") -> TopicService:
    """The service for ``settings``; with ``replay=(from, to)`` a bounded re-read of the input topic
    (pass settings through :func:`replay_settings` first); ``role="trainer"`` reads the embedded
    topic that ``--role embedder`` workers fill instead of raw documents."""
    set_threads(settings.model.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")   # never reach for a model hub at run time
    data = Path(settings.data_dir)
    checkpoints = CheckpointStore(data / "checkpoints", keep=settings.checkpoint.keep).acquire()
    try:
        embedder = service_embedder(settings)
    except BaseException:
        checkpoints.release()
        raise
    try:
        return _assemble_service(settings, embedder, checkpoints, replay, role)
    except BaseException:   # e.g. an incompatible checkpoint: do not leave the embedder process behind
        embedder.close()
        checkpoints.release()
        raise


def _assemble_service(settings: Settings, embedder: Embedder, checkpoints: CheckpointStore,
                      replay: tuple[str, str | None] | None, role: str) -> TopicService:
    data = Path(settings.data_dir)
    compat = {"embedder": embedder.name, "embedding_dim": embedder.dim, "num_topics": settings.model.num_topics}
    k = settings.kafka
    live_kafka = replay is None and bool(k.bootstrap_servers) and settings.input_file is None
    topic, group = (k.embedded_topic, k.group_id + ".trainer") if role == "trainer" else (k.input_topic, k.group_id)
    transactions = None
    if live_kafka and k.delivery == "exactly_once":
        transactions, resumed = _exactly_once_start(settings, checkpoints, compat, topic, group)
    else:
        resumed = checkpoints.load_latest(compat)
    start_offsets = resumed[0]["offsets"] if resumed else {}
    if resumed is None and checkpoints.damaged and live_kafka:
        if not settings.checkpoint.accept_model_loss:
            raise CheckpointsUnreadable(
                f"{len(checkpoints.damaged)} checkpoint(s) in {checkpoints.directory} exist but none is readable: "
                f"starting from the consumer group's committed offsets would leave every document before them "
                f"out of the model. Restore a checkpoint, or accept the loss with --accept-model-loss "
                f"(checkpoint.accept_model_loss)", checkpoints.damaged)
        logger.error("no readable checkpoint among %d: starting from the committed offsets; the model lacks "
                     "the documents before them (checkpoint.accept_model_loss)", len(checkpoints.damaged))
    store = SnapshotStore(data / "snapshots.sqlite")
    source: Source
    if replay is not None:
        if not k.bootstrap_servers:
            raise ValueError("a replay reads Kafka: set kafka.bootstrap_servers")
        client = k.client_config()
        start, stop = resolve_replay_window(k.bootstrap_servers, k.input_topic, replay[0], replay[1], client)
        for key, off in start_offsets.items():   # resuming an interrupted replay
            part = int(key.rsplit(":", 1)[1])
            if part in start:
                start[part] = max(start[part], off)
        source = KafkaReplaySource(k.bootstrap_servers, k.input_topic, k.group_id, start, stop, client,
                                   isolation_level=k.isolation_level)
        sinks = _kafka_sinks(settings, client)
    elif live_kafka:
        client = k.client_config()
        source = KafkaSource(k.servers(), [topic], group, start_offsets=start_offsets,
                             auto_offset_reset=k.auto_offset_reset, max_poll_interval_ms=k.max_poll_interval_ms,
                             session_timeout_ms=k.session_timeout_ms, group_instance_id=k.group_instance_id,
                             isolation_level=k.isolation_level, client_config=client)
        sinks = _kafka_sinks(settings, client, transactions.producer if transactions is not None else None)
    else:
        if role == "trainer":
            raise ValueError("--role trainer needs Kafka: set kafka.bootstrap_servers")
        source = JsonlFileSource(settings.input_file or DEMO_STREAM, start_offsets=start_offsets,
                                 follow=settings.follow_input, max_line_bytes=settings.batch.max_record_bytes)
        sinks = dict(assignments=JsonlSink(data / "assignments.jsonl"),
                     dead_letters=JsonlSink(data / "dead_letters.jsonl", envelope=True), snapshots=None,
                     lineage=JsonlSink(data / "lineage.jsonl"))
    service = TopicService(settings, source, embedder, snapshot_store=store, checkpoints=checkpoints,
                           start_offsets=start_offsets, transactions=transactions, **sinks,
                           intake=EmbeddedIntake(embedder.dim) if role == "trainer" else None)
    if resumed:
        service.load_state_dict(resumed[1])
        del resumed   # the decoded checkpoint: its blocks go back to the kernel, not kept as free heap
        release_freed_memory()
    return service


def _exactly_once_start(settings: Settings, checkpoints: CheckpointStore, compat: dict, topic: str,
                        group: str) -> tuple[OutputTransactions, tuple[dict, dict] | None]:
    """The transactional producer, its predecessors fenced and their open transaction finished, and
    the newest checkpoint whose offsets the group has committed (a later one belongs to a
    transaction that never committed: its outputs are gone, so its documents are learned again)."""
    k = settings.kafka
    client = k.client_config()
    tid = k.transactional_id or f"{group}-{k.group_instance_id or 0}"
    transactions = OutputTransactions(make_producer(k.servers(), client, compression=k.compression_type,
                                                    transactional_id=tid))
    try:
        transactions.init()
        committed = committed_offsets(k.servers(), topic, group, client)
    except BaseException:
        transactions.producer.close(timeout=2)
        raise
    resumed = checkpoints.load_latest(compat, accept=lambda header: covered_by(header["offsets"], committed))
    logger.info("exactly-once outputs (transactional id %s); group %s committed %s", tid, group, committed)
    return transactions, resumed
