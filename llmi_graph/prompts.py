"""The planner's instructions: the LLM-I tag protocol in our own words, listing only usable tools.

Kept short on purpose: the embedded policy is a 135M-parameter model, and every prompt token costs time in
sampling and in RL training (about 360 tokens with code and edit and three worked examples). The examples come
as prior chat turns, which small models follow best, and end right after their tag, which keeps drafts short.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llmi_graph.state import ImageRef

_TOOL_LINES = {
    "search": "- 'search': a real photo. params: {'query': '...'}",
    "diffusion": "- 'diffusion': a new picture of an imagined scene. params: {'prompt': '...'}",
    "code": "- 'code': a chart (np, pd, plt, sns imported). params: {'code': '...'}",
    "edit": "- 'edit': a changed image. params: {'img_index': N, 'prompt': '...'}; N counts the user's images, "
    "then your tags, from 0.",
}

# Short worked examples (question, answer) per tool, the first ones first. The first carries the paper's unescaped-quote
# style; the code ones show a question's own numbers plotted, a function, and a chart of facts for a topic that is no
# data question (on a bare machine code is the only tool that makes images).
_EXAMPLES = {
    "code": [
        (
            "Our café sold 40, 55 and 72 cakes on Friday, Saturday and Sunday. Show the sales.",
            "Sales grew every day, from 40 to 72 cakes.\n"
            "<imgen>{'source': 'code', 'description': 'Cakes sold per day', 'params': {'code': "
            "'plt.bar(['Fri', 'Sat', 'Sun'], [40, 55, 72])'}}</imgen>",
        ),
        (
            "Explain a sine wave.",
            "A sine wave repeats every 2π.\n"
            "<imgen>{'source': 'code', 'description': 'y = sin(x)', 'params': {'code': "
            "'x = np.linspace(0, 13)\\nplt.plot(x, np.sin(x))'}}</imgen>",
        ),
        (
            "Introduce Mount Fuji.",
            "Mount Fuji is the highest mountain in Japan, 3,776 m tall.\n"
            "<imgen>{'source': 'code', 'description': 'Mount Fuji beside other peaks of Japan', 'params': {'code': "
            "\"plt.bar(['Fuji', 'Kita', 'Hotaka'], [3776, 3193, 3190])\"}}</imgen>",
        ),
        (
            "How did the temperature in Paris change this week?",
            "Paris warmed up all week.\n"
            "<imgen>{'source': 'code', 'description': 'Daily highs in Paris', 'params': {'code': "
            "'plt.plot(['Mon', 'Wed', 'Fri'], [14, 17, 21])'}}</imgen>",
        ),
        (
            "How fast do trees lose their leaves?",
            "Most leaves fall within eight weeks.\n"
            "<imgen>{'source': 'code', 'description': 'Leaves fallen by week', 'params': {'code': "
            "'plt.bar(range(5), [0, 20, 50, 85, 100])'}}</imgen>",
        ),
    ],
    "search": [
        (
            "What does the Golden Gate Bridge look like?",
            "The Golden Gate Bridge is painted a deep orange.\n"
            "<imgen>{'source': 'search', 'description': 'The Golden Gate Bridge', 'params': {'query': "
            "'Golden Gate Bridge'}}</imgen>",
        )
    ],
    "diffusion": [
        (
            "Describe a city in the clouds.",
            "White towers rest on the clouds.\n"
            "<imgen>{'source': 'diffusion', 'description': 'A white city on clouds', 'params': {'prompt': "
            "'a city of white towers floating on clouds at sunrise'}}</imgen>",
        )
    ],
}
MAX_EXAMPLES = 3


def count_rule(image_num: int) -> str:
    """The sentence that states the request's image-count constraint (LLM-I convention)."""
    if image_num == -1:
        return "This request needs no images: write text only, with no tags."
    if image_num == 0:
        return "Use one to three images."
    if image_num == 99:
        return "Include at least one image."
    return f"Include exactly {image_num} image{'s' if image_num != 1 else ''}."


def build_system_prompt(tools: Sequence[str], image_num: int = 0) -> str:
    """The planner's system prompt, listing only `tools` (the ones with a backend that the request allows)."""
    if not tools or image_num == -1:
        return "You write clear, well-organised Markdown answers. Write text only, with no image tags."
    return "\n".join(
        [
            "You write text with images. Each image is one tag on its own line:",
            "<imgen>{'source': SOURCE, 'description': 'what it shows', 'params': PARAMS}</imgen>",
            *(_TOOL_LINES[t] for t in tools),
            count_rule(image_num),
        ]
    )


def all_examples() -> list[tuple[str, str]]:
    """Every worked example (question, answer), whichever a request gets."""
    return [example for examples in _EXAMPLES.values() for example in examples]


def example_turns(tools: Sequence[str], image_num: int = 0) -> list[dict[str, str]]:
    """Up to MAX_EXAMPLES worked examples as prior user/assistant exchanges, covering the usable tools first."""
    if image_num == -1:
        return []
    pools = [list(_EXAMPLES[t]) for t in ("code", "search", "diffusion") if t in tools]
    chosen: list[tuple[str, str]] = []
    while pools and len(chosen) < MAX_EXAMPLES:
        for pool in list(pools):
            if pool and len(chosen) < MAX_EXAMPLES:
                chosen.append(pool.pop(0))
            if not pool:
                pools.remove(pool)
    turns: list[dict[str, str]] = []
    for question, answer in chosen:
        turns += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return turns


def build_messages(
    user_content: str | list[dict[str, Any]], tools: Sequence[str], image_num: int = 0
) -> list[dict[str, Any]]:
    """The planner's chat: system prompt, worked examples, then the user's request."""
    return [
        {"role": "system", "content": build_system_prompt(tools, image_num)},
        *example_turns(tools, image_num),
        {"role": "user", "content": user_content},
    ]


def build_user_message(prompt: str, input_images: Sequence[ImageRef] = ()) -> str:
    """The user turn: the prompt, plus a note on the attached images and their indices."""
    if not input_images:
        return prompt
    described = ", ".join(f"image {i} ({ref.width}x{ref.height})" for i, ref in enumerate(input_images))
    return f"{prompt}\n\n(Attached: {described}. An 'edit' tag can change them by img_index.)"


def repair_message(index: int, tag: str, reason: str, tools: Sequence[str]) -> str:
    """The user turn that sends one failed slot back to the policy: the tag as written and why it failed."""
    usable = ", ".join(f"'{t}'" for t in tools) or "none"
    return (
        f"Image {index} of your answer failed.\nIts tag: {tag}\nWhy: {reason}\n"
        f"Reply with one corrected <imgen> tag for this image and nothing else. Tools you may use: {usable}."
    )


def detail_message(prompt: str) -> list[dict[str, Any]]:
    """The chat that asks the policy to rewrite a diffusion prompt into a detailed one (tool-specific enhancement)."""
    return [
        {"role": "system", "content": "You write prompts for an image generator."},
        {
            "role": "user",
            "content": "Rewrite this image prompt into a detailed one: the subject, the setting, the style, the light "
            f"and the composition, in one paragraph. Reply with the new prompt only.\n\nPrompt: {prompt}",
        },
    ]


FIGURE_MARK = "[[FIGURE {index}]]"


def polish_messages(prompt: str, document: str) -> list[dict[str, Any]]:
    """The chat that asks the policy to rewrite a finished document's text around its figures (polish)."""
    return [
        {
            "role": "system",
            "content": "You are an editor. You improve the text of documents that mix text and figures.",
        },
        {
            "role": "user",
            "content": f"The user asked: {prompt}\n\nHere is the document. Each figure is a line like [[FIGURE 0]], "
            "followed by what it shows; FAILED marks a figure that could not be made.\n\n"
            f"{document}\n\nRewrite the text so it reads well and fits the figures. Keep every [[FIGURE n]] line "
            "exactly as it is and where it is, drop the lines that say what a figure shows, and remove any sentence "
            "that points the reader to a FAILED figure. Reply with the whole document.",
        },
    ]
