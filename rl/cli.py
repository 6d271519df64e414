"""Training's verb: `llmi train ...` is `python rl/train.py ...` (GRPO with TRL), the same options from
`TrainConfig`. The root command, `llmi.cli`, mounts it."""

from __future__ import annotations

import typer

app = typer.Typer(add_completion=False, help="Train the policy with GRPO.")


@app.command(
    add_help_option=False,  # --help is rl/train.py's: every TrainConfig field with its help line
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def train(ctx: typer.Context) -> None:
    """Train the policy with GRPO (TRL) on trajectories from the graph; `llmi train --help` lists the options."""
    from rl.train import main

    main(ctx.args, prog="llmi train")
