"""Record rollouts for offline training: batch graph runs, scored by the judges, appended to a JSONL file.

    python -m rl.collect --out rollouts.jsonl --policy-url http://127.0.0.1:8000/v1 --model policy \\
        [--judge-url URL --judge-model NAME] [--dataset rl/data/train.jsonl] [--group 8] [--limit 64]

Each row's G samples are scored, then written together in one append. A group's id covers the whole row, G and
the round. Rerunning the same command resumes: groups recorded complete are skipped, and a file a crash left
damaged (a torn last line, a group cut short) is first rewritten to hold just its complete groups, so the partial
group is collected again from scratch; the file then holds each group once. One collector per file at a time
(a lock file beside it says so). Then: `python rl/train.py --replay rollouts.jsonl`.

Every sample records what the online reward suite (`rl.rewards`) pays, so replay can weight it as training would:
the judges' R and components, `format` (every tag's credit) and `format_success` (only tags whose tool made an
image), and the content rewards `relevance`, `chart_numbers` (None where not scored) and `repetition` (minus the
penalty; 0.0 for none). Repetition is scored against one memory per collector run, seeded with the planner's worked
examples and fed each group as it is scored, as training feeds it each batch: a sample's value depends on what this
run collected before it (with --concurrency above 1, in the order groups finish), and a resumed run starts with
the worked examples only.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

from rich.progress import Progress

from judges.rule import format_score
from llmi_graph import Config, State, build_graph
from llmi_graph.policy import Policy, policy_for
from rl.content import (
    RepetitionMemory,
    chart_numbers_score,
    relevance_score,
    succeeded_indices,
    tag_relevance,
    written_texts,
)
from rl.data import TRAIN_FILE, Row, load_rows
from rl.replay import read_groups
from rl.rewards import RewardSuite
from rl.train import repetition_memory, reward_suite


def group_id(row: Row, group_size: int, round_: int) -> str:
    """A group's identity: the whole row (input images by content, so moving the data keeps it), G and the round."""
    canonical = {
        "prompt": row.prompt,
        "image_num": row.image_num,
        "tools": sorted(row.tools),
        "images": [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in row.images],
        "id": row.id,
        "group_size": group_size,
        "round": round_,
    }
    text = json.dumps(canonical, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def resume_file(path: Path) -> set[str]:
    """The groups `path` holds complete. A file a crash left damaged is first rewritten (atomically) to hold just
    those, one attempt each, as replay reads it: no torn line or partial group stays for the next append to join."""
    if not path.is_file() or path.stat().st_size == 0:
        return set()
    found = read_groups(path)
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        torn_tail = fh.read(1) != b"\n"
    if found.damaged or torn_tail:
        partial = path.with_name(path.name + ".partial")
        write_records(partial, found.records(), mode="w")
        os.replace(partial, path)
        print(
            f"repaired {path}: kept {len(found.groups)} complete group(s); dropped {found.unreadable} unreadable "
            f"line(s), {found.incomplete} incomplete and {found.duplicates} duplicate attempt(s)",
            flush=True,
        )
    return set(found.groups)


def hold_lock(path: Path) -> int:
    """Take the file's collector lock (released when the process ends, however it ends)."""
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SystemExit(f"error: another rl.collect is writing {path}; wait for it or pick another --out") from None
    return fd


async def content_rewards(
    states: list[dict[str, Any]], rollout_ids: list[str], tools: list[str], memory: RepetitionMemory
) -> list[dict[str, float | None]]:
    """One group's success-only format and content rewards, as the online suite computes them; `memory` then
    remembers the group."""
    tags = await asyncio.to_thread(tag_relevance, states)  # MiniLM blocks: off the event loop
    drafts = [
        (s["prompt"], rid, written_texts(s.get("calls") or [])) for s, rid in zip(states, rollout_ids, strict=True)
    ]
    penalties = await asyncio.to_thread(memory.penalties, drafts)
    return [
        {
            "format_success": format_score(
                state["draft"],
                state["image_num"],
                len(state["input_images"]),
                succeeded=succeeded_indices(state),
                failed_credit=0.0,
            ),
            "relevance": relevance_score(relevant),
            "relevance_success": relevance_score(relevant, failed_credit=0.0),
            "chart_numbers": chart_numbers_score(state, tools),
            "repetition": -penalty if penalty else 0.0,
        }
        for state, relevant, penalty in zip(states, tags, penalties, strict=True)
    ]


async def collect_group(
    row: Row, policy: Policy, cfg: Config, suite: RewardSuite, memory: RepetitionMemory, size: int, gid: str
) -> list[dict]:
    """One attempt at a group: G graph runs of the row, each scored (repetition against `memory`)."""
    graph = build_graph(policy=policy)
    attempt = uuid.uuid4().hex
    raws = await asyncio.gather(*(graph.ainvoke(row.request(), context=cfg) for _ in range(size)))
    states = [State.model_validate(raw) for raw in raws]
    dumped = [state.model_dump(mode="json") for state in states]
    rollout_ids = [f"{attempt}-{k}" for k in range(size)]
    content = await content_rewards(dumped, rollout_ids, list(row.tools), memory)
    records = []
    for k, state in enumerate(states):
        policy_out = state.policy
        assert policy_out is not None
        if not policy_out.completion_token_ids or policy_out.logprobs is None or policy_out.prompt_token_ids is None:
            raise RuntimeError(
                "the policy returned no token ids or logprobs: use vLLM (return_token_ids) or the embedded model"
            )
        reward = await suite.score(rollout_ids[k], dumped[k], list(row.tools))
        records.append(
            {
                "group": gid,
                "attempt": attempt,
                "sample": k,
                "group_size": size,
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
                    **content[k],
                },
                "policy_model": policy_out.model,
                "draft": state.draft,
            }
        )
    return records


def write_records(path: Path, records: list[dict[str, Any]], mode: str = "a") -> None:
    """Append (or write) records in one write, flushed to disk: a crash tears at most the group being written."""
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if mode == "a" else os.O_TRUNC)
    fd = os.open(path, flags, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


async def collect(args: argparse.Namespace) -> int:
    """Collect (or resume collecting) every group of the command line's rows; return how many were written."""
    rows = load_rows(args.dataset)[: args.limit or None]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = hold_lock(out)
    try:
        return await collect_into(out, rows, args)
    finally:
        os.close(lock)


async def collect_into(out: Path, rows: list[Row], args: argparse.Namespace) -> int:
    """Collect the groups of `rows` that `out` does not hold complete yet; return how many were written."""
    done = resume_file(out)
    cfg = Config(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=1.0,
        tool_cache=True,
        policy_url=args.policy_url,
        policy_model=args.model or "default",
        adapter=None,  # the base model, which rl/train.py trains from (not the shipped adapter)
    )
    policy: Policy = policy_for(cfg)
    suite = reward_suite(args.train_config)
    memory = repetition_memory(args.train_config)  # seeded as training's is
    groups: dict[str, Row] = {}
    for row in rows:
        groups.setdefault(group_id(row, args.group, args.round), row)  # a repeated row is one group
    todo = [(row, gid) for gid, row in groups.items() if gid not in done]
    written = 0
    gate = asyncio.Semaphore(args.concurrency)
    with Progress() as progress:
        task = progress.add_task(
            f"collecting {len(todo)} group(s) ({len(groups) - len(todo)} already recorded)", total=len(todo)
        )

        async def one(row: Row, gid: str) -> None:
            nonlocal written
            async with gate:
                records = await collect_group(row, policy, cfg, suite, memory, args.group, gid)
                write_records(out, records)  # in the event loop: one group's write at a time
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
    parser.add_argument("--repetition-memory", type=int, default=256, help="Drafts the repetition penalty remembers.")
    parser.add_argument(
        "--repetition-threshold", type=float, default=0.5, help="Trigram overlap where the repetition penalty starts."
    )
    args = parser.parse_args(argv)
    args.train_config = TrainConfig(
        judge_url=args.judge_url,
        judge_model=args.judge_model,
        mllm_url=args.mllm_url,
        mllm_model=args.mllm_model,
        repetition_memory=args.repetition_memory,
        repetition_threshold=args.repetition_threshold,
    )
    written = asyncio.run(collect(args))
    print(f"recorded {written} group(s) in {args.out}; train with: python rl/train.py --replay {args.out}")


if __name__ == "__main__":
    main()
