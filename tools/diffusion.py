"""The diffusion tool: new images for creative or abstract content.

Backends:
- `ImageServerDiffusion`: the Qwen-Image servers (`llmi serve-images`), through the pool client.
- `DiffusersDiffusion`: any diffusers text-to-image pipeline from a local path, run in-process.
- `OpenAIImagesDiffusion`: an OpenAI-compatible `/v1/images/generations` endpoint (OpenAI, Seedream via a gateway).
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tools.base import ToolError, ToolOutput, openai_tool_error, png_bytes
from tools.image_client import ImageServerError, ImageServerPool


def server_tool_error(exc: ImageServerError) -> ToolError:
    return ToolError(str(exc), transient=exc.transient)


@dataclass
class ImageServerDiffusion:
    """Text to image on a pool of image servers."""

    pool: ImageServerPool
    width: int = 1024
    height: int = 1024
    steps: int | None = None
    true_cfg_scale: float | None = None
    name: str = "image-server"

    @property
    def cache_id(self) -> str:
        return f"server:{self.width}x{self.height}:{self.steps}:{self.true_cfg_scale}"

    async def __call__(self, params: Mapping[str, Any], inputs: Sequence[bytes] = ()) -> ToolOutput:
        try:
            result = await self.pool.generate(
                str(params["prompt"]), width=self.width, height=self.height, num_inference_steps=self.steps,
                true_cfg_scale=self.true_cfg_scale,
            )  # fmt: skip
        except ImageServerError as exc:
            raise server_tool_error(exc) from None
        return ToolOutput(
            image=result.images[0], backend=self.name, provenance={"server": result.url, "seed": result.seed}
        )


class DiffusersPipelineRunner:
    """Loads a diffusers pipeline lazily and runs it on one thread at a time."""

    def __init__(self, model: str, device: str = "auto", dtype: str = "auto", trust_remote_code: bool = False):
        self.model, self.device, self.dtype, self.trust_remote_code = model, device, dtype, trust_remote_code
        self._pipeline: Any = None
        self._lock = threading.Lock()

    def pipeline(self) -> Any:
        if self._pipeline is None:
            import torch
            from diffusers import DiffusionPipeline

            device = self.device
            if device == "auto":
                device = "cuda" if torch.cuda.is_available() else "cpu"
            dtype = (
                (torch.bfloat16 if device.startswith("cuda") else torch.float32)
                if self.dtype == "auto"
                else (getattr(torch, self.dtype))
            )
            try:
                pipe = DiffusionPipeline.from_pretrained(
                    self.model, torch_dtype=dtype, trust_remote_code=self.trust_remote_code
                )
            except (OSError, ValueError) as exc:
                raise ToolError(f"cannot load the diffusers model {self.model}: {exc}") from None
            pipe.to(device)
            pipe.set_progress_bar_config(disable=True)
            self._pipeline, self.device = pipe, device
        return self._pipeline

    def run(self, seed: int | None, **kwargs: Any) -> bytes:
        import torch

        with self._lock:
            pipe = self.pipeline()
            accepted = inspect.signature(pipe.__call__).parameters
            call = {k: v for k, v in kwargs.items() if v is not None and k in accepted}
            if seed is not None:
                call["generator"] = torch.Generator(device="cpu").manual_seed(seed)
            with torch.inference_mode():
                images = pipe(**call).images
        return png_bytes(images[0])


@dataclass
class DiffusersDiffusion:
    """Text to image with an in-process diffusers pipeline (Qwen-Image or any other)."""

    model: str
    device: str = "auto"
    dtype: str = "auto"
    width: int = 1024
    height: int = 1024
    steps: int | None = None
    seed: int | None = 0
    trust_remote_code: bool = False
    name: str = "diffusers"
    _runner: DiffusersPipelineRunner | None = field(default=None, repr=False)

    @property
    def cache_id(self) -> str:
        return f"diffusers:{self.model}:{self.width}x{self.height}:{self.steps}:{self.seed}"

    async def __call__(self, params: Mapping[str, Any], inputs: Sequence[bytes] = ()) -> ToolOutput:
        if self._runner is None:
            self._runner = DiffusersPipelineRunner(self.model, self.device, self.dtype, self.trust_remote_code)
        image = await asyncio.to_thread(
            self._runner.run, self.seed, prompt=str(params["prompt"]), width=self.width, height=self.height,
            num_inference_steps=self.steps,
        )  # fmt: skip
        return ToolOutput(image=image, backend=self.name, provenance={"model": self.model, "seed": self.seed})


@dataclass
class OpenAIImagesDiffusion:
    """Text to image at an OpenAI-compatible images API (`POST /v1/images/generations`)."""

    base_url: str | None
    model: str
    api_key: str
    size: str = "1024x1024"
    timeout_s: float = 300.0
    name: str = "openai-images"

    @property
    def cache_id(self) -> str:
        return f"openai:{self.base_url}:{self.model}:{self.size}"

    async def __call__(self, params: Mapping[str, Any], inputs: Sequence[bytes] = ()) -> ToolOutput:
        import openai

        client = openai.AsyncOpenAI(base_url=self.base_url, api_key=self.api_key, timeout=self.timeout_s, max_retries=0)
        try:
            response = await client.images.generate(model=self.model, prompt=str(params["prompt"]), n=1, size=self.size)
        except openai.OpenAIError as exc:
            raise openai_tool_error(exc, f"the images API ({self.model})") from None
        finally:
            await client.close()
        return ToolOutput(image=await image_from_api(response), backend=self.name, provenance={"model": self.model})


async def image_from_api(response: Any) -> bytes:
    """The first image of an images-API response: inline base64, or a URL fetched by the safe downloader."""
    from tools.search import DownloadLimits, download_image

    if not response.data:
        raise ToolError("the images API returned no image")
    item = response.data[0]
    if getattr(item, "b64_json", None):
        return base64.b64decode(item.b64_json)
    if getattr(item, "url", None):
        image = await download_image(item.url, limits=DownloadLimits(min_width=1, min_height=1))
        return image.data
    raise ToolError("the images API returned neither b64_json nor a url")
