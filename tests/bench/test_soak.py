"""The soak's plan and verdict helpers (bench.soak): where the kills and hostile records go, growth."""

from __future__ import annotations

import pytest

from bench.soak import growth, hostile_before, is_hostile, kill_points, total_records, verdict


@pytest.mark.parametrize("every", [2, 3, 7, 100])
@pytest.mark.parametrize("n", [0, 1, 49, 50, 51, 99, 100, 101, 1234])
def test_hostile_before_counts_is_hostile(every, n):
    assert hostile_before(n, every) == sum(is_hostile(m, every) for m in range(n))


@pytest.mark.parametrize("docs, every", [(1, 100), (50, 100), (51, 100), (30_000, 100), (1000, 2), (10, 0)])
def test_total_records_holds_exactly_the_clean_documents_asked_for(docs, every):
    n = total_records(docs, every)
    assert n - hostile_before(n, every) == docs
    assert not is_hostile(n - 1, every)   # the stream ends on a clean document, no trailing hostile one


def test_one_record_in_every_is_hostile_and_none_first():
    assert [n for n in range(300) if is_hostile(n, 100)] == [50, 150, 250]
    assert not any(is_hostile(n, 0) for n in range(300))


def test_kills_are_spread_inside_the_stream():
    assert kill_points(1_000_000, 3) == [300_000, 500_000, 700_000]
    assert kill_points(30_000, 1) == [15_000]
    assert kill_points(100, 0) == []
    points = kill_points(1_000_000, 5)
    assert points == sorted(points) and points[0] > 200_000 and points[-1] < 1_000_000


def test_growth_is_measured_from_the_first_sample_past_the_base():
    samples = [{"records": r, "rss": v} for r, v in [(100, 50.0), (200, 100.0), (300, 130.0), (400, 105.0)]]
    g = growth(samples, "rss", 150)
    assert g["base"] == 100.0 and g["end"] == 105.0 and g["peak"] == 130.0
    assert g["end_ratio"] == pytest.approx(0.05) and g["peak_ratio"] == pytest.approx(0.30)


def _sample(records, rss, state=10, ckpt=4, history=100, snapshots=10):
    return {"records": records, "rss_service": rss, "rss_embedder": 50.0, "rss_total": rss + 50.0,
            "state_bytes": state, "largest_checkpoint_bytes": ckpt, "history_bytes": history,
            "snapshots_stored": snapshots}


def _result(samples, **check):
    return {"samples": samples, "base_records": 200, "checkpoint_keep": 3, "api_5xx": 0, "unexpected_exits": [],
            "check": {"clean_lost": 0, "hostile_not_dead_lettered_as_expected": 0} | check}


def test_verdict_passes_flat_memory_and_bounded_disk():
    checks = verdict(_result([_sample(100, 90.0), _sample(200, 100.0), _sample(300, 109.0, history=200, snapshots=20)]))
    assert all(checks.values()) and len(checks) >= 8


@pytest.mark.parametrize("samples, failing", [
    ([_sample(200, 100.0), _sample(300, 115.0), _sample(400, 100.0)], "rss_service growth <= 10%"),   # a peak
    ([_sample(200, 100.0), _sample(300, 100.0, state=21)], "state bytes <= (keep + 2) checkpoints"),
    ([_sample(200, 100.0), _sample(300, 100.0, state=15, ckpt=5)], "checkpoint size growth <= 10%"),
    ([_sample(200, 100.0), _sample(300, 100.0, history=300, snapshots=20)],
     "history bytes per snapshot growth <= 10%"),
])
def test_verdict_fails_growth(samples, failing):
    checks = verdict(_result(samples))
    assert checks[failing] is False


def test_verdict_fails_a_lost_document_or_a_5xx():
    samples = [_sample(200, 100.0), _sample(300, 100.0)]
    assert verdict(_result(samples, clean_lost=1))["no clean record lost"] is False
    assert verdict(_result(samples) | {"api_5xx": 2})["no 5xx from the API"] is False
