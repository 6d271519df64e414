"""GRPO training of the llmi policy with TRL, on trajectories from the llmi graph (or recorded ones).

    python rl/train.py --output_dir rl-out/run                       # online, the trainer's model samples
    python rl/train.py --policy server --output_dir rl-out/run       # online, a vLLM server samples (LoRA synced)
    python rl/train.py --replay rollouts.jsonl --output_dir rl-out/r # offline, from `python -m rl.collect`
    python rl/train.py --help                                        # every option, with its help line

Checkpoints every `--save_steps`; rerunning the same command resumes from the last one. Logs go to the console,
`output_dir/log.jsonl`, and tensorboard (or wandb) when installed. The adapter lands in `output_dir/adapter`, and
`llmi run --adapter output_dir/adapter "..."` uses it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from judges._endpoint import JudgeEndpoint
from judges.hybrid import HybridOptions
from judges.llm import LLMJudge
from judges.mllm import MLLMJudge
from llmi_graph import Config
from rl.collapse import CollapseGuard, TagWatch
from rl.config import TrainConfig
from rl.content import RepetitionMemory, worked_example_texts
from rl.data import RowIndex, load_rows, to_dataset
from rl.rewards import RewardSuite
from rl.rollout import AdapterSync, GraphRollout, server_policy, trainer_policy


def parse_config(argv: list[str] | None = None, prog: str | None = None) -> TrainConfig:
    """The command line, from `TrainConfig` (every field an option, its help line the help); `prog` names the
    command in usage lines and errors (`llmi train`; by default, the script's name)."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(TrainConfig, prog=prog)
    config, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if unknown:  # argparse's own way: usage, the error, exit 2 (HfArgumentParser would raise a ValueError)
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return config


def model_path(cfg: TrainConfig) -> str:
    if cfg.model:
        return cfg.model
    from llmi_graph._embedded import cached_model_dir

    return str(cached_model_dir(Config().cache_path))


class JsonlLogger(TrainerCallback):
    """Every log line (losses, rewards/<name>/mean, timings) appended to output_dir/log.jsonl."""

    def __init__(self, path: Path):
        self.path = path

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """On a resume, drop the lines a killed run logged past its last checkpoint: they are logged again."""
        if not state.global_step or not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= state.global_step:
                    kept.append(line)
            except ValueError:
                continue  # a line torn by the kill
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
        tmp.replace(self.path)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if logs:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"step": state.global_step, "time": time.time(), **logs}) + "\n")


class TimeBudget(TrainerCallback):
    """Stop, saving a checkpoint, once training has used its time budget."""

    def __init__(self, minutes: float):
        self.seconds, self.started = minutes * 60, time.monotonic()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if time.monotonic() - self.started > self.seconds:
            control.should_training_stop = True
            control.should_save = True


class RolloutTimings(TrainerCallback):
    """Adds where rollout time went (generation, tools, judges) to the logs."""

    def __init__(self, rollout: GraphRollout | None, suite: RewardSuite):
        self.rollout, self.suite = rollout, suite

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if logs is not None and self.rollout is not None and state.global_step:
            times = self.rollout.times
            logs["time/generation_s"] = round(times.generation_s / state.global_step, 3)
            logs["time/tools_s"] = round(times.tools_s / state.global_step, 3)
            logs["time/rollout_s"] = round(times.total_s / state.global_step, 3)
            logs["time/judges_s"] = round(self.suite.judge_seconds / state.global_step, 3)


def report_targets(choice: str) -> list[str]:
    if choice != "auto":
        return [] if choice == "none" else choice.split(",")
    targets = []
    if importlib.util.find_spec("tensorboard") is not None:
        targets.append("tensorboard")
    if importlib.util.find_spec("wandb") is not None and os.environ.get("WANDB_API_KEY"):
        targets.append("wandb")
    return targets


def last_checkpoint(output_dir: Path) -> str | None:
    """The newest complete checkpoint: transformers writes `trainer_state.json` after the weights and optimizer, so
    a folder without it was cut short by a kill mid-save and is passed over."""
    complete = [p.parent for p in output_dir.glob("checkpoint-*/trainer_state.json")]
    complete = [p for p in complete if p.name.split("-")[-1].isdigit()]
    return str(max(complete, key=lambda p: int(p.name.split("-")[-1]))) if complete else None


def repetition_memory(cfg: TrainConfig) -> RepetitionMemory:
    """The repetition penalty's memory, seeded with the worked examples: copying one repeats another prompt from
    the first step (online training and `rl.collect` both use it)."""
    return RepetitionMemory(cfg.repetition_memory, cfg.repetition_threshold, seed=worked_example_texts())


def reward_suite(cfg: TrainConfig) -> RewardSuite:
    options = HybridOptions(
        missing=cfg.missing,
        tool_weight=cfg.tool_weight,
        mllm_full_marks_only_if_unwanted=cfg.close_hacks,
        ignore_literal_image_markers=cfg.close_hacks,
        smooth_overflow=cfg.close_hacks,
    )
    llm = LLMJudge(JudgeEndpoint(base_url=cfg.judge_url, model=cfg.judge_model)) if cfg.judge_url else None
    mllm = MLLMJudge(JudgeEndpoint(base_url=cfg.mllm_url, model=cfg.mllm_model)) if cfg.mllm_url else None
    repetition = repetition_memory(cfg) if cfg.repetition_weight is not None else None
    return RewardSuite(
        options,
        llm,
        mllm,
        format_weight=cfg.format_weight,
        format_needs_success_after_steps=cfg.format_needs_success_after_steps,
        format_warmup_failed_credit=cfg.format_warmup_failed_credit,
        relevance_weight=cfg.relevance_weight,
        chart_numbers_weight=cfg.chart_numbers_weight,
        repetition_weight=cfg.repetition_weight,
        repetition=repetition,
    )


def grpo_args(cfg: TrainConfig, reward_weights: list[float]) -> Any:
    import torch
    from trl import GRPOConfig

    from rl.trainer import off_policy_args

    gspo = cfg.loss_type == "gspo"
    cpu = not torch.cuda.is_available()
    completions = cfg.prompts_per_step * cfg.num_generations
    if completions % cfg.micro_batch_size:
        raise ValueError(
            f"prompts_per_step x num_generations ({completions}) must be a multiple of micro_batch_size "
            f"({cfg.micro_batch_size})"
        )
    accumulation = completions // cfg.micro_batch_size  # one generation batch = one optimizer step
    # rollouts the trainer's model samples itself are on-policy; a server's or a recording's are not
    on_policy = not cfg.replay and cfg.policy == "trainer"
    correction = off_policy_args(cfg.off_policy_correction, cfg.is_clip_max, cfg.is_clip_min, on_policy=on_policy)
    return GRPOConfig(
        output_dir=cfg.output_dir,
        max_steps=cfg.max_steps,
        num_generations=cfg.num_generations,
        per_device_train_batch_size=cfg.micro_batch_size,
        gradient_accumulation_steps=accumulation,
        steps_per_generation=accumulation,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.warmup_steps,
        loss_type="grpo" if gspo else cfg.loss_type,
        importance_sampling_level="sequence" if gspo else "token",
        scale_rewards=cfg.scale_rewards,
        beta=cfg.beta,
        temperature=cfg.temperature,
        max_completion_length=cfg.max_completion_length,
        reward_weights=reward_weights,
        logging_steps=cfg.logging_steps,
        save_steps=cfg.save_steps,
        save_total_limit=3,
        report_to=report_targets(cfg.report_to),
        seed=cfg.seed,
        use_cpu=cpu,
        bf16=not cpu,
        disable_dropout=True,
        gradient_checkpointing=False,
        remove_unused_columns=False,
        **correction,
    )


def train(cfg: TrainConfig) -> Path:
    """Train; return the saved adapter (or model) folder."""
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rl.trainer import LlmiGRPOTrainer

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    base = model_path(cfg)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base)
    suite = reward_suite(cfg)
    callbacks: list[TrainerCallback] = [JsonlLogger(output_dir / "log.jsonl")]
    if cfg.time_budget_minutes:
        callbacks.append(TimeBudget(cfg.time_budget_minutes))
    server = None
    rollout: GraphRollout | None = None
    if cfg.replay:
        from rl.replay import ReplayRollout, load_records, replay_dataset, replay_reward_functions

        records = load_records(cfg.replay)
        dataset = replay_dataset(records)
        rollout_func: Any = ReplayRollout(records, cfg.num_generations)
        funcs, weights = replay_reward_functions(
            format_weight=cfg.format_weight,
            relevance_weight=cfg.relevance_weight,
            chart_numbers_weight=cfg.chart_numbers_weight,
            repetition_weight=cfg.repetition_weight,
            format_needs_success_after_steps=cfg.format_needs_success_after_steps,
            format_warmup_failed_credit=cfg.format_warmup_failed_credit,
        )
    else:
        rows = load_rows(cfg.dataset)
        dataset = to_dataset(rows)
        graph_cfg = Config(
            max_tokens=cfg.max_completion_length,
            temperature=cfg.temperature,
            top_p=1.0,
            tool_cache=cfg.tool_cache,
            code_timeout_s=20.0,
        )
        if cfg.policy == "server":
            from servers.policy import PolicyServer, PolicyServerClient, PolicyServerConfig

            if cfg.policy_url:
                server = PolicyServerClient(cfg.policy_url)
            else:
                server = PolicyServer(
                    PolicyServerConfig(
                        model=base,
                        served_model_name=cfg.served_model_name,
                        max_lora_rank=max(16, cfg.lora_r),
                        log_path=str(output_dir / "vllm.log"),
                    )
                ).start()
            sync = AdapterSync(server, cfg.served_model_name, output_dir / "served-adapters", every=cfg.sync_every)
            callbacks.append(sync)
            factory = server_policy(server.url, sync, cfg.served_model_name)
        else:
            factory = trainer_policy
        rollout = rollout_func = GraphRollout(RowIndex(rows), graph_cfg, factory, scorer=suite.score)
        funcs, weights = suite.functions()
        if cfg.collapse_after_steps is not None:
            suite.watch = TagWatch(cfg.collapse_window)
            callbacks.append(CollapseGuard(suite.watch, output_dir, after_steps=cfg.collapse_after_steps))
    callbacks.insert(0, RolloutTimings(rollout, suite))  # before JsonlLogger, so log.jsonl has the timings
    lora = None
    if cfg.init_adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, cfg.init_adapter, is_trainable=True)
    elif cfg.lora:
        lora = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=0.0,
            task_type="CAUSAL_LM",
            target_modules=[m.strip() for m in cfg.lora_target_modules.split(",") if m.strip()],
        )
    trainer = LlmiGRPOTrainer(
        model=model,
        processing_class=tokenizer,
        reward_funcs=funcs,
        args=grpo_args(cfg, weights),
        train_dataset=dataset,
        peft_config=lora,
        rollout_func=rollout_func,
        callbacks=callbacks,
    )
    checkpoint = last_checkpoint(output_dir) if cfg.resume else None
    if checkpoint:
        print(f"resuming from {checkpoint}", flush=True)
    try:
        trainer.train(resume_from_checkpoint=checkpoint)
    finally:
        if server is not None and hasattr(server, "stop"):
            server.stop()
    adapter = output_dir / "adapter"
    trainer.save_model(str(adapter))
    tokenizer.save_pretrained(str(adapter))
    return adapter


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    cfg = parse_config(argv, prog)
    try:
        adapter = train(cfg)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f'adapter: {adapter}\ntry: llmi run --adapter {adapter} "..."', flush=True)


if __name__ == "__main__":
    main()
