"""A supervised warm start before GRPO: a rule-based teacher writes one short draft per training row, the drafts run
through the llmi graph (the real code sandbox and local editor), and the ones whose every tag made an image teach
the policy by SFT (TRL's SFTTrainer, loss on the draft only, a LoRA adapter that GRPO then goes on training).

    python -m rl.warmstart --out rl-out/warm            # adapter in rl-out/warm/adapter
    python -m rl.warmstart --check                      # only run the teacher's drafts and print their figures

Why: GRPO learns only from differences between the drafts of a group. The base SmolLM2 makes a working chart in
about 7% of its drafts, so most groups hold none, and two GRPO recipes drifted to tags whose "code" was prose
(README: The CPU demonstration). The warm start puts working, prompt-specific charts in the groups from step 1.

The teacher (`teacher_draft`):
- prompts that give numbers or a function: a chart of exactly those numbers or that function (Python written from
  the prompt), with labels from the prompt's own words (months, weeks, tests, days, products) and a sentence on
  the trend or the shape;
- data, place and creative topics: hand-written charts (`rl.teacher_charts`: real rounded facts for places, the
  formula for maths topics, story numbers for fiction), as many as the row's image count asks;
- picture edits: the edit the user asked for, on their image, with a sentence about the result;
- rows that want no image: none (the teacher has no text answers to give).
Only training rows have teacher drafts: no held-out topic, template or function appears in `rl.teacher_charts`.

The drill (`drill_rows`): 96 more rows for the warm start only, half a function to plot and half numbers to chart,
in the training templates' phrasing with new numbers and 55 functions (no held-out one, and not the README's own
x^2, so the README prompt still tests whether the policy generalises). The starter set alone has 4 functions, and
the first warm start plotted none of the held-out ones.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmi_graph import Config, State
from llmi_graph.policy import Sampling, TokenCallback
from llmi_graph.state import PolicyOutput
from rl.data import TRAIN_FILE, Row, RowIndex, load_rows
from rl.teacher_charts import CHARTS, Chart

# --- the teacher ------------------------------------------------------------------------------------------------

_FUNCTION = re.compile(
    r"y\s*=\s*(?P<f>[^,]+?)\s+(?:for\s+x\s+)?from\s+(?:x\s*=\s*)?(?P<a>-?\d+(?:\.\d+)?)\s+to\s+(?:x\s*=\s*)?"
    r"(?P<b>-?\d+(?:\.\d+)?)"
)
_NUMBER = re.compile(r"(?<![\w.^])-?\d+(?:\.\d+)?(?!\w|\.\d)")
_COUNTED = re.compile(
    r"\b(?:two|three|four|five|six|seven|eight|nine|ten|twelve|\d+)\s+(?P<unit>[a-z]+?)s?\b", re.IGNORECASE
)
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")  # fmt: skip
_UNITS = {
    "week": "Week",
    "day": "Day",
    "test": "Test",
    "month": "Month",
    "year": "Year",
    "product": "Product",
    "quarter": "Q",
}


def python_expression(formula: str) -> str:
    """A formula as the prompts write it (`x^2 + 2x`, `3 - x`, `2^x`) in Python (`x**2 + 2*x`)."""
    expr = formula.strip().replace("^", "**")
    return re.sub(r"(\d)\s*(x|\()", r"\1*\2", expr)


def function_shape(formula: str) -> str:
    """One sentence on the shape of y = formula: line, parabola, cubic, hyperbola or exponential."""
    f = formula.replace(" ", "")
    if base := re.search(r"(\d+)\^x", f):
        times = {"2": "doubles", "3": "triples"}.get(base.group(1), f"grows {base.group(1)}-fold")
        return f"y = {formula} grows exponentially: it {times} with every step in x and shoots up on the right."
    if "/x" in f:
        return f"y = {formula} is a hyperbola: it falls towards zero on both sides and jumps at x = 0."
    if "x^3" in f:
        return f"y = {formula} is a cubic: an S-shaped curve that rises on the right and falls on the left."
    if "x^2" in f:
        opens = "downwards, with its highest" if re.match(r"^[^x]*-x\^2", f) else "upwards, with its lowest"
        return f"y = {formula} is a parabola: it opens {opens} point where the curve turns."
    slope = re.search(r"(^|[+-])\d*(?:\.\d+)?x", f)  # the sign of the x term
    falling = bool(slope) and slope.group(1) == "-"
    return f"y = {formula} is a straight line: it {'falls' if falling else 'rises'} at the same rate everywhere."


def _labels(prompt: str, count: int) -> list[str]:
    """Labels for `count` values: the prompt's month names, else its counted unit ("four weeks": Week 1..4,
    "three products": Product A..C), else 1..count."""
    months = [m for m in _MONTHS if re.search(rf"\b{m}\b", prompt)]
    if len(months) == count:
        return [m[:3] for m in months]
    for m in _COUNTED.finditer(prompt):
        label = _UNITS.get(m.group("unit").lower())
        if label == "Product":
            return [f"Product {chr(ord('A') + k)}" for k in range(count)]
        if label:
            return [f"{label} {k + 1}" for k in range(count)]
    return [str(k + 1) for k in range(count)]


def _trend(subject: str, values: Sequence[float], labels: Sequence[str], unit: str) -> str:
    """One sentence: where the values start and end, and where they peak."""
    first, last = values[0], values[-1]
    top = max(range(len(values)), key=lambda k: values[k])
    move = "rose" if last > first else "fell" if last < first else "ended where they started"
    return (
        f"{subject[0].upper()}{subject[1:]} {move} from {_fmt(first)}{unit} in {labels[0]} to {_fmt(last)}{unit} in "
        f"{labels[-1]}, with the highest value, {_fmt(values[top])}{unit}, in {labels[top]}."
    )


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _tag(source: str, description: str, params: str) -> str:
    return f"<imgen>{{'source': '{source}', 'description': '{description}', 'params': {{{params}}}}}</imgen>"


def _code_tag(description: str, code: str) -> str:
    """A code tag; the code's own strings use double quotes, line breaks are written as \\n."""
    return _tag("code", description, "'code': '" + code.replace("\n", "\\n") + "'")


def number_draft(prompt: str) -> str | None:
    """A chart of the prompt's function or its numbers, or None when it gives neither."""
    fn = _FUNCTION.search(prompt)
    if fn:
        formula, a, b = fn.group("f").strip(), fn.group("a"), fn.group("b")
        code = f"x = np.linspace({a}, {b})\nplt.plot(x, {python_expression(formula)})"
        return f"{function_shape(formula)}\n{_code_tag(f'y = {formula} for x from {a} to {b}', code)}"
    values = [float(v) for v in _NUMBER.findall(prompt)]
    if len(values) < 2:
        return None
    percent = "%" in prompt
    labels = _labels(prompt, len(values))
    nums = ", ".join(_fmt(v) for v in values)
    names = ", ".join(f'"{label}"' for label in labels)
    line = "plot" if re.search(r"\b(temperature|degrees)\b", prompt, re.IGNORECASE) else "bar"
    code = f"plt.{line}([{names}], [{nums}])"
    what = _subject(prompt)
    unit = "month" if labels[0] in [m[:3] for m in _MONTHS] else labels[0].split()[0].lower()
    description = f"{what[0].upper()}{what[1:]} by {unit}" if labels[0][0].isalpha() else what
    return f"{_trend(what, values, labels, '%' if percent else '')}\n{_code_tag(description, code)}"


def _subject(prompt: str) -> str:
    """A short name for what the prompt's numbers measure."""
    for pattern, name in (
        (r"\bsales?\b|\bsold\b", "sales"),
        (r"\bscored?\b|\bscores\b", "the scores"),
        (r"\bshares?\b", "the shares"),
        (r"\btemperature\b", "the temperature"),
        (r"\bran\b|\bkm\b", "the distance"),
        (r"\brain", "the rainfall"),
    ):
        if re.search(pattern, prompt, re.IGNORECASE):
            return name
    return "the values"


# the training split's edit requests: (what the user asks, the editor instruction, the sentence before, after)
_EDITS = [
    ("black and white", "make it black and white", "Here is your picture in black and white.",
     "Without colour the scene feels calm, quiet and a little nostalgic."),
    ("top left corner", "crop to the top left corner", "Here is the top left corner of your picture.",
     "What remains is the upper left part of the scene: mostly sky and the edge of the view."),
    ("by 90 degrees", "rotate 90 degrees", "Here is your picture turned by 90 degrees.",
     "It looks strange because the ground now runs up the side and the sky sits where a wall should be."),
    ("mirror my picture", "flip horizontally", "Here is your picture mirrored from left to right.",
     "Both versions show the same scene; only left and right have swapped, which feels odd in a familiar place."),
    ("brighter", "make it brighter", "Here is your picture, brighter.",
     "Brightness lifts every pixel, so shadows open up and colours look lighter and more airy."),
    ("Summer 2024", "add the caption \"Summer 2024\"", "Here is your picture with its caption.",
     "That summer the little house by the road was where every long, warm evening ended."),
    ("red box", "draw a red box around the center", "Here is your picture with a red box around its centre.",
     "The box draws the eye to the middle of the scene, where the main subject stands."),
    ("blur", "blur it", "Here is your picture, blurred.",
     "A blurred background keeps attention on a sharp subject in front of it, as in a portrait."),
    ("contrast", "increase the contrast", "Here is your picture with more contrast.",
     "Contrast widens the gap between light and dark, so shapes stand out more clearly."),
]  # fmt: skip


def edit_draft(row: Row) -> str | None:
    """The edit the user asked for, on their first image."""
    if not row.images:
        return None
    for needle, instruction, before, after in _EDITS:
        if needle.lower() in row.prompt.lower():
            desc = before.removeprefix("Here is ").rstrip(".")
            params = f"'img_index': 0, 'prompt': '{instruction}'"
            if "'" in instruction or '"' in instruction:
                params = f"'img_index': 0, 'prompt': {json.dumps(instruction.replace(chr(34), chr(39)))}"
            return f"{before}\n{_tag('edit', desc[0].upper() + desc[1:], params)}\n{after}"
    return None


def images_for(image_num: int) -> int:
    """How many images a draft for this image-count constraint has (LLM-I convention: 0 = one to three, 99 = at
    least one, N = exactly N)."""
    return image_num if 1 <= image_num <= 3 else 1


def topic_charts(prompt: str) -> tuple[Chart, ...] | None:
    """The hand-written charts of the training topic (or mixed prompt) the prompt is about."""
    if prompt in CHARTS:
        return CHARTS[prompt]
    for topic, charts in CHARTS.items():
        if topic in prompt:
            return charts
    return None


def teacher_draft(row: Row, occurrence: int = 0) -> str | None:
    """The teacher's draft for a training row, or None where it has none (rows that want no image, or a topic it
    does not know). `occurrence` counts the earlier rows of the same topic: each prompt of a topic starts at a
    different one of its charts, as different prompts should (the held-out figures count a chart written for two
    prompts as a copy)."""
    if row.image_num == -1:
        return None
    if row.images:
        return edit_draft(row)
    charts = topic_charts(row.prompt)  # first: a topic may hold numbers of its own ("between -2 and 2")
    if not charts:
        return number_draft(row.prompt)
    chosen = [charts[(occurrence + k) % len(charts)] for k in range(images_for(row.image_num))]
    return "\n".join(f"{c.intro}\n{_code_tag(c.description, c.code)}" for c in chosen)


def teacher_drafts(rows: Sequence[Row]) -> dict[str, str]:
    """The teacher's draft of each row that has one, by prompt (`teacher_draft`, counting each topic's rows)."""
    seen: dict[int, int] = {}
    drafts = {}
    for row in rows:
        charts = topic_charts(row.prompt)
        occurrence = seen.get(id(charts), 0)
        seen[id(charts)] = occurrence + 1
        if draft := teacher_draft(row, occurrence):
            drafts[row.prompt] = draft
    return drafts


class TeacherPolicy:
    """A policy whose drafts are the teacher's (a scripted policy, named as one): it records the messages the
    planner built, so SFT trains on exactly the chat the policy sees at run time."""

    backend = "teacher"

    def __init__(self, drafts: dict[str, str]):
        self.drafts = drafts
        self.messages: dict[str, list[dict[str, Any]]] = {}

    async def generate(
        self, messages: Sequence[Any], sampling: Sampling, on_token: TokenCallback | None = None
    ) -> PolicyOutput:
        user = messages[-1]["content"]
        text = user if isinstance(user, str) else " ".join(p.get("text", "") for p in user if isinstance(p, dict))
        prompt = next((p for p in self.drafts if text.startswith(p)), None)
        if prompt is None:
            raise KeyError(f"the teacher has no draft for {text[:80]!r}")
        self.messages[prompt] = [dict(m) for m in messages]
        return PolicyOutput(text=self.drafts[prompt], backend=self.backend, model="teacher")


# --- the drill: more number and function prompts than the starter set has ----------------------------------------

# Extra phrasings of the training function template; none is a held-out template ("Draw y = ... from x = ...").
_DRILL_FUNCTION_TEMPLATES = (
    "Graph y = {f} for x from {a} to {b} and say what the curve looks like.",
    "Show y = {f} from {a} to {b} in a chart and explain it.",
)
# The README's example function; the drill leaves it out so that the README prompt stays a test of generalising.
README_FUNCTION = "x^2"


def drill_functions() -> list[str]:
    """Lines, parabolas, cubics, hyperbolas and exponentials with small coefficients; no held-out function and not
    the README's x^2."""
    forms = []
    for c in (2, 3, 4, 5):
        forms += [f"{c}x + 1", f"{c}x - {c + 1}", f"{c} - x", f"{c + 1} - 2x"]
        forms += [f"x^2 + {c}", f"x^2 - {c}", f"{c}x^2", f"x^2 + {c}x", f"x^2 - {c}x", f"{c + 4} - x^2"]
        forms += [f"x^3 + {c}", f"x^3 - {c}x", f"{c}/x", f"{c}^x"]
    excluded = {*_starter_set().HELDOUT_FUNCTIONS, README_FUNCTION}
    return [f for f in dict.fromkeys(forms) if f not in excluded]


def drill_rows(count: int = 96, seed: int = 2511) -> list[Row]:
    """`count` extra training rows for the warm start only: half of them a function to plot (each drill function
    in turn, in the starter set's training phrasing or two more), half numbers to chart (the starter set's own
    number templates, `NUMBER_TEMPLATES`, filled from a new random stream). The starter set's 24 number rows hold
    only 4 functions, seen once each, and the first warm-started policy plotted none of the held-out functions."""
    import random

    starter = _starter_set()
    rng = random.Random(seed)
    functions = drill_functions()
    rng.shuffle(functions)
    templates = [starter.NUMBER_TEMPLATES[0], *_DRILL_FUNCTION_TEMPLATES]
    prompts = []
    for k in range(count // 2):
        a, b = -rng.randrange(1, 6), rng.randrange(1, 6)
        prompts.append(templates[k % len(templates)].format(f=functions[k % len(functions)], a=a, b=b))
    prompts += starter._number_prompts(starter.NUMBER_TEMPLATES[1:], functions, count - count // 2, rng)
    return [Row(prompt=p, image_num=1, tools=("code",), images=()) for p in dict.fromkeys(prompts)]


def _starter_set() -> Any:
    """rl/data/build_starter_set.py as a module (a script in a data folder, so not importable by name)."""
    import importlib.util

    from rl.data import DATA_DIR

    spec = importlib.util.spec_from_file_location("llmi_starter_set", DATA_DIR / "build_starter_set.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- running the teacher's drafts and SFT -------------------------------------------------------------------------


@dataclass
class Example:
    """One SFT example: the planner's chat and the teacher's draft."""

    prompt: str
    messages: list[dict[str, Any]]
    draft: str


def teacher_examples(rows: list[Row]) -> tuple[list[Example], dict[str, Any]]:
    """Run the teacher's drafts through the graph (real sandbox and editor); keep those whose every tag made an
    image. Returns the examples and the teacher's own held-in figures (`rl.evaluate.metrics`) plus counts."""
    from rl.evaluate import metrics
    from rl.rollout import GraphRollout

    drafts = teacher_drafts(rows)
    taught = [r for r in rows if r.prompt in drafts]
    teacher = TeacherPolicy(drafts)
    cfg = Config(max_tokens=256, temperature=0.0, code_timeout_s=20.0, tool_cache=False)
    states: list[State] = GraphRollout(RowIndex(taught), cfg, lambda _: teacher).run_states(
        [r.prompt for r in taught], teacher
    )
    examples, failed = [], []
    for row, state in zip(taught, states, strict=True):
        ok = state.calls and all(c.valid for c in state.calls) and all(r.status == "ok" for r in state.results)
        if ok and len(state.results) == len(state.calls):
            examples.append(Example(row.prompt, teacher.messages[row.prompt], drafts[row.prompt]))
        else:
            reasons = [r.error for r in state.results if r.status != "ok"] + [c.error for c in state.calls if c.error]
            failed.append({"prompt": row.prompt, "reasons": reasons})
    figures = metrics(taught, states)
    figures.update(rows=len(rows), drafted=len(taught), kept=len(examples), failed=failed)
    return examples, figures


@dataclass
class WarmStartConfig:
    """SFT settings; the LoRA shape must match the GRPO run that continues the adapter."""

    output_dir: str = "rl-out/warm"
    dataset: str = str(TRAIN_FILE)
    epochs: float = 1.0
    learning_rate: float = 1e-3
    batch_size: int = 4
    lora_r: int = 8
    lora_alpha: int = 16
    lora_target_modules: str = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    seed: int = 0
    model: str | None = None
    drill: int = 96  # extra number and function rows (`drill_rows`); 0: the training rows only


def warm_start(cfg: WarmStartConfig) -> Path:
    """SFT a LoRA adapter on the teacher's working drafts; return its folder (output_dir/adapter). A finished run
    (adapter saved) is returned as it is."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    out = Path(cfg.output_dir)
    adapter = out / "adapter"
    if (adapter / "adapter_config.json").is_file():
        return adapter
    out.mkdir(parents=True, exist_ok=True)
    examples, figures = teacher_examples(load_rows(cfg.dataset) + drill_rows(cfg.drill))
    (out / "teacher.json").write_text(json.dumps(figures, indent=2, default=str))
    print(
        f"teacher: {figures['kept']} of {figures['drafted']} drafts made every image "
        f"({figures['rows']} rows; {len(figures['failed'])} dropped)",
        flush=True,
    )
    if not examples:
        raise RuntimeError("the teacher made no working draft: nothing to learn from")
    from rl.config import TrainConfig
    from rl.train import model_path

    base = cfg.model or model_path(TrainConfig())
    torch.manual_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base)
    data = Dataset.from_list(
        [{"prompt": e.messages, "completion": [{"role": "assistant", "content": e.draft}]} for e in examples]
    )
    args = SFTConfig(
        output_dir=str(out),
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        logging_steps=5,
        save_strategy="no",
        report_to=[],
        seed=cfg.seed,
        use_cpu=not torch.cuda.is_available(),
        bf16=torch.cuda.is_available(),  # bf16 matmuls are many times slower than fp32 on these CPUs
        gradient_checkpointing=False,  # a 135M model fits; recomputing activations costs a third more time
        completion_only_loss=True,
        max_length=1024,
    )
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
        target_modules=[m.strip() for m in cfg.lora_target_modules.split(",") if m.strip()],
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer, peft_config=lora)
    trainer.train()
    with open(out / "log.jsonl", "w", encoding="utf-8") as fh:
        for line in trainer.state.log_history:
            fh.write(json.dumps(line) + "\n")
    tmp = out / "adapter.tmp"
    trainer.save_model(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    tmp.rename(adapter)
    return adapter


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="rl-out/warm", help="Output folder (adapter in OUT/adapter).")
    parser.add_argument("--dataset", default=str(TRAIN_FILE), help="Training rows.")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--drill", type=int, default=96, help="Extra number and function rows (0: none).")
    parser.add_argument("--check", action="store_true", help="Only run the teacher's drafts and print figures.")
    args = parser.parse_args(argv)
    if args.check:
        _, figures = teacher_examples(load_rows(args.dataset) + drill_rows(args.drill))
        print(json.dumps(figures, indent=2, default=str))
        return
    cfg = WarmStartConfig(
        output_dir=args.out, dataset=args.dataset, epochs=args.epochs, seed=args.seed, drill=args.drill
    )
    adapter = warm_start(cfg)
    print(f"adapter: {adapter}")


if __name__ == "__main__":
    main()
