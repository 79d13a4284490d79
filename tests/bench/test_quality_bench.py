"""The quality benchmarks on a dataset with another language pair (en/ja), in the shared layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from bench._common import EMBEDDER, discover_languages, file_code, lang_of
from xtream.model import quality

CLASSES, TRAIN, TEST, DIM = 4, 40, 12, 512
WORDS = {"en": [f"word{c}x{i}" for c in range(CLASSES) for i in range(8)],
         "ja": [f"語{c}の{i}" for c in range(CLASSES) for i in range(8)]}


def _write_split(root: Path, lang: str, split: str, n: int, rng: np.random.Generator, centres: np.ndarray) -> None:
    labels = np.arange(n) % CLASSES
    words = WORDS[lang]
    docs = [[words[8 * c + j] for j in rng.choice(8, size=5)] for c in labels]
    vocab_index = {w: i for i, w in enumerate(words)}
    rows = [i for i, d in enumerate(docs) for _ in d]
    cols = [vocab_index[w] for d in docs for w in d]
    bow = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, len(words)))
    sp.save_npz(root / f"{split}_bow_matrix_{lang}.npz", bow)
    (root / f"{split}_texts_{lang}.txt").write_text("\n".join(" ".join(d) for d in docs) + "\n", encoding="utf-8")
    np.savetxt(root / f"{split}_labels_{lang}.txt", labels, fmt="%d")
    emb = centres[labels] + 0.3 * rng.standard_normal((n, DIM))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    np.save(quality.DEFAULT_CACHE_DIR / f"{root.name}-{split}-{lang}-{EMBEDDER}.npy", emb.astype(np.float32))


@pytest.fixture
def en_ja(tmp_path, monkeypatch) -> Path:
    """A two-language dataset (en, ja) and its embedding cache, as bench.quality_offline leaves it."""
    monkeypatch.setattr(quality, "DEFAULT_CACHE_DIR", tmp_path / "cache")
    quality.DEFAULT_CACHE_DIR.mkdir()
    root = tmp_path / "reviews"
    root.mkdir()
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((CLASSES, DIM))   # shared by both languages: a cross-lingual embedder
    for lang in ("en", "ja"):
        (root / f"vocab_{lang}").write_text("\n".join(WORDS[lang]) + "\n", encoding="utf-8")
        _write_split(root, lang, "train", TRAIN, rng, centres)
        _write_split(root, lang, "test", TEST, rng, centres)
        np.save(quality.DEFAULT_CACHE_DIR / f"reviews-vocab-{lang}-{EMBEDDER}.npy",
                rng.standard_normal((len(WORDS[lang]), DIM)).astype(np.float32))
    return root


def test_languages_come_from_the_dataset_files(en_ja, tmp_path):
    assert discover_languages(en_ja) == ["en", "ja"]
    assert file_code("ja", en_ja) == "ja" and lang_of("cn") == "zh" and lang_of("ko") == "ko"
    other = tmp_path / "other"
    other.mkdir()
    for code in ("cn", "en"):
        (other / f"train_bow_matrix_{code}.npz").touch()
        (other / f"vocab_{code}").touch()
    assert discover_languages(other) == ["en", "zh"]
    assert file_code("zh", other) == "cn"


def test_quality_peers_runs_on_an_en_ja_dataset_and_names_figures_by_language(en_ja):
    from bench.quality_peers import parse_args, worker

    args = parse_args(["--data", str(en_ja), "--epochs", "1", "--threads", "1"])
    out = worker("kmeans", args)
    assert out["langs"] == ["en", "ja"]
    topics = out["systems"]["kmeans_ctfidf"]
    for key in ("tu", "npmi_en", "npmi_ja", "npmi0_en", "npmi0_ja", "tq", "clf_intra_ja", "clf_cross_en", "clf_cross_ja"):
        assert key in topics, key
    assert "dict_alignment" not in topics   # no en-zh pair: no dictionary
    assert len(topics["top_words"]["ja"]) == 10 and all("語" in t for t in topics["top_words"]["ja"])
    soft = out["systems"]["kmeans_soft"]
    assert "tu" not in soft and soft["clf_cross_ja"] > 0.9   # planted classes, shared centres
    raw = worker("raw_embeddings", args)["systems"]["raw_embeddings"]
    assert raw["clf_cross_en"] > 0.9
    with pytest.raises(Exception, match="InfoCTM"):
        worker("infoctm", args)
    xtra = worker("xtream_offline", args)["systems"]
    assert {"xtream_offline", "xtream_offline_blend"} <= set(xtra)
    assert all("npmi0_ja" in xtra[k] and "clf_cross_ja" in xtra[k] for k in ("xtream_offline", "xtream_offline_blend"))


def test_quality_offline_runs_on_an_en_ja_dataset(en_ja, tmp_path):
    from bench.quality_offline import main

    out = tmp_path / "out.json"
    summary = main(["--data", str(en_ja), "--epochs", "1", "--variants", "full", "--embedder", "hashing:512",
                    "--n-init", "1", "--out", str(out)])
    assert summary["langs"] == ["en", "ja"]
    for key in ("npmi_ja", "npmi0_ja", "tq", "clf_intra_ja", "clf_cross_ja", "clf_cross_en"):
        assert key in summary["full"], key
    assert json.loads(out.read_text())["summary"]["full"]["clf_cross_ja"] == summary["full"]["clf_cross_ja"]
