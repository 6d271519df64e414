"""What every tool backend returns, and how it fails."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class ToolOutput:
    """A backend's successful result: encoded image bytes plus what made them."""

    image: bytes
    backend: str
    logs: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)


class ToolError(Exception):
    """A tool call that did not produce an image. `transient` errors (timeouts, 429, 5xx) may be retried."""

    def __init__(self, reason: str, *, transient: bool = False, logs: str = "", backend: str | None = None):
        super().__init__(reason)
        self.reason, self.transient, self.logs, self.backend = reason, transient, logs, backend


class ImageBackend(Protocol):
    """One way to make an image for a tool. `inputs` holds the source image bytes for edits."""

    name: str

    async def __call__(self, params: Mapping[str, Any], inputs: Sequence[bytes] = ()) -> ToolOutput: ...


class RankedBackend(ImageBackend, Protocol):
    """A backend with several results per call (search): the usable ones, best ranked first, so a chooser (an MLLM
    judge in test-time scaling) can pick among them."""

    async def candidates(self, params: Mapping[str, Any], k: int) -> list[ToolOutput]: ...


def png_bytes(image: Any) -> bytes:
    """Encode a PIL image as PNG."""
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def openai_tool_error(exc: Exception, what: str) -> ToolError:
    """Map an `openai` SDK error to a ToolError: rate limits, timeouts, connection and 5xx errors are transient."""
    import openai

    transient = isinstance(
        exc, openai.RateLimitError | openai.APITimeoutError | openai.APIConnectionError | openai.InternalServerError
    )
    status = getattr(exc, "status_code", None)
    message = getattr(exc, "message", None) or str(exc)
    where = f" ({status})" if status else ""
    return ToolError(f"{what} failed{where}: {message}"[:1000], transient=transient)
