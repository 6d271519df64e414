"""`llmi eval`: one command per benchmark (`llmi eval opening --out DIR`, ...) and `llmi eval compare A B`.

Each benchmark command takes `llmi batch`'s options (policy, backends, samples, concurrency, checkpoints), the
judges (`--judge-url/--judge-model` for the LLM judge, `--mllm-url/--mllm-model` for the multimodal judge, as
`llmi score` does) and the benchmark's own load options. Options are the fields of a dataclass, so each is
defined once (`llmi_graph._cli_config.dataclass_command`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Run a benchmark through `llmi batch` and score it; compare evaluations.",
)


@dataclass(kw_only=True)
class EvalOptions:
    """Options every benchmark command takes."""

    out: Path = field(metadata={"help": "The evaluation folder (a batch folder; a rerun resumes it)."})
    limit: int | None = field(default=None, metadata={"help": "Only the first N runnable items."})
    source: Path | None = field(default=None, metadata={"help": "The benchmark's data (default: its own)."})
    samples: int = field(default=1, metadata={"help": "Samples per item."})
    concurrency: int = field(default=4, metadata={"help": "Samples in flight at once."})
    checkpoint_url: str | None = field(
        default=None, metadata={"help": "postgresql://... (default: OUT/checkpoints.sqlite)."}
    )
    judge_url: str | None = field(default=None, metadata={"help": "LLM judge base URL (env LLMI_JUDGE_URL)."})
    judge_model: str = field(default="default", metadata={"help": "LLM judge model (env LLMI_JUDGE_MODEL)."})
    mllm_url: str | None = field(default=None, metadata={"help": "Multimodal judge URL (env LLMI_MLLM_JUDGE_URL)."})
    mllm_model: str = field(default="default", metadata={"help": "Multimodal judge model (env LLMI_MLLM_JUDGE_MODEL)."})
    policy_url: str | None = field(default=None, metadata={"help": "OpenAI-compatible policy URL (default: embedded)."})
    model: str | None = field(default=None, metadata={"help": "Model name at --policy-url."})
    adapter: str | None = field(default=None, metadata={"help": "A LoRA adapter for the embedded policy."})
    max_tokens: int | None = field(default=None, metadata={"help": "Most tokens the policy may write."})
    temperature: float | None = field(default=None, metadata={"help": "Sampling temperature (0: greedy)."})
    seed: int | None = field(default=None, metadata={"help": "Sampling seed (each sample adds its number)."})
    cache_dir: str | None = field(default=None, metadata={"help": "Model cache and image store."})
    search_backend: str | None = field(default=None, metadata={"help": "auto, serpapi, library or none."})
    library: str | None = field(default=None, metadata={"help": "A folder of images for the library backend."})
    diffusion_backend: str | None = field(default=None, metadata={"help": "auto, server, diffusers, openai, none."})
    edit_backend: str | None = field(default=None, metadata={"help": "auto, server, diffusers, openai, local, none."})
    code_backend: str | None = field(default=None, metadata={"help": "auto, local or e2b."})
    image_server: list[str] | None = field(default=None, metadata={"help": "A Qwen-Image server URL (repeatable)."})
    edit_server: list[str] | None = field(default=None, metadata={"help": "A Qwen-Image-Edit server (repeatable)."})
    tool_cache: bool = field(default=False, metadata={"help": "Reuse identical tool calls across samples."})
    repair_rounds: int | None = field(default=None, metadata={"help": "Rounds of repair of failed images."})
    candidates: int | None = field(default=None, metadata={"help": "Drafts per sample; --select keeps one."})
    select: str | None = field(
        default=None, metadata={"help": "rules (default), judge or relative: the judge is --judge-url's."}
    )
    enhance: bool = field(default=False, metadata={"help": "Tool-specific enhancement (test-time scaling)."})
    polish: bool = field(default=False, metadata={"help": "Rewrite the text around the final images."})

    def load_options(self) -> dict[str, Any]:
        """The benchmark's own load options (the fields a subclass adds)."""
        base = {f.name for f in dataclasses.fields(EvalOptions)}
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in base}


@dataclass(kw_only=True)
class OpeningOptions(EvalOptions):
    subtasks: list[str] | None = field(default=None, metadata={"help": "Subtasks by name or key, e.g. 15.2."})
    limit_per_subtask: int | None = field(default=None, metadata={"help": "A stratified sample: N per subtask."})
    text_only: bool = field(default=True, metadata={"help": "Only items whose input has no images."})


@dataclass(kw_only=True)
class ISGOptions(EvalOptions):
    categories: list[str] | None = field(default=None, metadata={"help": "Categories or task groups."})
    limit_per_category: int | None = field(default=None, metadata={"help": "A stratified sample: N per category."})
    text_only: bool = field(default=True, metadata={"help": "Only items whose query has no images."})


def _judges(options: EvalOptions) -> Any:
    import os

    from evals.base import Judges
    from judges._endpoint import JudgeEndpoint

    judge_url = options.judge_url or os.environ.get("LLMI_JUDGE_URL")
    mllm_url = options.mllm_url or os.environ.get("LLMI_MLLM_JUDGE_URL")
    judge_model = os.environ.get("LLMI_JUDGE_MODEL", options.judge_model) if options.judge_model == "default" else (
        options.judge_model)  # fmt: skip
    mllm_model = os.environ.get("LLMI_MLLM_JUDGE_MODEL", options.mllm_model) if options.mllm_model == "default" else (
        options.mllm_model)  # fmt: skip
    return Judges(
        text=JudgeEndpoint(base_url=judge_url, model=judge_model) if judge_url else None,
        vision=JudgeEndpoint(base_url=mllm_url, model=mllm_model, api_key_env="LLMI_MLLM_JUDGE_API_KEY")
        if mllm_url
        else None,
    )


def _runner(benchmark: str) -> Any:
    def run(options: EvalOptions) -> None:
        from evals.run import EvalSettings, run_eval
        from judges.select import AppJudging
        from llmi_graph.batch import BatchSettings
        from llmi_graph.cli import (
            CliError,
            _chooser,
            _describe_tools,
            _operator_config,
            _scorers,
            console,
            run_with_progress,
        )  # fmt: skip
        from llmi_graph.toolbox import toolbox_for

        try:
            cfg = _operator_config(
                policy_url=options.policy_url, model=options.model, adapter=options.adapter,
                max_tokens=options.max_tokens, temperature=options.temperature, seed=options.seed,
                cache_dir=options.cache_dir, search_backend=options.search_backend, library=options.library,
                diffusion_backend=options.diffusion_backend, edit_backend=options.edit_backend,
                code_backend=options.code_backend, image_server=options.image_server,
                edit_server=options.edit_server, tool_cache=options.tool_cache or None,
                repair_rounds=options.repair_rounds, candidates=options.candidates, select=options.select,
                enhance=options.enhance or None, polish=options.polish or None,
            )  # fmt: skip
            judges = _judges(options)
            # The scaled graph's judges are the evaluation's: the LLM judge selects, the MLLM judge picks searches.
            text, vision = judges.text, judges.vision
            judging = AppJudging()
            scorers = _scorers(judging, cfg.select, text.base_url if text else None, text.model if text else "default")
            chooser = _chooser(judging, cfg, vision.base_url if vision else None, vision.model if vision else "default")
            settings = EvalSettings(
                benchmark=benchmark,
                batch=BatchSettings(
                    out=options.out,
                    samples=options.samples,
                    concurrency=options.concurrency,
                    checkpoint_url=options.checkpoint_url,
                ),
                judges=judges,
                source=options.source,
                limit=options.limit,
                options=options.load_options(),
            )
        except (CliError, ValueError) as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from None
        judges = settings.judges
        if judges.text is None and judges.vision is None:
            console.print(
                "[yellow]no judge configured[/yellow]: rule metrics only; judge metrics will read 'not scored'"
            )
        if scorers:
            console.print(
                f"[yellow]note[/yellow]: --select {cfg.select} and the scores use the same LLM judge, so the scores "
                "favour the drafts it chose; compare with --select rules, or score with another judge"
            )
        _describe_tools(cfg, toolbox_for(cfg))
        raise typer.Exit(
            run_with_progress(
                lambda on_event: run_eval(settings, cfg, on_event=on_event, scorers=scorers, chooser=chooser)
            )
        )

    return run


def _register() -> None:
    from llmi_graph._cli_config import dataclass_command

    docs = {
        "opening": (OpeningOptions, "OpenING (CVPR 2025): the text-only subset by default; seven judge criteria."),
        "isg": (ISGOptions, "ISG-Bench (ICLR 2025): the structural score locally, the holistic score by a judge."),
        "rubric": (EvalOptions, "Our 30 long prompts: rubric criteria (0/1/2, out of 10) and tool accuracy."),
        "indomain": (EvalOptions, "The RL held-out set, scored with the hybrid reward."),
    }
    for name, (options, doc) in docs.items():
        app.command(name)(dataclass_command(options, _runner(name), doc))


_register()


@app.command()
def compare(
    folders: Annotated[list[Path], typer.Argument(help="Evaluation folders (the first sets the metrics).")],
) -> None:
    """Side by side: each metric's mean ± standard error (n) in each evaluation folder."""
    from rich.table import Table

    from evals.run import compare as compare_results
    from llmi_graph.cli import console

    try:
        rows = compare_results(folders)
    except (FileNotFoundError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    table = Table()
    table.add_column("metric")
    for folder in folders:
        table.add_column(str(folder))
    for row in rows:
        cells = []
        for folder in folders:
            m = row.get(str(folder))
            if m is None:
                cells.append("-")
            elif m["mean"] is None:
                cells.append("not scored")
            else:
                se = f" ± {m['stderr']:.3f}" if m.get("stderr") is not None else ""
                cells.append(f"{m['mean']:.3f}{se} (n={m['n']})")
        table.add_row(row["metric"], *cells)
    console.print(table)
