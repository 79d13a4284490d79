"""Per-language tokenisation and language detection.

Topic models see bags of words, so every language must be cut into comparable content words
before it reaches a :class:`~model.vocabulary.Vocabulary`: space-delimited languages by a
letter regex, Chinese by jieba (``rjieba``) and Japanese by Sudachi, each followed by a
stop-word filter (the stopwords-iso lists for every language of the default embedder) and, in
Chinese and Japanese, a part-of-speech filter that drops numbers, units and function words and
keeps a single character only where it is a noun (Chinese) or an independent word (Japanese).
Text that is already segmented (the research corpora are) passes through split on whitespace,
because re-segmenting it would disagree with the fixed research vocabulary.
"""

from __future__ import annotations

import copy
import functools
import logging
import re
import threading
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import rjieba
import stopwordsiso
from py3langid.langid import MODEL_FILE, LanguageIdentifier

__all__ = ["DEFAULT_STOPWORDS", "SUPPORTED_LANGUAGES", "Tokenizer", "detect_language"]

logger = logging.getLogger(__name__)

#: The languages of the default embedder (multilingual USE v3; zh-tw is reduced to zh).
SUPPORTED_LANGUAGES: tuple[str, ...] = (
    "ar", "de", "en", "es", "fr", "it", "ja", "ko", "nl", "pl", "pt", "ru", "th", "tr", "zh",
)


def _stopwords_iso(lang: str) -> frozenset[str]:
    """The stopwords-iso list of ``lang`` (the maintained multilingual lists), lowercased."""
    return frozenset(w.lower() for w in stopwordsiso.stopwords(lang))


#: Built-in stop words by ISO 639-1 code, from stopwords-iso; languages not listed get none.
DEFAULT_STOPWORDS: Mapping[str, frozenset[str]] = {lang: _stopwords_iso(lang) for lang in SUPPORTED_LANGUAGES}

#: jieba part-of-speech tags of Chinese words that carry no topic: numerals (m, mq), measure
#: words and units (q), pronouns (r), prepositions (p), conjunctions (c), auxiliaries (u*),
#: adverbs (d), time words (t), direction words (f), interjections, modal and onomatopoeic
#: particles (e, y, o) and punctuation (x).
_ZH_FUNCTION_POS = frozenset({"m", "mq", "q", "r", "p", "c", "d", "t", "f", "e", "y", "o", "x",
                              "u", "uj", "ul", "uz", "ud", "ug", "uv"})
#: Chinese numeral characters: a word made only of them is a number, whatever jieba tags it.
_ZH_NUMERAL_RE = re.compile("[零〇一二三四五六七八九十百千万亿两]+")
#: A single-character Chinese word is kept only when jieba knows it as a noun.
_ZH_NOUN_POS = frozenset({"n", "ng", "nr", "nrt", "ns", "nt", "nz"})

_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
# Kana blocks minus U+30FB/U+30FC (middle dot, long vowel mark), which Chinese text borrows.
_KANA = "\u3041-\u309f\u30a0-\u30fa\u30fd-\u30ff\u31f0-\u31ff\uff66-\uff9f"
_KANA_RE = re.compile(f"[{_KANA}]")
_HAN_RE = re.compile(f"[{_HAN}]")
_HANGUL_RE = re.compile("[\u1100-\u11ff\u3130-\u318f\uac00-\ud7af]")
_CJK_RE = re.compile(f"[{_HAN}{_KANA}]")
_WORD_RE = re.compile(r"[^\W\d_]+")  # runs of letters: no digits, underscores or punctuation
_LETTER_RE = re.compile(r"[^\W\d_]")

_LANG_ALIASES = {"jp": "ja", "jpn": "ja", "zho": "zh", "chi": "zh", "cmn": "zh", "eng": "en"}
_SEGMENTED_LANGS = frozenset({"zh", "ja"})

# Pre-segmented input: mostly CJK tokens, enough of them multi-character (rules out text split
# into single characters) and short on average (rules out sentences separated by spaces).
_PRESEG_CJK_SHARE = 0.6
_PRESEG_MULTI_SHARE = 0.4
_PRESEG_MAX_MEAN_LEN = 5.0

_JA_POS = frozenset({"名詞", "動詞", "形容詞", "形状詞"})
_JA_MAX_CHARS = 10_000  # Sudachi rejects inputs over 49,149 bytes; 4 bytes a char at most
_JA_SENTENCE_END_RE = re.compile(r"(?<=[。！？!?\n])")


def _normalise_lang(lang: str) -> str:
    """Map ``"zh-CN"``, ``"ZH_tw"`` or ``"jpn"`` to the bare ISO 639-1 code."""
    if not isinstance(lang, str) or not lang.strip():
        raise ValueError(f"language code must be a non-empty string, got {lang!r}")
    primary = re.split(r"[-_]", lang.strip().lower(), maxsplit=1)[0]
    return _LANG_ALIASES.get(primary, primary)


@functools.lru_cache(maxsize=1)
def _full_identifier() -> LanguageIdentifier:
    logger.debug("loading py3langid model")
    return LanguageIdentifier.from_model_file(MODEL_FILE)


@functools.lru_cache(maxsize=16)
def _identifier(languages: frozenset[str] | None) -> LanguageIdentifier:
    """One identifier per language set; restricted ones are shallow copies of the full model."""
    full = _full_identifier()
    if languages is None:
        return full
    restricted = copy.copy(full)
    restricted.set_languages(sorted(languages))  # replaces arrays, never mutates the shared ones
    return restricted


def detect_language(text: str, languages: Iterable[str] | None = None) -> str:
    """Guess the ISO 639-1 code of ``text``.

    Script decides first because it is cheap and near-certain for the CJK languages the
    service cares about: any kana means Japanese, Han characters without kana or Hangul mean
    Chinese. Everything else goes to ``py3langid``, restricted to ``languages`` when given.

    Parameters
    ----------
    text
        The document.
    languages
        Optional set of allowed codes; the script fast path only answers with an allowed code.

    Returns
    -------
    str
        A language code (a few rare languages have only three-letter codes), or ``"und"`` when
        the text contains no letters at all.

    Examples
    --------
    >>> detect_language("東京の天気")
    'ja'
    >>> detect_language("The weather in Tokyo is mild today.", languages=["en", "fr"])
    'en'
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be str, got {type(text).__name__}")
    allowed = None if languages is None else frozenset(_normalise_lang(x) for x in languages)
    if allowed is not None and not allowed:
        raise ValueError("languages must not be empty")
    if _KANA_RE.search(text) and (allowed is None or "ja" in allowed):
        return "ja"
    if (
        _HAN_RE.search(text)
        and not _KANA_RE.search(text)
        and not _HANGUL_RE.search(text)
        and (allowed is None or "zh" in allowed)
    ):
        return "zh"
    if not _LETTER_RE.search(text):
        return "und"
    label = _identifier(allowed).classify(text)[0]
    return "und" if label == "zxx" else label


def _zh_content_pos(word: str, pos: str) -> bool:
    """A Chinese word of this jieba tag can name a topic (see ``_ZH_FUNCTION_POS``)."""
    if pos in _ZH_FUNCTION_POS or _ZH_NUMERAL_RE.fullmatch(word):
        return False
    return len(word) > 1 or not _HAN_RE.match(word) or pos in _ZH_NOUN_POS


@functools.lru_cache(maxsize=262_144)
def _zh_content_word(word: str) -> bool:
    """The same test for a word cut by someone else: jieba's tags of its pieces decide; a word
    made only of numerals and units is a number."""
    tagged = rjieba.tag(word)
    if len(tagged) == 1:
        return _zh_content_pos(word, tagged[0][1])
    return not all(pos in ("m", "mq", "q", "x") for _, pos in tagged)


def _looks_presegmented(pieces: Sequence[str]) -> bool:
    if len(pieces) < 2:
        return False
    cjk = [p for p in pieces if _CJK_RE.search(p)]
    if len(cjk) < _PRESEG_CJK_SHARE * len(pieces):
        return False
    multi = sum(len(p) >= 2 for p in cjk)
    mean_len = sum(map(len, cjk)) / len(cjk)
    return multi >= _PRESEG_MULTI_SHARE * len(cjk) and mean_len <= _PRESEG_MAX_MEAN_LEN


def _ja_chunks(text: str) -> list[str]:
    """Cut long text at sentence ends so that each piece fits Sudachi's input limit."""
    if len(text) <= _JA_MAX_CHARS:
        return [text]
    chunks: list[str] = []
    current = ""
    for sentence in _JA_SENTENCE_END_RE.split(text):
        if len(current) + len(sentence) > _JA_MAX_CHARS and current:
            chunks.append(current)
            current = ""
        current += sentence
        while len(current) > _JA_MAX_CHARS:  # one sentence longer than the limit: hard cut
            chunks.append(current[:_JA_MAX_CHARS])
            current = current[_JA_MAX_CHARS:]
    if current:
        chunks.append(current)
    return chunks


class Tokenizer:
    """Turn raw text into lists of lowercase content words, per language.

    Rules by language (codes such as ``"zh-CN"`` are reduced to ``"zh"``):

    * ``zh``: jieba segmentation; tokens without any letter or CJK character are dropped, and so
      are words jieba tags as numerals, units or function words; a single character stays only
      when jieba tags it as a noun.
    * ``ja``: Sudachi (``sudachidict_core``, split mode C); nouns (not numerals or counters),
      verbs (not the auxiliary-capable ones: する, なる, いる, ...), adjectives and adjectival
      nouns are kept in dictionary form.
    * ``zh``/``ja`` text that is already segmented is split on whitespace, not re-segmented.
    * anything else: runs of letters (NFKC-normalised, lowercase); numbers, punctuation and
      tokens shorter than ``min_length`` are dropped. Apostrophes and hyphens split words.

    Every language then loses its stop words (:data:`DEFAULT_STOPWORDS`, from stopwords-iso).
    Instances are safe to share between threads:
    Sudachi tokenizers are not, so each thread lazily gets its own over one shared dictionary.

    Parameters
    ----------
    stopwords
        Stop words by language code; a language given here replaces the built-in filtering
        (:data:`DEFAULT_STOPWORDS` and the part-of-speech filter) by this list alone, so an empty
        iterable keeps every word.
    ja_form
        ``"dictionary"`` (lemma as written, e.g. りんご) or ``"normalized"`` (Sudachi's
        normalised spelling, e.g. 林檎, which merges orthographic variants).
    min_length
        Minimum length of a token in space-delimited languages.

    Examples
    --------
    >>> Tokenizer().tokenize("The cats aren't sleeping; 42 dogs are!", "en")
    ['cats', 'sleeping', 'dogs']
    """

    def __init__(
        self,
        stopwords: Mapping[str, Iterable[str]] | None = None,
        *,
        ja_form: Literal["dictionary", "normalized"] = "dictionary",
        min_length: int = 2,
    ) -> None:
        if ja_form not in ("dictionary", "normalized"):
            raise ValueError(f"ja_form must be 'dictionary' or 'normalized', got {ja_form!r}")
        if not isinstance(min_length, int) or min_length < 1:
            raise ValueError(f"min_length must be a positive int, got {min_length!r}")
        self.stopwords = stopwords
        self.ja_form = ja_form
        self.min_length = min_length
        self._stopwords: dict[str, frozenset[str]] = dict(DEFAULT_STOPWORDS)
        self._pos_filter = {"zh", "ja"}
        for lang, words in (stopwords or {}).items():
            self._stopwords[_normalise_lang(lang)] = frozenset(w.lower() for w in words)
            self._pos_filter.discard(_normalise_lang(lang))
        self._ja_lock = threading.Lock()
        self._ja_dictionary: Any = None
        self._ja_matcher: Any = None
        self._ja_content_matcher: Any = None
        self._ja_local = threading.local()

    def tokenize(self, text: str, lang: str) -> list[str]:
        """Tokenise one document written in ``lang`` (an ISO 639-1 code)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be str, got {type(text).__name__}")
        lang = _normalise_lang(lang)
        stop = self._stopwords.get(lang, frozenset())
        text = unicodedata.normalize("NFKC", text)
        if lang not in _SEGMENTED_LANGS:
            minimum = self.min_length
            words = _WORD_RE.findall(text.lower())
            return [t for t in words if len(t) >= minimum and t not in stop]
        pieces = text.split()
        content = lang in self._pos_filter
        if _looks_presegmented(pieces):
            raw = [p for p in pieces if _zh_content_word(p)] if content and lang == "zh" else pieces
        elif lang == "zh":
            raw = [w for w, pos in rjieba.tag(text) if _zh_content_pos(w, pos)] if content else rjieba.cut(text)
        else:
            raw = self._segment_ja(text, content)
        return self._filter_cjk(raw, stop)

    def tokenize_many(
        self, texts: Sequence[str], langs: str | Sequence[str | None] | None = None
    ) -> list[list[str]]:
        """Tokenise a batch; ``langs`` is one code for all or one per text (``None``: detect)."""
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of str, not a single str")
        if langs is None or isinstance(langs, str):
            langs = [langs] * len(texts)
        if len(langs) != len(texts):
            raise ValueError(f"got {len(texts)} texts but {len(langs)} language codes")
        return [
            self.tokenize(text, detect_language(text) if lang is None else lang)
            for text, lang in zip(texts, langs, strict=True)
        ]

    def _filter_cjk(self, tokens: Iterable[str], stop: frozenset[str]) -> list[str]:
        # Single characters are words in Chinese and Japanese; only Latin ones are dropped.
        minimum = self.min_length
        return [
            t
            for t in (tok.lower() for tok in tokens)
            if t not in stop and _LETTER_RE.search(t) and (len(t) >= minimum or _CJK_RE.search(t))
        ]

    def _ja_tokenizer(self) -> Any:
        tokenizer = getattr(self._ja_local, "tokenizer", None)
        if tokenizer is None:
            import sudachipy  # heavy: only loaded by instances that meet Japanese

            with self._ja_lock:
                if self._ja_dictionary is None:
                    logger.debug("loading Sudachi core dictionary")
                    dictionary = sudachipy.Dictionary(dict="core")
                    self._ja_matcher = dictionary.pos_matcher(
                        lambda pos: pos[0] in _JA_POS and pos[1] != "数詞"
                    )
                    self._ja_content_matcher = dictionary.pos_matcher(
                        lambda pos: pos[0] in _JA_POS and pos[1] not in ("数詞", "非自立可能")
                        and pos[2] != "助数詞可能"
                    )
                    self._ja_dictionary = dictionary
                tokenizer = self._ja_dictionary.tokenizer(mode=sudachipy.SplitMode.C)
            self._ja_local.tokenizer = tokenizer
        return tokenizer

    def _segment_ja(self, text: str, content: bool = True) -> list[str]:
        tokenizer = self._ja_tokenizer()
        matcher = self._ja_content_matcher if content else self._ja_matcher
        dictionary_form = self.ja_form == "dictionary"
        out: list[str] = []
        for chunk in _ja_chunks(text):
            out.extend(
                m.dictionary_form() if dictionary_form else m.normalized_form()
                for m in tokenizer.tokenize(chunk)
                if matcher(m)
            )
        return out
