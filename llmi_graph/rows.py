"""The LLM-I row format, shared by batch runs, evaluation and RL training.

A row: `prompt` (text, or chat messages whose last user turn is the request), `image_num` (-1 none, 0 no
constraint, 99 at least one, N exactly N), `tools` (the sources the prompt needs), `question` (the plain request),
optional `images` (input image paths, relative to the data file) and an optional `id`. JSONL or parquet, through
HF `datasets`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmi_graph._extras import require
from llmi_graph.store import data_url
from llmi_graph.tags import SOURCES


@dataclass(frozen=True)
class Row:
    """One request row, normalised. `id` is the row's own id when the data has one (not part of equality)."""

    prompt: str
    image_num: int
    tools: tuple[str, ...]
    images: tuple[str, ...]
    id: str | None = field(default=None, compare=False)

    def request(self) -> dict[str, Any]:
        """The graph input for this row (its image files read and sent as data: a request never carries paths)."""
        return {"prompt": self.prompt, "image_num": self.image_num, "images": [_image_data(p) for p in self.images]}


@functools.lru_cache(maxsize=256)
def _image_data(path: str) -> str:
    return data_url(Path(path).read_bytes())


def prompt_text(prompt: Any) -> str:
    """The request text of a `prompt` field: the string itself, or the last user message's text."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        for message in reversed(prompt):
            if isinstance(message, dict) and message.get("role") == "user":
                content = message.get("content")
                if isinstance(content, str):
                    return content
                return "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
    raise ValueError(f"a prompt must be text or chat messages with a user turn, got {type(prompt).__name__}")


def normalise(raw: dict[str, Any], base: Path, where: str) -> Row:
    """Check one raw row and resolve its image paths; errors name the row."""
    try:
        text = prompt_text(raw.get("prompt") or raw.get("question"))
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    if not text.strip():
        raise ValueError(f"{where}: empty prompt")
    image_num = raw.get("image_num", 0)
    if image_num is None:
        image_num = 0
    if not isinstance(image_num, int) or isinstance(image_num, bool) or image_num < -1:
        raise ValueError(f"{where}: image_num must be -1, 0, 99 or N > 0, got {image_num!r}")
    tools = tuple(raw.get("tools") or ())
    unknown = [t for t in tools if t not in SOURCES]
    if unknown:
        raise ValueError(f"{where}: unknown tools {unknown}; expected some of {list(SOURCES)}")
    images = []
    for image in raw.get("images") or ():
        path = Path(image) if Path(image).is_absolute() else base / image
        if not path.is_file():
            raise ValueError(f"{where}: input image {image} not found (looked at {path})")
        images.append(str(path))
    row_id = raw.get("id")
    return Row(
        prompt=text,
        image_num=image_num,
        tools=tools,
        images=tuple(images),
        id=None if row_id is None or row_id == "" else str(row_id),
    )


def load_rows(path: str | Path) -> list[Row]:
    """Rows of a JSONL or parquet file, checked."""
    require("batch", "datasets")
    from datasets import load_dataset
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()  # a progress bar per data file is noise around llmi's own
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset {path} not found")
    kind = "parquet" if path.suffix == ".parquet" else "json"
    dataset = load_dataset(kind, data_files=str(path), split="train")
    return [normalise(dict(raw), path.parent, f"{path.name} row {i + 1}") for i, raw in enumerate(dataset)]
