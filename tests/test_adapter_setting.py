"""The embedded policy's adapter setting: a folder of the operator's, 'none' (the default), or 'shipped' (the
packaged folder, where a trained default will ship; none does yet, and saying 'shipped' then is a clear error)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from llmi_graph import Config
from llmi_graph.policy import SHIPPED_ADAPTER, explicit_adapter, resolve_adapter

ROOT = Path(__file__).resolve().parents[1]


def test_none_is_the_default_and_shipped_says_that_none_ships_yet(monkeypatch, tmp_path):
    monkeypatch.delenv("LLMI_ADAPTER", raising=False)
    assert Config().adapter is None
    for off in (None, "", "none", "None"):
        assert resolve_adapter(off) is None
    assert not (SHIPPED_ADAPTER / "adapter_config.json").exists()
    with pytest.raises(FileNotFoundError, match="no adapter ships with this llmi yet"):
        resolve_adapter("shipped")
    assert resolve_adapter("shipped", embedded_model_path=str(tmp_path)) is None  # a model of the operator's own
    with pytest.raises(FileNotFoundError, match="not a LoRA adapter folder"):
        resolve_adapter(str(tmp_path))
    (tmp_path / "adapter_config.json").write_text("{}")
    assert resolve_adapter(str(tmp_path)) == tmp_path.resolve()
    assert [explicit_adapter(a) for a in (None, "none", "shipped", str(tmp_path))] == [False, False, False, True]


def test_the_cli_refuses_shipped_with_the_reason_before_any_work(tmp_path):
    out = tmp_path / "report"
    command = [sys.executable, "-m", "llmi_graph.cli", "run", "Plot a parabola", "--adapter", "shipped"]
    result = subprocess.run([*command, "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 2 and "no adapter ships with this llmi yet" in result.stdout + result.stderr
    assert not out.exists()
