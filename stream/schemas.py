"""Messages on the wire, as versioned pydantic models.

Input: :class:`Document` (JSON object in a Kafka value or a JSONL line). Output:
:class:`Assignment` (one per valid document) and :class:`TopicSnapshot` (one per model version).
Every output carries ``schema_version`` so consumers can evolve with us.

Parsing never raises anything but :class:`InvalidRecord`, whose ``reason`` is a short
machine-readable code (``invalid_utf8``, ``invalid_json``, ``not_an_object``, ``invalid_field``,
``empty_text``, ``unknown_language``, ``too_large``, ``too_deep``, ``tombstone``) that the dead-letter
queue puts in its headers.

What a document may hold is bounded: a text of only whitespace or invisible characters is
``empty_text``; an ``id`` must be printable and not blank (it becomes the output Kafka key);
``metadata`` holds at most ``MAX_METADATA_ITEMS`` keys and items (``invalid_field``) within the
JSON depth limit (``too_deep``); a numeric ``timestamp`` is Unix seconds or milliseconds within
``TIMESTAMP_RANGE`` (``invalid_field`` otherwise).
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_serializer, field_validator

from xtream.errors import XtreamError
from xtream.stream.errors import RecordTooLarge

__all__ = [
    "MAX_RECORD_BYTES",
    "MAX_TEXT_CHARS",
    "Assignment",
    "Document",
    "EmbeddedDocument",
    "InvalidRecord",
    "LineageRecord",
    "SnapshotTopic",
    "TopicSnapshot",
    "TopicWords",
    "parse_document",
]

SCHEMA_VERSION = 1
MAX_TEXT_CHARS = 100_000
MAX_RECORD_BYTES = 1_000_000
MAX_JSON_DEPTH = 32
MAX_ID_CHARS = 512
MAX_METADATA_ITEMS = 256      # keys and list items, at every level of ``metadata`` together
MAX_METADATA_KEY_CHARS = 256
#: Numeric timestamps are Unix seconds or milliseconds, and must fall in this window (UTC).
TIMESTAMP_RANGE = (datetime(1990, 1, 1, tzinfo=timezone.utc), datetime(2100, 1, 1, tzinfo=timezone.utc))

#: Characters that carry no content: whitespace, controls, zero-width and format characters
#: (ZWSP/ZWNJ/ZWJ, BOM, bidi marks and overrides, word joiners, soft hyphen, variation selectors,
#: tags) and blank "letters" (Hangul fillers, braille blank). A text of only these is empty.
_BLANK = re.compile("[\\s\x00-\x1f\x7f-\x9f\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f"
                    "\u200b-\u200f\u202a-\u202e\u2060-\u206f\u2800\u3164\ufe00-\ufe0f\ufeff\uffa0"
                    "\U000e0000-\U000e007f]*")

#: ISO 639-1 codes: a ``lang`` outside this set is a lie or a typo, not a language.
ISO_639_1 = frozenset("""
aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs cu cv cy da de
dv dz ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu hy hz ia id
ie ig ii ik io is it iu ja jv ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb lg li ln lo lt lu
lv mg mh mi mk ml mn mr ms mt my na nb nd ne ng nl nn no nr nv ny oc oj om or os pa pi pl ps pt qu
rm rn ro ru rw sa sc sd se sg si sk sl sm sn so sq sr ss st su sv sw ta te tg th ti tk tl tn to tr
ts tt tw ty ug uk ur uz ve vi vo wa wo xh yi yo za zh zu""".split())


class InvalidRecord(XtreamError, ValueError):
    """A record that cannot become a :class:`Document`; ``reason`` is a stable code for the DLQ."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Document(BaseModel):
    """One input document. Only ``id`` and ``text`` are required."""

    model_config = ConfigDict(extra="ignore", frozen=True, str_strip_whitespace=False)

    id: str = Field(min_length=1, max_length=MAX_ID_CHARS,
                    description="printable (no newline, NUL, ESC, bidi override...), not blank; becomes the output key")
    text: str = Field(max_length=MAX_TEXT_CHARS)
    lang: str | None = Field(default=None, max_length=16,
                             description="ISO 639-1 code; detected from the text when missing")
    timestamp: datetime | None = None
    source: str | None = Field(default=None, max_length=256)
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("text")
    @classmethod
    def _text_has_content(cls, v: str) -> str:
        if "\x00" in v:   # before the emptiness check: a text of NULs is empty, not "   "
            v = v.replace("\x00", " ")
        if _BLANK.fullmatch(v):
            raise ValueError("text is empty or whitespace only (or only invisible characters)")
        return v

    @field_validator("id")
    @classmethod
    def _printable_id(cls, v: str) -> str:
        if not v.isprintable():
            bad = next(c for c in v if not c.isprintable())
            raise ValueError(f"id holds the non-printable character U+{ord(bad):04X}")
        if not v.strip():
            raise ValueError("id is blank")
        return v

    @field_validator("metadata")
    @classmethod
    def _bounded_metadata(cls, v: dict[str, Any]) -> dict[str, Any]:
        items = 0
        stack: list[Any] = [v]
        while stack:
            node = stack.pop()
            children = node.values() if isinstance(node, dict) else node
            if isinstance(node, dict) and any(len(k) > MAX_METADATA_KEY_CHARS for k in node):
                raise ValueError(f"metadata has a key longer than {MAX_METADATA_KEY_CHARS} characters")
            items += len(node)
            if items > MAX_METADATA_ITEMS:
                raise ValueError(f"metadata holds more than {MAX_METADATA_ITEMS} keys and items")
            stack.extend(c for c in children if isinstance(c, (dict, list)))
        return v

    @field_validator("lang")
    @classmethod
    def _lang_code(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        code = v.strip().lower().replace("_", "-").split("-")[0]
        code = {"cn": "zh", "jp": "ja", "zho": "zh", "jpn": "ja", "eng": "en"}.get(code, code)
        if code not in ISO_639_1:
            raise ValueError(f"unknown_language: lang {v!r} is not an ISO 639-1 code")
        return code

    @field_validator("timestamp", mode="before")
    @classmethod
    def _unix_seconds_or_millis(cls, v: Any) -> Any:
        """A number (or a string of digits) is Unix seconds, or milliseconds if that lands in
        :data:`TIMESTAMP_RANGE` instead; outside it as both it is refused, not guessed."""
        if isinstance(v, bool):
            raise ValueError("timestamp is a boolean")
        if isinstance(v, str) and re.fullmatch(r"-?[0-9]{1,20}(\.[0-9]{1,9})?", v.strip(), re.ASCII):
            v = float(v.strip())
        if isinstance(v, (int, float)):
            lo, hi = (t.timestamp() for t in TIMESTAMP_RANGE)
            for seconds in (v, v / 1000):
                if lo <= seconds < hi:
                    return datetime.fromtimestamp(seconds, timezone.utc)
            raise ValueError(f"numeric timestamp {v!r:.40} is neither Unix seconds nor milliseconds between "
                             f"{TIMESTAMP_RANGE[0].year} and {TIMESTAMP_RANGE[1].year}")
        return v

    @field_validator("timestamp")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            v = v.replace(tzinfo=timezone.utc)
        return v


def _depth(obj: Any, limit: int) -> int:
    """Nesting depth of parsed JSON, stopping early past ``limit``."""
    stack, deepest = [(obj, 1)], 1
    while stack:
        node, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > limit:
            return deepest
        if isinstance(node, dict):
            stack.extend((v, d + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, d + 1) for v in node)
    return deepest


def _reject_constant(name: str) -> float:
    raise ValueError(f"non-finite number {name} is not JSON")


def _finite_float(literal: str) -> float:
    """``1e999`` overflows to inf in Python: refuse it like the ``Infinity`` literal."""
    value = float(literal)
    if not math.isfinite(value):
        raise ValueError(f"number {literal[:40]} overflows a double")
    return value


def parse_document(raw: bytes | None, *, max_bytes: int = MAX_RECORD_BYTES) -> Document:
    """Bytes of a Kafka value or JSONL line -> :class:`Document`, or :class:`InvalidRecord`."""
    if raw is None:
        raise InvalidRecord("tombstone", "record has a null value")
    if len(raw) > max_bytes:
        raise InvalidRecord("too_large", f"{len(raw)} bytes > limit {max_bytes}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRecord("invalid_utf8", str(exc)) from None
    try:
        obj = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:   # nesting deeper than the interpreter's stack: valid JSON, too deep for us
        raise InvalidRecord("too_deep", f"JSON nested deeper than {MAX_JSON_DEPTH}") from None
    except ValueError as exc:
        raise InvalidRecord("invalid_json", str(exc)[:200]) from None
    if not isinstance(obj, dict):
        raise InvalidRecord("not_an_object", f"top-level JSON is {type(obj).__name__}")
    if _depth(obj, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise InvalidRecord("too_deep", f"JSON nested deeper than {MAX_JSON_DEPTH}")
    try:
        return Document.model_validate(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "document"
        reason = "invalid_field"
        if field == "text" and "empty" in first["msg"]:
            reason = "empty_text"
        elif field == "lang" and "unknown_language" in first["msg"]:
            reason = "unknown_language"
        elif field == "text" and first["type"] == "string_too_long":
            reason = "too_large"   # an over-long id, lang or source is a bad field, not a big record
        raise InvalidRecord(reason, f"{field}: {first['msg']}") from None


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)
    schema_version: int = SCHEMA_VERSION


class EmbeddedDocument(_Out):
    """What an embedder worker hands the trainer: everything but the text, ~1.5 KB per document.

    The embedding travels as base64 little-endian float16 (half the bytes of float32; the topic
    model is insensitive to the rounding); tokens travel because tokenising is CPU work that
    scales out with the embedders.
    """

    id: str
    lang: str
    tokens: list[str]
    embedding: str = Field(description="base64 of little-endian float16 values")
    dim: int
    timestamp: datetime | None = None
    source_topic: str
    source_partition: int
    source_offset: int
    source_timestamp_ms: int | None = None
    text_prefix: str | None = Field(None, max_length=200,
                                    description="the first characters of the text: for the topics' "
                                                "representative documents")

    @classmethod
    def encode_vector(cls, vector: Any) -> str:
        import base64

        import numpy as np

        return base64.b64encode(np.asarray(vector, dtype="<f2").tobytes()).decode()

    def vector(self) -> Any:
        """The embedding as float32; raises ``ValueError`` if it does not decode to ``dim`` values."""
        import base64
        import binascii

        import numpy as np

        try:
            raw = base64.b64decode(self.embedding, validate=True)
        except binascii.Error as exc:
            raise ValueError(f"embedding is not base64: {exc}") from None
        if len(raw) != 2 * self.dim:
            raise ValueError(f"embedding has {len(raw) // 2} values, dim says {self.dim}")
        vec = np.frombuffer(raw, dtype="<f2").astype(np.float32)
        if not np.isfinite(vec).all():
            raise ValueError("embedding has non-finite values")
        return vec


class Assignment(_Out):
    """What the service decided for one document: its cluster and topic mixture."""

    document_id: str
    lang: str
    cluster: int
    topics: list[tuple[int, float]] = Field(description="top topics as (topic id, weight)")
    model_version: int
    source_topic: str | None = None
    source_partition: int | None = None
    source_offset: int | None = None
    event_time: datetime | None = None
    processed_at: datetime


class TopicWords(BaseModel):
    model_config = ConfigDict(frozen=True)
    words: list[str]
    weights: list[float]


class TopicDocument(BaseModel):
    """A representative document of a topic: its id and the first characters of its text."""

    model_config = ConfigDict(frozen=True)
    id: str
    text: str = Field(description="the first characters (200 at most) of the document's text")


class SnapshotTopic(BaseModel):
    """One topic inside a snapshot."""

    model_config = ConfigDict(frozen=True)
    topic_id: int = Field(description="stable id: kept while the topic stays the same across snapshots")
    slot: int = Field(-1, description="the model's topic index holding this topic now")
    alive: bool = True
    words: dict[str, TopicWords] = Field(description="top words per language")
    prevalence: float = Field(description="share of recent attention (running mean of theta)")
    prevalence_by_lang: dict[str, float] = Field(default_factory=dict, description="the same, per language")
    size: float = Field(description="(decayed) documents in the topic's cluster")
    embedding: list[float] | None = Field(default=None, description=(
        "cluster centroid (unit norm, 4 decimals); left out when the snapshot must shrink to fit the topic's "
        "record limit"))
    drift: dict[str, float] = Field(default_factory=dict,
                                    description="JS divergence of each language's word distribution vs the "
                                                "previous snapshot")
    labels: dict[str, str] = Field(default_factory=dict,
                                   description="per language: a short label, the topic's 2-3 most distinctive words")
    documents: dict[str, list[TopicDocument]] = Field(
        default_factory=dict, description="per language: documents nearest the topic's centre (id, text prefix)")

    @field_serializer("embedding")
    def _rounded(self, embedding: list[float] | None) -> list[float] | None:
        return None if embedding is None else [round(v, 4) for v in embedding]


class LineageRecord(_Out):
    """A topic's life event (born, died, merged_into, split_from, renamed) at a snapshot."""

    kind: str
    topic_id: int
    related_topic_id: int | None = None
    model_version: int
    at: datetime
    words: list[str] = Field(default_factory=list)
    previous_words: list[str] = Field(default_factory=list)


class TopicSnapshot(_Out):
    """The model's topics at one version: what Grafana, the API and replays read."""

    model_version: int
    created_at: datetime
    stream_time: datetime | None = Field(None, description="latest document event time covered (for replays)")
    documents_seen: int
    offsets: dict[str, int] = Field(default_factory=dict, description="'topic:partition' -> next offset covered")
    languages: list[str]
    topics: list[SnapshotTopic]

    def to_json_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    def fitted_json_bytes(self, max_bytes: int | None) -> bytes:
        """The JSON, shrunk until it is at most ``max_bytes``: first without the centroids, then with
        fewer words per topic (never fewer than 3). Raises :class:`RecordTooLarge` if even that is too big."""
        data = self.to_json_bytes()
        if max_bytes is None or len(data) <= max_bytes:
            return data
        snap = self.model_copy(update={"topics": [t.model_copy(update={"embedding": None}) for t in self.topics]})
        data = snap.to_json_bytes()
        words = max((len(w.words) for t in snap.topics for w in t.words.values()), default=0)
        while len(data) > max_bytes and words > 3:
            words = max(3, words * 2 // 3)
            data = snap.model_copy(update={"topics": [_top_words(t, words) for t in snap.topics]}).to_json_bytes()
        if len(data) > max_bytes:
            raise RecordTooLarge(f"snapshot v{self.model_version} is {len(data)} bytes even without centroids and "
                                 f"with 3 words per topic; the topic's limit is {max_bytes}")
        return data


def _top_words(topic: SnapshotTopic, n: int) -> SnapshotTopic:
    return topic.model_copy(update={"words": {lang: TopicWords(words=w.words[:n], weights=w.weights[:n])
                                              for lang, w in topic.words.items()}})


def finite(x: float) -> float:
    """JSON has no NaN/inf: map them to 0 so outputs always serialise."""
    return x if math.isfinite(x) else 0.0
