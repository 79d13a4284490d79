"""Specification of the growing per-language vocabulary."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xtream.model.vocabulary import Vocabulary, VocabularyChange


def docs(*texts: str) -> list[list[str]]:
    return [t.split() for t in texts]


# --------------------------------------------------------------------------- growth
def test_growth_admits_frequent_words_and_not_rare_ones():
    vocab = Vocabulary(min_df=2, max_df_ratio=1.0)
    vocab.learn_many(docs("apple banana", "apple cherry", "apple banana durian"))
    change = vocab.refresh()
    assert change.added == ["apple", "banana"]  # by decreasing document frequency
    assert change.removed == []
    assert vocab.words == ["apple", "banana"]
    assert "cherry" not in vocab and "durian" not in vocab


def test_document_frequency_counts_a_word_once_per_document():
    vocab = Vocabulary()
    vocab.learn_many(docs("apple apple apple", "apple"))
    assert vocab.document_frequency("apple") == 2
    assert vocab.n_docs == 2


def test_words_in_too_many_documents_are_not_admitted():
    vocab = Vocabulary(min_df=1, max_df_ratio=0.5)
    vocab.learn_many(docs("the cat", "the dog", "the cat", "the fish"))
    vocab.refresh()
    assert "the" not in vocab
    assert "cat" in vocab


def test_max_size_is_respected():
    vocab = Vocabulary(max_size=3, min_df=1, max_df_ratio=1.0)
    vocab.learn_many(docs("a b c d e", "a b c d", "a b c", "a b", "a"))
    change = vocab.refresh()
    assert vocab.words == ["a", "b", "c"]
    assert change.added == ["a", "b", "c"]


def test_new_words_are_appended_and_existing_indices_stay():
    vocab = Vocabulary(min_df=2, max_df_ratio=1.0)
    vocab.learn_many(docs("apple banana", "apple banana"))
    vocab.refresh()
    before = dict(vocab.index)
    vocab.learn_many(docs("cherry", "cherry"))
    change = vocab.refresh()
    assert change.added == ["cherry"]
    assert change.old_to_new.tolist() == [0, 1]
    assert {w: vocab.index[w] for w in before} == before
    assert vocab.index["cherry"] == 2


def test_qualifying_words_are_kept_when_there_is_no_room():
    vocab = Vocabulary(max_size=2, min_df=1, max_df_ratio=1.0)
    vocab.learn_many(docs("a b"))
    vocab.refresh()
    vocab.learn_many(docs("c", "c", "c"))
    change = vocab.refresh()
    assert not change.changed
    assert vocab.words == ["a", "b"]


def test_stale_words_are_retired_only_when_space_is_needed():
    vocab = Vocabulary(max_size=4, min_df=2, max_df_ratio=1.0)
    vocab.learn_many(docs("a b c", "a b c"))
    vocab.refresh()
    vocab.decay(0.5)  # a, b, c now have df 1 < min_df: stale but not yet displaced
    assert not vocab.refresh().changed
    assert vocab.words == ["a", "b", "c"]

    vocab.learn_many(docs("a d e", "a d e"))  # a requalifies; d, e need two slots, one is free
    change = vocab.refresh()
    assert change.added == ["d", "e"]
    assert change.removed == ["b"]  # ties among stale words go to the first in index order
    assert vocab.words == ["a", "c", "d", "e"]


def test_old_to_new_maps_survivors_after_retirement():
    vocab = Vocabulary(max_size=5, min_df=2, max_df_ratio=1.0)
    vocab.learn_many(docs("v w x y z", "v w x y z"))
    vocab.refresh()
    old_words = vocab.words
    vocab.decay(0.25)
    vocab.learn_many(docs("w y p q", "w y p q", "w y p q", "w y p q"))
    change = vocab.refresh()
    assert sorted(change.removed) == ["v", "x"]
    expected = [vocab.index.get(w, -1) for w in old_words]
    assert change.old_to_new.tolist() == expected == [-1, 0, -1, 1, 2]
    assert change.old_to_new.dtype == np.int64
    assert vocab.words == ["w", "y", "z", "p", "q"]
    assert change.new_to_old.tolist() == [1, 3, 4, -1, -1]


def test_change_remaps_per_word_parameters():
    vocab = Vocabulary(max_size=3, min_df=2, max_df_ratio=1.0)
    vocab.learn_many(docs("a b c", "a b c"))
    vocab.refresh()
    params = np.array([[1.0, 2.0, 3.0]])  # one row of per-word parameters, columns = words
    vocab.decay(0.5)
    vocab.learn_many(docs("a c d", "a c d"))
    change = vocab.refresh()
    remapped = np.where(change.new_to_old >= 0, params[:, change.new_to_old], 0.0)
    assert vocab.words == ["a", "c", "d"]
    assert remapped.tolist() == [[1.0, 3.0, 0.0]]


def test_too_common_words_are_retired_before_rare_ones():
    vocab = Vocabulary(max_size=3, min_df=1, max_df_ratio=1.0)
    vocab.learn_many(docs("the rare x", "the", "the", "the"))
    vocab.refresh()
    vocab.max_df_ratio = 0.5  # "the" (in 4 of 6 documents below) becomes too common
    vocab.min_df = 2  # "rare" and "x" (df 1) become stale too
    vocab.learn_many(docs("new", "new"))
    change = vocab.refresh()
    assert change.removed == ["the"]
    assert change.added == ["new"]


def test_decay_scales_frequencies_and_forgets_rare_words():
    vocab = Vocabulary(min_df=2, max_df_ratio=1.0, prune_below=0.5)
    vocab.learn_many([["keep", "keep"], ["keep"]] + [[f"rare{i}"] for i in range(2000)])
    vocab.refresh()
    vocab.decay(0.4)
    assert vocab.document_frequency("keep") == pytest.approx(0.8)
    assert vocab.n_docs == pytest.approx(2002 * 0.4)
    assert vocab.document_frequency("rare0") == 0.0  # forgotten
    assert "keep" in vocab  # vocabulary words are never forgotten


def test_decay_rejects_bad_factors():
    with pytest.raises(ValueError):
        Vocabulary().decay(0.0)
    with pytest.raises(ValueError):
        Vocabulary().decay(1.5)


# --------------------------------------------------------------------------- transform
def test_transform_counts_match_hand_computed_matrix():
    vocab = Vocabulary(words=["apple", "banana", "cherry"])
    matrix = vocab.transform(docs("apple apple cherry kiwi", "", "banana apple banana banana"))
    assert matrix.format == "csr"
    assert matrix.dtype == np.float32
    assert matrix.shape == (3, 3)
    np.testing.assert_array_equal(matrix.toarray(), [[2, 0, 1], [0, 0, 0], [1, 3, 0]])


def test_transform_of_no_documents_is_empty():
    assert Vocabulary(words=["a"]).transform([]).shape == (0, 1)


def test_transform_rejects_strings_instead_of_token_lists():
    vocab = Vocabulary(words=["a"])
    with pytest.raises(ValueError):
        vocab.transform("a b")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        vocab.transform(["a b", "c"])  # type: ignore[list-item]


WORDS = st.sampled_from(["alpha", "beta", "gamma", "delta", "oov1", "oov2", "公司", "東京"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(WORDS, max_size=12), max_size=10))
def test_transform_row_sums_equal_in_vocabulary_token_counts(token_lists):
    vocab = Vocabulary(words=["alpha", "beta", "gamma", "delta", "公司", "東京"])
    matrix = vocab.transform(token_lists)
    expected = [sum(t in vocab for t in tokens) for tokens in token_lists]
    assert matrix.shape == (len(token_lists), len(vocab))
    np.testing.assert_array_equal(np.asarray(matrix.sum(axis=1)).ravel(), expected)


# --------------------------------------------------------------------------- fixed vocabulary
def test_frozen_vocab_never_changes(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("apple\nbanana\n\ncherry\n", encoding="utf-8")
    vocab = Vocabulary.from_file(path, min_df=1)
    assert vocab.frozen
    assert vocab.words == ["apple", "banana", "cherry"]
    vocab.learn_many(docs("kiwi kiwi", "kiwi mango", "kiwi apple") * 10)
    vocab.decay(0.1)
    change = vocab.refresh()
    assert not change.changed
    assert change.old_to_new.tolist() == [0, 1, 2]
    assert vocab.words == ["apple", "banana", "cherry"]
    assert vocab.document_frequency("apple") == pytest.approx(1.0)
    assert vocab.document_frequency("kiwi") == 0.0  # not even tracked


def test_fixed_vocabulary_rejects_duplicates_and_emptiness():
    with pytest.raises(ValueError, match="duplicates"):
        Vocabulary(words=["a", "b", "a"])
    with pytest.raises(ValueError):
        Vocabulary(words=[])


@pytest.mark.parametrize(
    "kwargs", [{"max_size": 0}, {"min_df": 0}, {"max_df_ratio": 0}, {"max_df_ratio": 1.5}]
)
def test_invalid_configuration_raises(kwargs):
    with pytest.raises(ValueError):
        Vocabulary(**kwargs)


# --------------------------------------------------------------------------- checkpointing
def _grown() -> Vocabulary:
    vocab = Vocabulary(max_size=4, min_df=2, max_df_ratio=0.9)
    vocab.learn_many(docs("a b c", "a b", "b c d", "d e", "e a"))
    vocab.refresh()
    vocab.decay(0.9)
    return vocab


def test_state_dict_round_trip_preserves_behaviour():
    vocab = _grown()
    state = vocab.state_dict()
    restored = Vocabulary()
    restored.load_state_dict(state)
    assert restored.words == vocab.words
    assert restored.state_dict()["terms"] == state["terms"]
    np.testing.assert_array_equal(restored.state_dict()["df"], state["df"])
    more = docs("f g", "f g", "f")
    vocab.learn_many(more)
    restored.learn_many(more)
    assert restored.refresh().added == vocab.refresh().added
    assert restored.words == vocab.words


def test_state_dict_is_json_serialisable_apart_from_arrays():
    state = _grown().state_dict()
    plain = {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in state.items()}
    restored = Vocabulary()
    restored.load_state_dict(json.loads(json.dumps(plain)))
    assert restored.words == _grown().words


def test_state_dict_is_a_copy():
    vocab = _grown()
    state = vocab.state_dict()
    state["words"].append("zzz")
    state["df"][:] = 0
    assert "zzz" not in vocab.words
    assert vocab.document_frequency("a") > 0


def test_load_state_dict_rejects_bad_state_without_changing_anything():
    vocab = _grown()
    before = vocab.state_dict()
    bad = dict(before, df=np.zeros(1))
    with pytest.raises(ValueError):
        vocab.load_state_dict(bad)
    with pytest.raises(ValueError):
        vocab.load_state_dict({"words": []})
    assert vocab.words == before["words"]


def test_vocabulary_change_reports_its_shape():
    change = VocabularyChange(["x"], ["a"], np.array([-1, 0, 1]))
    assert change.changed
    assert change.new_size == 3
    assert change.new_to_old.tolist() == [1, 2, -1]
