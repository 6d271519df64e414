"""The image server: Qwen-Image generation and Qwen-Image-Edit through diffusers, behind FastAPI.

    POST /generate  {prompt, negative_prompt, width, height, num_inference_steps, true_cfg_scale, seed, num_images}
    POST /edit      the same, plus images: [base64, ...] (several need an EditPlus pipeline)
    GET  /health    answers at once, even mid-inference
    GET  /info      model, mode, device, queue depth

Inference runs off the event loop, one request at a time per instance; a bounded queue answers 429 when
full; bodies over the size limit get 413; bad input gets 400 with the reason. An optional bearer token
guards every route but /health. The server binds 127.0.0.1 unless told otherwise; another host needs the
token, or `--insecure` to serve without one.

Run one instance with `llmi serve-image --model PATH_OR_HUB_ID`; one per GPU with `llmi serve-images`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import io
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from servers._process import refuse_open_binding


@dataclass(kw_only=True)
class ImageServerConfig:
    """How to serve one image pipeline."""

    model: str = field(metadata={"help": "diffusers model folder or hub id (Qwen/Qwen-Image, Qwen/Qwen-Image-Edit)."})
    mode: Literal["auto", "generate", "edit"] = field(
        default="auto", metadata={"help": "generate or edit; auto reads it from the pipeline class."}
    )
    host: str = field(default="127.0.0.1", metadata={"help": "Interface to bind; loopback unless told otherwise."})
    port: int = field(default=8100, metadata={"help": "Port to listen on."})
    device: str = field(default="auto", metadata={"help": "auto (cuda if available), cuda, cuda:N or cpu."})
    dtype: str = field(default="auto", metadata={"help": "auto (bfloat16 on GPU, float32 on CPU), or a torch dtype."})
    token_env: str | None = field(
        default="LLMI_IMAGE_SERVER_TOKEN", metadata={"help": "Env var with the bearer token to require (unset: none)."}
    )
    insecure: bool = field(
        default=False, metadata={"help": "Allow a non-loopback --host with no token (anyone reaching it can use it)."}
    )
    max_queue: int = field(default=8, metadata={"help": "Requests waiting or running before 429."})
    max_request_mb: float = field(default=32.0, metadata={"help": "Largest request body, in MB (413 above)."})
    max_pixels: int = field(default=2048 * 2048, metadata={"help": "Largest width x height (output or input)."})
    max_images: int = field(default=4, metadata={"help": "Most images per request, out or in."})
    max_steps: int = field(default=100, metadata={"help": "Most inference steps per request."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Run custom component code shipped with the model (trusted models only)."}
    )


class GenerateRequest(BaseModel):
    """Text to image."""

    prompt: str = Field(min_length=1, max_length=4000)
    negative_prompt: str | None = Field(default=None, max_length=4000)
    width: int | None = Field(default=None, ge=16, le=8192, description="Default 1024 (edit: from the input).")
    height: int | None = Field(default=None, ge=16, le=8192)
    num_inference_steps: int = Field(default=50, ge=1)
    true_cfg_scale: float = Field(default=4.0, ge=0.0, le=50.0)
    seed: int | None = Field(default=None, ge=0, lt=2**63)
    num_images: int = Field(default=1, ge=1)


class EditRequest(GenerateRequest):
    """Image(s) plus an instruction to a changed image."""

    images: list[str] = Field(
        min_length=1, description="Input images: base64 (line breaks allowed) or data:image/...;base64, URLs."
    )


class BadInput(ValueError):
    """A request that is well-formed JSON but unusable; answered with 400 and this message."""


class PipelineRunner:
    """Runs a pipeline on one worker thread, so the event loop stays free; counts the queue."""

    def __init__(self, pipeline: Any, mode: str, device: str, max_queue: int):
        self.pipeline, self.mode, self.device, self.max_queue = pipeline, mode, device, max_queue
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pipeline")
        self._lock = threading.Lock()
        self.pending = 0
        self.served = 0

    def try_reserve(self) -> bool:
        with self._lock:
            if self.pending >= self.max_queue:
                return False
            self.pending += 1
            return True

    def release(self) -> None:
        with self._lock:
            self.pending -= 1
            self.served += 1

    async def run(self, kwargs: dict[str, Any]) -> list[Image.Image]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, kwargs)

    def _call(self, kwargs: dict[str, Any]) -> list[Image.Image]:
        import torch

        seed = kwargs.pop("seed")
        generator = torch.Generator(device="cpu" if self.device == "mps" else self.device).manual_seed(seed)
        with torch.inference_mode():
            return list(self.pipeline(**kwargs, generator=generator).images)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def server_token(host: str, token_env: str | None, insecure: bool) -> str | None:
    """The bearer token held in `token_env` (empty counts as none); refuses a non-loopback host without one."""
    token = (os.environ.get(token_env) if token_env else None) or None
    refuse_open_binding(
        host,
        has_token=token is not None,
        insecure=insecure,
        set_token=f"set {token_env} (or --token-env)" if token_env else "name a token's env var with --token-env",
    )
    return token


def load_pipeline(config: ImageServerConfig) -> PipelineRunner:
    """Load the diffusers pipeline (any local path or hub id) onto the chosen device."""
    import torch
    from diffusers import DiffusionPipeline

    device = config.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if config.dtype == "auto":
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    else:
        dtype = getattr(torch, config.dtype)
    pipeline = DiffusionPipeline.from_pretrained(
        config.model, torch_dtype=dtype, trust_remote_code=config.trust_remote_code
    )
    pipeline.to(device)
    pipeline.set_progress_bar_config(disable=True)
    mode = config.mode
    if mode == "auto":
        mode = "edit" if "Edit" in type(pipeline).__name__ else "generate"
    return PipelineRunner(pipeline, mode, device, config.max_queue)


class _BodyLimit:
    """ASGI middleware: 413 for bodies over the limit, by Content-Length or by counting what streams in."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(send)
            return
        seen = 0
        rejected = False

        async def counted() -> Message:
            nonlocal seen, rejected
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes and not rejected:
                    # Answer now; the app then sees a disconnect and whatever it sends is dropped.
                    rejected = True
                    await self._reject(send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not rejected:
                await send(message)

        try:
            await self.app(scope, counted, guarded_send)
        except Exception:
            if not rejected:
                raise

    async def _reject(self, send: Send) -> None:
        body = f'{{"detail": "request body is over the {self.max_bytes} byte limit"}}'.encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


def create_app(config: ImageServerConfig, runner: PipelineRunner | None = None) -> FastAPI:
    """The FastAPI app. `runner` defaults to loading `config.model` at start-up.

    Raises `ValueError` for a non-loopback host with no token, unless `config.insecure`.
    """
    token = server_token(config.host, config.token_env, config.insecure)
    state: dict[str, Any] = {"runner": runner, "started": time.time()}

    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        if state["runner"] is None:
            state["runner"] = await asyncio.to_thread(load_pipeline, config)
        yield
        state["runner"].close()

    app = FastAPI(title="llmi image server", lifespan=lifespan)
    app.add_middleware(_BodyLimit, max_bytes=int(config.max_request_mb * 1024 * 1024))

    def authorized(request: Request) -> None:
        if token is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        reasons = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"detail": f"invalid request: {reasons}"}, status_code=400)

    @app.exception_handler(BadInput)
    async def bad_input(request: Request, exc: BadInput) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/info", dependencies=[Depends(authorized)])
    async def info() -> dict[str, Any]:
        runner: PipelineRunner = state["runner"]
        return {
            "model": config.model,
            "mode": runner.mode,
            "pipeline": type(runner.pipeline).__name__,
            "device": runner.device,
            "queue_depth": runner.pending,
            "max_queue": config.max_queue,
            "served": runner.served,
            "uptime_s": round(time.time() - state["started"], 1),
        }

    async def serve(req: GenerateRequest, images: list[Image.Image] | None) -> dict[str, Any]:
        runner: PipelineRunner = state["runner"]
        kwargs = _pipeline_kwargs(req, images, runner, config)
        if not runner.try_reserve():
            raise HTTPException(
                429, f"busy: {runner.pending} requests queued (limit {config.max_queue})", headers={"Retry-After": "5"}
            )
        started = time.perf_counter()
        try:
            seed = kwargs["seed"]
            outputs = await runner.run(kwargs)
        finally:
            runner.release()
        return {
            "images": [_encode_png(img) for img in outputs],
            "seed": seed,
            "model": config.model,
            "mode": runner.mode,
            "latency_s": round(time.perf_counter() - started, 3),
        }

    @app.post("/generate", dependencies=[Depends(authorized)])
    async def generate(req: GenerateRequest) -> dict[str, Any]:
        if state["runner"].mode != "generate":
            raise BadInput("this server edits images: POST /edit with images")
        return await serve(req, None)

    @app.post("/edit", dependencies=[Depends(authorized)])
    async def edit(req: EditRequest) -> dict[str, Any]:
        if state["runner"].mode != "edit":
            raise BadInput("this server generates images: POST /generate")
        images = await asyncio.to_thread(_decode_images, req.images, config)
        return await serve(req, images)

    return app


def _pipeline_kwargs(
    req: GenerateRequest, images: list[Image.Image] | None, runner: PipelineRunner, config: ImageServerConfig
) -> dict[str, Any]:
    """Check a request against the limits and map it onto the pipeline's arguments."""
    if req.num_images > config.max_images:
        raise BadInput(f"num_images {req.num_images} is over the limit of {config.max_images}")
    if req.num_inference_steps > config.max_steps:
        raise BadInput(f"num_inference_steps {req.num_inference_steps} is over the limit of {config.max_steps}")
    width, height = req.width, req.height
    if images is None:
        width, height = width or 1024, height or 1024
    for name, value in (("width", width), ("height", height)):
        if value is not None and value % 16:
            raise BadInput(f"{name} {value} must be a multiple of 16")
    if width and height and width * height > config.max_pixels:
        raise BadInput(f"{width}x{height} is over the {config.max_pixels:,}-pixel limit")
    kwargs: dict[str, Any] = {
        "prompt": req.prompt,
        "negative_prompt": req.negative_prompt,
        "num_inference_steps": req.num_inference_steps,
        "true_cfg_scale": req.true_cfg_scale,
        "num_images_per_prompt": req.num_images,
        "width": width,
        "height": height,
        "seed": req.seed if req.seed is not None else random.randrange(2**31),
    }
    if images is not None:
        plus = "Plus" in type(runner.pipeline).__name__
        if len(images) > 1 and not plus:
            raise BadInput(f"this pipeline takes one input image, got {len(images)} (serve an EditPlus pipeline)")
        kwargs["image"] = images if plus else images[0]
    return kwargs


def _decode_images(values: list[str], config: ImageServerConfig) -> list[Image.Image]:
    if len(values) > config.max_images:
        raise BadInput(f"{len(values)} input images is over the limit of {config.max_images}")
    images = []
    for i, value in enumerate(values):
        data = _image_bytes(value, f"images[{i}]")
        try:
            with Image.open(io.BytesIO(data)) as img:
                if img.width * img.height > config.max_pixels:
                    raise BadInput(
                        f"images[{i}] is {img.width}x{img.height}, over the {config.max_pixels:,}-pixel limit"
                    )
                images.append(img.convert("RGB"))
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
            raise BadInput(f"images[{i}] is not a readable image ({exc})") from None
    return images


_BASE64_LINE_BREAKS = str.maketrans("", "", " \t\r\n")


def _image_bytes(value: str, name: str) -> bytes:
    """Bytes of one input image sent as base64 or a base64 data: URL; MIME-style line breaks are fine."""
    payload = value
    if value[:5].lower() == "data:":
        header, comma, payload = value.partition(",")
        if not comma:
            raise BadInput(f"{name} is a data: URL with no comma before its data")
        if not header.lower().endswith(";base64"):
            raise BadInput(f"{name} is a data: URL that is not base64 ({header[:60]}): send data:image/png;base64,...")
    payload = payload.translate(_BASE64_LINE_BREAKS)
    if not payload:
        raise BadInput(f"{name} is empty")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise BadInput(f"{name} is not valid base64") from None


def _encode_png(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def serve_image(config: ImageServerConfig) -> None:
    """Run one image server in the foreground (the `llmi serve-image` command)."""
    import uvicorn

    uvicorn.run(create_app(config), host=config.host, port=config.port, log_level="info", timeout_graceful_shutdown=5)
