"""Specification of per-language tokenisation and language detection."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from xtream.model.text import DEFAULT_STOPWORDS, Tokenizer, detect_language

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer()


# --------------------------------------------------------------------------- English and others
def test_english_drops_stopwords_and_punctuation(tokenizer):
    tokens = tokenizer.tokenize("The Market rallied, and THE investors were happy!!!", "en")
    assert tokens == ["market", "rallied", "investors", "happy"]


def test_english_drops_numbers_and_short_tokens(tokenizer):
    assert tokenizer.tokenize("In 2024 a 5G phone x cost $999.99", "en") == ["phone", "cost"]


def test_english_splits_on_apostrophes_and_hyphens(tokenizer):
    tokens = tokenizer.tokenize("O'Brien's chip-design lab didn't close", "en")
    assert tokens == ["brien", "chip", "design", "lab", "close"]


def test_accented_letters_are_part_of_words(tokenizer):
    assert tokenizer.tokenize("Le café naïve à Zürich", "fr") == ["café", "naïve", "zürich"]


def test_fullwidth_letters_are_normalised(tokenizer):
    assert tokenizer.tokenize("ＧＰＵ Ｍｏｄｅｌ", "en") == ["gpu", "model"]


def test_unknown_language_uses_the_space_delimited_rule(tokenizer):
    assert tokenizer.tokenize("Hallo Welt, wie geht's?", "xx") == ["hallo", "welt", "wie", "geht"]


def test_region_subtags_are_ignored(tokenizer):
    assert tokenizer.tokenize("the cat", "EN-us") == ["cat"]


def test_custom_stopwords_replace_the_builtin_list():
    tokens = Tokenizer(stopwords={"en": ["cat"]}).tokenize("the cat sat", "en")
    assert tokens == ["the", "sat"]


# --------------------------------------------------------------------------- Chinese
def test_chinese_segments_words_with_jieba(tokenizer):
    tokens = tokenizer.tokenize("人工智能技术正在改变我们的生活，苹果公司发布了新款手机。", "zh")
    assert {"人工智能", "技术", "改变", "生活", "发布"} <= set(tokens)
    assert "公司" in tokens or "苹果公司" in tokens  # jieba may keep the company name whole


def test_chinese_drops_stopwords_and_punctuation(tokenizer):
    tokens = tokenizer.tokenize("我们的经济在增长，但是他们的也是！", "zh")
    assert "经济" in tokens and "增长" in tokens
    assert not {"我们", "的", "在", "但是", "他们", "也", "是", "，", "！"} & set(tokens)


def test_chinese_keeps_latin_words_lowercased(tokenizer):
    tokens = tokenizer.tokenize("华为发布5G芯片和HarmonyOS系统", "zh")
    assert "harmonyos" in tokens
    assert "芯片" in tokens


def test_presegmented_chinese_passes_through(tokenizer):
    text = "苹果 公司 发布 新款 手机 的 iPhone"
    assert tokenizer.tokenize(text, "zh") == ["苹果", "公司", "发布", "新款", "手机", "iphone"]


def test_presegmented_input_is_not_resegmented(tokenizer):
    # jieba would merge these characters into 人工智能; the given segmentation must win.
    assert tokenizer.tokenize("人工 智能 技术", "zh") == ["人工", "智能", "技术"]


def test_sentences_separated_by_spaces_are_still_segmented(tokenizer):
    tokens = tokenizer.tokenize("中国经济今年持续增长。 人工智能技术是其中的亮点。", "zh")
    assert {"中国", "经济", "人工智能", "技术"} <= set(tokens)


# --------------------------------------------------------------------------- Japanese
def test_japanese_keeps_content_words(tokenizer):
    tokens = tokenizer.tokenize("東京の経済は急速に成長している。新しい技術を開発しました。", "ja")
    assert {"東京", "経済", "成長", "技術", "開発", "新しい"} <= set(tokens)
    assert not {"は", "を", "の", "に", "する", "いる", "た", "。"} & set(tokens)


def test_japanese_uses_dictionary_forms_and_drops_numerals(tokenizer):
    tokens = tokenizer.tokenize("三つのりんごを食べました", "ja")
    assert "食べる" in tokens and "りんご" in tokens
    assert "三" not in tokens


def test_japanese_normalized_form_merges_spelling_variants():
    tokens = Tokenizer(ja_form="normalized").tokenize("りんごを食べる", "ja")
    assert "林檎" in tokens


def test_presegmented_japanese_passes_through(tokenizer):
    assert tokenizer.tokenize("東京 の 経済 は 急速 に 成長", "ja") == ["東京", "経済", "急速", "成長"]


def test_long_japanese_text_is_chunked_under_sudachi_limit(tokenizer):
    tokens = tokenizer.tokenize("東京の経済は成長した。" * 3000, "ja")  # ~99 kB of UTF-8
    assert tokens.count("東京") == 3000


def test_japanese_is_thread_safe(tokenizer):
    text = "東京の経済は急速に成長している。"
    expected = tokenizer.tokenize(text, "ja")
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            results.extend(tokenizer.tokenize(text, "ja") for _ in range(50))
        except BaseException as exc:  # surfaced in the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert results == [expected] * 400


# --------------------------------------------------------------------------- batches and errors
def test_tokenize_many_matches_tokenize(tokenizer):
    texts = ["The cats sleep", "苹果公司发布手机", "東京の経済"]
    langs = ["en", "zh", "ja"]
    assert tokenizer.tokenize_many(texts, langs) == [
        tokenizer.tokenize(t, lang) for t, lang in zip(texts, langs, strict=True)
    ]


def test_tokenize_many_detects_missing_languages(tokenizer):
    assert tokenizer.tokenize_many(["東京の経済", "北京经济"], [None, None]) == [
        tokenizer.tokenize("東京の経済", "ja"),
        tokenizer.tokenize("北京经济", "zh"),
    ]


def test_tokenize_many_rejects_mismatched_lengths(tokenizer):
    with pytest.raises(ValueError, match="2 texts but 1"):
        tokenizer.tokenize_many(["a", "b"], ["en"])


def test_empty_text_gives_no_tokens(tokenizer):
    assert tokenizer.tokenize("", "en") == tokenizer.tokenize("  ", "zh") == []


def test_invalid_arguments_raise(tokenizer):
    with pytest.raises(ValueError):
        tokenizer.tokenize("text", "")
    with pytest.raises(TypeError):
        tokenizer.tokenize(b"bytes", "en")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Tokenizer(ja_form="surface")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- language detection
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The central bank raised interest rates again this quarter.", "en"),
        ("人工智能技术正在改变我们的生活", "zh"),
        ("東京の経済は急速に成長している", "ja"),
        ("カタカナだけ", "ja"),
        ("Le gouvernement a annoncé une nouvelle réforme des retraites.", "fr"),
    ],
)
def test_detect_language_en_zh_ja(text, expected):
    assert detect_language(text) == expected


def test_detect_language_respects_the_allowed_set():
    assert detect_language("hello world programming", languages=["en", "zh", "ja"]) == "en"
    # Han-only text is Chinese unless Chinese is not allowed.
    assert detect_language("東京株式市場", languages=["en", "zh", "ja"]) == "zh"
    assert detect_language("東京株式市場", languages=["en", "ja"]) == "ja"


def test_detect_language_without_letters_is_undetermined():
    assert detect_language("12345 !!!") == "und"
    assert detect_language("") == "und"


def test_detect_language_rejects_an_empty_allowed_set():
    with pytest.raises(ValueError):
        detect_language("hello", languages=[])


# --------------------------------------------------------------------------- research corpora
@pytest.mark.parametrize(("lang_file", "lang"), [("cn", "zh"), ("en", "en")])
def test_research_texts_reproduce_published_bag_of_words(lang_file, lang):
    """Pre-processed research text, tokenised with no stop words, gives the published matrix."""
    folder = SHARED_DATA / "ecnews"
    if not folder.is_dir():
        pytest.skip(f"research data not found at {folder}")
    sp = pytest.importorskip("scipy.sparse")
    from xtream.model.vocabulary import Vocabulary

    vocab = Vocabulary.from_file(folder / f"vocab_{lang_file}")
    lines = (folder / f"test_texts_{lang_file}.txt").read_text(encoding="utf-8").splitlines()
    tokenizer = Tokenizer(stopwords={lang: ()}, min_length=1)
    counts = vocab.transform(tokenizer.tokenize_many(lines, lang))
    published = sp.load_npz(folder / f"test_bow_matrix_{lang_file}.npz")
    assert (counts != published).nnz == 0


def test_stopwords_come_from_stopwords_iso_for_every_language_of_the_default_embedder(tokenizer):
    import stopwordsiso

    from xtream.model.text import SUPPORTED_LANGUAGES

    use_v3 = {"ar", "zh", "en", "fr", "de", "it", "ja", "ko", "nl", "pl", "pt", "es", "th", "tr", "ru"}
    assert set(SUPPORTED_LANGUAGES) == use_v3 and set(DEFAULT_STOPWORDS) == use_v3
    for lang in use_v3:
        iso = {w.lower() for w in stopwordsiso.stopwords(lang)}
        assert iso and DEFAULT_STOPWORDS[lang] == iso, lang
        word = sorted(w for w in iso if " " not in w and len(w) >= 2)[0]
        assert word not in tokenizer.tokenize(f"{word} {word}", lang), (lang, word)
    assert DEFAULT_STOPWORDS["zh"] is Tokenizer()._stopwords["zh"]   # zh-tw is reduced to zh
    assert "的" not in tokenizer.tokenize("台灣的經濟", "zh-TW")


def test_chinese_drops_numbers_units_and_meaningless_single_characters(tokenizer):
    tokens = tokenizer.tokenize("会议为期三天，股市上涨了5%，10月油价和猫", "zh")
    assert {"会议", "股市", "上涨", "油价", "猫"} <= set(tokens)
    assert not {"为期", "三天", "5%", "10月", "了", "和"} & set(tokens)
    presegmented = tokenizer.tokenize("会议 为期 三天 可 股市 上涨 10 月 二 零零 八 猫", "zh")
    assert presegmented == ["会议", "股市", "上涨", "猫"]


def test_japanese_drops_counters_and_auxiliary_verbs(tokenizer):
    tokens = tokenizer.tokenize("三日間の予定で会議をすることになった。5キロ走った。", "ja")
    assert {"予定", "会議", "走る"} <= set(tokens)
    assert not {"日間", "キロ", "する", "なる", "三", "5"} & set(tokens)


def test_builtin_stopword_lists_are_lowercase():
    for words in DEFAULT_STOPWORDS.values():
        assert all(w == w.lower() for w in words)
