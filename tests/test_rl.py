"""GRPO on graph rollouts: the data, the rollout_func contract, real training steps, replay, resume, vLLM sync."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llmi_graph import Config
from llmi_graph.policy import EmbeddedPolicy, ModelPolicy
from rl.config import TrainConfig
from rl.data import HELDOUT_FILE, TRAIN_FILE, RowIndex, load_rows
from rl.rewards import RewardSuite
from rl.rollout import GraphRollout
from rl.train import last_checkpoint, train

ROOT = Path(__file__).resolve().parents[1]
TOOL_WORDS = re.compile(r"\b(diffusion|search engine|matplotlib|python code|imgen|edit tool|code tool)\b", re.I)


# --- the starter set --------------------------------------------------------------------------------


def test_starter_set_covers_every_tool_and_convention():
    train_rows, heldout = load_rows(TRAIN_FILE), load_rows(HELDOUT_FILE)
    assert (len(train_rows), len(heldout)) == (224, 59)
    assert not {r.prompt for r in train_rows} & {r.prompt for r in heldout}
    for rows in (train_rows, heldout):
        assert {t for r in rows for t in r.tools} == {"search", "diffusion", "code", "edit"}
        assert {r.image_num for r in rows} >= {-1, 0, 99, 1, 2}
        assert any(r.images for r in rows)
    assert not [r.prompt for r in train_rows + heldout if TOOL_WORDS.search(r.prompt)]  # content, not tools


def test_rows_are_checked(tmp_path):
    bad = tmp_path / "bad.jsonl"
    cases = {
        '{"prompt": "x", "image_num": -4}': "image_num must be",
        '{"prompt": "x", "tools": ["paint"]}': "unknown tools",
        '{"prompt": "x", "images": ["nope.png"]}': "input image nope.png not found",
        '{"prompt": "   "}': "empty prompt",
    }
    for line, reason in cases.items():
        bad.write_text(line + "\n")
        with pytest.raises(ValueError, match=reason):
            load_rows(bad)
    messages = tmp_path / "chat.jsonl"
    messages.write_text(json.dumps({"prompt": [{"role": "user", "content": "Plot a parabola"}], "image_num": 1}) + "\n")
    assert load_rows(messages)[0].prompt == "Plot a parabola"


# --- the rollout function ---------------------------------------------------------------------------


class RecordingPolicy(ModelPolicy):
    """The real embedded model, recording every completion it samples."""

    def __init__(self, base: EmbeddedPolicy):
        model, tokenizer = base.load()
        super().__init__(model, tokenizer, name="recording")
        self.sampled: list[list[int]] = []

    def generate_batch(self, prompts, sampling, callbacks=()):
        outputs = super().generate_batch(prompts, sampling, callbacks)
        self.sampled += [o.completion_token_ids for o in outputs]
        return outputs


@pytest.fixture(scope="module")
def embedded(embedded_model_dir) -> EmbeddedPolicy:
    return EmbeddedPolicy(embedded_model_dir)


def test_rollout_func_contract(embedded, tmp_path):
    rows = load_rows(TRAIN_FILE)[:3]
    policy = RecordingPolicy(embedded)
    cfg = Config(max_tokens=12, temperature=1.0, top_p=1.0, image_dir=str(tmp_path / "img"), tool_cache=True)
    suite = RewardSuite()
    rollout = GraphRollout(RowIndex(rows), cfg, policy_factory=lambda trainer: policy, scorer=suite.score)
    prompts = [r.prompt for r in rows for _ in range(2)]  # TRL repeats each prompt num_generations times
    out = rollout(prompts, trainer=None)
    # Each rollout was scored as it finished, in the rollout's event loop; the reward functions, in another loop,
    # find the results ready and compute nothing again.
    ready = {rid: suite._results[rid].result() for rid in out["rollout_id"]}

    async def score_again() -> list:
        return [
            await suite.score(rid, st, list(r.tools))
            for rid, st, r in zip(
                out["rollout_id"], out["llmi_state"], [row for row in rows for _ in range(2)], strict=True
            )
        ]

    assert [id(r) for r in asyncio.run(score_again())] == [id(ready[rid]) for rid in out["rollout_id"]]
    assert set(out) == {"prompt_ids", "completion_ids", "logprobs", "llmi_state", "rollout_id"}
    assert all(len(v) == len(prompts) for v in out.values())
    assert [s["prompt"] for s in out["llmi_state"]] == prompts  # order kept
    assert sorted(map(tuple, out["completion_ids"])) == sorted(map(tuple, policy.sampled))  # ids as sampled
    for ids, logprobs, state in zip(out["completion_ids"], out["logprobs"], out["llmi_state"], strict=True):
        assert 0 < len(ids) <= 12 and len(logprobs) == len(ids) and all(lp <= 0 for lp in logprobs)
        assert state["policy"]["completion_token_ids"] == ids
    tokenizer = embedded.load()[1]
    first = out["llmi_state"][0]
    assert tokenizer.decode(out["prompt_ids"][0]).endswith(f"{rows[0].prompt}<|im_end|>\n<|im_start|>assistant\n")
    assert first["image_num"] == rows[0].image_num
    assert len(set(out["rollout_id"])) == len(prompts)


def test_a_shared_prompt_is_prefilled_once_with_the_same_samples(embedded, monkeypatch):
    from llmi_graph.policy import Sampling

    ids = embedded.prompt_ids([{"role": "user", "content": "Plot the growth of a savings account."}])
    sampling = Sampling(max_tokens=10, temperature=1.0, top_p=1.0, seed=7)
    prefills = []
    real = ModelPolicy._shared_prefix
    monkeypatch.setattr(ModelPolicy, "_shared_prefix", staticmethod(lambda *a: prefills.append(1) or real(*a)))
    shared = embedded.generate_batch([ids] * 3, sampling)
    monkeypatch.setattr(ModelPolicy, "_shared_prefix", staticmethod(lambda *a: None))  # the plain batched path
    plain = embedded.generate_batch([ids] * 3, sampling)
    assert prefills == [1]
    for a, b in zip(shared, plain, strict=True):
        assert a.completion_token_ids == b.completion_token_ids
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-3)


# --- real GRPO steps --------------------------------------------------------------------------------


def tiny_config(tmp_path: Path, **overrides) -> TrainConfig:
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        "".join(
            json.dumps(r) + "\n"
            for r in [
                {"prompt": "Compare the sales of apples and pears.", "image_num": 1, "tools": ["code"]},
                {"prompt": "Plot the growth of a savings account.", "image_num": 1, "tools": ["code"]},
            ]
        )
    )
    values = dict(
        dataset=str(rows),
        output_dir=str(tmp_path / "out"),
        num_generations=2,
        prompts_per_step=2,
        micro_batch_size=2,
        max_completion_length=32,  # room for a tag opener after the first sentence: rewards that differ
        learning_rate=5e-3,
        lr_scheduler_type="constant",
        format_weight=1.0,
        max_steps=2,
        save_steps=1,
        report_to="none",
        temperature=1.0,
    )
    values.update(overrides)
    return TrainConfig(**values)


def assert_samples_kept(output_dir: Path) -> None:
    """Every sample of tiny_config's two steps is kept for reading: prompt, draft, each reward and the advantage."""
    samples = [json.loads(line) for line in open(output_dir / "samples.jsonl")]
    assert [s["step"] for s in samples] == [1] * 4 + [2] * 4
    assert {s["prompt"] for s in samples} <= {
        "Compare the sales of apples and pears.",
        "Plot the growth of a savings account.",
    }
    assert all(isinstance(s["completion"], str) and s["completion"] for s in samples)
    assert all({"hybrid", "format"} <= set(s["rewards"]) and isinstance(s["advantage"], float) for s in samples)


def lora_weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "adapter_model.safetensors"))


@pytest.mark.slow
def test_two_grpo_steps_change_the_adapter_and_resume_continues(tmp_path):
    cfg = tiny_config(tmp_path)
    adapter = train(cfg)
    weights = lora_weights(adapter)
    lora_b = [w for name, w in weights.items() if "lora_B" in name]
    assert lora_b and any(w.abs().sum() > 0 for w in lora_b)  # B starts at zero: the steps moved it
    log = [json.loads(line) for line in open(Path(cfg.output_dir) / "log.jsonl")]
    assert any("rewards/format/mean" in entry for entry in log) and any("rewards/hybrid/mean" in entry for entry in log)
    assert last_checkpoint(Path(cfg.output_dir)).endswith("checkpoint-2")
    assert_samples_kept(Path(cfg.output_dir))

    # A crash after step 2: the same command with more steps resumes from checkpoint-2 and loses nothing.
    more = tiny_config(tmp_path, max_steps=3)
    train(more)
    state = json.loads((Path(cfg.output_dir) / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    steps = [e["step"] for e in (json.loads(line) for line in open(Path(cfg.output_dir) / "log.jsonl")) if "loss" in e]
    assert steps == [1, 2, 3]
    # Step 3 moved the adapter. Not one named tensor: lora_A gets no gradient while lora_B is zero, and a group whose
    # rewards tie gives no gradient at all; the restored Adam moments still move the weights step 1 or 2 moved.
    resumed = lora_weights(Path(cfg.output_dir) / "adapter")
    assert any(not torch.equal(resumed[name], w) for name, w in weights.items())

    # The saved adapter is what `llmi run --adapter` serves.
    out = tmp_path / "report"
    command = [sys.executable, "-m", "llmi", "run", "Plot a parabola", "--adapter", str(adapter)]
    command += ["--max-tokens", "8", "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    trajectory = json.loads((out / "trajectory.json").read_text())
    assert trajectory["policy"]["model"].endswith("+adapter")


@pytest.mark.slow
def test_collect_then_replay(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        json.dumps({"prompt": "Plot the growth of a savings account.", "image_num": 1, "tools": ["code"]})
        + "\n"
        + json.dumps({"prompt": "Write a haiku about rain.", "image_num": -1})
        + "\n"
    )
    recorded = tmp_path / "rollouts.jsonl"
    command = [
        sys.executable,
        "-m",
        "rl.collect",
        "--out",
        str(recorded),
        "--dataset",
        str(rows),
        "--group",
        "2",
        "--max-tokens",
        "12",
    ]
    first = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert first.returncode == 0, first.stderr
    records = [json.loads(line) for line in recorded.read_text().splitlines()]
    assert len(records) == 4 and {r["prompt"] for r in records} == {
        "Plot the growth of a savings account.",
        "Write a haiku about rain.",
    }
    for r in records:
        assert len(r["logprobs"]) == len(r["completion_ids"]) and set(r["rewards"]) >= {"hybrid", "format"}
    again = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert "recorded 0 group(s)" in again.stdout and len(recorded.read_text().splitlines()) == 4  # resumed, no redo

    # Replay trains on the recorded scores, never re-scoring. Twelve-token drafts often tie within a group (no
    # advantage, no update), so the first sample of each group is marked the better one.
    seen: set[str] = set()
    for r in records:
        if r["group"] not in seen:
            seen.add(r["group"])
            r["rewards"]["hybrid"] = (r["rewards"]["hybrid"] or 0.0) + 1.0
    recorded.write_text("".join(json.dumps(r) + "\n" for r in records))
    recorded.write_text(recorded.read_text() + '{"group": "torn", "prompt": "x", "prompt_i')  # a crash mid-write
    cfg = tiny_config(tmp_path, replay=str(recorded), max_steps=2, output_dir=str(tmp_path / "replay"))
    adapter = train(cfg)
    assert any(w.abs().sum() > 0 for n, w in lora_weights(adapter).items() if "lora_B" in n)


@pytest.mark.slow
def test_rollouts_through_vllm_with_the_adapter_hot_loaded(policy_server, tmp_path):
    cfg = tiny_config(
        tmp_path,
        policy="server",
        policy_url=policy_server.url,
        served_model_name="smollm2",
        max_steps=2,
        save_steps=10,
        sync_every=1,
    )
    train(cfg)
    models = policy_server.models()
    assert "policy-step-2" in models and "policy-step-1" not in models  # swapped in by name, the old one unloaded
    import httpx

    reply = httpx.post(
        f"{policy_server.url}/chat/completions",
        timeout=120,
        json={"model": "policy-step-2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
    )
    assert reply.status_code == 200
    log = [json.loads(line) for line in open(Path(cfg.output_dir) / "log.jsonl")]
    assert any(e.get("time/generation_s", 0) > 0 for e in log)

    # A restart: a fresh server knows no adapter (unloading stands in for its ~2.5 min start), and the resumed
    # run loads checkpoint-2's under its name before its first rollout asks for it.
    assert last_checkpoint(Path(cfg.output_dir)).endswith("checkpoint-2")
    assert_samples_kept(Path(cfg.output_dir))
    policy_server.unload_lora_adapter("policy-step-2")
    train(replace(cfg, max_steps=3))
    models = policy_server.models()
    assert "policy-step-3" in models and "policy-step-2" not in models
    steps = [e["step"] for e in (json.loads(line) for line in open(Path(cfg.output_dir) / "log.jsonl")) if "loss" in e]
    assert steps == [1, 2, 3]
