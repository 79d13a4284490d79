"""One typed settings object: unknown keys fail at start with their name; loading writes nothing to
the environment."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from xtream.consumers.config import Settings


def test_a_mistyped_environment_variable_fails_naming_it(monkeypatch):
    monkeypatch.setenv("XTREAM_MODEL__LEARNING_RATE", "0.01")   # no such model setting (it is model.lr)
    with pytest.raises(ValidationError, match=r"model\.learning_rate"):
        Settings()


def test_every_online_model_setting_can_be_set_from_the_environment(monkeypatch):
    from xtream.consumers.service import online_config

    monkeypatch.setenv("XTREAM_MODEL__LR", "0.01")
    monkeypatch.setenv("XTREAM_MODEL__LAMBDA_NCE", "40")
    cfg = online_config(Settings.load())
    assert cfg.lr == 0.01 and cfg.lambda_nce == 40


def test_an_unknown_key_in_a_config_file_fails_naming_it(tmp_path):
    cfg = tmp_path / "xtream.toml"
    cfg.write_text("[snapshots]\nevery_doc = 100\n")
    with pytest.raises(ValidationError, match=r"snapshots\.every_doc"):
        Settings.load(cfg)


def test_load_reads_the_file_without_touching_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("XTREAM_CONFIG_FILE", raising=False)
    cfg = tmp_path / "xtream.toml"
    cfg.write_text("[kafka]\ngroup_id = \"from-file\"\n")
    assert Settings.load(cfg).kafka.group_id == "from-file"
    assert "XTREAM_CONFIG_FILE" not in os.environ
    assert Settings().kafka.group_id == "xtream", "the next settings do not inherit the file"


def test_the_model_section_and_the_online_model_share_one_set_of_defaults():
    from dataclasses import fields

    from xtream.consumers.service import online_config
    from xtream.model.online_config import OnlineConfig

    built = online_config(Settings.load())
    assert built == OnlineConfig()
    assert {f.name for f in fields(OnlineConfig)} <= set(Settings.model_fields["model"].annotation.model_fields)
