"""Kafka security settings are checked when the settings are made: contradictions are refused,
weak choices are warned about, and both name the setting."""

from __future__ import annotations

import logging

import pytest
from pydantic import SecretStr, ValidationError

from xtream.consumers.config import KafkaSettings, Settings

SCRAM = dict(sasl_mechanism="SCRAM-SHA-512", sasl_username="xtream", sasl_password=SecretStr("pw-0123456789"))


@pytest.mark.parametrize("fields, setting", [
    (dict(security_protocol="SASL_SSL"), "kafka.sasl_mechanism"),
    (dict(security_protocol="SASL_PLAINTEXT", sasl_username="u", sasl_password=SecretStr("p")), "kafka.sasl_mechanism"),
    (SCRAM | dict(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA512"), "kafka.sasl_mechanism='SCRAM-SHA512'"),
    (SCRAM | dict(security_protocol="SASL_SSL", sasl_mechanism="scram-sha-512"), "upper case"),
    (dict(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-256", sasl_username="u"), "kafka.sasl_username and"),
    (dict(security_protocol="SASL_SSL", sasl_mechanism="PLAIN", sasl_password=SecretStr("p")), "kafka.sasl_username"),
])
def test_contradictory_sasl_settings_are_refused_naming_the_setting(fields, setting):
    with pytest.raises(ValidationError) as err:
        KafkaSettings(**fields)
    assert setting in str(err.value)


def test_the_refusal_also_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("XTREAM_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    with pytest.raises(ValidationError, match="kafka.sasl_mechanism"):
        Settings()


@pytest.mark.parametrize("fields, setting", [
    (SCRAM, "kafka.sasl_mechanism, kafka.sasl_username, kafka.sasl_password set but kafka.security_protocol=PLAINTEXT"),
    (dict(sasl_username="u", security_protocol="SSL"), "kafka.sasl_username set but kafka.security_protocol=SSL"),
    (dict(security_protocol="SSL", ssl_check_hostname=False), "kafka.ssl_check_hostname=false"),
    (SCRAM | dict(security_protocol="SASL_SSL", ssl_check_hostname=False), "kafka.ssl_check_hostname=false"),
    (dict(security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN", sasl_username="u", sasl_password=SecretStr("p")),
     "kafka.security_protocol=SASL_PLAINTEXT with kafka.sasl_mechanism=PLAIN"),
])
def test_weak_or_unused_security_settings_are_warned_about(fields, setting, caplog):
    caplog.set_level(logging.WARNING, logger="xtream.consumers.config")
    KafkaSettings(**fields)
    assert setting in caplog.text
    assert "pw-0123456789" not in caplog.text


@pytest.mark.parametrize("fields", [
    dict(),
    SCRAM | dict(security_protocol="SASL_SSL"),
    dict(security_protocol="SSL"),
    dict(security_protocol="SASL_SSL", sasl_mechanism="GSSAPI"),
])
def test_coherent_settings_pass_silently(fields, caplog):
    caplog.set_level(logging.WARNING, logger="xtream.consumers.config")
    KafkaSettings(**fields)
    assert caplog.text == ""
