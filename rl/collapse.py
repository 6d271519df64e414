"""Stop a GRPO run that has collapsed, and say so.

A small policy can find one tag that the reward pays for and write it under every prompt: a chart copied from a
worked example, or `plt.line()` (which always fails) while the format reward still paid for the form. Reward means
hide this; the tags show it. `TagWatch` keeps the last `window` tags the rollouts wrote (fed by the reward suite,
once per rollout) and `CollapseGuard` checks them after each optimizer step past the warm-up:

- *repeated*: one tag, keyed by what it asks the tool for (its code, query or prompt, whitespace and case folded),
  makes up at least `share` of the window's tags, across at least `min_prompts` different prompts;
- *failing*: at least `failing_share` of the window's tags made no image, across at least `min_prompts` prompts,
  and one failing tag makes up at least `failing_key_share` of the window: the policy settled on a tag that fails.
  Many different failing tags are a policy that has not learned yet (every run starts there), not a collapse.

Either way the run saves a checkpoint, writes `collapse.json` (the verdict, the tag, the step) into the output
folder, prints the verdict, and stops: a collapsed run is a finding, not a result to keep training on.
"""

from __future__ import annotations

import json
import re
import threading
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

_WS_RE = re.compile(r"\s+")


@dataclass(frozen=True)
class Tag:
    prompt: str
    key: str  # what the tag asks its tool for, normalised
    made: bool  # whether its tool made an image


@dataclass(frozen=True)
class Verdict:
    kind: str  # "repeated" or "failing"
    share: float
    tags: int
    prompts: int
    example: str
    step: int = 0

    def message(self) -> str:
        if self.kind == "repeated":
            return (
                f"the policy collapsed onto one tag: {self.share:.0%} of the last {self.tags} tags, over "
                f"{self.prompts} prompts, ask for {self.example!r}"
            )
        return (
            f"the policy collapsed onto a failing tag: {self.share:.0%} of the last {self.tags} tags, over "
            f"{self.prompts} prompts, made no image, most of them {self.example!r}"
        )


def tag_key(call: Mapping[str, Any]) -> str:
    """A tag's identity for collapse checks: its source and tool input (code, query or prompt), normalised."""
    params = call.get("params") or {}
    body = next((params[k] for k in ("code", "query", "prompt") if isinstance(params.get(k), str)), None)
    if body is None:
        body = call.get("description") or call.get("raw") or ""
    return f"{call.get('source') or '?'}: {_WS_RE.sub(' ', str(body)).strip().lower()}"


class TagWatch:
    """The last `window` tags the rollouts wrote, thread-safe."""

    def __init__(self, window: int = 64):
        self.window = window
        self._tags: deque[Tag] = deque(maxlen=window)
        self._lock = threading.Lock()

    def observe(self, state: Mapping[str, Any]) -> None:
        """Record one rollout's tags (a state as `State.model_dump(mode="json")` writes it)."""
        made = {r.get("index") for r in state.get("results") or [] if r.get("status") == "ok"}
        prompt = str(state.get("prompt") or "")
        tags = [Tag(prompt, tag_key(c), c.get("index") in made) for c in state.get("calls") or []]
        with self._lock:
            self._tags.extend(tags)

    def verdict(
        self, share: float = 0.8, failing_share: float = 0.95, min_prompts: int = 3, failing_key_share: float = 0.5
    ) -> Verdict | None:
        """A collapse verdict once the window is full, else None."""
        with self._lock:
            tags = list(self._tags)
        if len(tags) < self.window or len({t.prompt for t in tags}) < min_prompts:
            return None
        key, count = Counter(t.key for t in tags).most_common(1)[0]
        prompts = len({t.prompt for t in tags if t.key == key})
        if count / len(tags) >= share and prompts >= min_prompts:
            return Verdict("repeated", count / len(tags), len(tags), prompts, key[:200])
        failed = [t for t in tags if not t.made]
        if failed and len(failed) / len(tags) >= failing_share:
            common, times = Counter(t.key for t in failed).most_common(1)[0]
            if times / len(tags) >= failing_key_share:
                return Verdict(
                    "failing", len(failed) / len(tags), len(tags), len({t.prompt for t in tags}), common[:200]
                )
        return None


class CollapseGuard(TrainerCallback):
    """After the warm-up, stop (saving) when `TagWatch` finds a collapse; the verdict goes to `collapse.json`."""

    def __init__(
        self,
        watch: TagWatch,
        output_dir: Path,
        after_steps: int = 10,
        share: float = 0.8,
        failing_share: float = 0.95,
        min_prompts: int = 3,
        failing_key_share: float = 0.5,
    ):
        self.watch, self.path, self.after_steps = watch, Path(output_dir) / "collapse.json", after_steps
        self.share, self.failing_share, self.min_prompts = share, failing_share, min_prompts
        self.failing_key_share = failing_key_share
        self.found: Verdict | None = None

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step < self.after_steps or self.found is not None:
            return
        verdict = self.watch.verdict(self.share, self.failing_share, self.min_prompts, self.failing_key_share)
        if verdict is None:
            return
        self.found = Verdict(**{**asdict(verdict), "step": state.global_step})
        if state.is_world_process_zero:
            self.path.write_text(json.dumps({**asdict(self.found), "message": self.found.message()}, indent=2))
            print(f"stopping at step {state.global_step}: {self.found.message()}", flush=True)
        control.should_training_stop = True
        control.should_save = True
