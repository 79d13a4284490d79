"""Specification of the XTRA network (model.xtra) and its training helpers (model.training)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from xtream.model.training import LanguageCorpus, XTRATrainer, build_xtra, corpus_batch, csr_to_torch, infer_theta
from xtream.model.xtra import XTRA, XTRAConfig, dirichlet_laplace_prior, init_beta_from_clusters

K = 3
EMB = 16
WORD_EMB = 8
VOCABS = {"en": 30, "de": 45, "ja": 60}
SMALL = {"projection_units": 32, "encoder_units": 16}


def config(vocab_sizes=None, **kw) -> XTRAConfig:
    kw = {"num_topics": K, "embedding_dim": EMB, "word_embedding_dim": WORD_EMB, **SMALL, **kw}
    return XTRAConfig(vocab_sizes=dict(vocab_sizes or VOCABS), **kw)


def random_batch(vocabs: dict[str, int], n: int = 8, seed: int = 0, sparse: bool = True) -> dict:
    rng = np.random.default_rng(seed)
    batch = {}
    for lang, v in vocabs.items():
        bow = rng.poisson(0.5, size=(n, v)).astype(np.float32)
        bow[:, 0] += 1   # no empty document
        t = torch.from_numpy(bow)
        batch[lang] = {"bow": t.to_sparse() if sparse else t,
                       "embedding": torch.from_numpy(rng.normal(size=(n, EMB)).astype(np.float32)),
                       "cluster": torch.from_numpy(rng.integers(K, size=n))}
    return batch


def model(seed: int = 0, **kw) -> XTRA:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    words = {lang: rng.normal(size=(v, WORD_EMB)).astype(np.float32) for lang, v in VOCABS.items()}
    return XTRA(config(**kw), word_embeddings=words)


# --------------------------------------------------------------------------- forward
def test_forward_gives_a_theta_per_language_with_rows_on_the_simplex():
    net = model()
    out = net(random_batch(VOCABS, n=8))
    assert set(out.theta) == set(VOCABS)
    for theta in out.theta.values():
        assert theta.shape == (8, K)
        torch.testing.assert_close(theta.sum(1), torch.ones(8))
        assert torch.all(theta >= 0)
    assert out.loss.shape == () and out.loss.requires_grad


def test_every_loss_component_is_finite_and_non_negative():
    out = model()(random_batch(VOCABS, n=8))
    assert set(out.parts) == {"recon_kl_en", "recon_kl_de", "recon_kl_ja", "cluster", "infonce", "beta", "total"}
    for name, value in out.parts.items():
        assert math.isfinite(value) and value >= 0, name


def test_total_is_the_weighted_sum_of_the_components():
    cfg = {"lambda_cluster": 2.0, "lambda_nce": 3.0, "lambda_beta": 0.5}
    parts = model(**cfg)(random_batch(VOCABS, n=6)).parts
    expected = (sum(parts[f"recon_kl_{lang}"] for lang in VOCABS) + 2.0 * parts["cluster"]
                + 3.0 * parts["infonce"] + 0.5 * parts["beta"])
    assert parts["total"] == pytest.approx(expected, rel=1e-5)


def test_a_zero_weight_switches_its_loss_off():
    parts = model(lambda_cluster=0.0, lambda_nce=0.0, lambda_beta=0.0)(random_batch(VOCABS)).parts
    assert set(parts) == {"recon_kl_en", "recon_kl_de", "recon_kl_ja", "total"}


def test_languages_missing_from_a_batch_are_skipped():
    out = model()(random_batch({"de": 45}, n=4))
    assert set(out.theta) == {"de"} and "recon_kl_en" not in out.parts


def test_gradients_reach_every_language_projection_and_the_shared_encoder():
    net = model()
    net(random_batch(VOCABS)).loss.backward()
    for lang in VOCABS:
        assert net.projections[lang][0].word_weight.grad.abs().sum() > 0
        assert net.betas[lang].grad.abs().sum() > 0
    assert net.encoder.fc1.weight.grad.abs().sum() > 0


def test_shapes_follow_each_languages_vocabulary():
    net = model().eval()
    for lang, v in VOCABS.items():
        bow = random_batch({lang: v}, n=5)[lang]["bow"]
        mu, logvar = net.encode(bow, lang)
        assert mu.shape == logvar.shape == (5, K)
        assert net.topic_word(lang).shape == (K, v)
        torch.testing.assert_close(net.topic_word(lang).sum(1), torch.ones(K))
        recon = net.decode(net.theta(bow, lang), lang)
        assert recon.shape == (5, v)
        torch.testing.assert_close(recon.sum(1), torch.ones(5))


def test_the_encoder_on_stacked_batches_gives_what_it_gives_on_each_batch_apart():
    import copy

    net = model(dropout=0.0).train()
    batch = random_batch(VOCABS, seed=7)
    hs = [net.projections[lang](batch[lang]["bow"]) for lang in VOCABS]
    apart_encoder = copy.deepcopy(net.encoder)
    stacked = net.encoder.forward_many(hs)
    apart = [apart_encoder(h) for h in hs]
    for (mu, logvar), (mu_ref, logvar_ref) in zip(stacked, apart):
        torch.testing.assert_close(mu, mu_ref, rtol=1e-4, atol=1e-4)   # products of other shapes round otherwise
        torch.testing.assert_close(logvar, logvar_ref, rtol=1e-4, atol=1e-4)
    for bn in ("mu_bn", "logvar_bn"):   # running statistics updated once per batch, as by separate calls
        mine, ref = getattr(net.encoder, bn), getattr(apart_encoder, bn)
        assert int(mine.num_batches_tracked) == int(ref.num_batches_tracked) == len(VOCABS)
        torch.testing.assert_close(mine.running_mean, ref.running_mean)
        torch.testing.assert_close(mine.running_var, ref.running_var)


def test_sparse_and_dense_bow_give_the_same_theta_in_eval_mode():
    net = model().eval()
    sparse, dense = random_batch(VOCABS, sparse=True), random_batch(VOCABS, sparse=False)
    for lang in VOCABS:
        torch.testing.assert_close(net.theta(sparse[lang]["bow"], lang), net.theta(dense[lang]["bow"], lang),
                                   atol=1e-6, rtol=1e-5)


def test_sparse_bow_gives_the_dense_gradient_of_the_word_projection_with_zeros_for_absent_words():
    from xtream.model.xtra import WordProjection

    proj = WordProjection(12, 4)
    counts = np.zeros((3, 12), np.float32)
    counts[0, [1, 5]] = [2, 1]
    counts[1, [5, 9]] = [1, 3]
    counts[2, [0, 5, 11]] = [1, 1, 4]
    upstream = torch.randn(3, 4)
    grads = []
    for bow in (csr_to_torch(sp.csr_matrix(counts)), torch.from_numpy(counts)):
        proj.zero_grad(set_to_none=True)
        (proj(bow) * upstream).sum().backward()
        grads.append(proj.word_weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])
    absent = [w for w in range(12) if not counts[:, w].any()]
    assert torch.count_nonzero(grads[0][absent]) == 0
    assert torch.count_nonzero(grads[0][[0, 1, 5, 9, 11]].abs().sum(1)) == 5


def test_theta_is_the_posterior_mean_in_eval_mode_and_sampled_in_train_mode():
    net = model()
    bow = random_batch({"en": 30})["en"]["bow"]
    net.eval()
    torch.testing.assert_close(net.theta(bow, "en"), net.theta(bow, "en"), atol=0, rtol=0)
    net.train()
    assert not torch.equal(net.theta(bow, "en"), net.theta(bow, "en"))


# --------------------------------------------------------------------------- individual losses
def _reference_cluster_loss(theta: torch.Tensor, clusters: torch.Tensor, temperature: float) -> torch.Tensor:
    """The reference code's quirk: positives appear in the denominator twice, so the loss >= log 2."""
    z = F.normalize(theta, dim=1)
    sim = torch.exp(z @ z.T / temperature)
    eye = torch.eye(len(z), dtype=torch.bool)
    pos = (clusters[:, None] == clusters[None, :]) & ~eye
    pos_sum = (sim * pos).sum(1)
    all_sum = (sim * ~eye).sum(1)
    return -torch.log(pos_sum / (pos_sum + all_sum)).mean()


def separated_thetas(per_cluster: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Identical near-one-hot thetas within a cluster, orthogonal between clusters."""
    clusters = torch.arange(K).repeat_interleave(per_cluster)
    return F.one_hot(clusters, K).float() * 0.999 + 0.001 / K, clusters


def test_cluster_loss_reaches_near_zero_when_clusters_are_perfectly_separated():
    net = model()
    theta, clusters = separated_thetas()
    loss = float(net.cluster_loss(theta, clusters))
    assert 0 <= loss < 0.05
    assert loss < math.log(2)
    # the reference formulation cannot go below log 2 on the very same thetas
    assert float(_reference_cluster_loss(theta, clusters, net.cfg.temperature)) >= math.log(2)


def test_cluster_loss_matches_the_formula_on_a_hand_computed_case():
    net = model(temperature=0.5)
    theta = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0], [0, 1.0, 0]])
    clusters = torch.tensor([0, 0, 1, 1])
    # each anchor: one positive at cosine 1 (logit 2), two negatives at cosine 0 (logit 0)
    expected = math.log((math.exp(2) + 2) / math.exp(2))
    assert float(net.cluster_loss(theta, clusters)) == pytest.approx(expected, rel=1e-6)


def test_cluster_loss_and_its_gradient_equal_the_logsumexp_formula():
    net = model(temperature=0.2)
    g = torch.Generator().manual_seed(7)
    theta = torch.softmax(3 * torch.randn(40, K, generator=g), dim=1).requires_grad_()
    clusters = torch.randint(0, 12, (40,), generator=g)
    clusters[0] = 99   # an anchor without a positive
    z = F.normalize(theta, dim=1)
    eye = torch.eye(40, dtype=torch.bool)
    logits = (z @ z.T / 0.2).masked_fill(eye, float("-inf"))
    pos = (clusters[:, None] == clusters[None, :]) & ~eye
    terms = torch.logsumexp(logits, 1) - torch.logsumexp(logits.masked_fill(~pos, float("-inf")), 1)
    expected = terms[pos.any(1)].mean()
    (want,) = torch.autograd.grad(expected, theta)
    loss = net.cluster_loss(theta, clusters)
    (got,) = torch.autograd.grad(loss, theta)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(got, want)


def test_cluster_loss_is_large_when_clusters_are_mixed_up():
    net = model()
    theta, clusters = separated_thetas()
    shuffled = clusters[torch.tensor([0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11])]   # same theta, wrong labels
    assert float(net.cluster_loss(theta, shuffled)) > 1.0 > float(net.cluster_loss(theta, clusters))


def test_cluster_loss_skips_anchors_without_a_positive_and_keeps_gradients_finite():
    net = model(temperature=0.5)
    theta = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]], requires_grad=True)
    loss = net.cluster_loss(theta, torch.tensor([0, 0, 1, 2]))     # documents 2 and 3 are alone
    assert float(loss.detach()) == pytest.approx(math.log((math.exp(2) + 2) / math.exp(2)), rel=1e-6)
    loss.backward()
    assert torch.isfinite(theta.grad).all()
    assert float(net.cluster_loss(theta.detach(), torch.tensor([0, 1, 2, 3]))) == 0.0


def test_infonce_is_low_when_each_projected_theta_points_at_its_own_embedding():
    net = model(embedding_dim=K, nce_temperature=0.1).eval()
    theta = torch.eye(K)
    with torch.no_grad():
        net.theta_to_embedding[0].weight.copy_(torch.eye(K))
        net.theta_to_embedding[0].bias.zero_()
    with torch.no_grad():
        matched, mismatched = net.infonce_loss(theta, torch.eye(K)), net.infonce_loss(theta, torch.eye(K).flip(0))
    assert float(matched) < 0.01 < math.log(K) < float(mismatched)


@pytest.mark.parametrize("sizes", [(6, 6, 6), (6, 4, 5)])
def test_infonce_of_several_batches_at_once_is_the_sum_of_each_alone(sizes):
    """Stacked batches (one product for equal sizes, a loop otherwise) give each batch's own loss,
    with each batch's documents the only negatives, and the same gradients."""
    net = model(nce_temperature=0.3).eval()   # no dropout: the two computations see the same projection
    g = torch.Generator().manual_seed(0)
    thetas = [torch.softmax(torch.randn(n, K, generator=g), 1).requires_grad_() for n in sizes]
    embeddings = [torch.randn(n, net.cfg.embedding_dim, generator=g) for n in sizes]
    together = net.infonce_many(thetas, embeddings)
    grads = torch.autograd.grad(together, thetas)
    alone = [net.infonce_loss(t, e) for t, e in zip(thetas, embeddings)]
    expected = torch.autograd.grad(sum(alone), thetas)
    assert together.item() == pytest.approx(sum(a.item() for a in alone), rel=1e-6)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    with torch.no_grad():   # a batch's negatives are its own documents: moving another batch changes only that one's term
        moved = [embeddings[0], embeddings[1].flip(0), embeddings[2]]
        others = net.infonce_many(thetas, moved) - net.infonce_loss(thetas[1], moved[1])
    assert others.item() == pytest.approx(alone[0].item() + alone[2].item(), rel=1e-5)


def test_kl_is_zero_at_the_prior_and_positive_away_from_it():
    mu, var = dirichlet_laplace_prior(np.array([1.0, 2.0, 3.0]))
    net = XTRA(config(), prior_mu=mu, prior_var=var)
    at_prior = net._kl(torch.as_tensor(mu)[None], torch.as_tensor(var).log()[None])
    assert float(at_prior) == pytest.approx(0.0, abs=1e-5)
    assert float(net._kl(torch.zeros(1, K), torch.zeros(1, K))) > 0.01


def test_beta_loss_is_low_when_topic_k_uses_the_same_meanings_in_every_language():
    cfg = config({"en": 6, "de": 6}, beta_temperature=0.1, word_embedding_dim=K)
    # word i of both languages means topic i // 2; topic k's words are 2k and 2k+1 in both
    meaning = np.repeat(np.eye(K, dtype=np.float32), 2, axis=0)
    beta = np.full((K, 6), -5.0, np.float32)
    for k in range(K):
        beta[k, 2 * k:2 * k + 2] = 5.0
    aligned = XTRA(cfg, betas={"en": beta, "de": beta}, word_embeddings={"en": meaning, "de": meaning})
    crossed = XTRA(cfg, betas={"en": beta, "de": beta[::-1].copy()}, word_embeddings={"en": meaning, "de": meaning})
    assert float(aligned.beta_loss().detach()) < 0.01
    assert float(crossed.beta_loss().detach()) > math.log(K)


@pytest.mark.parametrize("alignment", ["learned_projection", "none"])
def test_other_beta_alignments_run_end_to_end(alignment):
    net = model(beta_alignment=alignment)
    trainer = XTRATrainer(net, seed=0)
    for step in range(3):
        parts = trainer.step(random_batch(VOCABS, seed=step))
        assert math.isfinite(parts["total"])
    if alignment == "none":
        assert parts["beta"] == 0.0
    else:
        assert parts["beta"] > 0.0
        assert {lang: net.beta_projections[lang][0].in_features for lang in VOCABS} == VOCABS


def test_unknown_beta_alignment_is_rejected():
    with pytest.raises(ValueError, match="beta_alignment"):
        config(beta_alignment="telepathy")


# --------------------------------------------------------------------------- priors and beta init
def test_equal_cluster_sizes_give_the_symmetric_prodlda_prior():
    mu, var = dirichlet_laplace_prior(np.full(4, 25.0))
    np.testing.assert_allclose(mu, 0.0, atol=1e-7)
    # alpha_k = 1: var = (1/1)(1 - 2/K) + (1/K^2) * K = 1 - 1/K
    np.testing.assert_allclose(var, 1 - 1 / 4, rtol=1e-6)
    _, var_c = dirichlet_laplace_prior(np.full(4, 25.0), concentration=2.0)
    np.testing.assert_allclose(var_c, (1 - 1 / 4) / 2, rtol=1e-6)


def test_unequal_cluster_sizes_follow_the_laplace_formula_by_hand():
    mu, var = dirichlet_laplace_prior(np.array([1.0, 1.0, 2.0]))
    # shares (1/4, 1/4, 1/2), alpha = 3 * share = (3/4, 3/4, 3/2); sum(1/alpha) = 10/3
    # var_k = (1/alpha_k)(1 - 2/3) + (1/9)(10/3); mu_k = log alpha_k - mean(log alpha)
    np.testing.assert_allclose(var, [22 / 27, 22 / 27, 16 / 27], rtol=1e-6)
    np.testing.assert_allclose(mu, [-math.log(2) / 3, -math.log(2) / 3, 2 * math.log(2) / 3], rtol=1e-6)


def test_an_empty_cluster_still_gets_a_finite_prior():
    mu, var = dirichlet_laplace_prior(np.array([0.0, 10.0, 10.0]))
    assert np.isfinite(mu).all() and np.isfinite(var).all() and (var > 0).all()
    assert mu[0] < mu[1] == pytest.approx(mu[2])


def test_initial_beta_is_centred_both_ways_and_favours_each_clusters_words():
    # Word 3 occurs in every cluster: it must not lead any topic.
    bow = sp.csr_matrix(np.array([[3, 0, 0, 1], [2, 0, 0, 1], [0, 4, 0, 1], [0, 0, 5, 1]], np.float32))
    beta = init_beta_from_clusters(bow, np.array([0, 0, 1, 2]), num_topics=3)
    assert beta.shape == (3, 4)
    np.testing.assert_allclose(beta.mean(0), 0.0, atol=1e-5), "no per-word offset (BN cannot train it away)"
    np.testing.assert_allclose(beta.mean(1), 0.0, atol=1e-5)
    np.testing.assert_array_equal(beta.argmax(1), [0, 1, 2])


def test_topic_word_is_what_the_decoder_reconstructs_for_a_document_of_one_topic():
    net = model()
    net.train()
    for seed in range(3):   # give the decoder's BatchNorm running statistics of its own
        net(random_batch(VOCABS, n=8, seed=seed))
    net.eval()
    with torch.no_grad():
        for lang in VOCABS:
            pure = torch.eye(K)
            torch.testing.assert_close(net.topic_word(lang), net.decode(pure, lang))


def test_alignment_topics_ignore_offsets_shared_by_a_word_across_topics():
    net = model().eval()
    before = net.aligned_topic_word("en").detach().clone()
    with torch.no_grad():
        net.betas["en"][:, 0] += 100.0   # invisible to the decoder's BatchNorm in training...
    torch.testing.assert_close(net.aligned_topic_word("en"), before)   # ...and to the alignment loss


# --------------------------------------------------------------------------- vocabulary growth
def _doc_without(v: int, retired: list[int], n: int = 6, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    bow = rng.poisson(0.7, size=(n, v)).astype(np.float32)
    bow[:, retired] = 0
    bow[:, 1] += 1
    return bow


@pytest.mark.parametrize("alignment", ["word_embedding", "learned_projection"])
def test_remap_vocabulary_keeps_theta_of_documents_with_only_surviving_words(alignment):
    net = model(beta_alignment=alignment).eval()
    v, retired, added = VOCABS["en"], [0, 5], 4
    keep = np.setdiff1d(np.arange(v), retired)
    old_to_new = np.full(v, -1)
    old_to_new[keep] = np.arange(len(keep))
    new_size = len(keep) + added
    bow_old = _doc_without(v, retired)
    bow_new = np.zeros((len(bow_old), new_size), np.float32)
    bow_new[:, old_to_new[keep]] = bow_old[:, keep]
    before = net.theta(torch.from_numpy(bow_old), "en")
    beta_before = net.betas["en"].detach().clone()
    emb_before = net.word_embeddings("en").clone()

    net.remap_vocabulary("en", old_to_new, new_size)

    torch.testing.assert_close(net.theta(torch.from_numpy(bow_new), "en"), before, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(net.theta(csr_to_torch(sp.csr_matrix(bow_new)), "en"), before, atol=1e-6, rtol=1e-5)
    assert net.cfg.vocab_sizes["en"] == new_size
    assert net.projections["en"][0].in_features == new_size
    assert net.betas["en"].shape == (K, new_size)
    assert net.decoder_bn["en"].num_features == new_size
    assert net.word_embeddings("en").shape == (new_size, WORD_EMB)
    torch.testing.assert_close(net.betas["en"][:, old_to_new[keep]], beta_before[:, keep])
    torch.testing.assert_close(net.word_embeddings("en")[old_to_new[keep]], emb_before[keep])
    torch.testing.assert_close(net.betas["en"][:, len(keep):], beta_before.mean(1, keepdim=True).expand(K, added))
    if alignment == "learned_projection":
        assert net.beta_projections["en"][0].in_features == new_size
    assert net.betas["de"].shape == (K, VOCABS["de"])   # other languages untouched


def test_remap_vocabulary_accepts_fresh_word_embeddings_of_the_new_shape_only():
    net = model()
    with pytest.raises(ValueError, match="new_word_embeddings"):
        net.remap_vocabulary("en", np.arange(VOCABS["en"]), VOCABS["en"] + 2, np.zeros((3, WORD_EMB)))
    fresh = np.ones((VOCABS["en"] + 2, WORD_EMB), np.float32)
    net.remap_vocabulary("en", np.arange(VOCABS["en"]), VOCABS["en"] + 2, fresh)
    torch.testing.assert_close(net.word_embeddings("en"), torch.from_numpy(fresh))


def test_training_continues_after_a_vocabulary_remap():
    net = model()
    trainer = XTRATrainer(net, seed=0)
    trainer.step(random_batch(VOCABS))
    net.remap_vocabulary("ja", np.r_[np.arange(VOCABS["ja"] - 1), -1], VOCABS["ja"] + 5)
    trainer.reset_optimizer()
    grown = dict(VOCABS, ja=VOCABS["ja"] + 5)
    before = net.betas["ja"].detach().clone()
    parts = trainer.step(random_batch(grown, seed=2))
    assert math.isfinite(parts["total"])
    assert not torch.equal(net.betas["ja"], before)


def test_a_vocabulary_remap_carries_adams_moments_with_their_words():
    net = model()
    trainer = XTRATrainer(net, seed=0)
    for step in range(3):
        trainer.step(random_batch(VOCABS, seed=step))
    moments = trainer.moments_by_name()
    before = {name: {k: t.clone() for k, t in state.items()} for name, state in moments.items()}
    v = VOCABS["ja"]
    old_to_new = np.r_[-1, np.arange(v - 1)]   # word 0 retired, the others move down one place
    remaps = net.remap_vocabulary("ja", old_to_new, v + 1)   # two new words at the end
    trainer.reset_optimizer(keep=moments, remaps=remaps)
    after = trainer.moments_by_name()
    for name, dim in (("betas.ja", 1), ("projections.ja.0.word_weight", 0), ("decoder_bn.ja.bias", 0)):
        assert after[name]["step"] == before[name]["step"] == 3
        for k in ("exp_avg", "exp_avg_sq"):
            old, new = before[name][k], after[name][k]
            assert old.narrow(dim, 1, v - 1).any()
            assert torch.equal(new.narrow(dim, 0, v - 1), old.narrow(dim, 1, v - 1)), (name, k)
            assert not new.narrow(dim, v - 1, 2).any(), (name, k)
    torch.testing.assert_close(after["betas.en"]["exp_avg"], before["betas.en"]["exp_avg"])
    assert math.isfinite(trainer.step(random_batch(dict(VOCABS, ja=v + 1), seed=5))["total"])


def test_add_language_gives_a_new_language_its_own_parameters_and_training_continues():
    net = model()
    trainer = XTRATrainer(net, seed=0)
    trainer.step(random_batch(VOCABS))
    net.add_language("fr", 25, word_embeddings=np.ones((25, WORD_EMB), np.float32))
    assert net.cfg.languages == ["de", "en", "fr", "ja"]
    assert net.cfg.vocab_sizes["fr"] == 25
    assert net.betas["fr"].shape == (K, 25) and net.word_embeddings("fr").shape == (25, WORD_EMB)
    trainer.reset_optimizer()
    before = net.projections["fr"][0].word_weight.detach().clone()
    for step in range(3):
        parts = trainer.step(random_batch(dict(VOCABS, fr=25), seed=step))
        assert math.isfinite(parts["total"]) and "recon_kl_fr" in parts
    assert not torch.equal(net.projections["fr"][0].word_weight, before)
    net.eval()
    assert net.theta(random_batch({"fr": 25})["fr"]["bow"], "fr").shape == (8, K)


def test_adding_an_existing_language_is_rejected():
    with pytest.raises(ValueError, match="already exists"):
        model().add_language("en", 10)


# --------------------------------------------------------------------------- training helpers
def planted_corpora(seed: int = 0, n: int = 120, vocabs=None) -> tuple[dict[str, LanguageCorpus], dict]:
    """Two languages, K planted topics: topic t owns a block of each vocabulary and a direction in
    embedding space; the cluster of a document is its topic. Word embeddings carry the topic."""
    vocabs = vocabs or {"en": 30, "de": 45}
    rng = np.random.default_rng(seed)
    directions = np.linalg.qr(np.random.default_rng(7).normal(size=(EMB, K)))[0].T
    corpora, word_embeddings = {}, {}
    for lang, v in vocabs.items():
        block = v // K
        word_topic = np.minimum(np.arange(v) // block, K - 1)
        probs = np.full((K, v), 0.02 / v)
        probs[word_topic, np.arange(v)] += 0.98 / block
        probs /= probs.sum(1, keepdims=True)
        topics = np.arange(n) % K
        counts = np.stack([rng.multinomial(20, probs[t]) for t in topics]).astype(np.float32)
        emb = directions[topics] + 0.1 * rng.normal(size=(n, EMB))
        corpora[lang] = LanguageCorpus(sp.csr_matrix(counts), emb.astype(np.float32), topics)
        word_embeddings[lang] = (np.eye(K)[word_topic] + 0.1 * rng.normal(size=(v, K))).astype(np.float32)
    return corpora, word_embeddings


def test_training_on_a_learnable_toy_problem_lowers_the_loss_and_recovers_the_topics():
    corpora, words = planted_corpora()
    torch.manual_seed(0)
    net = build_xtra(corpora, num_topics=K, word_embeddings=words, **SMALL)
    trainer = XTRATrainer(net, batch_size=32, seed=0)
    rng = np.random.default_rng(0)
    history = [trainer.step({lang: corpus_batch(c, rng.choice(len(c), 32, replace=False))
                             for lang, c in corpora.items()}) for _ in range(150)]
    first, last = history[:10], history[-10:]
    for key in ("total", "recon_kl_en", "recon_kl_de", "cluster"):
        assert np.mean([h[key] for h in last]) < np.mean([h[key] for h in first]), key
    assert trainer.steps == 150
    for lang, c in corpora.items():   # topic k stays cluster k in both languages
        assert (infer_theta(net, c.bow, lang).argmax(1) == c.clusters).mean() > 0.9


def _sparse_batch(vocabs: dict[str, int], seed: int, n: int = 6, words: int = 4) -> dict:
    """Documents that each use a few words of a small part of the vocabulary (most rows untouched)."""
    rng = np.random.default_rng(seed)
    batch = {}
    for lang, v in vocabs.items():
        counts = np.zeros((n, v), np.float32)
        for i in range(n):
            counts[i, rng.choice(v // 2, words, replace=False)] = 1 + rng.poisson(1.0, words)
        batch[lang] = {"bow": csr_to_torch(sp.csr_matrix(counts)),
                       "embedding": torch.from_numpy(rng.normal(size=(n, EMB)).astype(np.float32)),
                       "cluster": torch.from_numpy(rng.integers(K, size=n))}
    return batch


def test_the_same_seed_gives_bit_identical_parameters_and_optimizer_state_after_n_steps():
    runs = []
    for _ in range(2):
        net = model(seed=3)
        trainer = XTRATrainer(net, seed=3, beta_every=2)
        for step in range(7):
            trainer.step(_sparse_batch(VOCABS, seed=step))
        runs.append((net.state_dict(), trainer.optimizer.state_dict()["state"]))
    (w1, o1), (w2, o2) = runs
    assert w1.keys() == w2.keys()
    for key in w1:
        assert torch.equal(w1[key], w2[key]), key
    for i in o1:
        for key in o1[i]:
            assert torch.equal(o1[i][key], o2[i][key]), (i, key)


def test_a_step_leaves_the_projection_rows_of_words_absent_from_the_batch_untouched():
    net = model()
    trainer = XTRATrainer(net, seed=0)
    trainer.step(random_batch(VOCABS, seed=1))          # every word gets moments
    before = {lang: net.projections[lang][0].word_weight.detach().clone() for lang in VOCABS}
    batch = _sparse_batch(VOCABS, seed=2)
    trainer.step(batch)
    for lang, v in VOCABS.items():
        present = torch.zeros(v, dtype=torch.bool)
        present[batch[lang]["bow"].coalesce().indices()[1]] = True
        moved = (net.projections[lang][0].word_weight != before[lang]).any(1)
        assert not moved[~present].any(), lang
        assert moved[present].any(), lang
        assert net.projections[lang][0].sparse_grad is False   # the model is a plain module outside a step


def test_dense_rows_setting_updates_every_row_with_adam():
    net = model()
    trainer = XTRATrainer(net, seed=0, sparse_rows=False)
    trainer.step(random_batch(VOCABS, seed=1))
    before = net.projections["en"][0].word_weight.detach().clone()
    batch = _sparse_batch(VOCABS, seed=2)
    trainer.step(batch)
    absent = torch.ones(VOCABS["en"], dtype=torch.bool)
    absent[batch["en"]["bow"].coalesce().indices()[1]] = False
    moved = (net.projections["en"][0].word_weight != before).any(1)
    assert moved[absent].sum() > absent.sum() // 2   # momentum moves words absent from the batch too


def test_beta_alignment_every_n_steps_is_computed_on_those_steps_at_n_times_its_weight():
    net = model()
    trainer = XTRATrainer(net, seed=0, beta_every=3)
    parts = [trainer.step(random_batch(VOCABS, seed=s)) for s in range(4)]
    for i, p in enumerate(parts):
        recon = sum(p[f"recon_kl_{lang}"] for lang in VOCABS)
        rest = recon + net.cfg.lambda_cluster * p["cluster"] + net.cfg.lambda_nce * p["infonce"]
        weight = 3.0 * net.cfg.lambda_beta if i % 3 == 0 else 0.0
        assert p["total"] == pytest.approx(rest + weight * p["beta"], rel=1e-5), i
    assert parts[1]["beta"] == parts[0]["beta"]   # repeated for the steps that skip it
    with pytest.raises(ValueError, match="beta_every"):
        XTRATrainer(model(), beta_every=0)


def test_reconstruction_loss_is_the_cross_entropy_of_the_decoded_words_for_sparse_and_dense_bows():
    net = model(product_precision="float32").train()
    batch = random_batch(VOCABS, seed=5)
    theta = torch.softmax(torch.randn(8, K), dim=1)
    for lang in VOCABS:
        bow = batch[lang]["bow"]
        torch.manual_seed(0)
        sparse = net.reconstruction_loss(theta, bow, lang)
        dense = net.reconstruction_loss(theta, bow.to_dense(), lang)
        net.eval()   # the decoder's BatchNorm on running statistics, so decode() sees the same logits
        expected = -(bow.to_dense() * torch.log(net.decode(theta, lang))).sum(1)
        torch.testing.assert_close(net.reconstruction_loss(theta, bow, lang), expected, rtol=1e-5, atol=1e-4)
        net.train()
        torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-4)


def test_fit_records_one_history_entry_per_epoch():
    corpora, _ = planted_corpora(n=60)
    net = build_xtra(corpora, num_topics=K, **SMALL)
    history = XTRATrainer(net, batch_size=16, seed=0).fit(corpora, epochs=3, progress=False)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert all(math.isfinite(h["total"]) for h in history)


def test_build_xtra_initialises_prior_and_beta_from_the_clusters():
    corpora, _ = planted_corpora()
    net = build_xtra(corpora, num_topics=K, **SMALL)
    assert net.cfg.vocab_sizes == {"en": 30, "de": 45} and net.cfg.embedding_dim == EMB
    np.testing.assert_allclose(net.prior_mu.numpy(), 0.0, atol=1e-6)   # balanced clusters
    c = corpora["en"]
    np.testing.assert_allclose(net.betas["en"].detach().numpy(), init_beta_from_clusters(c.bow, c.clusters, K))


def test_language_corpus_rejects_misaligned_parts():
    with pytest.raises(ValueError, match="rows"):
        LanguageCorpus(sp.csr_matrix(np.ones((3, 4))), np.zeros((2, EMB)), np.zeros(3, np.int64))


def test_csr_to_torch_preserves_the_matrix():
    x = sp.random(7, 11, density=0.3, format="csr", dtype=np.float32, random_state=0)
    t = csr_to_torch(x)
    assert t.is_sparse and t.shape == (7, 11)
    np.testing.assert_array_equal(t.to_dense().numpy(), x.toarray())


def test_infer_theta_returns_simplex_rows_in_eval_mode_and_handles_no_documents():
    net = model()
    bow = sp.csr_matrix(_doc_without(VOCABS["de"], [], n=10))
    theta = infer_theta(net, bow, "de", batch_size=3)
    assert theta.shape == (10, K) and not net.training
    np.testing.assert_allclose(theta.sum(1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(theta, infer_theta(net, bow, "de", batch_size=100), atol=1e-6)
    assert infer_theta(net, sp.csr_matrix((0, VOCABS["de"]), dtype=np.float32), "de").shape == (0, K)


# --------------------------------------------------------------------------- encoder input

def test_an_embedding_encoder_has_no_word_projections_and_its_theta_ignores_the_bag_of_words():
    net = model(encoder_input="embedding").eval()
    assert len(net.projections) == 0
    batch = random_batch(VOCABS, n=6, seed=1)
    other = random_batch(VOCABS, n=6, seed=2)   # other words, other embeddings
    for lang in VOCABS:
        emb = batch[lang]["embedding"]
        same = net.theta(other[lang]["bow"], lang, emb)
        torch.testing.assert_close(net.theta(batch[lang]["bow"], lang, emb), same)
        assert not torch.allclose(net.theta(batch[lang]["bow"], lang, other[lang]["embedding"]), same)
    with pytest.raises(ValueError, match="sentence embeddings"):
        net.theta(batch["en"]["bow"], "en")


def test_a_both_encoder_reads_the_words_and_the_embedding_and_trains_both_paths():
    net = model(encoder_input="both").eval()
    batch, other = random_batch(VOCABS, n=6, seed=1), random_batch(VOCABS, n=6, seed=2)
    emb = batch["en"]["embedding"]
    assert not torch.allclose(net.theta(batch["en"]["bow"], "en", emb), net.theta(other["en"]["bow"], "en", emb))
    net.train()
    net(random_batch(VOCABS, n=8)).loss.backward()
    assert net.embedding_projection[0].weight.grad.abs().sum() > 0
    assert net.projections["en"][0].word_weight.grad.abs().sum() > 0


def test_infer_theta_passes_the_embeddings_to_an_embedding_encoder():
    net = model(encoder_input="embedding")
    batch = random_batch(VOCABS, n=5, seed=3, sparse=False)
    bow, emb = sp.csr_matrix(batch["de"]["bow"].numpy()), batch["de"]["embedding"].numpy()
    theta = infer_theta(net, bow, "de", emb, batch_size=2)
    torch.testing.assert_close(torch.from_numpy(theta), net.eval().theta(batch["de"]["bow"], "de", batch["de"]["embedding"]))


def test_an_unknown_encoder_input_is_refused():
    with pytest.raises(ValueError, match="encoder_input"):
        config(encoder_input="words")
