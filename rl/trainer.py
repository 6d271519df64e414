"""The GRPO trainer llmi trains with: TRL's, plus the off-policy correction for rollouts it did not sample itself.

TRL corrects for the sampler only when it samples with vLLM itself (`use_vllm`). llmi samples through a
`rollout_func` (the graph, run by the trainer's model in-process, by a vLLM policy server, or read back from
recorded rollouts), and without `use_vllm` TRL takes the old policy to be the current one: server-sampled and
replayed data would be trained as if on-policy. `LlmiGRPOTrainer` applies TRL's vLLM correction to the logprobs
the rollout function reports, as in Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy
RL training":

- decoupled proximal policy: `old_per_token_logps` is the trainer's model (no grad) at generation time, so the
  PPO ratio and its clip see only the trainer's own drift, not the gap to the sampler;
- truncated importance sampling: each token's loss is weighted by exp(old - sampling), the trainer's over the
  sampler's probability, truncated (or masked) outside [clip_min, clip_max], per token or per sequence.

The settings are TRL's own GRPOConfig fields, `vllm_importance_sampling_correction`, `..._mode`, `..._clip_max`
and `..._clip_min`, so they read as TRL documents them; here they act on the rollout function's logprobs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from trl import GRPOTrainer
from trl.models.utils import disable_gradient_checkpointing

from rl.prefix import SharedPrefixLogps

IS_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


def off_policy_args(setting: str, clip_max: float | None, clip_min: float | None, *, on_policy: bool) -> dict[str, Any]:
    """The GRPOConfig fields for an `off_policy_correction` setting. `auto` corrects (token_truncate) unless the
    trainer samples its rollouts itself, which is on-policy."""
    mode = ("none" if on_policy else "token_truncate") if setting == "auto" else setting
    if mode == "none":
        return {"vllm_importance_sampling_correction": False}
    if mode not in IS_MODES:
        raise ValueError(f"off_policy_correction {setting!r}: use auto, none or one of {', '.join(IS_MODES)}")
    return {
        "vllm_importance_sampling_correction": True,
        "vllm_importance_sampling_mode": mode,
        "vllm_importance_sampling_clip_max": clip_max,
        "vllm_importance_sampling_clip_min": clip_min,
    }


def importance_weights(
    old_logps: torch.Tensor,
    sampling_logps: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    clip_min: float | None,
    clip_max: float | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """TRL's vLLM importance-sampling weights, pi_old / pi_sampler, truncated or masked per `mode`.

    Returns the weights, (B, T) for token modes or (B, 1) for sequence modes, and which of them lay outside
    [clip_min, clip_max] (clamped, or zeroed by the mask modes). Tokens with a NaN sampling logprob (a sampler that
    could not score them) and masked-out tokens get a log-ratio of 0, so no correction.
    """
    if mode not in IS_MODES:
        raise ValueError(f"unknown importance sampling mode {mode!r}; use one of {', '.join(IS_MODES)}")
    log_ratio = torch.nan_to_num((old_logps - sampling_logps) * mask, nan=0.0)
    if mode.startswith("sequence"):
        log_ratio = log_ratio.sum(dim=-1, keepdim=True)
    ratio = torch.exp(log_ratio)
    low = -math.inf if clip_min is None else clip_min
    high = math.inf if clip_max is None else clip_max
    outside = (ratio < low) | (ratio > high)
    if mode.endswith("truncate"):
        weights = ratio.clamp(min=low, max=high)
    else:
        weights = ratio.masked_fill(outside, 0.0)
    return weights, outside


def fold_into_advantages(advantages: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per-token advantages (B, T) (or (B, 1)) carrying the importance weights.

    TRL's losses are linear in the advantage and, for a non-negative weight w, min(c1 * A * w, c2 * A * w) is
    w * min(c1 * A, c2 * A): so the weighted advantage gives TRL's `per_token_loss * importance_sampling_ratio`.
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    return advantages * weights.detach()


class LlmiGRPOTrainer(SharedPrefixLogps, GRPOTrainer):
    """TRL's GRPOTrainer, with TRL's vLLM off-policy correction applied to the logprobs a `rollout_func` returns,
    and the loss pass running each group's shared prompt once (`rl.prefix.SharedPrefixLogps`).

    At each log it also appends the last generation batch's samples (prompt, draft, every reward, advantage) to
    `output_dir/samples.jsonl`, so what a reward pays for can be read, not only its mean."""

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        step = self.state.global_step
        # Once per step: the end of training logs again (its summary) with the last step's batch still held.
        if self.model.training and self.accelerator.is_main_process and step > getattr(self, "_samples_step", -1):
            self._samples_step = step
            write_samples(Path(self.args.output_dir) / "samples.jsonl", step, self._logs)
        super().log(logs, start_time)

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        output = super()._generate_and_score_completions(inputs)
        sampling_logps = output.get("sampling_per_token_logps")
        # With use_vllm, TRL corrects by itself; without recorded logprobs there is nothing to correct against.
        if self.use_vllm or not self.vllm_importance_sampling_correction or sampling_logps is None:
            return output
        old_logps = output.get("old_per_token_logps")  # TRL's, when generation and optimizer steps are misaligned
        if old_logps is None:
            old_logps = self._policy_logps(output)
        mask = output["completion_mask"]
        if "tool_mask" in output:
            mask = mask * output["tool_mask"]
        weights, outside = importance_weights(
            old_logps,
            sampling_logps,
            mask,
            self.vllm_importance_sampling_mode,
            self.vllm_importance_sampling_clip_min,
            self.vllm_importance_sampling_clip_max,
        )
        output["old_per_token_logps"] = old_logps
        output["importance_sampling_ratio"] = weights
        if self.loss_type != "vespo":  # VESPO reads the ratio itself, inside its gamma weights
            output["advantages"] = fold_into_advantages(output["advantages"], weights)
        self._log_importance_weights(old_logps, sampling_logps, mask, weights, outside)
        return output

    def _policy_logps(self, output: dict[str, Any]) -> torch.Tensor:
        """The trainer's per-token logprobs of the sampled completions, now, without grad (the proximal policy)."""
        mode = "train" if self.model.training else "eval"
        batch_size = self.args.per_device_train_batch_size if mode == "train" else self.args.per_device_eval_batch_size
        completion_ids = output["completion_ids"]
        with torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            logps, _, _ = self._get_per_token_logps_and_entropies(
                self.model,
                torch.cat([output["prompt_ids"], completion_ids], dim=1),
                torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1),
                completion_ids.size(1),
                batch_size=batch_size,
            )
        return logps

    def _log_importance_weights(
        self,
        old_logps: torch.Tensor,
        sampling_logps: torch.Tensor,
        mask: torch.Tensor,
        weights: torch.Tensor,
        outside: torch.Tensor,
    ) -> None:
        """TRL's `sampling/...` metrics, plus the share of weights truncated or masked."""
        metrics = self._metrics["train" if self.model.training else "eval"]
        tokens = mask.bool()
        delta = (old_logps - sampling_logps).abs()[tokens]
        delta = delta[~torch.isnan(delta)]
        scored = weights.flatten() if weights.size(1) == 1 else weights[tokens]
        clipped = outside.flatten() if outside.size(1) == 1 else outside[tokens]
        device = weights.device
        totals = torch.stack(
            [
                delta.sum(),
                torch.tensor(float(delta.numel()), device=device),
                scored.sum(),
                clipped.float().sum(),
                torch.tensor(float(scored.numel()), device=device),
            ]
        )
        totals = self.accelerator.gather(totals).view(-1, 5).sum(dim=0)
        nan = torch.tensor(math.nan, device=device)
        extremes = torch.stack(
            [
                delta.max() if delta.numel() else nan,
                scored.min() if scored.numel() else nan,
                scored.max() if scored.numel() else nan,
            ]
        )
        extremes = self.accelerator.gather(extremes).view(-1, 3)
        n_delta, n_scored = totals[1].clamp(min=1.0), totals[4].clamp(min=1.0)
        metrics["sampling/sampling_logp_difference/mean"].append((totals[0] / n_delta).item())
        metrics["sampling/sampling_logp_difference/max"].append(_nan_reduce(extremes[:, 0], torch.amax))
        metrics["sampling/importance_sampling_ratio/mean"].append((totals[2] / n_scored).item())
        metrics["sampling/importance_sampling_ratio/min"].append(_nan_reduce(extremes[:, 1], torch.amin))
        metrics["sampling/importance_sampling_ratio/max"].append(_nan_reduce(extremes[:, 2], torch.amax))
        metrics["sampling/importance_sampling_ratio/clipped"].append((totals[3] / n_scored).item())


def _text(messages: Any) -> str:
    """The text of a prompt or completion as TRL keeps it: a string, or chat messages (the last one's content)."""
    if isinstance(messages, str):
        return messages
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        content = messages[-1].get("content", "")
        return content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
    return str(messages)


def write_samples(path: Path, step: int, logs: dict[str, Any]) -> None:
    """Append one JSON line per sample of TRL's `_logs` (the last generation batch): step, prompt, completion, each
    reward function's value (None: unscored) and the advantage."""
    prompts, completions = list(logs.get("prompt", ())), list(logs.get("completion", ()))
    if not prompts:
        return
    rewards = {name: list(values) for name, values in logs.get("rewards", {}).items()}
    advantages = list(logs.get("advantages", ()))
    with path.open("a", encoding="utf-8") as fh:
        for k, (prompt, completion) in enumerate(zip(prompts, completions, strict=False)):
            values = {n: (None if math.isnan(v[k]) else round(v[k], 4)) for n, v in rewards.items() if k < len(v)}
            line = {
                "step": step,
                "prompt": _text(prompt),
                "completion": _text(completion),
                "rewards": values,
                "advantage": round(advantages[k], 4) if k < len(advantages) else None,
            }
            fh.write(json.dumps(line, ensure_ascii=False) + "\n")


def _nan_reduce(values: torch.Tensor, reduce: Any) -> float:
    """min or max over the processes that had any values (NaN when none had)."""
    values = values[~torch.isnan(values)]
    return reduce(values).item() if values.numel() else math.nan
