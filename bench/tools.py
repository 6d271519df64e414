"""Benchmark: tool orchestration through the real graph, against the physical limit measured in the same run.

The tool backends are replaced by latency-controlled stand-ins (asyncio sleeps that return a small PNG), so this
measures orchestration (fan-out with Send, edit chains, limits, storage, the cache), not any model or network.

For 100 documents x 5 tags with edit chains it prints:
- the tool phase's wall time against the critical path of the document's dependency graph at the configured
  concurrency (the physical limit), as a ratio; target <= 1.1;
- per-document orchestration overhead (the graph's whole run minus the critical path);
- the cache hit rate on GRPO-style groups (8 identical drafts per prompt, run concurrently).

Run: .venv/bin/python bench/tools.py [--docs 100] [--scale 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from langchain_core.language_models.fake_chat_models import FakeListChatModel
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmi_graph import ChatModelPolicy, Config, State, Toolbox, build_graph, parse_tags
from tools.base import ToolOutput

BASE_LATENCY = {"search": 0.30, "diffusion": 0.60, "code": 0.20, "edit": 0.40}
CONCURRENCY = {"search": 4, "diffusion": 4, "code": 2, "edit": 4}


def latency_of(source: str, params: Mapping[str, Any], scale: float) -> float:
    """Deterministic per-call latency: the tool's base latency times 0.5-1.5 from a hash of the params."""
    digest = hashlib.sha256(repr(sorted(params.items())).encode()).digest()
    return BASE_LATENCY[source] * (0.5 + digest[0] / 255) * scale


class StandIn:
    """A latency-controlled stand-in backend: sleeps, then returns a PNG unique to its params and inputs."""

    def __init__(self, source: str, scale: float):
        self.name, self.source, self.scale, self.calls = f"stand-in-{source}", source, scale, 0

    async def __call__(self, params: Mapping[str, Any], inputs: Sequence[bytes] = ()) -> ToolOutput:
        self.calls += 1
        await asyncio.sleep(latency_of(self.source, params, self.scale))
        seed = hashlib.sha256(repr(sorted(params.items())).encode() + b"".join(inputs)).digest()
        buf = io.BytesIO()
        Image.new("RGB", (32, 32), tuple(seed[:3])).save(buf, format="PNG")
        return ToolOutput(image=buf.getvalue(), backend=self.name)


def tag(source: str, **params: Any) -> str:
    return f"<imgen>{{'source': '{source}', 'description': 'd', 'params': {params!r}}}</imgen>"


def make_draft(rng: random.Random, doc: int, tags: int = 5) -> str:
    """Text and `tags` tags; about a third are edits of an earlier tag (chains included)."""
    parts = [f"Document {doc}."]
    for k in range(tags):
        if k > 0 and rng.random() < 0.35:
            parts.append(tag("edit", img_index=rng.randrange(k), prompt=f"variant {doc}-{k}"))
        else:
            source = rng.choice(["search", "diffusion", "code"])
            key = {"search": "query", "diffusion": "prompt", "code": "code"}[source]
            parts.append(tag(source, **{key: f"{source} {doc}-{k}"}))
        parts.append(f"Paragraph {k}.")
    return "\n".join(parts)


def critical_path(draft: str, scale: float) -> float:
    """The physical limit: the longest dependency chain, or the busiest tool's work over its concurrency."""
    calls = parse_tags(draft).calls
    finish: dict[int, float] = {}
    work: dict[str, float] = {}
    for call in calls:
        assert call.valid and call.source
        latency = latency_of(call.source, call.params, scale)
        start = finish[call.depends_on] if call.depends_on is not None else 0.0
        finish[call.index] = start + latency
        work[call.source] = work.get(call.source, 0.0) + latency
    chain = max(finish.values(), default=0.0)
    return max(chain, *(w / CONCURRENCY[s] for s, w in work.items()))


def toolbox(scale: float) -> tuple[Toolbox, dict[str, StandIn]]:
    stand_ins = {s: StandIn(s, scale) for s in BASE_LATENCY}
    return Toolbox(backends=dict(stand_ins), concurrency=dict(CONCURRENCY)), stand_ins


async def bench_documents(docs: int, scale: float, cfg: Config) -> None:
    rng = random.Random(0)
    drafts = [make_draft(rng, d) for d in range(docs)]
    box, _ = toolbox(scale)
    graph = build_graph(policy=ChatModelPolicy(FakeListChatModel(responses=drafts)), toolbox=box)
    await graph.ainvoke({"prompt": "warm-up"}, context=cfg)  # imports, first store write
    graph = build_graph(policy=ChatModelPolicy(FakeListChatModel(responses=drafts)), toolbox=box)
    ratios, overheads, tool_phase, limits = [], [], [], []
    started = time.perf_counter()
    for draft in drafts:
        t0 = time.perf_counter()
        state = State.model_validate(await graph.ainvoke({"prompt": "p"}, context=cfg))
        total = time.perf_counter() - t0
        limit = critical_path(draft, scale)
        assert all(r.status == "ok" for r in state.results), [r.error for r in state.results]
        ratios.append(state.timings["tools_s"] / limit)
        overheads.append(total - limit)
        tool_phase.append(state.timings["tools_s"])
        limits.append(limit)
    wall = time.perf_counter() - started
    ratios.sort()
    print(f"documents: {docs} x 5 tags (edit chains included), stand-in latencies x{scale}")
    print(f"  tool phase, sum          {sum(tool_phase):8.2f} s")
    print(f"  critical path, sum       {sum(limits):8.2f} s   (the physical limit at the configured concurrency)")
    print(f"  ratio, all documents     {sum(tool_phase) / sum(limits):8.3f}   target <= 1.1")
    print(f"  ratio per document       p50 {statistics.median(ratios):.3f}  p95 {ratios[int(0.95 * len(ratios))]:.3f}"
          f"  max {ratios[-1]:.3f}")  # fmt: skip
    p95_overhead = sorted(overheads)[int(0.95 * len(overheads))]
    print(f"  overhead per document    mean {1000 * statistics.mean(overheads):.1f} ms  "
          f"p95 {1000 * p95_overhead:.1f} ms  (whole run minus critical path)")  # fmt: skip
    print(f"  wall, sequential         {wall:8.2f} s")


async def bench_groups(groups: int, scale: float, cfg: Config) -> None:
    rng = random.Random(1)
    box, stand_ins = toolbox(scale)
    hits = calls = 0
    distinct = 0
    for g in range(groups):
        draft = make_draft(rng, 1000 + g)
        distinct += len({(c.source, repr(sorted(c.params.items()))) for c in parse_tags(draft).calls})
        graph = build_graph(policy=ChatModelPolicy(FakeListChatModel(responses=[draft] * 8)), toolbox=box)
        states = await asyncio.gather(*(graph.ainvoke({"prompt": "p"}, context=cfg) for _ in range(8)))
        for s in states:
            results = State.model_validate(s).results
            hits += sum(r.cache_hit for r in results)
            calls += len(results)
    executed = sum(s.calls for s in stand_ins.values())
    print(f"GRPO-style groups: {groups} prompts x 8 identical drafts, run concurrently, tool cache on")
    print(f"  tool calls               {calls}")
    print(f"  executed by backends     {executed}   (distinct calls: {distinct})")
    print(f"  cache hit rate           {hits / calls:8.3f}   (best possible {1 - distinct / calls:.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=100)
    parser.add_argument("--groups", type=int, default=10)
    parser.add_argument("--scale", type=float, default=1.0, help="Multiply the stand-in latencies.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Config(image_dir=f"{tmp}/images", tool_attempts=1)
        asyncio.run(bench_documents(args.docs, args.scale, cfg))
        asyncio.run(bench_groups(args.groups, args.scale, cfg.replace(tool_cache=True, cache_dir=f"{tmp}/cache")))


if __name__ == "__main__":
    main()
