"""rl/prefix.py: GRPO's loss pass with each shared prompt run once equals TRL's, in values and LoRA gradients."""

from __future__ import annotations

import pytest
import torch

from rl.prefix import SharedPrefixLogps, find_shared_prompts, supports_shared_prefix

PROMPT_WIDTH, COMPLETION_WIDTH = 20, 9


def left_padded(prompts: list[torch.Tensor], width: int, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.full((len(prompts), width), pad)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for i, prompt in enumerate(prompts):
        ids[i, width - len(prompt) :], mask[i, width - len(prompt) :] = prompt, 1
    return ids, mask


def test_prompts_are_grouped_by_content_not_adjacency_nor_padding_ids():
    a, b, c = torch.tensor([5, 6, 7]), torch.tensor([6, 7]), torch.tensor([9, 9, 9])
    ids, mask = left_padded([a, b, a, c, b, a], width=4, pad=0)
    ids[5, 0] = 3  # a different id under the padding: still prompt a
    shared = find_shared_prompts(ids, mask, prompt_width=4)
    assert shared is not None
    groups = shared.of_row.tolist()
    assert groups[0] == groups[2] == groups[5] and groups[1] == groups[4]
    assert len({groups[0], groups[1], groups[3]}) == 3
    assert len(shared.rows) == 3
    assert torch.equal(ids[shared.rows][shared.of_row] * mask, ids * mask)  # each row's representative: its prompt

    assert find_shared_prompts(*left_padded([a, b, c], width=4, pad=0), prompt_width=4) is None  # nothing shared
    right_padded = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0]])
    assert find_shared_prompts(ids[:2], right_padded, prompt_width=4) is None
    assert find_shared_prompts(ids[:2, 3:], mask[:2, 3:], prompt_width=1) is None  # no prefix to share


def test_only_plain_decoders_qualify():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    def tiny(**overrides) -> Qwen2ForCausalLM:
        config = Qwen2Config(
            vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, **overrides,
        )  # fmt: skip
        return Qwen2ForCausalLM(config)

    assert supports_shared_prefix(tiny())
    assert not supports_shared_prefix(tiny(use_sliding_window=True, sliding_window=4, max_window_layers=0))
    checkpointed = tiny()
    checkpointed.gradient_checkpointing_enable()
    checkpointed.train()
    assert not supports_shared_prefix(checkpointed)  # checkpointed layers drop past_key_values


@pytest.fixture(scope="module")
def trainer(embedded_model_dir, tmp_path_factory):
    """A GRPOTrainer with the mixin on SmolLM2-135M + LoRA on every linear module, float32, temperature 0.7."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    class Trainer(SharedPrefixLogps, GRPOTrainer):
        pass

    args = GRPOConfig(
        output_dir=str(tmp_path_factory.mktemp("grpo")),
        use_cpu=True,
        bf16=False,
        per_device_train_batch_size=4,
        num_generations=4,
        temperature=0.7,
        loss_type="grpo",  # as rl/train.py trains
        report_to=[],
    )
    trainer = Trainer(
        model=AutoModelForCausalLM.from_pretrained(embedded_model_dir, dtype=torch.float32),
        processing_class=AutoTokenizer.from_pretrained(embedded_model_dir),
        reward_funcs=lambda completions, **kwargs: [0.0] * len(completions),
        args=args,
        train_dataset=Dataset.from_dict({"prompt": ["unused"]}),
        peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # LoRA's B starts at zero, which would leave A without a gradient to compare
        for name, param in trainer.model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    # these batches are too small to gain from a second thread, and when anything else runs on the machine every
    # two-thread op waits for a scheduler slot (tens of times slower)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield trainer
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def batch(trainer) -> dict[str, torch.Tensor]:
    """Three prompts of 15, 19 and 12 tokens (left-padded to 20), shuffled over 7 rows; C has no sibling."""
    generator = torch.Generator().manual_seed(1)
    a, b, c = (torch.randint(100, 40_000, (n,), generator=generator) for n in (15, 19, 12))
    prompt_ids, prompt_mask = left_padded([a, b, a, c, b, a, b], PROMPT_WIDTH, trainer.processing_class.pad_token_id)
    lengths = torch.tensor([9, 4, 7, 1, 9, 5, 8])  # right padding, a one-token completion among them
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": torch.randint(100, 40_000, (7, COMPLETION_WIDTH), generator=generator),
        "completion_mask": (torch.arange(COMPLETION_WIDTH) < lengths.unsqueeze(1)).long(),
        "advantages": torch.randn(7, generator=generator),
    }


def embedded_tokens(trainer, run) -> tuple[object, int]:
    """Run `run()`, counting the tokens the model embeds (the work done, padding included)."""
    counted = []
    embed = trainer.model.get_input_embeddings()
    handle = embed.register_forward_hook(lambda module, args, output: counted.append(args[0].numel()))
    try:
        return run(), sum(counted)
    finally:
        handle.remove()


def test_logps_and_entropies_match_trl_with_groups_split_across_chunks(trainer, batch):
    from trl import GRPOTrainer

    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)

    def score(method):
        with torch.no_grad():  # as TRL computes old log-probs: in chunks of batch_size rows
            return method(ids, mask, COMPLETION_WIDTH, batch_size=3, compute_entropy=True)

    (want_logps, want_entropy, _), trl_tokens = embedded_tokens(
        trainer,
        lambda: score(lambda *a, **k: GRPOTrainer._get_per_token_logps_and_entropies(trainer, trainer.model, *a, **k)),
    )
    (logps, entropy, _), tokens = embedded_tokens(
        trainer, lambda: score(lambda *a, **k: trainer._get_per_token_logps_and_entropies(trainer.model, *a, **k))
    )
    torch.testing.assert_close(logps, want_logps, atol=1e-4, rtol=0)
    torch.testing.assert_close(entropy, want_entropy, atol=1e-4, rtol=0)
    assert (logps[batch["completion_mask"] == 0] == 0).all()
    assert (want_logps[batch["completion_mask"] == 1] < 0).all()
    # chunk [a b a]: prompts a and b once (19 columns), every row its last prompt token and completion (10);
    # chunk [c b a] shares nothing and [b] is alone: both run whole (29 columns a row), TRL's way
    full = PROMPT_WIDTH + COMPLETION_WIDTH
    assert trl_tokens == 7 * full
    assert tokens == 2 * (PROMPT_WIDTH - 1) + 3 * (COMPLETION_WIDTH + 1) + 4 * full


def test_loss_and_every_lora_gradient_match_trl(trainer, batch):
    from trl import GRPOTrainer

    model = trainer.model
    lora = {name: p for name, p in model.named_parameters() if "lora_" in name}
    assert len(lora) == 30 * 7 * 2  # A and B on the 7 linear modules of 30 layers
    # old log-probs a little off the current ones (as after an update, or from vLLM), so the loss's value
    # depends on the new log-probs and some tokens get clipped
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    with torch.no_grad():
        current, _, _ = GRPOTrainer._get_per_token_logps_and_entropies(trainer, model, ids, mask, COMPLETION_WIDTH)
    noise = torch.randn(current.shape, generator=torch.Generator().manual_seed(2)) * 0.2
    batch = {**batch, "old_per_token_logps": current + noise}

    def loss_and_grads(shared: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        trainer.shared_prefix = shared
        model.zero_grad(set_to_none=True)
        try:
            loss = trainer.compute_loss(model, batch)
        finally:
            trainer.shared_prefix = True
        loss.backward()
        return loss.detach(), {name: p.grad.clone() for name, p in lora.items()}

    (want_loss, want_grads), trl_tokens = embedded_tokens(trainer, lambda: loss_and_grads(shared=False))
    (loss, grads), tokens = embedded_tokens(trainer, lambda: loss_and_grads(shared=True))
    assert tokens == 3 * (PROMPT_WIDTH - 1) + 7 * (COMPLETION_WIDTH + 1) < trl_tokens  # each prompt ran once
    torch.testing.assert_close(loss, want_loss, atol=1e-6, rtol=1e-4)
    for name, want in want_grads.items():
        assert want.norm() > 0, name
        error = (grads[name] - want).norm() / want.norm()
        assert error < 1e-3, f"{name}: relative gradient error {error:.1e}"
