"""Benchmark: `llmi batch` throughput with the policy as the bottleneck, against the policy's own throughput.

A real vLLM CPU server serves the embedded SmolLM2 (or give --policy-url/--model). The same N prompts (the RL
held-out rows, tools switched off in each request so only the policy works) go
- straight to the server: the same chat messages the planner builds, the same sampling (greedy, a seed), the same
  number in flight: the physical limit;
- through `llmi batch` (the graph, durable checkpoints in SQLite, a report per sample, results.jsonl).
Greedy decoding gives both the same tokens to generate. It prints samples per minute for each, their ratio (the
target is close to 1), and the per-sample overhead (a sample's wall time beyond its policy call, and the batch's
extra wall time per sample). The two are run alternately (raw, batch, raw, batch) and both rounds are printed.

Run: .venv/bin/python bench/batch.py [--samples 24] [--concurrency 4] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmi_graph import Config
from llmi_graph.batch import BatchItem, BatchSettings, run_batch
from llmi_graph.prompts import build_messages
from llmi_graph.rows import load_rows
from llmi_graph.toolbox import close_toolboxes
from rl.data import HELDOUT_FILE


async def raw(url: str, model: str, messages: list[list[dict]], args: argparse.Namespace) -> tuple[float, list[float]]:
    """The policy alone: wall time for all prompts at the same concurrency, and each request's latency."""
    gate = asyncio.Semaphore(args.concurrency)
    latencies: list[float] = []

    async def one(client: httpx.AsyncClient, m: list[dict]) -> None:
        async with gate:
            t0 = time.perf_counter()
            body = {"model": model, "messages": m, "max_tokens": args.max_tokens, "temperature": 0.0, "seed": 7}
            response = await client.post(f"{url}/chat/completions", json=body)
            response.raise_for_status()
            latencies.append(time.perf_counter() - t0)

    async with httpx.AsyncClient(timeout=600) as client:
        started = time.perf_counter()
        await asyncio.gather(*(one(client, m) for m in messages))
        return time.perf_counter() - started, latencies


async def batch(
    url: str, model: str, items: list[BatchItem], out: Path, args: argparse.Namespace
) -> tuple[float, list[dict]]:
    """The same prompts through `llmi batch`; wall time and the results lines."""
    cfg = Config(policy_url=url, policy_model=model, max_tokens=args.max_tokens, temperature=0.0, seed=7,
                 image_dir=str(out / "store"), cache_dir=str(out / "cache"))  # fmt: skip
    started = time.perf_counter()
    try:
        await run_batch(items, BatchSettings(out=out / "batch", concurrency=args.concurrency), cfg)
    finally:
        await close_toolboxes()
    wall = time.perf_counter() - started
    records = [json.loads(line) for line in (out / "batch" / "results.jsonl").read_text().splitlines()]
    return wall, records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=24, help="Prompts (held-out rows) per round.")
    parser.add_argument("--concurrency", type=int, default=4, help="Samples in flight, in both.")
    parser.add_argument("--max-tokens", type=int, default=64, help="Tokens per draft.")
    parser.add_argument("--policy-url", default=None, help="An OpenAI-compatible server (default: start vLLM CPU).")
    parser.add_argument("--model", default="bench", help="Model name at --policy-url.")
    args = parser.parse_args()

    rows = load_rows(HELDOUT_FILE)
    rows = (rows * (1 + args.samples // len(rows)))[: args.samples]
    requests = [{**r.request(), "allowed_tools": [], "prompt": f"{r.prompt} (#{i})"} for i, r in enumerate(rows)]
    items = [BatchItem(row_id=f"p{i:03d}", request=req) for i, req in enumerate(requests)]
    messages = [build_messages(req["prompt"], [], req["image_num"]) for req in requests]

    server = None
    url, model = args.policy_url, args.model
    with tempfile.TemporaryDirectory() as tmp:
        if url is None:
            from llmi_graph._embedded import cached_model_dir
            from servers.policy import PolicyServer, PolicyServerConfig

            config = PolicyServerConfig(model=str(cached_model_dir(Config().cache_path)), served_model_name="bench",
                                        lora=False, log_path=str(Path(tmp) / "vllm.log"))  # fmt: skip
            print("starting the vLLM CPU server ...", flush=True)
            server = PolicyServer(config).start()
            url, model = server.url, "bench"
        try:
            asyncio.run(raw(url, model, messages[:4], args))  # warm-up
            rounds = []
            for k in range(2):
                raw_wall, latencies = asyncio.run(raw(url, model, messages, args))
                batch_wall, records = asyncio.run(batch(url, model, items, Path(tmp) / f"round{k}", args))
                rounds.append((raw_wall, latencies, batch_wall, records))
        finally:
            if server is not None:
                server.stop()

    n = len(items)
    print(f"llmi batch vs the policy alone: {n} prompts, {args.concurrency} in flight, <= {args.max_tokens} tokens,"
          f" greedy, tools off; policy at {args.policy_url or 'vLLM CPU (SmolLM2-135M)'}")  # fmt: skip
    for k, (raw_wall, latencies, batch_wall, records) in enumerate(rounds, 1):
        ok = sum(r["status"] == "ok" for r in records)
        extra = [r["wall_s"] - r["timings"].get("planner_s", 0.0) for r in records if r["status"] == "ok"]
        print(f"round {k}")
        print(f"  policy alone     {60 * n / raw_wall:7.1f} samples/min  ({raw_wall:.1f} s, latency p50 "
              f"{statistics.median(latencies):.2f} s)")  # fmt: skip
        print(f"  llmi batch       {60 * ok / batch_wall:7.1f} samples/min  ({batch_wall:.1f} s, {ok}/{n} ok)")
        print(f"  ratio            {raw_wall / batch_wall * ok / n:7.3f}   (batch / policy alone; target ~1)")
        print(f"  overhead         {(batch_wall - raw_wall) / n * 1000:7.1f} ms per sample of wall time;"
              f" a sample's own time beyond its policy call: mean {statistics.fmean(extra) * 1000:.1f} ms,"
              f" p95 {sorted(extra)[int(0.95 * (len(extra) - 1))] * 1000:.1f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
