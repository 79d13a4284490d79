"""The command line as a newcomer uses it: --help, the embedded demo, the report."""

from __future__ import annotations

from typer.testing import CliRunner

from consumers.cli import app

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

    from stream.snapshot_store import SnapshotStore

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
