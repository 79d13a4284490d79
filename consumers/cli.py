"""The ``xtream`` command line (typer). Only this module configures logging."""

from __future__ import annotations

import json
import logging
import shutil
import signal
import sys
import threading
import tomllib
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from xtream.consumers.log_repeats import RepeatedRecords

app = typer.Typer(help="xtream: streaming cross-lingual topic modelling (XTRA) over Kafka.",
                  no_args_is_help=True, add_completion=False)
console = Console()
#: Exit status when the process must be restarted to resume consistently (an output transaction failed).
EXIT_RESTART = 75


class _JsonFormatter(logging.Formatter):
    """One JSON object per line: easy to ship to Loki/Elastic, still readable."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname,
               "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def _enable_stack_dumps() -> None:
    """``kill -USR1 <pid>`` prints every thread's stack to stderr: the first tool for a stuck service."""
    import faulthandler
    import signal

    try:
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    except (AttributeError, ValueError, OSError):   # stderr without a file descriptor (captured)
        pass


def _configure_logging(level: str, json_logs: bool) -> None:
    _enable_stack_dumps()
    handler = logging.StreamHandler(sys.stderr)
    plain = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(_JsonFormatter() if json_logs else plain)
    handler.addFilter(RepeatedRecords("kafka"))   # a broker outage would log each reconnection attempt
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    for noisy in ("kafka", "sentence_transformers", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _topic_cell(t, lang: str, top: int, docs: int = 1, chars: int = 60) -> str:
    """A topic in one language: its label in bold, its top words, its first representative documents."""
    if lang not in t.words:
        return ""
    label = t.labels.get(lang, "")
    lines = [f"[bold]{escape(label)}[/bold]"] if label else []
    lines.append(escape(" ".join(t.words[lang].words[:top])))
    lines += [f"[dim]{escape(d.id)}: {escape(d.text[:chars])}[/dim]" for d in t.documents.get(lang, [])[:docs]]
    return "\n".join(lines)


def _print_topics(snapshot, top: int = 6, limit: int = 20) -> None:
    table = Table(title=f"topics at model version {snapshot.model_version} "
                        f"({snapshot.documents_seen} documents)", show_lines=True)
    table.add_column("topic", justify="right")
    table.add_column("prevalence", justify="right")
    for lang in snapshot.languages:
        table.add_column(lang)
    for t in sorted(snapshot.topics, key=lambda t: -t.prevalence)[:limit]:
        table.add_row(str(t.topic_id), f"{t.prevalence:.3f}",
                      *[_topic_cell(t, lang, top) for lang in snapshot.languages])
    console.print(table)


def _load_settings(settings_cls, config: Path | None):
    """Settings, or a clean exit 2 naming every invalid setting (e.g. a short ``http.token``)."""
    from pydantic import ValidationError

    try:
        return settings_cls.load(config)
    except ValidationError as exc:
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"])
            console.print(f"[red]invalid setting[/red] {where}: {err['msg']}", highlight=False)
        raise typer.Exit(2) from None


@app.command()
def run(
    config: Annotated[Optional[Path], typer.Option(help="TOML/JSON settings file")] = None,
    input: Annotated[Optional[Path], typer.Option(help="JSONL documents instead of Kafka: a file, a FIFO, "
                                                        "or - for stdin")] = None,
    follow: Annotated[bool, typer.Option(help="with --input: keep reading as the file grows (like tail -F) "
                                              "until SIGTERM")] = False,
    bootstrap: Annotated[Optional[str], typer.Option(help="Kafka bootstrap servers; none = embedded default")] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="checkpoints, snapshot store, outputs")] = None,
    topics: Annotated[Optional[int], typer.Option(help="number of topics K")] = None,
    role: Annotated[str, typer.Option(help="all (one process) | embedder (scale-out, stateless) | "
                                           "trainer (owns the model)")] = "all",
    json_logs: Annotated[bool, typer.Option(help="structured JSON log lines")] = False,
    accept_model_loss: Annotated[bool, typer.Option(
        help="start from the group's committed offsets even if every checkpoint is unreadable "
             "(the model then lacks the documents before them)")] = False,
) -> None:
    """Run the service. With no Kafka and no --input, runs the bundled en/zh/ja demo stream."""
    if role not in ("all", "embedder", "trainer"):
        raise typer.BadParameter("must be all, embedder or trainer", param_hint="--role")
    from xtream.consumers.config import Settings

    settings, demo = _run_settings(_load_settings(Settings, config), input=input, follow=follow, bootstrap=bootstrap,
                                   data_dir=data_dir, topics=topics, accept_model_loss=accept_model_loss)
    _configure_logging(settings.log_level, json_logs)
    if demo:
        shutil.rmtree(settings.data_dir, ignore_errors=True)
        console.print(f"[bold]xtream demo[/bold]: no Kafka configured, streaming the bundled demo "
                      f"(en/zh/ja news) through the service; outputs in {settings.data_dir}")
    # A SIGTERM while the process is still starting (imports, model load, group join) must not
    # kill it mid-way with -15: note it, and stop cleanly as soon as the loop could start.
    early_stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: early_stop.set())
    if role == "embedder":
        _run_embedder(settings, early_stop)
    else:
        _run_service(settings, role, demo, early_stop)


def _run_settings(settings, *, input, follow, bootstrap, data_dir, topics, accept_model_loss):
    """``settings`` with the command line's options over them, and whether this is the bundled demo."""
    overrides: dict = {}
    demo = False
    if bootstrap:
        overrides["kafka"] = settings.kafka.model_copy(update={"bootstrap_servers": bootstrap})
    if input:
        overrides["input_file"] = input
    if follow:
        overrides["follow_input"] = True
    if data_dir:
        overrides["data_dir"] = data_dir
    if accept_model_loss:
        overrides["checkpoint"] = settings.checkpoint.model_copy(update={"accept_model_loss": True})
    if not (bootstrap or settings.kafka.bootstrap_servers or input or settings.input_file):
        from xtream.consumers.wiring import DEMO_PROFILE

        demo = True   # the embedded default, with the demo's profile over the settings
        overrides["data_dir"] = (data_dir or settings.data_dir) / "demo"
        profile = tomllib.loads(DEMO_PROFILE.read_text(encoding="utf-8"))
        if topics:
            profile["model"]["num_topics"] = topics
        for section, values in profile.items():
            overrides[section] = getattr(settings, section).model_copy(update=values)
    elif topics:
        overrides["model"] = settings.model.model_copy(update={"num_topics": topics})
    return settings.model_copy(update=overrides), demo


def _run_embedder(settings, early_stop: threading.Event) -> None:
    from xtream.consumers.wiring import build_embedding_worker

    worker = build_embedding_worker(settings)
    worker.install_signal_handlers()
    if early_stop.is_set():
        worker.stop()
    api = None
    if settings.http.enabled:
        from xtream.consumers.api import ApiServer, create_worker_app

        api = ApiServer(worker, http=settings.http, app=create_worker_app(worker)).start()
    try:
        worker.run()
    finally:
        if api is not None:
            api.stop()
        worker.close()
    console.print(f"embedder stopped after {worker.documents} documents ({worker.records} records)")


def _run_service(settings, role: str, demo: bool, early_stop: threading.Event) -> None:
    from xtream.consumers.checkpoint import CheckpointError
    from xtream.consumers.wiring import build_service

    try:
        service = build_service(settings, role=role)
    except CheckpointError as exc:   # incompatible, unreadable, or a data dir another process holds
        console.print(f"[red]cannot start:[/red] {exc}")
        raise typer.Exit(2) from None
    service.install_signal_handlers()
    if early_stop.is_set():
        service.stop()
    api = None
    if settings.http.enabled and not demo:
        from xtream.consumers.api import ApiServer

        api = ApiServer(service).start()
        logging.getLogger("xtream").info("HTTP API on http://%s:%d (OpenAPI at /docs)", settings.http.host, api.port)
    from xtream.stream.errors import TransactionFailed

    try:
        stats = service.run()
        latest = service.store.latest()
    except TransactionFailed as exc:
        console.print(f"[red]stopping:[/red] {exc}; a restart resumes from the last committed transaction")
        raise typer.Exit(EXIT_RESTART) from None
    finally:
        if api is not None:
            api.stop()
        service.close()
    console.print(f"processed {stats.documents} documents ({stats.records} records, "
                  f"{sum(stats.dead_letters.values())} dead-lettered) in {stats.batches} batches; "
                  f"{stats.snapshots} snapshots, {stats.checkpoints} checkpoints; "
                  f"model has {service.model.n_docs} documents")
    if latest is not None:
        _print_topics(latest)


@app.command()
def replay(
    from_: Annotated[str, typer.Option("--from", help="ISO time, offset, or 'partition:offset,...'")],
    to: Annotated[Optional[str], typer.Option(help="same forms; default: the end as of now")] = None,
    namespace: Annotated[Optional[str], typer.Option(help="names the replay's group, topics and data dir")] = None,
    config: Annotated[Optional[Path], typer.Option(help="TOML/JSON settings file")] = None,
    bootstrap: Annotated[Optional[str], typer.Option(help="Kafka bootstrap servers")] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="parent of replays/<namespace>")] = None,
    json_logs: Annotated[bool, typer.Option(help="structured JSON log lines")] = False,
) -> None:
    """Rebuild topics from a past time or offset, beside (not instead of) the live service."""
    import re
    import threading

    from tqdm.auto import tqdm

    from xtream.consumers.config import Settings
    from xtream.consumers.wiring import build_service, replay_settings

    settings = Settings.load(config)
    if bootstrap:
        kafka = settings.kafka.model_copy(update={"bootstrap_servers": bootstrap})
        settings = settings.model_copy(update={"kafka": kafka})
    if data_dir:
        settings = settings.model_copy(update={"data_dir": data_dir})
    _configure_logging(settings.log_level, json_logs)
    namespace = namespace or re.sub(r"[^A-Za-z0-9_-]+", "-", f"{from_}_{to or 'end'}").strip("-")
    settings = replay_settings(settings, namespace)
    service = build_service(settings, replay=(from_, to))
    service.install_signal_handlers()
    from xtream.stream.kafka_replay import KafkaReplaySource

    total = service.source.total if isinstance(service.source, KafkaReplaySource) else "?"
    console.print(f"replaying {total} records of {settings.kafka.input_topic} into namespace '{namespace}' "
                  f"(group {settings.kafka.group_id}, data {settings.data_dir})")
    worker = threading.Thread(target=service.run, name="xtream-replay")
    try:
        with tqdm(total=total, desc="replay", unit="rec") as bar:
            worker.start()
            while worker.is_alive():
                worker.join(0.5)
                bar.update(service.stats.records - bar.n)
    finally:
        service.stop()
        worker.join()
        latest = service.store.latest()
        service.close()
    console.print(f"replayed {service.stats.records} records, {service.stats.documents} documents; "
                  f"{service.stats.snapshots} snapshots")
    if latest is not None:
        _print_topics(latest)


store_app = typer.Typer(help="The local snapshot store.", no_args_is_help=True)
app.add_typer(store_app, name="store")


@store_app.command("rebuild")
def store_rebuild(
    from_kafka: Annotated[bool, typer.Option("--from-kafka", help="re-read the snapshots and lineage topics")] = False,
    config: Annotated[Optional[Path], typer.Option(help="TOML/JSON settings file")] = None,
    bootstrap: Annotated[Optional[str], typer.Option(help="Kafka bootstrap servers")] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="where snapshots.sqlite lives")] = None,
) -> None:
    """Rebuild the snapshot store (snapshots.sqlite) from the snapshots and lineage topics."""
    from tqdm.auto import tqdm

    from xtream.consumers.config import Settings
    from xtream.stream.snapshot_store import SnapshotStore, rebuild_from_kafka

    if not from_kafka:
        raise typer.BadParameter("only --from-kafka is supported", param_hint="--from-kafka")
    settings = Settings.load(config)
    k = settings.kafka
    servers = bootstrap or k.bootstrap_servers
    if not servers:
        raise typer.BadParameter("set --bootstrap or kafka.bootstrap_servers", param_hint="--bootstrap")
    store = SnapshotStore((data_dir or settings.data_dir) / "snapshots.sqlite")
    with tqdm(desc="rebuilding", unit="rec") as bar:
        snaps, events = rebuild_from_kafka(store, servers, k.snapshots_topic, k.lineage_topic, k.client_config(),
                                           progress=bar.update)
    console.print(f"store {store.path}: {snaps} snapshots and {events} lineage events read; "
                  f"{len(store)} snapshots held")
    store.close()


@app.command()
def history(
    topic: Annotated[int, typer.Option(help="stable topic id")],
    data_dir: Annotated[Path, typer.Option(help="the service's data dir")] = Path("xtream-data"),
    lang: Annotated[Optional[str], typer.Option(help="language of the words shown (default: all)")] = None,
    limit: Annotated[int, typer.Option(help="most recent snapshots shown")] = 30,
) -> None:
    """Print a topic's evolution: words and prevalence per snapshot, and its lineage events."""
    from xtream.stream.snapshot_store import SnapshotStore

    db = data_dir / "snapshots.sqlite"
    if not db.exists():
        raise typer.BadParameter(f"no snapshot store at {db}", param_hint="--data-dir")
    store = SnapshotStore(db)
    table = Table(title=f"topic {topic}")
    table.add_column("version", justify="right")
    table.add_column("time")
    table.add_column("prevalence", justify="right")
    table.add_column("drift", justify="right")
    table.add_column("label")
    table.add_column("words")
    rows = 0
    for version in store.versions()[-limit:]:
        snap = store.get(version)
        t = None if snap is None else next((x for x in snap.topics if x.topic_id == topic), None)
        if snap is None or t is None:
            continue
        langs = [lang] if lang else sorted(t.words)
        words = " | ".join(" ".join(t.words[la].words[:6]) for la in langs if la in t.words)
        labels = " | ".join(t.labels[la] for la in langs if t.labels.get(la))
        drift = max(t.drift.values()) if t.drift else 0.0
        table.add_row(str(version), f"{(snap.stream_time or snap.created_at):%Y-%m-%d %H:%M:%S}",
                      f"{t.prevalence:.3f}", f"{drift:.3f}", escape(labels), escape(words))
        rows += 1
        latest = t
    if rows == 0:
        raise typer.BadParameter(f"topic {topic} is in none of the last {limit} snapshots", param_hint="--topic")
    console.print(table)
    for la in langs:
        for d in latest.documents.get(la, []):
            console.print(f"  {escape(f'[{la}]')} {escape(d.id)}: {escape(d.text[:200])}")
    for e in store.lineage(topic):
        other = f" -> {e.related_topic_id}" if e.related_topic_id is not None else ""
        console.print(f"  v{e.model_version} {e.kind}{other} {' '.join(e.words or e.previous_words)}")


@app.command()
def report(
    data_dir: Annotated[Path, typer.Option(help="the service's data dir (holds snapshots.sqlite)")] = Path(
        "xtream-data"),
    out: Annotated[Path, typer.Option(help="folder for report.md and the PNG plots")] = Path("xtream-report"),
) -> None:
    """Render topic history (prevalence per language, drift timeline) as PNG plots and Markdown."""
    from xtream.consumers.report import write_report
    from xtream.stream.snapshot_store import SnapshotStore

    db = data_dir / "snapshots.sqlite"
    if not db.exists():
        raise typer.BadParameter(f"no snapshot store at {db}", param_hint="--data-dir")
    path = write_report(SnapshotStore(db), out)
    console.print(f"report written to {path} (plots beside it)")


@app.command()
def kafka(port: int = 9092, data_dir: Optional[Path] = None) -> None:
    """Start a local single-node Apache Kafka (KRaft) on 127.0.0.1 until Ctrl-C."""
    from xtream.stream import kafka_broker

    sys.argv = ["kafka", "--port", str(port)] + (["--data-dir", str(data_dir)] if data_dir else [])
    kafka_broker.main()


def _register_offline() -> None:
    from xtream.consumers.offline import evaluate, train

    app.command(help="Train XTRA offline from text files of documents per language.")(train)
    app.command(help="Evaluate a saved model: TU, NPMI, dictionary alignment, classification.")(evaluate)


_register_offline()


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
