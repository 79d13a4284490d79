"""Specification of saving and loading a trained XTRA (model.persistence)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import xtream.model.persistence as persistence
from xtream.model.persistence import FORMAT_VERSION, IncompatibleModel, load_xtra, save_xtra
from xtream.model.training import XTRATrainer
from xtream.model.xtra import XTRA, XTRAConfig

VOCABS = {"en": 12, "zh": 20}


def vocabularies() -> dict[str, list[str]]:
    return {"en": [f"word{i}" for i in range(12)], "zh": [f"字{i}" for i in range(20)]}


def batch(seed: int = 0, n: int = 6) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {lang: {"bow": torch.poisson(torch.full((n, v), 0.8), generator=g),
                   "embedding": torch.randn(n, 8, generator=g),
                   "cluster": torch.randint(0, 3, (n,), generator=g)} for lang, v in VOCABS.items()}


@pytest.fixture
def trained(request) -> XTRA:
    alignment = getattr(request, "param", "word_embedding")
    torch.manual_seed(0)
    cfg = XTRAConfig(vocab_sizes=dict(VOCABS), num_topics=3, embedding_dim=8, word_embedding_dim=4,
                     projection_units=16, encoder_units=8, beta_alignment=alignment)
    net = XTRA(cfg, prior_mu=np.array([0.1, -0.2, 0.1], np.float32), prior_var=np.array([0.5, 0.6, 0.7], np.float32),
               word_embeddings={"en": np.random.default_rng(0).normal(size=(12, 4)).astype(np.float32)})
    trainer = XTRATrainer(net, seed=0)
    for step in range(3):   # moves weights and BatchNorm running statistics away from their defaults
        trainer.step(batch(step))
    return net.eval()


@pytest.mark.parametrize("trained", ["word_embedding", "learned_projection"], indirect=True)
def test_round_trip_gives_exactly_the_same_theta(tmp_path, trained):
    save_xtra(tmp_path / "m", trained, vocabularies())
    loaded, _, _ = load_xtra(tmp_path / "m")
    assert not loaded.training
    probe = batch(seed=9)
    for lang in VOCABS:
        assert torch.equal(loaded.theta(probe[lang]["bow"], lang), trained.theta(probe[lang]["bow"], lang))
        assert torch.equal(loaded.topic_word(lang), trained.topic_word(lang))
    for key, value in trained.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_round_trip_returns_vocabularies_metadata_and_config(tmp_path, trained):
    meta = {"trained_on": "unit test", "epochs": 3, "languages": ["en", "zh"]}
    save_xtra(tmp_path / "m", trained, vocabularies(), meta)
    loaded, vocabs, got_meta = load_xtra(tmp_path / "m")
    assert vocabs == vocabularies()
    assert got_meta == meta
    assert loaded.cfg == trained.cfg
    torch.testing.assert_close(loaded.prior_var, torch.tensor([0.5, 0.6, 0.7]))


def test_saved_model_is_safetensors_plus_json_with_the_format_version(tmp_path, trained):
    path = save_xtra(tmp_path / "m", trained, vocabularies())
    assert sorted(p.name for p in path.iterdir()) == ["model.json", "model.safetensors"]
    assert json.loads((path / "model.json").read_text(encoding="utf-8"))["format_version"] == FORMAT_VERSION


def test_a_different_format_version_is_refused(tmp_path, trained):
    path = save_xtra(tmp_path / "m", trained, vocabularies())
    meta = json.loads((path / "model.json").read_text(encoding="utf-8"))
    meta["format_version"] = FORMAT_VERSION + 1
    (path / "model.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(IncompatibleModel, match="format"):
        load_xtra(path)


def test_a_vocabulary_that_does_not_match_the_model_is_refused_before_writing(tmp_path, trained):
    wrong = vocabularies()
    wrong["zh"] = wrong["zh"][:-1]
    with pytest.raises(ValueError, match="zh"):
        save_xtra(tmp_path / "m", trained, wrong)
    assert list(tmp_path.iterdir()) == []


def test_saving_over_an_existing_model_replaces_it_whole(tmp_path, trained):
    path = tmp_path / "m"
    save_xtra(path, trained, vocabularies(), {"v": 1})
    (path / "stale.txt").write_text("left over from the old model")
    with torch.no_grad():
        trained.betas["en"].add_(1.0)
    save_xtra(path, trained, vocabularies(), {"v": 2})
    assert sorted(p.name for p in path.iterdir()) == ["model.json", "model.safetensors"]
    loaded, _, meta = load_xtra(path)
    assert meta == {"v": 2}
    assert torch.equal(loaded.betas["en"], trained.betas["en"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]   # no temporary or .old directory left


def test_a_failed_save_leaves_the_previous_model_untouched(tmp_path, trained, monkeypatch):
    path = tmp_path / "m"
    save_xtra(path, trained, vocabularies(), {"v": 1})
    before = {p.name: p.read_bytes() for p in path.iterdir()}

    def broken_save_file(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(persistence, "save_file", broken_save_file)
    with pytest.raises(OSError, match="disk full"):
        save_xtra(path, trained, vocabularies(), {"v": 2})
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_save_creates_missing_parent_directories(tmp_path, trained):
    path = save_xtra(tmp_path / "a" / "b" / "m", trained, vocabularies())
    assert path == tmp_path / "a" / "b" / "m" and (path / "model.safetensors").is_file()


def test_a_model_saved_with_linear_projections_loads_with_the_same_theta(trained):
    """Models written before projections were stored one row per word had ``nn.Linear`` weights (P, V)."""
    old_layout = {}
    for key, value in trained.state_dict().items():
        if key.endswith(".word_weight"):
            old_layout[key.removesuffix("word_weight") + "weight"] = value.T.contiguous()
        else:
            old_layout[key] = value
    loaded = XTRA(XTRAConfig(**{**trained.cfg.to_dict(), "vocab_sizes": dict(VOCABS)}))
    loaded.load_state_dict(old_layout)
    loaded.eval()
    probe = batch(seed=9)
    for lang in VOCABS:
        assert torch.equal(loaded.theta(probe[lang]["bow"], lang), trained.theta(probe[lang]["bow"], lang))


def test_sparse_and_dense_bags_of_words_give_the_same_theta_and_gradients(trained):
    probe = batch(seed=4)
    for lang in VOCABS:
        dense = probe[lang]["bow"]
        proj = trained.projections[lang][0]
        outs, grads = [], []
        for bow in (dense, dense.to_sparse()):
            proj.zero_grad()
            h = proj(bow)
            (h * torch.linspace(-1, 1, h.shape[1])).sum().backward()
            outs.append(h.detach())
            grads.append(proj.word_weight.grad.clone())
        torch.testing.assert_close(outs[0], outs[1])
        torch.testing.assert_close(grads[0], grads[1])


def test_optimizer_state_of_another_parameter_layout_restarts_adam(trained):
    trainer = XTRATrainer(trained, seed=0)
    trainer.step(batch(1))
    state = trainer.optimizer.state_dict()
    assert trainer.load_optimizer_state(state)
    for moments in state["state"].values():
        for key in ("exp_avg", "exp_avg_sq"):
            if moments[key].dim() == 2:
                moments[key] = moments[key].T.contiguous() if moments[key].shape[0] != moments[key].shape[1] \
                    else moments[key][:, :1]
    assert not trainer.load_optimizer_state(state)
    assert trainer.optimizer.state == {}
    trainer.step(batch(2))   # and it still trains
