"""The HTTP API (FastAPI, OpenAPI at /docs): health, metrics, topics, as-of snapshots, assignment.

Read-only by default. The one state-changing endpoint (``POST /admin/snapshot``) needs a bearer
token from configuration (at least ``MIN_TOKEN_CHARS`` long), compared in constant time, and does
not exist when no token is set. Bodies are capped at ``http.max_body_bytes`` while they are read,
chunked or not. ``/documents:assign`` and ``?history=`` are rate-limited per client, and
assignments run in their own bounded queue (:mod:`consumers.ratelimit`). A malformed query is
answered 4xx, never 500.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Annotated

import numpy as np
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, Field

from xtream.consumers.config import MIN_TOKEN_CHARS
from xtream.consumers.ratelimit import AssignmentQueue, Busy, ClientRateLimiter
from xtream.stream.schemas import MAX_TEXT_CHARS, LineageRecord, SnapshotTopic, TopicSnapshot

__all__ = ["ApiServer", "create_app", "create_worker_app"]

logger = logging.getLogger(__name__)

LIVENESS_STALL_SECONDS = 120.0


class AssignRequestDocument(BaseModel):
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    lang: str | None = Field(None, max_length=16)


class AssignRequest(BaseModel):
    documents: list[AssignRequestDocument] = Field(min_length=1)


class AssignedDocument(BaseModel):
    lang: str
    cluster: int
    theta: list[float]
    top_topics: list[tuple[int, float]]


class AssignResponse(BaseModel):
    model_version: int
    documents: list[AssignedDocument]


class TopicHistoryEntry(BaseModel):
    model_version: int
    created_at: datetime
    prevalence: float
    words: dict[str, list[str]]
    drift: dict[str, float]


class TopicDetail(BaseModel):
    topic: SnapshotTopic
    model_version: int
    history: list[TopicHistoryEntry]
    lineage: list[LineageRecord]


_OFFSET = re.compile(r"(?:(?P<partition>[0-9]{1,9}):)?(?P<offset>[0-9]{1,19})", re.ASCII)
_MAX_TIME_CHARS = 64


def _partition_of(key: str) -> int | None:
    """The partition of a ``'topic:partition'`` offsets key, or None if it has none."""
    tail = key.rsplit(":", 1)[-1]
    return int(tail) if _OFFSET.fullmatch(tail) else None


def _parse_time(text: str) -> datetime | None:
    """An aware datetime (naive = UTC) from ISO 8601, or None for anything else."""
    if len(text) > _MAX_TIME_CHARS or not text.isascii():
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        when.timestamp()
    except (ValueError, OverflowError, OSError):
        return None
    return when


class BodyLimit:
    """ASGI middleware: refuses a request body past ``max_bytes`` while it arrives.

    A ``Content-Length`` over the limit is answered 413 before any of the body is read; a chunked
    body is read up to the limit and answered 413 as soon as it passes it, without reading the rest
    (the server then closes the connection). At most ``max_bytes`` plus one chunk is held.
    """

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or len(length) > 18 or int(length) > self.max_bytes):
            return await self._refuse(send)
        if length is None and b"transfer-encoding" not in headers:
            return await self.app(scope, receive, send)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":   # client went away
                return
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                return await self._refuse(send)
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        del chunks
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _refuse(self, send) -> None:
        body = json.dumps({"detail": f"request body over {self.max_bytes} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def create_app(service) -> FastAPI:
    """An app over a running :class:`~consumers.service.TopicService`."""
    http = service.settings.http
    app = FastAPI(title="xtream", version="0.1.0",
                  description="Streaming cross-lingual topics (XTRA). Read-only unless a token is configured.")
    app.add_middleware(BodyLimit, max_bytes=http.max_body_bytes)
    limiter = ClientRateLimiter(http.rate_per_second, http.rate_burst)

    def rate_limited(request: Request) -> None:
        try:
            limiter.take(request.client.host if request.client else "?")
        except Busy as exc:
            raise HTTPException(429, exc.detail, headers={"Retry-After": str(exc.retry_after)}) from None

    def not_ready() -> list[str]:
        reasons = []
        if not service.source_reachable:
            reasons.append("source unreachable")
        elif not service.source.assigned():
            reasons.append("no partitions assigned")
        if not service.model.is_warm:
            reasons.append("model warming up")
        return reasons

    _health_routes(app, lambda: service.heartbeat, not_ready, service.metrics.registry,
                   ready=lambda: {"status": "ready", "model_version": service.model.version})
    _topic_routes(app, service.store, http, rate_limited)
    _assign_route(app, service, http, rate_limited)
    if http.token is not None:
        _admin_routes(app, service, http.token.get_secret_value().encode())
    return app


def _health_routes(app: FastAPI, heartbeat: Callable[[], float], not_ready: Callable[[], list[str]],
                   registry: CollectorRegistry, ready: Callable[[], dict]) -> None:
    """``/healthz`` (the loop keeps turning), ``/readyz`` (no reason not to be) and ``/metrics``."""

    @app.get("/healthz", tags=["health"])
    def healthz():
        """Live while the processing loop keeps turning."""
        stalled = time.monotonic() - heartbeat()
        if stalled > LIVENESS_STALL_SECONDS:
            raise HTTPException(503, f"processing loop stalled for {stalled:.0f}s")
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    def readyz():
        """Ready when the broker answers, partitions are assigned and the model is warm."""
        reasons = not_ready()
        if reasons:
            return JSONResponse({"status": "not ready", "reasons": reasons}, status_code=503)
        return ready()

    @app.get("/metrics", tags=["health"])
    def metrics():
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def _topic_routes(app: FastAPI, store, http, rate_limited: Callable[[Request], None]) -> None:
    """The snapshots: the latest, a topic with its history, the one in force at a time or offset."""

    def latest() -> TopicSnapshot:
        snap = store.latest()
        if snap is None:
            raise HTTPException(404, "no snapshot yet: the model is still warming up")
        return snap

    @app.get("/topics", response_model=TopicSnapshot, tags=["topics"])
    def topics():
        """The latest snapshot."""
        return latest()

    @app.get("/topics/{topic_id}", response_model=TopicDetail, tags=["topics"])
    def topic(request: Request, topic_id: int, history: Annotated[int, Query(ge=0)] = 50):
        """A topic's words per language now, and its last ``history`` snapshots (at most
        ``http.max_history``; rate-limited per client)."""
        if history > http.max_history:
            raise HTTPException(422, f"history is at most {http.max_history}")
        if history:
            rate_limited(request)
        snap = latest()
        current = {t.topic_id: t for t in snap.topics}
        if topic_id not in current:
            raise HTTPException(404, f"topic {topic_id} is not in the latest snapshot (see /topics)")
        return TopicDetail(topic=current[topic_id], model_version=snap.model_version,
                           history=_history(store, topic_id, history), lineage=store.lineage(topic_id))

    @app.get("/snapshots", response_model=TopicSnapshot, tags=["topics"])
    def snapshot_at(at: Annotated[str, Query(description="ISO 8601 time, or an input offset "
                                                         "('offset' or 'partition:offset')")]):
        """The snapshot in force at a time, or when the input reached an offset."""
        found = None
        offset = _OFFSET.fullmatch(at)
        if offset:
            part, off = int(offset["partition"] or 0), int(offset["offset"])
            for version, offsets in store.offsets_by_version():
                covered = [o for key, o in offsets.items() if _partition_of(key) == part]
                if covered and covered[0] <= off:
                    found = store.get(version)
                    break
        else:
            when = _parse_time(at)
            if when is None:
                raise HTTPException(422, f"'at' must be an ISO 8601 time or an offset, got {at[:64]!r}")
            found = store.as_of(when)
        if found is None:
            raise HTTPException(404, f"no snapshot in force at {at}")
        return found


def _history(store, topic_id: int, history: int) -> list[TopicHistoryEntry]:
    """The topic in each of the last ``history`` snapshots that hold it."""
    entries = []
    for version in store.versions()[-history:] if history else []:
        s = store.get(version)
        t = None if s is None else next((x for x in s.topics if x.topic_id == topic_id), None)
        if t is None:
            continue
        entries.append(TopicHistoryEntry(model_version=s.model_version, created_at=s.created_at,
                                         prevalence=t.prevalence, drift=t.drift,
                                         words={lang: w.words for lang, w in t.words.items()}))
    return entries


def _assign_route(app: FastAPI, service, http, rate_limited: Callable[[Request], None]) -> None:
    queue = AssignmentQueue(http.assign_concurrency, http.assign_queue_depth, http.assign_max_share)

    @app.post("/documents:assign", response_model=AssignResponse, tags=["topics"])
    def assign(request: Request, body: AssignRequest):
        """Topic mixtures of new texts under the current model; the model does not change.

        Rate-limited per client, and run in a bounded queue of its own (429 + ``Retry-After`` when
        full) within a share of wall time, so ingestion keeps the embedder."""
        rate_limited(request)
        if len(body.documents) > http.max_documents:
            raise HTTPException(413, f"at most {http.max_documents} documents per request")
        if not service.model.is_warm:
            raise HTTPException(503, "model warming up")
        try:
            with queue.admit():
                return _assign(service, body)
        except Busy as exc:
            raise HTTPException(429, exc.detail, headers={"Retry-After": str(exc.retry_after)}) from None


def _assign(service, body: AssignRequest) -> AssignResponse:
    from xtream.model.text import detect_language

    accepted = sorted(service.settings.model.languages)
    langs = []
    for d in body.documents:
        lang = (d.lang or detect_language(d.text, accepted)).lower()
        if lang not in accepted:
            raise HTTPException(422, f"language {lang!r} is not one of {accepted}")
        langs.append(lang)
    clusters, theta, version = service.assign_texts([d.text for d in body.documents], langs)
    top = np.argsort(-theta, axis=1)[:, :5]
    return AssignResponse(model_version=version, documents=[
        AssignedDocument(lang=langs[i], cluster=int(clusters[i]), theta=[round(float(x), 6) for x in theta[i]],
                         top_topics=[(int(t), round(float(theta[i, t]), 6)) for t in top[i]])
        for i in range(len(langs))])


def _admin_routes(app: FastAPI, service, expected: bytes) -> None:
    """``POST /admin/snapshot`` behind a bearer token, compared in constant time."""
    if len(expected) < MIN_TOKEN_CHARS:   # settings copied without validation
        raise ValueError(f"http.token must be at least {MIN_TOKEN_CHARS} characters")

    def require_token(authorization: Annotated[str | None, Header()] = None) -> None:
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), expected):
            raise HTTPException(401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"})

    @app.post("/admin/snapshot", tags=["admin"], dependencies=[Depends(require_token)])
    def force_snapshot():
        """Ask the service for a snapshot at its next loop turn."""
        service.request_snapshot()
        return JSONResponse({"status": "snapshot requested"}, status_code=202)


class ApiServer:
    """uvicorn in a daemon thread beside the processing loop."""

    def __init__(self, service, http=None, app: FastAPI | None = None) -> None:
        import uvicorn

        http = http or service.settings.http
        self.config = uvicorn.Config(app or create_app(service), host=http.host, port=http.port, log_level="warning",
                                     access_log=False, lifespan="off")
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, name="xtream-http", daemon=True)

    def start(self, timeout: float = 10.0) -> "ApiServer":
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        if not self.server.started:
            raise RuntimeError("HTTP API did not start")
        return self

    @property
    def port(self) -> int:
        return self.server.servers[0].sockets[0].getsockname()[1]

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def create_worker_app(worker) -> FastAPI:
    """Health and metrics of a stateless ``--role embedder`` worker (it holds no topics)."""
    app = FastAPI(title="xtream embedder", version="0.1.0")
    _health_routes(app, lambda: worker.heartbeat,
                   lambda: [] if worker.source_reachable else ["source unreachable"], worker.metrics.registry,
                   ready=lambda: {"status": "ready"})
    return app
