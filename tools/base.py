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
