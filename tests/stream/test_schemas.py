"""The Document parser: every input either becomes a Document or an InvalidRecord with a reason."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xtream.stream.schemas import InvalidRecord, parse_document


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


# -- hostile documents: invisible texts, unprintable ids, unbounded metadata, ambiguous timestamps --------

@pytest.mark.parametrize("text", ["\u200b", "\ufeff", "\u200b\u200c\u200d\ufeff", " \u2060\u00ad\u3164\u2800 ",
                                  "\u202e\u202c", "\x00\u200b\n", "\ufe0f\U000e0041"])
def test_a_text_of_only_invisible_characters_is_empty_even_with_a_language(text):
    with pytest.raises(InvalidRecord) as err:
        parse_document(_raw(id="a", text=text, lang="en"))
    assert err.value.reason == "empty_text"


def test_invisible_characters_around_real_text_are_kept():
    assert parse_document(_raw(id="a", text="\ufeff\u200bMarkets\u202e rally")).text == "\ufeff\u200bMarkets\u202e rally"


@pytest.mark.parametrize("doc_id", [" ", "   ", "\u3000", "a\nb", "a\rb", "a\x00b", "\x1b[31mred", "abc\u202e",
                                    "\u2066x\u2069", "a\u200bb", "tab\there", "x\x7f", "a\u2028b"])
def test_ids_must_be_printable_and_not_blank(doc_id):
    with pytest.raises(InvalidRecord) as err:
        parse_document(_raw(id=doc_id, text="news"))
    assert err.value.reason == "invalid_field" and "id" in err.value.detail


@pytest.mark.parametrize("doc_id", ["a", "doc 1", "新闻-42", "ünïcødé:ok/é", "x" * 512])
def test_printable_ids_pass(doc_id):
    assert parse_document(_raw(id=doc_id, text="news")).id == doc_id


def test_metadata_is_bounded_in_keys():
    assert parse_document(_raw(id="a", text="x", metadata={f"k{i}": i for i in range(256)})).metadata["k0"] == 0
    for metadata in ({f"k{i}": i for i in range(60_000)}, {"a": list(range(300))},
                     {f"k{i}": {f"j{j}": j for j in range(20)} for i in range(20)}, {"k" * 300: 1}):
        with pytest.raises(InvalidRecord) as err:
            parse_document(_raw(id="a", text="x", metadata=metadata))
        assert err.value.reason == "invalid_field" and "metadata" in err.value.detail


@pytest.mark.parametrize("value, expected", [
    (1_700_000_000, "2023-11-14T22:13:20+00:00"),              # seconds
    (1_700_000_000_123, "2023-11-14T22:13:20.123000+00:00"),   # milliseconds
    (1_700_000_000.5, "2023-11-14T22:13:20.500000+00:00"),
    ("1700000000", "2023-11-14T22:13:20+00:00"),
])
def test_numeric_timestamps_are_seconds_or_milliseconds(value, expected):
    assert parse_document(_raw(id="a", text="x", timestamp=value)).timestamp.isoformat() == expected


@pytest.mark.parametrize("value", [25_000_000_000, 0, -1, 1, 5_000_000_000_000_000, 1e300, True, "25000000000"])
def test_numeric_timestamps_outside_a_sane_range_are_refused(value):
    """25,000,000,000 is year 2762 in seconds and 1970-10-17 in milliseconds: neither is believable."""
    with pytest.raises(InvalidRecord) as err:
        parse_document(_raw(id="a", text="x", timestamp=value))
    assert err.value.reason == "invalid_field" and "timestamp" in err.value.detail
