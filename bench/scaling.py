"""Benchmark: what each test-time scaling stage buys and costs, measured with the evaluation harness (`llmi eval`).

Stages, each adding to the one before (`llmi_graph.scaling`):
  single      one draft, no repair (the plain llmi graph)
  candidates  K drafts (one batch or one n=K request), validation, rules selection
  repair      + up to R repair rounds for failed slots
  enhance     + tool-specific enhancement (detailed diffusion prompts; one code/edit repair round is already there)
  polish      + the policy rewrites the text around the final images

For each benchmark, stage and seed it runs `evals.run.run_eval` into OUT/<benchmark>/<stage>/s<seed> (a rerun
resumes, and reuses what finished), then prints per stage the rule metrics (mean over seeds, with the spread:
min-max of the seeds' means), the judge metrics (or "not scored": no judge, no number), and the cost per sample
(policy turns and tokens, tool calls, wall seconds) and what the stages did (repair turns, slots they repaired,
polish rewrites used) from each sample's trajectory. Everything is written to
OUT/scaling.json. On CPU the embedded 135M policy is weak: read the rule metrics for what each stage buys.

Run: .venv/bin/python bench/scaling.py --benchmarks rubric indomain --limit 10 --seeds 0 1 [--candidates 4]
     (opening needs OpenING's data in LLMI_OPENING_DIR; add --judge-url for the judge metrics)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evals.base import Judges
from evals.run import EvalSettings, run_eval
from llmi_graph import Config
from llmi_graph.batch import BatchSettings
from llmi_graph.toolbox import close_toolboxes

STAGES = ("single", "candidates", "repair", "enhance", "polish")


def stage_config(base: Config, stage: str, k: int, rounds: int, select: str = "rules") -> Config:
    """The operator config of a stage: every stage up to it switched on."""
    upto = STAGES.index(stage)
    return base.replace(
        candidates=k if upto >= 1 else 1,
        select=select if upto >= 1 else "rules",
        repair_rounds=rounds if upto >= 2 else 0,
        enhance=upto >= 3,
        polish=upto >= 4,
    )


def sample_costs(folder: Path) -> list[dict[str, float]]:
    """Per finished sample: its cost (trajectory summary) and wall time (results.jsonl)."""
    costs = []
    for line in (folder / "results.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record["status"] != "ok":
            continue
        trajectory = json.loads((folder / "samples" / record["sample_id"] / "trajectory.json").read_text())
        summary = trajectory["summary"]
        polish = trajectory.get("polish") or {}
        costs.append(
            {
                "policy_turns": summary["policy_turns"],
                "policy_tokens": summary["policy_tokens"],
                "tool_calls": summary["tool_calls"],
                "failed_slots": summary["images_failed"],
                # what the stages themselves did, read from this run's own record (not the difference of two runs,
                # which each draw their drafts anew): repair turns asked, slots they fixed, polish rewrites used
                "repair_turns": len(trajectory.get("repairs") or []),
                "repaired": summary.get("repaired") or 0,
                "polish_applied": float(bool(polish.get("applied"))),
                "wall_s": record["wall_s"],
            }
        )
    return costs


def opening_options(args: argparse.Namespace, benchmark: str) -> dict[str, Any]:
    """OpenING's load options: a sample of `--limit-per-subtask` rows from each subtask."""
    return {"limit_per_subtask": args.limit_per_subtask} if benchmark == "opening" and args.limit_per_subtask else {}


async def run_stage(args: argparse.Namespace, benchmark: str, stage: str, seed: int) -> dict[str, Any]:
    out = args.out / benchmark / stage / f"s{seed}"
    base = Config(max_tokens=args.max_tokens, temperature=args.temperature, seed=seed)
    cfg = stage_config(base, stage, args.candidates, args.repair_rounds, args.select)
    judges, scorers = Judges(), None
    if args.judge_url:
        from judges._endpoint import JudgeEndpoint
        from judges.select import selectors_for

        endpoint = JudgeEndpoint(base_url=args.judge_url, model=args.judge_model)
        judges, scorers = Judges(text=endpoint), selectors_for(endpoint)
    settings = EvalSettings(
        benchmark=benchmark,
        batch=BatchSettings(out=out, concurrency=args.concurrency),
        judges=judges,
        limit=args.limit,
        options=opening_options(args, benchmark),
    )
    started = time.perf_counter()
    result = await run_eval(settings, cfg, scorers=scorers)
    wall = time.perf_counter() - started
    data = json.loads(result.path.read_text(encoding="utf-8"))
    costs = sample_costs(out)
    per_sample = {k: statistics.fmean(c[k] for c in costs) if costs else None for k in (costs[0] if costs else {})}
    print(f"  {benchmark} {stage} seed {seed}: {result.counts['ok']} ok in {wall / 60:.1f} min", flush=True)
    return {"metrics": data["metrics"], "info": data["metric_info"], "cost": per_sample, "counts": result.counts}


def spread(values: list[float | None]) -> str:
    got = [v for v in values if v is not None]
    if not got:
        return "not scored"
    mean = statistics.fmean(got)
    return f"{mean:.3f}" if len(got) == 1 else f"{mean:.3f} ({min(got):.3f}-{max(got):.3f})"


def table(benchmark: str, runs: dict[str, list[dict[str, Any]]]) -> str:
    first = next(iter(runs.values()))[0]
    names = list(first["metrics"])
    costs = list(first["cost"])
    head = ["stage", *names, *(f"{c}/sample" for c in costs)]
    lines = [f"\n{benchmark} (mean over seeds, min-max of the seeds' means)", " | ".join(head)]
    for stage, seeds in runs.items():
        cells = [stage]
        for name in names:
            cells.append(spread([s["metrics"][name]["mean"] for s in seeds]))
        for c in costs:
            cells.append(spread([s["cost"].get(c) for s in seeds]))
        lines.append(" | ".join(cells))
    judged = [n for n in names if first["info"][n]["judge"]]
    if judged:
        lines.append(f"judge metrics: {', '.join(judged)} (weak on CPU; 'not scored' without a judge)")
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benchmarks", nargs="+", default=["rubric", "indomain"])
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--limit", type=int, default=10, help="Items per benchmark.")
    parser.add_argument("--limit-per-subtask", type=int, default=None, help="OpenING: rows per subtask (a sample).")
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument(
        "--select",
        default="rules",
        choices=("rules", "judge", "relative"),
        help="The candidates' selector; judge and relative need --judge-url.",
    )
    parser.add_argument("--repair-rounds", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--judge-url", default=None)
    parser.add_argument("--judge-model", default="default")
    parser.add_argument("--out", type=Path, default=Path("bench-out/scaling"))
    args = parser.parse_args()
    if args.select != "rules" and not args.judge_url:
        parser.error(f"--select {args.select} needs --judge-url")
    report: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "benchmarks": {}}
    try:
        await run_all(args, report)
    finally:
        await close_toolboxes()  # once: the seeds of a stage share the toolboxes
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scaling.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    print(f"\nwritten: {args.out / 'scaling.json'}")


async def run_all(args: argparse.Namespace, report: dict[str, Any]) -> None:
    for benchmark in args.benchmarks:
        runs = {}
        for stage in args.stages:
            # the seeds of a stage run at once: the embedded model batches their requests together
            runs[stage] = list(await asyncio.gather(*(run_stage(args, benchmark, stage, seed) for seed in args.seeds)))
        report["benchmarks"][benchmark] = runs
        print(table(benchmark, runs), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
