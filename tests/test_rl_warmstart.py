"""The warm start (rl.warmstart): the rule-based teacher's drafts, their run through the real graph (code sandbox,
local editor), SFT on them, and GRPO going on training the warm-start adapter."""

from __future__ import annotations

import asyncio
import json

import pytest

from llmi_graph.policy import Sampling
from llmi_graph.tags import parse_tags
from rl.data import HELDOUT_FILE, TRAIN_FILE, Row, load_rows
from rl.evaluate import plots_parabola
from rl.teacher_charts import CHARTS
from rl.warmstart import (
    README_FUNCTION,
    TeacherPolicy,
    WarmStartConfig,
    _starter_set,
    drill_functions,
    drill_rows,
    function_shape,
    images_for,
    number_draft,
    python_expression,
    teacher_draft,
    teacher_drafts,
    teacher_examples,
    topic_charts,
    warm_start,
)


def test_every_training_row_that_wants_images_has_a_draft_with_valid_tags_in_the_right_number():
    rows = [r for r in load_rows(TRAIN_FILE) if r.image_num != -1]
    for row in rows:
        draft = teacher_draft(row)
        assert draft, row.prompt
        calls = parse_tags(draft, len(row.images)).calls
        assert calls and all(c.valid for c in calls), (row.prompt, draft)
        assert len(calls) == images_for(row.image_num), (row.prompt, draft)
        assert {c.source for c in calls} == ({"edit"} if row.images else {"code"})


def test_the_prompts_of_one_topic_get_different_charts():
    """A chart written for two prompts counts as a copy in the held-out figures: each prompt of a topic opens with
    a different one (a prompt asking for 2 or 3 charts may share its later ones: a topic has 3)."""
    rows = load_rows(TRAIN_FILE)
    drafts = teacher_drafts(rows)
    by_topic: dict[int, list[str]] = {}
    for row in rows:
        if topic_charts(row.prompt):
            first = parse_tags(drafts[row.prompt]).calls[0].params["code"]
            by_topic.setdefault(id(topic_charts(row.prompt)), []).append(first)
    assert len(by_topic) == len(CHARTS) and all(len(set(c)) == len(c) for c in by_topic.values())


def test_rows_that_want_no_image_get_no_draft():
    plain = [r for r in load_rows(TRAIN_FILE) if r.image_num == -1]
    assert plain and all(teacher_draft(r) is None for r in plain)


def test_no_held_out_prompt_matches_a_hand_written_topic():
    """The held-out set stays unseen: none of its prompts finds a chart written for a training topic."""
    heldout = load_rows(HELDOUT_FILE)
    assert all(topic_charts(r.prompt) is None for r in heldout)
    assert not any(r.prompt in CHARTS for r in heldout)


def test_a_prompt_s_own_numbers_are_what_the_chart_plots():
    draft = number_draft("Chart these monthly sales: January 160, February 40, March 220, April 250.")
    (call,) = parse_tags(draft).calls
    assert call.params["code"] == 'plt.bar(["Jan", "Feb", "Mar", "Apr"], [160, 40, 220, 250])'
    assert draft.startswith("Sales rose from 160 in Jan to 250 in Apr, with the highest value, 250, in Apr.")
    assert call.description == "Sales by month"

    draft = number_draft("A runner ran 45, 41, 47 and 84 km in four weeks. Visualise it; comment on the week.")
    (call,) = parse_tags(draft).calls
    assert call.params["code"] == 'plt.bar(["Week 1", "Week 2", "Week 3", "Week 4"], [45, 41, 47, 84])'
    assert number_draft("Tell me about the 1 and only Eiffel Tower.") is None


def test_a_function_becomes_python_and_its_shape_is_named():
    assert python_expression("x^2 + 2x") == "x**2 + 2*x"
    assert python_expression("3x - 2") == "3*x - 2"
    assert python_expression("2^x") == "2**x"
    assert "parabola" in function_shape("x^2 - 4") and "upwards" in function_shape("x^2 - 4")
    assert "downwards" in function_shape("4 - x^2")
    assert "falls" in function_shape("3 - x") and "rises" in function_shape("2x + 1")
    assert "cubic" in function_shape("x^3 - x") and "exponential" in function_shape("2^x")
    assert "falls" in function_shape("5 - 2x") and "rises" in function_shape("3x - 4")  # the x term's sign
    assert "doubles" in function_shape("2^x") and "triples" in function_shape("3^x")


def test_the_drill_adds_new_number_and_function_prompts_but_no_held_out_or_readme_function():
    starter = _starter_set()
    rows = drill_rows(96)
    assert len(rows) == 96 and len({r.prompt for r in rows}) == 96
    assert drill_rows(96) == rows  # seeded: the same rows on every machine
    heldout = {r.prompt for r in load_rows(HELDOUT_FILE)}
    train = {r.prompt for r in load_rows(TRAIN_FILE)}
    functions = [r for r in rows if "y = " in r.prompt]
    assert len(functions) == 48
    used = {python_expression(f) for f in drill_functions()}
    for row in rows:
        assert row.prompt not in heldout and row.prompt not in train
        assert not any(row.prompt.startswith(t.split("{")[0]) for t in starter.HELDOUT_NUMBER_TEMPLATES)
        calls = parse_tags(teacher_draft(row)).calls
        assert len(calls) == 1 and calls[0].valid and calls[0].source == "code", row.prompt
    for row in functions:
        formula = row.prompt.split("y = ")[1].split(" f")[0].split(" for")[0]
        assert formula not in {*starter.HELDOUT_FUNCTIONS, README_FUNCTION}, row.prompt
        assert python_expression(formula) in used
        assert python_expression(formula) in parse_tags(teacher_draft(row)).calls[0].params["code"]
    assert sum("x^2" in r.prompt for r in functions) >= 12  # parabolas, though never the README's own
    assert drill_rows(0) == []


def test_the_teacher_policy_answers_only_the_prompts_it_has_drafts_for():
    teacher = TeacherPolicy({"Plot a line.": "A line.\n<imgen>{}</imgen>"})
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "Plot a line."}]
    out = asyncio.run(teacher.generate(messages, Sampling()))
    assert out.text.startswith("A line.") and out.backend == "teacher"
    assert teacher.messages["Plot a line."] == messages
    with pytest.raises(KeyError, match="no draft"):
        asyncio.run(teacher.generate([{"role": "user", "content": "Something else"}], Sampling()))


def _sample_rows() -> list[Row]:
    """A number prompt, a function (the README's), a picture edit and a hand-written topic, from the starter set."""
    train = load_rows(TRAIN_FILE)
    edit = next(r for r in train if r.images)
    topic = next(r for r in train if topic_charts(r.prompt) and r.image_num == 2)
    number = next(r for r in train if r.prompt.startswith("A class scored"))
    readme = Row(
        prompt="Plot y = x^2 for x from -3 to 3 and explain its shape", image_num=1, tools=("code",), images=()
    )
    plain = next(r for r in train if r.image_num == -1)
    return [number, readme, edit, topic, plain]


def test_the_teacher_s_drafts_run_in_the_real_sandbox_and_editor():
    rows = _sample_rows()
    examples, figures = teacher_examples(rows)
    assert [e.prompt for e in examples] == [r.prompt for r in rows[:4]]  # the plain row has no draft
    assert figures["kept"] == figures["drafted"] == 4 and not figures["failed"]
    assert figures["made_image"] == 1.0 and figures["numbers_in_chart"] == 1.0
    # SFT sees exactly the chat the planner builds: system prompt, worked examples, then the request
    chat = examples[0].messages
    assert chat[0]["role"] == "system" and "<imgen>" in chat[0]["content"]
    assert chat[-1]["role"] == "user" and chat[-1]["content"].startswith(rows[0].prompt)
    assert any("img_index" in m["content"] for m in examples[2].messages)  # the edit tool is offered
    # the README's prompt: a chart of y = x^2
    readme_state = {
        "calls": [
            {"index": 0, "source": "code", "params": {"code": parse_tags(examples[1].draft).calls[0].params["code"]}}
        ],
        "results": [{"index": 0, "status": "ok"}],
    }
    assert plots_parabola(readme_state)


@pytest.mark.slow
def test_sft_then_grpo_goes_on_training_the_same_adapter(tmp_path):
    import torch
    from safetensors.torch import load_file

    from rl.train import train
    from tests.test_rl import tiny_config

    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        "".join(
            json.dumps({"prompt": r.prompt, "image_num": r.image_num, "tools": list(r.tools), "images": list(r.images)})
            + "\n"
            for r in _sample_rows()[:2]
        )
    )
    cfg = WarmStartConfig(output_dir=str(tmp_path / "warm"), dataset=str(rows), batch_size=1, epochs=1.0, drill=0)
    adapter = warm_start(cfg)
    warm = load_file(str(adapter / "adapter_model.safetensors"))
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in warm.items())  # SFT moved the zero-initialised B
    log = [json.loads(line) for line in open(tmp_path / "warm" / "log.jsonl")]
    assert any("train_loss" in entry for entry in log)
    teacher = json.loads((tmp_path / "warm" / "teacher.json").read_text())
    assert teacher["kept"] == 2
    assert warm_start(cfg) == adapter  # a finished warm start is not redone

    grpo = tiny_config(tmp_path, init_adapter=str(adapter), max_steps=1, max_completion_length=96)
    trained = load_file(str(train(grpo) / "adapter_model.safetensors"))
    assert trained.keys() == warm.keys()  # the same adapter, trained on
    # not a new one: a fresh LoRA starts with B = 0, and one step cannot bring all of it back to the warm start's
    assert all(trained[k].abs().sum() > 0 for k in warm if "lora_B" in k)
    log = [json.loads(line) for line in open(tmp_path / "out" / "log.jsonl")]
    moved = any(not torch.equal(trained[k], warm[k]) for k in warm)
    assert moved == any(float(e.get("grad_norm") or 0) > 0 for e in log)  # a gradient moves it (if the group differs)
