"""The image server, for real: a tiny random Qwen-Image pipeline served by `llmi serve-image` on loopback."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from servers._process import ManagedProcess, free_port
from servers.image_server import ImageServerConfig, _decode_images, create_app
from tests.fakes import png
from tests.tiny_qwen import build_tiny_edit, build_tiny_generate
from tools.image_client import ImageServerError, ImageServerPool

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "test-token-123"


def start_server(model: Path, log: Path, **options: object) -> tuple[ManagedProcess, str]:
    port = free_port()
    argv = [sys.executable, "-m", "llmi", "serve-image", "--model", str(model), "--port", str(port),
            "--device", "cpu", "--token-env", "LLMI_TEST_IMAGE_TOKEN"]  # fmt: skip
    for key, value in options.items():
        flag = f"--{key.replace('_', '-')}"
        argv += [flag] if value is True else [flag, str(value)]
    env = {**os.environ, "LLMI_TEST_IMAGE_TOKEN": TOKEN, "PYTHONPATH": str(ROOT)}
    process = ManagedProcess(argv, env=env, log_path=log)
    process.start()
    url = f"http://127.0.0.1:{port}"
    process.wait_healthy(f"{url}/health", timeout_s=180)
    return process, url


@pytest.fixture(scope="module")
def generate_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    model = build_tiny_generate(root / "model")
    process, url = start_server(model, root / "server.log", max_queue=1, max_request_mb=1, max_pixels=1024 * 1024)
    yield url
    process.stop()


@pytest.fixture(scope="module")
def edit_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("edit")
    model = build_tiny_edit(root / "model")
    process, url = start_server(model, root / "server.log", max_pixels=512 * 512, trust_remote_code=True)
    yield url
    process.stop()


def jpeg(color: tuple[int, int, int] = (20, 160, 220), size: tuple[int, int] = (40, 24)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG")
    return buf.getvalue()


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


def decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


async def test_client_gets_real_images_and_parameters_reach_the_pipeline(generate_server):
    pool = ImageServerPool([generate_server], token=TOKEN)
    base = {"width": 32, "height": 48, "num_inference_steps": 2, "seed": 11}
    result = await pool.generate("a red cat", **base, num_images=2)
    images = [decode(b) for b in result.images]
    assert [i.format for i in images] == ["PNG", "PNG"] and [i.size for i in images] == [(32, 48), (32, 48)]
    assert result.seed == 11 and result.url == generate_server

    same = await pool.generate("a red cat", **base)
    assert same.images[0] == result.images[0]  # the seed reaches the generator
    variants = {
        "seed": await pool.generate("a red cat", **{**base, "seed": 12}),
        "prompt": await pool.generate("a blue mat", **base),
        "steps": await pool.generate("a red cat", **{**base, "num_inference_steps": 3}),
        "cfg": await pool.generate("a red cat", **base, negative_prompt="blue", true_cfg_scale=3.0),
    }
    for name, variant in variants.items():
        assert variant.images[0] != result.images[0], f"{name} did not reach the pipeline"
    cfg_off = await pool.generate("a red cat", **base, negative_prompt="blue", true_cfg_scale=1.0)
    assert cfg_off.images[0] == result.images[0]  # cfg <= 1 ignores the negative prompt, as the pipeline does
    assert decode((await pool.generate("x", width=64, height=16, num_inference_steps=1)).images[0]).size == (64, 16)
    await pool.aclose()


def test_bearer_token(generate_server):
    body = {"prompt": "x", "width": 32, "height": 32, "num_inference_steps": 1}
    assert httpx.post(f"{generate_server}/generate", json=body).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert httpx.post(f"{generate_server}/generate", json=body, headers=wrong).status_code == 401
    assert httpx.get(f"{generate_server}/info").status_code == 401
    assert httpx.post(f"{generate_server}/generate", json=body, headers=auth(), timeout=60).status_code == 200
    assert httpx.get(f"{generate_server}/health").json() == {"status": "ok"}
    info = httpx.get(f"{generate_server}/info", headers=auth()).json()
    assert info["mode"] == "generate" and info["pipeline"] == "QwenImagePipeline" and info["device"] == "cpu"


def test_bad_input_is_400_with_the_reason(generate_server):
    def post(body: dict) -> httpx.Response:
        return httpx.post(f"{generate_server}/generate", json=body, headers=auth(), timeout=60)

    cases = {
        "prompt: String should have at least 1 character": {"prompt": ""},
        "width 33 must be a multiple of 16": {"prompt": "x", "width": 33, "height": 32},
        "is over the 1,048,576-pixel limit": {"prompt": "x", "width": 2048, "height": 2048},
        "num_images 9 is over the limit": {"prompt": "x", "num_images": 9},
        "num_inference_steps 500 is over the limit": {"prompt": "x", "num_inference_steps": 500},
        "this server generates images": None,
    }
    for reason, body in cases.items():
        if body is None:
            response = httpx.post(f"{generate_server}/edit", json={"prompt": "x", "images": ["aGk="]}, headers=auth())
        else:
            response = post(body)
        assert response.status_code == 400, (reason, response.text)
        assert reason in response.json()["detail"], response.text
    response = httpx.post(f"{generate_server}/generate", content=b"{not json", headers=auth())
    assert response.status_code == 400


def test_request_size_limit_is_413(generate_server):
    big = {"prompt": "x" * 10, "negative_prompt": "y" * (2 * 1024 * 1024)}
    response = httpx.post(f"{generate_server}/generate", json=big, headers=auth())
    assert response.status_code == 413 and "byte limit" in response.json()["detail"]

    def chunks():  # no Content-Length: the server must count what streams in
        yield b'{"prompt": "'
        for _ in range(40):
            yield b"z" * 65536
        yield b'"}'

    response = httpx.post(f"{generate_server}/generate", content=chunks(), headers=auth())
    assert response.status_code == 413


async def test_queue_full_is_429_and_health_answers_mid_inference(generate_server):
    slow = {"prompt": "a slow one", "width": 768, "height": 768, "num_inference_steps": 1, "seed": 1}  # ~7 s
    async with httpx.AsyncClient(headers=auth(), timeout=300) as client:
        running = asyncio.create_task(client.post(f"{generate_server}/generate", json=slow))
        deadline = time.time() + 30
        while (await client.get(f"{generate_server}/info")).json()["queue_depth"] == 0:
            assert time.time() < deadline, "the slow request never started"
            await asyncio.sleep(0.05)
        started = time.perf_counter()
        health = await client.get(f"{generate_server}/health")
        health_s = time.perf_counter() - started
        busy = await client.post(f"{generate_server}/generate", json={"prompt": "x", "width": 32, "height": 32})
        still_running = not running.done()
        first = await running
    assert still_running, "the slow request finished too soon to prove anything; make it slower"
    assert health.status_code == 200 and health_s < 1.0
    assert busy.status_code == 429 and busy.headers["retry-after"] == "5"
    assert first.status_code == 200

    pool = ImageServerPool([generate_server], token=TOKEN)
    async with httpx.AsyncClient(headers=auth(), timeout=300) as client:
        running = asyncio.create_task(client.post(f"{generate_server}/generate", json=slow))
        while (await client.get(f"{generate_server}/info")).json()["queue_depth"] == 0:
            await asyncio.sleep(0.05)
        with pytest.raises(ImageServerError, match="all image servers are busy") as info:
            await pool.generate("x", width=32, height=32)
        assert info.value.transient
        await running
    await pool.aclose()


def test_edit_server_rejects_bad_images_with_reasons(edit_server):
    def post(images: list[str]) -> httpx.Response:
        return httpx.post(f"{edit_server}/edit", json={"prompt": "gray", "images": images}, headers=auth())

    text = base64.b64encode(b"<html>not an image</html>").decode()
    huge = base64.b64encode(png(size=(1024, 1024))).decode()
    cases = {
        "images[0] is not valid base64": ["!!!not base64!!!"],
        "images[0] is not a readable image": [text],
        "images[0] is 1024x1024, over the 262,144-pixel limit": [huge],
        "this pipeline takes one input image, got 2": [base64.b64encode(png()).decode()] * 2,
        "images[0] is empty": [""],
        "images[0] is a data: URL that is not base64 (data:image/png)": ["data:image/png,iVBORw0KGgo"],
        "images[1] is not valid base64": [base64.b64encode(png()).decode(), "aGk=\n!!"],
    }
    for reason, images in cases.items():
        response = post(images)
        assert response.status_code == 400 and reason in response.json()["detail"], response.text
    # A JPEG as raw base64 (it begins with /9j/) and as a line-wrapped data: URL both decode: the request gets
    # as far as the one-image check, which comes after decoding.
    raw = base64.b64encode(jpeg()).decode()
    wrapped = "data:image/jpeg;base64," + "\r\n".join(textwrap.wrap(raw, 76))
    response = post([raw, wrapped])
    assert response.status_code == 400 and "takes one input image, got 2" in response.json()["detail"], response.text
    assert httpx.post(f"{edit_server}/generate", json={"prompt": "x"}, headers=auth()).json()["detail"] == (
        "this server edits images: POST /edit with images"
    )


@pytest.mark.slow
async def test_edit_through_the_client(edit_server):
    """The edit pipeline resizes its input to about 1 megapixel, so even the tiny one takes ~25 s on CPU."""
    pool = ImageServerPool([edit_server], token=TOKEN)
    source = png((200, 30, 30), size=(48, 32))
    result = await pool.edit([source], "make it gray", width=32, height=32, num_inference_steps=1, seed=5)
    assert [decode(b).size for b in result.images] == [(32, 32)]
    again = await pool.edit([source], "make it gray", width=32, height=32, num_inference_steps=1, seed=5)
    assert again.images == result.images
    await pool.aclose()


@pytest.fixture(scope="module")
def edit_plus_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("edit-plus")
    model = build_tiny_edit(root / "model", plus=True)
    process, url = start_server(model, root / "server.log", max_pixels=512 * 512, trust_remote_code=True)
    yield url
    process.stop()


@pytest.mark.slow
async def test_edit_plus_takes_several_images(edit_plus_server):
    pool = ImageServerPool([edit_plus_server], token=TOKEN)
    info = httpx.get(f"{edit_plus_server}/info", headers=auth()).json()
    assert info["pipeline"] == "QwenImageEditPlusPipeline" and info["mode"] == "edit"
    images = [png((200, 30, 30), size=(32, 32)), png((30, 30, 200), size=(32, 32))]
    result = await pool.edit(images, "put them side by side", width=32, height=32, num_inference_steps=1, seed=2)
    assert [decode(b).size for b in result.images] == [(32, 32)]
    await pool.aclose()


def test_input_images_decode_from_base64_data_urls_and_wrapped_lines():
    raw = base64.b64encode(jpeg()).decode()
    assert raw.startswith("/9j/")  # a JPEG's base64 begins like a path, and must still read as base64
    wrapped = "\r\n".join(textwrap.wrap(raw, 76)) + "\r\n"  # MIME-style, as many encoders write it
    inputs = [raw, f"data:image/jpeg;base64,{raw}", wrapped, f"data:image/jpeg;base64,{wrapped}"]
    images = _decode_images(inputs, ImageServerConfig(model="unused", max_images=len(inputs)))
    for image in images:
        assert image.size == (40, 24) and image.mode == "RGB"
        assert max(abs(a - b) for a, b in zip(image.getpixel((20, 12)), (20, 160, 220), strict=True)) < 8


OPEN_REFUSAL = (
    "binding 0.0.0.0 without a token exposes the server to the network: set LLMI_IMAGE_SERVER_TOKEN "
    "(or --token-env) or pass --insecure"
)


def test_binding_beyond_loopback_needs_a_token_or_insecure(monkeypatch):
    monkeypatch.delenv("LLMI_IMAGE_SERVER_TOKEN", raising=False)
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        create_app(ImageServerConfig(model="m", host=host))
    for host in ("0.0.0.0", "192.168.1.20", "::", "", "gpu-box.example"):
        with pytest.raises(ValueError, match=r"without a token exposes the server to the network"):
            create_app(ImageServerConfig(model="m", host=host))
    with pytest.raises(ValueError) as refused:
        create_app(ImageServerConfig(model="m", host="0.0.0.0"))
    assert str(refused.value) == OPEN_REFUSAL
    with pytest.raises(ValueError, match="name a token's env var with --token-env or pass --insecure"):
        create_app(ImageServerConfig(model="m", host="0.0.0.0", token_env=None))
    monkeypatch.setenv("LLMI_IMAGE_SERVER_TOKEN", "")  # set but empty is no token
    with pytest.raises(ValueError, match="without a token"):
        create_app(ImageServerConfig(model="m", host="0.0.0.0"))
    create_app(ImageServerConfig(model="m", host="0.0.0.0", insecure=True))
    monkeypatch.setenv("LLMI_IMAGE_SERVER_TOKEN", "a-token")
    create_app(ImageServerConfig(model="m", host="0.0.0.0"))


def test_serve_image_cli_refuses_an_open_binding_before_loading_anything(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "LLMI_IMAGE_SERVER_TOKEN"}
    result = subprocess.run(
        [sys.executable, "-m", "llmi", "serve-image", "--model", str(tmp_path / "no-model"),
         "--host", "0.0.0.0", "--port", str(free_port())],
        capture_output=True, text=True, timeout=120, env={**env, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"error: {OPEN_REFUSAL}" in " ".join(result.stderr.split())
