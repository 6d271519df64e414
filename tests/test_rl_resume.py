"""Kill and resume every RL mode: collection (torn files, reruns), replay training, server-mode training.

The policy endpoint here is `FakeVllm`, a fake of the vLLM server over real HTTP: chat completions with token ids
and logprobs (the same prompt ids for the same messages, as a real server gives), and runtime LoRA loading that
refuses a name already loaded and requests for a name never loaded, as vLLM does. Training runs use a tiny random
Llama with SmolLM2's real tokenizer, so a GRPO step takes well under a second.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from safetensors.torch import load_file

from rl.collect import group_id
from rl.collect import main as collect_main
from rl.config import TrainConfig
from rl.data import Row, load_rows
from rl.replay import ReplayRollout, load_records, read_groups, replay_dataset
from rl.train import last_checkpoint, train
from tests.fakes import LoopbackApp, png

ROOT = Path(__file__).resolve().parents[1]
# Drafts with no tag: a row that wants an image scores 0.1 x opener likeness, so the two differ (an advantage)
# and no tool runs.
DRAFTS = ("A plain answer.", "A near miss: {'source': 'code'")


class FakeVllm:
    """A fake vLLM policy server on loopback, recording chat requests and adapter loads in order."""

    def __init__(self, base_name: str = "fake-base", delay_s: float = 0.0):
        self.base_name, self.delay_s = base_name, delay_s
        self.loaded: set[str] = set()
        self.loads: list[tuple[str, dict[str, torch.Tensor]]] = []  # every load: the name, the weights read then
        self.events: list[tuple[str, str]] = []  # ("load" | "unload" | "chat", name)
        self._count = 0
        self._per_prompt: Counter[bytes] = Counter()
        self._app = LoopbackApp(self._build())

    @property
    def url(self) -> str:
        return f"{self._app.url}/v1"

    def chats(self) -> list[str]:
        return [name for kind, name in self.events if kind == "chat"]

    def _build(self) -> FastAPI:
        app = FastAPI()

        @app.get("/v1/models")
        async def models() -> dict[str, Any]:
            return {"data": [{"id": name} for name in [self.base_name, *self.loaded]]}

        @app.post("/v1/load_lora_adapter")
        async def load(request: Request) -> JSONResponse:
            body = await request.json()
            name = body["lora_name"]
            if name in self.loaded:
                return JSONResponse({"message": f"The lora adapter '{name}' has already been loaded."}, 400)
            self.loaded.add(name)
            self.loads.append((name, load_file(str(Path(body["lora_path"]) / "adapter_model.safetensors"))))
            self.events.append(("load", name))
            return JSONResponse("ok")

        @app.post("/v1/unload_lora_adapter")
        async def unload(request: Request) -> JSONResponse:
            name = (await request.json())["lora_name"]
            if name not in self.loaded:
                return JSONResponse({"message": f"The lora adapter '{name}' cannot be found."}, 404)
            self.loaded.remove(name)
            self.events.append(("unload", name))
            return JSONResponse("ok")

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> JSONResponse:
            body = await request.json()
            model = body["model"]
            if model != self.base_name and model not in self.loaded:
                return JSONResponse({"error": {"message": f"The model `{model}` does not exist."}}, 404)
            self.events.append(("chat", model))
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            digest = hashlib.sha256(json.dumps(body["messages"], sort_keys=True).encode()).digest()
            # Alternate per prompt, not per arrival: each group of two then holds both drafts (two rewards, so a
            # non-zero advantage) however the concurrent requests arrive.
            text = DRAFTS[self._per_prompt[digest] % len(DRAFTS)]
            self._per_prompt[digest] += 1
            self._count += 1
            prompt_ids = [1, *(100 + b for b in digest[:8])]  # the same messages, the same prompt ids
            token_ids = [200 + ord(ch) for ch in text]
            logprobs = [{"token": ch, "logprob": -0.5, "bytes": None, "top_logprobs": []} for ch in text]
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
                "token_ids": token_ids,
                "logprobs": {"content": logprobs},
            }
            usage = {"prompt_tokens": len(prompt_ids), "completion_tokens": len(text)}
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
            return JSONResponse(
                {
                    "id": f"chatcmpl-fake-{self._count}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "prompt_token_ids": prompt_ids,
                    "choices": [choice],
                    "usage": usage,
                }
            )

        return app

    def __enter__(self) -> FakeVllm:
        self._app.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._app.__exit__(*exc)


def write_rows(path: Path, prompts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"prompt": p, "image_num": 1, "tools": ["code"]}) + "\n" for p in prompts))
    return path


def lines_by_group(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Every parsed line of a recorded file, by group (raw: nothing set aside)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        groups.setdefault(record["group"], []).append(record)
    return groups


# --- group identity and reading a damaged file --------------------------------------------------------------


def test_a_group_id_covers_the_whole_row(tmp_path):
    red, also_red, blue = tmp_path / "red.png", tmp_path / "copy.png", tmp_path / "blue.png"
    red.write_bytes(png((255, 0, 0)))
    also_red.write_bytes(png((255, 0, 0)))
    blue.write_bytes(png((0, 0, 255)))
    row = Row(prompt="Draw a cat.", image_num=1, tools=("diffusion",), images=(str(red),))
    variants = [
        Row(prompt="Draw a dog.", image_num=1, tools=("diffusion",), images=(str(red),)),
        Row(prompt="Draw a cat.", image_num=2, tools=("diffusion",), images=(str(red),)),
        Row(prompt="Draw a cat.", image_num=1, tools=("search",), images=(str(red),)),
        Row(prompt="Draw a cat.", image_num=1, tools=("diffusion",), images=(str(blue),)),
        Row(prompt="Draw a cat.", image_num=1, tools=("diffusion",), images=()),
        Row(prompt="Draw a cat.", image_num=1, tools=("diffusion",), images=(str(red),), id="row-7"),
    ]
    ids = {group_id(r, 4, 0) for r in [row, *variants]}
    assert len(ids) == 1 + len(variants)
    assert len({group_id(row, 4, 0), group_id(row, 8, 0), group_id(row, 4, 1)}) == 3
    # The same request is the same group: input images by content, wherever the file lies.
    moved = Row(prompt="Draw a cat.", image_num=1, tools=("diffusion",), images=(str(also_red),))
    assert group_id(moved, 4, 0) == group_id(row, 4, 0)


def record(group: str, attempt: str | None, sample: int | None, size: int | None, prompt_ids=(1, 2)) -> dict:
    out: dict[str, Any] = {"group": group, "prompt": f"prompt {group}", "prompt_ids": list(prompt_ids)}
    out |= {"completion_ids": [5, 6], "logprobs": [-0.1, -0.2], "rewards": {"hybrid": float(sample or 0)}}
    if attempt is not None:
        out |= {"attempt": attempt, "sample": sample, "group_size": size}
    return out


def test_replay_reads_what_a_crash_and_a_rerun_leave(tmp_path):
    recorded = tmp_path / "rollouts.jsonl"
    lines = [
        record("a", "a1", 0, 2),
        record("a", "a1", 1, 2),
        record("b", "b1", 0, 2),  # cut short by a crash: its second sample was never written
        record("c", "c1", 0, 2),  # one attempt whose records disagree on the prompt ids
        record("c", "c1", 1, 2, prompt_ids=(1, 3)),
        record("b", "b2", 0, 2),  # the rerun's attempt at b, right after the partial one
        record("b", "b2", 1, 2),
        record("a", "a2", 0, 2),  # a duplicate of a, recorded complete again
        record("a", "a2", 1, 2),
        record("d", None, None, None),  # records from before attempts were written: one run of lines
        record("d", None, None, None),
        record("e", "e1", 1, 2),  # sample numbers that are not 0..G-1
        record("e", "e1", 1, 2),
    ]
    text = "".join(json.dumps(r) + "\n" for r in lines)
    recorded.write_text(text + "not json\n" + '{"group": "f", "prompt": "x", "prompt_i')  # and a torn last line
    found = read_groups(recorded)
    assert list(found.groups) == ["a", "b", "d"]
    assert [r.get("attempt") for r in found.groups["a"]] == ["a1", "a1"]  # the first complete attempt
    assert [r.get("attempt") for r in found.groups["b"]] == ["b2", "b2"]  # never merged with b1
    assert (found.unreadable, found.incomplete, found.duplicates) == (2, 3, 1)
    records = load_records(recorded)
    assert len(records) == 6
    rollout = ReplayRollout(records, group_size=2)
    prompts = replay_dataset(records)["prompt"]
    out = rollout([p for p in prompts for _ in range(2)], trainer=None)
    assert len(out["completion_ids"]) == 6 and out["recorded_rewards"][:2] == [{"hybrid": 0.0}, {"hybrid": 1.0}]

    recorded.write_text('{"group": "torn", "pro')
    with pytest.raises(ValueError, match="no complete group"):
        load_records(recorded)


# --- collect: a torn file, a kill -9 mid-run, reruns --------------------------------------------------------


def collect_argv(rows: Path, out: Path, server: FakeVllm, *extra: str) -> list[str]:
    argv = ["--out", str(out), "--dataset", str(rows), "--policy-url", server.url, "--model", server.base_name]
    return [*argv, "--group", "2", "--max-tokens", "16", *extra]


def assert_each_group_once(out: Path, rows: Path, size: int = 2) -> dict[str, list[dict[str, Any]]]:
    """The raw file holds each row's group exactly once (one attempt of `size` samples), and replay agrees."""
    expected = {group_id(row, size, 0) for row in load_rows(rows)}
    groups = lines_by_group(out)
    assert set(groups) == expected
    for records in groups.values():
        assert [r["sample"] for r in records] == list(range(size)) and len({r["attempt"] for r in records}) == 1
    found = read_groups(out)
    assert not found.damaged and set(found.groups) == expected
    assert len(load_records(out)) == size * len(expected)
    return groups


def test_collect_reruns_over_a_torn_file_and_records_each_group_once(tmp_path, capsys):
    rows = write_rows(tmp_path / "rows.jsonl", ["Plot rainfall.", "Plot sales.", "Plot the tides."])
    out = tmp_path / "rollouts.jsonl"
    with FakeVllm() as server:
        collect_main(collect_argv(rows, out, server))
        first = assert_each_group_once(out, rows)
        assert len(server.chats()) == 6

        # A crash mid-write: the file ends inside the last group's second line.
        text = out.read_text()
        lines = text.splitlines(keepends=True)
        torn = json.loads(lines[-1])["group"]
        out.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
        collect_main(collect_argv(rows, out, server))
        assert "repaired" in capsys.readouterr().out
        again = assert_each_group_once(out, rows)
        assert len(server.chats()) == 8  # only the torn group was sampled again
        assert again[torn][0]["attempt"] != first[torn][0]["attempt"]
        assert all(again[g] == first[g] for g in first if g != torn)

        # A rerun with nothing to do writes nothing and leaves the file as it is.
        before = out.read_bytes()
        collect_main(collect_argv(rows, out, server))
        assert out.read_bytes() == before and len(server.chats()) == 8


@pytest.mark.slow
def test_collect_killed_mid_run_then_rerun_records_each_group_once(tmp_path):
    prompts = [f"Plot the rainfall of month {m}." for m in range(1, 7)]
    rows = write_rows(tmp_path / "rows.jsonl", prompts)
    out = tmp_path / "rollouts.jsonl"
    with FakeVllm(delay_s=0.4) as server:
        command = [sys.executable, "-m", "rl.collect", *collect_argv(rows, out, server, "--concurrency", "1")]
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while not (out.is_file() and len(out.read_text().splitlines()) >= 4):  # two groups in, more in flight
            assert process.poll() is None, process.stdout.read().decode()
            assert time.monotonic() < deadline, "collect recorded nothing in 300 s"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait()
        recorded = len(lines_by_group(out))
        assert 2 <= recorded < len(prompts)
        # The kill lands between appends (one write a group); a crash inside one is the file cut mid-line, which
        # leaves the last group partial: its first sample whole, its second torn.
        lines = out.read_text().splitlines(keepends=True)
        out.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])

        rerun = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert rerun.returncode == 0, rerun.stderr
        assert "repaired" in rerun.stdout  # the partial group and the torn line dropped first
        assert f"recorded {len(prompts) - recorded + 1} group(s)" in rerun.stdout
        assert_each_group_once(out, rows)


# --- replay training: killed after a checkpoint, resumed ----------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model_dir(embedded_model_dir, tmp_path_factory) -> str:
    """A tiny random Llama with SmolLM2's real tokenizer (so every token id the fakes hand out is in vocab)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(embedded_model_dir).save_pretrained(folder)
    return str(folder)


def tiny_train_config(tmp_path: Path, model: str, **overrides: Any) -> TrainConfig:
    values: dict[str, Any] = dict(
        model=model,
        dataset=str(write_rows(tmp_path / "rows.jsonl", ["Plot rainfall.", "Plot sales."])),
        output_dir=str(tmp_path / "out"),
        num_generations=2,
        prompts_per_step=2,
        micro_batch_size=2,
        max_completion_length=16,
        learning_rate=5e-2,
        lr_scheduler_type="constant",
        format_weight=1.0,
        save_steps=1,
        report_to="none",
        lora_r=4,
        lora_alpha=8,
    )
    return TrainConfig(**(values | overrides))


def lora_weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "adapter_model.safetensors"))


@pytest.mark.slow
def test_replay_training_killed_after_a_checkpoint_resumes_from_it(tmp_path, tiny_model_dir):
    recorded = tmp_path / "rollouts.jsonl"
    with FakeVllm() as server:
        collect_main(
            collect_argv(write_rows(tmp_path / "rows.jsonl", ["Plot rainfall.", "Plot sales."]), recorded, server)
        )
    out = tmp_path / "replay"
    flags = ["--replay", str(recorded), "--model", tiny_model_dir, "--output_dir", str(out), "--report_to", "none"]
    flags += ["--num_generations", "2", "--prompts_per_step", "2", "--micro_batch_size", "2", "--save_steps", "2"]
    flags += ["--learning_rate", "0.05", "--lr_scheduler_type", "constant", "--format_weight", "1"]
    command = [sys.executable, "rl/train.py", *flags]
    process = subprocess.Popen(
        [*command, "--max_steps", "1000"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 300
    while not (out / "checkpoint-2" / "trainer_state.json").is_file():
        assert process.poll() is None, process.stdout.read().decode()
        assert time.monotonic() < deadline, "no checkpoint in 300 s"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    saved = max(int(p.parent.name.split("-")[1]) for p in out.glob("checkpoint-*/trainer_state.json"))
    (out / f"checkpoint-{saved + 2}").mkdir()  # as a kill mid-save leaves one: weights, no trainer_state.json
    (out / f"checkpoint-{saved + 2}" / "adapter_model.safetensors").write_bytes(b"torn")

    resumed = subprocess.run(
        [*command, "--max_steps", str(saved + 1)], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {out / f'checkpoint-{saved}'}" in resumed.stdout
    state = json.loads((out / f"checkpoint-{saved + 1}" / "trainer_state.json").read_text())
    assert state["global_step"] == saved + 1
    assert last_checkpoint(out).endswith(f"checkpoint-{saved + 1}")
    before, after = lora_weights(out / f"checkpoint-{saved}"), lora_weights(out / "adapter")
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the resumed step trained on
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(steps)  # what the killed run logged past its checkpoint was dropped on resume


# --- server mode: a restart loads the checkpoint's adapter before the first rollout -------------------------


class FakeAdapterServer:
    """A fake policy-server object that records adapter loads and unloads."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def load_lora_adapter(self, name: str, path: Path) -> None:
        assert (path / "adapter_model.safetensors").is_file()
        self.events.append(("load", name))

    def unload_lora_adapter(self, name: str) -> None:
        self.events.append(("unload", name))


class FakeAdapterModel:
    """A fake peft model: `save_pretrained` writes an adapter file."""

    def save_pretrained(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        (path / "adapter_model.safetensors").write_bytes(b"weights")


def test_adapter_names_after_a_resume_between_pushes(tmp_path):
    from rl.rollout import AdapterSync

    server, model = FakeAdapterServer(), FakeAdapterModel()
    sync = AdapterSync(server, "base", tmp_path / "served", every=4)
    state = SimpleNamespace(global_step=6, is_world_process_zero=True)  # checkpoint-6, between pushes 4 and 8
    sync.on_train_begin(None, state, None, model=model)
    assert server.events == [("load", "policy-step-6")]  # the checkpoint's weights, under their own step
    assert [sync.name_for(s) for s in (6, 7)] == ["policy-step-6", "policy-step-6"]
    for step in (7, 8, 9):
        state.global_step = step
        sync.on_step_end(None, state, None, model=model)
    assert server.events[1:] == [("load", "policy-step-8"), ("unload", "policy-step-6")]
    assert sync.name_for(9) == "policy-step-8" and sorted(p.name for p in (tmp_path / "served").iterdir()) == [
        "policy-step-8"
    ]

    # Other training processes push nothing, and name the same adapters.
    other = AdapterSync(FakeAdapterServer(), "base", tmp_path / "other", every=4)
    other.on_train_begin(None, SimpleNamespace(global_step=6, is_world_process_zero=False), None, model=model)
    assert other.server.events == [] and other.name_for(7) == "policy-step-6"
    # A fresh run starts on the base model.
    fresh = AdapterSync(FakeAdapterServer(), "base", tmp_path / "fresh", every=4)
    fresh.on_train_begin(None, SimpleNamespace(global_step=0, is_world_process_zero=True), None, model=model)
    assert fresh.server.events == [] and fresh.name_for(3) == "base"


def test_a_resumed_server_run_loads_the_checkpoint_adapter_before_its_first_rollout(tmp_path, tiny_model_dir):
    with FakeVllm() as server:
        cfg = tiny_train_config(
            tmp_path, tiny_model_dir, policy="server", policy_url=server.url, served_model_name=server.base_name
        )
        train(replace(cfg, max_steps=2))
        assert [e for e in server.events if e[0] != "chat"] == [
            ("load", "policy-step-1"),
            ("load", "policy-step-2"),
            ("unload", "policy-step-1"),
        ]
        output_dir = Path(cfg.output_dir)
        assert last_checkpoint(output_dir) == str(output_dir / "checkpoint-2")
        trained = lora_weights(output_dir / "checkpoint-2")
        assert any(w.abs().sum() > 0 for n, w in trained.items() if "lora_B" in n)  # B starts at zero: trained

        # A restart against the server that outlived the crash, which still holds policy-step-2 (vLLM refuses to
        # load a name twice): the adapter is replaced by the checkpoint's, then rollouts ask for it.
        seen = len(server.events)
        train(replace(cfg, max_steps=3))
        assert server.events[seen : seen + 2] == [("unload", "policy-step-2"), ("load", "policy-step-2")]
        assert same_weights(server.loads[-2], ("policy-step-2", trained))
        chats = [name for kind, name in server.events[seen + 2 : -2] if kind == "chat"]
        assert len(chats) == cfg.prompts_per_step * cfg.num_generations and set(chats) == {"policy-step-2"}
        assert server.events[-2:] == [("load", "policy-step-3"), ("unload", "policy-step-2")]

    # A restart against a fresh server, which has never seen policy-step-3: loaded before the first rollout.
    with FakeVllm() as fresh:
        train(replace(cfg, policy_url=fresh.url, max_steps=4))
        assert fresh.events[0] == ("load", "policy-step-3")
        assert same_weights(fresh.loads[0], ("policy-step-3", lora_weights(output_dir / "checkpoint-3")))
        assert set(fresh.chats()) == {"policy-step-3"} and len(fresh.chats()) == 4
        assert fresh.events[-2:] == [("load", "policy-step-4"), ("unload", "policy-step-3")]
        assert list(fresh.loaded) == ["policy-step-4"]


def same_weights(a: tuple[str, dict[str, torch.Tensor]], b: tuple[str, dict[str, torch.Tensor]]) -> bool:
    return a[0] == b[0] and a[1].keys() == b[1].keys() and all(torch.equal(a[1][k], b[1][k]) for k in a[1])


def test_a_checkpoint_cut_short_by_a_kill_is_passed_over_and_its_log_lines_dropped(tmp_path):
    from types import SimpleNamespace

    from rl.train import JsonlLogger

    for step, complete in ((2, True), (4, True), (6, False)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-4")
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps({"step": s, "loss": s}) + "\n" for s in range(1, 7)) + '{"step": 7, "lo')
    JsonlLogger(log).on_train_begin(None, SimpleNamespace(global_step=4), None)
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2, 3, 4]
    assert last_checkpoint(tmp_path / "none") is None
