"""Held-out evaluation: tag validity and image-number score of a policy on rows it never trained on.

    python -m rl.evaluate [--adapter rl-out/run/adapter] [--dataset rl/data/heldout.jsonl]

Tag validity (per draft): the draft has tags and all of them parse and validate (for a row that wants no images:
it has none). Image-number score: `judges.rule.image_num_score` on the images actually made, evaluation split.
Greedy decoding, so the numbers are repeatable.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from judges.rule import format_ok, format_score, image_num_score
from llmi_graph import Config, State
from llmi_graph.policy import policy_for
from rl.data import HELDOUT_FILE, Row, RowIndex, load_rows
from rl.rollout import GraphRollout


def metrics(rows: list[Row], states: list[State]) -> dict[str, Any]:
    """Tag validity, share of valid tags, share of valid tags that made an image, format score and image-number
    score over the rows."""
    ok = [format_ok(s.draft, s.image_num, len(s.input_images)) for s in states]
    tags = [c for s in states for c in s.calls]
    made = [sum(r.status == "ok" for r in s.results) for s in states]
    valid = sum(c.valid for c in tags)
    return {
        "rows": len(rows),
        "tag_validity": sum(ok) / len(ok),
        "drafts_with_tags": sum(bool(s.calls) for s in states) / len(states),
        "valid_tag_share": (sum(c.valid for c in tags) / len(tags)) if tags else 0.0,
        "tool_success": (sum(r.status == "ok" for s in states for r in s.results) / valid) if valid else 0.0,
        "format_score": statistics.mean(format_score(s.draft, s.image_num, len(s.input_images)) for s in states),
        "image_num_score": statistics.mean(
            image_num_score(m, s.image_num, "eval") for m, s in zip(made, states, strict=True)
        ),
        "mean_completion_tokens": statistics.mean(len(s.policy.completion_token_ids or []) for s in states if s.policy),
    }


def evaluate(
    rows: list[Row], *, adapter: str | None = None, max_tokens: int = 256, model: str | None = None
) -> tuple[dict[str, Any], list[State]]:
    """Run every row once (greedy) with the embedded model (plus an adapter) and measure."""
    cfg = Config(
        adapter=adapter,
        embedded_model_path=model,
        max_tokens=max_tokens,
        temperature=0.0,
        code_timeout_s=20.0,
        tool_cache=False,
    )
    policy = policy_for(cfg)
    states = GraphRollout(RowIndex(rows), cfg, lambda trainer: policy).run_states([r.prompt for r in rows], policy)
    return metrics(rows, states), states


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", default=None, help="A LoRA adapter folder (rl/train.py output).")
    parser.add_argument("--dataset", default=str(HELDOUT_FILE), help="Held-out rows.")
    parser.add_argument("--max-tokens", type=int, default=256, help="Most tokens per draft.")
    parser.add_argument("--out", default=None, help="Write the metrics and drafts here (JSON).")
    args = parser.parse_args(argv)
    result, states = evaluate(load_rows(args.dataset), adapter=args.adapter, max_tokens=args.max_tokens)
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps({"metrics": result, "drafts": [s.draft for s in states]}, indent=2))


if __name__ == "__main__":
    main()
