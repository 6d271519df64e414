"""A stand-in for `Qwen2VLProcessor` in the tiny edit pipelines of the tests.

It keeps the real PIL image processor and the real tokenizer, and the real `Qwen2VLProcessor.__call__`, but has
no video processor: that one needs torchvision, which does not import beside the CPU torch here. The tiny
edit pipeline ships this file as custom component code in its processor folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import Qwen2Tokenizer, Qwen2VLImageProcessorPil, Qwen2VLProcessor


class TinyQwenVLProcessor(Qwen2VLProcessor):
    """Qwen2VLProcessor without a video processor (that one needs torchvision). Images and text are real."""

    def __init__(self, image_processor: Any, tokenizer: Any):  # skips ProcessorMixin's class checks
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.video_processor = None
        self.chat_template = None
        self.image_token = "<|image_pad|>"
        self.video_token = "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)

    def save_pretrained(self, save_directory: str, **kwargs: Any) -> None:
        self.image_processor.save_pretrained(save_directory)
        self.tokenizer.save_pretrained(save_directory)

    @classmethod
    def from_pretrained(cls, path: str, **kwargs: Any) -> TinyQwenVLProcessor:
        folder = Path(path) / kwargs["subfolder"] if kwargs.get("subfolder") else Path(path)
        return cls(Qwen2VLImageProcessorPil.from_pretrained(folder), Qwen2Tokenizer.from_pretrained(folder))
