"""A hostile stream against the real broker: 10,000 records, dozens of kinds of malformed ones
interleaved with real documents. The service must not crash, must dead-letter every bad record with a
machine-readable reason, assign every valid one exactly once and commit everything.

Decisions the corpus pins down (the "expected" column):
- NUL bytes inside a text are replaced by spaces; a text of NULs only is then empty (``empty_text``).
- Escaped control characters (``\\u001b``, ``\\u0007``) are text; raw ones inside a JSON string make
  the JSON invalid (RFC 8259), as do a UTF-8 BOM, ``NaN``/``Infinity`` and numbers that overflow.
- A declared language is trusted when it is a real code (English text labelled ``ja`` is learned as
  ``ja``); a non-code is ``unknown_language``; a real code the service does not serve is
  ``unsupported_language``, and so is an undeclared text with no letters to detect.
- Duplicate document ids, far past/future timestamps (in the JSON or on the Kafka record), big Kafka
  headers, binary keys, extra fields and mixed scripts are all valid.

Two tests pin bugs this corpus found (a record timestamp past year 9999; a language too rare at the
end of warm-up to have a vocabulary): both used to make a learned batch count twice.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka_support import (
    committed_offsets,
    read_topic,
    run_until_committed,
    run_until_records,
    service_settings,
    stream_documents,
)

from xtream.consumers.config import Settings
from xtream.consumers.wiring import DEMO_STREAM, build_service

pytestmark = pytest.mark.kafka

TOTAL_RECORDS = 10_000
YEAR_9999_MS = 253_402_300_799_000          # the last second a Python datetime can hold
LONG_MAX = str(2**63 - 1)


@dataclass
class Rec:
    value: bytes | None
    doc_id: str | None = None                 # the id a valid record is assigned under
    key: bytes | None = None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    timestamp_ms: int | None = None


@dataclass
class Kind:
    name: str
    make: Callable[[int], Rec]
    reason: str | None                        # dead-letter reason; None = valid
    count: int = 12
    lang: str | None = None                   # the language a valid record must be assigned


def doc(i: int, prefix: str, **fields) -> Rec:
    """A JSON document whose fields are ``fields`` (``id`` defaults to ``<prefix>-<i>``)."""
    body = {"id": f"{prefix}-{i}", "text": "Markets rallied after the central bank held rates steady."} | fields
    return Rec(json.dumps(body).encode(), doc_id=body["id"] if isinstance(body.get("id"), str) else None)


def raw(template: bytes) -> Callable[[int], Rec]:
    return lambda i: Rec(template.replace(b"{i}", str(i).encode()))


def nested(levels: int) -> dict | int:
    """``levels`` dicts inside each other; as ``metadata`` its leaf sits at JSON depth ``levels + 2``."""
    return 1 if levels == 0 else {"a": nested(levels - 1)}


BIG_HEADERS = [(f"h{j}", bytes([j % 256]) * 8192) for j in range(64)]   # 512 KiB of headers
ENGLISH = "Stocks rose on Monday as investors weighed the outlook for interest rates and earnings. "

BAD = [
    # bytes that are not UTF-8
    Kind("invalid_utf8_bytes", lambda i: Rec(bytes([0xFF, 0xFE, 0x80, i % 256]) * 8), "invalid_utf8"),
    Kind("latin1_inside_json", raw(b'{"id": "l1-{i}", "text": "caf\xe9 au lait prices"}'), "invalid_utf8"),
    Kind("utf8_encoded_surrogate", raw(b'{"id": "sg-{i}", "text": "\xed\xa0\x80 news"}'), "invalid_utf8"),
    Kind("utf16_json", lambda i: Rec(json.dumps({"id": f"u16-{i}", "text": "news"}).encode("utf-16")), "invalid_utf8"),
    # not JSON
    Kind("truncated_json", raw(b'{"id": "bad-{i}", "text": '), "invalid_json"),
    Kind("trailing_garbage", raw(b'{"id": "tg-{i}", "text": "news"} and more'), "invalid_json"),
    Kind("empty_value", lambda i: Rec(b""), "invalid_json"),
    Kind("utf8_bom", lambda i: Rec(b"\xef\xbb\xbf" + json.dumps({"id": f"bom-{i}", "text": "news"}).encode()),
         "invalid_json"),
    Kind("raw_control_char_in_string", raw(b'{"id": "cc-{i}", "text": "line\x01break"}'), "invalid_json"),
    Kind("nan_literal", raw(b'{"id": "nan-{i}", "text": "news", "metadata": {"score": NaN}}'), "invalid_json"),
    Kind("infinity_literal", raw(b'{"id": "inf-{i}", "text": "news", "metadata": {"score": -Infinity}}'),
         "invalid_json"),
    Kind("float_overflowing_to_inf", raw(b'{"id": "ovf-{i}", "text": "news", "metadata": {"score": 1e999}}'),
         "invalid_json"),
    Kind("integer_with_5000_digits", raw(b'{"id": "big-{i}", "text": "news", "metadata": {"n": ' + b"9" * 5000 + b"}}"),
         "invalid_json"),
    # JSON, but not an object
    Kind("json_array", raw(b'[{"id": "arr-{i}", "text": "news"}]'), "not_an_object"),
    Kind("json_string", raw(b'"id {i}: news"'), "not_an_object"),
    Kind("json_null", raw(b"null"), "not_an_object"),
    Kind("json_number", raw(b"{i}"), "not_an_object"),
    # objects with missing, wrong-typed or out-of-range fields
    Kind("missing_text", lambda i: Rec(json.dumps({"id": f"mt-{i}"}).encode()), "invalid_field"),
    Kind("missing_id", lambda i: Rec(json.dumps({"text": "news without id"}).encode()), "invalid_field"),
    Kind("text_is_a_number", lambda i: Rec(json.dumps({"id": f"tn-{i}", "text": 12345}).encode()), "invalid_field"),
    Kind("text_is_an_object", lambda i: Rec(json.dumps({"id": f"to-{i}", "text": {"en": "news"}}).encode()),
         "invalid_field"),
    Kind("id_is_a_list", lambda i: Rec(json.dumps({"id": [i], "text": "news"}).encode()), "invalid_field"),
    Kind("id_is_empty", lambda i: Rec(json.dumps({"id": "", "text": "news"}).encode()), "invalid_field"),
    Kind("id_too_long", lambda i: Rec(json.dumps({"id": "i" * 513, "text": "news"}).encode()), "invalid_field"),
    Kind("metadata_not_an_object", lambda i: Rec(json.dumps({"id": f"mo-{i}", "text": "n", "metadata": "x"}).encode()),
         "invalid_field"),
    Kind("timestamp_not_a_date", lambda i: Rec(json.dumps({"id": f"td-{i}", "text": "n", "timestamp": "yesterday"}).encode()),
         "invalid_field"),
    Kind("timestamp_beyond_year_9999", raw(b'{"id": "ty-{i}", "text": "news", "timestamp": 1e300}'), "invalid_field"),
    Kind("lone_surrogate_escape", raw(b'{"id": "ls-{i}", "text": "broken \\ud800 text"}'), "invalid_field"),
    Kind("lang_is_a_number", lambda i: Rec(json.dumps({"id": f"ln-{i}", "text": "news", "lang": 5}).encode()),
         "invalid_field"),
    Kind("lang_too_long", lambda i: Rec(json.dumps({"id": f"ll-{i}", "text": "news", "lang": "x" * 17}).encode()),
         "invalid_field"),
    # empty texts
    Kind("empty_text", lambda i: Rec(json.dumps({"id": f"et-{i}", "text": ""}).encode()), "empty_text"),
    Kind("whitespace_text", lambda i: Rec(json.dumps({"id": f"wt-{i}", "text": " \n\t\u3000\u00a0\u2003"}).encode()),
         "empty_text"),
    Kind("nul_only_text", lambda i: Rec(json.dumps({"id": f"nt-{i}", "text": "\x00\x00\x00"}).encode()), "empty_text"),
    # too big, too deep
    Kind("text_over_100k_chars", lambda i: Rec(json.dumps({"id": f"tl-{i}", "text": "a" * 100_001}).encode()),
         "too_large", count=4),
    Kind("record_1mb", lambda i: Rec(json.dumps({"id": f"mb-{i}", "text": "word " * 209_716}).encode()),
         "too_large", count=3),
    Kind("record_10mb", lambda i: Rec(json.dumps({"id": f"mb10-{i}", "text": "x" * (10 * 1024 * 1024)}).encode()),
         "too_large", count=2),
    Kind("nested_one_past_the_limit", lambda i: Rec(json.dumps({"id": f"np-{i}", "text": "n", "metadata": nested(31)}).encode()),
         "too_deep"),
    Kind("nested_100k_deep", lambda i: Rec(b'{"id": "d", "text": "x", "metadata": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
         "too_deep", count=3),
    # languages
    Kind("lang_unknown_code", lambda i: Rec(json.dumps({"id": f"lx-{i}", "text": "news", "lang": "xx"}).encode()),
         "unknown_language"),
    Kind("lang_not_a_code", lambda i: Rec(json.dumps({"id": f"le-{i}", "text": "news", "lang": "english"}).encode()),
         "unknown_language"),
    Kind("lang_not_served", lambda i: Rec(json.dumps({"id": f"sw-{i}", "text": "Habari za asubuhi", "lang": "sw"}).encode()),
         "unsupported_language"),
    Kind("no_letters_to_detect", lambda i: Rec(json.dumps({"id": f"nl-{i}", "text": "📈📉 12345 !!!"}).encode()),
         "unsupported_language"),
    # Kafka-level
    Kind("tombstone", lambda i: Rec(None, key=f"tomb-{i}".encode()), "tombstone"),
    # invisible texts, ids that would corrupt the output key or a log line, unbounded metadata,
    # numeric timestamps that are neither seconds nor milliseconds
    Kind("zero_width_and_bom_text_with_lang",
         lambda i: Rec(json.dumps({"id": f"zw-{i}", "text": "\u200b\ufeff\u200d \u2060", "lang": "en"}).encode()),
         "empty_text"),
    Kind("id_is_a_space", lambda i: Rec(json.dumps({"id": " ", "text": ENGLISH, "lang": "en"}).encode()),
         "invalid_field"),
    Kind("id_with_newline", lambda i: Rec(json.dumps({"id": f"nl\n{i}", "text": ENGLISH}).encode()), "invalid_field"),
    Kind("id_with_nul", lambda i: Rec(json.dumps({"id": f"nul\x00{i}", "text": ENGLISH}).encode()), "invalid_field"),
    Kind("id_with_escape", lambda i: Rec(json.dumps({"id": f"\x1b[2J{i}", "text": ENGLISH}).encode()), "invalid_field"),
    Kind("id_with_rtl_override", lambda i: Rec(json.dumps({"id": f"doc\u202e{i}fdp.exe", "text": ENGLISH}).encode()),
         "invalid_field"),
    Kind("metadata_60000_keys", lambda i: Rec(json.dumps({"id": f"mk-{i}", "text": ENGLISH,
                                                          "metadata": {f"k{j}": j for j in range(60_000)}}).encode()),
         "invalid_field", count=2),
    Kind("numeric_timestamp_neither_s_nor_ms",
         lambda i: Rec(json.dumps({"id": f"nts-{i}", "text": ENGLISH, "timestamp": 25_000_000_000}).encode()),
         "invalid_field"),
    Kind("invalid_json_with_big_headers", lambda i: Rec(b"{oops", headers=BIG_HEADERS), "invalid_json", count=4),
]

VALID = [
    Kind("extra_fields", lambda i: doc(i, "xf", lang="en", unexpected={"a": [1, 2, {"b": None}]}, score=0.5), None,
         lang="en"),
    Kind("nul_inside_text", lambda i: doc(i, "nul", text="Markets\x00rallied\x00today on rate news", lang="en"), None,
         lang="en"),
    Kind("escaped_control_chars", lambda i: doc(i, "esc", text="\x1b[31mBreaking\x1b[0m: markets \x07 rally", lang="en"),
         None, lang="en"),
    Kind("mixed_script_undeclared", lambda i: doc(i, "mix", text="Apple 发布 新しい iPhone in Tokyo 東京 today"), None,
         lang="ja"),
    Kind("declared_lang_lies", lambda i: doc(i, "lie", text=ENGLISH, lang="ja"), None, lang="ja"),
    Kind("lang_with_region", lambda i: doc(i, "reg", lang="en-US"), None, lang="en"),
    Kind("lang_with_script_region", lambda i: doc(i, "zht", text="央行宣布维持利率不变，股市应声上涨。", lang="zh_Hant_TW"), None,
         lang="zh"),
    Kind("lang_empty_string", lambda i: doc(i, "lem", text=ENGLISH, lang=""), None, lang="en"),
    Kind("duplicate_ids", lambda i: doc(i // 2, "dup", text=ENGLISH, lang="en"), None, lang="en"),
    Kind("json_duplicate_keys", lambda i: Rec(b'{"id": "dk-%d", "text": "", "lang": "en", "text": "Markets rally"}' % i,
                                              doc_id=f"dk-{i}"), None, lang="en"),   # the last one wins
    Kind("doc_timestamp_year_9999", lambda i: doc(i, "tf", timestamp="9999-12-31T23:59:59-14:00", lang="en"), None,
         lang="en"),
    Kind("doc_timestamp_year_1", lambda i: doc(i, "tp", timestamp="0001-01-01T00:00:00+14:00", lang="en"), None,
         lang="en"),
    Kind("kafka_timestamp_1970", lambda i: Rec(**vars(doc(i, "kp", lang="en")) | {"timestamp_ms": 1}), None, lang="en"),
    Kind("kafka_timestamp_year_9999", lambda i: Rec(**vars(doc(i, "kf", lang="en")) | {"timestamp_ms": YEAR_9999_MS}),
         None, lang="en"),
    Kind("big_headers", lambda i: Rec(**vars(doc(i, "bh", lang="en")) | {"headers": BIG_HEADERS}), None, count=4,
         lang="en"),
    Kind("binary_key_and_headers", lambda i: Rec(**vars(doc(i, "bk", lang="en")) | {
        "key": bytes([0xFF, 0x00, i % 256]) * 100, "headers": [("ключ", b"\xff\xfe"), ("", b""), ("e", b"")]}), None,
         lang="en"),
    Kind("text_of_100k_chars", lambda i: doc(i, "long", text=(ENGLISH * 1200)[:100_000], lang="en"), None, count=3,
         lang="en"),
    Kind("no_words_but_declared", lambda i: doc(i, "emo", text="📈📉 🚀 12345", lang="en"), None, lang="en"),
    Kind("invisible_and_bidi_chars", lambda i: doc(i, "bidi", text="\u200bMarkets\u202e rally \u202c\ufeff again",
                                                   lang="en"), None, lang="en"),
    Kind("metadata_at_the_depth_limit", lambda i: doc(i, "dl", lang="en", metadata=nested(30)), None, lang="en"),
    Kind("numeric_timestamp_seconds", lambda i: doc(i, "tsec", timestamp=1_700_000_000 + i, lang="en"), None, lang="en"),
    Kind("numeric_timestamp_millis", lambda i: doc(i, "tms", timestamp=1_700_000_000_000 + i, lang="en"), None,
         lang="en"),
]


def build_corpus(real_docs: list[dict], plain_first: int = 0, total: int = TOTAL_RECORDS) -> list[tuple[Kind | None, Rec]]:
    """``plain_first`` real documents, then the special records spread evenly among the rest of
    them, ``total`` in all."""
    special = [(kind, kind.make(i)) for kind in BAD + VALID for i in range(kind.count)]
    random.Random(7).shuffle(special)   # kinds mixed, the same way every run
    n_plain = total - len(special)
    plain = [(None, Rec(json.dumps(d).encode(), doc_id=d["id"])) for d in real_docs[:n_plain]]
    out, rest = plain[:plain_first], plain[plain_first:]
    step = len(rest) / len(special)
    for j, item in enumerate(special):
        out.extend(rest[int(j * step): int((j + 1) * step)])
        out.append(item)
    return out


def produce_corpus(bootstrap: str, topic: str, corpus: list[tuple[Kind | None, Rec]]) -> list[tuple[int, int]]:
    """Create ``topic`` (3 partitions, timestamps of any age accepted) and send; (partition, offset) per record."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics({topic: {"num_partitions": 3, "replication_factor": 1,
                                     "configs": {"message.timestamp.after.max.ms": LONG_MAX}}},
                            wait_for_metadata=True)
    finally:
        admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=16 * 1024 * 1024, linger_ms=20)
    try:
        futures = [producer.send(topic, value=rec.value, key=rec.key if rec.key is not None else str(n).encode(),
                                 headers=rec.headers, timestamp_ms=rec.timestamp_ms)
                   for n, (_, rec) in enumerate(corpus)]
        producer.flush()
        return [(md.partition, md.offset) for md in (f.get(timeout=60) for f in futures)]
    finally:
        producer.close()


def small_settings(bootstrap: str, name: str, tmp_path) -> Settings:
    return service_settings(
        bootstrap, name, tmp_path / "data",
        model=dict(num_topics=20, warmup_docs=400, warmup_steps=20, batch_size=64, vocab_max_size=2000,
                   train_every_docs=1000, train_steps=4, vocab_refresh_every=2000),
        snapshots=dict(every_docs=3000, every_seconds=3600), checkpoint=dict(every_seconds=3.0, every_docs=3000),
        batch=dict(max_records=250, max_wait_ms=200), http=dict(enabled=False))


def test_the_kinds_are_many_and_the_expectations_machine_readable():
    assert len(BAD) >= 20 and len(VALID) >= 15
    assert len({k.name for k in BAD + VALID}) == len(BAD + VALID)
    assert {k.reason for k in BAD} <= {"invalid_utf8", "invalid_json", "not_an_object", "invalid_field", "empty_text",
                                       "unknown_language", "unsupported_language", "too_large", "too_deep", "tombstone"}


@pytest.mark.parametrize("plain_first, total", [(2000, TOTAL_RECORDS), (0, 3000)],
                         ids=["after_the_warm_up", "during_the_warm_up"])
def test_a_hostile_stream_is_dead_lettered_by_reason_and_the_rest_assigned(kafka_bootstrap, unique_name, tmp_path,
                                                                           caplog, plain_first, total):
    """After 2,000 clean documents, and from the first record on (the warm-up, 400 documents,
    then sees every kind too)."""
    settings = small_settings(kafka_bootstrap, unique_name, tmp_path)
    k = settings.kafka
    corpus = build_corpus(stream_documents(total), plain_first=plain_first, total=total)
    assert len(corpus) == total
    positions = produce_corpus(kafka_bootstrap, k.input_topic, corpus)
    by_position = dict(zip(positions, corpus))
    bad = {pos: (kind, rec) for pos, (kind, rec) in by_position.items() if kind is not None and kind.reason}
    valid = {pos: (kind, rec) for pos, (kind, rec) in by_position.items() if kind is None or not kind.reason}

    caplog.set_level(logging.WARNING)
    started = time.monotonic()
    service = build_service(settings)
    try:
        run_until_committed(service, kafka_bootstrap, k.input_topic, k.group_id)
    finally:
        service.close()
    elapsed = time.monotonic() - started

    errors = [f"{r.name}: {r.getMessage()}" for r in caplog.records
              if r.levelno >= logging.ERROR and not r.name.startswith("kafka")]
    assert errors == [], errors
    committed, ends = committed_offsets(kafka_bootstrap, k.input_topic, k.group_id)
    assert committed == ends and sum(ends.values()) == total, "every offset committed"
    assert service.model.n_docs == len(valid), "each valid document learned once"

    # Every bad record is in the DLQ, once, with its reason, original bytes and provenance.
    dlq = read_topic(kafka_bootstrap, k.dead_letter_topic, len(bad), timeout=60)
    got = {}
    for r in dlq:
        h = dict(r.headers)
        got[(int(h["xtream.source.partition"]), int(h["xtream.source.offset"]))] = (h["xtream.error.reason"].decode(), r)
    assert len(dlq) == len(got) == len(bad), "one dead letter per bad record"
    wrong = {kind.name: (kind.reason, got.get(pos, ("missing",))[0]) for pos, (kind, _) in bad.items()
             if got.get(pos, ("missing",))[0] != kind.reason}
    assert wrong == {}, f"kind: (expected, got) {wrong}"
    for pos, (kind, rec) in bad.items():
        letter = got[pos][1]
        assert letter.value == (rec.value if rec.value is not None else b""), kind.name
        assert [(key, v) for key, v in letter.headers if not key.startswith("xtream.")] == rec.headers, kind.name

    # Every valid record is assigned, once, under its id and the language it must have.
    assignments = [json.loads(r.value) for r in read_topic(kafka_bootstrap, k.assignments_topic, len(valid), timeout=60)]
    by_source = {(a["source_partition"], a["source_offset"]): a for a in assignments}
    assert len(assignments) == len(by_source) == len(valid), "one assignment per valid record"
    assert set(by_source) == set(valid)
    for pos, (kind, rec) in valid.items():
        a = by_source[pos]
        assert a["document_id"] == rec.doc_id, (kind and kind.name, a)
        if kind is not None and kind.lang:
            assert a["lang"] == kind.lang, (kind.name, a["lang"])
    ids = Counter(a["document_id"] for a in assignments)
    dup = next(kd for kd in VALID if kd.name == "duplicate_ids")
    assert all(ids[f"dup-{i}"] == 2 for i in range(dup.count // 2)), "both copies of a duplicate id are processed"

    # Far-off timestamps did not break the latency histogram or the stream clock.
    reg = service.metrics.registry
    assert reg.get_sample_value("xtream_document_latency_seconds_count") == len(valid)
    assert math.isfinite(reg.get_sample_value("xtream_document_latency_seconds_sum"))
    assert service.stream_time is not None and service.stream_time <= datetime.now(timezone.utc)

    print(f"\n{total} records ({len(bad)} bad of {len(BAD)} kinds, {len(valid)} valid) in {elapsed:.0f}s; "
          f"dead letters by reason: {dict(sorted(service.stats.dead_letters.items()))}")


def test_a_kafka_timestamp_beyond_year_9999_is_valid_and_counted_once(kafka_bootstrap, unique_name, tmp_path):
    settings = small_settings(kafka_bootstrap, unique_name, tmp_path)
    k = settings.kafka
    docs = stream_documents(40)
    corpus = [(None, Rec(json.dumps(d).encode(), doc_id=d["id"], timestamp_ms=2**62 if i == 7 else None))
              for i, d in enumerate(docs)]
    produce_corpus(kafka_bootstrap, k.input_topic, corpus)
    service = build_service(settings)
    run_until_records(service, len(docs))   # judged on what the service did with the records, not on commits
    assert service.stats.records == len(docs)
    assert service.stats.dead_letters == {}, "a valid document was dead-lettered"
    assert service.model.n_docs == len(docs), "each document learned once"
    assert service.stats.documents == len(docs), "each document assigned once"


def test_a_language_seen_twice_before_the_warm_up_ends_is_learned_once(kafka_bootstrap, unique_name, tmp_path):
    settings = small_settings(kafka_bootstrap, unique_name, tmp_path)
    settings = settings.model_copy(update={"model": settings.model.model_copy(update=dict(warmup_docs=60))})
    k = settings.kafka
    demo = [json.loads(line) for line in DEMO_STREAM.read_text(encoding="utf-8").splitlines()]
    japanese = [d for d in demo if d["lang"] == "ja"][:2]
    docs = stream_documents(98)
    docs[10:10] = japanese[:1]
    docs[30:30] = japanese[1:]
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:   # one partition: the order the model sees is the order sent
        admin.create_topics({k.input_topic: {"num_partitions": 1, "replication_factor": 1}}, wait_for_metadata=True)
    finally:
        admin.close()
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    try:
        for d in docs:
            producer.send(k.input_topic, value=json.dumps(d).encode())
        producer.flush()
    finally:
        producer.close()
    service = build_service(settings)
    run_until_records(service, len(docs))
    assert service.stats.records == len(docs)
    assert service.stats.dead_letters == {}, "a valid document was dead-lettered"
    assert service.model.n_docs == len(docs), "each document learned once"
