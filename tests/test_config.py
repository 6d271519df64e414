"""The config: env vars as defaults, clear errors, and the README documenting every field."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from llmi_graph import Config
from llmi_graph.config import resolve


def test_config_from_env(monkeypatch):
    monkeypatch.setenv("LLMI_POLICY_URL", "http://127.0.0.1:8000/v1")
    monkeypatch.setenv("LLMI_MAX_TOKENS", "99")
    monkeypatch.setenv("LLMI_ALLOW_UNSANDBOXED_CODE", "yes")
    cfg = Config.from_env(max_tokens=None, temperature=0.1)  # None overrides are ignored
    assert cfg.policy_url == "http://127.0.0.1:8000/v1" and cfg.max_tokens == 99
    assert cfg.allow_unsandboxed_code is True and cfg.temperature == 0.1
    monkeypatch.setenv("LLMI_MAX_TOKENS", "many")
    with pytest.raises(ValueError, match="LLMI_MAX_TOKENS='many'"):
        Config.from_env()


def test_a_json_context_never_sets_operator_settings():
    # A LangGraph API client can only send JSON: a dict context is ignored, the graph's own config applies.
    operator = Config(policy_url="http://127.0.0.1:8000/v1")
    evil = {"policy_url": "http://attacker.example/v1", "policy_api_key_env": "AWS_SECRET_ACCESS_KEY"}
    assert resolve(evil, operator) is operator
    assert resolve(None, operator) is operator
    embedded = Config(max_tokens=64)  # embedding code may pass a Config object in-process
    assert resolve(embedded, operator) is embedded


def test_max_tokens_limit_is_never_below_the_default():
    assert Config(max_tokens=9000, max_tokens_limit=4096).max_tokens_limit == 9000


def test_every_field_is_documented_in_the_readme():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    missing = [f.name for f in fields(Config) if f"LLMI_{f.name.upper()}" not in readme]
    assert missing == []
    assert all(f.metadata.get("help") for f in fields(Config))
