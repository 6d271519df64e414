"""`llmi run --approve TOOLS`: human approval at the terminal.

The run gets an in-memory checkpointer and a thread, so the graph can stop at its approval `interrupt`. Each pending
call is shown (its code, query or prompt) and the person answers a (approve), e (edit) or r (reject, with an optional
reason). An edit opens an editor on a terminal ($VISUAL or $EDITOR); otherwise (input piped) it reads the new text
from stdin up to a line holding only "." or the end of input. The text replaces the call's code, query or prompt;
a JSON object instead gives the params themselves. When stdin ends before every call has an answer, the calls left
are rejected ("no answer: the input ended"): nothing runs that a person did not approve.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import click
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command
from rich.console import Console
from rich.panel import Panel
from rich.prompt import Prompt
from rich.syntax import Syntax
from rich.text import Text

from llmi_graph._checkpoint import serializer
from llmi_graph.config import Config

MAIN_PARAM = {"code": "code", "search": "query", "diffusion": "prompt", "edit": "prompt"}
"""The param an edit's text replaces, per tool."""
NO_ANSWER = "no answer: the input ended"


async def stream_with_approval(
    build: Callable[[Any], Any],
    request: Any,
    cfg: Config,
    *,
    stream_mode: Any,
    console: Console,
    live: Any = None,
) -> AsyncIterator[Any]:
    """`build(checkpointer).astream(request, stream_mode=..., subgraphs=True)`, asking at the terminal whenever the run
    stops for approval and resuming with the answers (`live`, a rich Live display, is stopped while asking). Without
    tools to approve in `cfg`, exactly that stream, with no checkpointer."""
    if not cfg.approval_tools:
        async for part in build(None).astream(request, stream_mode=stream_mode, subgraphs=True):
            yield part
        return
    graph = build(_checkpointer())
    thread = {"configurable": {"thread_id": uuid.uuid4().hex}}
    value: Any = request
    while True:
        async for part in graph.astream(value, thread, stream_mode=stream_mode, subgraphs=True):
            chunk = part[-1] if isinstance(part, tuple) else part
            if not (isinstance(chunk, dict) and "__interrupt__" in chunk):
                yield part
        interrupts = (await graph.aget_state(thread)).interrupts
        if not interrupts:
            return
        with _paused(live):
            value = Command(resume=ask(interrupts[0].value, console))


def ask(request: Mapping[str, Any], console: Console) -> dict[str, Any]:
    """A person's answers, at the terminal, to one approval request (`llmi_graph.approval`): image index -> answer."""
    if request.get("error"):
        console.print(Text.assemble(("not applied: ", "red"), _safe(request["error"]), " (answer again)"))
    reviewer = _user()
    answers: dict[str, Any] = {}
    ended = False
    for call in request["calls"]:
        answer: dict[str, Any] = {"action": "reject", "reason": NO_ANSWER}
        if not ended:
            show(call, request.get("round", 0), console)
            try:
                answer = _answer(call, console)
            except EOFError:  # stdin ended: this call and the ones after it are not approved
                ended = True
                answer = {"action": "reject", "reason": NO_ANSWER}
                console.print(f"\n[yellow]{NO_ANSWER}[/yellow]: rejected")
        answers[str(call["index"])] = {**answer, "reviewer": reviewer} if reviewer else answer
    return answers


def show(call: Mapping[str, Any], round_: int, console: Console) -> None:
    """One pending call: its tool, description and params (code highlighted)."""
    params = call.get("params") or {}
    title = f"image {call['index']}: {call.get('source')}" + (f" (repair round {round_})" if round_ else "")
    body: Any
    if call.get("source") == "code" and isinstance(params.get("code"), str):
        body = Syntax(_safe(params["code"]), "python", word_wrap=True)
    else:
        body = Text("\n".join(f"{key}: {_safe(str(value))}" for key, value in params.items()))
    console.print(Panel(body, title=Text(title), subtitle=Text(_safe(call.get("description") or ""))))


def _answer(call: Mapping[str, Any], console: Console) -> dict[str, Any]:
    while True:
        choice = Prompt.ask("approve, edit or reject?", choices=["a", "e", "r"], console=console)
        if choice == "a":
            return {"action": "approve"}
        if choice == "r":
            reason = Prompt.ask("reason (optional)", default="", show_default=False, console=console).strip()
            return {"action": "reject", "reason": reason} if reason else {"action": "reject"}
        params = _edit(call, console)
        if params is not None:
            return {"action": "edit", "params": params}
        console.print("no change")


def _edit(call: Mapping[str, Any], console: Console) -> dict[str, Any] | None:
    """The reviewer's new params for the call; None when nothing changed."""
    key = MAIN_PARAM.get(str(call.get("source")), "prompt")
    current = str((call.get("params") or {}).get(key, ""))
    text: str | None = None
    if sys.stdin.isatty():
        with contextlib.suppress(click.ClickException):  # no editor to open: read the text below
            edited = click.edit(current, extension=".py" if key == "code" else ".txt", require_save=True)
            if edited is None:
                return None
            text = edited.rstrip("\n")
    if text is None:
        console.print(f"the new {key} (or the params as JSON), then a line holding only '.':")
        lines: list[str] = []
        while True:
            try:
                line = console.input()
            except EOFError:
                if not lines:
                    raise
                break
            if line == ".":
                break
            lines.append(line)
        text = "\n".join(lines)
    if text == current:
        return None
    if text.lstrip().startswith("{"):
        with contextlib.suppress(ValueError):
            params = json.loads(text)
            if isinstance(params, dict):
                return params
    return {key: text}


def _checkpointer() -> InMemorySaver:
    """Checkpoints for one run in this process, whose serializer knows the types the state holds (so it restores
    them without LangGraph's warning about unregistered types)."""
    return InMemorySaver(serde=serializer())


@contextlib.contextmanager
def _paused(live: Any) -> Any:
    """Stop a rich Live display while the person answers."""
    if live is None:
        yield
        return
    live.stop()
    try:
        yield
    finally:
        live.start()


def _user() -> str | None:
    try:
        return getpass.getuser()
    except (OSError, KeyError, ImportError):
        return None


def _safe(text: str) -> str:
    """Model-written text for the terminal: control characters (escape sequences) shown, not obeyed."""
    return "".join(ch if ch.isprintable() or ch in "\n\t" else ascii(ch)[1:-1] for ch in text)
