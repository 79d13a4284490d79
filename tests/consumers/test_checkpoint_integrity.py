"""Checkpoints that lie: damaged files are skipped loudly, a foreign config is refused by name,
and a payload is data only (no pickle code runs). No Kafka needed: the service reads a JSONL file."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from xtream.consumers.checkpoint import CheckpointStore, IncompatibleCheckpoint
from xtream.consumers.cli import app
from xtream.consumers.config import Settings
from xtream.consumers.wiring import DEMO_STREAM, build_service

COMPAT = {"embedder": "test-embedder", "embedding_dim": 4, "num_topics": 3}


# -- damage ------------------------------------------------------------------------------------
def _payload_start(data: bytes) -> int:
    return data.index(b"\n", data.index(b"\n") + 1) + 1   # after the magic line and the header line


def truncate_payload(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: _payload_start(data) + (len(data) - _payload_start(data)) // 2])


def truncate_in_header(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:30])


def flip_payload_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    i = _payload_start(data) + (len(data) - _payload_start(data)) // 2
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


def flip_header_offset(path: Path) -> None:
    """A one-byte change that keeps the header valid JSON but moves the offset it resumes from."""
    data = path.read_bytes()
    assert data.count(b'"t:0": 30') == 1
    path.write_bytes(data.replace(b'"t:0": 30', b'"t:0": 70'))


def garbage(path: Path) -> None:
    path.write_bytes(os.urandom(4096))


def garbage_after_magic(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:14] + b"[1, 2]\n" + os.urandom(512))


def empty(path: Path) -> None:
    path.write_bytes(b"")


def directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


DAMAGE = [truncate_payload, truncate_in_header, flip_payload_byte, flip_header_offset, garbage,
          garbage_after_magic, empty, directory]


def three_checkpoints(folder: Path) -> tuple[CheckpointStore, list[Path]]:
    """Checkpoints 1..3 covering offsets 10, 20, 30 with a small numpy state each."""
    store = CheckpointStore(folder, keep=5)
    paths = [store.save({"w": np.arange(50, dtype=np.float32) * i, "step": i}, {"t:0": 10 * i}, COMPAT, n_docs=10 * i)
             for i in (1, 2, 3)]
    return store, paths


def damage_errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "xtream.consumers.checkpoint" and r.levelno == logging.ERROR]


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__)
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one_with_an_error(damage, tmp_path, caplog):
    store, paths = three_checkpoints(tmp_path / "ck")
    damage(paths[-1])
    with caplog.at_level(logging.INFO, logger="xtream.consumers.checkpoint"):
        header, state = store.load_latest(COMPAT)
    assert header["offsets"] == {"t:0": 20} and state["step"] == 2
    np.testing.assert_array_equal(state["w"], np.arange(50, dtype=np.float32) * 2)
    errors = damage_errors(caplog)
    assert len(errors) == 1 and paths[-1].name in errors[0], errors


def test_a_garbage_file_newer_than_all_others_is_skipped(tmp_path, caplog):
    store, paths = three_checkpoints(tmp_path / "ck")
    intruder = paths[0].parent / "ckpt-000000099.xck"
    intruder.write_bytes(b"not a checkpoint at all\n" * 10)
    with caplog.at_level(logging.ERROR, logger="xtream.consumers.checkpoint"):
        header, _ = store.load_latest(COMPAT)
    assert header["offsets"] == {"t:0": 30}
    assert [intruder.name in e for e in damage_errors(caplog)] == [True]


def test_a_half_written_temp_file_is_ignored_silently(tmp_path, caplog):
    store, paths = three_checkpoints(tmp_path / "ck")
    (paths[0].parent / "ckpt-000000004.tmp").write_bytes(paths[-1].read_bytes()[:100])   # crash mid-write
    with caplog.at_level(logging.ERROR, logger="xtream.consumers.checkpoint"):
        header, _ = store.load_latest(COMPAT)
    assert header["offsets"] == {"t:0": 30} and damage_errors(caplog) == []


def test_all_damaged_means_a_fresh_start_with_every_file_named_in_an_error(tmp_path, caplog):
    store, paths = three_checkpoints(tmp_path / "ck")
    for path, damage in zip(paths, (truncate_payload, flip_payload_byte, garbage)):
        damage(path)
    with caplog.at_level(logging.ERROR, logger="xtream.consumers.checkpoint"):
        assert store.load_latest(COMPAT) is None
    errors = damage_errors(caplog)
    assert len(errors) == 3 and all(any(p.name in e for e in errors) for p in paths)


class _Exploit:
    """Unpickling this with full pickle would create ``marker``: the proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def test_a_payload_with_pickled_code_is_refused_not_executed(tmp_path, caplog):
    store, paths = three_checkpoints(tmp_path / "ck")
    marker = tmp_path / "code-ran"
    # Checksums are right: only the weights-only loader stands between this file and os.mkdir.
    evil = store.save({"w": np.zeros(3), "step": _Exploit(marker)}, {"t:0": 40}, COMPAT)
    with pytest.raises(ValueError, match="refused"):
        CheckpointStore.read(evil)
    with caplog.at_level(logging.ERROR, logger="xtream.consumers.checkpoint"):
        header, state = store.load_latest(COMPAT)
    assert not marker.exists(), "unpickling ran code from the checkpoint"
    assert header["offsets"] == {"t:0": 30} and state["step"] == 3
    assert [evil.name in e for e in damage_errors(caplog)] == [True]


# -- with the service ------------------------------------------------------------------------
def file_settings(data_dir: Path, input_file: Path, **model) -> Settings:
    s = Settings(data_dir=data_dir, input_file=input_file)
    return s.model_copy(update={
        "model": s.model.model_copy(update=dict(num_topics=8, warmup_docs=60, warmup_steps=5, batch_size=32,
                                                vocab_min_df=1, vocab_refresh_every=60, train_every_docs=60,
                                                train_steps=2) | model),
        "checkpoint": s.checkpoint.model_copy(update=dict(every_docs=30, every_seconds=3600, keep=5)),
        "batch": s.batch.model_copy(update=dict(max_records=30)),
        "http": s.http.model_copy(update=dict(enabled=False)),
    })


def run_to_end(settings: Settings):
    service = build_service(settings)
    try:
        service.run()
    finally:
        service.close()
    return service


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> tuple[Path, Path]:
    """A data dir after the service read 90 documents with K=8: checkpoints at 30, 60, 90."""
    root = tmp_path_factory.mktemp("served")
    docs = root / "docs.jsonl"
    docs.write_bytes(b"".join(DEMO_STREAM.read_bytes().splitlines(True)[:90]))
    run_to_end(file_settings(root / "data", docs))
    return root / "data", docs


@pytest.fixture
def data_dir(served, tmp_path) -> Path:
    shutil.copytree(served[0], tmp_path / "data")
    return tmp_path / "data"


def checkpoint_files(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "checkpoints").glob("ckpt-*.xck"))


def test_the_service_resumes_from_the_last_good_checkpoint_and_counts_each_document_once(served, data_dir, caplog):
    files = checkpoint_files(data_dir)
    counts = [CheckpointStore.read(f)[0]["n_docs"] for f in files]
    assert counts[:3] == [30, 60, 90] and set(counts[3:]) <= {90}   # + the clean stop's final one
    damaged = [f for f, n in zip(files, counts) if n == 90]
    for f, damage in zip(damaged, (flip_payload_byte, truncate_payload)):
        damage(f)
    settings = file_settings(data_dir, served[1])
    with caplog.at_level(logging.ERROR, logger="xtream.consumers.checkpoint"):
        service = build_service(settings)
    try:
        assert service.model.n_docs == 60 and service.offsets == {"file:docs.jsonl:0": 60}
        errors = damage_errors(caplog)
        assert len(errors) == len(damaged) and all(any(f.name in e for e in errors) for f in damaged)
        service.run()
    finally:
        service.close()
    assert service.model.n_docs == 90, "the 30 documents after the good checkpoint were read again, once"


def test_all_checkpoints_damaged_starts_fresh(served, data_dir, caplog):
    for f in checkpoint_files(data_dir):
        garbage(f)
    with caplog.at_level(logging.ERROR, logger="xtream.consumers.checkpoint"):
        service = build_service(file_settings(data_dir, served[1]))
    try:
        assert service.model.n_docs == 0 and service.offsets == {}
        assert len(damage_errors(caplog)) == len(checkpoint_files(data_dir)) >= 3
    finally:
        service.close()


def test_a_checkpoint_from_another_num_topics_is_refused_naming_the_setting(served, data_dir):
    with pytest.raises(IncompatibleCheckpoint) as err:
        build_service(file_settings(data_dir, served[1], num_topics=9))
    message = str(err.value)
    assert re.search(r"num_topics.*8.*9", message), message
    assert "embedder" not in message and "embedding_dim" not in message


def test_a_checkpoint_from_another_embedder_is_refused_naming_the_setting(served, data_dir):
    newest = checkpoint_files(data_dir)[-1]
    header, state = CheckpointStore.read(newest)
    store = CheckpointStore(data_dir / "checkpoints", keep=5)
    store.save(state, header["offsets"], {**header["compat"], "embedder": "sentence-transformers/LaBSE"})
    with pytest.raises(IncompatibleCheckpoint) as err:
        build_service(file_settings(data_dir, served[1]))
    message = str(err.value)
    assert "'embedder'" in message and "sentence-transformers/LaBSE" in message and header["compat"]["embedder"] in message
    assert "num_topics" not in message


def test_the_cli_exits_non_zero_with_the_incompatibility_message(served, data_dir):
    result = CliRunner().invoke(app, ["run", "--input", str(served[1]), "--data-dir", str(data_dir), "--topics", "9"])
    assert result.exit_code != 0
    # A clean message on the console, or (today) the uncaught exception that a real process prints
    # as a traceback ending in the message.
    shown = result.output + (str(result.exception) if isinstance(result.exception, IncompatibleCheckpoint) else "")
    assert re.search(r"num_topics.*8.*9", shown), result.output
    assert json.loads(checkpoint_files(data_dir)[-1].read_bytes().split(b"\n")[1])["compat"]["num_topics"] == 8, \
        "the refused checkpoint was left alone"


# -- the store's edges: a header of the wrong shape, a full disk, a second process, all unreadable --------
def _rewrite_header(path: Path, change) -> None:
    """Edit the header and re-sign it, so only its shape is wrong (not its checksum)."""
    from xtream.consumers.checkpoint import _header_digest

    data = path.read_bytes()
    first = data.index(b"\n") + 1
    end = data.index(b"\n", first)
    header = json.loads(data[first:end])
    change(header)
    header["header_sha256"] = _header_digest(header)
    path.write_bytes(data[:first] + json.dumps(header).encode() + data[end:])


@pytest.mark.parametrize("change", [
    lambda h: h.pop("compat"), lambda h: h.pop("offsets"), lambda h: h.update(compat=[1]),
    lambda h: h.update(offsets={"t:0": "30"}), lambda h: h.update(size="12"), lambda h: h.pop("sha256"),
], ids=["no_compat", "no_offsets", "compat_list", "offset_string", "size_string", "no_sha256"])
def test_a_malformed_header_falls_back_like_any_damage(change, tmp_path, caplog):
    store, paths = three_checkpoints(tmp_path / "ck")
    _rewrite_header(paths[-1], change)
    with caplog.at_level(logging.ERROR, logger="xtream.consumers.checkpoint"):
        header, state = store.load_latest(COMPAT)
    assert header["offsets"] == {"t:0": 20} and state["step"] == 2
    assert [paths[-1].name in e for e in damage_errors(caplog)] == [True]
    assert store.damaged == [paths[-1]]


def _disk_full(monkeypatch) -> None:
    """The checkpoint directory's disk is full: the store's fsync fails with ENOSPC (where a full disk
    usually shows, after the writes were buffered). Other files (the JSONL sinks) are not affected."""
    import errno

    import xtream.model.atomic as ck  # the store writes through model.atomic

    class NoSpaceOs:
        def __getattr__(self, name):
            return getattr(os, name)

        @staticmethod
        def fsync(fd):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck, "os", NoSpaceOs())


def test_a_full_disk_keeps_the_last_good_checkpoint_and_leaves_no_temp_file(tmp_path, monkeypatch):
    from xtream.consumers.checkpoint import CheckpointWriteError

    store, paths = three_checkpoints(tmp_path / "ck")
    before = {p.name: p.read_bytes() for p in paths}
    _disk_full(monkeypatch)
    with pytest.raises(CheckpointWriteError, match="No space left"):
        store.save({"w": np.zeros(3), "step": 4}, {"t:0": 40}, COMPAT)
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == sorted(before)
    assert {p.name: p.read_bytes() for p in paths} == before
    assert store.load_latest(COMPAT)[0]["offsets"] == {"t:0": 30}


def test_the_service_keeps_running_on_a_full_disk_and_counts_the_failures(served, data_dir, monkeypatch, caplog):
    before = {p.name: p.read_bytes() for p in checkpoint_files(data_dir)}
    more = data_dir.parent / "docs.jsonl"   # the same name: the checkpoints cover its first 90 lines
    more.write_bytes(b"".join(DEMO_STREAM.read_bytes().splitlines(True)[:150]))
    _disk_full(monkeypatch)
    service = build_service(file_settings(data_dir, more))
    try:
        with caplog.at_level(logging.ERROR, logger="xtream.consumers.service"):
            service.run()
        failures = service.metrics.checkpoint_failures._value.get()
    finally:
        service.close()
    assert service.model.n_docs == 150, "every document was still processed"
    assert failures >= 2 and any("No space left" in r.getMessage() for r in caplog.records)
    assert {p.name: p.read_bytes() for p in checkpoint_files(data_dir)} == before
    assert not list((data_dir / "checkpoints").glob("*.tmp"))
    monkeypatch.undo()
    resumed = build_service(file_settings(data_dir, more))
    try:
        assert resumed.model.n_docs == 90, "a restart resumes from the last good checkpoint"
    finally:
        resumed.close()


def test_stale_temp_files_are_removed_when_the_directory_is_locked(tmp_path):
    store, paths = three_checkpoints(tmp_path / "ck")
    stale = paths[0].parent / "ckpt-000000004.tmp"
    stale.write_bytes(b"half")
    store.acquire()
    try:
        assert not stale.exists()
    finally:
        store.release()


HOLD_LOCK = """
import sys, time
from xtream.consumers.checkpoint import CheckpointStore
store = CheckpointStore(sys.argv[1]).acquire()   # held while referenced
print("locked", flush=True)
time.sleep(60)
"""


def test_a_second_process_on_the_same_data_dir_fails_at_start_with_a_clear_message(served, data_dir):
    import subprocess
    import sys

    from xtream.consumers.checkpoint import DataDirectoryLocked

    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(data_dir / "checkpoints")],
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(DataDirectoryLocked, match=rf"in use by another xtream process \(pid {holder.pid}\)"):
            build_service(file_settings(data_dir, served[1]))
        result = CliRunner().invoke(app, ["run", "--input", str(served[1]), "--data-dir", str(data_dir)])
        assert result.exit_code == 2 and "in use by another xtream process" in result.output, result.output
    finally:
        holder.kill()
        holder.wait()
    service = build_service(file_settings(data_dir, served[1]))   # free again once the holder is gone
    try:
        with pytest.raises(DataDirectoryLocked):   # and held by this one while it runs
            CheckpointStore(data_dir / "checkpoints").acquire()
    finally:
        service.close()
    CheckpointStore(data_dir / "checkpoints").acquire().release()   # released on close


def kafka_settings(data_dir: Path, **checkpoint) -> Settings:
    s = file_settings(data_dir, DEMO_STREAM)
    return s.model_copy(update={"input_file": None,
                                "kafka": s.kafka.model_copy(update={"bootstrap_servers": "127.0.0.1:9"}),
                                "checkpoint": s.checkpoint.model_copy(update=checkpoint)})


def test_unreadable_checkpoints_with_kafka_refuse_to_start_from_committed_offsets(served, data_dir):
    from xtream.consumers.checkpoint import CheckpointsUnreadable

    for f in checkpoint_files(data_dir):
        garbage(f)
    with pytest.raises(CheckpointsUnreadable, match="--accept-model-loss") as err:
        build_service(kafka_settings(data_dir))
    assert len(err.value.damaged) == len(checkpoint_files(data_dir))
    CheckpointStore(data_dir / "checkpoints").acquire().release()   # the refused start let go of the lock


def test_the_cli_refuses_unreadable_checkpoints_with_kafka_and_names_the_flag(served, data_dir):
    for f in checkpoint_files(data_dir):
        garbage(f)
    result = CliRunner().invoke(app, ["run", "--bootstrap", "127.0.0.1:9", "--data-dir", str(data_dir)])
    assert result.exit_code == 2 and "--accept-model-loss" in result.output, result.output
