"""The vLLM policy server: the real vLLM CPU server serving SmolLM2 (slow tests; they run in CI)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch

from llmi_graph import OpenAIPolicy, Sampling
from servers._process import free_port
from servers.policy import PolicyServer, PolicyServerConfig, VllmMissing, find_vllm_python

MESSAGES = [{"role": "user", "content": "Name three colours."}]


def chat(server: PolicyServer, **body: object) -> dict:
    payload = {"model": "smollm2", "messages": MESSAGES, "max_tokens": 16, **body}
    response = httpx.post(f"{server.url}/chat/completions", json=payload, timeout=300)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.slow
def test_n_completions_with_token_ids_and_logprobs(policy_server, embedded_model_dir):
    from transformers import AutoTokenizer

    data = chat(policy_server, n=3, seed=3, temperature=1.0, logprobs=True, return_token_ids=True)
    assert len(data["choices"]) == 3
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir)
    expected_prompt = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True)["input_ids"]
    assert data["prompt_token_ids"] == expected_prompt  # the same tokens the embedded policy would see
    for choice in data["choices"]:
        ids = choice["token_ids"]
        assert 0 < len(ids) <= 16 and len(choice["logprobs"]["content"]) == len(ids)
        assert tokenizer.decode(ids, skip_special_tokens=True) == choice["message"]["content"]
        assert all(t["logprob"] <= 0 for t in choice["logprobs"]["content"])


@pytest.mark.slow
async def test_openai_policy_captures_vllm_token_ids(policy_server):
    out = await OpenAIPolicy(policy_server.url, "smollm2").generate(MESSAGES, Sampling(max_tokens=24, seed=1))
    assert out.completion_token_ids and len(out.logprobs) == len(out.completion_token_ids)
    assert out.prompt_token_ids and out.model == "smollm2"


@pytest.mark.slow
async def test_openai_policy_samples_k_candidates_in_one_vllm_request(policy_server):
    policy = OpenAIPolicy(policy_server.url, "smollm2")
    outs = await policy.generate_n(MESSAGES, Sampling(max_tokens=24, temperature=1.0, seed=5), 3)
    assert len(outs) == 3 and len({tuple(o.completion_token_ids or ()) for o in outs}) == 3  # one seed, 3 samples
    for out in outs:
        assert out.completion_token_ids and len(out.logprobs or ()) == len(out.completion_token_ids)
        assert out.prompt_token_ids == outs[0].prompt_token_ids and out.text


@pytest.mark.slow
def test_lora_adapter_loaded_at_runtime_and_used_by_name(policy_server, embedded_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(embedded_model_dir)
    # init_lora_weights=False: random A and B, so the adapter really changes the outputs.
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(tmp_path / "adapter")

    policy_server.load_lora_adapter("adapter-a", tmp_path / "adapter")
    assert "adapter-a" in policy_server.models()
    greedy = {"temperature": 0.0, "max_tokens": 12}
    with_adapter = chat(policy_server, model="adapter-a", **greedy)["choices"][0]["message"]["content"]
    without = chat(policy_server, **greedy)["choices"][0]["message"]["content"]
    assert with_adapter != without
    policy_server.load_lora_adapter("adapter-a", tmp_path / "adapter")  # replacing by name works
    policy_server.unload_lora_adapter("adapter-a")
    assert "adapter-a" not in policy_server.models()


@pytest.mark.slow
def test_llmi_run_through_the_policy_server(policy_server, tmp_path):
    out = tmp_path / "report"
    result = subprocess.run(
        [sys.executable, "-m", "llmi", "run", "Plot y = x^2 and explain it", "--policy-url",
         policy_server.url, "--model", "smollm2", "--max-tokens", "64", "--out", str(out)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "LLMI_IMAGE_DIR": str(tmp_path / "store")},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    trajectory = json.loads((out / "trajectory.json").read_text())
    policy = trajectory["policy"]
    assert policy["backend"] == "openai-compatible" and policy["model"] == "smollm2"
    assert 0 < len(policy["completion_token_ids"]) <= 64 and policy["prompt_token_ids"]
    assert len(policy["logprobs"]) == len(policy["completion_token_ids"])
    assert (out / "report.html").is_file()


@pytest.mark.slow
def test_serve_policy_cli_binds_loopback_and_stops_on_sigterm(embedded_model_dir, tmp_path, policy_server):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmi", "serve-policy", "--model", embedded_model_dir,
         "--served-model-name", "smol-cli", "--port", str(port), "--log-path", str(tmp_path / "vllm.log")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines = []
    deadline = time.time() + 900
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip())
        if line.startswith("base URL:"):
            break
    assert f"base URL: http://127.0.0.1:{port}/v1  (model name: smol-cli)" in lines, "\n".join(lines)
    response = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=30)
    assert [m["id"] for m in response.json()["data"]] == ["smol-cli"]
    listening = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout
    local_addresses = [line.split()[3] for line in listening.splitlines()]
    assert local_addresses == [f"127.0.0.1:{port}"]
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "stopping the policy server" in out
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)


def test_command_has_the_flags_llmi_needs(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMI_VLLM_PYTHON", sys.executable)
    monkeypatch.setenv("MY_VLLM_KEY", "sekrit")
    server = PolicyServer(PolicyServerConfig(model="Qwen/Qwen3-4B-Instruct-2507", served_model_name="policy",
                                             port=8123, api_key_env="MY_VLLM_KEY", tensor_parallel_size=2,
                                             device="cpu", log_path=str(tmp_path / "log")))  # fmt: skip
    argv = server.command()
    assert argv[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    flags = " ".join(argv)
    for expected in ("--model Qwen/Qwen3-4B-Instruct-2507", "--served-model-name policy", "--host 127.0.0.1",
                     "--port 8123", "--max-model-len 2048", "--enable-lora", "--max-lora-rank 16",
                     "--tensor-parallel-size 2"):  # fmt: skip
        assert expected in flags
    assert "--api-key" not in argv and not any("sekrit" in arg for arg in argv)  # argv shows in `ps`
    env = server.environment()
    assert env["VLLM_API_KEY"] == "sekrit"
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True" and env["VLLM_CPU_KVCACHE_SPACE"] == "2"
    monkeypatch.setenv("VLLM_API_KEY", "stray")  # a key inherited by accident is not passed on
    keyless = PolicyServer(PolicyServerConfig(model="m", port=8123, log_path=str(tmp_path / "log")))
    assert "VLLM_API_KEY" not in keyless.environment()
    assert server.url == "http://127.0.0.1:8123/v1"
    monkeypatch.delenv("MY_VLLM_KEY")
    with pytest.raises(ValueError, match="MY_VLLM_KEY is not set"):
        PolicyServer(PolicyServerConfig(model="m", api_key_env="MY_VLLM_KEY"))


def test_missing_vllm_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.delenv("LLMI_VLLM_PYTHON", raising=False)
    monkeypatch.setattr("servers.policy.CPU_VENV", tmp_path / "nothing-here")
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(VllmMissing, match="make serve-policy"):
        find_vllm_python()


def test_binding_beyond_loopback_needs_an_api_key_or_insecure(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMI_VLLM_PYTHON", sys.executable)
    log = str(tmp_path / "log")
    with pytest.raises(ValueError) as refused:
        PolicyServer(PolicyServerConfig(model="m", host="0.0.0.0", port=8123, log_path=log))
    assert str(refused.value) == (
        "binding 0.0.0.0 without a token exposes the server to the network: "
        "set --api-key-env to an env var holding a key or pass --insecure"
    )
    for host in ("192.168.1.20", "::", ""):
        with pytest.raises(ValueError, match="without a token exposes the server"):
            PolicyServer(PolicyServerConfig(model="m", host=host, port=8123, log_path=log))
    insecure = PolicyServer(PolicyServerConfig(model="m", host="0.0.0.0", port=8123, insecure=True, log_path=log))
    assert insecure.url == "http://127.0.0.1:8123/v1" and "--host 0.0.0.0" in " ".join(insecure.command())
    monkeypatch.setenv("MY_VLLM_KEY", "sekrit")
    PolicyServer(PolicyServerConfig(model="m", host="0.0.0.0", port=8123, api_key_env="MY_VLLM_KEY", log_path=log))
    assert PolicyServer(PolicyServerConfig(model="m", host="::1", port=8123, log_path=log)).url == (
        "http://[::1]:8123/v1"
    )
    with pytest.raises(ValueError, match="through --api-key-env, not --extra-args"):
        PolicyServer(PolicyServerConfig(model="m", extra_args=["--api-key=sekrit"], log_path=log))


def test_serve_policy_cli_refuses_an_open_binding(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "llmi", "serve-policy", "--model", "m", "--host", "0.0.0.0",
         "--log-path", str(tmp_path / "vllm.log")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "error: binding 0.0.0.0 without a token exposes the server to the network" in " ".join(result.stderr.split())
    assert not (tmp_path / "vllm.log").exists()


def _session_processes(leader: int) -> dict[int, bytes]:
    """Command lines (NUL-separated, as `ps` reads them) of every process in `leader`'s session."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            session = int(stat.read_text().rsplit(")", 1)[1].split()[3])  # after the name: state ppid pgrp session
            if session == leader:
                found[int(stat.parent.name)] = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue  # a process that ended while we looked
    return found


@pytest.mark.slow
def test_api_key_reaches_vllm_through_the_environment_not_argv(embedded_model_dir, tmp_path, monkeypatch,
                                                                 policy_server):  # fmt: skip
    key = secrets.token_hex(16)
    monkeypatch.setenv("LLMI_TEST_VLLM_KEY", key)
    config = PolicyServerConfig(model=embedded_model_dir, served_model_name="smol-keyed", lora=False,
                                api_key_env="LLMI_TEST_VLLM_KEY", log_path=str(tmp_path / "vllm.log"))  # fmt: skip
    with PolicyServer(config) as server:
        processes = _session_processes(server._process.pid)
        assert any(b"vllm.entrypoints.openai.api_server" in argv for argv in processes.values()), processes
        assert not [pid for pid, argv in processes.items() if key.encode() in argv]
        assert key not in server.log_path.read_text()

        body = {"model": "smol-keyed", "messages": MESSAGES, "max_tokens": 4}
        assert httpx.get(f"{server.url}/models", timeout=30).status_code == 401
        assert httpx.post(f"{server.url}/chat/completions", json=body, timeout=30).status_code == 401
        wrong = {"Authorization": "Bearer not-the-key"}
        assert httpx.get(f"{server.url}/models", headers=wrong, timeout=30).status_code == 401
        keyed = {"Authorization": f"Bearer {key}"}
        response = httpx.post(f"{server.url}/chat/completions", json=body, headers=keyed, timeout=300)
        assert response.status_code == 200, response.text
        assert server.models() == ["smol-keyed"]  # the helper's client sends the key too
