"""The graph's verbs: `llmi run "PROMPT"` (one prompt in, an interleaved report out: HTML, Markdown,
trajectory.json), `llmi batch` and `llmi embedded-model`. The root command, `llmi.cli`, mounts them beside the other
packages' verbs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path
from typing import Annotated, Any, Protocol

import typer
from pydantic import ValidationError
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from llmi_graph._cli_config import CliError, console
from llmi_graph._extras import MissingExtra, require
from llmi_graph.config import Config
from llmi_graph.graph import InputError, PolicyError, image_store
from llmi_graph.policy import SHIPPED_ADAPTER, explicit_adapter, resolve_adapter
from llmi_graph.report import write_report
from llmi_graph.state import Request, State
from llmi_graph.store import InvalidImageError, data_url
from llmi_graph.tags import SOURCES
from llmi_graph.toolbox import Toolbox, close_toolboxes, toolbox_for

app = typer.Typer(add_completion=False, no_args_is_help=True, help="llmi: interleaved text-and-image documents.")
ADAPTER_HELP = (
    "The embedded policy's LoRA adapter: 'shipped' (the default, packaged with llmi), a folder rl/train.py saved, "
    "or 'none' (the base model)."
)


@app.callback()
def _root() -> None:
    """llmi: a policy LLM writes text with image tags; search, diffusion, code and edit tools fill them in."""


# Operator options that `llmi run` and `llmi batch` share (one declaration, one help line).
CacheDirOption = Annotated[str | None, typer.Option(help="Model cache and image store (default ~/.cache/llmi).")]
SearchBackendOption = Annotated[str | None, typer.Option(help="auto, serpapi, library or none.")]
LibraryOption = Annotated[str | None, typer.Option(help="A folder of images for the library search backend.")]
DiffusionBackendOption = Annotated[str | None, typer.Option(help="auto, server, diffusers, openai or none.")]
EditBackendOption = Annotated[str | None, typer.Option(help="auto, server, diffusers, openai, local or none.")]
CodeBackendOption = Annotated[str | None, typer.Option(help="auto, local or e2b.")]
ImageServerOption = Annotated[
    list[str] | None, typer.Option(help="A Qwen-Image server URL for diffusion (repeatable).")
]
EditServerOption = Annotated[
    list[str] | None, typer.Option(help="A Qwen-Image-Edit server URL for edits (repeatable).")
]
SelectOption = Annotated[
    str | None, typer.Option(help="How to choose among the candidates: rules (default), judge or relative.")
]
JudgeUrlOption = Annotated[
    str | None, typer.Option(envvar="LLMI_JUDGE_URL", help="LLM judge base URL (for --select judge/relative).")
]
JudgeModelOption = Annotated[str, typer.Option(envvar="LLMI_JUDGE_MODEL", help="LLM judge model.")]
MllmUrlOption = Annotated[
    str | None,
    typer.Option(envvar="LLMI_MLLM_JUDGE_URL", help="Multimodal judge URL: with --enhance, it picks search results."),
]
MllmModelOption = Annotated[str, typer.Option(envvar="LLMI_MLLM_JUDGE_MODEL", help="Multimodal judge model.")]


@app.command()
def run(
    ctx: typer.Context,
    prompt: Annotated[str, typer.Argument(help="What the document should be about.")],
    image: Annotated[
        list[Path] | None,
        typer.Option("--image", "-i", help="An input image (repeatable); edits can use it."),
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output folder (default llmi-out/<time>).")] = None,
    policy_url: Annotated[
        str | None, typer.Option(help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1.")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Model name at --policy-url.")] = None,
    adapter: Annotated[str | None, typer.Option(help=ADAPTER_HELP)] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Most tokens the policy may write.")] = None,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature (0: greedy).")] = None,
    seed: Annotated[int | None, typer.Option(help="Sampling seed.")] = None,
    repair_rounds: Annotated[
        int | None, typer.Option(min=0, help="Rounds of repair: failed images go back to the policy with the reason.")
    ] = None,
    candidates: Annotated[
        int | None, typer.Option(min=1, help="Sample this many drafts and keep the best (test-time scaling).")
    ] = None,
    select: SelectOption = None,
    enhance: Annotated[
        bool | None, typer.Option("--enhance/--no-enhance", help="Tool-specific enhancement (detailed prompts, ...).")
    ] = None,
    polish: Annotated[
        bool | None, typer.Option("--polish/--no-polish", help="Rewrite the text around the final images.")
    ] = None,
    judge_url: JudgeUrlOption = None,
    judge_model: JudgeModelOption = "default",
    mllm_url: MllmUrlOption = None,
    mllm_model: MllmModelOption = "default",
    image_num: Annotated[int, typer.Option(help="Expected images: -1 none, 0 any, 99 at least one, N exactly N.")] = 0,
    tools: Annotated[
        str | None, typer.Option(help=f"Comma-separated tools this request may use ({','.join(SOURCES)}).")
    ] = None,
    cache_dir: CacheDirOption = None,
    search_backend: SearchBackendOption = None,
    library: LibraryOption = None,
    diffusion_backend: DiffusionBackendOption = None,
    edit_backend: EditBackendOption = None,
    code_backend: CodeBackendOption = None,
    image_server: ImageServerOption = None,
    edit_server: EditServerOption = None,
    tool_cache: Annotated[
        bool | None, typer.Option("--tool-cache/--no-tool-cache", help="Reuse identical tool calls across runs.")
    ] = None,
    approve: Annotated[
        str | None,
        typer.Option(help="Tools whose calls you approve, edit or reject at the terminal (e.g. code,search)."),
    ] = None,
) -> None:
    """Write an interleaved document for PROMPT and save it as HTML, Markdown and trajectory.json."""
    try:
        sampling = {"max_tokens": max_tokens, "temperature": temperature, "seed": seed}
        request = _request(prompt, image or [], image_num, tools, sampling)
        # The command line is the operator: its --max-tokens also lifts the cap when it is above it.
        cfg = Config.from_env(
            policy_url=policy_url, policy_model=model, adapter=adapter, max_tokens=max_tokens,
            repair_rounds=repair_rounds, candidates=candidates, select=select, enhance=enhance, polish=polish,
            cache_dir=cache_dir, search_backend=search_backend,
            search_library_dir=library,
            diffusion_backend=diffusion_backend, edit_backend=edit_backend, code_backend=code_backend,
            image_server_urls=",".join(image_server) if image_server else None,
            edit_server_urls=",".join(edit_server) if edit_server else None, tool_cache=tool_cache,
            approve=approve,
        )  # fmt: skip
        toolbox = toolbox_for(cfg)
        _check_adapter(adapter, policy_url, cfg)
        scorers = _scorers(_judging(ctx), cfg.select, judge_url, judge_model)
        chooser = _chooser(_judging(ctx), cfg, mllm_url, mllm_model)
        out_dir = _prepare_out(out)
    except (CliError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    _describe_tools(cfg, toolbox)
    try:
        state = State.model_validate(asyncio.run(_run_graph(request, cfg, scorers=scorers, chooser=chooser)))
        paths = write_report(state, out_dir, image_store(cfg), cfg)
    except (PolicyError, InputError, OSError) as exc:  # write_report is all or nothing: --out is as it was
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]")
        raise typer.Exit(130) from None
    ok = sum(1 for r in state.results if r.status == "ok")
    repaired = len({r.index for r in state.repairs} & {r.index for r in state.results if r.status == "ok"})
    console.print(
        f"[green]done[/green] {len(state.calls)} image tag(s), {ok} made, {len(state.calls) - ok} failed"
        + (f" ({len(state.repairs)} repair turn(s), {repaired} slot(s) repaired)" if state.repairs else "")
        + f" in {state.timings.get('total_s', 0):.1f} s"
    )
    if state.drafts:
        console.print(
            f"chose draft {state.selected} of {len(state.drafts)} ({state.selector} scores: "
            + ", ".join(f"{c.score:.2f}" for c in state.drafts if c.score is not None)
            + ")"
        )
    typer.echo(f"Report: {paths.html}")
    typer.echo(f"Markdown: {paths.markdown}")
    typer.echo(f"Trajectory: {paths.trajectory}")


class Judging(Protocol):
    """The judges the scaled graph's verbs use: draft selectors at an LLM judge and the chooser of search results at a
    multimodal one. llmi_graph never imports `judges`: the app that mounts these verbs (the `llmi` root command)
    passes them in as the click context's object, and `judges.select.AppJudging` is the real one."""

    def scorers(self, url: str, model: str) -> dict[str, Any]: ...

    def chooser(self, url: str, model: str) -> Any: ...


def _judging(ctx: typer.Context | None) -> Judging | None:
    obj = ctx.obj if ctx is not None else None
    return obj if hasattr(obj, "scorers") and hasattr(obj, "chooser") else None


def _chooser(judging: Judging | None, cfg: Config, mllm_url: str | None, mllm_model: str) -> Any:
    """With --enhance and a multimodal judge: the chooser that picks among a search's top results."""
    if not (cfg.enhance and mllm_url):
        return None
    if judging is None:
        raise CliError(NO_JUDGING.format(what="--mllm-url"))
    return judging.chooser(mllm_url, mllm_model)


def _scorers(judging: Judging | None, select: str, judge_url: str | None, judge_model: str) -> dict[str, Any]:
    """The judge selectors for the scaled graph, from the judges the app passed in."""
    if select not in ("rules", "judge", "relative"):
        raise CliError(f"--select {select}: expected rules, judge or relative")
    if select == "rules":
        return {}
    if not judge_url:
        raise CliError(f"--select {select} needs a judge: --judge-url (or LLMI_JUDGE_URL)")
    if judging is None:
        raise CliError(NO_JUDGING.format(what=f"--select {select}"))
    return judging.scorers(judge_url, judge_model)


NO_JUDGING = (
    "{what} needs the judges the `llmi` command passes to this verb; this command was started without them "
    "(run it as `llmi run` / `llmi batch`, or invoke its app with obj=judges.select.AppJudging())"
)


def _request(
    prompt: str, images: list[Path], image_num: int, tools: str | None, sampling: dict[str, Any]
) -> dict[str, Any]:
    """The graph input for the command line: the user's own image files are read here and sent as data."""
    if not prompt.strip():
        raise CliError("the prompt is empty: say what the document should be about")
    encoded = []
    for path in images:
        if not path.is_file():
            raise CliError(f"--image {path}: no such file")
        try:
            encoded.append(data_url(path.read_bytes()))
        except InvalidImageError as exc:
            raise CliError(f"--image {path}: {exc}") from None
        except OSError as exc:
            raise CliError(f"--image {path}: cannot read it ({exc.strerror})") from None
    allowed = [t.strip() for t in tools.split(",") if t.strip()] if tools is not None else None
    request = {
        "prompt": prompt,
        "images": encoded,
        "image_num": image_num,
        "allowed_tools": allowed,
        **{k: v for k, v in sampling.items() if v is not None},
    }
    try:
        Request.model_validate(request)  # the same checks the graph makes, before any work
    except ValidationError as exc:
        raise CliError("; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())) from None
    return request


def _prepare_out(out: Path | None) -> Path:
    """Check the output folder before any work: a new one we can create, or an empty one. Nothing is made
    until the report is written (all or nothing), so a run that fails leaves no trace."""
    if out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out, n = Path("llmi-out") / stamp, 1
        while os.path.lexists(out):
            n += 1
            out = Path("llmi-out") / f"{stamp}-{n}"
    if os.path.lexists(out) and not out.is_dir():
        raise CliError(f"--out {out} exists and is not a folder")
    if out.is_dir():
        try:
            if any(out.iterdir()):
                raise CliError(
                    f"--out {out} is not empty: pick a new folder (llmi never overwrites files it did not write)"
                )
        except OSError as exc:
            raise CliError(f"--out {out}: cannot read it ({exc.strerror})") from None
        if not os.access(out, os.W_OK | os.X_OK):
            raise CliError(f"--out {out}: the folder is not writable")
        return out
    parent = next(p for p in out.absolute().parents if os.path.lexists(p))
    if not parent.is_dir():
        raise CliError(f"--out {out}: cannot create it ({parent} is not a folder)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CliError(f"--out {out}: cannot create it ({parent} is not writable)")
    return out


def _describe_tools(cfg: Config, toolbox: Toolbox) -> None:
    """Say which backend serves each tool, and why a tool has none; warn loudly about unisolated code."""
    from tools.code import LocalSandbox, bwrap_works

    parts = []
    for source in SOURCES:
        backend = toolbox.backend(source)
        parts.append(f"{source}: {getattr(backend, 'name', type(backend).__name__)}" if backend else f"{source}: -")
    console.print("tools  " + "  ".join(parts), highlight=False)
    if not cfg.policy_url:
        adapter = resolve_adapter(cfg.adapter, cfg.embedded_model_path)
        named = (
            "the shipped LoRA adapter" if adapter == SHIPPED_ADAPTER else (str(adapter) if adapter else "no adapter")
        )
        hint = " (--adapter none for the base model)" if adapter else ""
        model = Path(cfg.embedded_model_path).name if cfg.embedded_model_path else "SmolLM2-135M-Instruct"
        console.print(f"policy embedded {model} with {named}{hint}", highlight=False)
    for source in SOURCES:
        if toolbox.backend(source) is None:
            console.print(f"[dim]  {source}: {escape(toolbox.missing_reason(source))}[/dim]", highlight=False)
    if isinstance(toolbox.backend("code"), LocalSandbox) and not bwrap_works():
        if cfg.allow_unsandboxed_code:
            console.print("[bold red]WARNING: model-written code will run WITHOUT isolation (opted in).[/bold red]")
        else:
            console.print(
                "[yellow]warning:[/yellow] bubblewrap (bwrap) is unavailable, so the code tool will refuse to run "
                "model code. Install it (apt-get install bubblewrap) or set LLMI_ALLOW_UNSANDBOXED_CODE=1 (unsafe)."
            )


async def _run_graph(
    request: dict[str, Any], cfg: Config, *, scorers: dict[str, Any] | None = None, chooser: Any = None
) -> dict[str, Any]:
    """Run the graph (`graph_for`: the scaled one when the config asks for scaling) with live progress; the final
    state as data."""
    from llmi_graph._approve_cli import stream_with_approval
    from llmi_graph.scaling import graph_for

    def build(checkpointer: Any) -> Any:  # with --approve, a checkpointer, so the run can stop to ask
        return graph_for(cfg, scorers=scorers, chooser=chooser, checkpointer=checkpointer)

    progress = _Progress(cfg)
    final: dict[str, Any] | None = None
    try:
        with progress.live() as live:
            async for namespace, mode, chunk in stream_with_approval(
                build, request, cfg, stream_mode=["custom", "values"], console=console, live=live
            ):
                if mode == "custom":
                    progress.update(chunk)
                elif not namespace:  # the outer graph's state, not a subgraph's
                    final = chunk
    finally:
        await close_toolboxes()
    assert final is not None
    return final


class _Progress:
    """A live view of the planner and each tool call (a line per change when not on a terminal)."""

    def __init__(self, cfg: Config):
        self.backend = f"policy at {cfg.policy_url} ({cfg.policy_model})" if cfg.policy_url else "embedded policy"
        self.planner = "waiting"
        self.started = time.perf_counter()
        self.tools: dict[int, dict[str, Any]] = {}
        self._live: Live | None = None

    def live(self) -> Any:
        if console.is_terminal:
            self._live = Live(self, console=console, refresh_per_second=4, transient=False)
            return self._live
        return contextlib.nullcontext()

    def update(self, event: dict[str, Any]) -> None:
        if event.get("event") == "planner":
            tokens = event.get("tokens")
            self.planner = event["status"] + (f", {tokens} tokens" if tokens else "")
            line = f"planner: {self.planner}"
        elif event.get("event") == "tool":
            row = self.tools.setdefault(event["index"], {})
            row.update({k: v for k, v in event.items() if v is not None})
            line = f"image {event['index']} ({row.get('source') or 'invalid'}): {row['status']}"
            if event.get("error"):
                line += f": {event['error']}"
        elif event.get("event") in ("candidates", "select"):
            if event["event"] == "select":
                self.planner = f"chose draft {event['selected']} ({event['selector']})"
            else:
                passed = f", {event['passed']} pass validation" if "passed" in event else ""
                self.planner = f"{event['k']} candidates: {event['status']}{passed}"
            line = f"planner: {self.planner}"
        elif event.get("event") == "repair":
            what = f"image {event['index']}: {event['status']}" if "index" in event else event["status"]
            self.planner = f"repair round {event['round']}, {what}" + (
                f" ({event['error']})" if event.get("error") else ""
            )
            line = f"planner: {self.planner}"
        else:
            return
        if self._live is not None:
            self._live.refresh()
        elif not (event.get("event") == "planner" and event.get("tokens") and event["status"] == "writing"):
            console.print(line, highlight=False)

    def __rich__(self) -> Table:  # re-rendered on every refresh, so the clock ticks between events
        return self._render()

    def _render(self) -> Table:
        table = Table.grid(padding=(0, 2))
        elapsed = time.perf_counter() - self.started
        table.add_row(Text("planner", style="bold"), Text(f"{self.planner} ({self.backend}, {elapsed:.0f} s)"))
        styles = {"ok": "green", "failed": "red", "running": "yellow", "queued": "dim"}
        for index, row in sorted(self.tools.items()):
            status = row.get("status", "")
            detail = row.get("error") or row.get("description") or ""
            latency = f" {row['latency_s']:.1f}s" if "latency_s" in row else ""
            table.add_row(
                Text(f"image {index}", style="bold"),
                Text(
                    f"{row.get('source') or 'invalid'}: {status}{latency}  {detail}"[:160],
                    style=styles.get(status, ""),
                ),
            )
        return table


@app.command()
def batch(
    ctx: typer.Context,
    data: Annotated[Path, typer.Argument(help="Rows in the LLM-I format (JSONL or parquet): prompt, image_num, ...")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The batch folder (a rerun resumes it).")],
    samples: Annotated[int, typer.Option(help="Samples per row (GRPO-style groups, best-of-N).")] = 1,
    concurrency: Annotated[int, typer.Option(help="Samples in flight at once.")] = 4,
    limit: Annotated[int | None, typer.Option(help="Only the first N rows.")] = None,
    checkpoint_url: Annotated[
        str | None,
        typer.Option(help="postgresql://... for LangGraph's Postgres saver (default: DIR/checkpoints.sqlite)."),
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(
            help="Run the samples on Ray workers: `local` (an instance on this machine), `auto` (the cluster "
            "this machine is in) or the head's HOST:PORT. Several machines need --checkpoint-url postgresql://."
        ),
    ] = None,
    ray_workers: Annotated[
        int | None,
        typer.Option(help="Ray workers (default: one per cluster CPU, at most --concurrency); --concurrency is split."),
    ] = None,
    policy_url: Annotated[
        str | None, typer.Option(help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1.")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Model name at --policy-url.")] = None,
    adapter: Annotated[str | None, typer.Option(help=ADAPTER_HELP)] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Most tokens the policy may write.")] = None,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature (0: greedy).")] = None,
    seed: Annotated[int | None, typer.Option(help="Sampling seed (each sample adds its number to it).")] = None,
    cache_dir: CacheDirOption = None,
    search_backend: SearchBackendOption = None,
    library: LibraryOption = None,
    diffusion_backend: DiffusionBackendOption = None,
    edit_backend: EditBackendOption = None,
    code_backend: CodeBackendOption = None,
    image_server: ImageServerOption = None,
    edit_server: EditServerOption = None,
    tool_cache: Annotated[
        bool | None, typer.Option("--tool-cache/--no-tool-cache", help="Reuse identical tool calls across samples.")
    ] = None,
    repair_rounds: Annotated[
        int | None, typer.Option(min=0, help="Rounds of repair: failed images go back to the policy with the reason.")
    ] = None,
    candidates: Annotated[
        int | None, typer.Option(min=1, help="Drafts sampled per sample; --select keeps one.")
    ] = None,
    select: SelectOption = None,
    enhance: Annotated[bool | None, typer.Option("--enhance/--no-enhance", help="Tool-specific enhancement.")] = None,
    polish: Annotated[
        bool | None, typer.Option("--polish/--no-polish", help="Rewrite the text around the images.")
    ] = None,
    judge_url: JudgeUrlOption = None,
    judge_model: JudgeModelOption = "default",
    mllm_url: MllmUrlOption = None,
    mllm_model: MllmModelOption = "default",
) -> None:
    """Run every row of DATA (SAMPLES times each) into OUT: durable, resumable, one report per sample."""
    from llmi_graph.batch import BatchError, BatchSettings, rows_to_items
    from llmi_graph.rows import load_rows

    try:
        cfg = _operator_config(
            policy_url=policy_url, model=model, adapter=adapter, max_tokens=max_tokens, temperature=temperature,
            seed=seed, cache_dir=cache_dir, search_backend=search_backend, library=library,
            diffusion_backend=diffusion_backend, edit_backend=edit_backend, code_backend=code_backend,
            image_server=image_server, edit_server=edit_server, tool_cache=tool_cache,
            repair_rounds=repair_rounds, candidates=candidates, select=select, enhance=enhance, polish=polish,
        )  # fmt: skip
        scorers = _scorers(_judging(ctx), cfg.select, judge_url, judge_model)
        chooser = _chooser(_judging(ctx), cfg, mllm_url, mllm_model)
        rows = load_rows(data)[:limit] if limit is not None else load_rows(data)
        items = rows_to_items(rows)
        settings = BatchSettings(
            out=out, samples=samples, concurrency=concurrency, checkpoint_url=checkpoint_url,
            ray_address=ray_address, ray_workers=ray_workers,
        )  # fmt: skip
    except (CliError, BatchError, ValueError, FileNotFoundError, MissingExtra) as exc:
        console.print(f"[red]error:[/red] {exc if isinstance(exc, CliError) else escape(str(exc))}")
        raise typer.Exit(2) from None
    _describe_tools(cfg, toolbox_for(cfg))
    code = run_batch_with_progress(items, settings, cfg, source=str(data.resolve()), scorers=scorers, chooser=chooser)
    raise typer.Exit(code)


def _check_adapter(adapter: str | None, policy_url: str | None, cfg: Config | None = None) -> None:
    """--adapter names a LoRA folder, 'shipped' or 'none'; a folder is for the embedded policy only. With `cfg`, the
    adapter the embedded policy will load (LLMI_ADAPTER, default 'shipped') is checked too, before any work."""
    if explicit_adapter(adapter) and policy_url:
        raise CliError("--adapter is for the embedded policy; at a server, load it there and pass --model NAME")
    try:
        resolve_adapter(adapter)
    except FileNotFoundError as exc:
        raise CliError(f"--adapter {adapter}: {exc}") from None
    if cfg is not None and not cfg.policy_url:
        try:
            require("embedded")
        except MissingExtra as exc:  # escaped: the commands print a CliError as rich markup
            raise CliError(escape(f"{exc}; or use a policy server: --policy-url URL --model NAME")) from None
    if cfg is not None and adapter is None and not cfg.policy_url:
        try:
            resolve_adapter(cfg.adapter, cfg.embedded_model_path)
        except FileNotFoundError as exc:
            raise CliError(f"the embedded policy's adapter (LLMI_ADAPTER={cfg.adapter}): {exc}") from None


def _operator_config(
    *,
    policy_url: str | None,
    model: str | None,
    adapter: str | None,
    max_tokens: int | None,
    temperature: float | None,
    seed: int | None,
    cache_dir: str | None,
    search_backend: str | None,
    library: str | None,
    diffusion_backend: str | None,
    edit_backend: str | None,
    code_backend: str | None,
    image_server: list[str] | None,
    edit_server: list[str] | None,
    tool_cache: bool | None,
    repair_rounds: int | None = None,
    candidates: int | None = None,
    enhance: bool | None = None,
    polish: bool | None = None,
    select: str | None = None,
) -> Config:
    """The operator config of a batch or an evaluation: the environment's, with the command line's options. A judge
    selector (`select`) needs its scorers too: `_scorers`, passed to the batch with the config."""
    cfg = Config.from_env(
        repair_rounds=repair_rounds, candidates=candidates, select=select, enhance=enhance, polish=polish,
        policy_url=policy_url, policy_model=model, adapter=adapter, max_tokens=max_tokens, temperature=temperature,
        seed=seed, cache_dir=cache_dir, search_backend=search_backend, search_library_dir=library,
        diffusion_backend=diffusion_backend, edit_backend=edit_backend, code_backend=code_backend,
        image_server_urls=",".join(image_server) if image_server else None,
        edit_server_urls=",".join(edit_server) if edit_server else None, tool_cache=tool_cache,
    )  # fmt: skip
    _check_adapter(adapter, policy_url, cfg)
    return cfg


def run_batch_with_progress(
    items: list[Any],
    settings: Any,
    cfg: Config,
    *,
    source: str | None = None,
    scorers: dict[str, Any] | None = None,
    chooser: Any = None,
) -> int:
    """Run a batch with a live progress bar (a line per sample when not on a terminal); the exit status."""
    from llmi_graph.batch import run_batch

    return run_with_progress(
        lambda on_event: run_batch(
            items, settings, cfg, source=source, on_event=on_event, scorers=scorers, chooser=chooser
        )
    )


def run_with_progress(run: Any) -> int:
    """Run `run(on_event)` (a batch, or an evaluation: a batch then its scoring) with live progress bars (a line per
    sample when not on a terminal), print what happened, and return the exit status."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from llmi_graph.batch import BatchError, BatchOutcome

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed  {task.fields[rate]}"),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal,
    )
    task = progress.add_task("samples", total=None, failed=0, rate="")
    started = time.perf_counter()
    state = {"finished": 0, "failed": 0, "scored": 0}
    scoring: list[Any] = []

    def on_event(kind: str, data: dict[str, Any]) -> None:
        if kind == "start":
            progress.update(task, total=data["total"], completed=data["done_before"])
            console.print(
                f"batch: {data['total']} sample(s), {data['done_before']} already finished, {data['pending']} to run",
                highlight=False,
            )
        elif kind == "finished":
            state["finished"] += 1
            state["failed"] += data["status"] != "ok"
            rate = 60 * state["finished"] / max(1e-9, time.perf_counter() - started)
            progress.update(task, advance=1, failed=state["failed"], rate=f"{rate:.1f}/min")
            if not console.is_terminal:
                detail = data.get("reason") or f"{data.get('images_ok', 0)} image(s), {data['wall_s']:.1f} s"
                console.print(f"{data['sample_id']}: {data['status']} ({detail})", highlight=False)
        elif kind == "policy_error" and not console.is_terminal:
            console.print(f"{data['sample_id']}: no draft ({data['reason']})", highlight=False)
        elif kind == "scoring":
            scoring.append(progress.add_task("scoring", total=data["total"], failed=0, rate=""))
            console.print(f"scoring: {data['total']} sample(s) ({data['done_before']} scored before)", highlight=False)
        elif kind == "scored" and scoring:
            state["scored"] += 1
            progress.update(scoring[0], advance=1)
            if not console.is_terminal:
                shown = "not scored" if data.get("score") is None else f"{data['score']:.3f}"
                console.print(f"{data['sample_id']}: score {shown}", highlight=False)

    async def main() -> Any:
        try:
            return await run(on_event)
        finally:
            await close_toolboxes()

    try:
        with progress:
            result = asyncio.run(main())
    except KeyboardInterrupt:
        console.print(
            f"[yellow]interrupted[/yellow]: {state['finished']} sample(s) finished and {state['scored']} scored in "
            "this run; what ran is checkpointed: run the same command again to continue"
        )
        return 130
    except (BatchError, ValueError, RuntimeError, OSError) as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        return 1
    outcome: BatchOutcome = result if isinstance(result, BatchOutcome) else result.batch
    out = Path(result.path).parent if not isinstance(result, BatchOutcome) else None
    console.print(
        f"[green]done[/green] {outcome.finished} sample(s) in {outcome.wall_s:.1f} s: {outcome.ok} ok, "
        f"{outcome.failed} failed, {outcome.skipped} skipped; {outcome.pending} pending",
        highlight=False,
    )
    if outcome.policy_errors:
        console.print(
            f"[red]{outcome.policy_errors} sample(s) got no draft from the policy[/red] (first: "
            f"{outcome.first_policy_error}); run the same command again to retry them",
            highlight=False,
        )
    if outcome.stopped:
        console.print(f"[red]stopped early:[/red] {outcome.stopped}", highlight=False)
    if out is not None:
        _print_metrics(result)
        typer.echo(f"Results: {out / 'results.json'}")
        typer.echo(f"Page: {out / 'eval.html'}")
    return 1 if outcome.policy_errors or outcome.stopped else 0


def _print_metrics(result: Any) -> None:
    table = Table(title=f"{result.benchmark}: {result.counts['ok']} sample(s) scored", title_justify="left")
    for column in ("metric", "mean ± s.e.", "n", "not scored", "judged by"):
        table.add_column(column)
    for name, m in result.metrics.items():
        se = f" ± {m.stderr:.3f}" if m.stderr is not None else ""
        value = "not scored" if m.mean is None else f"{m.mean:.3f}{se}"
        who = ", ".join(j["model"] for j in m.judged_by) or ("-" if m.judge else "rule")
        table.add_row(name, value, str(m.n), str(m.not_scored), who)
    console.print(table)


@app.command("embedded-model")
def embedded_model(
    cache_dir: Annotated[str | None, typer.Option(help="Model cache (default ~/.cache/llmi).")] = None,
) -> None:
    """Print the embedded policy's model folder (converting it from GGUF once), e.g. for serve-policy."""
    from llmi_graph._embedded import EmbeddedModelMissing, cached_model_dir

    try:
        typer.echo(cached_model_dir(Config.from_env(cache_dir=cache_dir).cache_path))
    except (EmbeddedModelMissing, MissingExtra) as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None
