"""The command line as a newcomer uses it: --help, the embedded demo, the report."""

from __future__ import annotations

from typer.testing import CliRunner

from xtream.consumers.cli import app

runner = CliRunner()


def test_help_lists_the_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("run", "report", "train", "evaluate", "kafka"):
        assert command in result.output


def test_demo_run_then_report(tmp_path):
    result = runner.invoke(app, ["run", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "processed 360 documents" in result.output
    assert "topics at model version" in result.output
    report = runner.invoke(app, ["report", "--data-dir", str(tmp_path / "demo"), "--out", str(tmp_path / "report")])
    assert report.exit_code == 0, report.output
    md = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    assert "## Topics now" in md and "| en | ja | zh |" in md
    for png in ("prevalence.png", "drift.png"):
        assert (tmp_path / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## Representative documents" in md and "`demo-" in md   # documents of the stream, by id
    # temporal topic quality: TU of every snapshot's alive topics, per language, in (0, 1]
    assert (tmp_path / "report" / "quality.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    tu_rows = md.split("## Topic uniqueness over time")[1].split("\n## ")[0].splitlines()
    values = [float(x) for row in tu_rows if row.startswith("| v") for x in row.split("|")[3:-1] if x.strip()]
    assert values and all(0 < v <= 1 for v in values), tu_rows

    from xtream.stream.snapshot_store import SnapshotStore

    store = SnapshotStore(tmp_path / "demo" / "snapshots.sqlite")
    topic = next(t for t in store.get(store.versions()[-1]).topics if t.documents)
    history = runner.invoke(app, ["history", "--topic", str(topic.topic_id), "--data-dir", str(tmp_path / "demo")])
    assert history.exit_code == 0, history.output
    assert "label" in history.output
    first = next(iter(topic.documents.values()))[0]
    assert f"[{next(iter(topic.documents))}] {first.id}" in history.output


def test_report_on_a_missing_store_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["report", "--data-dir", str(tmp_path)])
    assert result.exit_code != 0 and "no snapshot store" in result.output


def test_run_on_a_fifo_serves_its_api_while_waiting_and_stops_on_sigterm(tmp_path):
    """A FIFO with no writer yet must not hold the process before its API starts, and SIGTERM while
    it waits for input ends it cleanly (exit 0), having processed what did arrive."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    from xtream.stream.kafka_broker import free_port

    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    port = free_port()
    env = os.environ | {"XTREAM_HTTP__PORT": str(port), "XTREAM_MODEL__NUM_TOPICS": "4",
                        "XTREAM_BATCH__MAX_WAIT_MS": "200"}
    log = open(tmp_path / "service.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "xtream.consumers.cli", "run", "--input", str(fifo),
                             "--data-dir", str(tmp_path / "data")], env=env, stdout=log, stderr=subprocess.STDOUT)
    writer = None
    try:
        deadline, up = time.monotonic() + 90, False
        while not up and time.monotonic() < deadline and proc.poll() is None:
            try:
                up = urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).status == 200
            except OSError:
                time.sleep(0.3)
        assert up, "the API did not come up while the input FIFO had no writer"
        writer = os.open(fifo, os.O_WRONLY)
        os.write(writer, b"".join(json.dumps({"id": f"d{i}", "text": "Markets rallied on rate news.", "lang": "en"})
                                  .encode() + b"\n" for i in range(5)))
        time.sleep(2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if writer is not None:
            os.close(writer)
        log.close()
    assert "processed 5 documents" in (tmp_path / "service.log").read_text(errors="replace")


def test_a_short_token_stops_run_at_start_with_the_setting_named(tmp_path, monkeypatch):
    monkeypatch.setenv("XTREAM_HTTP__TOKEN", "")
    result = runner.invoke(app, ["run", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and "http.token" in result.output, result.output
    assert "Traceback" not in result.output
