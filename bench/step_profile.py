"""What one XTRA training step costs, by component, today's step against an earlier commit's.

    python -m bench.step_profile [--baseline 9d831f1] [--steps 16] [--repeats 8] [--threads 1]
                                 [--ablations] [--out bench/results/step_profile.json]

The service's training set-up on EC News: two languages (en, zh) x 5,000-word vocabularies, K=50,
batch 128 documents per language, 512-d document and word embeddings, one thread. The bags of words
and cluster ids are EC News' own (``train_bow_matrix_*.npz``, ``cluster_labels_*_cosine.npy``);
the document and word embeddings are random unit vectors, because their values do not change what a
step computes (the shapes do) and running the embedder would cost minutes.

One table, two kinds of rows. *Step*: the whole ``XTRATrainer.step`` of the baseline commit (``--baseline``, loaded
from git by :mod:`bench._baseline`) and of today's code, timed in alternating blocks of ``--steps``
steps on the same batches, ``--repeats`` times; the median over blocks of the mean ms per step of
each (a block holds whole cycles of the every-n-th-step beta alignment) and their ratio
(``--ablations`` adds today's step with dense row updates, with every product over the
vocabulary in float32 and in bfloat16 (``model.precision``), with the beta alignment every step and every 8th,
with the paper's 1,000-unit word projections instead of the service's width (``OnlineConfig``,
300), and with the encoder reading the sentence embedding through a 300-unit projection instead
of the bags of words). Today's step is the service's: its projection width, not the paper's.
Times are CPU time of the benchmark's thread, which leaves out waiting for a core on a shared host;
wall-clock medians are shown beside them.
*Components*: each part of a step run alone, forward and backward, median over ``--steps`` runs:
the word projections, the shared encoder with the reparameterisation and KL, the decoder's
reconstruction over the vocabulary, the three alignment losses, gradient clipping and the optimizer
update. The beta alignment is shown per step: its cost divided by the trainer's ``beta_every``.
The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from bench._common import (
    DATA,
    FILE_LANG,
    RESULTS,
    emit,
    pin_threads,
    print_table,
    setup_logging,
    write_json,
)

logger = logging.getLogger("bench.step_profile")

BASELINE = "9d831f1"   # the last commit before the sparse step
VOCAB, BATCH, K, DIM = 5000, 128, 50, 512
PAPER_PROJECTION = 1000   # an ablation: the paper's word projections, wider than the service's
NARROW_PROJECTION = 300   # the embedding encoder's projection in its ablation


def _corpora(training, seed: int = 0) -> dict:
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    corpora = {}
    for lang, f in FILE_LANG.items():
        bow = sp.load_npz(DATA / f"train_bow_matrix_{f}.npz").tocsr()[:, :VOCAB]
        clusters = np.load(DATA / f"cluster_labels_{f}_cosine.npy").astype(np.int64) % K
        emb = rng.normal(size=(bow.shape[0], DIM)).astype(np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        corpora[lang] = training.LanguageCorpus(bow, emb, clusters)
    return corpora


def _word_embeddings(seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for lang in FILE_LANG:
        w = rng.normal(size=(VOCAB, DIM)).astype(np.float32)
        out[lang] = w / np.linalg.norm(w, axis=1, keepdims=True)
    return out


def _batches(training, corpora: dict, n: int, seed: int = 2) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{lang: training.corpus_batch(c, rng.choice(len(c), BATCH, replace=False)) for lang, c in corpora.items()}
            for _ in range(n)]


def _trainer(package, corpora: dict, words: dict, config: dict | None = None, **settings):
    import torch

    torch.manual_seed(0)
    model = package.training.build_xtra(corpora, K, word_embeddings=words, **(config or {}))
    return package.training.XTRATrainer(model, seed=0, **settings)


def _median_ms(fn, n: int) -> float:
    """Median CPU time of ``fn`` on this thread, ms (waiting for a core on a busy host is left out)."""
    times = []
    for _ in range(n):
        t = time.thread_time()
        fn()
        times.append(time.thread_time() - t)
    return 1e3 * statistics.median(times)


def time_steps(trainers: dict, batches: list[dict], steps: int, repeats: int) -> tuple[dict, dict]:
    """Mean CPU and wall ms per step of each block of ``steps`` steps, blocks alternating between trainers.

    A block is the unit because steps differ: a trainer with ``beta_every = n`` computes the beta
    alignment on every n-th step only, so the median of single steps would be a step without it.
    ``steps`` must be a multiple of every trainer's ``beta_every`` (each block then holds whole cycles).
    """
    for name, tr in trainers.items():
        if steps % getattr(tr, "beta_every", 1):
            raise ValueError(f"--steps {steps} is not a multiple of {name}'s beta_every ({tr.beta_every})")
    per: dict[str, list[float]] = {name: [] for name in trainers}
    wall: dict[str, list[float]] = {name: [] for name in trainers}
    for name, tr in trainers.items():   # warm-up: allocator, BLAS buffers, optimizer state
        for b in batches[:3]:
            tr.step(b)
    for r in range(repeats):
        order = list(trainers) if r % 2 == 0 else list(reversed(trainers))
        for name in order:
            tr = trainers[name]
            t, w = time.thread_time(), time.perf_counter()
            for i in range(steps):
                tr.step(batches[(r * steps + i) % len(batches)])
            per[name].append(1e3 * (time.thread_time() - t) / steps)
            wall[name].append(1e3 * (time.perf_counter() - w) / steps)
    return per, wall


def profile_components(trainer, batch: dict, n: int) -> dict[str, float]:
    """Median ms of each part of a step run alone (forward + backward), on a copy of the trainer."""
    import torch
    import torch.nn.functional as F

    trainer = copy.deepcopy(trainer)
    model = trainer.model.train()
    for module in model.modules():   # what the trainer's step sets (absent before the sparse step)
        if hasattr(module, "sparse_grad"):
            module.sparse_grad = getattr(trainer, "sparse_rows", False)
    langs = list(batch)
    out: dict[str, float] = {}

    def encoder_input(lang: str):
        if hasattr(model, "encoder_input"):   # the word projections, or the embedding's projection
            return model.encoder_input(batch[lang]["bow"], lang, batch[lang]["embedding"])
        return model.projections[lang](batch[lang]["bow"])

    def projection() -> None:
        model.zero_grad(set_to_none=True)
        for lang in langs:
            encoder_input(lang).sum().backward()
    out["encoder input (word projections, or the embedding's)"] = _median_ms(projection, n)

    hidden = {lang: encoder_input(lang).detach().requires_grad_() for lang in langs}
    thetas: dict = {}

    def encoder() -> None:
        model.zero_grad(set_to_none=True)
        for lang in langs:
            mu, logvar = model.encoder(hidden[lang])
            theta = F.softmax(mu + torch.randn_like(mu) * torch.exp(0.5 * logvar), dim=1)
            thetas[lang] = theta
            (model._kl(mu, logvar).mean() + theta.sum()).backward()
    out["shared encoder + reparameterisation + KL"] = _median_ms(encoder, n)

    theta = {lang: t.detach().requires_grad_() for lang, t in thetas.items()}
    new_recon = hasattr(model, "reconstruction_loss")

    def decoder() -> None:
        model.zero_grad(set_to_none=True)
        for lang in langs:
            bow = batch[lang]["bow"]
            if new_recon:
                recon = model.reconstruction_loss(theta[lang], bow, lang)
            else:
                recon = -(bow.to_dense() * torch.log(model.decode(theta[lang], lang) + 1e-10)).sum(1)
            recon.mean().backward()
    out["decoder: BN + softmax over V + reconstruction"] = _median_ms(decoder, n)

    all_theta = torch.cat(list(theta.values()))
    clusters = torch.cat([batch[lang]["cluster"] for lang in langs])
    def fresh(loss):
        def run() -> None:
            model.zero_grad(set_to_none=True)
            loss().backward()
        return run
    out["cluster contrastive loss"] = _median_ms(fresh(lambda: model.cluster_loss(all_theta, clusters)), n)
    def infonce():
        if hasattr(model, "infonce_many"):   # the languages' batches at once
            return model.infonce_many([theta[lang] for lang in langs], [batch[lang]["embedding"] for lang in langs])
        return sum(model.infonce_loss(theta[lang], batch[lang]["embedding"]) for lang in langs)
    out["InfoNCE (theta -> embedding)"] = _median_ms(fresh(infonce), n)
    out["beta alignment (per step: cost / beta_every)"] = \
        _median_ms(fresh(model.beta_loss), n) / getattr(trainer, "beta_every", 1)

    trainer.optimizer.zero_grad(set_to_none=True)
    model(batch).loss.backward()
    optimizers = sys.modules[type(trainer.optimizer).__module__]   # the trainer's own commit's clipping
    if hasattr(optimizers, "clip_scale"):   # the norm only: the update divides by it
        out["gradient clipping"] = _median_ms(lambda: optimizers.clip_scale(trainer.params, 1e9), n)
    elif hasattr(optimizers, "clip_grad_norm"):
        out["gradient clipping"] = _median_ms(lambda: optimizers.clip_grad_norm(trainer.params, 1e9), n)
    else:
        out["gradient clipping"] = _median_ms(lambda: torch.nn.utils.clip_grad_norm_(trainer.params, 1e9), n)
    out["optimizer update"] = _median_ms(trainer.optimizer.step, n)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", default=BASELINE, help="git commit whose step is the reference")
    p.add_argument("--steps", type=int, default=16,
                   help="steps per timed block (a multiple of beta_every) and runs per component")
    p.add_argument("--repeats", type=int, default=8, help="alternating blocks per trainer")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ablations", action="store_true",
                   help="also time today's step with dense row updates, and with the beta alignment every step")
    p.add_argument("--out", type=Path, default=RESULTS / "step_profile.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    setup_logging()
    pin_threads(args.threads)
    import xtream.model.training  # noqa: F401 (current.training below)
    from bench._baseline import load_baseline
    from xtream import model as current
    baseline = load_baseline(args.baseline)
    corpora = _corpora(current.training)
    words = _word_embeddings()
    batches = _batches(current.training, corpora, 2 * args.steps)
    from xtream.model.online_config import OnlineConfig
    online = OnlineConfig()   # the service's XTRA, not the paper's
    service = {"projection_units": online.projection_units, "product_precision": online.product_precision}
    trainers = {"baseline": _trainer(baseline, corpora, words), "current": _trainer(current, corpora, words, service)}
    if args.ablations:
        trainers["current, dense rows"] = _trainer(current, corpora, words, service, sparse_rows=False)
        for precision in ("float32", "bfloat16"):
            trainers[f"current, {precision} products"] = _trainer(current, corpora, words,
                                                                  {**service, "product_precision": precision})
        trainers["current, beta every step"] = _trainer(current, corpora, words, service, beta_every=1)
        trainers["current, beta every 8th step"] = _trainer(current, corpora, words, service, beta_every=8)
        trainers[f"current, {PAPER_PROJECTION}-unit projections"] = _trainer(
            current, corpora, words, {"projection_units": PAPER_PROJECTION})
        trainers[f"current, embedding encoder, {NARROW_PROJECTION} units"] = _trainer(
            current, corpora, words, {"encoder_input": "embedding", "projection_units": NARROW_PROJECTION})
    touched = {lang: int(np.mean([len(np.unique(b[lang]["bow"].coalesce().indices()[1].numpy())) for b in batches]))
               for lang in corpora}
    logger.info("words touched per batch of %d: %s of %d", BATCH, touched, VOCAB)

    components = {name: profile_components(tr, batches[0], args.steps) for name, tr in trainers.items()}
    per, wall = time_steps(trainers, batches, args.steps, args.repeats)
    step_ms = {name: statistics.median(v) for name, v in per.items()}
    wall_ms = {name: statistics.median(v) for name, v in wall.items()}
    ratio = step_ms["current"] / step_ms["baseline"]

    names = list(dict.fromkeys([c for comp in components.values() for c in comp]))
    rows = [[c, components["baseline"].get(c), components["current"].get(c)] for c in names]
    rows.append(["sum of the components", sum(components["baseline"].values()), sum(components["current"].values())])
    rows.append(["whole step (median of block means)", step_ms["baseline"], step_ms["current"]])
    rows.append(["whole step, wall clock (median of block means)", wall_ms["baseline"], wall_ms["current"]])
    print_table(f"one XTRA step, CPU ms, {args.threads} thread(s): baseline {args.baseline} vs current",
                ["component", "baseline", "current"], rows)
    for name in trainers:
        if name not in ("baseline", "current"):
            print(f"{name}: {step_ms[name]:.1f} ms CPU, {step_ms[name] / step_ms['baseline']:.3f} x baseline")
    print(f"step CPU time current/baseline = {ratio:.3f} ({step_ms['baseline']:.1f} -> {step_ms['current']:.1f} ms); "
          f"wall clock {wall_ms['current'] / wall_ms['baseline']:.3f}")
    payload = {"baseline": args.baseline, "beta_every": getattr(trainers["current"], "beta_every", 1),
               "sparse_rows": getattr(trainers["current"], "sparse_rows", False),
               "bf16_alignment": trainers["current"].model.bf16_alignment,
               "bf16_decoder": trainers["current"].model.bf16_decoder, "threads": args.threads, "batch": BATCH, "vocab": VOCAB, "topics": K,
               "words_touched_per_batch": touched, "step_cpu_ms": step_ms, "ratio": ratio,
               "step_wall_ms": wall_ms, "wall_ratio": wall_ms["current"] / wall_ms["baseline"],
               "step_cpu_ms_all": per, "components_ms": components}
    write_json(args.out, payload)
    emit({k: v for k, v in payload.items() if k != "step_cpu_ms_all"})
    return payload


if __name__ == "__main__":
    main()
