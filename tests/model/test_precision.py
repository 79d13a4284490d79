"""Specification of the choice of precision for XTRA's products over the vocabulary (model.precision)."""

from __future__ import annotations

import pytest
import torch

from xtream.model import precision
from xtream.model.xtra import XTRA, XTRAConfig

ZEN4_FLAGS = "flags\t\t: fpu vme avx2 avx512f avx512_bf16 avx512_vnni\n"
SKYLAKE_FLAGS = "flags\t\t: fpu vme avx2 avx512f avx512bw avx512_vnni\n"


def test_native_bfloat16_is_read_from_the_cpus_flags():
    assert precision.has_native_bf16(ZEN4_FLAGS)
    assert precision.has_native_bf16("flags : sse amx_bf16 amx_tile")
    assert not precision.has_native_bf16(SKYLAKE_FLAGS)
    assert not precision.has_native_bf16("")


@pytest.mark.parametrize("native", [True, False])
def test_auto_rounds_only_on_a_cpu_that_multiplies_bfloat16(monkeypatch, native):
    monkeypatch.setattr(precision, "cpu_multiplies_bf16", lambda: native)
    for part in ("alignment", "decoder", "encoder"):
        assert precision.uses_bf16("auto", part) is native
        assert precision.uses_bf16("bfloat16", part) and not precision.uses_bf16("float32", part)
    vocabs = {"vocab_sizes": {"en": 20, "zh": 30}, "num_topics": 4, "embedding_dim": 8, "word_embedding_dim": 8}
    net = XTRA(XTRAConfig(**vocabs))
    assert (net.bf16_alignment, net.bf16_decoder, net.encoder.bf16) == (native, native, native)
    net = XTRA(XTRAConfig(product_precision="bfloat16", **vocabs))
    assert (net.bf16_alignment, net.bf16_decoder, net.encoder.bf16) == (True, True, True)
    net = XTRA(XTRAConfig(product_precision="float32", **vocabs))
    assert (net.bf16_alignment, net.bf16_decoder, net.encoder.bf16) == (False, False, False)


def test_an_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision"):
        XTRAConfig(vocab_sizes={"en": 20}, product_precision="float16")


def test_bfloat16_beta_alignment_is_close_and_follows_a_changed_vocabulary():
    torch.manual_seed(0)
    cfg = {"vocab_sizes": {"en": 200, "zh": 300}, "num_topics": 6, "embedding_dim": 8, "word_embedding_dim": 16}
    exact = XTRA(XTRAConfig(product_precision="float32", **cfg))
    rounded = XTRA(XTRAConfig(product_precision="bfloat16", **cfg))
    with torch.no_grad():   # distinct topics, so that the loss depends on the word embeddings
        for lang, beta in exact.betas.items():
            beta.copy_(3.0 * torch.randn(beta.shape, generator=torch.Generator().manual_seed(len(lang))))
    rounded.load_state_dict(exact.state_dict())
    with torch.no_grad():
        for net in (exact, rounded):
            net.word_embeddings_en.copy_(torch.randn(200, 16, generator=torch.Generator().manual_seed(1)))
            net.word_embeddings_zh.copy_(torch.randn(300, 16, generator=torch.Generator().manual_seed(2)))
    before = float(exact.beta_loss().detach())
    assert float(rounded.beta_loss().detach()) == pytest.approx(before, rel=5e-3)
    with torch.no_grad():   # an in-place change of the buffer must not leave a stale rounded copy behind
        for net in (exact, rounded):
            net.word_embeddings_zh.mul_(-1.0)
    assert float(exact.beta_loss().detach()) != pytest.approx(before, rel=0.05)
    assert float(rounded.beta_loss().detach()) == pytest.approx(float(exact.beta_loss().detach()), rel=5e-3)


def test_bfloat16_encoder_layers_are_close_to_float32_in_value_and_gradient():
    cfg = {"vocab_sizes": {"en": 50}, "num_topics": 6, "embedding_dim": 8, "projection_units": 64,
           "encoder_units": 32, "dropout": 0.0}
    torch.manual_seed(0)
    exact = XTRA(XTRAConfig(product_precision="float32", **cfg))
    rounded = XTRA(XTRAConfig(product_precision="bfloat16", **cfg))
    rounded.load_state_dict(exact.state_dict())
    assert rounded.encoder.bf16 and not exact.encoder.bf16
    h = torch.randn(16, 64, generator=torch.Generator().manual_seed(3))
    outputs, grads = [], []
    for net in (exact, rounded):
        mu, logvar = net.encoder(h)
        (mu.square().sum() + logvar.sum()).backward()
        outputs.append(torch.cat([mu, logvar], dim=1).detach())
        grads.append(net.encoder.fc1.weight.grad.flatten())
    assert not torch.equal(*outputs)   # the rounding did happen
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0.0, atol=0.05)
    assert float(torch.nn.functional.cosine_similarity(*grads, dim=0)) > 0.999
