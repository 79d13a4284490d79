"""Local, durable store of topic snapshots (SQLite), answering "what were the topics at time t?".

One row per snapshot: version, creation time (epoch seconds, indexed), documents seen, and the
snapshot's JSON. SQLite in WAL mode with ``synchronous=FULL`` keeps a committed snapshot across a
kill -9, and as-of queries are an index lookup.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from xtream.stream.schemas import LineageRecord, TopicSnapshot

__all__ = ["SnapshotStore", "rebuild_from_kafka"]


class SnapshotStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("""CREATE TABLE IF NOT EXISTS snapshots (
            version INTEGER PRIMARY KEY, created_at REAL NOT NULL, documents_seen INTEGER NOT NULL,
            payload TEXT NOT NULL)""")
        self._db.execute("CREATE INDEX IF NOT EXISTS snapshots_created ON snapshots(created_at)")
        self._db.execute("""CREATE TABLE IF NOT EXISTS lineage (
            model_version INTEGER NOT NULL, topic_id INTEGER NOT NULL, kind TEXT NOT NULL, payload TEXT NOT NULL,
            PRIMARY KEY (model_version, topic_id, kind))""")
        self._db.execute("CREATE INDEX IF NOT EXISTS lineage_topic ON lineage(topic_id)")

    def add(self, snapshot: TopicSnapshot) -> None:
        """Insert (or replace a replayed) snapshot; idempotent per version."""
        self._db.execute("INSERT OR REPLACE INTO snapshots VALUES (?, ?, ?, ?)",
                         (snapshot.model_version, snapshot.created_at.timestamp(), snapshot.documents_seen,
                          snapshot.model_dump_json()))

    def add_lineage(self, events: list[LineageRecord]) -> None:
        self._db.executemany("INSERT OR REPLACE INTO lineage VALUES (?, ?, ?, ?)",
                             [(e.model_version, e.topic_id, e.kind, e.model_dump_json()) for e in events])

    def lineage(self, topic_id: int | None = None) -> list[LineageRecord]:
        """Events in model-version order, for one topic (as subject or related) or all."""
        if topic_id is None:
            rows = self._db.execute("SELECT payload FROM lineage ORDER BY model_version, rowid")
        else:
            rows = self._db.execute("SELECT payload FROM lineage WHERE topic_id = ? OR "
                                    "json_extract(payload, '$.related_topic_id') = ? ORDER BY model_version, rowid",
                                    (topic_id, topic_id))
        return [LineageRecord.model_validate_json(r[0]) for r in rows]

    def latest(self) -> TopicSnapshot | None:
        row = self._db.execute("SELECT payload FROM snapshots ORDER BY version DESC LIMIT 1").fetchone()
        return TopicSnapshot.model_validate_json(row[0]) if row else None

    def as_of(self, when: datetime) -> TopicSnapshot | None:
        """The snapshot in force at ``when``: the last one created at or before it."""
        row = self._db.execute("SELECT payload FROM snapshots WHERE created_at <= ? "
                               "ORDER BY created_at DESC, version DESC LIMIT 1", (when.timestamp(),)).fetchone()
        return TopicSnapshot.model_validate_json(row[0]) if row else None

    def get(self, version: int) -> TopicSnapshot | None:
        row = self._db.execute("SELECT payload FROM snapshots WHERE version = ?", (version,)).fetchone()
        return TopicSnapshot.model_validate_json(row[0]) if row else None

    def offsets_by_version(self) -> list[tuple[int, dict[str, int]]]:
        """``(version, offsets)`` of every snapshot, newest first, without parsing the snapshots."""
        rows = self._db.execute("SELECT version, json_extract(payload, '$.offsets') FROM snapshots "
                                "ORDER BY version DESC").fetchall()
        return [(version, json.loads(raw) if raw else {}) for version, raw in rows]

    def versions(self) -> list[int]:
        return [r[0] for r in self._db.execute("SELECT version FROM snapshots ORDER BY version")]

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM snapshots").fetchone()[0]

    def close(self) -> None:
        self._db.close()


def rebuild_from_kafka(store: SnapshotStore, bootstrap_servers: str, snapshots_topic: str, lineage_topic: str | None,
                       client_config: dict[str, Any] | None = None, idle_ms: int = 3000,
                       progress: Callable[[int], None] | None = None) -> tuple[int, int]:
    """Re-read the snapshots (and lineage) topics from the beginning into ``store``.

    The store is derived data: if it is lost or corrupted, the topics hold everything. Reads
    with no consumer group (nothing committed, no rebalance) until ``idle_ms`` pass without
    records. Returns ``(snapshots, lineage events)`` written; inserts are idempotent.
    """
    from kafka import KafkaConsumer, TopicPartition

    counts = []
    for topic, model in ((snapshots_topic, TopicSnapshot), (lineage_topic, LineageRecord)):
        if topic is None:
            counts.append(0)
            continue
        consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=None, enable_auto_commit=False,
                                 **(client_config or {}))
        try:
            parts = consumer.partitions_for_topic(topic) or set()
            tps = [TopicPartition(topic, p) for p in sorted(parts)]
            if not tps:
                counts.append(0)
                continue
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            ends = consumer.end_offsets(tps)
            n = 0
            while any(consumer.position(tp) < ends[tp] for tp in tps):
                polled = consumer.poll(timeout_ms=idle_ms)
                if not polled:
                    break
                batch = [model.model_validate_json(r.value) for rs in polled.values() for r in rs if r.value]
                if model is TopicSnapshot:
                    for snap in batch:
                        store.add(snap)   # type: ignore[arg-type]
                else:
                    store.add_lineage(batch)   # type: ignore[arg-type]
                n += len(batch)
                if progress is not None:
                    progress(len(batch))
            counts.append(n)
        finally:
            consumer.close()
    return counts[0], counts[1]
