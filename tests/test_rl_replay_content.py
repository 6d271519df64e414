"""Offline replay with the online rewards: rl.collect records the success-only format and the content rewards,
and replay pays them as the online suite (rl/rewards.py) would, switches and step included; files recorded before
those scores existed still replay.

The policy endpoint is `FakeScriptedPolicy`, a fake of a vLLM chat server over real HTTP that answers each prompt
with its scripted drafts in turn; the code tags run in the real local code sandbox.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from judges.rule import format_score, opener_likeness
from llmi_graph.state import ImageResult, State
from llmi_graph.tags import parse_tags
from rl.collect import main as collect_main
from rl.content import relevance_scores, worked_example_texts
from rl.replay import REWARD_NAMES, ReplayRollout, load_records, replay_dataset, replay_reward_functions
from rl.rewards import RewardSuite
from tests.fakes import LoopbackApp

SALES = "Plot the weekly sales of 120, 135, 160 and 210 units in Germany."
RAIN = "Chart the rainfall in Oslo over a year."
ALWAYS = ["hybrid", "image_num", "llm_judge", "mllm_judge", "format"]  # the functions every suite returns


def tag(source: str, description: str, **params: Any) -> str:
    return f"<imgen>{ ({'source': source, 'description': description, 'params': params})!r}</imgen>"


class FakeScriptedPolicy:
    """A fake vLLM chat server on loopback: each prompt (found in the last message) gets its drafts in turn, with
    token ids, logprobs and the same prompt ids for the same messages, as vLLM gives them."""

    def __init__(self, drafts: dict[str, list[str]]):
        self.drafts = drafts
        self.turn: dict[str, int] = dict.fromkeys(drafts, 0)
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> JSONResponse:
            body = await request.json()
            last = json.dumps(body["messages"][-1])
            prompt = next(p for p in self.drafts if p in last)
            text = self.drafts[prompt][self.turn[prompt] % len(self.drafts[prompt])]
            self.turn[prompt] += 1
            digest = hashlib.sha256(json.dumps(body["messages"], sort_keys=True).encode()).digest()
            logprobs = [{"token": ch, "logprob": -0.5, "bytes": None, "top_logprobs": []} for ch in text]
            return JSONResponse(
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body["model"],
                    "prompt_token_ids": [1, *(100 + b for b in digest[:8])],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                            "token_ids": [200 + ord(ch) for ch in text],
                            "logprobs": {"content": logprobs},
                        }
                    ],
                    "usage": {"prompt_tokens": 9, "completion_tokens": len(text), "total_tokens": 9 + len(text)},
                }
            )

        self._app = LoopbackApp(app)

    @property
    def url(self) -> str:
        return f"{self._app.url}/v1"

    def __enter__(self) -> FakeScriptedPolicy:
        self._app.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._app.__exit__(*exc)


def made_state(prompt: str, draft: str, ok: tuple[int, ...] = (), image_num: int = 1) -> dict[str, Any]:
    """A finished run of `draft`: the tools of the slots in `ok` made an image, the others failed."""
    calls = parse_tags(draft).calls
    results = [
        ImageResult(index=c.index, source=c.source, status="ok" if c.index in ok else "failed", error=None)
        for c in calls
        if c.valid
    ]
    return State(prompt=prompt, image_num=image_num, draft=draft, calls=calls, results=results).model_dump(mode="json")


def call_like_trl(func: Any, recorded: list[dict[str, Any]], step: int | None) -> list[float | None]:
    """Call a replay reward function with what TRL 1.16 passes it (the rollout's extra key included)."""
    kwargs: dict[str, Any] = dict(
        prompts=["p"] * len(recorded),
        completions=["c"] * len(recorded),
        completion_ids=[[1]] * len(recorded),
        recorded_rewards=recorded,
        log_extra=lambda *a, **k: None,
        log_metric=lambda *a, **k: None,
    )
    if step is not None:
        kwargs["trainer_state"] = SimpleNamespace(global_step=step)
    return func(**kwargs)


def by_name(funcs: list[Any], weights: list[float]) -> dict[str, tuple[Any, float]]:
    return {f.__name__: (f, w) for f, w in zip(funcs, weights, strict=True)}


# --- the collector records them ---------------------------------------------------------------------------------


def test_collected_records_carry_success_only_format_and_content_rewards(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMI_IMAGE_DIR", str(tmp_path / "images"))
    example_prompt, example_texts = worked_example_texts()[0]
    copied_text = max(example_texts, key=len)  # a worked example's text, written for another prompt
    # SALES: one chart that works (plots 120, 135 and 'Germany' of the prompt's 4 numbers and 1 name) and one that
    # fails (plt.line does not exist: its 160 and 210 do not count), and a text-only answer.
    charts = tag("code", "Weekly sales in Germany", code="plt.plot([120, 135])\nplt.title('Germany')") + tag(
        "code", "Later weeks", code="plt.line([160, 210])"
    )
    text_only = "No chart: sales rose every week."
    # RAIN (collected after SALES): one draft copies a worked example, one repeats the SALES chart's description.
    copied = tag("code", copied_text, code="plt.plot([3, 1, 2])")
    repeated = tag("code", "Weekly sales in Germany", code="plt.plot([5, 6])")
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        json.dumps({"prompt": SALES, "image_num": 2, "tools": ["code"]})
        + "\n"
        + json.dumps({"prompt": RAIN, "image_num": 1, "tools": ["code"]})
        + "\n"
    )
    out = tmp_path / "rollouts.jsonl"
    with FakeScriptedPolicy({SALES: [charts, text_only], RAIN: [copied, repeated]}) as server:
        argv = ["--out", str(out), "--dataset", str(rows), "--policy-url", server.url, "--model", "fake-base"]
        collect_main([*argv, "--group", "2", "--max-tokens", "64", "--concurrency", "1"])
    records = [json.loads(line) for line in out.read_text().splitlines()]
    by_draft = {r["draft"]: r["rewards"] for r in records}
    assert len(records) == 4 and set(by_draft) == {charts, text_only, copied, repeated}
    assert [r["prompt"] for r in records] == [SALES, SALES, RAIN, RAIN]  # --concurrency 1: in row order
    assert all(set(rewards) == set(REWARD_NAMES) for rewards in by_draft.values())

    # format pays both valid tags; format_success only the one whose tool made an image.
    assert by_draft[charts]["format"] == 1.0 and by_draft[charts]["format_success"] == 0.5
    no_tag = pytest.approx(0.1 * opener_likeness(text_only))
    assert by_draft[text_only]["format"] == no_tag and by_draft[text_only]["format_success"] == no_tag
    assert by_draft[copied]["format_success"] == by_draft[repeated]["format_success"] == 1.0
    # chart_numbers: 3 of the prompt's 5 items in working code; 0 for no chart; None for a prompt without numbers.
    assert by_draft[charts]["chart_numbers"] == pytest.approx(3 / 5)
    assert by_draft[text_only]["chart_numbers"] == 0.0
    assert by_draft[copied]["chart_numbers"] is None and by_draft[repeated]["chart_numbers"] is None
    # relevance: the real MiniLM score of each draft's tags; None without a valid tag.
    expected = relevance_scores(
        [made_state(SALES, charts, image_num=2), made_state(RAIN, copied), made_state(RAIN, repeated)]
    )
    got = [by_draft[charts]["relevance"], by_draft[copied]["relevance"], by_draft[repeated]["relevance"]]
    assert got == pytest.approx(expected, abs=1e-5) and all(0.0 < g <= 1.0 for g in got)
    assert by_draft[text_only]["relevance"] is None
    # repetition: the copied worked example pays from the start; repeating the SALES description pays only because
    # SALES was collected earlier in this run (the SALES chart itself, scored first, paid nothing).
    assert by_draft[copied]["repetition"] == -1.0 and by_draft[repeated]["repetition"] == -1.0
    assert by_draft[charts]["repetition"] == 0.0 and by_draft[text_only]["repetition"] == 0.0
    assert example_prompt not in (SALES, RAIN)

    # Replayed with every reward on, the functions hand back what was recorded, weighted as set.
    replayed = load_records(out)
    batch = ReplayRollout(replayed, 2)([p for p in replay_dataset(replayed)["prompt"] for _ in range(2)], None)
    funcs = by_name(
        *replay_reward_functions(
            format_weight=0.5,
            relevance_weight=0.25,
            chart_numbers_weight=1.0,
            repetition_weight=2.0,
            format_needs_success_after_steps=1,
        )
    )
    assert {n: w for n, (_, w) in funcs.items()} == {
        "hybrid": 1.0,
        "image_num": 0.0,
        "llm_judge": 0.0,
        "mllm_judge": 0.0,
        "format": 0.5,
        "relevance": 0.25,
        "chart_numbers": 1.0,
        "repetition": 2.0,
    }
    recorded = batch["recorded_rewards"]
    for name in ("relevance", "chart_numbers", "repetition"):
        assert call_like_trl(funcs[name][0], recorded, step=0) == [r[name] for r in recorded]
    assert call_like_trl(funcs["format"][0], recorded, step=0) == [r["format"] for r in recorded]
    assert call_like_trl(funcs["format"][0], recorded, step=1) == [r["format_success"] for r in recorded]


# --- replay pays what the online suite pays ---------------------------------------------------------------------


def recorded_format(state: dict[str, Any], hybrid: float | None = 0.5) -> dict[str, Any]:
    """The scores rl.collect records for format: every tag's credit, and only working tags' credit."""
    ok = {r["index"] for r in state["results"] if r["status"] == "ok"}
    return {
        "hybrid": hybrid,
        "format": format_score(state["draft"], state["image_num"]),
        "format_success": format_score(state["draft"], state["image_num"], succeeded=ok, failed_credit=0.0),
    }


@pytest.mark.parametrize("credit", [0.0, 0.25, 1.0])
def test_replayed_format_switches_at_the_step_as_online_format_does(credit):
    two = tag("code", "Sales", code="plt.plot([120])") + tag("code", "More", code="plt.line([135])")
    states = [
        made_state(SALES, tag("code", "Sales", code="plt.line([120])")),  # its tool failed
        made_state(SALES, tag("code", "Sales", code="plt.plot([120])"), ok=(0,)),
        made_state(SALES, two, ok=(0,), image_num=2),  # one of two worked
        made_state(SALES, "No tag at all."),
    ]
    recorded = [recorded_format(s) for s in states]
    online = RewardSuite(format_needs_success_after_steps=2, format_warmup_failed_credit=credit)
    fmt = by_name(*replay_reward_functions(format_needs_success_after_steps=2, format_warmup_failed_credit=credit))[
        "format"
    ][0]
    for step in range(4):
        replayed = call_like_trl(fmt, recorded, step)
        assert replayed == pytest.approx([online.format_reward(s, step) for s in states], abs=1e-12), step
    assert call_like_trl(fmt, recorded, 1)[0] == credit and call_like_trl(fmt, recorded, 2)[0] == 0.0
    # Without TRL's trainer_state the step is the number of batches the function has scored.
    counted = by_name(*replay_reward_functions(format_needs_success_after_steps=1))["format"][0]
    assert [call_like_trl(counted, recorded[:1], None) for _ in range(2)] == [[1.0], [0.0]]
    # No switch: every tag earns its credit at any step; an unscored sample (hybrid None) gets None.
    never = by_name(*replay_reward_functions())["format"][0]
    assert call_like_trl(never, [*recorded[:1], recorded_format(states[0], hybrid=None)], 10_000) == [1.0, None]


@pytest.mark.parametrize("credit", [0.0, 0.5])
def test_replayed_relevance_switches_at_the_step_as_online_relevance_does(credit):
    import asyncio

    from rl.collect import content_rewards
    from rl.content import RepetitionMemory

    two = tag("code", "Weekly sales", code="plt.plot([120])") + tag("code", "Sales in Germany", code="plt.line([1])")
    states = [
        made_state(SALES, tag("code", SALES, code="plt.line([120])")),  # pastes the prompt; its tool failed
        made_state(SALES, tag("code", "Weekly sales", code="plt.plot([120, 135])"), ok=(0,)),
        made_state(SALES, two, ok=(0,), image_num=2),  # one of two worked
        made_state(SALES, "No tag at all."),
    ]
    scores = asyncio.run(content_rewards(states, [f"r{k}" for k in range(4)], ["code"], RepetitionMemory()))
    recorded = [{"hybrid": 0.5, **score} for score in scores]
    assert recorded[0]["relevance"] > 0.5 and recorded[0]["relevance_success"] == 0.0
    assert recorded[3]["relevance"] is None and recorded[3]["relevance_success"] is None
    online = by_name(*RewardSuite(relevance_weight=1.0, format_needs_success_after_steps=2,
                                  format_warmup_failed_credit=credit).functions())["relevance"][0]  # fmt: skip
    replayed = by_name(*replay_reward_functions(relevance_weight=1.0, format_needs_success_after_steps=2,
                                                format_warmup_failed_credit=credit))["relevance"][0]  # fmt: skip
    for step in range(4):
        want = asyncio.run(online_scores(online, states, step))
        assert call_like_trl(replayed, recorded, step) == pytest.approx(want, abs=1e-5), step
    assert call_like_trl(replayed, recorded, 3)[0] == 0.0


async def online_scores(func: Any, states: list[dict[str, Any]], step: int) -> list[float | None]:
    """An online reward function called as TRL 1.16 calls it."""
    return await func(
        prompts=[s["prompt"] for s in states],
        completions=[s["draft"] for s in states],
        llmi_state=states,
        rollout_id=[f"online-{step}-{k}" for k in range(len(states))],
        tools=[["code"]] * len(states),
        trainer_state=SimpleNamespace(global_step=step),
    )


def test_each_weight_switches_its_reward_as_online():
    plain_funcs, plain_weights = replay_reward_functions()
    assert [f.__name__ for f in plain_funcs] == ALWAYS
    assert plain_weights == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert by_name(*replay_reward_functions(format_weight=0.3))["format"][1] == 0.3
    recorded = [{"hybrid": 0.5, "relevance": 0.7, "chart_numbers": 0.4, "repetition": -0.6}, {"hybrid": None}]
    for name in ("relevance", "chart_numbers", "repetition"):
        for weight in (0.0, 2.0):
            funcs, weights = replay_reward_functions(**{f"{name}_weight": weight})
            online_funcs, online_weights = RewardSuite(**{f"{name}_weight": weight}).functions()
            assert [f.__name__ for f in funcs] == [f.__name__ for f in online_funcs] == [*ALWAYS, name]
            assert weights == online_weights == [*plain_weights, weight]
            assert call_like_trl(funcs[-1], recorded, 0) == [recorded[0][name], None]
    every = replay_reward_functions(relevance_weight=1.0, chart_numbers_weight=0.5, repetition_weight=0.0)
    online = RewardSuite(relevance_weight=1.0, chart_numbers_weight=0.5, repetition_weight=0.0).functions()
    assert [f.__name__ for f in every[0]] == [f.__name__ for f in online[0]] and every[1] == online[1]
    with pytest.raises(ValueError, match="positive weight"):
        replay_reward_functions(repetition_weight=-1.0)
    with pytest.raises(ValueError, match="format_warmup_failed_credit"):
        replay_reward_functions(format_warmup_failed_credit=1.5)


# --- files recorded before these scores existed -----------------------------------------------------------------


def test_records_without_the_new_scores_replay_with_none_for_them(tmp_path, caplog):
    old = tmp_path / "old.jsonl"
    lines = []
    for group, prompt, formats in (("a", "Plot rainfall.", (1.0, 0.4)), ("b", "Plot sales.", (0.2, 0.0))):
        for k, fmt in enumerate(formats):
            rewards = {"hybrid": 0.5 + k, "image_num": 1.0, "llm_judge": None, "mllm_judge": None, "format": fmt}
            lines.append(
                {
                    "group": group,
                    "attempt": f"{group}1",
                    "sample": k,
                    "group_size": 2,
                    "prompt": prompt,
                    "prompt_ids": [1, 2],
                    "completion_ids": [3, 4],
                    "logprobs": [-0.5, -0.5],
                    "rewards": rewards,
                    "policy_model": "old",
                }
            )
    old.write_text("".join(json.dumps(line) + "\n" for line in lines))
    records = load_records(old)
    batch = ReplayRollout(records, 2)([p for p in replay_dataset(records)["prompt"] for _ in range(2)], None)
    recorded = batch["recorded_rewards"]
    everything = dict(relevance_weight=1.0, chart_numbers_weight=1.0, repetition_weight=1.0)
    funcs = by_name(*replay_reward_functions(format_weight=1.0, format_needs_success_after_steps=2, **everything))
    assert call_like_trl(funcs["hybrid"][0], recorded, 0) == [0.5, 1.5, 0.5, 1.5]
    for name in ("relevance", "chart_numbers", "repetition"):
        assert call_like_trl(funcs[name][0], recorded, 0) == [None] * 4
    caplog.set_level(logging.WARNING, logger="rl.replay")
    # The warm-up pays every tag its credit: the recorded format is exact. Past it, format_success is needed.
    assert call_like_trl(funcs["format"][0], recorded, 1) == [1.0, 0.4, 0.2, 0.0]
    assert not caplog.records
    assert call_like_trl(funcs["format"][0], recorded, 2) == [None] * 4
    assert call_like_trl(funcs["format"][0], recorded, 3) == [None] * 4
    assert len([r for r in caplog.records if "format_success" in r.getMessage()]) == 1  # warned once
    # A warm-up that pays failed tags less cannot be computed either; without the switch, format is as recorded.
    partial = by_name(*replay_reward_functions(format_needs_success_after_steps=2, format_warmup_failed_credit=0.5))
    assert call_like_trl(partial["format"][0], recorded, 0) == [None] * 4
    plain = by_name(*replay_reward_functions())
    assert call_like_trl(plain["format"][0], recorded, 5) == [1.0, 0.4, 0.2, 0.0]


# --- rl/train.py --replay trains on them ------------------------------------------------------------------------


@pytest.fixture
def tiny_model_dir(embedded_model_dir, tmp_path) -> str:
    """A tiny random Llama with SmolLM2's real tokenizer: a GRPO step takes well under a second."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

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
    folder = tmp_path / "tiny-llama"
    LlamaForCausalLM(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(embedded_model_dir).save_pretrained(folder)
    return str(folder)


@pytest.mark.slow
def test_replay_training_pays_the_configured_rewards_and_switches_format_at_its_step(tmp_path, tiny_model_dir):
    from rl.config import TrainConfig
    from rl.train import train

    recorded = tmp_path / "rollouts.jsonl"
    lines = []
    for group, prompt in (("a", "Plot rainfall."), ("b", "Plot sales.")):
        for k in range(2):
            rewards = {"hybrid": float(k), "image_num": 1.0, "llm_judge": None, "mllm_judge": None}
            rewards |= {"format": 1.0, "format_success": 0.0, "relevance": 0.25 + 0.5 * k, "chart_numbers": 0.5}
            rewards["relevance_success"] = 0.1 + 0.2 * k  # part of its relevance came from failing tags
            rewards["repetition"] = -1.0 * k
            lines.append(
                {
                    "group": group,
                    "attempt": f"{group}1",
                    "sample": k,
                    "group_size": 2,
                    "prompt": prompt,
                    "prompt_ids": [1, 300 + ord(group)],
                    "completion_ids": [400 + k, 500 + k],
                    "logprobs": [-1.0, -1.0],
                    "rewards": rewards,
                    "policy_model": "recorded",
                }
            )
    recorded.write_text("".join(json.dumps(line) + "\n" for line in lines))
    cfg = TrainConfig(
        model=tiny_model_dir,
        replay=str(recorded),
        output_dir=str(tmp_path / "out"),
        max_steps=2,
        num_generations=2,
        prompts_per_step=2,
        micro_batch_size=2,
        max_completion_length=8,
        save_steps=10,
        report_to="none",
        lora_r=4,
        lora_alpha=8,
        format_weight=1.0,
        format_needs_success_after_steps=1,
        relevance_weight=0.5,
        repetition_weight=1.0,
    )
    train(cfg)
    log = [json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    steps = {entry["step"]: entry for entry in log if "rewards/format/mean" in entry}
    assert sorted(steps) == [1, 2]
    assert steps[1]["rewards/format/mean"] == 1.0 and steps[2]["rewards/format/mean"] == 0.0  # success-only from 1
    assert steps[1]["rewards/relevance/mean"] == pytest.approx(0.5)  # relevance switches with format
    assert steps[2]["rewards/relevance/mean"] == pytest.approx(0.2)
    for entry in steps.values():
        assert entry["rewards/repetition/mean"] == pytest.approx(-0.5)
        assert not any(key.startswith("rewards/chart_numbers") for key in entry)  # weight None: not a reward
