"""The operator's settings: one typed config object.

Backends, URLs, the names of key variables, model paths, sandbox switches, folders and caps are *operator
settings*. They come only from the environment (every field defaults to its `LLMI_<NAME>` variable), the CLI,
or the code of an app that embeds llmi (`build_graph(config=...)`, or a `Config` object passed in-process
as the run's context). A request (the graph's input, `llmi_graph.state.Request`) cannot change them: a
LangGraph API client can only send JSON, and a JSON context is never read as a `Config`.

Secrets are never fields: the config names the environment variable that holds them.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmi_graph.tags import SOURCES

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
    adapter: str | None = _setting(
        "adapter",
        "shipped",
        "The embedded policy's LoRA adapter: 'shipped' (the default), the one packaged in "
        "llmi_graph/adapters/smollm2-llmi (on the default SmolLM2 only; a model of your own runs without it); a "
        "folder that rl/train.py saved; or 'none', the base model.",
    )
    embedded_device: str = _setting(
        "embedded_device",
        "cpu",
        "Where the embedded policy runs: cpu, cuda, cuda:N, or auto (cuda when torch sees a GPU).",
    )
    # Defaults for what a request may set, and the operator's caps on it.
    max_tokens: int = _setting("max_tokens", 768, "Most tokens the policy may write, unless the request says.")
    max_tokens_limit: int = _setting(
        "max_tokens_limit", 4096, "The most max_tokens a request may ask for (raised to max_tokens if lower)."
    )
    temperature: float = _setting("temperature", 0.7, "Sampling temperature (0: greedy), unless the request says.")
    top_p: float = _setting("top_p", 0.95, "Nucleus sampling mass, unless the request says.")
    seed: int | None = _setting(
        "seed", None, "Sampling seed, for repeatable drafts, unless the request says.", kind=int
    )
    repair_rounds: int = _setting(
        "repair_rounds",
        0,
        "Rounds of tool-failure repair (0: off), unless the request says: each failed slot goes "
        "back to the policy with its reason, and the tag it rewrites runs again.",
    )
    max_repair_rounds: int = _setting(
        "max_repair_rounds", 3, "The most repair rounds a request may ask for (raised to repair_rounds if lower)."
    )
    candidates: int = _setting(
        "candidates", 1, "Drafts the scaled graph samples per request (llmi_graph.scaling), unless the request says."
    )
    max_candidates: int = _setting(
        "max_candidates", 8, "The most candidates a request may ask for (raised to candidates if lower)."
    )
    select: str = _setting(
        "select", "rules", "How the scaled graph chooses a draft, unless the request says: rules, judge or relative."
    )
    enhance: bool = _setting(
        "enhance", False, "Tool-specific enhancement in the scaled graph, unless the request says (see README)."
    )
    polish: bool = _setting(
        "polish", False, "The scaled graph's polish: the policy rewrites the text around the final images."
    )
    max_input_images: int = _setting("max_input_images", 8, "The most input images one request may carry.")
    input_image_max_mb: float = _setting(
        "input_image_max_mb", 20.0, "The largest input image (decoded) a request may carry."
    )
    policy_timeout_s: float = _setting("policy_timeout_s", 900.0, "Wall limit for one policy call.")

    # The tools.
    tool_timeout_s: float = _setting("tool_timeout_s", 120.0, "Wall limit for one attempt of a tool call.")
    tool_attempts: int = _setting(
        "tool_attempts", 3, "Attempts per tool call on transient errors (timeouts, 429, 5xx)."
    )
    code_timeout_s: float = _setting("code_timeout_s", 30.0, "Wall limit for one run of model-written code.")
    code_memory_mb: int = _setting("code_memory_mb", 2048, "Address-space limit of each process of model code.")
    code_total_memory_mb: int | None = _setting(
        "code_total_memory_mb", None, "Memory for all processes of one code run (default: code_memory_mb).", kind=int
    )
    code_disk_mb: int = _setting("code_disk_mb", 64, "Everything one code run may write (a private tmpfs).")
    code_concurrency: int = _setting("code_concurrency", 2, "Code runs at once.")
    allow_unsandboxed_code: bool = _setting(
        "allow_unsandboxed_code",
        False,
        "Run model code with resource limits only if bubblewrap is unavailable (unsafe).",
    )

    # Tool backends ("auto" picks from what is configured; see README).
    search_backend: str = _setting("search_backend", "auto", "auto, serpapi, library or none.")
    serpapi_api_key_env: str = _setting("serpapi_api_key_env", "SERPAPI_API_KEY", "Env var holding the SerpAPI key.")
    search_top_k: int = _setting("search_top_k", 5, "Search results to try, in rank order.")
    search_library_dir: str | None = _setting(
        "search_library_dir", None, "A folder of images (with optional captions) for the offline search backend."
    )
    download_max_mb: float = _setting("download_max_mb", 20.0, "Largest image a search may download.")
    download_min_side: int = _setting("download_min_side", 400, "Smallest width and height a search result may have.")
    download_max_pixels: int = _setting("download_max_pixels", 25_000_000, "Largest width x height a result may have.")
    diffusion_backend: str = _setting("diffusion_backend", "auto", "auto, server, diffusers, openai or none.")
    edit_backend: str = _setting("edit_backend", "auto", "auto, server, diffusers, openai, local or none.")
    code_backend: str = _setting("code_backend", "auto", "auto, local or e2b.")
    image_server_urls: str | None = _setting(
        "image_server_urls", None, "Comma-separated Qwen-Image generation server URLs (llmi serve-images)."
    )
    edit_server_urls: str | None = _setting(
        "edit_server_urls", None, "Comma-separated Qwen-Image-Edit server URLs (llmi serve-images)."
    )
    image_server_token_env: str = _setting(
        "image_server_token_env", "LLMI_IMAGE_SERVER_TOKEN", "Env var holding the image servers' bearer token."
    )
    diffusers_model: str | None = _setting(
        "diffusers_model", None, "A local diffusers text-to-image model run in-process (diffusion backend)."
    )
    diffusers_edit_model: str | None = _setting(
        "diffusers_edit_model", None, "A local diffusers edit model run in-process (edit backend)."
    )
    diffusers_trust_remote_code: bool = _setting(
        "diffusers_trust_remote_code", False, "Run custom component code shipped with the diffusers models."
    )
    diffusers_device: str = _setting("diffusers_device", "auto", "Device for in-process diffusers: auto, cpu, cuda.")
    diffusers_dtype: str = _setting("diffusers_dtype", "auto", "dtype for in-process diffusers (auto: bf16 on GPU).")
    images_api_url: str | None = _setting(
        "images_api_url", None, "OpenAI-compatible images API base URL (OpenAI, a Seedream gateway, ...)."
    )
    images_api_model: str = _setting("images_api_model", "gpt-image-1", "Model name at images_api_url.")
    images_api_key_env: str = _setting(
        "images_api_key_env", "LLMI_IMAGES_API_KEY", "Env var holding the images API key (else OPENAI_API_KEY)."
    )
    image_width: int = _setting("image_width", 1024, "Width of generated images.")
    image_height: int = _setting("image_height", 1024, "Height of generated images.")
    image_steps: int | None = _setting(
        "image_steps", None, "Inference steps for diffusion/edit (backend default).", kind=int
    )
    e2b_api_key_env: str = _setting("e2b_api_key_env", "E2B_API_KEY", "Env var holding the E2B key.")
    search_concurrency: int = _setting("search_concurrency", 4, "Search calls at once.")
    diffusion_concurrency: int = _setting("diffusion_concurrency", 4, "Diffusion calls at once.")
    edit_concurrency: int = _setting("edit_concurrency", 4, "Edit calls at once.")
    tool_cache: bool = _setting(
        "tool_cache", False, "Reuse identical tool calls across runs (memory and disk); within a run always."
    )
    approve: str = _setting(
        "approve",
        "",
        "Tools whose calls wait for a person's approval before they run, comma-separated (e.g. code,search); "
        "empty: none. The graph needs a checkpointer (see README: Human approval).",
    )

    # Storage.
    cache_dir: str = _setting(
        "cache_dir", "~/.cache/llmi", "Model cache, sandbox font cache and the default image store."
    )
    image_dir: str | None = _setting("image_dir", None, "Content-addressed image store (default: <cache_dir>/images).")

    def __post_init__(self) -> None:
        self.max_tokens_limit = max(self.max_tokens_limit, self.max_tokens)
        self.max_repair_rounds = max(self.max_repair_rounds, self.repair_rounds)
        self.max_candidates = max(self.max_candidates, self.candidates)
        unknown = sorted(self.approval_tools - set(SOURCES))
        if unknown:
            raise ValueError(
                f"approve={self.approve!r} (LLMI_APPROVE, --approve): unknown tool(s) {', '.join(unknown)}; "
                f"expected some of {', '.join(SOURCES)}"
            )

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
    def approval_tools(self) -> frozenset[str]:
        """The tools whose calls wait for approval (`approve`, parsed)."""
        return frozenset(t.strip() for t in self.approve.split(",") if t.strip())

    @property
    def policy_api_key(self) -> str | None:
        return os.environ.get(self.policy_api_key_env) or os.environ.get("OPENAI_API_KEY")


def resolve(context: Any, default: Config) -> Config:
    """The operator config a node should use: a `Config` object that embedding code passed as the run's
    context, else the graph's own. Anything else (a JSON context from a LangGraph API client) is ignored: a
    request never chooses operator settings."""
    return context if isinstance(context, Config) else default
