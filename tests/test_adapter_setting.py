"""The embedded policy's adapter setting: 'shipped' (the default: the LoRA adapter packaged with llmi), a folder of
the operator's, or 'none' (the base model); and the shipped adapter itself: it loads, and it changes what the
policy writes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from llmi_graph import Config
from llmi_graph import policy as policy_module
from llmi_graph.policy import SHIPPED_ADAPTER, EmbeddedPolicy, Sampling, explicit_adapter, resolve_adapter
from llmi_graph.prompts import build_messages

ROOT = Path(__file__).resolve().parents[1]
README_PROMPT = "Plot y = x^2 for x from -3 to 3 and explain its shape"


def test_shipped_is_the_default_and_none_is_the_base_model(monkeypatch, tmp_path):
    monkeypatch.delenv("LLMI_ADAPTER", raising=False)
    assert Config().adapter == "shipped"
    assert resolve_adapter(Config().adapter) == SHIPPED_ADAPTER
    for off in (None, "", "none", "None"):
        assert resolve_adapter(off) is None
    assert resolve_adapter("shipped", embedded_model_path=str(tmp_path)) is None  # a model of the operator's own
    with pytest.raises(FileNotFoundError, match="not a LoRA adapter folder"):
        resolve_adapter(str(tmp_path))
    (tmp_path / "adapter_config.json").write_text("{}")
    assert resolve_adapter(str(tmp_path)) == tmp_path.resolve()
    assert [explicit_adapter(a) for a in (None, "none", "shipped", str(tmp_path))] == [False, False, False, True]


def test_an_install_that_lacks_the_shipped_adapter_says_so(monkeypatch, tmp_path):
    monkeypatch.setattr(policy_module, "SHIPPED_ADAPTER", tmp_path / "smollm2-llmi")
    with pytest.raises(FileNotFoundError, match=r"lacks its shipped adapter.*--adapter none"):
        resolve_adapter("shipped")


def test_the_shipped_adapter_is_small_and_has_a_model_card():
    weights = SHIPPED_ADAPTER / "adapter_model.safetensors"
    assert weights.is_file() and weights.stat().st_size < 12 * 2**20
    config = json.loads((SHIPPED_ADAPTER / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["peft_type"] == "LORA"
    card = (SHIPPED_ADAPTER / "README.md").read_text()
    assert "Warm start" in card and "GRPO" in card and "Held-out figures" in card
    figures = json.loads((SHIPPED_ADAPTER / "figures.json").read_text())
    assert figures["summary"]["seeds"] and len(figures["summary"]["seeds"]) >= 3


def test_the_shipped_adapter_loads_and_changes_what_the_policy_writes():
    """Greedy drafts of the README's prompt from the same base model with and without the adapter: the adapter's
    holds a valid code tag (the base model's, measured: an unclosed one). Loading it shows the user no library
    deprecation warning (peft asks transformers' deprecated `is_gradient_checkpointing`)."""
    from llmi_graph._embedded import cached_model_dir
    from llmi_graph.tags import parse_tags

    model_dir = cached_model_dir(Config().cache_path)
    messages = build_messages(README_PROMPT, ["code", "edit"], 0)
    sampling = Sampling(max_tokens=128, temperature=0.0)  # the held-out evaluation's setting
    base = asyncio.run(EmbeddedPolicy(model_dir).generate(messages, sampling))
    tuned_policy = EmbeddedPolicy(model_dir, SHIPPED_ADAPTER)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tuned = asyncio.run(tuned_policy.generate(messages, sampling))
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]
    assert tuned_policy.name == "SmolLM2-135M-Instruct+smollm2-llmi"
    assert tuned.text != base.text
    calls = parse_tags(tuned.text).calls
    assert calls and all(c.valid for c in calls) and calls[0].source == "code", tuned.text


def test_the_cli_refuses_an_adapter_that_is_not_one_before_any_work(tmp_path):
    out = tmp_path / "report"
    command = [sys.executable, "-m", "llmi", "run", "Plot a parabola", "--adapter", str(tmp_path)]
    result = subprocess.run([*command, "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 2 and "not a LoRA adapter folder" in result.stdout + result.stderr
    assert not out.exists()


def test_embedded_device_setting_names_a_torch_device():
    """LLMI_EMBEDDED_DEVICE: auto falls back to the CPU; a GPU asked for where torch sees none, or a name that is
    no device, is a clear error rather than a crash deep in generate."""
    import torch

    from llmi_graph.policy import _torch_device

    assert _torch_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert _torch_device("auto") == torch.device("cpu")
        with pytest.raises(ValueError, match="sees no GPU"):
            _torch_device("cuda")
    with pytest.raises(ValueError, match="not a device"):
        _torch_device("tpu-9")
