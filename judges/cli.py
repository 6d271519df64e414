"""The judges' verb: `llmi score REPORT`, the hybrid reward of a finished report. The root command, `llmi.cli`,
mounts it (and `llmi eval`, which is `evals.cli`'s)."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from pathlib import Path
from typing import Annotated

import typer

from judges._endpoint import JudgeEndpoint
from judges.hybrid import HybridOptions, score_state
from judges.llm import LLMJudge
from judges.mllm import MLLMJudge
from llmi_graph._cli_config import CliError, console
from llmi_graph.config import Config
from llmi_graph.report import load_state

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Score reports with the judges.")


@app.command()
def score(
    path: Annotated[Path, typer.Argument(help="A report folder (or its trajectory.json) written by llmi run.")],
    judge_url: Annotated[str | None, typer.Option(envvar="LLMI_JUDGE_URL", help="LLM judge base URL.")] = None,
    judge_model: Annotated[str, typer.Option(envvar="LLMI_JUDGE_MODEL", help="LLM judge model.")] = "default",
    mllm_url: Annotated[
        str | None, typer.Option(envvar="LLMI_MLLM_JUDGE_URL", help="Multimodal judge base URL.")
    ] = None,
    mllm_model: Annotated[
        str, typer.Option(envvar="LLMI_MLLM_JUDGE_MODEL", help="Multimodal judge model.")
    ] = "default",
    missing: Annotated[str, typer.Option(help="A missing judge score: renormalize, or unscored.")] = "renormalize",
    split: Annotated[str, typer.Option(help="train (partial credit for image counts) or eval.")] = "train",
    close_hacks: Annotated[
        bool, typer.Option(help="Turn on every anti-hack option (see README); off reproduces the paper.")
    ] = False,
    tool_weight: Annotated[float, typer.Option(help="Weight of tool_score in R (0: off).")] = 0.0,
    required_tools: Annotated[str | None, typer.Option(help="Tools the prompt needs, for tool_score.")] = None,
) -> None:
    """Score a finished report with the hybrid reward (rules + LLM judge + multimodal judge) into score.json."""
    folder = path if path.is_dir() else path.parent
    try:
        state = load_state(path)
        # The judge reads images only from the report's images/ and the image store, and checks their hashes.
        image_roots = [folder / "images", Config.from_env().image_path]
        options = HybridOptions(
            missing=missing, split=split, tool_weight=tool_weight, mllm_full_marks_only_if_unwanted=close_hacks,
            ignore_literal_image_markers=close_hacks, smooth_overflow=close_hacks,
        )  # fmt: skip
        if missing not in ("renormalize", "unscored") or split not in ("train", "eval"):
            raise CliError("--missing takes renormalize or unscored; --split takes train or eval")
    except (CliError, ValueError, OSError, KeyError, TypeError) as exc:
        console.print(f"[red]error:[/red] cannot score {path}: {exc}")
        raise typer.Exit(2) from None
    llm = LLMJudge(JudgeEndpoint(base_url=judge_url, model=judge_model)) if judge_url else None
    mllm = MLLMJudge(JudgeEndpoint(base_url=mllm_url, model=mllm_model, api_key_env="LLMI_MLLM_JUDGE_API_KEY"),
                     image_roots=image_roots) if mllm_url else None  # fmt: skip
    if llm is None and mllm is None:
        console.print("[yellow]warning:[/yellow] no judge URL given: only the rule term is scored")
    tools = [t.strip() for t in required_tools.split(",")] if required_tools else []
    reward = asyncio.run(score_state(state, llm, mllm, options, tools))
    for name, judged in reward.judges.items():
        if judged and judged["reason"]:
            console.print(f"[yellow]warning:[/yellow] {name} judge: {judged['reason']}", highlight=False)
    out = folder / "score.json"
    tmp = folder / f".score-{secrets.token_hex(6)}.json"
    with open(tmp, "x") as fh:
        fh.write(json.dumps(reward.as_dict(), indent=2))
    os.replace(tmp, out)  # replaces a score.json, never writes through a link planted in its place
    shown = "unscored" if reward.reward is None else f"{reward.reward:.4f}"
    console.print(f"R = {shown}  (n {reward.image_num_score:.3f}, l {reward.llm}, m {reward.mllm})", highlight=False)
    typer.echo(f"Score: {out}")
