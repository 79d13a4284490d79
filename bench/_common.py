"""Pieces shared by the peer benchmarks: the EC News stream, thread pinning, memory, output.

Every peer benchmark reads the *same* documents in the *same* order: the EC News training split,
English and Chinese interleaved one by one (``en-0, zh-0, en-1, ...``, the order
``bench.stream_ecnews`` produces to Kafka), with the cached multilingual-USE embeddings that
``model.quality.embed_cached`` wrote under ``~/.cache/xtream/embeddings``. Embedding cost is thereby
left out of every figure on purpose: all contenders get identical vectors, so the comparison is of
what each does *after* the encoder.
"""

from __future__ import annotations

import json
import logging
import os
import re
import resource
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger("bench")

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "ecnews"
DICTIONARY = DATA.parent / "dict" / "zh_en.tsv"
RESULTS = Path(__file__).resolve().parent / "results"
FILE_LANG = {"en": "en", "zh": "cn"}          # internal code -> code in the dataset's file names
EMBEDDER = "use-multilingual-v3"              # the embedder whose cache every benchmark reads
#: CJK ideographs, kana and hangul: a word holding one belongs to the Chinese side of a shared vocabulary.
CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]")


class BenchInputError(FileNotFoundError):
    """A dataset or embedding-cache file a benchmark needs is missing or does not fit."""


# -- threads and memory ----------------------------------------------------------------------------
def pin_threads(n: int) -> None:
    """Pin torch intra-op threads and every BLAS/OpenMP pool of the process to ``n``.

    Environment variables cover pools that start later (numba, OpenMP in sklearn); threadpoolctl
    covers BLAS libraries already loaded. Call before importing the contenders where possible.
    """
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(n)
    import torch
    from threadpoolctl import threadpool_limits

    from model.allocator import retain_freed_memory

    retain_freed_memory()   # as the service does (consumers.wiring.set_threads)
    torch.set_num_threads(n)
    threadpool_limits(limits=n)


def rss_mib(pid: int | str = "self", field: str = "VmRSS") -> float:
    """Resident memory of a process (this one by default; ``field="VmHWM"``: its peak), MiB."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def embedder_process_peak_mib(service) -> float:
    """Peak resident memory of the service's embedder process (0 when it embeds in-process).

    Read before ``service.close()``: ``getrusage`` of this process does not include it."""
    pid = getattr(service.embedder, "pid", None)
    return rss_mib(pid, "VmHWM") if pid else 0.0


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_seconds() -> float:
    """User + system CPU time of this process (all its threads)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# -- the stream ------------------------------------------------------------------------------------
@dataclass
class Stream:
    """The interleaved EC News training stream with everything each contender needs."""

    texts: list[str]          # pre-tokenised, space-joined (as shipped)
    langs: list[str]          # "en" / "zh"
    embeddings: np.ndarray    # (n, 512) float32, unit rows
    labels: np.ndarray        # (n,) news category
    index: np.ndarray         # (n,) row in its language's split

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, n: int | None) -> "Stream":
        if n is None or n >= len(self):
            return self
        return Stream(self.texts[:n], self.langs[:n], self.embeddings[:n], self.labels[:n], self.index[:n])


def read_lines(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


def cached_embeddings(split: str, lang: str, n: int) -> np.ndarray:
    """The embed_cached file of ``ecnews-<split>-<lang>``; refuses one of the wrong shape."""
    from model.quality import cache_file

    path = cache_file(f"ecnews-{split}-{lang}", EMBEDDER)
    if not path.is_file():
        raise BenchInputError(f"{path} is missing: run `python -m bench.quality_offline --data {DATA}` "
                              "once to embed EC News (about 5 minutes), then rerun")
    arr = np.load(path)
    if arr.shape != (n, 512):
        raise BenchInputError(f"{path} has shape {arr.shape}, expected {(n, 512)}")
    return arr.astype(np.float32, copy=False)


def load_split(split: str, lang: str, data: Path = DATA) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(texts, labels, embeddings) of one language's split."""
    f = FILE_LANG[lang]
    texts = read_lines(data / f"{split}_texts_{f}.txt")
    labels = np.loadtxt(data / f"{split}_labels_{f}.txt", dtype=np.int64).ravel()
    if len(labels) != len(texts):
        raise BenchInputError(f"{split} {lang}: {len(texts)} texts but {len(labels)} labels")
    return texts, labels, cached_embeddings(split, lang, len(texts))


def load_stream(data: Path = DATA, split: str = "train") -> Stream:
    """English and Chinese interleaved one by one, as ``bench.stream_ecnews`` produces them."""
    en, zh = load_split(split, "en", data), load_split(split, "zh", data)
    order: list[tuple[str, int]] = []
    for i in range(max(len(en[0]), len(zh[0]))):
        if i < len(en[0]):
            order.append(("en", i))
        if i < len(zh[0]):
            order.append(("zh", i))
    parts = {"en": en, "zh": zh}
    langs = [lang for lang, _ in order]
    idx = np.asarray([i for _, i in order], dtype=np.int64)
    texts = [parts[lang][0][i] for lang, i in order]
    labels = np.asarray([parts[lang][1][i] for lang, i in order], dtype=np.int64)
    emb = np.empty((len(order), 512), dtype=np.float32)
    langs_arr = np.asarray(langs)
    for lang in ("en", "zh"):
        rows = np.flatnonzero(langs_arr == lang)
        emb[rows] = parts[lang][2][idx[rows]]
    return Stream(texts, langs, emb, labels, idx)


class VocabularyWordEmbedder:
    """The service's ``embed_words`` (USE on single words) served from the cached vocabulary embeddings.

    EC News texts hold only words of its two 5,000-word vocabularies, whose USE embeddings
    ``bench.quality_offline`` cached; looking them up keeps word-embedding cost (an embedder cost,
    like the document embeddings) out of the figures without changing any value the model sees.
    A word outside both vocabularies is an error, not a silent zero vector.
    """

    def __init__(self, data: Path = DATA) -> None:
        from model.quality import cache_file

        self.vectors: dict[str, np.ndarray] = {}
        for lang, f in FILE_LANG.items():
            words = read_lines(data / f"vocab_{f}")
            path = cache_file(f"ecnews-vocab-{lang}", EMBEDDER)
            if not path.is_file():
                raise BenchInputError(f"{path} is missing: run `python -m bench.quality_offline` once")
            arr = np.load(path).astype(np.float32)
            if arr.shape[0] != len(words):
                raise BenchInputError(f"{path}: {arr.shape[0]} rows for {len(words)} words")
            self.vectors.update(zip(words, arr))

    def __call__(self, words: list[str]) -> np.ndarray:
        missing = [w for w in words if w not in self.vectors]
        if missing:
            raise KeyError(f"{len(missing)} words have no cached embedding, e.g. {missing[:5]}")
        if not words:
            return np.zeros((0, 512), np.float32)
        return np.stack([self.vectors[w] for w in words])


def service_defaults() -> dict:
    """The service's model settings that the benchmarks reproduce (``Settings()``: defaults unless
    ``XTREAM_*`` variables or a config file say otherwise, exactly as the service would read them)."""
    from consumers.config import Settings
    from consumers.service import online_config

    settings = Settings()
    m = settings.model
    return {"online": online_config(settings), "batch": settings.batch.max_records,
            "train_every_docs": m.train_every_docs, "train_steps": m.train_steps}


def split_by_script(topic_word: np.ndarray, vocab: list[str]) -> dict[str, tuple[np.ndarray, list[str]]]:
    """A topic-word matrix over one shared vocabulary -> ``{"en": ..., "zh": ...}`` by script."""
    is_zh = np.asarray([bool(CJK.search(w)) for w in vocab])
    out = {}
    for lang, mask in (("en", ~is_zh), ("zh", is_zh)):
        cols = np.flatnonzero(mask)
        out[lang] = (np.asarray(topic_word)[:, cols], [vocab[i] for i in cols])
    return out


# -- output ----------------------------------------------------------------------------------------
def write_json(path: Path, payload: dict) -> None:
    """Atomic write (temp file + rename), readable by everyone."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(payload, f, ensure_ascii=False, indent=1)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def print_table(title: str, columns: list[str], rows: list[list]) -> None:
    """A rich table on stdout (numbers to 4 significant digits)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for i, c in enumerate(columns):
        table.add_column(c, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*[(f"{v:.4g}" if isinstance(v, float) else "-" if v is None else str(v)) for v in row])
    Console(width=200).print(table)


def emit(payload: dict) -> None:
    """The last stdout line of every benchmark: one JSON object (``bench.all`` collects it)."""
    sys.stdout.flush()
    print(json.dumps(payload, ensure_ascii=False, default=float), flush=True)


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
