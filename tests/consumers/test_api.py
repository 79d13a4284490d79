"""The HTTP API over a service that has processed the bundled demo stream (no Kafka needed)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient

from xtream.consumers.api import create_app
from xtream.consumers.config import HttpSettings, Settings
from xtream.consumers.wiring import DEMO_STREAM, build_service

TOKEN = "s3cret-0123456789abcdef"


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
    service = build_service(demo_settings(tmp_path_factory.mktemp("api"), token=TOKEN, max_body_bytes=20_000,
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

    from xtream.consumers.wiring import DEMO_STREAM

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
    ok = client.post("/admin/snapshot", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 202 and served._snapshot_requested.is_set()


def test_admin_does_not_exist_without_a_token(served):
    from copy import copy

    tokenless = copy(served)
    tokenless.settings = served.settings.model_copy(update={"http": HttpSettings(max_body_bytes=20_000)})
    assert TestClient(create_app(tokenless)).post("/admin/snapshot").status_code == 404


def test_openapi_is_served(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/healthz", "/readyz", "/topics", "/topics/{topic_id}", "/snapshots", "/documents:assign"} <= set(paths)


# -- hardening: body limits, token strength, rate limits, the assignment queue, hostile queries -------------

def _served_with(served, **http):
    """A copy of the served service whose HTTP settings differ (the model is shared, read-only)."""
    from copy import copy

    other = copy(served)
    other.settings = served.settings.model_copy(update={"http": served.settings.http.model_copy(update=http)})
    return other


def _read_response(sock) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_a_chunked_body_over_the_limit_is_refused_while_it_arrives(served):
    """20 kB limit: the 413 must come after a few 8 kB chunks, not after the client has sent 2 MB."""
    import socket

    from xtream.consumers.api import ApiServer

    api = ApiServer(served, http=served.settings.http.model_copy(update={"port": 0})).start()
    try:
        sock = socket.create_connection(("127.0.0.1", api.port), timeout=5)
        sock.sendall(b"POST /documents:assign HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"a" * 8192
        sent, answer = 0, b""
        sock.settimeout(0.05)
        for _ in range(256):
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except OSError:   # the server answered and closed the connection
                break
            sent += len(chunk)
            try:
                answer = sock.recv(65536)
            except TimeoutError:
                continue
            if answer:
                break
        sock.settimeout(5)
        answer += b"" if b"\r\n\r\n" in answer else _read_response(sock)
        sock.close()
    finally:
        api.stop()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent <= 20_000 + 8 * 8192, f"413 only after {sent} bytes"


def test_an_oversized_content_length_is_refused_before_the_body(client):
    res = client.post("/documents:assign", content=b"{}", headers={"Content-Length": "9" * 5000})
    assert res.status_code in (400, 413)


@pytest.mark.parametrize("token", ["", " ", "short", "fifteen-chars!!", " padded-token-0123456789 "])
def test_an_empty_or_short_token_is_refused_at_start_naming_the_setting(monkeypatch, token):
    from pydantic import ValidationError

    monkeypatch.setenv("XTREAM_HTTP__TOKEN", token)
    with pytest.raises(ValidationError, match=r"http\.token"):
        Settings()


def test_an_empty_token_cannot_open_the_admin_endpoint_even_if_settings_were_copied(served):
    from pydantic import SecretStr

    weak = _served_with(served, token=SecretStr(""))
    with pytest.raises(ValueError, match=r"http\.token"):
        create_app(weak)


def test_assign_is_rate_limited_per_client_with_retry_after(served):
    c = TestClient(create_app(_served_with(served, rate_burst=2, rate_per_second=0.01, assign_max_share=1.0)))
    body = {"documents": [{"text": "The striker scored twice."}]}
    assert [c.post("/documents:assign", json=body).status_code for _ in range(2)] == [200, 200]
    limited = c.post("/documents:assign", json=body)
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1


def test_history_is_rate_limited_and_capped(served):
    c = TestClient(create_app(_served_with(served, rate_burst=2, rate_per_second=0.01, max_history=20)))
    alive = next(t for t in served.store.latest().topics if t.alive).topic_id
    assert c.get(f"/topics/{alive}", params={"history": 21}).status_code == 422
    assert [c.get(f"/topics/{alive}", params={"history": 20}).status_code for _ in range(2)] == [200, 200]
    limited = c.get(f"/topics/{alive}", params={"history": 5})
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    assert c.get(f"/topics/{alive}", params={"history": 0}).status_code == 200, "no history, no limit"


def test_the_default_history_cap_is_far_below_a_thousand_snapshots(client, served):
    alive = next(t for t in served.store.latest().topics if t.alive).topic_id
    assert client.get(f"/topics/{alive}", params={"history": 1000}).status_code == 422


def test_assignments_keep_within_their_share_of_the_embedder(served):
    """With a 1% share, an assignment that took t seconds bars the next for ~99 t: 429, not a queue
    that grows while ingestion waits."""
    c = TestClient(create_app(_served_with(served, assign_max_share=0.01)))
    body = {"documents": [{"text": "The striker scored twice."}]}
    assert c.post("/documents:assign", json=body).status_code == 200
    second = c.post("/documents:assign", json=body)
    assert second.status_code == 429 and int(second.headers["Retry-After"]) >= 1


def test_the_assignment_queue_is_bounded():
    import threading

    from xtream.consumers.ratelimit import AssignmentQueue, Busy

    queue = AssignmentQueue(concurrency=1, depth=1, max_share=1.0, wait_seconds=5)
    inside, release = threading.Event(), threading.Event()

    def hold():
        with queue.admit():
            inside.set()
            release.wait(5)

    holders = [threading.Thread(target=hold) for _ in range(2)]
    for t in holders:
        t.start()
    assert inside.wait(5)
    with pytest.raises(Busy) as busy:
        with queue.admit():
            pass
    release.set()
    for t in holders:
        t.join(5)
    assert busy.value.retry_after >= 1
    with queue.admit():   # free again
        pass


@pytest.mark.parametrize("at", ["²", "9" * 5000, "1:" + "9" * 5000, "٣", "12:", ":", "1:2:3", "-1", "+5",
                                "9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59", "x" * 10_000, "\x00",
                                "2026-01-01T00:00:00\u202e"])
def test_hostile_snapshot_queries_are_answered_not_500(client, at):
    assert client.get("/snapshots", params={"at": at}).status_code < 500


def test_query_parsers_never_answer_500(served):
    from urllib.parse import quote

    from hypothesis import HealthCheck, example, given, settings
    from hypothesis import strategies as st

    c = TestClient(create_app(_served_with(served, rate_per_second=1e9, rate_burst=10**9)))
    # ASCII digits, other scripts' decimal digits (int() takes them) and digits int() refuses (isdigit() is True)
    digits = st.text(alphabet=st.sampled_from("0123456789:٣۹०²³¹₄⑤"), min_size=1, max_size=30)

    @settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @example(at="1" * 5000, topic="1" * 5000, history="1" * 5000)
    @given(at=st.one_of(st.text(max_size=40), digits, st.from_regex(r"[0-9]{1,6}:[0-9]{1,30}", fullmatch=True),
                        st.datetimes().map(lambda d: d.isoformat())),
           topic=st.one_of(st.text(min_size=1, max_size=12).filter(lambda t: t not in (".", "..")), digits),
           history=st.one_of(st.text(max_size=12), st.integers(-10**30, 10**30).map(str)))
    def check(at, topic, history):
        assert c.get("/snapshots", params={"at": at}).status_code < 500
        assert c.get(f"/topics/{quote(topic, safe='')}", params={"history": history}).status_code < 500

    check()


def test_an_offset_query_parses_only_the_snapshot_it_returns(served, tmp_path, monkeypatch):
    from copy import copy

    from xtream.stream.snapshot_store import SnapshotStore

    store = SnapshotStore(tmp_path / "snapshots.sqlite")
    base = served.store.latest()
    key = next(iter(base.offsets))
    for version in range(1, 6):
        store.add(base.model_copy(update={"model_version": version, "offsets": {key: 100 * version}}))
    other = copy(served)
    other.store = store
    parsed = []
    real_get = store.get
    monkeypatch.setattr(store, "get", lambda v: parsed.append(v) or real_get(v))
    c = TestClient(create_app(other))
    try:
        assert c.get("/snapshots", params={"at": "250"}).json()["model_version"] == 2
        assert c.get("/snapshots", params={"at": "0:99"}).status_code == 404
    finally:
        store.close()
    assert parsed == [2], "only the snapshot returned was parsed"
