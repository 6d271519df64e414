"""The RL data: the starter set's files, and the views TRL needs of LLM-I rows (`llmi_graph.rows`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmi_graph.rows import Row, load_rows, normalise, prompt_text

__all__ = ["HELDOUT_FILE", "TRAIN_FILE", "Row", "RowIndex", "load_rows", "normalise", "prompt_text", "to_dataset"]

DATA_DIR = Path(__file__).resolve().parent / "data"
TRAIN_FILE = DATA_DIR / "train.jsonl"
HELDOUT_FILE = DATA_DIR / "heldout.jsonl"


def to_dataset(rows: list[Row]) -> Any:
    """A HF dataset TRL can sample: the prompt text plus the columns the reward functions read. (Input images go
    in `input_images`: TRL would take an `images` column for a vision-language prompt.)"""
    from datasets import Dataset

    return Dataset.from_list(
        [
            {"prompt": r.prompt, "image_num": r.image_num, "tools": list(r.tools), "input_images": list(r.images)}
            for r in rows
        ]
    )


class RowIndex:
    """Find a row by its prompt text (TRL hands a rollout function only the prompts)."""

    def __init__(self, rows: list[Row]):
        self._rows: dict[str, Row] = {}
        for row in rows:
            previous = self._rows.get(row.prompt)
            if previous is not None and previous != row:
                raise ValueError(f"two rows share the prompt {row.prompt[:60]!r} with different settings")
            self._rows[row.prompt] = row

    def __getitem__(self, prompt: Any) -> Row:
        text = prompt_text(prompt)
        if text not in self._rows:
            return Row(prompt=text, image_num=0, tools=(), images=())
        return self._rows[text]
