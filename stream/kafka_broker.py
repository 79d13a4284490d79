"""A real single-node Apache Kafka (KRaft) broker on 127.0.0.1, for tests and local runs.

The jars come from Maven Central: ``stream/kafka_pom.xml`` (package data) is resolved once with Maven into a cache
outside the clone (``$XTREAM_CACHE/kafka-<hash of the pom>``), then ``kafka.Kafka`` runs from them as
combined broker + controller. There is no fake broker anywhere in xtream's tests: this is it.

    with LocalKafkaBroker.start_new(data_dir) as broker:
        print(broker.bootstrap)          # "127.0.0.1:41234"
        broker.stop(); broker.restart()  # same data dir, same ports

Command line: ``python -m xtream.stream.kafka_broker [--data-dir DIR] [--port N]`` starts one in the
foreground until Ctrl-C (``deploy/kafka/run-local.sh`` wraps it).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xtream.stream.errors import XtreamStreamError

__all__ = ["LocalKafkaCluster", "KafkaSetupError", "LocalKafkaBroker", "resolve_kafka_classpath"]

logger = logging.getLogger(__name__)

POM = Path(__file__).resolve().parent / "kafka_pom.xml"   # package data: works outside a checkout


class KafkaSetupError(XtreamStreamError):
    """The local broker could not be resolved, formatted or started; the message says what to fix."""


def _cache_root() -> Path:
    return Path(os.environ.get("XTREAM_CACHE", Path.home() / ".cache" / "xtream"))


def _require(tool: str, hint: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise KafkaSetupError(f"`{tool}` was not found on PATH: {hint}")
    return path


def resolve_kafka_classpath(pom: Path = POM) -> Path:
    """Return a folder holding Kafka's jars, resolving them with Maven on first use.

    The folder is keyed on the pom's content, so changing the Kafka version resolves anew and the
    old cache is left alone. A ``.complete`` marker makes an interrupted copy retry.
    """
    key = hashlib.sha256(pom.read_bytes()).hexdigest()[:12]
    jars = _cache_root() / f"kafka-{key}"
    if (jars / ".complete").exists():
        return jars
    _require("java", "install a Java 17+ runtime (Debian: apt-get install openjdk-17-jre-headless)")
    mvn = _require("mvn", "install Apache Maven 3.8+ (Debian: apt-get install maven)")
    tmp = jars.with_name(jars.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    logger.info("resolving Apache Kafka jars from Maven Central into %s", jars)
    proc = subprocess.run(
        [mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
         f"-DoutputDirectory={tmp}", "-DincludeScope=runtime"],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        raise KafkaSetupError(f"Maven could not resolve Kafka from {pom}:\n{proc.stdout[-4000:]}{proc.stderr[-2000:]}")
    (tmp / ".complete").touch()
    shutil.rmtree(jars, ignore_errors=True)
    tmp.rename(jars)
    return jars


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kafka_uuid() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding.

    Never one that starts with "-" (1 in 64 do): ``kafka-storage format -t -abc...`` reads it as an
    option and fails, which is why Kafka's own ``Uuid.randomUuid`` draws again in that case too.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


_LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.file.ref = file
"""


@dataclass
class LocalKafkaBroker:
    """One KRaft broker+controller process on loopback, with its data under ``data_dir``.

    ``extra_config`` adds or overrides ``server.properties`` entries (e.g. SASL listeners);
    ``large_messages`` raises ``message.max.bytes`` to 16 MiB (the suite's own broker: some tests
    dead-letter records of several MiB); without it the broker keeps Kafka's default limits.
    ``format_args`` are appended to ``kafka-storage format`` (e.g. ``["--add-scram", "SCRAM-SHA-512=[...]"]``
    to create users before the first start; kept out of ``repr`` since they may hold passwords).
    Ports are chosen once and kept, so ``stop()`` + ``restart()`` reuses the same address and data.
    """

    data_dir: Path
    port: int = 0
    controller_port: int = 0
    extra_config: dict[str, str] = field(default_factory=dict)
    format_args: list[str] = field(default_factory=list, repr=False)
    heap: str = "512m"
    large_messages: bool = True
    node_id: int = 1
    voters: str = ""          # controller.quorum.voters; empty: this node alone
    cluster_id: str = ""      # empty: a new one at format time
    replication: int = 1      # replication of internal topics and default for new ones
    log_level: str = "WARN"
    _proc: subprocess.Popen[Any] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        self.port = self.port or free_port()
        self.controller_port = self.controller_port or free_port()

    # -- lifecycle ---------------------------------------------------------------------------
    @classmethod
    def start_new(cls, data_dir: Path | None = None, **kwargs: Any) -> "LocalKafkaBroker":
        """Format a fresh storage dir and start a broker on it; waits until it answers."""
        data_dir = Path(data_dir or tempfile.mkdtemp(prefix="xtream-kafka-"))
        broker = cls(data_dir=data_dir, **kwargs)
        broker.format()
        broker.restart()
        return broker

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "server.log"

    def _properties(self) -> dict[str, str]:
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": self.voters or f"{self.node_id}@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir / "logs"),
            "num.partitions": "1",
            "offsets.topic.replication.factor": str(self.replication),
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": str(self.replication),
            "transaction.state.log.min.isr": str(min(2, self.replication)),
            "share.coordinator.state.topic.replication.factor": str(self.replication),
            "share.coordinator.state.topic.min.isr": str(min(2, self.replication)),
            "default.replication.factor": str(self.replication),
            "min.insync.replicas": str(min(2, self.replication)),
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "true",
            "log.flush.interval.messages": "1",  # a test broker that survives kill -9 of itself
        }
        if self.large_messages:
            props["message.max.bytes"] = str(16 * 1024 * 1024)
        props.update(self.extra_config)
        return props

    def _write_config(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cfg = self.data_dir / "server.properties"
        cfg.write_text("".join(f"{k}={v}\n" for k, v in self._properties().items()))
        (self.data_dir / "log4j2.properties").write_text(
            _LOG4J2.format(log=self.log_file, level=self.log_level))
        return cfg

    def _java(self, main: str, *args: str, **popen: Any) -> subprocess.Popen[Any]:
        java = _require("java", "install a Java 17+ runtime (Debian: apt-get install openjdk-17-jre-headless)")
        jars = resolve_kafka_classpath()
        cmd = [java, f"-Xmx{self.heap}", "-Xms128m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
               f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
               "-cp", f"{jars}/*", main, *args]
        return subprocess.Popen(cmd, **popen)

    def format(self) -> None:
        """Format the KRaft storage directory with a new cluster id (``kafka-storage format``)."""
        cfg = self._write_config()
        proc = self._java("kafka.tools.StorageTool", "format", "-t", self.cluster_id or _kafka_uuid(), "-c", str(cfg),
                          *self.format_args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        out, _ = proc.communicate(timeout=120)
        if proc.returncode != 0:
            raise KafkaSetupError(f"kafka-storage format failed:\n{out[-4000:]}")

    def restart(self, timeout: float = 90.0, wait: bool = True) -> None:
        """Start the broker on the existing data dir and (unless ``wait`` is False) block until it
        serves metadata."""
        if self.running:
            return
        cfg = self._write_config()
        out = open(self.data_dir / "stdout.log", "ab")
        self._proc = self._java("kafka.Kafka", str(cfg), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        out.close()
        if wait:
            self._wait_ready(timeout)

    @property
    def running(self) -> bool:
        return self._live() is not None

    def _live(self) -> subprocess.Popen[Any] | None:
        """The broker's process while it runs."""
        return self._proc if self._proc is not None and self._proc.poll() is None else None

    @property
    def pid(self) -> int | None:
        proc = self._live()
        return None if proc is None else proc.pid

    def _wait_ready(self, timeout: float) -> None:
        from kafka import KafkaAdminClient  # kafka-python; imported here so `format` needs no client
        from kafka.errors import KafkaError

        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise KafkaSetupError(f"Kafka exited with {self._proc.returncode}:\n{self.tail_log()}")
            try:
                admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=3000)
                try:
                    admin.describe_cluster()
                    return
                finally:
                    admin.close()
            except (KafkaError, OSError) as exc:
                last = exc
                time.sleep(0.3)
        self.stop()
        raise KafkaSetupError(f"Kafka did not answer on {self.bootstrap} within {timeout:.0f}s "
                              f"({last!r}):\n{self.tail_log()}")

    def tail_log(self, lines: int = 40) -> str:
        text = ""
        for name in ("stdout.log", "server.log"):
            path = self.data_dir / name
            if path.exists():
                text += "".join(path.read_text(errors="replace").splitlines(True)[-lines:])
        return text

    def stop(self, timeout: float = 30.0) -> None:
        """Stop cleanly (SIGTERM: controlled shutdown), killing it if it hangs past ``timeout``."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
        self._proc = None

    def kill(self) -> None:
        """SIGKILL, no shutdown: for fault tests."""
        proc = self._live()
        if proc is not None:
            proc.kill()
            proc.wait(10)
        self._proc = None

    def pause(self) -> None:
        """SIGSTOP: the broker keeps its sockets but answers nothing (a 'slow broker')."""
        if self.pid is not None:
            os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.pid is not None:
            os.kill(self.pid, signal.SIGCONT)

    def __enter__(self) -> "LocalKafkaBroker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class LocalKafkaCluster:
    """``size`` KRaft nodes (each broker and controller) on loopback, internal topics and new topics
    replicated ``size`` times with ``min.insync.replicas`` 2: for tests that kill a partition leader."""

    data_dir: Path
    size: int = 3
    nodes: list[LocalKafkaBroker] = field(default_factory=list)

    @classmethod
    def start_new(cls, data_dir: Path, size: int = 3, **kwargs: Any) -> "LocalKafkaCluster":
        cluster = cls(data_dir=Path(data_dir), size=size)
        ports = [(free_port(), free_port()) for _ in range(size)]
        voters = ",".join(f"{i + 1}@127.0.0.1:{c}" for i, (_, c) in enumerate(ports))
        cluster_id = _kafka_uuid()
        cluster.nodes = [LocalKafkaBroker(data_dir=cluster.data_dir / f"node-{i + 1}", port=p, controller_port=c,
                                          node_id=i + 1, voters=voters, cluster_id=cluster_id, replication=size,
                                          **kwargs)
                         for i, (p, c) in enumerate(ports)]
        for node in cluster.nodes:
            node.format()
        try:
            for node in cluster.nodes:   # a quorum needs a majority: start all, then wait
                node.restart(wait=False)
            for node in cluster.nodes:
                node._wait_ready(120.0)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    @property
    def bootstrap(self) -> str:
        return ",".join(node.bootstrap for node in self.nodes)

    def node(self, node_id: int) -> LocalKafkaBroker:
        return self.nodes[node_id - 1]

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Run a local single-node Kafka (KRaft) on 127.0.0.1.")
    parser.add_argument("--data-dir", type=Path, default=None, help="storage dir (default: a new temp dir)")
    parser.add_argument("--port", type=int, default=9092)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="xtream-kafka-"))
    fresh = not (data_dir / "logs" / "meta.properties").exists()
    broker = LocalKafkaBroker(data_dir=data_dir, port=args.port)
    try:
        if fresh:
            broker.format()
        broker.restart()
        print(f"Kafka ready on {broker.bootstrap} (data: {data_dir}); Ctrl-C stops it", flush=True)
        stop_on = {signal.SIGINT, signal.SIGTERM}
        signal.pthread_sigmask(signal.SIG_BLOCK, stop_on)
        signal.sigwait(stop_on)
    except KafkaSetupError as exc:
        raise SystemExit(str(exc)) from None
    finally:
        broker.stop()


if __name__ == "__main__":
    main()
