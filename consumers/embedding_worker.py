"""``xtream run --role embedder``: the stateless, horizontally scalable half of the topology.

Any number of these share one consumer group over the input topic. Each batch:

Step 1: parse, check language, embed and tokenise (:class:`~consumers.intake.TextIntake`);
Step 2: publish one :class:`~stream.schemas.EmbeddedDocument` per document to the embedded topic,
        keyed by input partition so each input partition's documents stay in order, and the bad
        records to the dead-letter topic;
Step 3: flush the producer (the outputs are on the broker);
Step 4: commit the input offsets.

A crash between 3 and 4 re-publishes a batch; the trainer drops those by source offset (see
:class:`~consumers.intake.EmbeddedIntake`), so each document is learned exactly once.
"""

from __future__ import annotations

import logging
import signal
import threading
import time

from xtream.consumers.intake import PreparedBatch, TextIntake
from xtream.consumers.metrics import ServiceMetrics
from xtream.consumers.poll_loop import PollLoop
from xtream.stream.dead_letter import dead_letter_headers
from xtream.stream.errors import SinkError, SourceUnavailable
from xtream.stream.records import Record, offset_key
from xtream.stream.schemas import EmbeddedDocument
from xtream.stream.sinks import Sink, close_sinks
from xtream.stream.sources import Source

__all__ = ["EmbeddingWorker"]

logger = logging.getLogger(__name__)


class EmbeddingWorker:
    def __init__(self, source: Source, intake: TextIntake, embedded: Sink, dead_letters: Sink,
                 max_records: int, max_wait_ms: int, metrics: ServiceMetrics,
                 max_poll_interval_ms: int = 300_000) -> None:
        self.source = source
        self.intake = intake
        self.embedded = embedded
        self.dead_letters = dead_letters
        self.metrics = metrics
        self.documents = 0
        self.records = 0
        self._stop = threading.Event()
        self.poller = PollLoop(lambda: self.source, metrics, self._stop, max_wait_ms)
        self.sizing = self.poller.sizing(max_records, max_poll_interval_ms)
        metrics.source_up.set_function(lambda: float(self.source_reachable))

    @property
    def heartbeat(self) -> float:
        return self.poller.heartbeat

    @property
    def source_reachable(self) -> bool:
        """The last poll did not fail and the broker answers now (see TopicService.source_reachable)."""
        return self.poller.healthy and self.source.reachable()

    def stop(self, *_args) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def run(self) -> None:
        while not self._stop.is_set():
            self.poller.turn()
            records = self.poller.poll(self.sizing.next())
            if not records:
                if records is not None and self.source.exhausted():
                    break
                continue
            turn_started = time.perf_counter()
            batch = self._publish(records)
            self.poller.observe_turn(self.sizing, len(records), time.perf_counter() - turn_started)
            self.records += len(records)
            self.documents += len(batch)
            self.metrics.batch_done(len(records))

    def _publish(self, records: list[Record]) -> PreparedBatch:
        """Steps 1 to 4 for one batch; a batch whose outputs or offsets did not reach the broker is
        left uncommitted, to be read again (here or by whoever gets the partition)."""
        m = self.metrics
        # Step 1
        with m.stage_seconds.labels("embed").time():
            batch = self.intake.prepare(records)
        # Step 2
        for rec, reason, detail in batch.dead:
            self.dead_letters.add(rec.value or b"", key=rec.key, headers=dead_letter_headers(rec, reason, detail))
            m.dead_letter(reason)
        for i, item in enumerate(batch.items):
            doc = EmbeddedDocument(id=item.id, lang=item.lang, tokens=batch.tokens[i],
                                   embedding=EmbeddedDocument.encode_vector(batch.embeddings[i]),
                                   dim=batch.embeddings.shape[1], timestamp=item.timestamp,
                                   source_topic=item.source_topic, source_partition=item.source_partition,
                                   source_offset=item.source_offset, source_timestamp_ms=item.source_timestamp_ms,
                                   text_prefix=item.text_prefix or None)
            self.embedded.add(doc.model_dump_json().encode(),
                              key=offset_key(item.source_topic, item.source_partition).encode())
            m.documents_processed.labels(item.lang).inc()
        # Step 3
        try:
            with m.stage_seconds.labels("commit").time():
                self.embedded.flush()
                self.dead_letters.flush()
                # Step 4
                offsets: dict[str, int] = {}
                for rec in records:
                    offsets[rec.position] = max(offsets.get(rec.position, 0), rec.offset + 1)
                self.source.commit(offsets)
        except (SinkError, SourceUnavailable) as exc:
            # Not committed: this batch will be read again (here or by whoever gets the partition).
            logger.error("batch not committed, it will be re-read: %s", exc)
        return batch

    def close(self) -> None:
        for exc in close_sinks(self.embedded, self.dead_letters):
            logger.warning("closing a sink failed: %s", exc)
        self.source.close()
