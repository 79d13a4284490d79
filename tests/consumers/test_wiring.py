"""What ``build_service`` assembles from settings: by default the embedder runs in its own process,
and closing the service stops that process."""

from __future__ import annotations

import multiprocessing
import time

import pytest

from xtream.consumers.config import Settings
from xtream.consumers.wiring import DEMO_STREAM, build_service
from xtream.model.embedding_process import ProcessEmbedder


def _settings(tmp_path, **model) -> Settings:
    s = Settings(data_dir=tmp_path / "data", input_file=DEMO_STREAM)
    return s.model_copy(update={"model": s.model.model_copy(update=dict(embedder="hashing:64") | model)})


def _gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/status") as f:
                if any(line.startswith("State:") and "Z" in line for line in f):
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def test_by_default_the_embedder_runs_in_a_child_process_that_closes_with_the_service(tmp_path):
    service = build_service(_settings(tmp_path))
    assert isinstance(service.embedder, ProcessEmbedder) and service.intake.embedder is service.embedder
    pid = service.embedder.pid
    service.run()
    assert service.model.n_docs == sum(1 for _ in DEMO_STREAM.open(encoding="utf-8"))
    service.close()
    assert _gone(pid)


def test_the_embedder_can_stay_in_process(tmp_path):
    service = build_service(_settings(tmp_path, embedder_process=False))
    assert not isinstance(service.embedder, ProcessEmbedder)
    service.close()


def test_a_service_that_fails_to_build_leaves_no_embedder_process(tmp_path):
    with pytest.raises(ValueError, match="replay reads Kafka"):
        build_service(_settings(tmp_path), replay=("earliest", None))
    assert not [p for p in multiprocessing.active_children() if p.name == "xtream-embedder"]
