"""A new story in a quiet stream: does it become a topic, and does the quiet stream stay quiet?

    python -m bench.emergence [--quick] [--quiet-docs N] [--story-docs N] [--every-docs N]
    python -m bench.emergence --data ../shared/data/amazon_review --new-class 1
    python -m bench.emergence --mode kafka [--quick] [--rate DOCS_PER_S]

The EC News training stream (English and Chinese interleaved) with sports (label 4, the *new
class*) held back for a *quiet* phase, then the remaining documents of all classes in their own
order (sports about 14% of them: the *story*). ``--data`` and ``--new-class`` hold back a class of
another dataset in the same layout (its embeddings cached by ``bench.quality_offline``). It runs through the service from a JSONL file (``xtream run --input``),
default model settings, with the cached multilingual-USE vectors standing in for the embedder (the
vectors the embedder would compute; see ``bench/README.md``). Documents carry event times 0.3 s
apart, so a snapshot every 1,000 documents is 300 s of stream time, the default drift window.

Figures:

- **lag**: documents of the new class seen before some topic holds >= 70% of it (a topic slot whose
  last 50 documents are >= 70% of it), counted on the assignments' top topic and on their cluster;
- **precision / recall** of that topic over the last 1,000 new-class documents (or half of them when
  fewer): recall = share of those documents it holds; precision = share of its documents, over
  the same span, that are of the new class;
- **quiet phase**, after warm-up (XTRA warm + one snapshot): topic births, prevalence jumps, the
  largest per-topic drift and the alert threshold;
- **story**: the first birth or prevalence jump after the story starts, in new-class documents and in
  snapshots (what ``XtreamTopicEmerged`` fires on);
- **churn**: share of topic ids unchanged between consecutive snapshots (minimum and mean);
- **cadence**: snapshots per ``every_docs`` documents.

``--mode kafka`` sends the same stream through a local Kafka broker at ``--rate`` documents per
second to the service, whose /metrics a live Prometheus scrapes with ``deploy/prometheus/alerts.yml``
as it ships, and reports when the topic alerts go pending and fire (``bench/_emergence_kafka.py``).

BERTopic online (``bench/_emergence_bertopic.py``) runs on the same stream where ``bertopic`` is
importable (the ``bench`` extra); ``--no-bertopic`` skips it.
Prints a table and, last, one JSON line; writes it to ``bench/results/emergence.json`` (``emergence_<dataset>.json`` for another dataset).
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from collections import deque
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from bench._common import (
    DATA,
    RESULTS,
    emit,
    load_stream,
    pin_threads,
    print_table,
    setup_logging,
    warmup_within,
    write_json,
)
from xtream.model.embedding import Embedder

logger = logging.getLogger("bench.emergence")

SPORTS = 4             # EC News' held-back class
SHARE = 0.7            # a topic "is" the story when this share of its recent documents are of it
RECENT = 50            # documents per topic slot that share is measured over
WARMUP_SHARE = 1 / 3   # XTRA's warm-up ends within the first third of the quiet phase


class CachedEmbedder(Embedder):
    """The service's embedder, answering from the cached vectors of the benchmark's texts (and of
    the vocabulary words); a text it was not given is embedded by USE itself."""

    name = "use-multilingual-v3"
    dim = 512

    def __init__(self, texts: list[str], vectors: np.ndarray, data: Path = DATA) -> None:
        self._vectors = {t[: self.max_chars]: v for t, v in zip(texts, vectors)}
        try:
            from bench._common import VocabularyWordEmbedder

            self._vectors.update(VocabularyWordEmbedder(data).vectors)
        except FileNotFoundError:
            pass
        self._use = None
        self.misses = 0

    def _encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        missing = []
        for i, t in enumerate(texts):
            v = self._vectors.get(t)
            if v is None:
                missing.append(i)
            else:
                out[i] = v
        if missing:
            if self._use is None:
                from xtream.model.embedding import UniversalSentenceEncoder

                self._use = UniversalSentenceEncoder(threads=1)
            out[missing] = self._use.encode([texts[i] for i in missing])
            self.misses += len(missing)
        return out


def build_stream(quiet: int, story: int, data: Path = DATA, new_class: int = SPORTS):
    """(texts, langs, labels, vectors) of the quiet phase (no ``new_class``) followed by the story phase."""
    s = load_stream(data)
    others = np.flatnonzero(s.labels != new_class)
    if quiet >= len(others):
        raise ValueError(f"at most {len(others) - 1} quiet documents")
    quiet_idx = others[:quiet]
    rest = np.arange(quiet_idx[-1] + 1, len(s))[:story]   # the stream from there on, the new class included
    order = np.concatenate([quiet_idx, rest])
    return [s.texts[i] for i in order], [s.langs[i] for i in order], s.labels[order], s.embeddings[order]


def write_jsonl(path: Path, texts, langs, labels, start: datetime, spacing: float) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for i, (t, lang, y) in enumerate(zip(texts, langs, labels)):
            f.write(json.dumps({"id": f"d{i}", "text": t, "lang": lang, "metadata": {"label": int(y)},
                                "timestamp": (start + timedelta(seconds=i * spacing)).isoformat()},
                               ensure_ascii=False) + "\n")


def run_service(work: Path, texts, langs, labels, embedder: Embedder, every_docs: int, quiet: int):
    """The service over the JSONL file until it ends; returns (service, seconds)."""
    from xtream.consumers.checkpoint import CheckpointStore
    from xtream.consumers.config import Settings
    from xtream.consumers.wiring import _assemble_service

    path = work / "stream.jsonl"
    write_jsonl(path, texts, langs, labels, datetime(2026, 1, 1, tzinfo=timezone.utc), 0.3)
    base = Settings(data_dir=work / "data", input_file=path)
    settings = base.model_copy(update={
        "model": warmup_within(base.model, quiet, WARMUP_SHARE),
        "snapshots": base.snapshots.model_copy(update=dict(every_docs=every_docs, every_seconds=1e9)),
        "http": base.http.model_copy(update=dict(enabled=False))})
    service = _assemble_service(settings, embedder, CheckpointStore(work / "data" / "checkpoints"), None, "all")
    service.warm_versions = set()   # versions of the snapshots taken of a warm model (XTRA's words)
    service.drift_gauge = {}   # documents seen -> xtream_topic_drift_max after that snapshot (the alert's view)
    snapshot = service.maybe_snapshot

    def recording(force: bool = False):
        snap = snapshot(force)
        if snap is not None:
            if service.model.is_warm:
                service.warm_versions.add(snap.model_version)
            service.drift_gauge[snap.documents_seen] = service.metrics.registry.get_sample_value("xtream_topic_drift_max")
        return snap

    service.maybe_snapshot = recording
    started = time.perf_counter()
    service.run()
    return service, settings, time.perf_counter() - started


def first_story_topic(order_slots: np.ndarray, is_new: np.ndarray, start: int) -> tuple[int | None, int | None]:
    """(new-class documents seen, slot) when some slot's last RECENT documents first hold >= SHARE of it."""
    recent: dict[int, deque] = {}
    seen = 0
    for i in range(start, len(order_slots)):
        slot = int(order_slots[i])
        window = recent.setdefault(slot, deque(maxlen=RECENT))
        window.append(bool(is_new[i]))
        seen += int(is_new[i])
        if len(window) == RECENT and sum(window) >= SHARE * RECENT:
            return seen, slot
    return None, None


def precision_recall(slots: np.ndarray, is_new: np.ndarray, last: int) -> tuple[int, float, float]:
    """Best slot over the span of the last ``last`` new-class documents: (slot, precision, recall)."""
    rows = np.flatnonzero(is_new)[-last:]
    span = slice(rows[0], len(slots))
    s, y = slots[span], is_new[span]
    best = (-1, 0.0, 0.0)
    for k in np.unique(slots[rows]):
        mine = s == k
        precision = float(y[mine].mean())
        recall = float((slots[rows] == k).mean())
        if (precision >= SHARE, recall) > (best[1] >= SHARE, best[2]):
            best = (int(k), precision, recall)
    return best


def measure(service, settings, is_new: np.ndarray, quiet: int) -> dict:
    data = Path(settings.data_dir)
    by_id = {}
    with open(data / "assignments.jsonl", encoding="utf-8") as f:
        for line in f:
            a = json.loads(line)
            by_id[a["document_id"]] = a
    n = len(is_new)
    topic = np.array([by_id[f"d{i}"]["topics"][0][0] for i in range(n)])
    cluster = np.array([by_id[f"d{i}"]["cluster"] for i in range(n)])
    snaps = [service.store.get(v) for v in service.store.versions()]
    seen = [s.documents_seen for s in snaps]
    threshold = settings.snapshots.drift_threshold
    figures: dict = {"documents": n, "quiet_documents": quiet, "story_documents": n - quiet,
                     "story_new_class_documents": int(is_new.sum()), "snapshots": len(snaps),
                     "every_docs": settings.snapshots.every_docs,
                     "snapshots_per_every_docs": len(snaps) / (n / settings.snapshots.every_docs),
                     "max_documents_between_snapshots": int(max(np.diff([0] + seen))),
                     "drift_threshold": threshold}
    last = min(1000, int(is_new.sum()) // 2)
    figures["recall_span_new_class_documents"] = last
    for name, slots in (("topic", topic), ("cluster", cluster)):
        lag, slot = first_story_topic(slots, is_new, quiet)
        best, precision, recall = precision_recall(slots, is_new, last)
        figures[f"{name}_lag_new_class_documents"] = lag
        figures[f"{name}_precision"] = precision
        figures[f"{name}_recall"] = recall
        figures[f"{name}_same_slot_as_first"] = slot == best
    # Warm: the first snapshot of a model past XTRA's warm-up (a training version: its words are
    # XTRA's). Its drift is against the clusters' words of the warm-up, reported apart.
    warm = [s for s in snaps if s.model_version in service.warm_versions]
    warm_at = warm[0].documents_seen if warm else None
    figures["warm_after_documents"] = warm_at
    figures["warmup_transition_max_drift"] = (max((max(t.drift.values()) for t in warm[0].topics if t.drift),
                                                  default=None) if warm else None)
    version_seen = {s.model_version: s.documents_seen for s in snaps}
    with open(data / "lineage.jsonl", encoding="utf-8") as f:
        events = [json.loads(line) for line in f]
    for e in events:
        e["seen"] = version_seen.get(e["model_version"])
    after_warm = lambda e: warm_at is not None and e["seen"] is not None and e["seen"] > warm_at
    in_quiet = [e for e in events if after_warm(e) and e["seen"] <= quiet]
    figures["quiet_births_after_warmup"] = sum(e["kind"] == "born" for e in in_quiet)
    # what xtream_topic_emergences_total counts: births of topic ids that did not exist at warm-up
    warm_version = next((s.model_version for s in snaps if s.documents_seen == warm_at), None)
    known = {t.topic_id for s in snaps if s.model_version == warm_version for t in s.topics}
    figures["quiet_new_topics_after_warmup"] = sum(e["kind"] == "born" and e["topic_id"] not in known
                                                   for e in in_quiet)
    figures["quiet_prevalence_jumps_after_warmup"] = sum(e["kind"] == "prevalence_jump" for e in in_quiet)
    # What XtreamTopicDriftHigh sees (the gauge skips the warm-up transition and XTRA's settling
    # right after it), and every snapshot after the first warm one.
    figures["alert_drift_threshold"] = alert_drift_threshold()
    quiet_gauge = [g for seen_at, g in service.drift_gauge.items() if seen_at <= quiet and g is not None]
    figures["quiet_max_drift"] = max(quiet_gauge, default=None)
    quiet_drifts = [max((max(t.drift.values()) for t in s.topics if t.drift), default=0.0)
                    for s in snaps if warm_at is not None and warm_at < s.documents_seen <= quiet]
    figures["quiet_max_snapshot_drift"] = max(quiet_drifts, default=None)
    story_drifts = [max((max(t.drift.values()) for t in s.topics if t.drift), default=0.0)
                    for s in snaps if s.documents_seen > quiet]
    figures["story_max_drift"] = max(story_drifts, default=None)
    emerged = [e for e in events if e["seen"] is not None and e["seen"] > quiet
               and (e["kind"] == "prevalence_jump" or (e["kind"] == "born" and e["topic_id"] not in known))]
    if emerged:
        at = emerged[0]["seen"]
        figures["story_first_emergence"] = emerged[0]["kind"]
        figures["story_first_emergence_new_class_documents"] = int(is_new[quiet:at].sum())
        figures["story_first_emergence_snapshots_after_start"] = sum(quiet < s <= at for s in seen)
    else:
        figures["story_first_emergence"] = None
    churn = []
    for a, b in zip(snaps, snaps[1:]):
        if warm_at is None or a.documents_seen < warm_at:
            continue
        before = {t.slot: t.topic_id for t in a.topics}
        churn.append(float(np.mean([before.get(t.slot) == t.topic_id for t in b.topics])))
    figures["ids_unchanged_min"] = min(churn, default=None)
    figures["ids_unchanged_mean"] = float(np.mean(churn)) if churn else None
    quiet_churn = [c for c, s in zip(churn, [s for s in snaps[1:] if warm_at and s.documents_seen >= warm_at])
                   if s.documents_seen <= quiet]
    figures["quiet_ids_unchanged_min"] = min(quiet_churn, default=None)
    figures["training_debt_paid_steps"] = service.debt.paid_steps
    figures["training_steps"] = service.model.trainer.steps if service.model.trainer else 0
    return figures


def alert_drift_threshold() -> float:
    """The threshold of XtreamTopicDriftHigh in deploy/prometheus/alerts.yml."""
    import re

    import yaml

    rules = yaml.safe_load((Path(__file__).resolve().parents[1] / "deploy/prometheus/alerts.yml").read_text())
    expr = next(r["expr"] for g in rules["groups"] for r in g["rules"] if r.get("alert") == "XtreamTopicDriftHigh")
    return float(re.search(r">\s*([0-9.]+)", expr).group(1))


def bertopic_figures(texts, is_new: np.ndarray, vectors: np.ndarray, quiet: int, after: int) -> dict:
    """BERTopic online on the same stream (``bench/_emergence_bertopic.py``): lag, precision/recall
    of its best topic, topics first seen in the quiet phase after ``after`` documents."""
    try:
        import bertopic  # noqa: F401
    except ImportError:
        logger.warning("bertopic is not installed (pip install -e '.[bench]'): BERTopic comparison skipped")
        return {"bertopic": "skipped: not installed"}
    from bench._emergence_bertopic import run_bertopic

    topics, seconds = run_bertopic(texts, vectors)
    lag, _ = first_story_topic(topics, is_new, quiet)
    _, precision, recall = precision_recall(topics, is_new, min(1000, int(is_new.sum()) // 2))
    first_seen = {}
    for i, t in enumerate(topics.tolist()):
        first_seen.setdefault(t, i)
    return {"bertopic_lag_new_class_documents": lag, "bertopic_precision": precision, "bertopic_recall": recall,
            "bertopic_topics": len(first_seen),
            "bertopic_quiet_new_topics": sum(after < i <= quiet for t, i in first_seen.items() if t != -1),
            "bertopic_outlier_share": float((topics == -1).mean()), "bertopic_seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="8,000 quiet + 6,000 story documents")
    ap.add_argument("--quiet-docs", type=int, default=None)
    ap.add_argument("--story-docs", type=int, default=None)
    ap.add_argument("--every-docs", type=int, default=1000)
    ap.add_argument("--data", type=Path, default=DATA, help="a dataset in the shared data layout (default EC News)")
    ap.add_argument("--new-class", type=int, default=SPORTS,
                    help="the label held back in the quiet phase (default 4, EC News' sports)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--keep", type=Path, default=None, help="run in this directory and keep its outputs")
    ap.add_argument("--no-bertopic", action="store_true", help="skip the BERTopic online comparison")
    ap.add_argument("--mode", choices=("file", "kafka"), default="file",
                    help="kafka: through a local broker, with a live Prometheus on the shipped alert rules")
    ap.add_argument("--rate", type=float, default=100.0, help="kafka mode: documents sent per second")
    ap.add_argument("--linger", type=float, default=420.0,
                    help="kafka mode: seconds to wait for the topic alerts after the last document is sent")
    args = ap.parse_args()
    setup_logging()
    pin_threads(args.threads)
    quiet = args.quiet_docs or (8000 if args.quick else 24000)
    story = args.story_docs or (6000 if args.quick else 12000)
    texts, langs, labels, vectors = build_stream(quiet, story, args.data, args.new_class)
    is_new = labels == args.new_class
    dataset = args.data.resolve().name
    suffix = "" if dataset == DATA.resolve().name else f"_{dataset}"
    if args.mode == "kafka":
        kafka_main(args, texts, langs, labels, vectors, quiet, suffix)
        return
    with tempfile.TemporaryDirectory(prefix="xtream-emergence-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        service, settings, seconds = run_service(work, texts, langs, labels, CachedEmbedder(texts, vectors, args.data),
                                                 args.every_docs, quiet)
        try:
            figures = measure(service, settings, is_new, quiet)
        finally:
            service.close()
    figures |= {"dataset": dataset, "new_class": args.new_class, "seconds": seconds}
    figures["embedder_misses"] = service.embedder.misses
    if not args.no_bertopic:
        figures.update(bertopic_figures(texts, is_new, vectors, quiet, figures["warm_after_documents"] or 0))
    targets = {"topic_lag_new_class_documents": ("<=", 300), "topic_precision": (">=", 0.7),
               "topic_recall": (">=", 0.5), "quiet_births_after_warmup": ("<=", 0),
               "quiet_max_drift": ("<", figures["alert_drift_threshold"]), "ids_unchanged_min": (">=", 0.95),
               "snapshots_per_every_docs": (">=", 1.0)}
    rows = []
    for key, value in figures.items():
        target = targets.get(key)
        ok = None
        if target is not None and value is not None:
            ok = value <= target[1] if target[0] == "<=" else value >= target[1] if target[0] == ">=" else value < target[1]
        rows.append([key, value if not isinstance(value, bool) else str(value),
                     "" if target is None else f"{target[0]} {target[1]}", "" if ok is None else ("yes" if ok else "NO")])
    print_table(f"bench.emergence ({dataset}, class {args.new_class} held back then introduced; file mode)",
                ["figure", "value", "target", "met"], rows)
    write_json(RESULTS / f"emergence{suffix}.json", figures)
    emit(figures)


def kafka_main(args, texts, langs, labels, vectors, quiet: int, suffix: str) -> None:
    from bench._emergence_kafka import run_kafka

    for noisy in ("httpx", "kafka"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="xtream-emergence-kafka-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        figures = run_kafka(work, texts, langs, labels, vectors, quiet, args.every_docs, args.rate, args.linger,
                            CachedEmbedder(texts, vectors, args.data))
    figures.update({"documents": len(labels), "quiet_documents": quiet, "every_docs": args.every_docs})
    rows = [[k, json.dumps(v) if isinstance(v, (list, dict)) else v] for k, v in figures.items()]
    print_table("bench.emergence (Kafka mode, live Prometheus on deploy/prometheus/alerts.yml)",
                ["figure", "value"], rows)
    write_json(RESULTS / f"emergence{suffix}_kafka{'_quick' if args.quick else ''}.json", figures)
    emit(figures)


if __name__ == "__main__":
    main()
