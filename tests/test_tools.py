"""Diffusion, edit and code backends; backend choice by config; the local editor's vocabulary."""

from __future__ import annotations

import base64
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from PIL import Image

from llmi_graph import Config, Toolbox
from llmi_graph.prompts import build_system_prompt
from servers._process import ManagedProcess, free_port
from tests.fakes import LoopbackApp, png
from tests.tiny_qwen import build_tiny_edit, build_tiny_generate
from tools.base import ToolError
from tools.code import E2B_PREAMBLE, E2B_TRAILER, E2BSandbox, LocalSandbox
from tools.diffusion import DiffusersDiffusion, ImageServerDiffusion, OpenAIImagesDiffusion
from tools.edit import DiffusersEdit, ImageServerEdit, LocalEditor, OpenAIImagesEdit, plan_edit
from tools.image_client import ImageServerPool
from tools.library import LocalImageLibrary
from tools.search import SerpApiSearch

ROOT = Path(__file__).resolve().parents[1]


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)


@pytest.fixture(scope="module")
def tiny_generate(tmp_path_factory) -> Path:
    return build_tiny_generate(tmp_path_factory.mktemp("tools") / "generate")


# --- diffusion --------------------------------------------------------------------------------------


async def test_diffusers_backend_runs_a_real_pipeline(tiny_generate):
    backend = DiffusersDiffusion(str(tiny_generate), device="cpu", width=48, height=32, steps=2, seed=3)
    out = await backend({"prompt": "a red cat"})
    assert Image.open(io.BytesIO(out.image)).size == (48, 32)
    again = await backend({"prompt": "a red cat"})
    assert again.image == out.image and out.provenance == {"model": str(tiny_generate), "seed": 3}
    other = await backend({"prompt": "a blue mat"})
    assert other.image != out.image


async def test_diffusers_backend_with_a_bad_model_path(tmp_path):
    with pytest.raises(ToolError, match="cannot load the diffusers model"):
        await DiffusersDiffusion(str(tmp_path / "nope"), device="cpu")({"prompt": "x"})


@pytest.fixture(scope="module")
def generate_server(tiny_generate, tmp_path_factory):
    port = free_port()
    argv = [sys.executable, "-m", "llmi", "serve-image", "--model", str(tiny_generate), "--port", str(port),
            "--device", "cpu", "--token-env", ""]  # fmt: skip
    process = ManagedProcess(argv, env={**os.environ, "PYTHONPATH": str(ROOT)},
                             log_path=tmp_path_factory.mktemp("srv") / "log")  # fmt: skip
    process.start()
    url = f"http://127.0.0.1:{port}"
    process.wait_healthy(f"{url}/health", 180)
    yield url
    process.stop()


async def test_image_server_diffusion_backend(generate_server):
    backend = ImageServerDiffusion(ImageServerPool([generate_server]), width=32, height=48, steps=1)
    out = await backend({"prompt": "a lighthouse"})
    assert Image.open(io.BytesIO(out.image)).size == (32, 48)
    assert out.provenance["server"] == generate_server and isinstance(out.provenance["seed"], int)
    bad = ImageServerDiffusion(ImageServerPool([generate_server]), width=33, height=48)
    with pytest.raises(ToolError, match="multiple of 16") as info:
        await bad({"prompt": "x"})
    assert not info.value.transient
    down = ImageServerDiffusion(ImageServerPool(["http://127.0.0.1:9"]))
    with pytest.raises(ToolError, match="no image server could take the request") as info:
        await down({"prompt": "x"})
    assert info.value.transient


def images_api_app(seen: list) -> FastAPI:
    """A fake OpenAI-compatible images API: b64_json answers, a 429 and a 400 on request."""
    app = FastAPI()

    @app.post("/v1/images/generations")
    async def generations(request: Request) -> JSONResponse:
        body = await request.json()
        seen.append(("generate", body, request.headers.get("authorization")))
        if body["prompt"] == "busy":
            return JSONResponse({"error": {"message": "Rate limit reached", "type": "rate_limit"}}, status_code=429)
        if body["prompt"] == "forbidden":
            return JSONResponse({"error": {"message": "Your request was rejected by the safety system"}},
                                status_code=400)  # fmt: skip
        return JSONResponse({"created": 1, "data": [{"b64_json": base64.b64encode(png((1, 2, 3))).decode()}]})

    @app.post("/v1/images/edits")
    async def edits(request: Request) -> JSONResponse:
        form = await request.form()
        image = await form["image"].read()
        seen.append(("edit", {"prompt": form["prompt"], "model": form["model"], "image": image}, None))
        inverted = 255 - pixels(image)
        buf = io.BytesIO()
        Image.fromarray(inverted.astype("uint8")).save(buf, format="PNG")
        return JSONResponse({"created": 1, "data": [{"b64_json": base64.b64encode(buf.getvalue()).decode()}]})

    return app


async def test_openai_images_api_backends():
    seen: list = []
    with LoopbackApp(images_api_app(seen)) as api:
        generate = OpenAIImagesDiffusion(f"{api.url}/v1", "seedream-4", "sk-test", size="1024x1024")
        out = await generate({"prompt": "a watercolor fox"})
        assert pixels(out.image)[0, 0].tolist() == [1, 2, 3]
        _, body, auth = seen[0]
        assert body == {"model": "seedream-4", "prompt": "a watercolor fox", "n": 1, "size": "1024x1024"}
        assert auth == "Bearer sk-test"
        with pytest.raises(ToolError, match="429") as info:
            await generate({"prompt": "busy"})
        assert info.value.transient
        with pytest.raises(ToolError, match="rejected by the safety system") as info:
            await generate({"prompt": "forbidden"})
        assert not info.value.transient

        edit = OpenAIImagesEdit(f"{api.url}/v1", "gpt-image-1", "sk-test")
        source = png((10, 20, 30))
        out = await edit({"img_index": 0, "prompt": "invert it"}, [source])
        assert pixels(out.image)[0, 0].tolist() == [245, 235, 225]
        assert seen[-1][1]["prompt"] == "invert it" and seen[-1][1]["model"] == "gpt-image-1"


# --- edit -------------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_diffusers_edit_backend_runs_a_real_pipeline(tmp_path):
    """~25 s: the edit pipeline resizes its input to about a megapixel before the tiny VAE sees it."""
    model = build_tiny_edit(tmp_path / "edit")
    backend = DiffusersEdit(str(model), device="cpu", steps=1, trust_remote_code=True)
    out = await backend({"img_index": 0, "prompt": "make it gray"}, [png((200, 30, 30), (48, 32))])
    assert Image.open(io.BytesIO(out.image)).format == "PNG"


@pytest.mark.slow
async def test_image_server_edit_backend(tmp_path):
    model = build_tiny_edit(tmp_path / "edit")
    port = free_port()
    argv = [sys.executable, "-m", "llmi", "serve-image", "--model", str(model), "--port", str(port),
            "--device", "cpu", "--token-env", "", "--trust-remote-code"]  # fmt: skip
    process = ManagedProcess(argv, env={**os.environ, "PYTHONPATH": str(ROOT)}, log_path=tmp_path / "log")
    process.start()
    try:
        url = f"http://127.0.0.1:{port}"
        process.wait_healthy(f"{url}/health", 180)
        backend = ImageServerEdit(ImageServerPool([url]), steps=1)
        out = await backend({"img_index": 0, "prompt": "make it gray"}, [png((200, 30, 30), (48, 32))])
        assert Image.open(io.BytesIO(out.image)).format == "PNG" and out.provenance["server"] == url
    finally:
        process.stop()


def gradient(size=(80, 60)) -> bytes:
    w, h = size
    x = np.linspace(0, 255, w)[None, :, None]
    y = np.linspace(0, 255, h)[:, None, None]
    arr = np.concatenate([np.broadcast_to(x, (h, w, 1)), np.broadcast_to(y, (h, w, 1)),
                          np.full((h, w, 1), 90.0)], axis=2)  # fmt: skip
    buf = io.BytesIO()
    Image.fromarray(arr.astype("uint8")).save(buf, format="PNG")
    return buf.getvalue()


async def run_local(instruction: str, source: bytes | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    source = source or gradient()
    out = await LocalEditor()({"img_index": 0, "prompt": instruction}, [source])
    return pixels(source), pixels(out.image), out.provenance["operations"]


async def test_local_editor_vocabulary():
    src, out, ops = await run_local("make it black and white")
    assert ops == ["grayscale"] and (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()

    src, out, ops = await run_local("crop to the top left corner")
    assert ops == ["crop:top left"] and out.shape == (30, 40, 3) and (out == src[:30, :40]).all()

    _, out, _ = await run_local("crop the bottom half")
    assert out.shape == (30, 80, 3)

    src, out, _ = await run_local("rotate 90 degrees")
    assert out.shape == (80, 60, 3) and (out[0, -1] == src[0, 0]).all()  # clockwise: top-left goes top-right
    _, out, _ = await run_local("rotate by 90 degrees counterclockwise")
    assert (out[-1, 0] == src[0, 0]).all()

    src, out, ops = await run_local("flip horizontally")
    assert (out == src[:, ::-1]).all()
    _, out, _ = await run_local("flip vertically")
    assert (out == src[::-1]).all()

    _, out, _ = await run_local("resize to 40x20")
    assert out.shape == (20, 40, 3)
    _, out, _ = await run_local("scale to 50%")
    assert out.shape == (30, 40, 3)

    src, out, _ = await run_local("brighten by 30%")
    assert out.mean() > src.mean() + 10
    _, out, _ = await run_local("make it darker")
    assert out.mean() < src.mean() - 10
    _, out, _ = await run_local("increase the contrast")
    assert out.std() > src.std()

    noisy = np.random.default_rng(0).integers(0, 255, (60, 80, 3)).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(noisy).save(buf, format="PNG")
    src, out, _ = await run_local("blur with radius 3", buf.getvalue())
    assert np.abs(np.diff(out, axis=1)).mean() < np.abs(np.diff(src, axis=1)).mean() / 2
    src, out, _ = await run_local("sharpen", buf.getvalue())
    assert np.abs(np.diff(out, axis=1)).mean() > np.abs(np.diff(src, axis=1)).mean()


async def test_local_editor_caption_box_and_arrow():
    flat = png((240, 240, 240), (200, 100))
    _, out, ops = await run_local("draw a red box around the top right and add a caption 'Sales, 2023'", flat)
    assert ops == ["box:top right", "caption:Sales, 2023"]
    assert out.shape[0] > 100 and out.shape[1] == 200
    assert (out[100:].min(axis=2) < 100).any()  # dark caption text in the bar under the image
    red = (out[:100, :, 0] > 180) & (out[:100, :, 1] < 80) & (out[:100, :, 2] < 80)
    ys, xs = np.nonzero(red)
    assert xs.min() >= 98 and ys.max() <= 52  # the box outlines the top right quarter
    _, out, ops = await run_local("add a blue arrow pointing to the bottom left", flat)
    blue = (out[..., 2] > 180) & (out[..., 0] < 100)
    assert ops == ["arrow:bottom left"] and blue.sum() > 50


@pytest.mark.parametrize(
    "instruction",
    ["make it look like a watercolor painting", "remove the background", "grayscale and add a dragon", "", "   "],
)
def test_local_editor_refuses_what_it_does_not_know(instruction):
    with pytest.raises(ToolError, match="unsupported instruction"):
        plan_edit(instruction)


# --- code on E2B (the SDK's own types; no network here) ---------------------------------------------


RECORDED_OK = [
    {"type": "number_of_executions", "execution_count": 1},
    {"type": "stdout", "text": "rows: 12\n", "timestamp": 1},
    {"type": "result", "png": None, "is_main_result": False},
    {"type": "end_of_execution"},
]
RECORDED_ERROR = [
    {
        "type": "error",
        "name": "NameError",
        "value": "name 'df' is not defined",
        "traceback": "Traceback...\nNameError: name 'df' is not defined",
    },
]


class FakeE2BSandbox:
    """A fake AsyncSandbox: replays recorded execution lines through the SDK's own parser."""

    created = 0

    def __init__(self, lines: list[dict]):
        self.lines, self.codes, self.killed = lines, [], False

    async def run_code(self, code: str, timeout: float | None = None, request_timeout: float | None = None):
        from e2b_code_interpreter.models import Execution, parse_output

        self.codes.append((code, timeout, request_timeout))
        execution = Execution()
        for line in self.lines:
            parse_output(execution, json.dumps(line))
        return execution

    async def kill(self) -> None:
        self.killed = True


async def test_e2b_backend_with_recorded_executions():
    chart = base64.b64encode(png((5, 6, 7), (640, 480))).decode()
    lines = [dict(line) for line in RECORDED_OK]
    lines[2]["png"] = chart
    sandboxes: list[FakeE2BSandbox] = []

    async def factory(**kwargs):
        assert kwargs["allow_internet_access"] is False and kwargs["api_key"] == "e2b-key"
        sandboxes.append(FakeE2BSandbox(lines))
        return sandboxes[-1]

    backend = E2BSandbox("e2b-key", timeout_s=12, request_timeout_s=7, sandbox_factory=factory)
    out = await backend({"code": "plt.plot([1, 2])"})
    again = await backend({"code": "plt.bar(['a'], [1])"})
    assert out.image == again.image == base64.b64decode(chart) and out.backend == "e2b"
    assert "rows: 12" in out.logs
    assert len(sandboxes) == 1  # one sandbox per run, reused
    code, timeout, request_timeout = sandboxes[0].codes[0]
    assert code == E2B_PREAMBLE + "plt.plot([1, 2])" + "\n" + E2B_TRAILER
    assert (timeout, request_timeout) == (12, 7)
    await backend.aclose()
    assert sandboxes[0].killed

    async def failing_factory(**kwargs):
        return FakeE2BSandbox(RECORDED_ERROR)

    broken = E2BSandbox("e2b-key", sandbox_factory=failing_factory)
    with pytest.raises(ToolError, match="NameError: name 'df' is not defined") as info:
        await broken({"code": "df.plot()"})
    assert "Traceback" in info.value.logs

    async def no_png_factory(**kwargs):
        return FakeE2BSandbox([{"type": "stdout", "text": "hi", "timestamp": 1}])

    with pytest.raises(ToolError, match="drew no figure"):
        await E2BSandbox("k", sandbox_factory=no_png_factory)({"code": "print('hi')"})


# --- choosing backends ------------------------------------------------------------------------------


def test_with_no_configuration_code_and_edit_work_offline(monkeypatch):
    for var in ("SERPAPI_API_KEY", "E2B_API_KEY", "OPENAI_API_KEY", "LLMI_IMAGES_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    toolbox = Toolbox.from_config(Config())
    assert toolbox.available() == ["code", "edit"]
    assert isinstance(toolbox.backend("code"), LocalSandbox) and isinstance(toolbox.backend("edit"), LocalEditor)
    assert "set SERPAPI_API_KEY (SerpAPI) or LLMI_SEARCH_LIBRARY_DIR" in toolbox.missing_reason("search")
    assert "LLMI_IMAGE_SERVER_URLS" in toolbox.missing_reason("diffusion")
    prompt = build_system_prompt(toolbox.available())
    assert "- 'code':" in prompt and "- 'edit':" in prompt and "- 'search':" not in prompt


def test_backends_follow_config_and_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SERPAPI_API_KEY", "serp")
    monkeypatch.setenv("E2B_API_KEY", "e2b")
    cfg = Config(image_server_urls="http://127.0.0.1:8100, http://127.0.0.1:8101",
                 edit_server_urls="http://127.0.0.1:8200")  # fmt: skip
    toolbox = Toolbox.from_config(cfg)
    assert isinstance(toolbox.backend("search"), SerpApiSearch)
    assert isinstance(toolbox.backend("code"), E2BSandbox)
    diffusion = toolbox.backend("diffusion")
    assert isinstance(diffusion, ImageServerDiffusion) and len(diffusion.pool.servers) == 2
    assert isinstance(toolbox.backend("edit"), ImageServerEdit)
    assert toolbox.available() == ["search", "diffusion", "code", "edit"]

    library = Toolbox.from_config(Config(search_backend="library", search_library_dir=str(tmp_path)))
    assert isinstance(library.backend("search"), LocalImageLibrary)
    local = Toolbox.from_config(Config(code_backend="local"))
    assert isinstance(local.backend("code"), LocalSandbox)


def test_missing_keys_say_what_to_set(monkeypatch):
    monkeypatch.delenv("SERPAPI_API_KEY", raising=False)
    monkeypatch.delenv("E2B_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("LLMI_IMAGES_API_KEY", raising=False)
    toolbox = Toolbox.from_config(Config(search_backend="serpapi", code_backend="e2b", diffusion_backend="openai",
                                         edit_backend="none"))  # fmt: skip
    assert toolbox.missing_reason("search") == (
        "SERPAPI_API_KEY is not set: set it, or use the library backend "
        "(LLMI_SEARCH_BACKEND=library with LLMI_SEARCH_LIBRARY_DIR)"
    )
    assert toolbox.missing_reason("code") == "E2B_API_KEY is not set: set it, or use LLMI_CODE_BACKEND=local"
    assert "LLMI_IMAGES_API_KEY (or OPENAI_API_KEY) is not set" in toolbox.missing_reason("diffusion")
    assert toolbox.missing_reason("edit") == "the edit tool is turned off (LLMI_EDIT_BACKEND=none)"
    assert toolbox.available() == []
    with pytest.raises(ValueError, match="LLMI_SEARCH_BACKEND='google'"):
        Toolbox.from_config(Config(search_backend="google"))
