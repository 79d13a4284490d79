"""Specification of the streaming topic model (model.online) on a tiny planted-topic stream.

The stream (see ``conftest.make_stream``) has 4 planted topics; each document's embedding is its
topic's direction plus noise and its tokens come from that topic's word list in its language.
"""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import torch

from xtream.model.online import OnlineConfig, OnlineTopicModel

K = 4
DIM = 16


def config(**kw) -> OnlineConfig:
    base = {"num_topics": K, "warmup_docs": 120, "warmup_steps": 5, "batch_size": 16, "buffer_per_language": 64,
            "vocab_max_size": 60, "vocab_min_df": 2, "vocab_max_df_ratio": 0.5, "vocab_refresh_every": 100,
            "min_docs_new_language": 20, "seed": 0,
            "theta_cluster_weight": 0.0}   # XTRA's theta alone; the blend has its own test
    return OnlineConfig(**{**base, **kw})


def feed(model: OnlineTopicModel, stream, batch: int = 40) -> None:
    for tokens, emb, langs in stream.batches(batch):
        model.learn_many(tokens, emb, langs)


def purity(pred: np.ndarray, truth: np.ndarray) -> float:
    return sum(np.bincount(truth[pred == c]).max() for c in np.unique(pred)) / len(pred)


@pytest.fixture
def warm(planted_stream) -> OnlineTopicModel:
    """A model just past warm-up on a stream whose topics use 4 words each per language (20 warm-up
    steps: the service runs 200; from 5 the 300-unit projection lines topics up with clusters for
    only 81-90% of documents, depending on the seed)."""
    model = OnlineTopicModel(config(warmup_steps=20), DIM)
    feed(model, planted_stream(160, seed=0, words_per_topic=4))
    model.train(0)   # the warm-up steps
    assert model.is_warm
    return model


def consistent_shapes(model: OnlineTopicModel) -> dict[str, int]:
    """Vocabulary size per XTRA language, after checking every component agrees on it."""
    sizes = {}
    for lang, v in model.xtra.cfg.vocab_sizes.items():
        assert len(model.vocabs[lang]) == v, lang
        assert model.xtra.betas[lang].shape == (K, v), lang
        if model.xtra.cfg.encoder_input != "embedding":   # an embedding encoder has no word projections
            assert model.xtra.projections[lang][0].in_features == v, lang
        assert model.xtra.word_embeddings(lang).shape[0] == v, lang
        assert model.buffer.all(lang)[0].shape[1] == v, lang
        sizes[lang] = v
    return sizes


# --------------------------------------------------------------------------- warm-up
def test_before_warm_up_theta_is_the_one_hot_cluster(planted_stream):
    model = OnlineTopicModel(config(), DIM)
    stream = planted_stream(80)
    feed(model, stream)
    assert not model.is_warm and model.version == 0 and model.n_docs == 80
    clusters, theta = model.predict_many(stream.tokens, stream.embeddings, stream.langs)
    np.testing.assert_array_equal(theta, np.eye(K, dtype=np.float32)[clusters])
    assert model.train(5) == {} and model.version == 0


def test_before_any_cluster_exists_predictions_are_marked_unknown(planted_stream):
    model = OnlineTopicModel(config(), DIM)
    stream = planted_stream(3)
    model.learn_many(stream.tokens, stream.embeddings, stream.langs)   # fewer documents than K
    clusters, theta = model.predict_many(stream.tokens, stream.embeddings, stream.langs)
    np.testing.assert_array_equal(clusters, [-1, -1, -1])
    assert not theta.any()


def test_the_model_initialises_after_warmup_docs_and_is_warm_after_the_warm_up_steps(planted_stream):
    model = OnlineTopicModel(config(), DIM)
    stream = planted_stream(160, words_per_topic=4)
    feed(model, stream, batch=40)
    assert model.is_initialised and not model.is_warm
    assert sorted(model.xtra.cfg.vocab_sizes) == ["de", "en", "ja"]
    assert model.n_docs == 160 and sum(model.docs_by_lang.values()) == 160
    # learning never ran a gradient step: until the warm-up steps are done, theta is the cluster
    assert model.trainer.steps == 0 and model.version == 0
    clusters, theta = model.predict_many(stream.tokens, stream.embeddings, stream.langs)
    np.testing.assert_array_equal(theta, np.eye(K, dtype=np.float32)[clusters])
    model.train(1)                                     # the first slice runs the whole warm-up
    assert model.is_warm and model.trainer.steps == model.cfg.warmup_steps and model.version == 1
    assert consistent_shapes(model) == {"de": 16, "en": 16, "ja": 16}   # 4 topics x 4 words
    assert model.buffer.sizes() == {lang: min(64, n) for lang, n in model.docs_by_lang.items()}


def test_predict_many_returns_clusters_and_simplex_thetas_that_find_the_planted_topics(warm, planted_stream):
    stream = planted_stream(90, seed=5, words_per_topic=4)
    clusters, theta = warm.predict_many(stream.tokens, stream.embeddings, stream.langs)
    assert clusters.shape == (90,) and theta.shape == (90, K) and theta.dtype == np.float32
    np.testing.assert_allclose(theta.sum(1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(clusters, warm.kmeans.predict_many(stream.embeddings))
    assert purity(clusters, stream.topics) == 1.0
    # topic k starts as cluster k's words, so the argmax topic is the planted one too
    assert purity(theta.argmax(1), stream.topics) > 0.9
    assert (theta.argmax(1) == clusters).mean() > 0.9


def test_a_document_without_known_words_keeps_its_cluster_one_hot(warm, planted_stream):
    stream = planted_stream(2, seed=6)
    clusters, theta = warm.predict_many([["never", "seen"], []], stream.embeddings, ["en", "de"])
    np.testing.assert_array_equal(theta, np.eye(K, dtype=np.float32)[clusters])


def test_topic_words_lists_top_words_of_each_topic_from_one_planted_topic(warm):
    words, probs = warm.topic_words("de", top_n=3)
    assert len(words) == K and all(len(w) == 3 for w in words) and probs.shape == (K, 3)
    assert np.all(np.diff(probs, axis=1) <= 0)
    for topic_words in words:
        assert all(w.startswith("de_") for w in topic_words)
        assert len({w.split("_")[1] for w in topic_words}) == 1   # e.g. all "de_t2_*"
    assert len({ws[0].split("_")[1] for ws in words}) == K          # and each topic its own


# --------------------------------------------------------------------------- training
def test_train_runs_the_requested_steps_and_bumps_the_version_once(warm):
    version, steps = warm.version, warm.trainer.steps
    losses = warm.train(5)
    assert warm.version == version + 1 and warm.trainer.steps == steps + 5
    assert losses == warm.last_losses and math.isfinite(losses["total"])
    assert {"recon_kl_en", "recon_kl_de", "recon_kl_ja", "cluster", "infonce", "beta"} <= set(losses)
    warm.train(0)
    assert warm.version == version + 1


def test_randomness_comes_from_the_seed_and_leaves_torchs_global_rng_alone(planted_stream):
    torch.manual_seed(1)
    global_state = torch.get_rng_state()
    a = OnlineTopicModel(config(), DIM)
    feed(a, planted_stream(160, words_per_topic=4))
    a.train(3)
    assert torch.equal(torch.get_rng_state(), global_state)
    torch.manual_seed(2)   # a different global state must not matter
    b = OnlineTopicModel(config(), DIM)
    feed(b, planted_stream(160, words_per_topic=4))
    b.train(3)
    probe = planted_stream(20, seed=3, words_per_topic=4)
    np.testing.assert_array_equal(a.predict_many(probe.tokens, probe.embeddings, probe.langs)[1],
                                  b.predict_many(probe.tokens, probe.embeddings, probe.langs)[1])


def test_observe_topics_moves_prevalence_toward_the_batch_mean():
    model = OnlineTopicModel(config(prevalence_momentum=0.9), DIM)
    theta = np.tile(np.eye(K, dtype=np.float32)[0], (2, 1))
    model.observe_topics(theta)
    m = 0.9 ** 2
    np.testing.assert_allclose(model.prevalence, m * np.full(K, 1 / K) + (1 - m) * np.eye(K)[0])
    model.observe_topics(np.zeros((0, K), np.float32))
    np.testing.assert_allclose(model.prevalence.sum(), 1.0)


# --------------------------------------------------------------------------- a learner and a trainer thread
def test_inference_and_learning_do_not_wait_for_a_gradient_step_in_progress(warm, planted_stream):
    entered, release = threading.Event(), threading.Event()
    real_step = warm.trainer.step

    def slow_step(batch):
        entered.set()
        assert release.wait(30), "the test never released the step"
        return real_step(batch)

    warm.trainer.step = slow_step
    probe = planted_stream(20, seed=21, words_per_topic=4)
    more = planted_stream(40, seed=22, words_per_topic=4)
    before = warm.predict_many(probe.tokens, probe.embeddings, probe.langs)[1]
    trainer = threading.Thread(target=warm.train, args=(1,))
    trainer.start()
    try:
        assert entered.wait(10)                       # the step holds the network now
        served = {}

        def learn_and_predict():
            served["theta"] = warm.predict_many(probe.tokens, probe.embeddings, probe.langs)[1]
            warm.learn_many(more.tokens, more.embeddings, more.langs)

        learner = threading.Thread(target=learn_and_predict)
        learner.start()
        learner.join(10)
        assert not learner.is_alive(), "inference or learning waited for the gradient step"
        assert trainer.is_alive()
        np.testing.assert_array_equal(served["theta"], before)   # served by the last published network
    finally:
        release.set()
        trainer.join(30)
    after = warm.predict_many(probe.tokens, probe.embeddings, probe.langs)[1]
    assert not np.array_equal(after, before)          # the finished step was published


def test_a_trainer_thread_and_a_learner_keep_the_model_consistent_through_vocabulary_refreshes(planted_stream):
    model = OnlineTopicModel(config(vocab_refresh_every=60, vocab_max_size=40), DIM)
    feed(model, planted_stream(160, seed=0, words_per_topic=4))
    model.train(0)
    words_before = {lang: set(model.vocabs[lang].words) for lang in model.languages}
    errors, stop = [], threading.Event()

    def train_forever():
        try:
            while not stop.is_set():
                model.train(2)
        except Exception as exc:   # noqa: BLE001 - any failure is the test's finding
            errors.append(exc)

    trainer = threading.Thread(target=train_forever)
    trainer.start()
    try:
        stream = planted_stream(1200, seed=5, words_per_topic=12)   # more words than fit: refreshes swap them
        for tokens, emb, langs in stream.batches(40):
            model.learn_many(tokens, emb, langs)
            _, theta = model.predict_many(tokens, emb, langs)
            assert theta.shape == (len(tokens), K) and np.allclose(theta.sum(1), 1, atol=1e-4)
    finally:
        stop.set()
        trainer.join(60)
    assert not errors and not trainer.is_alive()
    assert model.n_docs == 160 + 1200
    assert model.trainer.steps > model.cfg.warmup_steps     # the trainer did run alongside
    consistent_shapes(model)
    assert any(set(model.vocabs[lang].words) != words for lang, words in words_before.items())   # refreshes ran
    assert model.languages == sorted(model.xtra.cfg.vocab_sizes)
    for lang in model.languages:
        assert model.serving.betas[lang].shape == model.xtra.betas[lang].shape


# --------------------------------------------------------------------------- vocabulary and languages
def test_a_vocabulary_refresh_keeps_vocab_xtra_and_buffer_consistent(warm, planted_stream):
    assert consistent_shapes(warm) == {"de": 16, "en": 16, "ja": 16}
    words_before = warm.vocabs["en"].words
    old_words = planted_stream(30, seed=7, words_per_topic=4)
    _, before = warm.predict_many(old_words.tokens, old_words.embeddings, old_words.langs)
    feed(warm, planted_stream(100, seed=8, words_per_topic=8))    # new words w4..w7 of every topic
    grown = consistent_shapes(warm)
    assert all(v > 16 for v in grown.values())
    assert warm.vocabs["en"].words[:16] == words_before   # old words keep their indices
    # only words were added and learn_many does not train: old documents keep their theta
    _, after = warm.predict_many(old_words.tokens, old_words.embeddings, old_words.langs)
    np.testing.assert_allclose(after, before, atol=1e-6)
    assert math.isfinite(warm.train(3)["total"])
    new_words = planted_stream(30, seed=9, words_per_topic=8)
    _, theta = warm.predict_many(new_words.tokens, new_words.embeddings, new_words.langs)
    np.testing.assert_allclose(theta.sum(1), 1.0, rtol=1e-5)


def fake_word_embedder(words: list[str]) -> np.ndarray:
    """A deterministic stand-in for a multilingual word embedder: the word's topic plus a per-word offset."""
    out = np.zeros((len(words), DIM), np.float32)
    for i, w in enumerate(words):
        _, topic, idx = w.split("_")
        out[i, int(topic[1:])] = 1.0
        out[i, 8 + int(idx[1:]) % 8] = 0.1
    return out


def test_word_embeddings_follow_the_vocabulary_through_a_refresh(planted_stream):
    calls = []

    def embed_words(words):
        calls.append((threading.current_thread().name, len(words)))
        return fake_word_embedder(words)

    model = OnlineTopicModel(config(), DIM, embed_words=embed_words)
    feed(model, planted_stream(160, seed=0, words_per_topic=4))
    assert model.is_initialised and calls == []   # learning does not embed words: the trainer does
    model.train(0)
    assert calls and all(name == threading.current_thread().name for name, _ in calls)
    for lang in model.xtra.cfg.vocab_sizes:
        np.testing.assert_array_equal(model.xtra.word_embeddings(lang).numpy(),
                                      fake_word_embedder(model.vocabs[lang].words))
    feed(model, planted_stream(100, seed=8, words_per_topic=8))
    assert all(v > 16 for v in consistent_shapes(model).values())
    assert 0 < model.train(3)["beta"] < math.log(K)   # informative word embeddings: alignment is learnable
    for lang in model.xtra.cfg.vocab_sizes:   # surviving rows moved, new rows embedded
        np.testing.assert_array_equal(model.xtra.word_embeddings(lang).numpy(),
                                      fake_word_embedder(model.vocabs[lang].words))


def test_a_language_first_seen_after_warm_up_joins_after_enough_documents(warm, planted_stream):
    french = planted_stream(40, seed=10, langs=("fr",), words_per_topic=4)
    batches = list(french.batches(10))
    warm.learn_many(*batches[0])   # 10 documents: still held back
    assert "fr" not in warm.xtra.cfg.vocab_sizes
    fed = 10
    clusters, theta = warm.predict_many(french.tokens[:5], french.embeddings[:5], ["fr"] * 5)
    np.testing.assert_array_equal(theta, np.eye(K, dtype=np.float32)[clusters])
    for tokens, emb, langs in batches[1:]:
        warm.learn_many(tokens, emb, langs)
        fed += 10
        if "fr" in warm.xtra.cfg.vocab_sizes:
            break
    assert fed == 20 == warm.cfg.min_docs_new_language
    assert warm.xtra.cfg.languages == ["de", "en", "fr", "ja"]
    consistent_shapes(warm)
    assert warm.buffer.sizes()["fr"] == 20
    assert math.isfinite(warm.train(3)["recon_kl_fr"])
    _, theta = warm.predict_many(french.tokens, french.embeddings, french.langs)
    np.testing.assert_allclose(theta.sum(1), 1.0, rtol=1e-5)
    assert not np.all(theta.max(1) == 1.0)   # XTRA's mixtures now, not one-hot clusters


def test_an_empty_batch_is_ignored(warm):
    n, version = warm.n_docs, warm.version
    warm.learn_many([], np.zeros((0, DIM), np.float32), [])
    assert (warm.n_docs, warm.version) == (n, version)


# --------------------------------------------------------------------------- persistence
def test_state_dict_round_trip_predicts_the_same_and_keeps_counts(warm, planted_stream):
    feed(warm, planted_stream(20, seed=11, langs=("fr",)), batch=10)   # a language still pending
    state = warm.state_dict()
    clone = OnlineTopicModel(config(seed=99, num_topics=7), DIM)        # the state's config wins
    clone.load_state_dict(state)
    probe = planted_stream(40, seed=12, words_per_topic=4)
    for got, want in zip(clone.predict_many(probe.tokens, probe.embeddings, probe.langs),
                         warm.predict_many(probe.tokens, probe.embeddings, probe.langs)):
        np.testing.assert_array_equal(got, want)
    assert (clone.n_docs, clone.version, clone.docs_by_lang) == (warm.n_docs, warm.version, warm.docs_by_lang)
    assert clone.cfg == warm.cfg
    # it goes on exactly as the original would: pending language, training and all
    more = planted_stream(20, seed=13, langs=("fr", "en"), words_per_topic=4)
    for model in (warm, clone):
        feed(model, more, batch=10)
        model.train(3)
    assert clone.xtra.cfg.languages == warm.xtra.cfg.languages
    for got, want in zip(clone.predict_many(probe.tokens, probe.embeddings, probe.langs),
                         warm.predict_many(probe.tokens, probe.embeddings, probe.langs)):
        np.testing.assert_array_equal(got, want)


def test_state_dict_is_a_snapshot_that_later_training_does_not_change(warm, planted_stream):
    probe = planted_stream(20, seed=14, words_per_topic=4)
    expected = warm.predict_many(probe.tokens, probe.embeddings, probe.langs)[1]
    state = warm.state_dict()
    warm.train(5)
    clone = OnlineTopicModel(config(), DIM)
    clone.load_state_dict(state)
    np.testing.assert_array_equal(clone.predict_many(probe.tokens, probe.embeddings, probe.langs)[1], expected)


def test_state_dict_before_warm_up_round_trips_the_held_documents(planted_stream):
    model = OnlineTopicModel(config(), DIM)
    stream = planted_stream(160, words_per_topic=4)
    feed(model, planted_stream(80, seed=1, words_per_topic=4))
    clone = OnlineTopicModel(config(), DIM)
    clone.load_state_dict(model.state_dict())
    assert not clone.is_warm
    for m in (model, clone):
        feed(m, stream)
        m.train(0)
    assert clone.is_warm and model.is_warm
    for got, want in zip(clone.predict_many(stream.tokens, stream.embeddings, stream.langs),
                         model.predict_many(stream.tokens, stream.embeddings, stream.langs)):
        np.testing.assert_array_equal(got, want)


def test_documents_given_to_learn_many_become_each_topics_representative_documents(planted_stream):
    model = OnlineTopicModel(config(exemplars_per_topic=2), DIM)
    stream = planted_stream(160, seed=0, words_per_topic=4)
    n = 0
    for tokens, emb, langs in stream.batches(40):
        docs = [(f"doc-{n + i}", f"text of document {n + i} " * 20) for i in range(len(tokens))]
        model.learn_many(tokens, emb, langs)
        model.remember_documents(docs, emb, langs)
        n += len(tokens)
    langs = sorted(set(model.docs_by_lang))
    assert model.exemplars.languages == langs
    for lang in langs:
        for k in range(K):
            docs = model.exemplars.documents(lang, k)
            assert 1 <= len(docs) <= 2
            assert all(len(text) == 200 and text.startswith(f"text of document {d[4:]} ") for d, text in docs)
    restored = OnlineTopicModel(config(), DIM)
    restored.load_state_dict(model.state_dict())
    assert restored.exemplars.documents(langs[0], 0) == model.exemplars.documents(langs[0], 0)
    with pytest.raises(ValueError):
        model.remember_documents([], np.ones((1, DIM), np.float32), [langs[0]])


def test_theta_blends_xtra_with_the_cluster_memberships(warm, planted_stream):
    from xtream.model.readout import cluster_memberships

    docs = planted_stream(30, seed=7, words_per_topic=4)
    _, alone = warm.predict_many(docs.tokens, docs.embeddings, docs.langs)
    warm.cfg.theta_cluster_weight = 0.5
    try:
        _, blended = warm.predict_many(docs.tokens, docs.embeddings, docs.langs)
    finally:
        warm.cfg.theta_cluster_weight = 0.0
    member = cluster_memberships(docs.embeddings, warm.kmeans.centers, warm.cfg.theta_cluster_temperature)
    np.testing.assert_allclose(blended, 0.5 * alone + 0.5 * member, atol=1e-5)
    np.testing.assert_allclose(blended.sum(1), 1.0, rtol=1e-5)


def test_an_online_model_with_an_embedding_encoder_learns_and_assigns(planted_stream):
    model = OnlineTopicModel(config(encoder_input="embedding", nce_temperature=0.1), DIM)
    stream = planted_stream(160, seed=0, words_per_topic=4)
    feed(model, stream)
    model.train(0)
    assert model.is_warm and model.xtra.cfg.encoder_input == "embedding" and model.xtra.cfg.nce_temperature == 0.1
    assert len(model.xtra.projections) == 0
    clusters, theta = model.predict_many(stream.tokens, stream.embeddings, stream.langs)
    assert theta.shape == (160, K)
    np.testing.assert_allclose(theta.sum(1), 1.0, rtol=1e-5)
