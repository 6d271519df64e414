"""`llmi`: the command line, where the app is put together.

Each package owns its verbs, and this root mounts them: the graph's (`llmi_graph.cli`: run, batch, embedded-model),
the servers' (`servers.cli`: serve-policy, serve-image, serve-images), the judges' (`judges.cli`: score), the
benchmarks' (`evals.cli`: eval) and training's (`rl.cli`: train). A package's verbs are imported only when one of
them runs, so `llmi --help` loads none of them, and a light install (`pip install llmi`) lists every verb and says
which extra a verb needs before importing what it lacks.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from typing import Any

import typer
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup


@dataclass(frozen=True)
class Verb:
    """A verb as the root knows it: where it lives, the help line `llmi --help` shows, the extras it needs."""

    module: str  # its module's typer `app` has a command of the verb's name, or is the verb (`eval`, a group)
    help: str  # the command's own first help line (tests/test_light_install.py checks they agree)
    extras: tuple[str, ...] = ()


VERBS: dict[str, Verb] = {
    "run": Verb(
        "llmi_graph.cli", "Write an interleaved document for PROMPT and save it as HTML, Markdown and trajectory.json."
    ),
    "batch": Verb(
        "llmi_graph.cli",
        "Run every row of DATA (SAMPLES times each) into OUT: durable, resumable, one report per sample.",
    ),
    "serve-policy": Verb("servers.cli", "Serve a policy with vLLM (OpenAI-compatible, LoRA).", ("servers",)),
    "serve-image": Verb("servers.cli", "Serve one Qwen-Image (edit) pipeline over HTTP.", ("servers", "diffusers")),
    "serve-images": Verb("servers.cli", "Serve one image pipeline instance per GPU.", ("servers", "diffusers")),
    "eval": Verb("evals.cli", "Run a benchmark through `llmi batch` and score it; compare evaluations."),
    "score": Verb(
        "judges.cli",
        "Score a finished report with the hybrid reward (rules + LLM judge + multimodal judge) into score.json.",
    ),
    "embedded-model": Verb(
        "llmi_graph.cli",
        "Print the embedded policy's model folder (converting it from GGUF once), e.g. for serve-policy.",
    ),
    "train": Verb(
        "rl.cli",
        "Train the policy with GRPO (TRL) on trajectories from the graph; `llmi train --help` lists the options.",
        ("rl",),
    ),
}


def load(name: str) -> TyperCommand | TyperGroup:
    """The click command of verb `name`, imported now; exits with the extra to install when one is missing."""
    from llmi_graph._cli_config import console  # here, not above: importing llmi_graph takes seconds
    from llmi_graph._extras import MissingExtra, require

    verb = VERBS[name]
    try:
        for extra in verb.extras:
            require(extra, what=f"`llmi {name}`")
    except MissingExtra as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None
    command = typer.main.get_command(importlib.import_module(verb.module).app)
    if isinstance(command, TyperGroup) and name in command.commands:
        return command.commands[name]
    return command


class _Mounted(TyperCommand):
    """A verb listed by its help line; parsing its arguments imports it and hands them to the real command."""

    def __init__(self, name: str, verb: Verb):
        super().__init__(name, help=verb.help)

    def make_context(
        self, info_name: str | None, args: list[str], parent: typer.Context | None = None, **extra: Any
    ) -> typer.Context:
        assert self.name is not None
        return load(self.name).make_context(info_name, args, parent=parent, **extra)


class _Root(TyperGroup):
    """The `llmi` group: every verb in `VERBS`, mounted."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        for name, verb in VERBS.items():
            self.add_command(_Mounted(name, verb))


app = typer.Typer(
    cls=_Root, add_completion=False, no_args_is_help=True, help="llmi: interleaved text-and-image documents."
)


class _Judging:
    """The judges this app passes to the graph's verbs (`llmi_graph.cli.Judging`), as the click context's object:
    `judges.select.AppJudging`, imported only when a verb asks for a judge (llmi_graph never imports judges)."""

    def scorers(self, url: str, model: str) -> dict[str, Any]:
        from judges.select import AppJudging

        return AppJudging().scorers(url, model)

    def chooser(self, url: str, model: str) -> Any:
        from judges.select import AppJudging

        return AppJudging().chooser(url, model)


@app.callback()
def _root(ctx: typer.Context) -> None:
    """llmi: a policy LLM writes text with image tags; search, diffusion, code and edit tools fill them in."""
    ctx.obj = _Judging()


def main() -> None:
    """The `llmi` console script."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
