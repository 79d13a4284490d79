"""Typed configuration: one root :class:`Settings`, nested sections, ``XTREAM_`` environment overrides.

Precedence, highest first: CLI flags (passed as init values), environment (``XTREAM_KAFKA__GROUP_ID``,
nested with ``__``), an optional TOML/JSON file (``--config`` or ``XTREAM_CONFIG_FILE``), defaults.
Secrets are ``SecretStr``: they print as ``**********`` and never reach a log line.
"""

from __future__ import annotations

import json
import logging
import os
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from xtream.model.online_config import OnlineConfig

__all__ = ["MIN_TOKEN_CHARS", "SASL_MECHANISMS", "Settings"]

logger = logging.getLogger(__name__)

MIN_TOKEN_CHARS = 16
#: What kafka-python supports; the password ones need a username and a password.
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "GSSAPI", "OAUTHBEARER")
PASSWORD_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")

#: The file :meth:`Settings.load` was given, for the file source (never written to the environment).
_CONFIG_FILE: ContextVar[Path | None] = ContextVar("xtream_config_file", default=None)


class _Section(BaseModel):
    """A settings section: an unknown key (a mistyped ``XTREAM_*`` variable) is an error naming it."""

    model_config = ConfigDict(extra="forbid")


class KafkaSettings(_Section):
    bootstrap_servers: str | None = Field(None, description="host:port[,...]; unset = no Kafka (embedded default)")
    input_topic: str = "xtream.documents"
    group_id: str = "xtream"
    assignments_topic: str = "xtream.assignments"
    snapshots_topic: str = "xtream.snapshots"
    dead_letter_topic: str = "xtream.dlq"
    lineage_topic: str = "xtream.lineage"
    embedded_topic: str = Field("xtream.embedded", description="embedders -> trainer (scale-out topology)")
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    max_poll_interval_ms: int = 300_000
    session_timeout_ms: int = 45_000
    group_instance_id: str | None = Field(None, description=(
        "static group membership (KIP-345): a restarted process with the same id takes its partitions back "
        "at once instead of waiting session_timeout_ms for its dead predecessor; unique per replica "
        "(e.g. the pod name)"))
    isolation_level: Literal["read_committed", "read_uncommitted"] = Field("read_committed", description=(
        "read_committed: records of aborted (and still open) transactions in the input are never read"))
    compression_type: Literal["none", "gzip", "snappy", "lz4", "zstd"] = Field(
        "zstd", description="codec of the output topics' record batches (input batches may use any codec)")
    delivery: Literal["at_least_once", "exactly_once"] = Field("at_least_once", description=(
        "exactly_once: each checkpoint interval's outputs and input offsets commit in one Kafka transaction, "
        "so a read_committed reader sees one assignment per document; at_least_once: for brokers "
        "without transactions (a crash repeats the outputs since the last checkpoint)"))
    transactional_id: str | None = Field(None, description=(
        "exactly_once: the producer's transactional id, stable across restarts of this replica "
        "(default: '<group_id>-<group_instance_id or 0>')"))
    on_offset_regression: Literal["relearn", "skip"] = Field("relearn", description=(
        "a partition's offsets going backwards (topic recreated, offsets reset): relearn from the new "
        "position, or skip records below what was already learned; either way it is logged and counted"))
    reconnect_backoff_max_ms: int = Field(1000, ge=50, description=(
        "ceiling of the exponential wait between attempts to reconnect to a broker; the service notices "
        "a broker's return at most this late (the Java client's default; kafka-python's own is 30 s)"))
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    sasl_password_file: Path | None = Field(
        None, description="file holding the SASL password (e.g. a mounted secret); read when connecting")
    ssl_cafile: Path | None = None
    ssl_check_hostname: bool = Field(True, description="verify the broker certificate's name (SSL/SASL_SSL)")

    @model_validator(mode="after")
    def _one_password_source(self) -> "KafkaSettings":
        if self.sasl_password is not None and self.sasl_password_file is not None:
            raise ValueError("set kafka.sasl_password or kafka.sasl_password_file, not both")
        return self

    @model_validator(mode="after")
    def _coherent_security(self) -> "KafkaSettings":
        """Refuse combinations kafka-python would fail on late or obscurely; warn about weak ones."""
        protocol, mechanism = self.security_protocol, self.sasl_mechanism
        has_password = self.sasl_password is not None or self.sasl_password_file is not None
        if protocol.startswith("SASL_"):
            if not mechanism:
                raise ValueError(f"kafka.sasl_mechanism is required with kafka.security_protocol={protocol} "
                                 f"(one of {', '.join(SASL_MECHANISMS)})")
            if mechanism not in SASL_MECHANISMS:
                hint = " (mechanisms are upper case)" if mechanism.upper() in SASL_MECHANISMS else ""
                raise ValueError(f"kafka.sasl_mechanism={mechanism!r} is not one of {', '.join(SASL_MECHANISMS)}{hint}")
            if mechanism in PASSWORD_MECHANISMS and not (self.sasl_username and has_password):
                raise ValueError(f"kafka.sasl_mechanism={mechanism} needs kafka.sasl_username and "
                                 f"kafka.sasl_password (or kafka.sasl_password_file)")
            if protocol == "SASL_PLAINTEXT" and mechanism == "PLAIN":
                logger.warning("kafka.security_protocol=SASL_PLAINTEXT with kafka.sasl_mechanism=PLAIN sends the "
                               "password unencrypted; use SASL_SSL")
        else:
            unused = [name for name, value in (("sasl_mechanism", mechanism), ("sasl_username", self.sasl_username),
                                               ("sasl_password", self.sasl_password),
                                               ("sasl_password_file", self.sasl_password_file)) if value is not None]
            if unused:
                logger.warning("kafka.%s set but kafka.security_protocol=%s does not use SASL: the credentials are "
                               "not sent; set security_protocol to SASL_SSL", ", kafka.".join(unused), protocol)
        if protocol in ("SSL", "SASL_SSL"):
            if not self.ssl_check_hostname:
                logger.warning("kafka.ssl_check_hostname=false: the broker certificate's name is not verified, so "
                               "any holder of a certificate from the CA can impersonate the broker")
        elif self.ssl_cafile is not None:
            logger.warning("kafka.ssl_cafile set but kafka.security_protocol=%s does not use TLS", protocol)
        return self

    def _password(self) -> str | None:
        if self.sasl_password is not None:
            return self.sasl_password.get_secret_value()
        if self.sasl_password_file is not None:
            try:
                return self.sasl_password_file.read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise ValueError(f"kafka.sasl_password_file {self.sasl_password_file} cannot be read: "
                                 f"{exc.strerror}") from None
        return None

    def servers(self) -> str:
        """``bootstrap_servers``, which the caller needs set."""
        if not self.bootstrap_servers:
            raise ValueError("kafka.bootstrap_servers is not set")
        return self.bootstrap_servers

    def client_config(self) -> dict[str, Any]:
        """kafka-python keyword arguments every client of the service gets: reconnection and security
        (the password is revealed only here)."""
        cfg: dict[str, Any] = {"security_protocol": self.security_protocol,
                               "reconnect_backoff_max_ms": self.reconnect_backoff_max_ms}
        if self.sasl_mechanism:
            cfg |= {"sasl_mechanism": self.sasl_mechanism, "sasl_plain_username": self.sasl_username,
                    "sasl_plain_password": self._password()}
        if self.ssl_cafile:
            cfg["ssl_cafile"] = str(self.ssl_cafile)
        if self.security_protocol in ("SSL", "SASL_SSL"):
            cfg["ssl_check_hostname"] = self.ssl_check_hostname
        return cfg


class BatchSettings(_Section):
    max_records: int = Field(256, ge=1, description="records per processing batch")
    max_wait_ms: int = Field(500, ge=1, description="longest wait to fill a batch")
    max_record_bytes: int = Field(1_000_000, ge=1024)
    prefetch_batches: int = Field(8, ge=0, le=16, description=(
        "polled batches the embedder may work on ahead of the loop (0 = embed in the loop); the loop "
        "learns, publishes and checkpoints meanwhile, and offsets still advance only after a batch is learned"))


#: The online model's defaults: the model section takes them from here, so there is one set.
_ONLINE = OnlineConfig()


class ModelSettings(_Section):
    embedder: str = Field("use-multilingual-v3",
                          description="'use-multilingual-v3' or a sentence-transformers name/path")
    embed_batch_size: int = 64
    embedder_process: bool = Field(True, description=(
        "run the embedder in a child process: in the service's own process it shares the GIL with the "
        "loop and the trainer"))
    threads: int = Field(1, ge=1, description="torch and BLAS threads; 1 is safest next to a broker on 2 cores")
    language_centering: bool = Field(False, description="subtract per-language mean embeddings (e5-style models)")
    languages: list[str] = Field(
        # The 16 languages multilingual USE v3 was trained on; set this to what your embedder covers.
        default_factory=lambda: ["ar", "de", "en", "es", "fr", "it", "ja", "ko", "nl", "pl", "pt", "ru",
                                 "th", "tr", "zh"],
        description="accepted languages (others are dead-lettered) and candidates for detection")
    num_topics: int = _ONLINE.num_topics
    warmup_docs: int = Field(_ONLINE.warmup_docs, ge=1, description=(
        "documents clustered (and their clusters' words served) before XTRA is built from them: its "
        "vocabularies and initial topic words come from this sample, and a small one gives near-duplicate "
        "topics (bench/README.md, warm-up sample)"))
    warmup_steps: int = _ONLINE.warmup_steps
    batch_size: int = _ONLINE.batch_size
    buffer_per_language: int = _ONLINE.buffer_per_language
    vocab_max_size: int = _ONLINE.vocab_max_size
    vocab_min_df: float = _ONLINE.vocab_min_df
    vocab_refresh_every: int = _ONLINE.vocab_refresh_every
    vocab_max_df_ratio: float = Field(_ONLINE.vocab_max_df_ratio, gt=0, le=1,
                                      description="words in more than this share of documents are left out")
    theta_cluster_weight: float = Field(_ONLINE.theta_cluster_weight, ge=0, le=1, description=(
        "weight of the softmax cluster memberships mixed into XTRA's theta (0 = theta alone); see bench/README.md"))
    theta_cluster_temperature: float = Field(_ONLINE.theta_cluster_temperature, gt=0,
        description="temperature of those memberships (cosine / t)")
    encoder_input: Literal["bow", "embedding", "both"] = Field(_ONLINE.encoder_input, description=(
        "what XTRA's encoder reads: each language's bag of words (the paper), the sentence embedding "
        "(one projection shared by every language, so theta is as language-neutral as the embedding), or both; "
        "with 'embedding' set nce_temperature 0.1 (bench/README.md, encoder input)"))
    nce_temperature: float = Field(_ONLINE.nce_temperature, gt=0, description=(
        "temperature of XTRA's InfoNCE between theta and the document's embedding"))
    projection_units: int = Field(_ONLINE.projection_units, ge=8,
        description="width of the layer that feeds XTRA's shared encoder (the paper's: 1,000; bench/README.md)")
    product_precision: Literal["auto", "float32", "bfloat16"] = Field(_ONLINE.product_precision, description=(
        "XTRA's largest products (beta alignment, decoder, encoder) in bfloat16 (float32 sums) or float32: "
        "'auto' is bfloat16 where the CPU multiplies it natively (avx512_bf16, AMX), float32 elsewhere, "
        "where bfloat16 is emulated and slower; quality compared in bench/README.md"))
    exemplars_per_topic: int = Field(_ONLINE.exemplars_per_topic, ge=1,
        description="representative documents kept per topic and language")
    kmeans_decay: float = Field(_ONLINE.kmeans_decay,
        description="per-batch forgetting of cluster counts (1 = never forget)")
    novelty_quantile: float | None = Field(_ONLINE.novelty_quantile, gt=0, lt=0.5, description=(
        "documents fitting their centre worse than this running quantile of the stream wait in a "
        "novelty pool; min_novel of them closer to each other than to their centres by novelty_margin "
        "seed a new topic in the weakest cluster (None = off)"))
    min_novel: int = Field(_ONLINE.min_novel, ge=2)
    novelty_margin: float = _ONLINE.novelty_margin
    train_every_docs: int = Field(512, description="run a training slice after this many new documents")
    train_steps: int = Field(10, description="gradient steps per slice")
    train_budget_seconds: float = Field(5.0, description="a slice stops early past this, to keep polling")
    train_in_background: bool = Field(True, description="train on a worker thread, overlapping embedding")
    max_training_debt_steps: float = Field(40.0, gt=0, description=(
        "gradient steps the trainer may owe (train_steps per train_every_docs documents learned); past "
        "this the loop trains itself and intake waits, so training keeps up whatever the host's load"))
    warmup_within_docs: int = Field(4000, ge=1, description=(
        "documents after XTRA's initialisation by which its warm-up steps are done, even during a backlog"))
    train_max_share: float = Field(1.0, gt=0, le=1, description=(
        "most of the wall time training may take (a duty cycle); below 1 it leaves CPU to ingestion"))
    train_nice: int = Field(19, ge=0, le=19, description=(
        "niceness added to the training thread (Linux), so ingestion gets the CPU first and training "
        "takes what is left (an idle host loses nothing)"))
    train_batch_scheduling: bool = Field(True, description=(
        "schedule the training thread as a batch job (Linux SCHED_BATCH): the CPU share its niceness "
        "gives, but it does not preempt the threads and the embedder process that wake up to ingest"))
    prevalence_momentum: float = Field(_ONLINE.prevalence_momentum, gt=0, lt=1,
        description="per-batch momentum of the topic prevalence estimate")
    lr: float = Field(_ONLINE.lr, gt=0, description="XTRA's Adam learning rate")
    lr_step: int = Field(_ONLINE.lr_step, ge=1, description=(
        "StepLR period kept in checkpoints; the stream never steps the schedule, so its learning rate stays lr"))
    lambda_cluster: float = Field(_ONLINE.lambda_cluster, ge=0, description="weight of XTRA's cluster contrastive loss")
    lambda_beta: float = Field(_ONLINE.lambda_beta, ge=0, description="weight of XTRA's topic-word alignment loss")
    lambda_nce: float = Field(_ONLINE.lambda_nce, ge=0,
        description="weight of XTRA's InfoNCE between theta and the embedding")
    min_docs_new_language: int = Field(_ONLINE.min_docs_new_language, ge=1,
        description="documents of a new language before XTRA gives it a decoder")
    seed: int = _ONLINE.seed


class SnapshotSettings(_Section):
    every_docs: int = 5000
    every_seconds: float = 300.0
    top_words: int = 15
    drift_window_seconds: float = Field(300.0, ge=0, description=(
        "drift compares a topic with the snapshot in force this many seconds of stream time earlier"))
    drift_threshold: float = Field(0.2, description="JS divergence above which a topic counts as drifting")
    alive_share: float = Field(0.2, description="a topic is alive while its cluster holds this share of the mean size")
    match_threshold: float = Field(0.7, description="centroid cosine above which a topic keeps its id")
    death_horizon: int = Field(3, description="snapshots a topic may stay not alive before it is declared dead")


class HttpSettings(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535, description="0 picks a free port")
    token: SecretStr | None = Field(None, description=(
        f"bearer token for state-changing endpoints, at least {MIN_TOKEN_CHARS} characters; unset = they are off"))
    max_body_bytes: int = Field(1_000_000, ge=1, description="request bodies past this get 413, chunked or not")
    max_documents: int = Field(256, ge=1)
    max_history: int = Field(100, ge=0, le=1000, description="most snapshots /topics/{id}?history= may ask for")
    rate_per_second: float = Field(2.0, gt=0, description=(
        "per client: /documents:assign and ?history= requests refilled per second (429 + Retry-After past it)"))
    rate_burst: int = Field(10, ge=1, description="per client: requests allowed at once before the rate applies")
    assign_concurrency: int = Field(1, ge=1, description="assignment requests embedded at once")
    assign_queue_depth: int = Field(4, ge=0, description="assignment requests waiting; more get 429")
    assign_max_share: float = Field(0.25, gt=0, le=1, description=(
        "most of the wall time assignment requests may spend embedding, so ingestion keeps the rest"))

    @field_validator("token")
    @classmethod
    def _strong_token(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None:
            return None
        secret = v.get_secret_value()
        if len(secret) < MIN_TOKEN_CHARS or secret != secret.strip() or not secret.isprintable():
            raise ValueError(f"http.token must be at least {MIN_TOKEN_CHARS} printable characters without "
                             f"surrounding whitespace (got {len(secret)}); unset it to turn the admin endpoints off")
        return v


class CheckpointSettings(_Section):
    every_seconds: float = 10.0
    every_docs: int = 5000
    keep: int = 3
    accept_model_loss: bool = Field(False, description=(
        "start from the consumer group's committed offsets even when checkpoints exist but none is "
        "readable (the model then lacks every document before those offsets); off = refuse to start"))
    max_docs_unsaved: int = Field(20_000, ge=1, description=(
        "while checkpoints cannot be written (e.g. a full disk), the loop pauses between batches once "
        "this many documents are past the last good checkpoint"))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="XTREAM_", env_nested_delimiter="__", extra="forbid")

    data_dir: Path = Field(Path("xtream-data"), description="checkpoints, snapshot store, local outputs")
    input_file: Path | None = Field(None, description="JSONL input instead of Kafka: a file, a FIFO, or '-' for stdin")
    follow_input: bool = Field(False, description="keep reading input_file as it grows (like tail -F) instead "
                                                  "of stopping at its end")
    log_level: str = "INFO"
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    batch: BatchSettings = Field(default_factory=BatchSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    snapshots: SnapshotSettings = Field(default_factory=SnapshotSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    checkpoint: CheckpointSettings = Field(default_factory=CheckpointSettings)

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        return init_settings, env_settings, _FileSource(settings_cls)

    @classmethod
    def load(cls, config_file: Path | None = None, **overrides: Any) -> "Settings":
        """Settings from ``config_file`` (else ``$XTREAM_CONFIG_FILE``), the environment and ``overrides``."""
        token = _CONFIG_FILE.set(config_file)
        try:
            return cls(**overrides)
        finally:
            _CONFIG_FILE.reset(token)


class _FileSource(PydanticBaseSettingsSource):
    """Values from ``$XTREAM_CONFIG_FILE`` (TOML or JSON), below environment variables."""

    def get_field_value(self, field, field_name):  # pragma: no cover - __call__ is used instead
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = _CONFIG_FILE.get() or os.environ.get("XTREAM_CONFIG_FILE")
        if not path:
            return {}
        path = str(path)
        text = Path(path).read_bytes()
        return json.loads(text) if path.endswith(".json") else tomllib.loads(text.decode())
