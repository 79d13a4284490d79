"""Failures injected at the service's internal points (a sink that refuses, a flush that times out, a
commit that fails, learning that fails half-way, offsets that go backwards): no output is lost, no
offset is committed past an output that was not produced, and no document is counted twice."""

from __future__ import annotations

import json

import pytest

from xtream.consumers.config import Settings
from xtream.consumers.wiring import DEMO_STREAM, build_service
from xtream.stream.errors import SinkError, SourceUnavailable
from xtream.stream.records import Record
from xtream.stream.sinks import MemorySink
from xtream.stream.sources import Source


def _docs() -> list[dict]:
    return [json.loads(line) for line in DEMO_STREAM.read_text(encoding="utf-8").splitlines()]


def _settings(tmp_path, stream, **model) -> Settings:
    s = Settings(data_dir=tmp_path / "data", input_file=stream)
    return s.model_copy(update={
        "model": s.model.model_copy(update=dict(num_topics=6, warmup_docs=120, warmup_steps=3, batch_size=32,
                                                vocab_min_df=1, train_every_docs=60, train_steps=1,
                                                train_in_background=False) | model),
        "batch": s.batch.model_copy(update=dict(max_records=40, prefetch_batches=0)),
        "checkpoint": s.checkpoint.model_copy(update=dict(every_docs=40, every_seconds=0.0)),
    })


def _write(tmp_path, docs) -> object:
    stream = tmp_path / "in.jsonl"
    stream.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    return stream


class FlakySink(MemorySink):
    """Refuses ``add`` while ``failing`` says so (a broker or disk gone for a while)."""

    def __init__(self, failing) -> None:
        super().__init__()
        self.failing = failing
        self.calls = 0

    def add(self, value, key=None, headers=None) -> None:
        self.calls += 1
        if self.failing(self.calls):
            raise SinkError("the output is unavailable")
        super().add(value, key, headers)


def _assigned_ids(sink: MemorySink) -> list[str]:
    return [json.loads(value)["document_id"] for _, value, _ in sink.messages]


def _check_commits_cover_outputs(service, docs, sink):
    """Wrap the source's commit: every document below a committed offset already has its assignment."""
    commit = service.source.commit
    commits = []

    def checked(offsets):
        (upto,) = offsets.values()
        missing = {d["id"] for d in docs[:upto]} - set(_assigned_ids(sink))
        assert not missing, f"offset {upto} committed before the assignments of {sorted(missing)[:5]}"
        commits.append(upto)
        commit(offsets)

    service.source.commit = checked
    return commits


def test_a_sink_that_refuses_for_a_while_loses_no_assignment(tmp_path):
    docs = _docs()
    service = build_service(_settings(tmp_path, _write(tmp_path, docs)))
    sink = FlakySink(lambda n: 100 <= n < 110)   # 10 refusals (backing off to 5 s), mid-stream
    service.assignments = sink
    commits = _check_commits_cover_outputs(service, docs, sink)
    service.run()
    service.close()

    assert sorted(set(_assigned_ids(sink))) == sorted(d["id"] for d in docs), "every document assigned"
    assert service.model.n_docs == len(docs), "each document learned once"
    assert commits and commits[-1] == len(docs)
    assert service.metrics.output_errors.labels("assignments")._value.get() >= 1


def test_a_flush_that_times_out_postpones_the_commit(tmp_path):
    docs = _docs()
    service = build_service(_settings(tmp_path, _write(tmp_path, docs)))
    sink = MemorySink()
    flushes = {"n": 0}

    def flush():
        flushes["n"] += 1
        if flushes["n"] <= 3:
            raise SinkError("flush timed out")

    sink.flush = flush
    service.assignments = sink
    commits = _check_commits_cover_outputs(service, docs, sink)
    service.run()
    service.close()
    assert flushes["n"] > 3
    assert commits[-1] == len(docs)
    assert sorted(_assigned_ids(sink)) == sorted(d["id"] for d in docs)


def test_a_failing_commit_is_retried_at_the_next_checkpoint(tmp_path):
    docs = _docs()
    service = build_service(_settings(tmp_path, _write(tmp_path, docs)))
    commit, calls = service.source.commit, []

    def failing(offsets):
        calls.append(dict(offsets))
        if len(calls) <= 2:
            raise SourceUnavailable("commit failed: coordinator gone")
        commit(offsets)

    service.source.commit = failing
    service.run()
    service.close()
    assert len(calls) > 2
    assert service.source.committed == {"file:in.jsonl:0": len(docs)}


def test_learning_that_fails_half_way_never_counts_a_document_twice(tmp_path, monkeypatch):
    """XTRA's initialisation fails once, after k-means, vocabularies and buffer took the batch."""
    import xtream.model.network_surgery

    docs = _docs()
    build, failures = xtream.model.network_surgery.build_xtra, []

    def build_once_failing(*args, **kwargs):
        if not failures:
            failures.append(1)
            raise RuntimeError("initialisation failed")
        return build(*args, **kwargs)

    monkeypatch.setattr(xtream.model.network_surgery, "build_xtra", build_once_failing)
    service = build_service(_settings(tmp_path, _write(tmp_path, docs)))
    sink = MemorySink()
    service.assignments = sink
    service.run()
    service.close()
    assert failures, "the failure was injected"
    assert service.model.n_docs == len(docs)
    assert sorted(_assigned_ids(sink)) == sorted(d["id"] for d in docs), "one assignment per document"
    assert not (tmp_path / "data" / "dead_letters.jsonl").read_text(), "nothing dead-lettered"
    assert service.model.is_warm, "initialisation ran at a later batch"


class ListSource(Source):
    """Hands out prepared records in order, then is exhausted."""

    def __init__(self, records: list[Record]) -> None:
        self.records, self.committed = list(records), {}

    def poll_batch(self, max_records: int, timeout_ms: int) -> list[Record]:
        out, self.records = self.records[:max_records], self.records[max_records:]
        return out

    def commit(self, offsets):
        self.committed.update(offsets)

    def exhausted(self) -> bool:
        return not self.records


@pytest.mark.parametrize("policy, learned", [("relearn", 200), ("skip", 150)])
def test_offsets_that_go_backwards_are_counted_and_follow_the_policy(tmp_path, policy, learned):
    docs = (_docs() * 2)[:150]
    values = [json.dumps({**d, "id": f"d{i}"}).encode() for i, d in enumerate(docs)]
    # offsets 0..99, then the topic is recreated / reset: offsets 50..149 again
    records = ([Record("in", 0, i, values[i]) for i in range(100)]
               + [Record("in", 0, i, values[i]) for i in range(50, 150)])
    s = _settings(tmp_path, None)
    s = s.model_copy(update={"input_file": None, "kafka": s.kafka.model_copy(update={"on_offset_regression": policy})})
    service = build_service(s)
    service.source = ListSource(records)
    service.run()
    service.close()
    assert service.metrics.offset_regressions._value.get() == 1
    assert service.model.n_docs == learned
    assert service.offsets == {"in:0": 150}
