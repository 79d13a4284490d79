"""The online topic model's configuration: a plain dataclass, importable without torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["OnlineConfig"]


@dataclass
class OnlineConfig:
    """The online model's settings and their one set of defaults (the service's ``model`` section
    takes its defaults from here; ``consumers.config.ModelSettings`` documents each)."""

    num_topics: int = 50
    warmup_docs: int = 8000
    warmup_steps: int = 200
    batch_size: int = 128
    buffer_per_language: int = 4096
    vocab_max_size: int = 5000
    vocab_min_df: float = 3
    vocab_max_df_ratio: float = 0.3
    vocab_refresh_every: int = 5000
    kmeans_decay: float = 0.999
    novelty_quantile: float | None = 0.2
    min_novel: int = 8
    novelty_margin: float = 0.1
    prevalence_momentum: float = 0.99
    lr: float = 0.002
    lr_step: int = 5000
    lambda_cluster: float = 5.0
    lambda_beta: float = 7.0
    lambda_nce: float = 80.0
    nce_temperature: float = 1.0
    encoder_input: Literal["bow", "embedding", "both"] = "bow"
    projection_units: int = 300
    product_precision: Literal["auto", "float32", "bfloat16"] = "auto"
    min_docs_new_language: int = 32
    exemplars_per_topic: int = 3
    theta_cluster_weight: float = 0.5
    theta_cluster_temperature: float = 0.1
    seed: int = 0
