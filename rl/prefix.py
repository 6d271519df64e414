"""GRPO's loss pass with each shared prompt computed once: the G completions of a group reuse its keys/values.

TRL scores a micro-batch by running `prompt + completion` for every row, so a group's prompt (often far longer
than its completions) runs G times. Here the distinct prompts of a micro-batch run once, as one batch, keeping
their keys/values in the autograd graph (LoRA sits on the K/V projections, so the prompt must get its gradient);
then every row runs only its last prompt token and its completion on top of its prompt's keys/values. The last
prompt token runs with the completion so that its output, which predicts the first completion token, comes out of
the same fused LM head as the rest.

Values equal TRL's: the same columns (padding included) get the same positions, the same attention mask, and the
log-probabilities come from the model's fused LM head (TRL's `add_fused_lm_head`, temperature included).

    class Trainer(SharedPrefixLogps, GRPOTrainer): ...
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


@dataclass(frozen=True)
class SharedPrompts:
    """The distinct prompts of a micro-batch: one representative row each, and each row's prompt."""

    rows: torch.Tensor  # (k,) a row holding each distinct prompt
    of_row: torch.Tensor  # (n,) the distinct prompt of each row, an index into `rows`


def find_shared_prompts(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_width: int
) -> SharedPrompts | None:
    """Group rows by prompt content (rows of a group need not be adjacent: TRL shuffles them).

    The first `prompt_width` columns are the prompts, left-padded. None when no two rows share a prompt, or when
    the layout is not left-padded prompts of at least two columns (then nothing is gained or it would be wrong).
    """
    if prompt_width < 2 or input_ids.size(0) < 2:
        return None
    prompt_mask = attention_mask[:, :prompt_width]
    # left padding: each row's mask is 0...0 1...1, ending on a real token
    if not bool((prompt_mask[:, -1] == 1).all()) or bool((prompt_mask[:, 1:] < prompt_mask[:, :-1]).any()):
        return None
    # padding positions read -1 (never a token id), so equal keys mean equal tokens at equal positions
    keys = input_ids[:, :prompt_width].masked_fill(prompt_mask == 0, -1)
    distinct, of_row = torch.unique(keys, dim=0, return_inverse=True)
    if distinct.size(0) == input_ids.size(0):
        return None
    n = input_ids.size(0)
    first = torch.full((distinct.size(0),), n, dtype=torch.long, device=input_ids.device)
    first = first.scatter_reduce(0, of_row, torch.arange(n, device=input_ids.device), reduce="amin")
    return SharedPrompts(rows=first, of_row=of_row)


def _causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under a PEFT wrapper (LoRA layers live inside it)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def supports_shared_prefix(model: torch.nn.Module) -> bool:
    """Whether `shared_prefix_logps` can run this model: a text-only decoder with plain (non-sliding) K/V caches."""
    causal_lm = _causal_lm(model)
    config = getattr(causal_lm, "config", None)
    if config is None or config.get_text_config() is not config or not hasattr(causal_lm, "get_decoder"):
        return False
    # gradient checkpointing drops past_key_values in training mode
    if getattr(causal_lm, "is_gradient_checkpointing", False) and causal_lm.training:
        return False
    return all(type(layer) is DynamicLayer for layer in DynamicCache(config=config).layers)


def shared_prefix_logps(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    logits_to_keep: int,
    prompts: SharedPrompts,
    compute_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log-probs (and entropies) of the last `logits_to_keep` columns, each distinct prompt run once.

    `input_ids`/`attention_mask` are TRL's micro-batch (left-padded prompts, then completions); `model` carries
    TRL's fused LM head (GRPOTrainer adds it, with its temperature). Returns tensors of shape
    (rows, logits_to_keep), zero where the mask is, equal to TRL's `_get_per_token_logps_and_entropies`.
    """
    causal_lm = _causal_lm(model)
    split = input_ids.size(1) - logits_to_keep - 1  # the prefix: every prompt column but the last
    # transformers numbers positions by column, padding included; the split run keeps the full run's numbering
    positions = torch.arange(input_ids.size(1), device=input_ids.device).unsqueeze(0)

    prefix_cache = DynamicCache(config=causal_lm.config)
    causal_lm.get_decoder()(
        input_ids=input_ids[prompts.rows, :split],
        attention_mask=attention_mask[prompts.rows, :split],
        position_ids=positions[:, :split],
        past_key_values=prefix_cache,
        use_cache=True,
    )
    # each row gets its prompt's keys/values; index_select keeps them in the graph, so gradients from every row's
    # completion flow back into the one prompt run
    row_cache = DynamicCache(
        ddp_cache_data=[
            (k.index_select(0, prompts.of_row), v.index_select(0, prompts.of_row)) for k, v, _ in prefix_cache
        ],
        config=causal_lm.config,
    )
    suffix = input_ids[:, split:]
    labels = suffix.masked_fill(attention_mask[:, split:] == 0, -100)
    labels[:, 0] = -100  # the last prompt token is input only; the head scores the tokens after it
    outputs = model(
        input_ids=suffix,
        attention_mask=attention_mask,  # over cached prefix + suffix, as the full run sees it
        position_ids=positions[:, split:],
        past_key_values=row_cache,
        labels=labels,
        fused_lm_head=True,
    )
    return outputs.log_probs, outputs.entropy if compute_entropy else None


class SharedPrefixLogps:
    """GRPOTrainer mixin: the loss pass (and old log-probs) run each micro-batch's shared prompts once.

    Applies to text-only inputs of a plain decoder; anything else (images, MoE aux loss, sliding-window caches,
    a distributed wrapper, no prompt shared in a micro-batch) takes GRPOTrainer's own path. Set `shared_prefix =
    False` on an instance to force that path.
    """

    shared_prefix: bool = True

    def _get_per_token_logps_and_entropies(
        self,
        model: torch.nn.Module,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        logits_to_keep: int,
        batch_size: int | None = None,
        compute_entropy: bool = False,
        compute_aux_loss: bool = False,
        **multimodal: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        default = super()._get_per_token_logps_and_entropies  # type: ignore[misc]
        if (
            not self.shared_prefix
            or compute_aux_loss
            or any(value is not None for value in multimodal.values())
            or self.accelerator.unwrap_model(model) is not model  # type: ignore[attr-defined]
            or not supports_shared_prefix(model)
        ):
            return default(
                model,
                input_ids,
                attention_mask,
                logits_to_keep,
                batch_size=batch_size,
                compute_entropy=compute_entropy,
                compute_aux_loss=compute_aux_loss,
                **multimodal,
            )
        batch_size = batch_size or input_ids.size(0)
        all_logps, all_entropies = [], []
        for start in range(0, input_ids.size(0), batch_size):
            ids, mask = input_ids[start : start + batch_size], attention_mask[start : start + batch_size]
            prompts = find_shared_prompts(ids, mask, ids.size(1) - logits_to_keep)
            if prompts is None:
                logps, entropies, _ = default(model, ids, mask, logits_to_keep, compute_entropy=compute_entropy)
            else:
                with self.accelerator.autocast():  # type: ignore[attr-defined]
                    logps, entropies = shared_prefix_logps(model, ids, mask, logits_to_keep, prompts, compute_entropy)
            all_logps.append(logps)
            all_entropies.append(entropies)
        entropies = torch.cat(all_entropies) if compute_entropy else None
        return torch.cat(all_logps), entropies, None
