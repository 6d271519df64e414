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
