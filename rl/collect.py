"""Record rollouts for offline training: batch graph runs, scored by the judges, appended to a JSONL file.

    python -m rl.collect --out rollouts.jsonl --policy-url http://127.0.0.1:8000/v1 --model policy \\
        [--judge-url URL --judge-model NAME] [--dataset rl/data/train.jsonl] [--group 8] [--limit 64]

Each prompt's G samples are written together once scored. Rerunning the same command skips prompts already
recorded, so a crash mid-batch loses at most the groups in flight and redoes nothing. Then:
`python rl/train.py --replay rollouts.jsonl`.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from rich.progress import Progress

from judges.rule import format_score
from llmi_graph import Config, State, build_graph
from llmi_graph.policy import Policy, policy_for
from rl.data import TRAIN_FILE, Row, load_rows
from rl.rewards import RewardSuite
from rl.train import reward_suite


def recorded_groups(path: Path) -> set[str]:
    """Groups already complete in the file (so a rerun skips them)."""
    if not path.is_file():
        return set()
    from rl.replay import load_records

    try:
        return {r["group"] for r in load_records(path)}
    except ValueError:
        return set()


def group_id(row: Row, group_size: int, round_: int) -> str:
    return hashlib.sha256(f"{row.prompt}|{group_size}|{round_}".encode()).hexdigest()[:16]


async def collect_group(row: Row, policy: Policy, cfg: Config, suite: RewardSuite, size: int, gid: str) -> list[dict]:
    graph = build_graph(policy=policy)
    states = await asyncio.gather(*(graph.ainvoke(row.request(), context=cfg) for _ in range(size)))
    records = []
    for k, raw in enumerate(states):
        state = State.model_validate(raw)
        policy_out = state.policy
        assert policy_out is not None
        if not policy_out.completion_token_ids or policy_out.logprobs is None or policy_out.prompt_token_ids is None:
            raise RuntimeError(
                "the policy returned no token ids or logprobs: use vLLM (return_token_ids) or the embedded model"
            )
        reward = await suite.score(f"{gid}-{k}", state.model_dump(mode="json"), list(row.tools))
        records.append(
            {
                "group": gid,
                "prompt": row.prompt,
                "prompt_ids": policy_out.prompt_token_ids,
                "completion_ids": policy_out.completion_token_ids,
                "logprobs": policy_out.logprobs,
                "rewards": {
                    "hybrid": reward.reward,
                    "image_num": reward.image_num_score,
                    "llm_judge": reward.llm,
                    "mllm_judge": reward.mllm,
                    "format": format_score(state.draft, state.image_num, len(state.input_images)),
                },
                "policy_model": policy_out.model,
                "draft": state.draft,
            }
        )
    return records


def append(path: Path, records: list[dict[str, Any]]) -> None:
    """Append a whole group in one write, flushed to disk."""
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


async def collect(args: argparse.Namespace) -> int:
    rows = load_rows(args.dataset)[: args.limit or None]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = recorded_groups(out)
    cfg = Config(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=1.0,
        tool_cache=True,
        policy_url=args.policy_url,
        policy_model=args.model or "default",
    )
    policy: Policy = policy_for(cfg)
    suite = reward_suite(args.train_config)
    todo = [(row, group_id(row, args.group, args.round)) for row in rows]
    todo = [(row, gid) for row, gid in todo if gid not in done]
    written = 0
    gate = asyncio.Semaphore(args.concurrency)
    with Progress() as progress:
        task = progress.add_task(
            f"collecting {len(todo)} group(s) ({len(rows) - len(todo)} already recorded)", total=len(todo)
        )

        async def one(row: Row, gid: str) -> None:
            nonlocal written
            async with gate:
                records = await collect_group(row, policy, cfg, suite, args.group, gid)
                await asyncio.to_thread(append, out, records)
                written += 1
                progress.advance(task)

        await asyncio.gather(*(one(row, gid) for row, gid in todo))
    return written


def main(argv: list[str] | None = None) -> None:
    from rl.config import TrainConfig

    parser = argparse.ArgumentParser(description="Record scored rollouts for rl/train.py --replay.")
    parser.add_argument("--out", required=True, help="JSONL file to append to (reruns resume).")
    parser.add_argument("--dataset", default=str(TRAIN_FILE), help="Rows to collect for.")
    parser.add_argument("--policy-url", default=None, help="vLLM (or other OpenAI-compatible) policy URL.")
    parser.add_argument("--model", default=None, help="Model (or adapter) name at the policy URL.")
    parser.add_argument("--group", type=int, default=8, help="Samples per prompt (G).")
    parser.add_argument("--round", type=int, default=0, help="Collection round (a new round records new groups).")
    parser.add_argument("--limit", type=int, default=0, help="Only the first N rows (0: all).")
    parser.add_argument("--concurrency", type=int, default=4, help="Groups in flight.")
    parser.add_argument("--max-tokens", type=int, default=512, help="Most tokens per sample.")
    parser.add_argument("--temperature", type=float, default=1.0, help="Sampling temperature.")
    parser.add_argument("--judge-url", default=None, help="LLM judge endpoint.")
    parser.add_argument("--judge-model", default="default", help="LLM judge model.")
    parser.add_argument("--mllm-url", default=None, help="Multimodal judge endpoint.")
    parser.add_argument("--mllm-model", default="default", help="Multimodal judge model.")
    args = parser.parse_args(argv)
    args.train_config = TrainConfig(
        judge_url=args.judge_url, judge_model=args.judge_model, mllm_url=args.mllm_url, mllm_model=args.mllm_model
    )
    written = asyncio.run(collect(args))
    print(f"recorded {written} group(s) in {args.out}; train with: python rl/train.py --replay {args.out}")


if __name__ == "__main__":
    main()
