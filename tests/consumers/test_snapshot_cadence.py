"""Snapshots keep their cadence whatever training does, the last one covers every document learned,
and the training debt stays bounded (the warm-up ends within a bounded number of documents) even
when the background trainer gets no CPU at all."""

import json
import random
import threading
from types import SimpleNamespace

import pytest

from xtream.consumers.config import Settings
from xtream.consumers.training_debt import TrainingDebt
from xtream.consumers.training_runner import TrainingRunner
from xtream.consumers.wiring import build_service

THEMES = {
    "football": "goal match striker league coach penalty stadium season referee",
    "markets": "shares index investors bank profit earnings stock bond trading",
    "science": "telescope galaxy planet orbit research laboratory physics cells",
    "cooking": "recipe oven flour butter garlic sauce kitchen dinner roast",
}


def write_stream(path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    themes = list(THEMES.items())
    with open(path, "w") as f:
        for i in range(n):
            name, words = themes[i % len(themes)]
            text = " ".join(rng.choices(words.split(), k=12))
            f.write(json.dumps({"id": f"d{i}", "text": text, "lang": "en", "metadata": {"theme": name}}) + "\n")


def settings(tmp_path, n: int, **model) -> Settings:
    path = tmp_path / "stream.jsonl"
    write_stream(path, n)
    s = Settings(data_dir=tmp_path / "data", input_file=path)
    base = dict(embedder="hashing:64", embedder_process=False, num_topics=6, warmup_docs=200, warmup_steps=30,
                batch_size=32, vocab_min_df=1, train_every_docs=100, train_steps=2)
    base.update(model)
    return s.model_copy(update={
        "model": s.model.model_copy(update=base),
        "batch": s.batch.model_copy(update=dict(max_records=50, prefetch_batches=0)),
        "snapshots": s.snapshots.model_copy(update=dict(every_docs=100, every_seconds=1e9)),
        "http": s.http.model_copy(update=dict(enabled=False))})


def history(service) -> list:
    return [service.store.get(v) for v in service.store.versions()]


def starve_the_trainer(service) -> threading.Event:
    """The background trainer never gets to run (a host whose CPU ingestion takes entirely)."""
    release = threading.Event()
    worker = service._train_worker

    def blocked():
        while not release.is_set() and not service._stop_training.wait(0.05):
            pass
        worker()

    service._train_worker = blocked
    return release


def test_a_snapshot_per_every_docs_documents_during_warm_up_and_while_training_lags(tmp_path):
    n = 1000
    service = build_service(settings(tmp_path, n))
    release = starve_the_trainer(service)
    try:
        service.run()
        snaps = history(service)
    finally:
        release.set()
        service.close()
    seen = [s.documents_seen for s in snaps]
    assert len(snaps) >= n // 100, f"{len(snaps)} snapshots for {n} documents: {seen}"
    gaps = [b - a for a, b in zip([0] + seen, seen)]
    assert max(gaps) <= 100 + 50, f"a gap of {max(gaps)} documents between snapshots: {seen}"
    # the first ones come before XTRA (the clusters' words), and every topic has words
    assert snaps[0].model_version == 0 and snaps[0].documents_seen <= 150
    assert all(t.words["en"].words for t in snaps[0].topics)


def test_the_last_snapshot_covers_every_document_learned(tmp_path):
    n = 1030   # not a multiple of any cadence: the tail after the last training slice is covered too
    service = build_service(settings(tmp_path, n, train_in_background=False, train_every_docs=300))
    try:
        service.run()
        last = history(service)[-1]
    finally:
        service.close()
    assert service.model.n_docs == n
    assert last.documents_seen == n


def test_the_training_debt_stays_bounded_and_the_warm_up_ends_within_its_documents(tmp_path):
    n = 1200
    s = settings(tmp_path, n, max_training_debt_steps=6, warmup_within_docs=300)
    service = build_service(s)
    release = starve_the_trainer(service)
    debts, warm_at = [], []
    maybe_train = service.maybe_train

    def recording():
        maybe_train()
        debts.append(service.debt.steps(service.model))
        if service.model.is_warm and not warm_at:
            warm_at.append(service.model.n_docs)

    service.maybe_train = recording
    try:
        service.run()
    finally:
        release.set()
        service.close()
    per_batch = 50 * (2 / 100 + 30 / 300)   # steps one batch of 50 documents adds at most
    assert max(debts) <= 6 + per_batch
    assert service.debt.paid_steps >= 30, "the loop paid the debt the starved trainer could not"
    assert warm_at and warm_at[0] <= 200 + 300 + 50, f"warm after {warm_at} documents"
    sample = service.metrics.registry.get_sample_value("xtream_training_debt_steps")
    assert sample is not None and sample <= 6 + per_batch


def test_each_snapshot_of_xtra_shows_a_model_trained_for_every_document_it_learned(tmp_path):
    """The trainer starved and the debt's bound out of reach: the loop still pays what is owed
    before each snapshot of XTRA's topics, so what it shows does not depend on the trainer's
    scheduling. Snapshots during the warm-up show the clusters' topics and do not wait for it."""
    s = settings(tmp_path, 1000, max_training_debt_steps=1e6, warmup_within_docs=300)
    service = build_service(s)
    release = starve_the_trainer(service)
    owed_at_snapshot, during_warm_up = [], []
    build = service.publisher._build

    def recording(offsets, stream_time):
        if service.model.is_warm:
            owed_at_snapshot.append(service.debt.steps(service.model))
        elif service.model.is_initialised:
            during_warm_up.append(service.debt.steps(service.model))
        return build(offsets, stream_time)

    service.publisher._build = recording
    try:
        service.run()
    finally:
        release.set()
        service.close()
    assert len(owed_at_snapshot) >= 5
    assert max(owed_at_snapshot) < 1, owed_at_snapshot
    assert during_warm_up and max(during_warm_up) >= 1, "the warm-up's snapshots did not pay its steps"
    assert service.debt.paid_steps >= 30, "the loop paid the warm-up when it was overdue"


def test_training_debt_accounts_warm_up_and_steady_steps():
    class Model:
        is_initialised, is_warm, n_docs, warmup_steps_left, training_steps = True, False, 1000, 40, 0

    debt = TrainingDebt(steps_per_doc=0.1, warmup_within_docs=200, max_steps=15)
    model = Model()
    assert debt.steps(model) == 0.0 and not debt.overdue(model)
    model.n_docs += 100                     # half the warm-up; no steady steps inside its window
    assert debt.steps(model) == pytest.approx(20.0) and debt.overdue(model)
    model.training_steps = 25
    assert debt.steps(model) == pytest.approx(-5.0) and not debt.overdue(model)
    model.n_docs += 100                     # warm-up fully owed, and overdue while not warm
    assert debt.steps(model) == pytest.approx(15.0) and debt.overdue(model)
    model.n_docs += 100                     # the steady steps count after the window
    assert debt.steps(model) == pytest.approx(25.0)
    warm = TrainingDebt(steps_per_doc=0.1, warmup_within_docs=200, max_steps=15)
    model.warmup_steps_left, model.is_warm = 0, True   # an account opened on a warm model
    assert warm.steps(model) == 0.0
    model.n_docs += 100
    assert warm.steps(model) == pytest.approx(10.0)   # steady steps from the first document
    with pytest.raises(ValueError):
        TrainingDebt(0.1, 0, 1)


def test_the_drift_gauges_skip_the_warm_up_transition_and_the_settling_snapshot(tmp_path):
    """The topic alerts watch the drift gauges: the snapshots before XTRA is warm, its first one
    (clusters' words -> XTRA's) and the next (XTRA settling after its warm-up steps) leave them alone."""
    from xtream.consumers.publisher import SETTLING_SNAPSHOTS

    service = build_service(settings(tmp_path, 1200, train_in_background=False))
    observed = []
    observe = service.publisher._observe

    def spy(snap, drift=True):
        observed.append((service.model.is_warm, drift))
        observe(snap, drift)

    service.publisher._observe = spy
    try:
        service.run()
    finally:
        service.close()
    warm = [drift for is_warm, drift in observed if is_warm]
    assert not any(drift for is_warm, drift in observed if not is_warm)
    assert len(warm) > SETTLING_SNAPSHOTS + 1, observed
    assert warm == [False] * SETTLING_SNAPSHOTS + [True] * (len(warm) - SETTLING_SNAPSHOTS)


def test_the_prevalence_detectors_resume_from_the_checkpoint(tmp_path):
    service = build_service(settings(tmp_path, 1200, train_in_background=False))
    try:
        service.run()
        before = service.publisher.prevalence_shift.state_dict()
    finally:
        service.close()
    assert before["windows"] > 0
    resumed = build_service(settings(tmp_path, 1200, train_in_background=False))
    try:
        after = resumed.publisher.prevalence_shift.state_dict()
    finally:
        resumed.close()
    assert after["windows"] == before["windows"]
    assert [list(h) for h in after["history"]] == [list(h) for h in before["history"]]


class OwingModel:
    """An initialised, warm model whose gradient steps are counted, not computed."""

    is_initialised = is_warm = True
    warmup_steps_left, version, last_losses = 0, 1, {}

    def __init__(self) -> None:
        self.n_docs = self.training_steps = 0

    def train(self, steps, stop=None):
        done = 0
        while done < steps and not (stop is not None and stop()):
            self.training_steps += 1
            done += 1
        return SimpleNamespace(steps=done)

    def sizes(self):
        return {"buffer": {}, "vocabulary": {}}


def test_the_loop_queues_behind_a_running_slice_only_when_the_debt_is_far_overdue(tmp_path):
    """While the background trainer is inside a slice, it is paying already: the loop, finding the
    debt past its bound but not past twice it, goes on learning; past twice the bound it waits for
    the slice to end and pays the rest."""
    s = settings(tmp_path, 10, max_training_debt_steps=10, train_every_docs=100, train_steps=10)
    model = OwingModel()
    runner = TrainingRunner(s, model, build_service(s).metrics, stopping=lambda: False, on_slice=lambda n: None)
    assert runner.debt.steps(model) == 0   # the account opens here

    def maybe_train_in_a_thread() -> threading.Thread:
        call = threading.Thread(target=runner.maybe_train, daemon=True)
        call.start()
        return call

    with runner._lock:   # the background trainer's slice
        model.n_docs = 150   # 15 steps owed: past the bound of 10, not past 20
        call = maybe_train_in_a_thread()
        call.join(2.0)
        assert not call.is_alive(), "the loop waited behind the running slice"
        assert model.training_steps == 0
        model.n_docs = 250   # 25 steps owed: past twice the bound
        call = maybe_train_in_a_thread()
        call.join(0.3)
        assert call.is_alive(), "far overdue, the loop waits for the slice to end"
    call.join(2.0)
    assert not call.is_alive() and model.training_steps == 25
    assert runner.debt.steps(model) <= 0


def test_a_snapshot_reads_each_languages_topic_words_once_for_its_ids_and_once_for_its_topics(tmp_path):
    """The topic signature that keeps ids stable and the snapshot's words come from one read of each
    language's topic-word distributions each, not one read per topic."""
    service = build_service(settings(tmp_path, 600))
    reads: dict[str, int] = {}
    per_snapshot = []
    distribution, publish = service.model.topic_word_distribution, service.publisher.maybe_snapshot

    def counting(lang):
        reads[lang] = reads.get(lang, 0) + 1
        return distribution(lang)

    def observed(*args, **kwargs):
        reads.clear()
        snap = publish(*args, **kwargs)
        if snap is not None:
            per_snapshot.append((snap.languages, dict(reads)))
        return snap

    service.model.topic_word_distribution = counting
    service.publisher.maybe_snapshot = observed
    try:
        service.run()
    finally:
        service.close()
    assert len(per_snapshot) >= 3
    for languages, counts in per_snapshot:
        assert counts == dict.fromkeys(languages, 2), counts
