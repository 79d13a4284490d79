"""The HTTP API over a service that has processed the bundled demo stream (no Kafka needed)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient

from consumers.api import create_app
from consumers.config import HttpSettings, Settings
from consumers.wiring import DEMO_STREAM, build_service


def demo_settings(tmp_path, **http) -> Settings:
    s = Settings(data_dir=tmp_path / "data", input_file=DEMO_STREAM)
    return s.model_copy(update={
        "model": s.model.model_copy(update=dict(num_topics=6, warmup_docs=120, warmup_steps=20, batch_size=32,
                                                vocab_min_df=2, vocab_refresh_every=120, train_every_docs=60,
                                                train_steps=3)),
        "snapshots": s.snapshots.model_copy(update=dict(every_docs=100)),
        "batch": s.batch.model_copy(update=dict(max_records=60)),
        "http": HttpSettings(**http),
    })


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    service = build_service(demo_settings(tmp_path_factory.mktemp("api"), token="s3cret", max_body_bytes=20_000,
                                          max_documents=4))
    service.run()
    yield service
    service.close()


@pytest.fixture
def client(served):
    return TestClient(create_app(served))


def test_health_and_readiness(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_metrics_follow_prometheus_conventions(client):
    body = client.get("/metrics").text
    assert 'xtream_documents_processed_total{lang="en"} 120.0' in body
    assert 'xtream_documents_processed_total{lang="ja"} 120.0' in body
    assert 'xtream_documents_dead_lettered_total{reason="invalid_json"} 0.0' in body, "series exist from start"
    assert 'xtream_stage_seconds_bucket{le="0.005",stage="embed"}' in body
    assert "xtream_snapshots_published_total" in body and "xtream_last_snapshot_timestamp_seconds" in body
    assert "topic_id" not in body, "no per-topic series"


def test_topics_returns_latest_snapshot(client, served):
    snap = client.get("/topics").json()
    assert len(snap["topics"]) == 6 and snap["model_version"] == served.model.version
    assert set(snap["languages"]) == {"en", "zh", "ja"}


def test_topics_carry_labels_and_representative_documents(client, served):
    import json

    from consumers.wiring import DEMO_STREAM

    texts = {}
    for line in DEMO_STREAM.read_text(encoding="utf-8").splitlines():
        doc = json.loads(line)
        texts[doc["id"]] = doc["text"]
    snap = client.get("/topics").json()
    with_docs = 0
    for t in snap["topics"]:
        assert set(t["labels"]) == {"en", "zh", "ja"}
        for label in t["labels"].values():
            assert 2 <= len(label.replace("·", " ").split()) <= 3
        for lang, docs in t["documents"].items():
            assert 1 <= len(docs) <= 3
            for d in docs:   # a document of the stream, in this language, its text cut to 200 characters
                assert texts[d["id"]][:200] == d["text"] and f"-{lang}-" in d["id"]
            with_docs += 1
    assert with_docs >= len(snap["topics"])   # every topic has documents in at least one language
    detail = client.get(f"/topics/{snap['topics'][0]['topic_id']}").json()
    assert "labels" in json.dumps(detail)


def test_topic_detail_has_words_and_history(client, served):
    latest = served.store.latest()
    alive = next(t for t in latest.topics if t.alive)
    detail = client.get(f"/topics/{alive.topic_id}").json()
    assert set(detail["topic"]["words"]) == {"en", "zh", "ja"}
    assert detail["topic"]["slot"] == alive.slot
    assert 1 <= len(detail["history"]) <= len(served.store)
    assert [h["model_version"] for h in detail["history"]] == sorted(h["model_version"] for h in detail["history"])
    assert any(e["kind"] == "born" for e in detail["lineage"]), "an alive topic was born"
    assert client.get("/topics/9999").status_code == 404


def test_snapshots_as_of_time_and_offset(client, served):
    versions = served.store.versions()
    first = served.store.get(versions[0])
    assert client.get("/snapshots", params={"at": "2000-01-01T00:00:00Z"}).status_code == 404
    at_first = client.get("/snapshots", params={"at": (first.created_at + timedelta(microseconds=1)).isoformat()})
    assert at_first.json()["model_version"] == first.model_version
    now = client.get("/snapshots", params={"at": datetime.now(timezone.utc).isoformat()}).json()
    assert now["model_version"] == versions[-1]
    covered = list(first.offsets.values())[0]
    assert client.get("/snapshots", params={"at": str(covered)}).json()["model_version"] == first.model_version
    assert client.get("/snapshots", params={"at": "last tuesday"}).status_code == 422


def test_assign_returns_theta_without_changing_the_model(client, served):
    before = (served.model.n_docs, served.model.version)
    res = client.post("/documents:assign", json={"documents": [
        {"text": "The striker scored twice and the club won the league title."},
        {"text": "央行宣布下调利率以支持经济增长", "lang": "zh"}]})
    assert res.status_code == 200
    docs = res.json()["documents"]
    assert [d["lang"] for d in docs] == ["en", "zh"]
    assert all(abs(sum(d["theta"]) - 1) < 1e-3 and len(d["theta"]) == 6 for d in docs)
    assert (served.model.n_docs, served.model.version) == before


def test_assign_rejects_bad_requests_with_4xx(client):
    assert client.post("/documents:assign", json={"documents": []}).status_code == 422
    assert client.post("/documents:assign", json={"documents": [{"text": "x", "lang": "xx"}]}).status_code == 422
    assert client.post("/documents:assign", json={"documents": [{"text": "a"}] * 5}).status_code == 413
    assert client.post("/documents:assign", json={"documents": [{"text": "a" * 30_000}]}).status_code == 413


def test_admin_needs_the_bearer_token(client, served):
    assert client.post("/admin/snapshot").status_code == 401
    assert client.post("/admin/snapshot", headers={"Authorization": "Bearer wrong"}).status_code == 401
    ok = client.post("/admin/snapshot", headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 202 and served._snapshot_requested.is_set()


def test_admin_does_not_exist_without_a_token(served):
    from copy import copy

    tokenless = copy(served)
    tokenless.settings = served.settings.model_copy(update={"http": HttpSettings(max_body_bytes=20_000)})
    assert TestClient(create_app(tokenless)).post("/admin/snapshot").status_code == 404


def test_openapi_is_served(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/healthz", "/readyz", "/topics", "/topics/{topic_id}", "/snapshots", "/documents:assign"} <= set(paths)
