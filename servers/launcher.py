"""Launch one image server per GPU: `llmi serve-images --model Qwen/Qwen-Image --gpus 0,1,2,3`.

Instance i sees only GPU i (`CUDA_VISIBLE_DEVICES`) and listens on `base_port + i`. The launcher waits for
every instance to be healthy, prints the URL list, and stops all of them on Ctrl-C or SIGTERM. If one dies,
it stops the rest and exits with an error: it restarts none silently. A non-loopback `--host` needs a token
(`--token-env`) or `--insecure`, which is passed on to every instance.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from servers._process import ManagedProcess, ServerStartError, connect_host, log_tail, raise_on_sigterm
from servers.image_server import server_token


@dataclass(kw_only=True)
class LauncherConfig:
    """How to launch a set of image servers."""

    model: str = field(metadata={"help": "diffusers model folder or hub id."})
    gpus: str = field(
        default="auto", metadata={"help": "auto (every visible GPU), a list like 0,1,2, or cpu:N for N CPU instances."}
    )
    base_port: int = field(default=8100, metadata={"help": "Instance i listens on base_port + i."})
    host: str = field(default="127.0.0.1", metadata={"help": "Interface to bind; loopback unless told otherwise."})
    mode: Literal["auto", "generate", "edit"] = field(default="auto", metadata={"help": "generate, edit or auto."})
    dtype: str = field(default="auto", metadata={"help": "auto (bfloat16 on GPU), or a torch dtype."})
    token_env: str | None = field(
        default="LLMI_IMAGE_SERVER_TOKEN", metadata={"help": "Env var with the bearer token to require (unset: none)."}
    )
    insecure: bool = field(
        default=False, metadata={"help": "Allow a non-loopback --host with no token (anyone reaching it can use it)."}
    )
    max_queue: int = field(default=8, metadata={"help": "Requests waiting or running per instance before 429."})
    startup_timeout_s: float = field(default=1800.0, metadata={"help": "How long to wait for each instance."})
    log_dir: str | None = field(default=None, metadata={"help": "Where instance logs go (default: a temp dir)."})


def parse_devices(gpus: str) -> list[str]:
    """Device per instance: GPU ids, or "cpu" repeated for `cpu:N`."""
    if gpus.startswith("cpu"):
        _, _, count = gpus.partition(":")
        return ["cpu"] * int(count or 1)
    if gpus == "auto":
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible:
            return [g.strip() for g in visible.split(",") if g.strip()]
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            raise ValueError("no GPUs found (nvidia-smi failed): pass --gpus 0,1 or --gpus cpu:1") from None
        return [str(i) for i, line in enumerate(out.stdout.splitlines()) if line.startswith("GPU ")]
    return [g.strip() for g in gpus.split(",") if g.strip()]


class ImageServerLauncher:
    """A set of image server processes, one per device (a context manager)."""

    def __init__(self, config: LauncherConfig):
        self.config = config
        server_token(config.host, config.token_env, config.insecure)  # refuse before starting any instance
        self.devices = parse_devices(config.gpus)
        if not self.devices:
            raise ValueError(f"--gpus {config.gpus!r} names no device")
        self.log_dir = Path(config.log_dir or tempfile.mkdtemp(prefix="llmi-image-servers-"))
        self.processes: list[ManagedProcess] = []

    @property
    def urls(self) -> list[str]:
        host = connect_host(self.config.host)
        return [f"http://{host}:{self.config.base_port + i}" for i in range(len(self.devices))]

    def _instance(self, i: int, device: str) -> ManagedProcess:
        c = self.config
        argv = [
            sys.executable, "-m", "servers.cli", "serve-image",
            "--model", c.model, "--mode", c.mode, "--host", c.host, "--port", str(c.base_port + i),
            "--device", "cpu" if device == "cpu" else "cuda", "--dtype", c.dtype, "--max-queue", str(c.max_queue),
        ]  # fmt: skip
        argv += ["--token-env", c.token_env] if c.token_env else ["--token-env", ""]
        argv += ["--insecure"] if c.insecure else []
        env = dict(os.environ)
        env["CUDA_VISIBLE_DEVICES"] = "" if device == "cpu" else device
        return ManagedProcess(argv, env=env, log_path=self.log_dir / f"instance-{i}.log")

    def start(self) -> ImageServerLauncher:
        self.processes = [self._instance(i, d) for i, d in enumerate(self.devices)]
        for process in self.processes:
            process.start()
        try:
            for process, url in zip(self.processes, self.urls, strict=True):
                process.wait_healthy(f"{url}/health", self.config.startup_timeout_s)
        except ServerStartError:
            self.stop()
            raise
        return self

    def dead(self) -> list[int]:
        """Indices of instances that have exited."""
        return [i for i, p in enumerate(self.processes) if not p.running()]

    def stop(self) -> None:
        for process in self.processes:
            process.stop(grace_s=10)

    def __enter__(self) -> ImageServerLauncher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_images(config: LauncherConfig) -> None:
    """Run the launcher in the foreground until Ctrl-C or SIGTERM, or until an instance dies (then exit 1)."""
    raise_on_sigterm()
    launcher = ImageServerLauncher(config)
    print(
        f"starting {len(launcher.devices)} image server(s) for {config.model}; logs in {launcher.log_dir}", flush=True
    )
    try:
        launcher.start()
        print("image servers ready:", flush=True)
        for url in launcher.urls:
            print(url, flush=True)
        print(f"LLMI_IMAGE_SERVER_URLS={','.join(launcher.urls)}", flush=True)
        while not launcher.dead():
            time.sleep(1)
        i = launcher.dead()[0]
        log = launcher.processes[i].log_path
        print(f"image server {i} ({launcher.urls[i]}) exited; stopping all. Log {log}:\n{log_tail(log)}", flush=True)
        launcher.stop()
        sys.exit(1)
    except KeyboardInterrupt:
        print("stopping the image servers", flush=True)
    finally:
        launcher.stop()
