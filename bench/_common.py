"""Pieces shared by the peer benchmarks: the EC News stream, thread pinning, memory, output.

Every peer benchmark reads the *same* documents in the *same* order: a dataset's training split,
its languages interleaved one by one (``en-0, zh-0, en-1, ...``, the order ``bench.stream_ecnews``
produces to Kafka), with the cached multilingual-USE embeddings that
``model.quality.embed_cached`` wrote under ``~/.cache/xtream/embeddings``. The languages are those
of the dataset's files (``train_bow_matrix_<code>.npz``; file code ``cn`` means ``zh``, any other
code is the language itself), so a dataset in the same layout with another pair runs as it is. Embedding cost is thereby
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
CODE_LANG = {"cn": "zh"}                      # file code -> language, where they differ
EMBEDDER = "use-multilingual-v3"              # the embedder whose cache every benchmark reads
#: CJK ideographs, kana and hangul: a word holding one belongs to the Chinese side of a shared vocabulary.
CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]")


class BenchInputError(FileNotFoundError):
    """A dataset or embedding-cache file a benchmark needs is missing or does not fit."""


# -- languages of a dataset -------------------------------------------------------------------------
def lang_of(code: str) -> str:
    """The language of a dataset file code (``cn`` -> ``zh``; any other code as is)."""
    return CODE_LANG.get(code, code)


def file_code(lang: str, data: Path = DATA) -> str:
    """The code of ``lang`` in ``data``'s file names (``zh`` -> ``cn`` where the files say ``cn``)."""
    for code, name in CODE_LANG.items():
        if name == lang and (data / f"vocab_{code}").is_file():
            return code
    return lang


def discover_languages(data: Path = DATA) -> list[str]:
    """The languages of a dataset, from its ``train_bow_matrix_<code>.npz`` files, sorted."""
    prefix, suffix = "train_bow_matrix_", ".npz"
    langs = sorted(lang_of(p.name[len(prefix):-len(suffix)]) for p in Path(data).glob(f"{prefix}*{suffix}"))
    if not langs:
        raise BenchInputError(f"{data} holds no {prefix}<lang>{suffix} file")
    return langs


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

    from xtream.model.allocator import retain_freed_memory

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


def cached_embeddings(split: str, lang: str, n: int, data: Path = DATA) -> np.ndarray:
    """The embed_cached file of ``<dataset>-<split>-<lang>``; refuses one of the wrong shape."""
    from xtream.model.quality import cache_file

    path = cache_file(f"{Path(data).name}-{split}-{lang}", EMBEDDER)
    if not path.is_file():
        raise BenchInputError(f"{path} is missing: run `python -m bench.quality_offline --data {data}` "
                              "once to embed EC News (about 5 minutes), then rerun")
    arr = np.load(path)
    if arr.shape != (n, 512):
        raise BenchInputError(f"{path} has shape {arr.shape}, expected {(n, 512)}")
    return arr.astype(np.float32, copy=False)


def load_split(split: str, lang: str, data: Path = DATA) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(texts, labels, embeddings) of one language's split (texts rebuilt from the BoW where the
    dataset ships none, as ``bench.quality_offline`` embedded them)."""
    f = file_code(lang, data)
    labels = np.loadtxt(data / f"{split}_labels_{f}.txt", dtype=np.int64).ravel()
    path = data / f"{split}_texts_{f}.txt"
    if path.is_file():
        texts = read_lines(path)
    else:
        import scipy.sparse as sp

        from bench.quality_offline import bow_to_texts

        texts = bow_to_texts(sp.load_npz(data / f"{split}_bow_matrix_{f}.npz").tocsr(), read_lines(data / f"vocab_{f}"))
    if len(labels) != len(texts):
        raise BenchInputError(f"{split} {lang}: {len(texts)} texts but {len(labels)} labels")
    return texts, labels, cached_embeddings(split, lang, len(texts), data)


def load_stream(data: Path = DATA, split: str = "train", langs: list[str] | None = None) -> Stream:
    """The languages' documents interleaved one by one, as ``bench.stream_ecnews`` produces them."""
    parts = {lang: load_split(split, lang, data) for lang in (langs or discover_languages(data))}
    order: list[tuple[str, int]] = []
    for i in range(max(len(p[0]) for p in parts.values())):
        order.extend((lang, i) for lang, p in parts.items() if i < len(p[0]))
    langs = [lang for lang, _ in order]
    idx = np.asarray([i for _, i in order], dtype=np.int64)
    texts = [parts[lang][0][i] for lang, i in order]
    labels = np.asarray([parts[lang][1][i] for lang, i in order], dtype=np.int64)
    emb = np.empty((len(order), 512), dtype=np.float32)
    langs_arr = np.asarray(langs)
    for lang in parts:
        rows = np.flatnonzero(langs_arr == lang)
        emb[rows] = parts[lang][2][idx[rows]]
    return Stream(texts, langs, emb, labels, idx)


class VocabularyWordEmbedder:
    """The service's ``embed_words`` (USE on single words) served from the cached vocabulary embeddings.

    The dataset's texts hold only words of its per-language vocabularies, whose USE embeddings
    ``bench.quality_offline`` cached; looking them up keeps word-embedding cost (an embedder cost,
    like the document embeddings) out of the figures without changing any value the model sees.
    A word outside both vocabularies is an error, not a silent zero vector.
    """

    def __init__(self, data: Path = DATA) -> None:
        from xtream.model.quality import cache_file

        self.vectors: dict[str, np.ndarray] = {}
        for lang in discover_languages(data):
            words = read_lines(data / f"vocab_{file_code(lang, data)}")
            path = cache_file(f"{Path(data).name}-vocab-{lang}", EMBEDDER)
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
    from xtream.consumers.config import Settings
    from xtream.consumers.service import online_config

    settings = Settings()
    m = settings.model
    return {"online": online_config(settings), "batch": settings.batch.max_records,
            "train_every_docs": m.train_every_docs, "train_steps": m.train_steps}


#: A benchmark stream shorter than four of the service's warm-ups warms up within its first quarter.
STREAM_WARMUP_SHARE = 0.25


def warmup_within(model, docs: int, share: float):
    """``model`` (the service's model settings, or an ``OnlineConfig``) with XTRA's warm-up at most
    ``share`` of a ``docs``-document stream, so that a benchmark stream shorter than a few warm-ups
    measures a trained model; streams long enough keep the service's own warm-up."""
    import dataclasses

    warmup = min(model.warmup_docs, max(1, int(docs * share)))
    if dataclasses.is_dataclass(model):
        return dataclasses.replace(model, warmup_docs=warmup)
    return model.model_copy(update={"warmup_docs": warmup})


def split_by_script(topic_word: np.ndarray, vocab: list[str],
                    langs: tuple[str, str] = ("en", "zh")) -> dict[str, tuple[np.ndarray, list[str]]]:
    """A topic-word matrix over one shared vocabulary -> ``{langs[0]: ..., langs[1]: ...}`` by script:
    words with a CJK character go to ``langs[1]``, the rest to ``langs[0]``."""
    is_cjk = np.asarray([bool(CJK.search(w)) for w in vocab])
    out = {}
    for lang, mask in ((langs[0], ~is_cjk), (langs[1], is_cjk)):
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
