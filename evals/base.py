"""What a benchmark adapter is: rows in, requests out, scores in the benchmark's own terms.

An adapter loads its benchmark into `Item`s (one graph request each, plus what scoring needs), and scores one
finished sample into a `SampleScore`: every metric it reports, each a number or `None` with the reason it was not
scored. Rule metrics are always computed; judge metrics need a judge (`Judges`) and say which model and prompt
version produced them. A number is never made up: no judge, no judge number.

`aggregate` turns per-sample scores into a benchmark result: for each metric, the mean over the samples that
have it, their count, the standard error, and how many were not scored (with the reasons).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from judges._endpoint import JudgeEndpoint, JudgeResult
from llmi_graph.state import State

_ID = re.compile(r"[^A-Za-z0-9._-]+")


def safe_id(value: Any) -> str:
    """A row id that is safe as a file name and a thread id: letters, digits, dot, dash, underscore."""
    text = _ID.sub("-", str(value)).strip("-.")
    return text[:120] or "row"


@dataclass(frozen=True)
class Item:
    """One benchmark row, ready to run: a graph request plus what scoring needs (JSON data)."""

    id: str
    request: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)
    skip: str | None = None  # why this row cannot run here (e.g. it needs input images we do not have)


@dataclass
class Judges:
    """The judges an evaluation may use; any of them may be missing (its metrics are then not scored)."""

    text: JudgeEndpoint | None = None  # an LLM judge (reads text and tags)
    vision: JudgeEndpoint | None = None  # a multimodal judge (reads text and images)
    image_roots: list[Path] = field(default_factory=list)  # where judges may read images (empty: the image store)

    def roots(self) -> list[Path]:
        """Where judges may read images from: `image_roots`, else the configured image store."""
        from judges.mllm import default_image_roots

        return list(self.image_roots) or default_image_roots()


@dataclass
class SampleScore:
    """One sample's metrics: a number, or None with the reason in `reasons`. `judged_by` names, per judge
    metric, the model and prompt version that produced it."""

    metrics: dict[str, float | None] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    judged_by: dict[str, dict[str, str]] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)  # anything worth keeping (explanations, counts)

    def set(self, name: str, value: float | None, reason: str | None = None) -> None:
        self.metrics[name] = value
        if value is None:
            self.reasons[name] = reason or "not scored"

    def from_judge(self, names: dict[str, str], result: JudgeResult, scale: float = 1.0) -> None:
        """Copy a judge's scores (judge name -> metric name), or mark them not scored with the judge's reason."""
        for judge_name, metric in names.items():
            if result.scores is None or judge_name not in result.scores:
                self.set(metric, None, result.reason or "the judge gave no score")
            else:
                self.set(metric, float(result.scores[judge_name]) * scale)
            self.judged_by[metric] = {"model": result.model, "prompt_version": result.prompt_version}

    def derived(self, name: str, sources: Sequence[str]) -> None:
        """A metric that is the mean of judge metrics (e.g. an overall score): scored only when all of them are,
        judged by the same judge."""
        values = [self.metrics.get(s) for s in sources]
        if any(v is None for v in values):
            missing = next(s for s, v in zip(sources, values, strict=True) if v is None)
            self.set(name, None, self.reasons.get(missing, "not scored"))
        else:
            self.set(name, sum(values) / len(values))  # type: ignore[arg-type]
        who = next((self.judged_by[s] for s in sources if s in self.judged_by), None)
        if who is not None:
            self.judged_by[name] = who

    def as_dict(self) -> dict[str, Any]:
        return {"metrics": self.metrics, "reasons": self.reasons, "judged_by": self.judged_by, "details": self.details}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SampleScore:
        return cls(
            metrics=dict(data.get("metrics") or {}),
            reasons=dict(data.get("reasons") or {}),
            judged_by=dict(data.get("judged_by") or {}),
            details=dict(data.get("details") or {}),
        )


@dataclass(frozen=True)
class Metric:
    """A metric a benchmark reports: its name, what it means, and whether a judge produces it."""

    name: str
    description: str
    judge: bool = False
    scale: str = ""  # e.g. "0-10", "0-1"
    higher_is_better: bool = True


class Benchmark(Protocol):
    """A benchmark adapter. `main` names the metric an index sorts by (its headline score); `group_key` the
    `Item.meta` field results are broken down by (a subtask, a category), if any.

    `load` returns runnable items and, in a full load, the rows that cannot run here with `skip` set; `limit` and
    per-group limits count runnable items only."""

    name: str
    metrics: tuple[Metric, ...]
    main: str
    group_key: str | None

    def load(self, source: Path | None = None, *, limit: int | None = None, **options: Any) -> list[Item]:
        """The benchmark's items (its development data when `source` is None), the first `limit` of them."""
        ...

    async def score(self, item: Item, state: State, judges: Judges) -> SampleScore:
        """Score one finished sample; never raises for a judge's failure (its metrics are then not scored)."""
        ...


@dataclass
class MetricSummary:
    """One metric over a benchmark: mean, count, standard error, and what was not scored."""

    name: str
    mean: float | None
    n: int
    stderr: float | None
    not_scored: int
    reasons: dict[str, int]
    judge: bool
    judged_by: list[dict[str, str]]

    def as_dict(self) -> dict[str, Any]:
        return {
            "mean": self.mean,
            "n": self.n,
            "stderr": self.stderr,
            "not_scored": self.not_scored,
            "reasons": self.reasons,
            "judge": self.judge,
            "judged_by": self.judged_by,
        }


def aggregate(metrics: Sequence[Metric], scores: Sequence[SampleScore]) -> dict[str, MetricSummary]:
    """Per metric: the mean over samples that have it, their count, the standard error of the mean (sample
    standard deviation / sqrt(n); None below 2 samples), and the samples not scored with their reasons."""
    out: dict[str, MetricSummary] = {}
    for metric in metrics:
        values = [s.metrics[metric.name] for s in scores if s.metrics.get(metric.name) is not None]
        missing = [s for s in scores if s.metrics.get(metric.name) is None]
        reasons = Counter(s.reasons.get(metric.name, "not scored") for s in missing)
        judged_by = []
        for s in scores:
            who = s.judged_by.get(metric.name)
            if who and who not in judged_by:
                judged_by.append(who)
        mean = sum(values) / len(values) if values else None  # type: ignore[arg-type]
        stderr = None
        if len(values) >= 2 and mean is not None:
            var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)  # type: ignore[operator]
            stderr = math.sqrt(var / len(values))
        out[metric.name] = MetricSummary(
            metric.name, mean, len(values), stderr, len(missing), dict(reasons), metric.judge, judged_by
        )
    return out


def aggregate_by(
    metrics: Sequence[Metric], items: Sequence[Item], scores: Sequence[SampleScore], key: str
) -> dict[str, dict[str, MetricSummary]]:
    """`aggregate` per group of `Item.meta[key]` (a subtask, a category); `items[i]` is the item of `scores[i]`."""
    groups: dict[str, list[SampleScore]] = {}
    for item, score in zip(items, scores, strict=True):
        groups.setdefault(str(item.meta.get(key, "?")), []).append(score)
    return {group: aggregate(metrics, members) for group, members in sorted(groups.items())}
