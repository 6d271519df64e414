"""Held-out evaluation: tag validity and image-number score of a policy on rows it never trained on.

    python -m rl.evaluate [--adapter rl-out/run/adapter] [--dataset rl/data/heldout.jsonl]

Tag validity (per draft): the draft has tags and all of them parse and validate (for a row that wants no images:
it has none). Image-number score: `judges.rule.image_num_score` on the images actually made, evaluation split.
Greedy decoding, so the numbers are repeatable.

Content figures (issue 12's targets, `CONTENT_TARGETS`):
- `made_image`: the share of drafts for rows that want images (image_num != -1) that made at least one image;
- `distinct_chart_code`: of the drafts with a working chart, the share whose chart code (all whitespace aside) no
  draft for another prompt also wrote: a policy that copies one chart under every prompt scores 0;
- `numbers_in_chart`: of the prompts that `rl.content.chart_numbers_score` scores (they give numbers, want
  images, and need a chart or name no tools), the share whose working chart code holds at least half of them;
- `plots_parabola` (used by the demo on the README's example prompt): a working chart plots a squared variable.
"""

from __future__ import annotations

import argparse
import ast
import json
import statistics
from pathlib import Path
from typing import Any

from judges.rule import format_ok, format_score, image_num_score
from llmi_graph import Config, State
from llmi_graph.policy import policy_for
from rl.content import chart_numbers_score, succeeded_indices, valid_calls
from rl.data import HELDOUT_FILE, Row, RowIndex, load_rows
from rl.rollout import GraphRollout

CONTENT_TARGETS = {"made_image": 0.8, "distinct_chart_code": 0.8, "numbers_in_chart": 0.5}
"""Issue 12's held-out targets for the shipped adapter (shares, at least)."""

_PLOT_CALLS = frozenset({"plot", "scatter", "bar", "barh", "fill_between", "stem", "step", "lineplot", "scatterplot"})


def chart_codes(state: dict[str, Any]) -> list[str]:
    """The code of each of a state's code tags whose tool made an image (a state as `model_dump(mode="json")`)."""
    made = succeeded_indices(state)
    return [c["params"]["code"] for c in valid_calls(state) if c["source"] == "code" and c["index"] in made]


def _squares(node: ast.AST) -> bool:
    """Whether an expression squares a name: `x**2`, `x * x` (not `x * x * x`), np.square(x), np.power(x, 2)."""
    found = False
    for sub in ast.walk(node):
        if isinstance(sub, ast.BinOp) and isinstance(sub.op, ast.Pow):
            found |= isinstance(sub.left, ast.Name) and isinstance(sub.right, ast.Constant) and sub.right.value == 2
        elif isinstance(sub, ast.BinOp) and isinstance(sub.op, ast.Mult):
            operands = [sub.left, sub.right]
            if all(isinstance(o, ast.Name) for o in operands) and sub.left.id == sub.right.id:  # type: ignore[union-attr]
                found |= not any(
                    isinstance(p, ast.BinOp) and isinstance(p.op, ast.Mult) and sub in (p.left, p.right)
                    for p in ast.walk(node)
                )
        elif isinstance(sub, ast.Call):
            name = sub.func.attr if isinstance(sub.func, ast.Attribute) else getattr(sub.func, "id", "")
            args = sub.args
            if name == "square" and len(args) == 1 and isinstance(args[0], ast.Name):
                found = True
            elif name in ("power", "pow") and len(args) == 2 and isinstance(args[0], ast.Name):
                found |= isinstance(args[1], ast.Constant) and args[1].value == 2
    return found


def plots_parabola(state: dict[str, Any]) -> bool:
    """Whether the state made a chart that plots the square of a variable: a plotting call (plt.plot, ax.scatter,
    sns.lineplot, ...) whose arguments square a name (`x**2`, `x * x`, np.square(x)), or name a variable assigned
    such a square. Comments and other statements do not count."""
    for code in chart_codes(state):
        try:
            tree = ast.parse(code)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            continue
        squared = {
            t.id
            for n in ast.walk(tree)
            if isinstance(n, ast.Assign) and _squares(n.value)
            for t in n.targets
            if isinstance(t, ast.Name)
        }
        for n in ast.walk(tree):
            if not isinstance(n, ast.Call) or not isinstance(n.func, ast.Attribute) or n.func.attr not in _PLOT_CALLS:
                continue
            for arg in [*n.args, *(k.value for k in n.keywords)]:
                if _squares(arg) or (isinstance(arg, ast.Name) and arg.id in squared):
                    return True
    return False


def content_metrics(rows: list[Row], states: list[State]) -> dict[str, Any]:
    """`made_image`, `distinct_chart_code` and `numbers_in_chart` (see the module docstring), with the counts they
    are shares of; a share is None when no row counts towards it."""
    dumped = [s.model_dump(mode="json") for s in states]
    wanting = [d for r, d in zip(rows, dumped, strict=True) if r.image_num != -1]
    made = [bool(succeeded_indices(d)) for d in wanting]
    codes = [(d["prompt"], {"".join(code.split()) for code in chart_codes(d)}) for d in dumped]
    charted = [(prompt, mine) for prompt, mine in codes if mine]
    distinct = [not any(mine & theirs for other, theirs in charted if other != prompt) for prompt, mine in charted]
    numbers = [chart_numbers_score(d, r.tools or None) for r, d in zip(rows, dumped, strict=True)]
    used = [score >= 0.5 for score in numbers if score is not None]

    def share(flags: list[bool]) -> float | None:
        return sum(flags) / len(flags) if flags else None

    return {
        "made_image": share(made),
        "made_image_rows": len(made),
        "distinct_chart_code": share(distinct),
        "charted_drafts": len(distinct),
        "numbers_in_chart": share(used),
        "number_prompts": len(used),
    }


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
        **content_metrics(rows, states),
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
