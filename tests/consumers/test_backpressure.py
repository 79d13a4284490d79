"""Batch sizing keeps each loop turn within its share of max.poll.interval.ms."""

import pytest

from xtream.consumers.backpressure import AdaptiveBatchSize, DutyCycle


def test_starts_cautiously_then_grows_at_most_twofold_per_turn_up_to_the_ceiling():
    size = AdaptiveBatchSize(max_records=256, budget_seconds=10.0, start=32)
    seen = [size.next()]
    for _ in range(5):
        size.observe(size.next(), seconds=0.001 * size.next())   # 1 ms per record: everything fits
        seen.append(size.next())
    assert seen == [32, 64, 128, 256, 256, 256]


def test_a_slowdown_shrinks_the_next_batch_at_once_to_what_fits_the_budget():
    size = AdaptiveBatchSize(max_records=256, budget_seconds=1.5, start=256)
    size.observe(256, seconds=0.256)          # 1 ms per record
    size.observe(256, seconds=256 * 0.2)      # a throttled stage: 200 ms per record
    assert size.next() == 7                   # 1.5 s / 0.2 s
    assert size.next() * 0.2 <= 1.5


def test_a_speed_up_is_believed_gradually():
    size = AdaptiveBatchSize(max_records=1000, budget_seconds=1.0, start=10, smoothing=0.5)
    size.observe(10, seconds=1.0)             # 100 ms per record -> 10
    size.observe(10, seconds=0.1)             # 10 ms per record once: average 55 ms -> 18
    assert size.next() == 18


def test_never_below_one_record_and_empty_turns_change_nothing():
    size = AdaptiveBatchSize(max_records=50, budget_seconds=0.1, start=8)
    size.observe(0, seconds=30.0)
    assert size.next() == 8
    size.observe(8, seconds=80.0)
    assert size.next() == 1


def test_budget_is_a_share_of_the_poll_interval():
    assert AdaptiveBatchSize.for_poll_interval(256, 300_000).budget == pytest.approx(75.0)
    with pytest.raises(ValueError):
        AdaptiveBatchSize(0, 1.0)


def test_a_duty_cycle_spaces_runs_so_they_take_their_share_of_wall_time():
    duty = DutyCycle(share=0.25)
    assert duty.ready(0.0)
    duty.ran(started=10.0, ended=11.0)          # a 1 s slice: 3 s of rest for a 25% share
    assert not duty.ready(13.9) and duty.wait_seconds(12.0) == pytest.approx(2.0)
    assert duty.ready(14.0)


def test_a_full_share_never_waits():
    duty = DutyCycle(share=1.0)
    duty.ran(0.0, 5.0)
    assert duty.ready(5.0)


def test_the_training_thread_runs_niced_and_as_a_batch_job_so_ingestion_gets_the_cpu_first(tmp_path):
    import os
    import threading

    from xtream.consumers.config import Settings
    from xtream.consumers.wiring import DEMO_STREAM, build_service

    s = Settings(data_dir=tmp_path / "data", input_file=DEMO_STREAM)
    s = s.model_copy(update={"model": s.model.model_copy(update=dict(
        num_topics=6, warmup_docs=120, warmup_steps=2, batch_size=32, vocab_min_df=1, train_every_docs=60,
        train_steps=1, train_in_background=True, train_nice=5))})
    service = build_service(s)
    seen, policies = [], []
    train = service.model.train

    def recording(*args, **kwargs):
        tid = threading.get_native_id()
        seen.append((tid, os.getpriority(os.PRIO_PROCESS, tid)))
        policies.append((tid, os.sched_getscheduler(tid)))
        return train(*args, **kwargs)

    service.model.train = recording
    base = os.getpriority(os.PRIO_PROCESS, 0)
    service.run()
    service.close()
    loop = threading.get_native_id()
    on_trainer = [nice for tid, nice in seen if tid != loop]
    assert on_trainer, "no slice ran on the training thread"
    assert on_trainer == [min(base + 5, 19)] * len(on_trainer)
    # the loop's own thread (which finishes an incomplete warm-up at the end of a finite input) is untouched
    assert all(nice == base for tid, nice in seen if tid == loop)
    assert os.getpriority(os.PRIO_PROCESS, loop) == base
    # and as a batch job (SCHED_BATCH), which the loop's thread is not
    assert {policy for tid, policy in policies if tid != loop} == {os.SCHED_BATCH}
    assert os.sched_getscheduler(loop) == os.SCHED_OTHER


@pytest.mark.parametrize("batch_scheduling", [True, False])
def test_batch_scheduling_is_the_training_threads_own_and_can_be_turned_off(batch_scheduling):
    import os
    import threading

    from xtream.consumers.training_runner import yield_to_ingestion

    seen = []

    def trainer():
        yield_to_ingestion(0, batch_scheduling)
        seen.append(os.sched_getscheduler(threading.get_native_id()))

    thread = threading.Thread(target=trainer)
    thread.start()
    thread.join()
    assert seen == [os.SCHED_BATCH if batch_scheduling else os.SCHED_OTHER]
    assert os.sched_getscheduler(threading.get_native_id()) == os.SCHED_OTHER   # this thread is untouched
