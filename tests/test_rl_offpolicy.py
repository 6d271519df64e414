"""Off-policy correction: rollouts carry the logprobs they were sampled with; the loss weights by pi_old/pi_sampler.

The sampler tests use the embedded SmolLM2 (a real, peaked distribution that top-p truly cuts). One trainer on a
tiny random model (no optimizer step) serves the trainer tests; each swaps in its rollout and settings.
"""

from __future__ import annotations

import math
import sys

import pytest
import torch

from llmi_graph.policy import EmbeddedPolicy, OpenAIPolicy, Sampling
from rl.replay import ReplayRollout
from rl.rollout import trainer_policy
from rl.trainer import LlmiGRPOTrainer, fold_into_advantages, importance_weights, off_policy_args

PROMPTS = ("Plot the growth of a savings account.", "Write a haiku about rain.")
TEMPERATURE = 0.8
GROUP = 4


def top_p_logprobs(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Log-softmax over the smallest set of tokens, most likely first, whose mass reaches top_p (written here, not
    taken from transformers, so the test checks generate's processing independently)."""
    probs = logits.softmax(dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    keep_sorted = (sorted_probs.cumsum(dim=-1) - sorted_probs) < top_p  # the mass before a token is below top_p
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    return logits.masked_fill(~keep, -math.inf).log_softmax(dim=-1)


@pytest.fixture(scope="module")
def embedded(embedded_model_dir) -> EmbeddedPolicy:
    return EmbeddedPolicy(embedded_model_dir)


def reference_logprobs(
    model, prompt: list[int], completion: list[int], temperature: float, top_p: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """A forward pass over prompt + completion: each completion token's logprob under the tempered, top-p
    renormalised distribution, and under the raw one."""
    tokens = torch.tensor(completion)[:, None]
    with torch.no_grad():
        logits = model(torch.tensor([prompt + completion])).logits[0].float()
    logits = logits[len(prompt) - 1 : -1]  # the positions that predicted each completion token
    processed = top_p_logprobs(logits / temperature, top_p).gather(-1, tokens).squeeze(-1)
    return processed, logits.log_softmax(dim=-1).gather(-1, tokens).squeeze(-1)


def test_recorded_logprobs_are_those_of_the_tempered_top_p_distribution(embedded):
    model, _ = embedded.load()
    prompts = [embedded.prompt_ids([{"role": "user", "content": p}]) for p in PROMPTS]  # two widths: left padding
    outputs = embedded.generate_batch(prompts, Sampling(max_tokens=16, temperature=TEMPERATURE, top_p=0.9, seed=3))
    raw_gap = []
    for prompt, output in zip(prompts, outputs, strict=True):
        expected, raw = reference_logprobs(model, prompt, output.completion_token_ids, TEMPERATURE, 0.9)
        recorded = torch.tensor(output.logprobs)
        assert len(recorded) == len(output.completion_token_ids) > 0
        assert torch.allclose(recorded, expected, atol=1e-4), (recorded - expected).abs().max()
        raw_gap.append((recorded - raw).abs().max().item())
    assert max(raw_gap) > 0.05  # the untempered logprobs the sampler used to record are measurably different


def test_greedy_logprobs_stay_the_plain_log_softmax(embedded):
    model, _ = embedded.load()
    prompt = embedded.prompt_ids([{"role": "user", "content": PROMPTS[1]}])
    (output,) = embedded.generate_batch([prompt], Sampling(max_tokens=8, temperature=0.0))
    _, raw = reference_logprobs(model, prompt, output.completion_token_ids, 1.0, 1.0)
    assert torch.allclose(torch.tensor(output.logprobs), raw, atol=1e-4)


@pytest.mark.slow
async def test_the_vllm_server_records_the_tempered_top_p_logprobs(policy_server, embedded):
    model, _ = embedded.load()
    sampling = Sampling(max_tokens=16, temperature=TEMPERATURE, top_p=0.9, seed=5)
    output = await OpenAIPolicy(policy_server.url, "smollm2").generate(
        [{"role": "user", "content": PROMPTS[1]}], sampling
    )
    expected, raw = reference_logprobs(model, output.prompt_token_ids, output.completion_token_ids, TEMPERATURE, 0.9)
    recorded = torch.tensor(output.logprobs)
    assert len(recorded) == len(output.completion_token_ids) > 0 and torch.isfinite(recorded).all()
    # vLLM on CPU runs the model in bfloat16, so its logprobs are near, not equal, to ours: on the tokens where
    # temperature and top-p matter, they must sit nearer the processed distribution than the raw one
    tempered = (expected - raw).abs() > 0.1
    assert tempered.any()
    assert (recorded - expected)[tempered].abs().mean() < (recorded - raw)[tempered].abs().mean()


# --- the weights, as functions ----------------------------------------------------------------------


def test_importance_weights_truncate_and_mask_per_token_and_sequence():
    old = torch.tensor([[-1.0, -1.0, -1.0, 0.0], [-2.0, -2.0, -2.0, -2.0]])
    sampling = torch.tensor([[-3.0, -0.5, float("nan"), 0.0], [-2.0, -2.1, -2.0, -9.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0]])
    e = math.e
    weights, outside = importance_weights(old, sampling, mask, "token_truncate", None, 3.0)
    assert torch.allclose(weights, torch.tensor([[3.0, e**-0.5, 1.0, 1.0], [1.0, e**0.1, 1.0, 1.0]]))
    assert outside.tolist() == [[True, False, False, False], [False, False, False, False]]  # e^2 > 3, padding ignored
    weights, _ = importance_weights(old, sampling, mask, "token_mask", 0.7, 3.0)
    assert torch.allclose(weights, torch.tensor([[0.0, 0.0, 1.0, 1.0], [1.0, e**0.1, 1.0, 1.0]]))
    weights, outside = importance_weights(old, sampling, mask, "sequence_truncate", None, 3.0)
    assert weights.shape == (2, 1) and torch.allclose(weights, torch.tensor([[3.0], [e**0.1]]))  # e^1.5 > 3
    weights, _ = importance_weights(old, sampling, mask, "sequence_mask", None, 3.0)
    assert torch.allclose(weights, torch.tensor([[0.0], [e**0.1]]))
    with pytest.raises(ValueError, match="unknown importance sampling mode"):
        importance_weights(old, sampling, mask, "token_clip", None, 3.0)


def test_auto_corrects_only_rollouts_the_trainer_did_not_sample():
    assert off_policy_args("auto", 3.0, None, on_policy=True) == {"vllm_importance_sampling_correction": False}
    assert off_policy_args("auto", 3.0, None, on_policy=False) == {
        "vllm_importance_sampling_correction": True,
        "vllm_importance_sampling_mode": "token_truncate",
        "vllm_importance_sampling_clip_max": 3.0,
        "vllm_importance_sampling_clip_min": None,
    }
    assert (
        off_policy_args("sequence_mask", 2.0, 0.5, on_policy=True)["vllm_importance_sampling_mode"] == "sequence_mask"
    )
    assert off_policy_args("none", 3.0, None, on_policy=False) == {"vllm_importance_sampling_correction": False}


def test_grpo_args_turn_the_correction_on_for_server_and_replay(tmp_path):
    from rl.config import TrainConfig
    from rl.train import grpo_args

    def args(**overrides):
        cfg = TrainConfig(output_dir=str(tmp_path), num_generations=2, prompts_per_step=2, micro_batch_size=2)
        for key, value in overrides.items():
            setattr(cfg, key, value)
        return grpo_args(cfg, [1.0])

    assert not args().vllm_importance_sampling_correction  # the trainer samples: on-policy
    server = args(policy="server", is_clip_max=2.0)
    assert server.vllm_importance_sampling_correction and server.vllm_importance_sampling_mode == "token_truncate"
    assert server.vllm_importance_sampling_clip_max == 2.0 and not server.use_vllm
    assert args(replay="rollouts.jsonl").vllm_importance_sampling_correction
    forced = args(off_policy_correction="sequence_mask")
    assert forced.vllm_importance_sampling_correction and forced.vllm_importance_sampling_mode == "sequence_mask"
    assert args().scale_rewards == "group" and args(scale_rewards="none").scale_rewards == "none"


def test_the_policy_server_reports_processed_logprobs(monkeypatch, tmp_path):
    from servers.policy import PolicyServer, PolicyServerConfig

    monkeypatch.setenv("LLMI_VLLM_PYTHON", sys.executable)
    server = PolicyServer(PolicyServerConfig(model="m", port=8123, log_path=str(tmp_path / "log")))
    assert "--logprobs-mode processed_logprobs" in " ".join(server.command())


# --- the trainer ------------------------------------------------------------------------------------


def length_reward(prompts, completions, **kwargs) -> list[float]:
    """Rewards that differ within a group, so advantages are not zero."""
    return [float(len(c)) for c in completions]


def in_process_rollout(prompts, trainer) -> dict[str, list]:
    """The in-process sampler the graph uses (`trainer_policy`), called directly: on-policy samples."""
    policy = trainer_policy(trainer)
    ids = [policy.prompt_ids([{"role": "user", "content": p}]) for p in prompts]
    outputs = policy.generate_batch(ids, Sampling(max_tokens=12, temperature=TEMPERATURE, top_p=1.0, seed=11))
    return {
        "prompt_ids": ids,
        "completion_ids": [o.completion_token_ids for o in outputs],
        "logprobs": [o.logprobs for o in outputs],
    }


@pytest.fixture(scope="module")
def trainer(embedded_model_dir, tmp_path_factory) -> LlmiGRPOTrainer:
    """A tiny random Llama with SmolLM2's tokenizer and chat template: these tests need a model, not a good one.
    Its logits are spread enough (initializer_range 0.2) that tempering moves logprobs by tenths."""
    from datasets import Dataset
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from trl import GRPOConfig

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        initializer_range=0.2,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    args = GRPOConfig(
        output_dir=str(tmp_path_factory.mktemp("offpolicy")),
        use_cpu=True,
        bf16=False,
        per_device_train_batch_size=GROUP,
        num_generations=GROUP,
        gradient_accumulation_steps=1,
        steps_per_generation=1,
        max_completion_length=12,
        temperature=TEMPERATURE,
        loss_type="grpo",
        report_to=[],
        disable_dropout=True,
        remove_unused_columns=False,
        **off_policy_args("token_truncate", 3.0, None, on_policy=False),
    )
    trainer = LlmiGRPOTrainer(
        model=model,
        processing_class=tokenizer,
        reward_funcs=[length_reward],
        args=args,
        train_dataset=Dataset.from_list([{"prompt": p} for p in PROMPTS]),
        rollout_func=in_process_rollout,
    )
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop, which these tests do not run
    return trainer


@pytest.fixture
def correction(trainer):
    """Restore the module trainer's settings after a test changes them."""
    saved = (trainer.vllm_importance_sampling_correction, trainer.vllm_importance_sampling_mode, trainer.loss_type)
    yield trainer
    trainer.vllm_importance_sampling_correction, trainer.vllm_importance_sampling_mode, trainer.loss_type = saved
    trainer._metrics["train"].clear()


def batch(prompt: str) -> list[dict[str, str]]:
    """A group as TRL's dataloader hands it over: one dict per rollout (the extra fields land in each)."""
    return [{"prompt": prompt} for _ in range(GROUP)]


def test_in_process_samples_are_on_policy(correction):
    trainer = correction
    trainer.rollout_func = in_process_rollout
    output = trainer._generate_and_score_completions(batch(PROMPTS[0]))
    mask = output["completion_mask"].bool()
    ratio = output["importance_sampling_ratio"][mask]
    assert ratio.numel() >= GROUP and (ratio - 1).abs().max() < 2e-3, (ratio - 1).abs().max()
    assert output["advantages"].shape == output["completion_ids"].shape  # the weights ride on the advantages
    metrics = trainer._metrics["train"]
    assert metrics["sampling/importance_sampling_ratio/clipped"][-1] == 0.0
    assert abs(metrics["sampling/importance_sampling_ratio/mean"][-1] - 1) < 1e-3


def replay_records(trainer) -> list[dict]:
    """A recorded group of in-process samples, rewarded 0..3, whose logprobs are moved as if another sampler had
    drawn them: samples 0 and 2 down by 2 (weight e^2, over the cap), samples 1 and 3 up by 0.5 (weight e^-0.5)."""
    sampled = in_process_rollout([PROMPTS[1]] * GROUP, trainer)
    records = []
    for i, (prompt_ids, ids, logprobs) in enumerate(
        zip(sampled["prompt_ids"], sampled["completion_ids"], sampled["logprobs"], strict=True)
    ):
        shift = -2.0 if i % 2 == 0 else 0.5
        records.append(
            {
                "group": "g",
                "prompt": PROMPTS[1],
                "prompt_ids": prompt_ids,
                "completion_ids": ids,
                "logprobs": [lp + shift for lp in logprobs],
                "rewards": {"hybrid": float(i)},
            }
        )
    return records


def recorded_reward(prompts, completions, recorded_rewards, **kwargs) -> list[float]:
    return [r["hybrid"] for r in recorded_rewards]


def test_replayed_off_policy_samples_are_reweighted_and_truncated(correction):
    trainer = correction
    trainer.rollout_func = ReplayRollout(replay_records(trainer), GROUP)
    funcs = trainer.reward_funcs
    trainer.reward_funcs = [recorded_reward]
    try:
        corrected = trainer._generate_and_score_completions(batch(PROMPTS[1]))
        trainer.vllm_importance_sampling_correction = False
        plain = trainer._generate_and_score_completions(batch(PROMPTS[1]))
    finally:
        trainer.reward_funcs = funcs
    assert torch.equal(plain["completion_ids"], corrected["completion_ids"])  # the same recorded samples
    assert "importance_sampling_ratio" not in plain and plain["advantages"].dim() == 1
    mask = corrected["completion_mask"].bool()
    weights = corrected["importance_sampling_ratio"]
    truncated = torch.zeros_like(mask)
    truncated[0::2] = True
    assert torch.allclose(weights[mask & truncated], torch.tensor(3.0))  # e^2, truncated at the cap
    assert torch.allclose(weights[mask & ~truncated], torch.tensor(math.exp(-0.5)), atol=1e-3)
    assert torch.allclose(corrected["advantages"], plain["advantages"][:, None] * weights)
    metrics = trainer._metrics["train"]
    assert metrics["sampling/importance_sampling_ratio/clipped"][-1] == pytest.approx(
        (mask & truncated).sum().item() / mask.sum().item()
    )
    assert metrics["sampling/importance_sampling_ratio/max"][-1] == pytest.approx(3.0)
    assert metrics["sampling/importance_sampling_ratio/mean"][-1] == pytest.approx(weights[mask].mean().item())
    assert metrics["sampling/sampling_logp_difference/max"][-1] == pytest.approx(2.0, abs=1e-3)

    with torch.no_grad():
        loss_corrected = trainer.compute_loss(trainer.model, corrected).item()
        loss_plain = trainer.compute_loss(trainer.model, plain).item()
    # Uncorrected, the loss takes the samples as on-policy: ratio 1, and a group's advantages cancel. Corrected, the
    # better samples (1 and 3) count for e^-0.5 and the worse ones for 3: the loss rises.
    assert abs(loss_plain) < 1e-4
    assert loss_corrected > 0.3


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "cispo"])
def test_folded_weights_give_trls_own_corrected_loss(correction, loss_type):
    """On a hand-built batch: our (B, T) advantages through TRL's loss equal TRL's own `per_token_loss *
    importance_sampling_ratio` (its path when it samples with vLLM), in value and in gradient."""
    trainer = correction
    trainer.loss_type = loss_type
    generator = torch.Generator().manual_seed(0)
    vocab = trainer.model.config.vocab_size
    prompt_ids = torch.randint(0, vocab, (4, 5), generator=generator)
    completion_ids = torch.randint(0, vocab, (4, 6), generator=generator)
    completion_mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 6, [1] * 2 + [0] * 4])
    with torch.no_grad():
        current, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model,
            torch.cat([prompt_ids, completion_ids], 1),
            torch.cat([torch.ones(4, 5), completion_mask], 1),
            6,
        )
    inputs = {
        "prompt_ids": prompt_ids,
        "prompt_mask": torch.ones_like(prompt_ids),
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": torch.tensor([1.5, -0.5, -2.0, 1.0]),
        "old_per_token_logps": current + 0.4 * torch.randn(current.shape, generator=generator),  # PPO clip engages
        "num_items_in_batch": completion_mask.sum(),
    }
    weights = 3.0 * torch.rand(4, 6, generator=generator)
    weights[0, 1] = weights[2, 3] = 0.0  # masked tokens

    def loss_and_grad(batch: dict, use_vllm: bool) -> tuple[float, torch.Tensor]:
        trainer.model.zero_grad()
        trainer.use_vllm = use_vllm  # TRL multiplies by the ratio itself only on its vLLM path
        try:
            loss = trainer.compute_loss(trainer.model, batch)
        finally:
            trainer.use_vllm = False
        loss.backward()
        grad = trainer.model.get_input_embeddings().weight.grad[completion_ids.flatten()].clone()
        trainer.model.zero_grad()
        return loss.item(), grad

    trl_loss, trl_grad = loss_and_grad({**inputs, "importance_sampling_ratio": weights}, use_vllm=True)
    ours = {**inputs, "advantages": fold_into_advantages(inputs["advantages"], weights)}
    our_loss, our_grad = loss_and_grad(ours, use_vllm=False)
    plain_loss, _ = loss_and_grad(inputs, use_vllm=False)
    assert our_loss == pytest.approx(trl_loss, abs=1e-6)
    assert torch.allclose(our_grad, trl_grad, atol=1e-7)
    assert abs(plain_loss - trl_loss) > 1e-3  # the weights matter on this batch
