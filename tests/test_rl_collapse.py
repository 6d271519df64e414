"""The collapse guard: a run that writes one tag under every prompt, or settles on a failing tag, stops and says so."""

from __future__ import annotations

import json
from types import SimpleNamespace

from rl.collapse import CollapseGuard, TagWatch, tag_key


def state(prompt: str, *calls: tuple[str, str, bool]) -> dict:
    """A rollout's state as the reward suite sees it: (source, code/query, made) per tag."""
    key = {"code": "code", "search": "query", "diffusion": "prompt"}
    return {
        "prompt": prompt,
        "calls": [
            {"index": i, "source": src, "description": f"d{i}", "params": {key[src]: body}}
            for i, (src, body, _) in enumerate(calls)
        ],
        "results": [{"index": i, "status": "ok" if made else "failed"} for i, (_, _, made) in enumerate(calls)],
    }


def test_one_tag_under_every_prompt_is_a_collapse():
    watch = TagWatch(window=8)
    for k in range(8):
        watch.observe(state(f"prompt {k % 4}", ("code", "plt.line()\n", False)))
    verdict = watch.verdict()
    assert verdict is not None and verdict.kind == "repeated" and verdict.share == 1.0
    assert verdict.example == "code: plt.line()" and verdict.prompts == 4
    assert "collapsed onto one tag" in verdict.message()


def test_varied_working_tags_are_not_and_a_short_window_says_nothing_yet():
    watch = TagWatch(window=8)
    for k in range(7):
        watch.observe(state(f"prompt {k}", ("code", f"plt.plot([{k}, {k + 1}])", True)))
    assert watch.verdict() is None  # window not full
    watch.observe(state("prompt 7", ("search", "red fox", True)))
    assert watch.verdict() is None
    # one prompt's group all writing the same tag is not a collapse: it is what that prompt asked for
    same_prompt = TagWatch(window=8)
    for _ in range(8):
        same_prompt.observe(state("one prompt", ("code", "plt.bar([1, 2])", True)))
    assert same_prompt.verdict() is None


def test_settling_on_a_failing_tag_is_a_collapse_but_not_learning_yet_is_not():
    # Every run starts with many different tags that fail: that is a policy still learning, not a collapse.
    learning = TagWatch(window=6)
    for k in range(6):
        learning.observe(state(f"p{k}", ("code", f"plt.foo({k})", False)))
    assert learning.verdict() is None
    # Most tags one failing call (below the repeated share), everything failing: the policy settled on it.
    watch = TagWatch(window=6)
    for k in range(6):
        watch.observe(state(f"p{k}", ("code", "plt.line()" if k < 4 else f"plt.foo({k})", False)))
    verdict = watch.verdict()
    assert verdict is not None and verdict.kind == "failing" and verdict.share == 1.0
    assert verdict.example == "code: plt.line()" and "collapsed onto a failing tag" in verdict.message()
    # The same tags with one working among them are not a collapse.
    mixed = TagWatch(window=6)
    for k in range(6):
        mixed.observe(state(f"p{k}", ("code", "plt.line()" if k < 4 else f"plt.plot([{k}])", k == 5)))
    assert mixed.verdict() is None


def test_the_guard_waits_for_the_warm_up_then_stops_saving_and_writes_the_verdict(tmp_path):
    watch = TagWatch(window=4)
    for k in range(4):
        watch.observe(state(f"p{k}", ("code", "plt.line()", False)))
    guard = CollapseGuard(watch, tmp_path, after_steps=3)
    control = SimpleNamespace(should_training_stop=False, should_save=False)
    guard.on_step_end(None, SimpleNamespace(global_step=2, is_world_process_zero=True), control)
    assert not control.should_training_stop and not (tmp_path / "collapse.json").exists()
    guard.on_step_end(None, SimpleNamespace(global_step=3, is_world_process_zero=True), control)
    assert control.should_training_stop and control.should_save
    saved = json.loads((tmp_path / "collapse.json").read_text())
    assert saved["kind"] == "repeated" and saved["step"] == 3 and "plt.line()" in saved["message"]


def test_tag_keys_fold_whitespace_and_case_but_not_content():
    a = {"source": "code", "params": {"code": "plt.plot(x,  y)\n"}}
    b = {"source": "code", "params": {"code": "PLT.plot(x, y)"}}
    c = {"source": "code", "params": {"code": "plt.plot(x, z)"}}
    assert tag_key(a) == tag_key(b) != tag_key(c)


async def test_the_reward_suite_shows_each_rollout_to_the_watch_once():
    from rl.rewards import RewardSuite
    from tests.test_rl_content import by_name, call_like_trl, make_state, tag

    suite = RewardSuite(format_weight=1.0)
    suite.watch = TagWatch(window=4)
    batch = [make_state(f"prompt {k}", tag("code", "chart", code="plt.line()")) for k in range(4)]
    ids = [f"r{k}" for k in range(4)]
    for name in ("hybrid", "format"):  # two functions, one rollout each: observed once
        await call_like_trl(by_name(suite)[name][0], batch, rollout_id=ids)
    verdict = suite.watch.verdict()
    assert verdict is not None and verdict.kind == "repeated" and verdict.tags == 4 and verdict.prompts == 4
