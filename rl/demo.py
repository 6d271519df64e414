"""The CPU demonstration (`make train-demo`): GRPO on SmolLM2-135M with LoRA, then held-out tag validity before
and after.

1. Evaluate the embedded SmolLM2 on the 50 held-out prompts (greedy): tag validity and image-number score.
2. Train a LoRA adapter with GRPO on the 200 training prompts for at most `--minutes` (default 30) on the CPU:
   rollouts through the llmi graph (real code sandbox and local editor), rewards = the paper's hybrid R (rules,
   plus the LLM judge when LLMI_JUDGE_URL points at a server) + the partial-credit format reward.
3. Evaluate again with the adapter, print both, and save everything in the output folder. The adapter works
   with `llmi run --adapter OUT/adapter "..."`.

Target: tag validity from its baseline (near 0%) to at least 60%.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from rl.config import TrainConfig
from rl.data import HELDOUT_FILE, TRAIN_FILE, load_rows
from rl.evaluate import evaluate
from rl.train import train

TARGET = 0.60


def demo_config(out: Path, minutes: float) -> TrainConfig:
    """The settings the demo trains with (documented in the README)."""
    return TrainConfig(
        dataset=str(TRAIN_FILE),
        output_dir=str(out / "train"),
        num_generations=8,
        prompts_per_step=1,
        micro_batch_size=4,
        max_completion_length=96,
        temperature=0.8,
        learning_rate=5e-4,
        lr_scheduler_type="constant",
        max_steps=10_000,
        time_budget_minutes=minutes,
        format_weight=1.0,
        close_hacks=True,  # else a failed chart pays as much as a working one (see README: a run learned `plt.line()`)
        judge_url=os.environ.get("LLMI_JUDGE_URL"),
        judge_model=os.environ.get("LLMI_JUDGE_MODEL", "default"),
        save_steps=10,
        report_to="auto",
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="rl-out/demo", help="Output folder (reruns resume training).")
    parser.add_argument("--minutes", type=float, default=30.0, help="Training time budget.")
    parser.add_argument("--eval-tokens", type=int, default=128, help="Most tokens per held-out draft.")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    heldout = load_rows(HELDOUT_FILE)

    print(f"[1/3] baseline on {len(heldout)} held-out prompts ...", flush=True)
    before, _ = evaluate(heldout, max_tokens=args.eval_tokens)
    print(json.dumps(before, indent=2), flush=True)

    cfg = demo_config(out, args.minutes)
    print(f"[2/3] GRPO with LoRA for at most {args.minutes:g} min (judge: {cfg.judge_url or 'none'}) ...", flush=True)
    started = time.monotonic()
    adapter = train(cfg)
    trained_min = (time.monotonic() - started) / 60
    collapse_file = Path(cfg.output_dir) / "collapse.json"
    collapse = json.loads(collapse_file.read_text()) if collapse_file.is_file() else None
    if collapse:
        print(f"training stopped at step {collapse['step']}: {collapse['message']}", flush=True)

    print("[3/3] held-out again, with the adapter ...", flush=True)
    after, states = evaluate(heldout, adapter=str(adapter), max_tokens=args.eval_tokens)
    result = {
        "before": before,
        "after": after,
        "train_minutes": round(trained_min, 1),
        "adapter": str(adapter),
        "target_tag_validity": TARGET,
        "collapse": collapse,
    }
    (out / "demo.json").write_text(json.dumps(result, indent=2))
    (out / "heldout_drafts_after.json").write_text(json.dumps([s.draft for s in states], indent=2))

    print("\n                      before    after")
    for key in (
        "tag_validity",
        "drafts_with_tags",
        "valid_tag_share",
        "tool_success",
        "format_score",
        "image_num_score",
    ):
        print(f"  {key:20s} {before[key]:8.1%} {after[key]:8.1%}")
    if collapse:
        print(f"\nCOLLAPSED at step {collapse['step']}: {collapse['message']}")
    met = after["tag_validity"] >= TARGET
    print(f"\ntag validity target {TARGET:.0%}: {'met' if met else 'NOT met'} after {trained_min:.1f} min of training")
    print(
        f'adapter: {adapter}\ntry: llmi run --adapter {adapter} "Compare the monthly rainfall of Seattle and Phoenix"'
    )


if __name__ == "__main__":
    main()
