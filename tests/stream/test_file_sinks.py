"""The file sinks of the embedded (no Kafka) mode: one JSON line per record, durable on flush."""

import base64
import json

from xtream.stream.sinks import JsonlSink


def test_plain_lines_hold_the_value(tmp_path):
    sink = JsonlSink(tmp_path / "out.jsonl")
    sink.add(b'{"a": 1}\n')
    sink.add(b'{"a": 2}')
    sink.close()
    assert [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()] == [{"a": 1}, {"a": 2}]


def test_an_envelope_keeps_any_bytes_key_and_reason_headers(tmp_path):
    """Dead letters are often not JSON, or not even UTF-8; each still becomes one valid JSON line."""
    sink = JsonlSink(tmp_path / "dlq.jsonl", envelope=True)
    sink.add(b"{not json", key=b"k1", headers=[("xtream.error.reason", b"invalid_json")])
    sink.add(b"\xff\xfe\x00bin", key=None, headers=[("xtream.error.reason", b"invalid_utf8")])
    sink.flush()
    first, second = [json.loads(line) for line in (tmp_path / "dlq.jsonl").read_text().splitlines()]
    assert first == {"value": "{not json", "key": "k1", "headers": [["xtream.error.reason", "invalid_json"]]}
    assert base64.b64decode(second["value_base64"]) == b"\xff\xfe\x00bin" and second["key"] is None
    assert dict(second["headers"])["xtream.error.reason"] == "invalid_utf8"
