"""Batch runs of the llmi graph: many requests, each sampled N times, durable and resumable.

The output folder is the contract that evaluation and the RL collector build on:

    DIR/batch.json            the batch's identity (an id, the rows' content hashes, samples, settings)
    DIR/samples/<sample_id>/  that sample's report.html, report.md, images/ and trajectory.json
    DIR/results.jsonl         one line per finished sample, appended once
    DIR/summary.json          counts, timings, throughput, the policy and backends used
    DIR/index.html            every sample, linking its report, sortable (by score when an evaluation added one)
    DIR/checkpoints.sqlite    graph checkpoints of unfinished samples (the default checkpointer)

Each sample has a deterministic thread id (`<batch id>:<sample id>`) and its graph state is checkpointed with
durability "sync". Kill the process at any moment and run the same command again: finished samples (a line in
results.jsonl) are skipped; interrupted ones resume from their checkpoint, and LangGraph does not run again the
tool calls that had finished; a sample whose report was written but whose line was not is finished from its
checkpoint. A line is appended only after its report is in place, and once.

A sample whose request is unusable is finished as `failed` with the reason; a sample whose policy gave no draft
(an endpoint down) is not finished: it stays for the next run, and the batch stops early when the policy fails
every sample it tried. Tool failures are part of the document, as in `llmi run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import html
import json
import os
import shutil
import statistics
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from llmi_graph._checkpoint import describe, open_checkpointer
from llmi_graph.config import Config
from llmi_graph.graph import InputError, PolicyError, image_store
from llmi_graph.policy import Policy
from llmi_graph.report import write_report
from llmi_graph.rows import Row
from llmi_graph.state import State, cost
from llmi_graph.tags import SOURCES
from llmi_graph.toolbox import ImageChooser, Toolbox, toolbox_for

if TYPE_CHECKING:
    from llmi_graph.scaling import DraftScorer

BATCH_VERSION = 1
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


class BatchError(RuntimeError):
    """The batch cannot start or go on (a changed data file, an unusable output folder, the policy down)."""


@dataclass(frozen=True)
class BatchItem:
    """One row of a batch: its id, the graph request, and data carried into its results line."""

    row_id: str
    request: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)
    skip: str | None = None  # why it cannot run here: finished as `skipped` with this reason

    def content_hash(self) -> str:
        """What the row asks for; a rerun refuses a folder whose rows changed."""
        payload = json.dumps({"request": self.request, "skip": self.skip}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass
class BatchSettings:
    """How to run a batch (the CLI options of `llmi batch`)."""

    out: Path
    samples: int = 1
    concurrency: int = 4
    checkpoint_url: str | None = None
    ray_address: str | None = None
    ray_workers: int | None = None


@dataclass
class BatchOutcome:
    """What one invocation did."""

    total: int
    done_before: int
    finished: int = 0
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    policy_errors: int = 0
    first_policy_error: str | None = None
    interrupted: bool = False
    stopped: str | None = None  # why the batch stopped early
    wall_s: float = 0.0

    @property
    def pending(self) -> int:
        return self.total - self.done_before - self.finished


def sample_id(row_id: str, sample: int) -> str:
    return f"{row_id}--s{sample}"


def rows_to_items(rows: Sequence[Row]) -> list[BatchItem]:
    """Batch items for LLM-I rows: the row's own id when it has one (made file-safe), else its position."""
    items, seen = [], set()
    for i, row in enumerate(rows):
        row_id = _safe_id(row.id) if row.id else f"row-{i:05d}"
        if row_id in seen:
            raise BatchError(f"two rows have the id {row_id!r}: ids must be unique")
        seen.add(row_id)
        items.append(
            BatchItem(row_id=row_id, request=row.request(), meta={"tools": list(row.tools), "image_num": row.image_num})
        )
    return items


def _safe_id(value: str) -> str:
    text = "".join(c if c in _ID_CHARS else "-" for c in value).strip("-.")
    return text[:120] or "row"


# --- the ledger: results.jsonl ---------------------------------------------------------------------------


class Ledger:
    """results.jsonl: one line per finished sample, appended once, each write flushed to disk.

    A line torn by a crash (no newline at the end) is cut off when the ledger opens; that sample is simply
    not finished yet."""

    def __init__(self, path: Path):
        self.path = path
        self.records: dict[str, dict[str, Any]] = {}
        self._lock = asyncio.Lock()
        if path.is_file():
            self._load()
        else:
            path.touch()

    def _load(self) -> None:
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # a torn last line
            with open(self.path, "r+b") as fh:
                fh.truncate(end)
        for number, line in enumerate(data[:end].splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                raise BatchError(f"{self.path} line {number} is not JSON: the file was edited by hand?") from None
            self.records[record["sample_id"]] = record

    def __contains__(self, sample: str) -> bool:
        return sample in self.records

    async def append(self, record: dict[str, Any]) -> bool:
        """Append `record` unless its sample is already in; whether it was appended."""
        async with self._lock:
            if record["sample_id"] in self.records:
                return False
            line = json.dumps(record, ensure_ascii=False) + "\n"
            write = asyncio.ensure_future(asyncio.to_thread(_append_line, self.path, line))
            try:
                await asyncio.shield(write)
            finally:
                if not write.done():  # cancelled (Ctrl-C) mid-write: the thread writes the line anyway, so wait
                    await asyncio.wait({write})  # for it and keep the ledger (and the summary) in step with the file
                if not write.cancelled() and write.exception() is None:
                    self.records[record["sample_id"]] = record
            return True


def _append_line(path: Path, line: str) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


# --- identity: batch.json ------------------------------------------------------------------------------


def _identity(out: Path, items: Sequence[BatchItem], settings: BatchSettings, source: str | None) -> dict[str, Any]:
    """Create batch.json, or check that a rerun asks for the same rows (more rows or samples are fine)."""
    path = out / "batch.json"
    hashes = {item.row_id: item.content_hash() for item in items}
    if path.is_file():
        try:
            identity = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            raise BatchError(f"{path} is not JSON: is {out} a batch folder?") from None
        if identity.get("version") != BATCH_VERSION or "batch_id" not in identity:
            raise BatchError(f"{path} is not an llmi batch (version {identity.get('version')})")
        changed = [r for r, h in hashes.items() if r in identity["rows"] and identity["rows"][r] != h]
        if changed:
            raise BatchError(
                f"{len(changed)} row(s) changed since this batch began (first: {changed[0]}): "
                f"use a new --out folder for new data"
            )
        identity["rows"].update(hashes)
        identity["samples"] = max(identity.get("samples", 1), settings.samples)
    else:
        if out.exists() and any(p.name not in {"checkpoints.sqlite"} for p in out.iterdir()):
            raise BatchError(f"--out {out} is not empty and not a batch folder: pick a new folder")
        identity = {
            "version": BATCH_VERSION,
            "batch_id": uuid.uuid4().hex[:16],
            "created_at": time.time(),
            "source": source,
            "samples": settings.samples,
            "rows": hashes,
        }
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(identity, indent=1), encoding="utf-8")
    os.replace(tmp, path)
    return identity


# --- running samples -----------------------------------------------------------------------------------


@dataclass
class BatchSample:
    """One sample of a row: the row, its number, and its deterministic thread id."""

    item: BatchItem
    sample: int
    thread_id: str
    seed: int | None = None  # the batch's base seed; sample k samples with seed + k

    @property
    def id(self) -> str:
        return sample_id(self.item.row_id, self.sample)

    def request(self) -> dict[str, Any]:
        """The row's request; with a seed, each sample of the row gets its own (seed + sample number)."""
        request = dict(self.item.request)
        base = request.get("seed", self.seed)
        if base is not None:
            request["seed"] = int(base) + self.sample
        return request


async def run_sample(graph: Any, sample: BatchSample) -> State:
    """Run (or resume, or read back) one sample's graph on its thread."""
    thread = {"configurable": {"thread_id": sample.thread_id}}
    snapshot = await graph.aget_state(thread)
    # `snapshot.tasks` holds the step in progress, including tasks whose writes were saved before a crash
    # (`snapshot.next` leaves those out, so it can be empty for a run that has not finished).
    if snapshot.tasks:
        final = await graph.ainvoke(None, thread, durability="sync")  # resume where it stopped
    elif not snapshot.values:
        final = await graph.ainvoke(sample.request(), thread, durability="sync")
    else:
        final = snapshot.values  # finished before a crash that came before its results line
    return State.model_validate(final)


class SampleExecutor(Protocol):
    """Where samples run: in this process (`LocalExecutor`), or on Ray workers (`llmi_graph._ray`). `run` raises
    `PolicyError` or `InputError` as the graph does; `forget` drops a finished sample's checkpoints."""

    async def run(self, sample: BatchSample) -> State: ...

    async def forget(self, sample: BatchSample) -> None: ...


class LocalExecutor:
    """Samples run on this process's event loop, checkpointed by the batch's checkpointer."""

    def __init__(self, graph: Any, saver: Any):
        self.graph, self.saver = graph, saver

    async def run(self, sample: BatchSample) -> State:
        return await run_sample(self.graph, sample)

    async def forget(self, sample: BatchSample) -> None:
        with contextlib.suppress(Exception):
            await self.saver.adelete_thread(sample.thread_id)


@contextlib.asynccontextmanager
async def local_executor(
    settings: BatchSettings,
    out: Path,
    cfg: Config,
    policy: Policy | None,
    toolbox: Toolbox | None,
    *,
    scorers: Mapping[str, DraftScorer] | None = None,
    chooser: ImageChooser | None = None,
) -> AsyncIterator[SampleExecutor]:
    async with open_checkpointer(settings.checkpoint_url, out / "checkpoints.sqlite") as saver:
        from llmi_graph.scaling import graph_for

        graph = graph_for(cfg, policy, toolbox, checkpointer=saver, scorers=scorers, chooser=chooser)
        yield LocalExecutor(graph, saver)


def _record(sample: BatchSample, state: State | None, status: str, reason: str | None, wall_s: float) -> dict[str, Any]:
    record: dict[str, Any] = {
        "sample_id": sample.id,
        "row_id": sample.item.row_id,
        "sample": sample.sample,
        "status": status,
        "reason": reason,
        "finished_at": round(time.time(), 3),
        "wall_s": round(wall_s, 3),
        "meta": sample.item.meta,
    }
    if state is not None:
        ok = sum(1 for r in state.results if r.status == "ok")
        record.update(
            report=f"samples/{sample.id}/report.html",
            prompt=state.prompt[:300],
            image_num=state.image_num,
            tags=len(state.calls),
            valid_tags=sum(c.valid for c in state.calls),
            images_ok=ok,
            images_failed=len(state.calls) - ok,
            tools={s: sum(1 for c in state.calls if c.source == s) for s in SOURCES},
            tokens=len(state.policy.completion_token_ids or []) if state.policy else None,
            cost=cost(state),
            repairs=len(state.repairs),
            timings={k: round(v, 3) for k, v in state.timings.items() if k.endswith("_s")},
        )
    return record


def _write_sample_report(state: State, folder: Path, cfg: Config) -> None:
    """Write the sample's report; a folder left by a run killed before its results line is ours to replace."""
    if folder.exists():
        shutil.rmtree(folder)
    write_report(state, folder, image_store(cfg), cfg)


async def run_batch(
    items: Sequence[BatchItem],
    settings: BatchSettings,
    cfg: Config,
    *,
    policy: Policy | None = None,
    toolbox: Toolbox | None = None,
    source: str | None = None,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
    scorers: Mapping[str, DraftScorer] | None = None,
    chooser: ImageChooser | None = None,
) -> BatchOutcome:
    """Run every item `settings.samples` times into `settings.out`, resuming what an earlier run left.

    `scorers` and `chooser` are the scaled graph's judges (`build_scaled_graph`): a judge selector (`cfg.select`)
    needs its scorer, passed in by the app that composes the batch (`llmi batch`, `llmi eval`).
    `on_event(kind, data)` sees "start" (total, pending), "finished" (the record) and "policy_error" (the reason).
    Cancelling the call (Ctrl-C) stops it cleanly: what finished is recorded, what ran is checkpointed."""
    if settings.samples < 1 or settings.concurrency < 1:
        raise BatchError("--samples and --concurrency must be at least 1")
    if cfg.select != "rules" and cfg.select not in (scorers or {}):
        raise BatchError(
            f"select={cfg.select!r}: the {cfg.select} selector needs a judge, and none was passed in "
            "(llmi batch / llmi eval: --judge-url, or LLMI_JUDGE_URL)"
        )
    if cfg.approval_tools:
        # a batch has no one to ask: its runs would stop at the interrupt and end without a document
        raise BatchError(
            f"approve={cfg.approve!r} (LLMI_APPROVE): a batch cannot wait for a person's approval; unset it for "
            "llmi batch and llmi eval (approval is for llmi run and LangGraph API clients)"
        )
    out = settings.out.resolve()
    emit = on_event or (lambda kind, data: None)
    identity = await asyncio.to_thread(_identity, out, items, settings, source)
    ledger = await asyncio.to_thread(Ledger, out / "results.jsonl")
    (out / "samples").mkdir(exist_ok=True)
    all_samples = [
        BatchSample(item, k, f"{identity['batch_id']}:{sample_id(item.row_id, k)}", cfg.seed)
        for item in items
        for k in range(settings.samples)
    ]
    todo = [s for s in all_samples if s.id not in ledger]
    outcome = BatchOutcome(total=len(all_samples), done_before=len(all_samples) - len(todo))
    started = time.perf_counter()
    emit("start", {"total": outcome.total, "pending": len(todo), "done_before": outcome.done_before})
    await asyncio.to_thread(_write_settings, out, settings, cfg, toolbox, scorers, chooser)

    async def finish(sample: BatchSample, state: State | None, status: str, reason: str | None, wall: float) -> None:
        record = _record(sample, state, status, reason, wall)
        if state is not None:
            await asyncio.to_thread(_write_sample_report, state, out / "samples" / sample.id, cfg)
        if await ledger.append(record):
            outcome.finished += 1
            outcome.ok += status == "ok"
            outcome.failed += status == "failed"
            outcome.skipped += status == "skipped"
            emit("finished", record)

    if settings.ray_address:
        if policy is not None or toolbox is not None:
            raise BatchError("with --ray-address the workers build their policy and tools from the config: pass none")
        from llmi_graph._ray import ray_executor

        executor_context = ray_executor(settings, out, cfg, scorers=scorers, chooser=chooser)
    else:
        executor_context = local_executor(settings, out, cfg, policy, toolbox, scorers=scorers, chooser=chooser)

    async def forget_finished(executor: SampleExecutor) -> None:
        """A kill between recording a sample and forgetting its checkpoints leaves them behind, and a finished sample
        never runs again: a rerun forgets every finished one (deleting what is not there is cheap)."""
        gate = asyncio.Semaphore(max(settings.concurrency, 8))

        async def forget(sample: BatchSample) -> None:
            async with gate:
                await executor.forget(sample)

        await asyncio.gather(*(forget(s) for s in all_samples if s.id in ledger))

    if not todo:  # nothing to run: start no Ray workers; a local checkpointer only to forget what a kill left
        if outcome.done_before and not settings.ray_address:
            async with executor_context as executor:
                await forget_finished(executor)
        await asyncio.to_thread(write_summary, out, identity, ledger.records, outcome, settings)
        return outcome
    try:
        async with executor_context as executor:
            gate = asyncio.Semaphore(settings.concurrency)
            await forget_finished(executor)
            stop = asyncio.Event()
            streak = 0  # policy errors in a row: the policy is down, stop asking it

            async def one(sample: BatchSample) -> None:
                nonlocal streak
                async with gate:
                    if stop.is_set():
                        return
                    t0 = time.perf_counter()
                    if sample.item.skip:
                        await finish(sample, None, "skipped", sample.item.skip, 0.0)
                        return
                    try:
                        state = await executor.run(sample)
                    except PolicyError as exc:
                        outcome.policy_errors += 1
                        outcome.first_policy_error = outcome.first_policy_error or str(exc)
                        emit("policy_error", {"sample_id": sample.id, "reason": str(exc)})
                        streak += 1
                        if streak >= min(len(todo), 2 * settings.concurrency) and not stop.is_set():
                            outcome.stopped = f"the policy failed the last {streak} samples: {exc}"
                            stop.set()
                        return
                    except (InputError, ValueError) as exc:  # the request itself (validation included)
                        await finish(sample, None, "failed", f"unusable request: {exc}", time.perf_counter() - t0)
                    else:
                        streak = 0
                        await finish(sample, state, "ok", None, time.perf_counter() - t0)
                    await executor.forget(sample)  # finished: its checkpoints are no longer needed

            await asyncio.gather(*(one(s) for s in todo))
    except asyncio.CancelledError:
        outcome.interrupted = True
        raise
    finally:
        outcome.wall_s = time.perf_counter() - started
        with contextlib.suppress(Exception):
            await asyncio.to_thread(write_summary, out, identity, ledger.records, outcome, settings)
    return outcome


# --- summary.json and index.html -----------------------------------------------------------------------


def _describe(judge: Any) -> Any:
    """A judge passed in (scorer or chooser), as settings.json records it: its own description, else its type."""
    describe = getattr(judge, "describe", None)
    return describe() if callable(describe) else type(judge).__name__


def _write_settings(
    out: Path,
    settings: BatchSettings,
    cfg: Config,
    toolbox: Toolbox | None,
    scorers: Mapping[str, DraftScorer] | None = None,
    chooser: ImageChooser | None = None,
) -> None:
    box = toolbox or toolbox_for(cfg)
    backends = {s: getattr(box.backend(s), "name", None) for s in SOURCES}
    data = {
        "policy": {
            "url": cfg.policy_url,
            "model": cfg.policy_model if cfg.policy_url else "embedded",
            "adapter": cfg.adapter,
            "sampling": {
                "max_tokens": cfg.max_tokens,
                "temperature": cfg.temperature,
                "top_p": cfg.top_p,
                "seed": cfg.seed,
            },
        },
        "backends": backends,
        "scaling": {
            "candidates": cfg.candidates,
            "select": cfg.select,
            "selector": _describe(scorers[cfg.select]) if cfg.select in (scorers or {}) else None,
            "repair_rounds": cfg.repair_rounds,
            "enhance": cfg.enhance,
            "search_chooser": _describe(chooser) if chooser is not None else None,
            "polish": cfg.polish,
        },
        "samples": settings.samples,
        "concurrency": settings.concurrency,
        "checkpoints": describe(settings.checkpoint_url, out / "checkpoints.sqlite"),
        "ray_address": settings.ray_address,
        "llmi": llmi_version(),
    }
    (out / "settings.json").write_text(json.dumps(data, indent=1), encoding="utf-8")


def llmi_version() -> str:
    """The package version, plus the git commit when running from a checkout."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("llmi")
    except PackageNotFoundError:
        v = "unknown"
    root = Path(__file__).resolve().parents[1]
    if (root / ".git").exists():
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            head = subprocess.run(
                ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
            dirty = subprocess.run(
                ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
            if head:
                v += f"+g{head}" + (".dirty" if dirty else "")
    return v


def write_summary(
    out: Path,
    identity: dict[str, Any],
    records: dict[str, dict[str, Any]],
    outcome: BatchOutcome | None = None,
    settings: BatchSettings | None = None,
) -> None:
    """summary.json and index.html from the finished records (and scores.jsonl when an evaluation wrote one)."""
    done = list(records.values())
    walls = [r["wall_s"] for r in done if r["status"] == "ok"]
    summary: dict[str, Any] = {
        "batch_id": identity["batch_id"],
        "source": identity.get("source"),
        "rows": len(identity["rows"]),
        "samples_per_row": identity.get("samples", 1),
        "finished": len(done),
        "ok": sum(r["status"] == "ok" for r in done),
        "failed": sum(r["status"] == "failed" for r in done),
        "skipped": sum(r["status"] == "skipped" for r in done),
        "images_ok": sum(r.get("images_ok", 0) for r in done),
        "images_failed": sum(r.get("images_failed", 0) for r in done),
        "sample_wall_s": _spread(walls),
    }
    if outcome is not None:
        summary["last_run"] = {
            "total": outcome.total,
            "finished": outcome.finished,
            "pending": outcome.pending,
            "policy_errors": outcome.policy_errors,
            "interrupted": outcome.interrupted,
            "stopped": outcome.stopped,
            "wall_s": round(outcome.wall_s, 3),
            "samples_per_min": round(60 * outcome.finished / outcome.wall_s, 3) if outcome.wall_s > 0 else None,
        }
    settings_file = out / "settings.json"
    if settings_file.is_file():
        summary["settings"] = json.loads(settings_file.read_text(encoding="utf-8"))
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1), encoding="utf-8")
    os.replace(tmp, out / "summary.json")
    scores = _scores(out / "scores.jsonl")
    tmp = out / "index.html.tmp"
    tmp.write_text(render_index(summary, done, scores), encoding="utf-8")
    os.replace(tmp, out / "index.html")


def _spread(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "mean": None, "p50": None, "p95": None}
    ordered = sorted(values)
    return {
        "n": len(values),
        "mean": round(statistics.fmean(values), 3),
        "p50": round(ordered[len(ordered) // 2], 3),
        "p95": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 3),
    }


def _scores(path: Path) -> dict[str, float | None]:
    """The main score per sample from an evaluation's scores.jsonl (`score` field), if there is one."""
    out: dict[str, float | None] = {}
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            record = json.loads(line)
            out[record["sample_id"]] = record.get("score")
    return out


_INDEX_CSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; base-uri 'none'"
_SORT_SCRIPT = """
document.querySelectorAll('th').forEach((th, col) => th.addEventListener('click', () => {
  const body = th.closest('table').tBodies[0];
  const asc = th.dataset.dir !== 'asc'; th.dataset.dir = asc ? 'asc' : 'desc';
  const key = r => { const c = r.cells[col]; const v = c.dataset.sort ?? c.textContent;
                     const n = parseFloat(v); return isNaN(n) ? v : n; };
  [...body.rows].sort((a, b) => { const x = key(a), y = key(b);
    return (x > y ? 1 : x < y ? -1 : 0) * (asc ? 1 : -1); }).forEach(r => body.appendChild(r));
}));
"""


def render_index(summary: dict[str, Any], records: list[dict[str, Any]], scores: dict[str, float | None]) -> str:
    """A table of every finished sample, each linking its report; click a heading to sort. All text escaped."""
    has_scores = bool(scores)
    rows = []
    for r in sorted(records, key=lambda r: r["sample_id"]):
        sid = html.escape(r["sample_id"])
        link = f'<a href="{html.escape(r["report"])}">{sid}</a>' if r.get("report") else sid
        score = scores.get(r["sample_id"])
        cells = [
            link,
            html.escape(r["row_id"]),
            html.escape(r["status"]),
            str(r.get("images_ok", "")),
            str(r.get("images_failed", "")),
            f"{r.get('wall_s', 0):.1f}",
        ]
        if has_scores:
            cells.append("" if score is None else f"{score:.3f}")
        cells.append(html.escape((r.get("prompt") or r.get("reason") or "")[:160]))
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    heads = ["sample", "row", "status", "images", "failed", "seconds", *(["score"] if has_scores else []), "prompt"]
    title = html.escape(f"llmi batch {summary['batch_id']}")
    counts = html.escape(
        f"{summary['finished']} finished: {summary['ok']} ok, {summary['failed']} failed, {summary['skipped']} skipped;"
        f" images {summary['images_ok']} made, {summary['images_failed']} failed"
    )
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_INDEX_CSP}"><title>{title}</title>'
        "<style>body{font-family:system-ui,sans-serif;margin:2rem}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:left}th{cursor:pointer;background:#f4f4f6}"
        "</style></head><body>"
        f"<h1>{title}</h1><p>{counts}</p><table><thead><tr>"
        + "".join(f"<th>{h}</th>" for h in heads)
        + "</tr></thead><tbody>"
        + "".join(rows)
        + f"</tbody></table><script>{_SORT_SCRIPT}</script></body></html>\n"
    )


def settings_from(**values: Any) -> BatchSettings:
    """BatchSettings from keyword values (None ignored)."""
    fields = {f.name for f in dataclasses.fields(BatchSettings)}
    return BatchSettings(**{k: v for k, v in values.items() if k in fields and v is not None})
