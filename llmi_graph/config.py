"""One typed config object: the graph's context schema.

Every field defaults to its `LLMI_<NAME>` environment variable when set, else to the value below, so
`Config()`, a context dict sent to `langgraph dev`, and the CLI all see the same settings. Secrets are
never fields: the config names the environment variable that holds them.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _from_env(name: str, default: Any, kind: type) -> Any:
    raw = os.environ.get(f"LLMI_{name.upper()}")
    if raw is None or raw == "":
        return default
    try:
        if kind is bool:
            if raw.strip().lower() not in _TRUE | _FALSE:
                raise ValueError(raw)
            return raw.strip().lower() in _TRUE
        return kind(raw)
    except ValueError:
        raise ValueError(f"LLMI_{name.upper()}={raw!r} is not a valid {kind.__name__}") from None


def _setting(name: str, default: Any, help: str, kind: type | None = None) -> Any:
    """A config field whose default comes from env var LLMI_<NAME> when set."""
    kind = kind or (str if default is None else type(default))
    return field(default_factory=lambda: _from_env(name, default, kind), metadata={"help": help})


@dataclass(kw_only=True)
class Config:
    """Settings for one run of the llmi graph. Every field can be set from an `LLMI_<NAME>` env var."""

    # The policy.
    policy_url: str | None = _setting(
        "policy_url",
        None,
        "OpenAI-compatible base URL (e.g. http://127.0.0.1:8000/v1); unset: embedded SmolLM2.",
    )
    policy_model: str = _setting("policy_model", "default", "Model name to request from policy_url.")
    policy_api_key_env: str = _setting(
        "policy_api_key_env",
        "LLMI_POLICY_API_KEY",
        "Env var holding the endpoint's API key (else OPENAI_API_KEY).",
    )
    policy_vision: bool = _setting("policy_vision", False, "Send input images to the policy (it must accept them).")
    embedded_model_path: str | None = _setting(
        "embedded_model_path",
        None,
        "A local transformers model dir for the embedded policy (default SmolLM2).",
    )
    max_tokens: int = _setting("max_tokens", 768, "Most tokens the policy may write.")
    temperature: float = _setting("temperature", 0.7, "Sampling temperature (0: greedy).")
    top_p: float = _setting("top_p", 0.95, "Nucleus sampling mass.")
    seed: int | None = _setting("seed", None, "Sampling seed, for repeatable drafts.", kind=int)
    policy_timeout_s: float = _setting("policy_timeout_s", 900.0, "Wall limit for one policy call.")

    # The tools.
    tool_timeout_s: float = _setting("tool_timeout_s", 120.0, "Wall limit for one attempt of a tool call.")
    tool_attempts: int = _setting(
        "tool_attempts", 3, "Attempts per tool call on transient errors (timeouts, 429, 5xx)."
    )
    code_timeout_s: float = _setting("code_timeout_s", 30.0, "Wall limit for one run of model-written code.")
    code_memory_mb: int = _setting("code_memory_mb", 2048, "Address-space limit for model-written code.")
    code_concurrency: int = _setting("code_concurrency", 2, "Code runs at once.")
    allow_unsandboxed_code: bool = _setting(
        "allow_unsandboxed_code",
        False,
        "Run model code with resource limits only if bubblewrap is unavailable (unsafe).",
    )

    # Storage.
    cache_dir: str = _setting(
        "cache_dir", "~/.cache/llmi", "Model cache, sandbox font cache and the default image store."
    )
    image_dir: str | None = _setting("image_dir", None, "Content-addressed image store (default: <cache_dir>/images).")

    @classmethod
    def from_env(cls, **overrides: Any) -> Config:
        """The environment's config with explicit overrides applied (None values are ignored)."""
        return cls(**{k: v for k, v in overrides.items() if v is not None})

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir).expanduser()

    @property
    def image_path(self) -> Path:
        return Path(self.image_dir).expanduser() if self.image_dir else self.cache_path / "images"

    @property
    def policy_api_key(self) -> str | None:
        return os.environ.get(self.policy_api_key_env) or os.environ.get("OPENAI_API_KEY")


def resolve(context: Config | dict[str, Any] | None) -> Config:
    """The config a node should use: the run's context, else the environment's."""
    if isinstance(context, Config):
        return context
    if isinstance(context, dict):
        return Config(**context)
    return Config()
