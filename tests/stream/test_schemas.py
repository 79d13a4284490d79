"""The Document parser: every input either becomes a Document or an InvalidRecord with a reason."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.schemas import InvalidRecord, parse_document


def _raw(**fields) -> bytes:
    return json.dumps(fields).encode()


def test_minimal_document_parses():
    doc = parse_document(_raw(id="a", text="hello world"))
    assert (doc.id, doc.text, doc.lang, doc.timestamp) == ("a", "hello world", None, None)


def test_language_codes_are_normalised():
    assert parse_document(_raw(id="a", text="x", lang="zh-CN")).lang == "zh"
    assert parse_document(_raw(id="a", text="x", lang="cn")).lang == "zh"
    assert parse_document(_raw(id="a", text="x", lang="JA")).lang == "ja"


def test_naive_timestamps_are_taken_as_utc():
    doc = parse_document(_raw(id="a", text="x", timestamp="2026-11-01T10:00:00"))
    assert doc.timestamp.utcoffset().total_seconds() == 0


@pytest.mark.parametrize("raw, reason", [
    (None, "tombstone"),
    (b"\xff\xfe\x00garbage", "invalid_utf8"),
    (b"{not json", "invalid_json"),
    (b'{"id": "a", "text": NaN}', "invalid_json"),
    (b"[1, 2, 3]", "not_an_object"),
    (b'"just a string"', "not_an_object"),
    (_raw(id="a"), "invalid_field"),
    (_raw(text="no id"), "invalid_field"),
    (_raw(id="a", text=123), "invalid_field"),
    (_raw(id=["a"], text="x"), "invalid_field"),
    (_raw(id="a", text=""), "empty_text"),
    (_raw(id="a", text=" \n\t "), "empty_text"),
    (_raw(id="a", text="x", lang="xx"), "unknown_language"),
    (_raw(id="a", text="x", lang="english"), "unknown_language"),
    (_raw(id="a", text="x", timestamp="yesterday"), "invalid_field"),
    (_raw(id="a", text="x" * 200_000), "too_large"),
    (b'{"id": "a", "text": "x", "metadata": ' + b'{"a": ' * 40 + b"1" + b"}" * 40 + b"}", "too_deep"),
])
def test_malformed_records_are_rejected_with_a_reason(raw, reason):
    with pytest.raises(InvalidRecord) as err:
        parse_document(raw)
    assert err.value.reason == reason


def test_records_over_the_byte_limit_are_rejected_before_decoding():
    with pytest.raises(InvalidRecord) as err:
        parse_document(b" " * 2_000_000, max_bytes=1_000_000)
    assert err.value.reason == "too_large"


def test_null_bytes_in_text_are_replaced_not_fatal():
    assert parse_document(_raw(id="a", text="a\x00b")).text == "a b"


@settings(max_examples=300, deadline=None, database=None)
@given(st.one_of(st.binary(max_size=300),
                 st.recursive(st.none() | st.booleans() | st.floats(allow_nan=False) | st.text(max_size=20),
                              lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                              max_leaves=20).map(lambda o: json.dumps(o).encode()),
                 st.fixed_dictionaries({"id": st.text(max_size=30), "text": st.text(max_size=60)},
                                       optional={"lang": st.text(max_size=6), "timestamp": st.text(max_size=30),
                                                 "metadata": st.dictionaries(st.text(max_size=5), st.integers())})
                 .map(lambda o: json.dumps(o).encode())))
def test_parser_returns_a_document_or_raises_invalid_record_only(raw):
    try:
        doc = parse_document(raw)
    except InvalidRecord as exc:
        assert exc.reason
    else:
        assert doc.id and doc.text.strip()
