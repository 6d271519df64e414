"""`llmi eval BENCHMARK --out DIR`: run a benchmark through `llmi batch`, score every sample, aggregate.

DIR is a batch folder (see `llmi_graph.batch`) plus:

    DIR/items.jsonl     the benchmark's items as run (requests without image data, and what scoring reads)
    DIR/scores.jsonl    one line per scored sample: every metric (or None and why), which judge scored what
    DIR/results.json    per metric: mean, count, standard error, not scored (and why); per group; who judged
    DIR/eval.html       the metric table, and every sample with its scores, its report one click away

Scoring resumes like the batch does: a rerun scores only samples that have no score from the same judges yet, so
adding a judge later rescores, and a crash loses no judgement already written. A number is never made up: without
a judge, the judge metrics read "not scored" and only the rule metrics have values.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import html
import importlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evals.base import Benchmark, Item, Judges, MetricSummary, SampleScore, aggregate, aggregate_by
from llmi_graph.batch import BatchItem, BatchOutcome, BatchSettings, Ledger, llmi_version, run_batch, write_summary
from llmi_graph.config import Config
from llmi_graph.policy import Policy
from llmi_graph.report import load_state
from llmi_graph.toolbox import Toolbox

BENCHMARKS = {
    "opening": "evals.opening:OpeningBenchmark",
    "isg": "evals.isg:ISGBenchmark",
    "rubric": "evals.rubric:RubricBenchmark",
    "indomain": "evals.indomain:IndomainBenchmark",
}
"""The benchmarks `llmi eval` knows, by name."""


def get_benchmark(name: str) -> Benchmark:
    """A benchmark adapter by name (see `BENCHMARKS`)."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}: expected one of {', '.join(BENCHMARKS)}")
    module, _, cls = BENCHMARKS[name].partition(":")
    return getattr(importlib.import_module(module), cls)()


@dataclass
class EvalSettings:
    """One evaluation: which benchmark, where from, how much, with which judges, run how."""

    benchmark: str
    batch: BatchSettings
    judges: Judges = field(default_factory=Judges)
    source: Path | None = None
    limit: int | None = None
    options: dict[str, Any] = field(default_factory=dict)  # the benchmark's own load options
    judge_concurrency: int = 8


@dataclass
class EvalResult:
    """What an evaluation measured (also written to DIR/results.json)."""

    benchmark: str
    batch: BatchOutcome
    metrics: dict[str, MetricSummary]
    groups: dict[str, dict[str, MetricSummary]]
    counts: dict[str, int]
    path: Path


def _judges_key(judges: Judges) -> dict[str, str | None]:
    return {
        "text": judges.text.model if judges.text else None,
        "text_url": judges.text.base_url if judges.text else None,
        "vision": judges.vision.model if judges.vision else None,
        "vision_url": judges.vision.base_url if judges.vision else None,
    }


def _items_record(item: Item) -> dict[str, Any]:
    """An item as items.jsonl keeps it: image data replaced by its hash (the run's trajectories hold the images)."""
    request = dict(item.request)
    if request.get("images"):
        request["images"] = [f"sha256:{hashlib.sha256(i.encode()).hexdigest()[:16]}" for i in request["images"]]
    return {"id": item.id, "request": request, "meta": item.meta, "skip": item.skip}


def _load_scores(path: Path, key: dict[str, str | None]) -> dict[str, dict[str, Any]]:
    """The latest score line per sample made by the same judges (others are stale for this run)."""
    out: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return out
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):  # a line torn by a crash
        with open(path, "r+b") as fh:
            fh.truncate(end)
    for line in data[:end].decode("utf-8").splitlines():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            record = json.loads(line)
            if record.get("judges") == key:
                out[record["sample_id"]] = record
    return out


def _append(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _not_run(benchmark: Benchmark, reason: str) -> SampleScore:
    score = SampleScore()
    for metric in benchmark.metrics:
        score.set(metric.name, None, reason)
    return score


async def run_eval(
    settings: EvalSettings,
    cfg: Config,
    *,
    policy: Policy | None = None,
    toolbox: Toolbox | None = None,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
    scorers: Mapping[str, Any] | None = None,
    chooser: Any = None,
) -> EvalResult:
    """Run the benchmark's items as a batch into `settings.batch.out`, then score and aggregate them. `scorers` and
    `chooser` are the scaled graph's judges (`run_batch`)."""
    emit = on_event or (lambda kind, data: None)
    benchmark = get_benchmark(settings.benchmark)
    items = await asyncio.to_thread(benchmark.load, settings.source, limit=settings.limit, **settings.options)  # type: ignore[call-arg]
    if not items:
        raise ValueError(f"{settings.benchmark}: no items to run (check --limit and the benchmark's filters)")
    by_id = {item.id: item for item in items}
    out = settings.batch.out.resolve()
    group_key = getattr(benchmark, "group_key", None)
    batch_items = [
        BatchItem(
            row_id=item.id,
            request=item.request,
            meta={"benchmark": benchmark.name, **({group_key: item.meta.get(group_key)} if group_key else {})},
            skip=item.skip,
        )
        for item in items
    ]
    outcome = await run_batch(
        batch_items, settings.batch, cfg, policy=policy, toolbox=toolbox, source=f"{benchmark.name}", on_event=emit,
        scorers=scorers, chooser=chooser,
    )  # fmt: skip
    await asyncio.to_thread(_write_items, out / "items.jsonl", items)
    records = (await asyncio.to_thread(Ledger, out / "results.jsonl")).records
    judges = settings.judges
    if not judges.image_roots:
        judges = Judges(judges.text, judges.vision, [out / "samples", cfg.image_path])
    key = _judges_key(judges)
    scores_path = out / "scores.jsonl"
    scored = await asyncio.to_thread(_load_scores, scores_path, key)
    todo = [r for r in records.values() if r["sample_id"] not in scored and r["row_id"] in by_id]
    emit("scoring", {"total": len(todo), "done_before": len(scored)})
    gate = asyncio.Semaphore(settings.judge_concurrency)
    main = getattr(benchmark, "main", None)

    async def score_one(record: dict[str, Any]) -> None:
        item = by_id[record["row_id"]]
        async with gate:
            if record["status"] == "ok":
                state = await asyncio.to_thread(load_state, out / "samples" / record["sample_id"])
                score = await benchmark.score(item, state, judges)
            elif record["status"] == "skipped":
                score = _not_run(benchmark, f"skipped: {record['reason']}")
            else:
                score = _not_run(benchmark, f"sample failed: {record['reason']}")
        line = {
            "sample_id": record["sample_id"],
            "row_id": record["row_id"],
            "status": record["status"],
            "score": score.metrics.get(main) if main else None,
            "judges": key,
            "scored_at": round(time.time(), 3),
            **score.as_dict(),
        }
        await asyncio.to_thread(_append, scores_path, line)
        scored[record["sample_id"]] = line
        emit("scored", line)

    await asyncio.gather(*(score_one(r) for r in todo))
    result = await asyncio.to_thread(_aggregate, benchmark, settings, out, items, records, scored, outcome, judges)
    return result


def _write_items(path: Path, items: Sequence[Item]) -> None:
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(_items_record(i), ensure_ascii=False) + "\n" for i in items), encoding="utf-8")
    os.replace(tmp, path)


def _aggregate(
    benchmark: Benchmark,
    settings: EvalSettings,
    out: Path,
    items: Sequence[Item],
    records: dict[str, dict[str, Any]],
    scored: dict[str, dict[str, Any]],
    outcome: BatchOutcome,
    judges: Judges,
) -> EvalResult:
    by_id = {item.id: item for item in items}
    ran = [s for s in scored.values() if s["status"] == "ok"]
    scores = [SampleScore.from_dict(s) for s in ran]
    metrics = aggregate(benchmark.metrics, scores)
    group_key = getattr(benchmark, "group_key", None)
    groups = aggregate_by(benchmark.metrics, [by_id[s["row_id"]] for s in ran], scores, group_key) if group_key else {}
    counts = {
        "items": len(items),
        "samples": len(records),
        "ok": sum(r["status"] == "ok" for r in records.values()),
        "failed": sum(r["status"] == "failed" for r in records.values()),
        "skipped": sum(r["status"] == "skipped" for r in records.values()),
        "pending": outcome.pending,
    }
    settings_file = out / "settings.json"
    run_settings = json.loads(settings_file.read_text(encoding="utf-8")) if settings_file.is_file() else {}
    data = {
        "benchmark": benchmark.name,
        "main": getattr(benchmark, "main", None),
        "metrics": {name: m.as_dict() for name, m in metrics.items()},
        "metric_info": {
            m.name: {
                "description": m.description,
                "judge": m.judge,
                "scale": m.scale,
                "higher_is_better": m.higher_is_better,
            }
            for m in benchmark.metrics
        },
        "groups": {g: {n: m.as_dict() for n, m in ms.items()} for g, ms in groups.items()},
        "group_key": group_key,
        "counts": counts,
        "judges": {
            "text": {"model": judges.text.model, "url": judges.text.base_url} if judges.text else None,
            "vision": {"model": judges.vision.model, "url": judges.vision.base_url} if judges.vision else None,
        },
        "load": {
            "source": str(settings.source) if settings.source else None,
            "limit": settings.limit,
            **{k: v for k, v in settings.options.items() if v is not None},
        },
        "policy": run_settings.get("policy"),
        "backends": run_settings.get("backends"),
        "llmi": run_settings.get("llmi") or llmi_version(),
        "finished_at": round(time.time(), 3),
    }
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(tmp, out / "results.json")
    identity = json.loads((out / "batch.json").read_text(encoding="utf-8"))
    write_summary(out, identity, records, outcome, settings.batch)  # the index gets the score column
    (out / "eval.html").write_text(render_eval(data, records, scored, benchmark), encoding="utf-8")
    return EvalResult(benchmark.name, outcome, metrics, groups, counts, out / "results.json")


def _fmt(summary: dict[str, Any]) -> str:
    if summary["mean"] is None:
        return "not scored"
    se = f" ± {summary['stderr']:.3f}" if summary.get("stderr") is not None else ""
    return f"{summary['mean']:.3f}{se}"


def render_eval(
    data: dict[str, Any], records: dict[str, dict[str, Any]], scored: dict[str, dict[str, Any]], benchmark: Benchmark
) -> str:
    """The evaluation page: the metric table (with who judged), then every sample with its scores. All text is
    escaped; the small script only sorts the tables."""
    from llmi_graph.batch import _INDEX_CSP, _SORT_SCRIPT

    e = html.escape
    rows = []
    for name, m in data["metrics"].items():
        info = data["metric_info"][name]
        judged = ", ".join(f"{j['model']} ({j['prompt_version']})" for j in m["judged_by"])
        who = judged or ("-" if info["judge"] else "rule")
        reasons = "; ".join(f"{k} ({v})" for k, v in m["reasons"].items())
        rows.append(
            f"<tr><td>{e(name)}</td><td>{e(_fmt(m))}</td><td>{m['n']}</td><td>{m['not_scored']}</td>"
            f"<td>{e(info['scale'])}</td><td>{e(who)}</td><td>{e(reasons[:300])}</td></tr>"
        )
    names = [m.name for m in benchmark.metrics]
    sample_rows = []
    for sid, record in sorted(records.items()):
        score = scored.get(sid, {})
        values = score.get("metrics") or {}
        link = f'<a href="{e(record["report"])}">{e(sid)}</a>' if record.get("report") else e(sid)
        cells = [link, e(record["status"])] + [
            "" if values.get(n) is None else f"{values[n]:.3f}" for n in names
        ]  # fmt: skip
        sample_rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    policy = data.get("policy") or {}
    judges = data["judges"]
    judge_text = ", ".join(f"{k}: {v['model']}" for k, v in judges.items() if v) or "none (rule metrics only)"
    head = (
        f"{data['benchmark']}: {data['counts']['ok']} sample(s) scored, {data['counts']['skipped']} skipped, "
        f"{data['counts']['failed']} failed; policy {policy.get('model')}"
        + (f" + adapter {policy['adapter']}" if policy.get("adapter") else "")
        + f"; judges: {judge_text}; llmi {data['llmi']}"
    )
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_INDEX_CSP}"><title>{e(data["benchmark"])}</title>'
        "<style>body{font-family:system-ui,sans-serif;margin:2rem}table{border-collapse:collapse;margin:1rem 0}"
        "td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:left}th{cursor:pointer;background:#f4f4f6}"
        "</style></head><body>"
        f"<h1>{e(data['benchmark'])}</h1><p>{e(head)}</p>"
        "<table><thead><tr><th>metric</th><th>mean ± s.e.</th><th>n</th><th>not scored</th><th>scale</th>"
        "<th>judged by</th><th>why not scored</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
        "<table><thead><tr><th>sample</th><th>status</th>"
        + "".join(f"<th>{e(n)}</th>" for n in names)
        + "</tr></thead><tbody>"
        + "".join(sample_rows)
        + f"</tbody></table><script>{_SORT_SCRIPT}</script></body></html>\n"
    )


def compare(folders: Sequence[Path]) -> list[dict[str, Any]]:
    """Side by side: for each metric of the first folder's benchmark, each folder's mean ± s.e. and n."""
    results = []
    for folder in folders:
        path = folder / "results.json"
        if not path.is_file():
            raise FileNotFoundError(f"{folder}: no results.json (run `llmi eval` into it first)")
        results.append(json.loads(path.read_text(encoding="utf-8")))
    names = list(results[0]["metrics"])
    rows = []
    for name in names:
        row: dict[str, Any] = {"metric": name}
        for folder, result in zip(folders, results, strict=True):
            row[str(folder)] = result["metrics"].get(name)
        rows.append(row)
    return rows
