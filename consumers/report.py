"""``xtream report``: topic history from the snapshot store as PNG plots and a Markdown summary.

Produces, in the output folder:

- ``prevalence.png``: prevalence over time of the most prevalent topics and of those born or jumping
  in prevalence, one panel per language, with the lineage events marked (born, prevalence jump,
  died) and the snapshots whose drift crossed the alert threshold shaded;
- ``drift.png``: drift timeline (max and median per-topic JS divergence per snapshot) above a
  topic x snapshot heat map of drift;
- ``quality.png``: temporal topic quality, the topic uniqueness (TU over the alive topics' top
  words) of every snapshot, per language;
- ``report.md``: the latest topics with their words per language, the most drifting topics, TU
  over time, and links to the plots.

Coherence (NPMI) needs the documents' word co-occurrences, which snapshots do not carry:
``xtream evaluate`` measures it on a corpus.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xtream.model.evaluation import topic_uniqueness
from xtream.stream.schemas import TopicSnapshot
from xtream.stream.snapshot_store import SnapshotStore

__all__ = ["write_report"]


def _series(snaps: list[TopicSnapshot]):
    # Event time when every snapshot has it (a replay of history plots on the history's own clock).
    use_stream = all(s.stream_time is not None for s in snaps)
    times = np.array([s.stream_time if use_stream else s.created_at for s in snaps])
    ids = sorted({t.topic_id for s in snaps for t in s.topics})   # stable ids: a column each
    col = {tid: j for j, tid in enumerate(ids)}
    langs = sorted({lang for s in snaps for lang in s.languages})
    prev = {lang: np.zeros((len(snaps), len(ids))) for lang in ["all", *langs]}
    drift = np.full((len(snaps), len(ids)), np.nan)
    for i, s in enumerate(snaps):
        for t in s.topics:
            j = col[t.topic_id]
            prev["all"][i, j] = t.prevalence
            for lang, p in t.prevalence_by_lang.items():
                prev[lang][i, j] = p
            drift[i, j] = max(t.drift.values()) if t.drift else np.nan
    return times, langs, prev, drift, ids


def _uniqueness(s: TopicSnapshot, lang: str, top_n: int = 10) -> float:
    """TU of the snapshot's alive topics' top ``top_n`` words in ``lang`` (NaN without any)."""
    lists = [t.words[lang].words[:top_n] for t in s.topics if t.alive and lang in t.words and t.words[lang].words]
    return topic_uniqueness(lists) if lists else float("nan")


def _md(text: str) -> str:
    """Text safe inside a Markdown table cell or list item (one line, no column breaks)."""
    return " ".join(text.split()).replace("|", "\\|")


def _label(s: TopicSnapshot, topic_id: int, lang: str | None = None, n: int = 3) -> str:
    t = next((x for x in s.topics if x.topic_id == topic_id), None)
    if t is None:
        return f"{topic_id}"
    lang = lang if lang in t.words else (sorted(t.words)[0] if t.words else None)
    return f"{topic_id}: " + (" ".join(t.words[lang].words[:n]) if lang else "")


#: Lineage events marked on the prevalence plot: kind -> (marker, colour).
EVENT_MARKS = {"born": ("^", "tab:green"), "prevalence_jump": ("P", "tab:orange"), "died": ("x", "tab:red")}


def write_report(store: SnapshotStore, out: Path, top_topics: int = 8, drift_alert: float = 0.35) -> Path:
    """Render the report of everything in ``store`` into ``out``; returns the Markdown path.

    ``drift_alert`` is the drift the alert rule fires at (``XtreamTopicDriftHigh``): snapshots above
    it are shaded on the prevalence plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import font_manager

    snaps = [s for s in (store.get(v) for v in store.versions()) if s is not None]
    if not snaps:
        raise ValueError(f"the snapshot store {store.path} is empty: run the service first")
    out.mkdir(parents=True, exist_ok=True)
    cjk = [f.name for f in font_manager.fontManager.ttflist
           if any(x in f.name for x in ("CJK", "Noto Sans JP", "WenQuanYi"))]
    if cjk:
        plt.rcParams["font.family"] = [cjk[0], "DejaVu Sans"]
    times, langs, prev, drift, ids = _series(snaps)
    latest = snaps[-1]
    col = {tid: j for j, tid in enumerate(ids)}
    row = {s.model_version: i for i, s in enumerate(snaps)}
    # Every topic is born at the first snapshot: only what happens after it is an event worth marking.
    events = [e for e in store.lineage() if e.kind in EVENT_MARKS and row.get(e.model_version, 0) > 0
              and e.topic_id in col]
    top = list(np.argsort(-prev["all"][-1])[:top_topics])   # columns of the most prevalent topics now
    top += [col[e.topic_id] for e in events if e.kind != "died" and col[e.topic_id] not in top][:4]
    alerted = np.nan_to_num(drift).max(axis=1) > drift_alert

    _plot_prevalence(plt, out / "prevalence.png", times, prev, langs, top, events, row, col, ids, latest,
                     alerted, drift_alert)
    _plot_drift(plt, out / "drift.png", times, drift)
    tu = {lang: np.array([_uniqueness(s, lang) for s in snaps]) for lang in langs}
    _plot_quality(plt, out / "quality.png", times, tu)
    lines = _markdown(snaps, events, row, drift, ids, top_topics, tu)
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _plot_prevalence(plt, path: Path, times, prev, langs, top, events, row, col, ids, latest, alerted,
                     drift_alert: float) -> None:
    panels = langs if any(prev[lang].any() for lang in langs) else ["all"]
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 3.2 * len(panels)), sharex=True, squeeze=False)
    for ax, lang in zip(axes[:, 0], panels):
        for t in top:
            ax.plot(times, prev[lang][:, t], marker=".", label=_label(latest, ids[t], "en"))
        for e in events:
            i, j = row[e.model_version], col[e.topic_id]
            marker, colour = EVENT_MARKS[e.kind]
            ax.scatter([times[i]], [prev[lang][i, j]], marker=marker, color=colour, s=60, zorder=3)
            if e.kind != "died":
                ax.annotate(f"{e.topic_id}", (times[i], prev[lang][i, j]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
        for i in np.flatnonzero(alerted):
            ax.axvline(times[i], color="tab:red", alpha=0.25, linewidth=4)
        ax.set_title(f"topic prevalence over time ({lang}): ^ born, + prevalence jump, x died, "
                     f"red band: drift > {drift_alert:g}")
        ax.set_ylabel("prevalence")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7, ncol=2, loc="upper left")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)



def _plot_drift(plt, path: Path, times, drift) -> None:
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 7), gridspec_kw={"height_ratios": [1, 2]})
    has = ~np.isnan(drift).all(axis=1)   # the first snapshot has nothing to drift from
    filled = np.nan_to_num(drift)
    ax1.plot(times[has], filled[has].max(axis=1), label="max over topics", color="tab:red", marker=".")
    ax1.plot(times[has], np.median(filled[has], axis=1), label="median", color="tab:blue", marker=".")
    ax1.set_ylabel("JS divergence")
    ax1.set_title("topic drift between successive snapshots")
    ax1.legend()
    ax1.grid(alpha=0.3)
    im = ax2.imshow(np.nan_to_num(drift).T, aspect="auto", cmap="magma", interpolation="nearest")
    ax2.set_xlabel("snapshot")
    ax2.set_ylabel("topic (stable id order)")
    fig.colorbar(im, ax=ax2, label="JS divergence")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_quality(plt, path: Path, times, tu: dict[str, np.ndarray]) -> None:
    """Topic uniqueness of each snapshot's alive topics, per language."""
    fig, ax = plt.subplots(figsize=(11, 3.2))
    for lang, values in tu.items():
        ax.plot(times, values, marker=".", label=lang)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("TU (top 10 words)")
    ax.set_title("topic uniqueness of each snapshot (alive topics)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _markdown(snaps, events, row, drift, ids, top_topics: int, tu: dict[str, np.ndarray]) -> list[str]:
    """The report's lines: the snapshots' span, topics now, events, representative documents, drift."""
    latest = snaps[-1]
    lines = ["# xtream topic report", "",
             f"{len(snaps)} snapshots from {snaps[0].created_at:%Y-%m-%d %H:%M} "
             f"to {latest.created_at:%Y-%m-%d %H:%M} UTC; "
             f"latest model version {latest.model_version}, {latest.documents_seen} documents, "
             f"languages {', '.join(latest.languages)}.", "",
             "![prevalence](prevalence.png)", "", "![drift](drift.png)", "", "![quality](quality.png)", "",
             "## Topics now (by prevalence)", "",
             "| topic | prevalence | " + " | ".join(latest.languages) + " |",
             "|---:|---:|" + "---|" * len(latest.languages)]
    for t in sorted(latest.topics, key=lambda t: -t.prevalence):
        words = [(f"**{_md(t.labels[lang])}**: " if t.labels.get(lang) else "") + _md(" ".join(t.words[lang].words[:8]))
                 if lang in t.words else "" for lang in latest.languages]
        lines.append(f"| {t.topic_id} | {t.prevalence:.3f} | " + " | ".join(words) + " |")
    if events:
        lines += ["", "## Topic events", "", "| snapshot | documents | event | topic | words |",
                  "|---:|---:|---|---:|---|"]
        for e in events:
            s = snaps[row[e.model_version]]
            lines.append(f"| v{s.model_version} | {s.documents_seen} | {e.kind} | {e.topic_id} | "
                         f"{' '.join((e.words or e.previous_words)[:8])} |")
    shown = [t for t in sorted(latest.topics, key=lambda t: -t.prevalence) if t.documents][:top_topics]
    if shown:
        lines += ["", "## Representative documents", ""]
        for t in shown:
            lines.append(f"- topic {t.topic_id} ({' / '.join(v for v in t.labels.values() if v)})")
            lines += [f"  - [{lang}] `{_md(d.id)}`: {_md(d.text)}"
                      for lang in sorted(t.documents) for d in t.documents[lang]]
    langs = list(tu)
    if langs:
        lines += ["", "## Topic uniqueness over time (alive topics, top 10 words)", "",
                  "| snapshot | documents | " + " | ".join(langs) + " |", "|---:|---:|" + "---:|" * len(langs)]
        step = -(-len(snaps) // 20)   # at most ~20 rows, the latest always
        for i in sorted(set(range(0, len(snaps), step)) | {len(snaps) - 1}):
            lines.append(f"| v{snaps[i].model_version} | {snaps[i].documents_seen} | "
                         + " | ".join("" if np.isnan(tu[lang][i]) else f"{tu[lang][i]:.3f}" for lang in langs) + " |")
    last_drift = drift[-1]
    if not np.isnan(last_drift).all():
        lines += ["", "## Most drifting topics in the last snapshot", ""]
        for j in np.argsort(-np.nan_to_num(last_drift))[:5]:
            lines.append(f"- topic {ids[j]} ({_label(latest, ids[j], 'en', 6)}): JS divergence {last_drift[j]:.3f}")
    return lines
