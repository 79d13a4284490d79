"""The next batch is embedded while the loop learns from the current one; offsets and checkpoints
still only ever cover batches the model has learned."""

from __future__ import annotations

import json
import threading
import time

import pytest

from xtream.consumers.config import Settings
from xtream.consumers.prefetch import BatchPrefetcher
from xtream.consumers.wiring import DEMO_STREAM, build_service
from xtream.stream.records import Record


def _records(n: int, start: int = 0) -> list[Record]:
    return [Record("in", 0, start + i, b"{}", None, (), None) for i in range(n)]


@pytest.mark.parametrize("workers", [1, 2])
def test_batches_come_back_in_the_order_they_were_polled_prepared_on_another_thread(workers):
    threads = []

    def prepare(records):
        threads.append(threading.current_thread().name)
        time.sleep(0.02 if records[0].offset == 0 else 0.0)   # the first finishes last
        return [r.offset for r in records]

    ahead = BatchPrefetcher(prepare, workers=workers)
    for start in (0, 3, 6):
        ahead.submit(_records(3, start))
    assert len(ahead) == 3
    taken = [ahead.take()[1] for _ in range(3)]
    ahead.close()
    assert taken == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert len(ahead) == 0
    assert set(threads) != {threading.current_thread().name}


def test_an_unexpected_failure_of_the_preparation_reaches_the_loop():
    def prepare(records):
        raise RuntimeError("embedder bug")

    ahead = BatchPrefetcher(prepare)
    ahead.submit(_records(2))
    with pytest.raises(RuntimeError, match="embedder bug"):
        ahead.take()
    ahead.close()


def _service(tmp_path, prefetch: bool, max_records: int = 40, depth: int = 2):
    s = Settings(data_dir=tmp_path / "data", input_file=DEMO_STREAM)
    s = s.model_copy(update={
        "model": s.model.model_copy(update=dict(num_topics=6, warmup_docs=120, warmup_steps=2, batch_size=32,
                                                vocab_min_df=1, train_every_docs=1000, train_steps=1,
                                                train_in_background=False)),
        "batch": s.batch.model_copy(update=dict(max_records=max_records,
                                                prefetch_batches=depth if prefetch else 0)),
        "checkpoint": s.checkpoint.model_copy(update=dict(every_docs=50)),
    })
    return build_service(s)


class _Timed:
    """Wraps a callable and records the (start, end) of each call."""

    def __init__(self, inner, delay: float = 0.0):
        self.inner, self.delay, self.spans = inner, delay, []

    def __call__(self, *args, **kwargs):
        started = time.monotonic()
        time.sleep(self.delay)
        try:
            return self.inner(*args, **kwargs)
        finally:
            self.spans.append((started, time.monotonic()))


def test_the_loop_learns_one_batch_while_the_embedder_works_on_the_next(tmp_path):
    service = _service(tmp_path, prefetch=True)
    embedder = service.intake.embedder
    encode = _Timed(embedder.encode, delay=0.05)
    service.intake.embedder = type("Slow", (), {"encode": encode, "name": embedder.name, "dim": embedder.dim})()
    learn = _Timed(service.model.learn_many, delay=0.05)
    service.model.learn_many = learn
    service.run()
    service.close()
    n_docs = sum(1 for _ in DEMO_STREAM.open(encoding="utf-8"))
    assert service.model.n_docs == n_docs
    overlapping = [(a, b) for a in learn.spans for b in encode.spans if a[0] < b[1] and b[0] < a[1]]
    assert len(overlapping) >= len(learn.spans) // 2, "learning and embedding ran side by side"


def test_without_prefetch_learning_and_embedding_take_turns(tmp_path):
    service = _service(tmp_path, prefetch=False)
    embedder = service.intake.embedder
    encode = _Timed(embedder.encode)
    service.intake.embedder = type("Timed", (), {"encode": encode, "name": embedder.name, "dim": embedder.dim})()
    learn = _Timed(service.model.learn_many)
    service.model.learn_many = learn
    service.run()
    service.close()
    assert not [(a, b) for a in learn.spans for b in encode.spans if a[0] < b[1] and b[0] < a[1]]


def test_a_checkpoint_never_covers_a_batch_still_being_embedded(tmp_path):
    """Every checkpoint's offsets equal the documents the model had learned when it was written
    (the demo stream has no malformed lines), with a batch in the prefetch queue each time."""
    service = _service(tmp_path, prefetch=True, max_records=20)
    saved = []
    save = service.checkpoints.save

    def recording_save(state, offsets, compat, **kw):
        saved.append((sum(offsets.values()), service.model.n_docs, service._prefetching()))
        return save(state, offsets, compat, **kw)

    service.checkpoints.save = recording_save
    service.run()
    service.close()
    assert len(saved) >= 5
    assert all(covered == learned for covered, learned, _ in saved)
    assert any(pending for *_, pending in saved[:-1]), "checkpoints were written with a batch in flight"
    assert saved[-1][2] == 0, "the last checkpoint comes after the queue is drained"
    lines = [json.loads(line) for line in DEMO_STREAM.read_text(encoding="utf-8").splitlines()]
    assert saved[-1][0] == len(lines)
