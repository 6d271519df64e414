"""The image server launcher and the client pool, with real server processes on CPU."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from servers._process import free_port
from servers.launcher import ImageServerLauncher, LauncherConfig, parse_devices
from tests.tiny_qwen import build_tiny_generate
from tools.image_client import ImageServerError, ImageServerPool

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"width": 32, "height": 32, "num_inference_steps": 1}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_generate(tmp_path_factory.mktemp("launcher") / "model")


def test_parse_devices(monkeypatch):
    assert parse_devices("0,1, 3") == ["0", "1", "3"]
    assert parse_devices("cpu:2") == ["cpu", "cpu"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert parse_devices("auto") == ["2", "5"]


async def test_pool_spreads_load_and_survives_a_dead_instance(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    config = LauncherConfig(model=str(tiny_model), gpus="cpu:2", base_port=free_port(), token_env=None,
                            log_dir=str(tmp_path))  # fmt: skip
    with ImageServerLauncher(config) as launcher:
        assert len(launcher.urls) == 2
        pool = ImageServerPool(launcher.urls, cooldown_s=60)
        results = await asyncio.gather(*(pool.generate("a cat", seed=i, **SMALL) for i in range(6)))
        assert {r.url for r in results} == set(launcher.urls), "least-busy-first should use both instances"
        served = [httpx.get(f"{u}/info").json()["served"] for u in launcher.urls]
        assert sum(served) == 6 and min(served) >= 1

        launcher.processes[0].stop()
        assert launcher.dead() == [0]
        for _ in range(3):
            result = await pool.generate("a dog", **SMALL)
            assert result.url == launcher.urls[1]
        assert (await pool.health()) == {launcher.urls[0]: False, launcher.urls[1]: True}

        launcher.processes[1].stop()
        with pytest.raises(ImageServerError, match="no image server could take the request") as info:
            await pool.generate("a dog", **SMALL)
        assert info.value.transient
        await pool.aclose()


def test_client_errors_are_not_transient(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    config = LauncherConfig(model=str(tiny_model), gpus="cpu:1", base_port=free_port(), token_env=None,
                            log_dir=str(tmp_path))  # fmt: skip
    with ImageServerLauncher(config) as launcher:
        pool = ImageServerPool(launcher.urls)
        with pytest.raises(ImageServerError, match=r"refused the request \(400\).*multiple of 16") as info:
            asyncio.run(pool.generate("x", width=33, height=32))
        assert not info.value.transient and info.value.status == 400


def _launch_cli(tiny_model: Path, tmp_path: Path) -> tuple[subprocess.Popen[str], list[str]]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmi", "serve-images", "--model", str(tiny_model), "--gpus", "cpu:1",
         "--base-port", str(port), "--log-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    lines: list[str] = []
    deadline = time.time() + 180
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip())
        if line.startswith("LLMI_IMAGE_SERVER_URLS="):
            return proc, lines
    proc.kill()
    raise AssertionError("launcher did not report ready:\n" + "\n".join(lines))


def _instance_pids(log_dir: Path, port: int) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"serve-image .*--port {port}"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_launcher_cli_stops_all_when_an_instance_dies(tiny_model, tmp_path):
    proc, lines = _launch_cli(tiny_model, tmp_path)
    url = next(line for line in lines if line.startswith("http://127.0.0.1:"))
    assert httpx.get(f"{url}/health").status_code == 200
    port = int(url.rsplit(":", 1)[1])
    (pid,) = _instance_pids(tmp_path, port)
    os.kill(pid, signal.SIGKILL)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "exited; stopping all" in out


def test_launcher_cli_stops_instances_on_sigterm(tiny_model, tmp_path):
    proc, lines = _launch_cli(tiny_model, tmp_path)
    url = next(line for line in lines if line.startswith("http://127.0.0.1:"))
    port = int(url.rsplit(":", 1)[1])
    assert _instance_pids(tmp_path, port)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "stopping the image servers" in out
    assert _instance_pids(tmp_path, port) == []
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health", timeout=2)


def test_launcher_needs_a_token_or_insecure_beyond_loopback(monkeypatch, tmp_path):
    monkeypatch.delenv("LLMI_IMAGE_SERVER_TOKEN", raising=False)
    with pytest.raises(ValueError) as refused:
        ImageServerLauncher(LauncherConfig(model="m", gpus="cpu:1", host="0.0.0.0"))
    assert str(refused.value) == (
        "binding 0.0.0.0 without a token exposes the server to the network: set LLMI_IMAGE_SERVER_TOKEN "
        "(or --token-env) or pass --insecure"
    )
    with pytest.raises(ValueError, match=r"binding 10\.1\.2\.3 without a token .* --token-env or pass --insecure"):
        ImageServerLauncher(LauncherConfig(model="m", gpus="cpu:1", host="10.1.2.3", token_env=None))

    config = LauncherConfig(model="m", gpus="cpu:2", host="0.0.0.0", base_port=9000, insecure=True,
                            log_dir=str(tmp_path))  # fmt: skip
    launcher = ImageServerLauncher(config)
    argv = launcher._instance(1, "cpu").argv
    assert "--insecure" in argv and argv[argv.index("--host") + 1] == "0.0.0.0"
    assert launcher.urls == ["http://127.0.0.1:9000", "http://127.0.0.1:9001"]
    loopback = ImageServerLauncher(LauncherConfig(model="m", gpus="cpu:1", log_dir=str(tmp_path)))
    assert "--insecure" not in loopback._instance(0, "cpu").argv
    monkeypatch.setenv("LLMI_IMAGE_SERVER_TOKEN", "a-token")
    ImageServerLauncher(LauncherConfig(model="m", gpus="cpu:1", host="0.0.0.0", log_dir=str(tmp_path)))


def test_serve_images_cli_refuses_an_open_binding(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "LLMI_IMAGE_SERVER_TOKEN"}
    result = subprocess.run(
        [sys.executable, "-m", "llmi", "serve-images", "--model", str(tmp_path / "no-model"),
         "--gpus", "cpu:1", "--host", "0.0.0.0", "--log-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120, env={**env, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "error: binding 0.0.0.0 without a token exposes the server to the network" in " ".join(result.stderr.split())
    assert not list(tmp_path.glob("instance-*.log")), "no instance should have started"


# Runs inside a private network namespace, so binding 0.0.0.0 there reaches no real network.
_OPEN_LAUNCH = """
import json, subprocess, sys
import httpx
from servers._process import free_port
from servers.launcher import ImageServerLauncher, LauncherConfig

config = LauncherConfig(model=sys.argv[1], gpus="cpu:1", host="0.0.0.0", base_port=free_port(), token_env=None,
                        insecure=True, log_dir=sys.argv[2])
with ImageServerLauncher(config) as launcher:
    url = launcher.urls[0]
    listening = subprocess.run(["ss", "-ltnH", f"sport = :{config.base_port}"], capture_output=True, text=True)
    print(json.dumps({"info": httpx.get(f"{url}/info").json(),
                      "listening": [line.split()[3] for line in listening.stdout.splitlines()]}))
"""


def test_insecure_launches_on_every_interface_without_a_token(tiny_model, tmp_path, requires_bwrap):
    result = subprocess.run(
        ["bwrap", "--dev-bind", "/", "/", "--unshare-net", "--die-with-parent", "--chdir", str(ROOT),
         sys.executable, "-c", _OPEN_LAUNCH, str(tiny_model), str(tmp_path)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + "".join(p.read_text() for p in tmp_path.glob("*.log"))
    out = json.loads(result.stdout.splitlines()[-1])
    assert out["info"]["mode"] == "generate"  # answered with no token: the instance got --insecure
    assert [address.rsplit(":", 1)[0] for address in out["listening"]] == ["0.0.0.0"]
