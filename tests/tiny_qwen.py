"""Tiny random Qwen-Image pipelines built from configs in code (no hub), for CPU tests of the image servers.

The generate pipeline is the real `QwenImagePipeline` with tiny random components and a real byte-level BPE
tokenizer trained here. The edit pipeline is the real `QwenImageEditPipeline` (or `...EditPlusPipeline`) with
the same components; its processor is `TinyQwenVLProcessor` (see tiny_qwen_processor.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Tokenizer,
    Qwen2VLImageProcessorPil,
)

from tests import tiny_qwen_processor as processor_module
from tests.tiny_qwen_processor import TinyQwenVLProcessor

SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
    "<|video_pad|>",
]  # fmt: skip
_CORPUS = [
    "describe the image by detailing the color shape size texture quantity text spatial relationships",
    "of the objects and background a red cat on a blue mat make it gray add a hat sunset over the sea",
    "describe the key features of the input image then explain how the user's text instruction should alter",
    "or modify the image generate a new image that meets the user's requirements while maintaining consistency",
]


def tiny_tokenizer() -> Qwen2Tokenizer:
    """A real byte-level BPE tokenizer (trained here on a few sentences) with Qwen's special tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_CORPUS * 5, trainer)
    return Qwen2Tokenizer(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def _components(seed: int = 0) -> dict[str, Any]:
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel

    tokenizer = tiny_tokenizer()
    vocab = len(tokenizer)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    torch.manual_seed(seed)
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=3,
        joint_attention_dim=16, guidance_embeds=False, axes_dims_rope=(8, 4, 4),
    )  # fmt: skip
    torch.manual_seed(seed)
    vae = AutoencoderKLQwenImage(
        base_dim=24, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1, temperal_downsample=[False, True],
        latents_mean=[0.0] * 4, latents_std=[1.0] * 4,
    )  # fmt: skip
    torch.manual_seed(seed)
    config = Qwen2_5_VLConfig(
        text_config={
            "hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
            "num_key_value_heads": 2, "rope_theta": 1000000.0, "vocab_size": vocab,
            "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
        },
        vision_config={"depth": 2, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2, "out_hidden_size": 16},
        hidden_size=16, vocab_size=vocab,
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"], vision_token_id=ids["<|image_pad|>"],
    )  # fmt: skip
    return {
        "transformer": transformer,
        "vae": vae,
        "scheduler": FlowMatchEulerDiscreteScheduler(),
        "text_encoder": Qwen2_5_VLForConditionalGeneration(config).eval(),
        "tokenizer": tokenizer,
    }


def build_tiny_generate(path: str | Path) -> Path:
    """Save a tiny random QwenImagePipeline to `path`; return it."""
    from diffusers import QwenImagePipeline

    QwenImagePipeline(**_components()).save_pretrained(path)
    return Path(path)


def build_tiny_edit(path: str | Path, plus: bool = False) -> Path:
    """Save a tiny random QwenImageEditPipeline (or EditPlus, for several input images) to `path`; return it."""
    from diffusers import QwenImageEditPipeline, QwenImageEditPlusPipeline

    components = _components()
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=28 * 28 * 4, max_pixels=56 * 56 * 4, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    processor = TinyQwenVLProcessor(image_processor, components["tokenizer"])
    cls = QwenImageEditPlusPipeline if plus else QwenImageEditPipeline
    cls(**components, processor=processor).save_pretrained(path)
    # The processor ships as custom component code in its own folder, as a hub repo would ship it; loading
    # it needs trust_remote_code (the image server's --trust-remote-code).
    module = Path(processor_module.__file__)
    shutil.copy(module, Path(path) / "processor" / module.name)
    index_path = Path(path) / "model_index.json"
    index = json.loads(index_path.read_text())
    index["processor"] = [module.stem, "TinyQwenVLProcessor"]
    index_path.write_text(json.dumps(index, indent=2))
    return Path(path)
