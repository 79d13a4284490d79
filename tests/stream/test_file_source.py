"""JsonlFileSource as a stream: bounded memory, stdin and FIFOs, following a growing (or rotated)
file, line offsets that survive a restart, and waits that never outlast ``timeout_ms``."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import tracemalloc

from xtream.stream.file_source import JsonlFileSource


def lines(n: int, start: int = 0) -> bytes:
    return b"".join(json.dumps({"id": f"d{i}", "text": f"document {i}"}).encode() + b"\n" for i in range(start, start + n))


def drain(source: JsonlFileSource, batch: int = 100, timeout_ms: int = 50) -> list:
    out = []
    while not source.exhausted():
        got = source.poll_batch(batch, timeout_ms)
        out.extend(got)
        if not got and source.follow:
            break
    return out


def test_every_line_is_a_record_numbered_from_zero(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_bytes(lines(5) + b"\n" + b'{"id": "crlf", "text": "x"}\r\n' + b'{"id": "last", "text": "no newline"}')
    source = JsonlFileSource(path)
    records = drain(source, batch=3)
    assert [r.offset for r in records] == list(range(8))
    assert records[5].value == b"" and records[6].value == b'{"id": "crlf", "text": "x"}'
    assert json.loads(records[7].value)["id"] == "last"
    assert {r.topic for r in records} == {"file:docs.jsonl"} and source.exhausted()


def test_a_restart_resumes_after_the_checkpointed_line(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_bytes(lines(10))
    records = drain(JsonlFileSource(path, start_offsets={"file:docs.jsonl:0": 7}))
    assert [r.offset for r in records] == [7, 8, 9]
    assert [json.loads(r.value)["id"] for r in records] == ["d7", "d8", "d9"]


def test_a_large_file_is_streamed_with_bounded_memory(tmp_path):
    """20 MB of JSONL: the source holds about one read chunk and one line, not the file."""
    path = tmp_path / "big.jsonl"
    with open(path, "wb") as f:
        for start in range(0, 200_000, 10_000):
            f.write(lines(10_000, start))
    size = path.stat().st_size
    assert size > 8_000_000
    tracemalloc.start()
    try:
        source = JsonlFileSource(path)
        n = 0
        while not source.exhausted():
            n += len(source.poll_batch(256, 10))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == 200_000
    assert peak < 2_000_000, f"peak {peak / 1e6:.1f} MB while reading a {size / 1e6:.0f} MB file"


def test_an_overlong_line_is_cut_for_the_parser_to_refuse_and_the_next_line_is_intact(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_bytes(lines(1) + b'{"id": "huge", "text": "' + b"x" * 300_000 + b'"}\n' + lines(1, start=1))
    records = drain(JsonlFileSource(path, max_line_bytes=1000))
    assert [r.offset for r in records] == [0, 1, 2]
    assert len(records[1].value) == 1001
    assert json.loads(records[2].value)["id"] == "d1"


def test_dash_reads_standard_input(tmp_path, monkeypatch):
    read_end, write_end = os.pipe()
    os.write(write_end, lines(3))
    os.close(write_end)

    class Stdin:
        def fileno(self):
            return read_end

    monkeypatch.setattr(sys, "stdin", Stdin())
    source = JsonlFileSource("-")
    try:
        records = drain(source)
    finally:
        source.close()
        os.close(read_end)
    assert [r.offset for r in records] == [0, 1, 2] and records[0].topic == "file:stdin"


def _in_thread(fn, timeout: float):
    """Run ``fn``; (finished, result) after at most ``timeout`` seconds."""
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("v", fn()), daemon=True)
    t.start()
    t.join(timeout)
    return not t.is_alive(), result.get("v")


def test_a_fifo_opens_without_a_writer_and_polls_return_within_their_timeout(tmp_path):
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    opened, source = _in_thread(lambda: JsonlFileSource(fifo), timeout=3)
    assert opened, "opening the FIFO blocked until a writer came"
    try:
        started = time.monotonic()
        assert source.poll_batch(10, 200) == [] and not source.exhausted()
        assert time.monotonic() - started < 1.5
        writer = os.open(fifo, os.O_WRONLY)
        os.write(writer, lines(2) + b'{"id": "half"')
        started = time.monotonic()
        got = source.poll_batch(10, 200)
        assert [r.offset for r in got] == [0, 1] and time.monotonic() - started < 1.5
        assert source.poll_batch(10, 200) == [], "a silent writer: the poll still returns"
        os.write(writer, b', "text": "x"}\n')
        os.close(writer)
        rest = drain(source)
        assert [json.loads(r.value)["id"] for r in rest] == ["half"] and source.exhausted()
    finally:
        source.close()


def test_follow_reads_what_is_appended_and_holds_a_line_until_it_is_complete(tmp_path):
    path = tmp_path / "live.jsonl"
    path.write_bytes(lines(3))
    source = JsonlFileSource(path, follow=True, poll_interval=0.02)
    try:
        assert [r.offset for r in source.poll_batch(100, 50)] == [0, 1, 2]
        started = time.monotonic()
        assert source.poll_batch(100, 200) == [] and not source.exhausted(), "at the end it waits, not ends"
        assert 0.15 < time.monotonic() - started < 1.5
        with open(path, "ab") as f:
            f.write(lines(2, start=3) + b'{"id": "d5", ')
        assert [r.offset for r in source.poll_batch(100, 200)] == [3, 4]
        with open(path, "ab") as f:
            f.write(b'"text": "late"}\n')
        got = source.poll_batch(100, 200)
        assert [(r.offset, json.loads(r.value)["text"]) for r in got] == [(5, "late")]
        # rotation: the file is renamed away and a new one takes its path
        os.rename(path, tmp_path / "live.jsonl.1")
        path.write_bytes(lines(2, start=100))
        got = []
        deadline = time.monotonic() + 5
        while len(got) < 2 and time.monotonic() < deadline:
            got += source.poll_batch(100, 100)
        assert [(r.offset, json.loads(r.value)["id"]) for r in got] == [(6, "d100"), (7, "d101")]
    finally:
        source.close()
