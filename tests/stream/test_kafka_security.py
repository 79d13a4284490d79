"""Kafka over SASL_SSL (SCRAM-SHA-512 inside TLS) against a real broker with a throwaway CA.

The broker gets a third listener, ``SASL_SSL``, with a certificate for 127.0.0.1 signed by a CA made
here with the ``openssl`` CLI; the SCRAM user is created when the storage is formatted
(``kafka-storage format --add-scram``). It logs at INFO, so a refused login shows in its log. Its PLAINTEXT listener stays for the controller and the
broker's own readiness probe. The service reaches it through :class:`KafkaSettings` alone, with the
password in a file, and must never write that password to a log line or a settings dump.
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from kafka_support import stream_documents
from pydantic import SecretStr

from xtream.consumers.config import KafkaSettings, Settings
from xtream.consumers.wiring import build_service
from xtream.stream.kafka_broker import LocalKafkaBroker, free_port

pytestmark = pytest.mark.kafka

USER = "xtream"
PASSWORD = f"xt-{secrets.token_hex(16)}"   # unique, so finding it in a log can only mean a leak
REFUSED_WITHIN_MS = 3000


def _openssl(folder: Path, *args: str) -> None:
    proc = subprocess.run(["openssl", *args], cwd=folder, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{proc.stderr}")


def make_ca(folder: Path, name: str) -> None:
    _openssl(folder, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem",
             "-days", "2", "-subj", f"/CN=xtream test CA {name}",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")


def make_pki(folder: Path) -> SimpleNamespace:
    """A CA, a broker certificate for 127.0.0.1/localhost signed by it (PEM keystore: key + chain),
    and an unrelated second CA."""
    folder.mkdir(parents=True, exist_ok=True)
    make_ca(folder, "ca")
    make_ca(folder, "other-ca")
    _openssl(folder, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "broker.key", "-out", "broker.csr",
             "-subj", "/CN=localhost")
    (folder / "broker.ext").write_text("basicConstraints=critical,CA:FALSE\n"
                                       "keyUsage=critical,digitalSignature,keyEncipherment\n"
                                       "extendedKeyUsage=serverAuth\n"
                                       "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl(folder, "x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "broker.pem", "-days", "2", "-extfile", "broker.ext")
    keystore = folder / "broker-keystore.pem"   # unencrypted PKCS#8 key, then the chain
    keystore.write_bytes(b"".join((folder / f).read_bytes() for f in ("broker.key", "broker.pem", "ca.pem")))
    return SimpleNamespace(ca=folder / "ca.pem", other_ca=folder / "other-ca.pem", keystore=keystore)


def _wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


@pytest.fixture(scope="module")
def secure(tmp_path_factory) -> Iterator[SimpleNamespace]:
    """A broker with a SASL_SSL listener; ``settings`` is a KafkaSettings for it (password in a file)."""
    if shutil.which("openssl") is None:
        pytest.skip("the `openssl` CLI is needed to make the test CA")
    root = tmp_path_factory.mktemp("secure-kafka")
    pki = make_pki(root / "pki")
    port, controller_port, sasl_port = free_port(), free_port(), free_port()
    broker = LocalKafkaBroker.start_new(
        root / "data", port=port, controller_port=controller_port,
        extra_config={
            "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port},"
                         f"SASL_SSL://127.0.0.1:{sasl_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port},SASL_SSL://127.0.0.1:{sasl_port}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL",
            "sasl.enabled.mechanisms": "SCRAM-SHA-512",
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config":
                "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            "listener.name.sasl_ssl.ssl.keystore.type": "PEM",
            "listener.name.sasl_ssl.ssl.keystore.location": str(pki.keystore),
        },
        format_args=["--add-scram", f"SCRAM-SHA-512=[name={USER},password={PASSWORD}]"], log_level="INFO")
    try:
        _wait_for_port(sasl_port)
        password_file = root / "sasl-password"
        password_file.write_text(PASSWORD + "\n")
        password_file.chmod(0o600)
        settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{sasl_port}", security_protocol="SASL_SSL",
                                 sasl_mechanism="SCRAM-SHA-512", sasl_username=USER,
                                 sasl_password_file=password_file, ssl_cafile=pki.ca)
        yield SimpleNamespace(broker=broker, pki=pki, settings=settings, sasl_bootstrap=f"127.0.0.1:{sasl_port}")
    finally:
        broker.stop()


def produce(bootstrap: str, topic: str, values: list[bytes], **client) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", **client)
    try:
        for i, value in enumerate(values):
            producer.send(topic, value=value, key=str(i).encode(), headers=[("seq", str(i).encode())])
        producer.flush()
    finally:
        producer.close()


def consume_all(bootstrap: str, topic: str, expected: int, timeout: float = 60.0, **client) -> list:
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                             enable_auto_commit=False, **client)
    out, deadline = [], time.monotonic() + timeout
    try:
        while len(out) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                out.extend(batch)
    finally:
        consumer.close()
    return out


def test_client_config_carries_tls_and_scram_settings(secure):
    cfg = secure.settings.client_config()
    assert cfg == {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": USER,
                   "sasl_plain_password": PASSWORD, "ssl_cafile": str(secure.pki.ca), "ssl_check_hostname": True,
                   "reconnect_backoff_max_ms": 1000}
    with pytest.raises(ValueError, match="not both"):
        KafkaSettings(sasl_password=SecretStr("x"), sasl_password_file=Path("/dev/null"))


def test_an_unreadable_password_file_is_a_clear_error(tmp_path):
    missing = tmp_path / "no-such-secret"
    k = KafkaSettings(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username=USER,
                      sasl_password_file=missing)
    with pytest.raises(ValueError, match="no-such-secret"):
        k.client_config()


def test_produce_and_consume_over_sasl_ssl(secure, unique_name):
    values = [json.dumps({"seq": i}).encode() for i in range(50)]
    client = secure.settings.client_config()
    produce(secure.sasl_bootstrap, unique_name, values, **client)
    got = consume_all(secure.sasl_bootstrap, unique_name, len(values), **client)
    assert [r.value for r in got] == values
    assert [dict(r.headers)["seq"] for r in got] == [str(i).encode() for i in range(50)]


REFUSALS = {
    # name: (client settings that must be refused, where the cause shows: (kafka-python log | broker log, text))
    "wrong_password": (dict(sasl_password=SecretStr("not-the-password"), sasl_password_file=None),
                       ("broker", "due to invalid credentials with SASL mechanism SCRAM-SHA-512")),
    "plaintext_to_the_tls_port": (dict(security_protocol="PLAINTEXT", sasl_mechanism=None, ssl_cafile=None), None),
    "tls_without_sasl": (dict(security_protocol="SSL", sasl_mechanism=None), None),
    "broker_certificate_from_another_ca": (dict(ssl_cafile="OTHER"), ("client", "CERTIFICATE_VERIFY_FAILED")),
}


def broker_log_shows(broker: LocalKafkaBroker, text: str, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in broker.log_file.read_text(errors="replace"):
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_client_without_the_right_credentials_gets_an_error_and_no_data(secure, unique_name, case, caplog):
    topic = f"{unique_name}-data"
    produce(secure.sasl_bootstrap, topic, [b"secret-record"], **secure.settings.client_config())
    update, cause = REFUSALS[case]
    if update.get("ssl_cafile") == "OTHER":
        update = {**update, "ssl_cafile": secure.pki.other_ca}
    client = secure.settings.model_copy(update=update).client_config()
    caplog.set_level(logging.WARNING, logger="kafka")
    got: list = []
    with pytest.raises(KafkaError):
        consumer = KafkaConsumer(topic, bootstrap_servers=secure.sasl_bootstrap, group_id=None,
                                 auto_offset_reset="earliest", bootstrap_timeout_ms=REFUSED_WITHIN_MS, **client)
        try:   # not reached when the bootstrap is refused, as it must be
            for batch in consumer.poll(timeout_ms=3000).values():
                got.extend(batch)
        finally:
            consumer.close()
    assert got == []
    with pytest.raises(KafkaError):
        KafkaProducer(bootstrap_servers=secure.sasl_bootstrap, bootstrap_timeout_ms=REFUSED_WITHIN_MS, **client)
    if cause is not None:
        where, text = cause
        assert (text in caplog.text) if where == "client" else broker_log_shows(secure.broker, text), \
            f"the refusal's cause ({text}) is not in the {where} log"
    assert PASSWORD not in caplog.text


def test_the_service_runs_over_sasl_ssl_and_never_reveals_the_password(secure, unique_name, tmp_path, caplog,
                                                                        monkeypatch):
    docs = stream_documents(300)
    k = secure.settings.model_copy(update=dict(
        input_topic=f"{unique_name}-in", group_id=f"{unique_name}-g", assignments_topic=f"{unique_name}-assign",
        snapshots_topic=f"{unique_name}-snap", dead_letter_topic=f"{unique_name}-dlq",
        lineage_topic=f"{unique_name}-lineage"))
    client = k.client_config()
    produce(secure.sasl_bootstrap, k.input_topic, [json.dumps(d).encode() for d in docs] + [b"{not json"], **client)
    base = Settings(data_dir=tmp_path / "data")
    settings = base.model_copy(update={
        "kafka": k,
        "model": base.model.model_copy(update=dict(num_topics=10, warmup_docs=200, warmup_steps=5, batch_size=32,
                                                   vocab_max_size=1000, train_every_docs=200, train_steps=2)),
        "checkpoint": base.checkpoint.model_copy(update=dict(every_seconds=1.0)),
        "batch": base.batch.model_copy(update=dict(max_records=100, max_wait_ms=200)),
        "http": base.http.model_copy(update=dict(enabled=False)),
    })
    caplog.set_level(logging.DEBUG)
    for name in ("kafka", "consumers", "stream", "model"):   # a CLI test may have quietened them
        caplog.set_level(logging.DEBUG, logger=name)

    service = build_service(settings)
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    tp = TopicPartition(k.input_topic, 0)
    probe = KafkaConsumer(bootstrap_servers=k.bootstrap_servers, group_id=k.group_id, enable_auto_commit=False, **client)
    try:
        end = probe.end_offsets([tp])[tp]
        deadline = time.monotonic() + 120
        while probe.committed(tp) != end and time.monotonic() < deadline:
            assert thread.is_alive(), "service stopped early"
            time.sleep(1.0)
        committed = probe.committed(tp)
    finally:
        probe.close()
        service.stop()
        thread.join(60)
        service.close()
    assert not thread.is_alive()
    assert end == len(docs) + 1 and committed == end, "every record consumed and committed over SASL_SSL"
    assignments = consume_all(k.bootstrap_servers, k.assignments_topic, len(docs), **client)
    assert sorted(json.loads(r.value)["document_id"] for r in assignments) == sorted(d["id"] for d in docs)
    dlq = consume_all(k.bootstrap_servers, k.dead_letter_topic, 1, **client)
    assert [dict(r.headers)["xtream.error.reason"] for r in dlq] == [b"invalid_json"]

    assert any(r.name.startswith("kafka") and r.levelno == logging.DEBUG for r in caplog.records), \
        "kafka-python's DEBUG lines were captured, so the check below covers them"
    assert PASSWORD not in caplog.text
    assert not any(PASSWORD in r.getMessage() for r in caplog.records)
    for dump in (repr(settings), str(settings), settings.model_dump_json(), repr(settings.kafka), repr(service.settings),
                 repr(secure.broker), secure.broker.log_file.read_text(errors="replace")):
        assert PASSWORD not in dump

    # The same through the environment: a SecretStr that prints as stars.
    monkeypatch.setenv("XTREAM_KAFKA__SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("XTREAM_KAFKA__SASL_PASSWORD", PASSWORD)
    from_env = Settings()
    assert from_env.kafka.client_config()["sasl_plain_password"] == PASSWORD
    for dump in (repr(from_env), str(from_env), from_env.model_dump_json(), json.dumps(from_env.model_dump(), default=str)):
        assert PASSWORD not in dump and "**********" in dump
