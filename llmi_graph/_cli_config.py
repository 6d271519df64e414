"""What every package's commands share: the console they print to, the command-line error, and options from a
config dataclass (each field an option, its `help` metadata the help text).

So a server's or trainer's config is defined once, and its CLI cannot drift from it (the TRL habit).
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import typing
from collections.abc import Callable
from typing import Any, Literal

import typer
from rich.console import Console

console = Console(stderr=True, soft_wrap=True)


class CliError(Exception):
    """A problem with the command line: printed, exit status 2, nothing written."""


def dataclass_command(cls: type, run: Callable[[Any], None], doc: str) -> Callable[..., None]:
    """A function typer can register as a command: its options are `cls`'s fields; it calls `run(cls(...))`."""
    hints = typing.get_type_hints(cls)
    params = []
    choice_fields: set[str] = set()
    for f in dataclasses.fields(cls):
        annotation = hints[f.name]
        if typing.get_origin(annotation) is Literal:  # typer takes choices as an Enum
            choices = [str(a) for a in typing.get_args(annotation)]
            annotation = enum.Enum(f"{cls.__name__}_{f.name}", {c: c for c in choices}, type=str)
            choice_fields.add(f.name)
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = ...  # required
        params.append(
            inspect.Parameter(
                f.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=typer.Option(default, help=f.metadata.get("help", "")),
                annotation=annotation,
            )
        )

    def command(**kwargs: Any) -> None:
        for name in choice_fields:
            kwargs[name] = kwargs[name].value if isinstance(kwargs[name], enum.Enum) else kwargs[name]
        run(cls(**kwargs))

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__doc__ = doc
    return command
