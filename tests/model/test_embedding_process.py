"""An embedder in a child process gives the same vectors as in-process, survives its child being
killed, fails to load with a clear error, and leaves no process behind when its owner is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from xtream.model import embedding_process
from xtream.model.embedding import HashingEmbedder, load_embedder
from xtream.model.embedding_process import EmbedderProcessError, ProcessEmbedder

TEXTS = ["The team won the championship final last night.", "昨晚球队赢得了冠军决赛。", "昨夜、チームが決勝戦で優勝した。"]
ROOT = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return not any(line.startswith("State:") and "Z" in line.split()[1] for line in f)
    except FileNotFoundError:
        return False


def _segments() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob("psm_*")}


@pytest.fixture
def embedder():
    e = ProcessEmbedder("use-multilingual-v3")
    yield e
    e.close()


def test_vectors_and_metadata_match_the_same_embedder_in_process(embedder):
    direct = load_embedder("use-multilingual-v3")
    assert (embedder.name, embedder.dim) == (direct.name, direct.dim)
    np.testing.assert_allclose(embedder.encode(TEXTS), direct.encode(TEXTS), atol=1e-6)
    assert embedder.encode([]).shape == (0, 512)


def test_the_child_runs_its_model_once_before_it_reports_ready(monkeypatch):
    """Models load their weights on first use (USE: about a second): the child does that before it
    says ready, so the service's first batch does not wait for it."""
    events = []

    class Recording(HashingEmbedder):
        def _encode(self, texts):
            events.append("encode")
            return super()._encode(texts)

    class Conn:
        def send(self, message):
            events.append(message[0])

    monkeypatch.setattr(embedding_process, "load_embedder", lambda spec, **kw: Recording(8))
    assert embedding_process._load(Conn(), "hashing:8", 1, 64, "cpu") is not None
    assert events == ["encode", "ready"]


def test_it_runs_in_another_process(embedder):
    assert embedder.pid is not None and embedder.pid != os.getpid() and _alive(embedder.pid)


def test_a_killed_child_is_replaced_and_the_call_still_succeeds(embedder):
    first = embedder.pid
    os.kill(first, signal.SIGKILL)
    out = embedder.encode(TEXTS)
    assert out.shape == (3, 512)
    assert embedder.restarts == 1 and embedder.pid != first and _alive(embedder.pid)


def test_close_stops_the_child_and_later_calls_fail_clearly(embedder):
    pid = embedder.pid
    embedder.close()
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)
    with pytest.raises(EmbedderProcessError, match="closed"):
        embedder.encode(TEXTS)
    embedder.close()   # idempotent


def test_a_model_that_cannot_load_fails_at_construction_naming_it(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(EmbedderProcessError, match="no-such-model"):
        ProcessEmbedder(str(missing))


def test_text_survives_the_trip_exactly():
    """Texts cross in shared memory as UTF-8: odd ones come out as the in-process embedder sees
    them, and an error inside the child (a lone surrogate, which JSON can carry) comes back as an
    error naming the cause, as it would in-process."""
    odd = ["", "x" * 5000, "emoji 🙂 and 中文", "tab\tnewline\n nul\x00"]
    direct, with_process = load_embedder("hashing:64"), ProcessEmbedder("hashing:64")
    try:
        np.testing.assert_allclose(with_process.encode(odd), direct.encode(odd), atol=1e-6)
        with pytest.raises(ValueError):
            direct.encode(["\ud800"])
        with pytest.raises(EmbedderProcessError, match="UnicodeEncodeError"):
            with_process.encode(["\ud800"])
        assert with_process.encode(["still serving"]).shape == (1, 64)
    finally:
        with_process.close()


def test_the_child_exits_when_its_owner_is_killed(tmp_path):
    """kill -9 of the service must not leave an embedder process behind holding memory."""
    script = ("import sys, time\n"
              "from xtream.model.embedding_process import ProcessEmbedder\n"
              "e = ProcessEmbedder('hashing:64')\n"
              "print(e.pid, flush=True)\n"
              "time.sleep(600)\n")
    before = _segments()
    owner = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                             env=os.environ | {"PYTHONPATH": str(ROOT)})
    try:
        child = int(owner.stdout.readline())
        assert _alive(child) and _segments() - before, "the owner holds shared memory for the texts"
        owner.kill()
        owner.wait(10)
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child)
        # Its shared memory is unlinked too (by multiprocessing's resource tracker).
        deadline = time.monotonic() + 10
        while _segments() - before and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _segments() - before
    finally:
        owner.kill()
        owner.stdout.close()
