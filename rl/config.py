"""The training config: one dataclass, a help line per field; `rl/train.py` takes it as its command line."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from rl.data import HELDOUT_FILE, TRAIN_FILE


@dataclass
class TrainConfig:
    """GRPO on llmi graph rollouts. Defaults: the paper's settings on the embedded SmolLM2 with LoRA."""

    # Model and data.
    model: str | None = field(
        default=None, metadata={"help": "Model folder or hub id (default: the embedded SmolLM2)."}
    )
    dataset: str = field(default=str(TRAIN_FILE), metadata={"help": "Training rows, JSONL or parquet (LLM-I format)."})
    eval_dataset: str = field(default=str(HELDOUT_FILE), metadata={"help": "Held-out rows for evaluation."})
    output_dir: str = field(default="rl-out/run", metadata={"help": "Checkpoints, logs and the final adapter."})
    replay: str | None = field(
        default=None, metadata={"help": "Train on recorded rollouts (JSONL from `python -m rl.collect`), no sampling."}
    )

    # LoRA.
    lora: bool = field(default=True, metadata={"help": "Train a LoRA adapter (peft) instead of all weights."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (vLLM serves ranks up to --max-lora-rank)."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_target_modules: str = field(
        default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj", metadata={"help": "Modules LoRA wraps."}
    )
    init_adapter: str | None = field(
        default=None,
        metadata={
            "help": "Go on training this LoRA adapter (e.g. `python -m rl.warmstart`'s) instead of a new one; its "
            "shape replaces the lora_* options."
        },
    )

    # GRPO.
    num_generations: int = field(default=8, metadata={"help": "Rollouts per prompt (G; the paper: 8)."})
    prompts_per_step: int = field(default=32, metadata={"help": "Prompts per optimizer step (the paper: 32)."})
    micro_batch_size: int = field(
        default=4, metadata={"help": "Completions per forward/backward pass; a step accumulates over all of them."}
    )
    learning_rate: float = field(default=1e-6, metadata={"help": "Peak learning rate (the paper: 1e-6)."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule (the paper: cosine)."})
    warmup_steps: float = field(default=0.0, metadata={"help": "Warm-up steps (below 1: a share of all steps)."})
    loss_type: Literal["grpo", "gspo", "dapo", "dr_grpo", "bnpo"] = field(
        default="grpo", metadata={"help": "grpo, or gspo (sequence-level importance sampling, for MoE), dapo, ..."}
    )
    scale_rewards: Literal["group", "batch", "none"] = field(
        default="group",
        metadata={
            "help": "Divide each group's advantages by its reward std (group, the paper's GRPO), by the batch's "
            "(batch), or not at all (none, as Dr. GRPO: a group whose drafts differ only by a small reward keeps "
            "small advantages instead of unit-size ones)."
        },
    )
    beta: float = field(default=0.0, metadata={"help": "KL coefficient (the paper: 0, no reference model)."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature for rollouts."})
    max_completion_length: int = field(default=512, metadata={"help": "Most tokens a rollout may write."})
    off_policy_correction: Literal[
        "auto", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask", "none"
    ] = field(
        default="auto",
        metadata={
            "help": "Weight the loss by pi_trainer/pi_sampler of the recorded logprobs, truncated or masked at "
            "is_clip_max (TRL's vllm_importance_sampling modes). auto: token_truncate for --policy server and "
            "--replay, none for in-process sampling (on-policy)."
        },
    )
    is_clip_max: float = field(
        default=3.0, metadata={"help": "Upper bound on the importance weight (TRL's default: 3.0)."}
    )
    is_clip_min: float | None = field(
        default=None, metadata={"help": "Lower bound on the importance weight (default: none)."}
    )
    max_steps: int = field(default=200, metadata={"help": "Optimizer steps."})
    time_budget_minutes: float | None = field(
        default=None, metadata={"help": "Stop (and save) after this much training time."}
    )
    seed: int = field(default=0, metadata={"help": "Random seed."})

    # Rewards.
    judge_url: str | None = field(default=None, metadata={"help": "LLM judge endpoint (OpenAI-compatible)."})
    judge_model: str = field(default="default", metadata={"help": "LLM judge model name."})
    mllm_url: str | None = field(default=None, metadata={"help": "Multimodal judge endpoint."})
    mllm_model: str = field(default="default", metadata={"help": "Multimodal judge model name."})
    missing: Literal["renormalize", "unscored"] = field(
        default="renormalize", metadata={"help": "A missing judge score: renormalize the weights, or skip the sample."}
    )
    format_weight: float = field(
        default=0.0, metadata={"help": "Weight of the partial-credit format reward (shaping for small policies)."}
    )
    tool_weight: float = field(default=0.0, metadata={"help": "Weight of tool_score inside R (0: off, the paper)."})
    close_hacks: bool = field(default=False, metadata={"help": "Turn on the hybrid reward's anti-hack options."})
    format_needs_success_after_steps: int | None = field(
        default=None, metadata={"help": "From this step on, format pays only tags whose tool made an image."}
    )
    format_warmup_failed_credit: float = field(
        default=1.0,
        metadata={"help": "Before format_needs_success_after_steps: the share of its credit a failed tag earns."},
    )
    relevance_weight: float | None = field(
        default=None, metadata={"help": "Weight of `relevance`, MiniLM tag-prompt cosine (0: logged; unset: off)."}
    )
    chart_numbers_weight: float | None = field(
        default=None, metadata={"help": "Weight of `chart_numbers`, the prompt's numbers in working chart code."}
    )
    repetition_weight: float | None = field(
        default=None, metadata={"help": "Weight (> 0) of `repetition`, minus the penalty for another prompt's tags."}
    )
    repetition_memory: int = field(default=256, metadata={"help": "Drafts the repetition penalty remembers."})
    repetition_threshold: float = field(
        default=0.5, metadata={"help": "Word-trigram overlap with another prompt's text where the penalty starts."}
    )

    # Rollouts.
    policy: Literal["trainer", "server"] = field(
        default="trainer", metadata={"help": "Sample with the trainer's model in-process, or a vLLM policy server."}
    )
    policy_url: str | None = field(
        default=None, metadata={"help": "An already running vLLM server (else `--policy server` starts one)."}
    )
    served_model_name: str = field(default="policy-base", metadata={"help": "The base model's name at the server."})
    sync_every: int = field(default=1, metadata={"help": "Push the adapter to the server every k steps."})
    tool_cache: bool = field(default=True, metadata={"help": "Identical tool calls across a group execute once."})

    # Operations.
    collapse_after_steps: int | None = field(
        default=10,
        metadata={
            "help": "From this step on, stop (saving) when the last collapse_window tags collapse onto one repeated "
            "or failing tag; the verdict goes to output_dir/collapse.json (none: never)."
        },
    )
    collapse_window: int = field(default=64, metadata={"help": "Tags the collapse check looks back over."})
    save_steps: int = field(default=10, metadata={"help": "Checkpoint every N steps (resume picks up the last)."})
    resume: bool = field(default=True, metadata={"help": "Resume from the last checkpoint in output_dir if any."})
    logging_steps: int = field(default=1, metadata={"help": "Log every N steps (console, log.jsonl, tensorboard)."})
    report_to: str = field(
        default="auto", metadata={"help": "auto (tensorboard/wandb when installed), none, or a list like tensorboard."}
    )
