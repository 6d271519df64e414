"""The servers' verbs: `llmi serve-policy`, `llmi serve-image` and `llmi serve-images`, each from its config
dataclass (`llmi_graph._cli_config.dataclass_command`). The root command, `llmi.cli`, mounts them.

`python -m servers.cli serve-image ...` is how the launcher starts each instance.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import typer

from llmi_graph._cli_config import console, dataclass_command
from servers.image_server import ImageServerConfig, serve_image
from servers.launcher import LauncherConfig, serve_images
from servers.policy import PolicyServerConfig, serve_policy

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Serve a policy or image pipelines over HTTP.")


def _run_server(serve: Callable[[Any], None]) -> Callable[[Any], None]:
    """`serve`, with its errors printed for a person and exit status 1."""

    def run(config: Any) -> None:
        try:
            serve(config)
        except (RuntimeError, ValueError, OSError) as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(1) from None

    return run


app.command("serve-policy")(
    dataclass_command(
        PolicyServerConfig, _run_server(serve_policy), "Serve a policy with vLLM (OpenAI-compatible, LoRA)."
    )
)
app.command("serve-image")(
    dataclass_command(ImageServerConfig, _run_server(serve_image), "Serve one Qwen-Image (edit) pipeline over HTTP.")
)
app.command("serve-images")(
    dataclass_command(LauncherConfig, _run_server(serve_images), "Serve one image pipeline instance per GPU.")
)


if __name__ == "__main__":
    app()
