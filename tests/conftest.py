"""Shared fixtures: one real Apache Kafka (KRaft) broker per test session, unique names per test.

Set ``XTREAM_TEST_KAFKA=host:port`` to run the suite against a broker you already have instead.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from stream.kafka_broker import LocalKafkaBroker

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory) -> str:
    """Bootstrap address of the session's broker, started once with a fresh data dir."""
    external = os.environ.get("XTREAM_TEST_KAFKA")
    if external:
        yield external
        return
    broker = LocalKafkaBroker.start_new(tmp_path_factory.mktemp("kafka"))
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture
def unique_name(request) -> str:
    """A topic/group name no other test uses: test name + random suffix, Kafka-legal characters."""
    base = "".join(c if c.isalnum() else "-" for c in request.node.name)[:60]
    return f"{base}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the project; tests that need it skip with the reason when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared datasets not found at {SHARED_DATA}")
    return SHARED_DATA
