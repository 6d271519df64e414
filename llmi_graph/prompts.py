"""The planner's instructions: the LLM-I tag protocol in our own words, listing only usable tools."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llmi_graph.state import ImageRef

_TOOL_LINES = {
    "search": (
        "- 'search': a real photograph found on the web, for real people, places, products, animals and events."
        "\n  params: {'query': 'a short search query'}"
    ),
    "diffusion": (
        "- 'diffusion': a newly generated picture, for creative, imaginary or abstract scenes."
        "\n  params: {'prompt': 'a detailed visual description'}"
    ),
    "code": (
        "- 'code': a chart or plot drawn by Python code, for data, functions and exact numbers."
        "\n  params: {'code': 'python code'}. numpy as np, pandas as pd, matplotlib.pyplot as plt and seaborn as"
        "\n  sns are already imported. Put the data in the code and draw one figure. Never call plt.show() or"
        "\n  plt.savefig(); the figure is captured for you."
    ),
    "edit": (
        "- 'edit': a changed version of an earlier image, to keep it consistent."
        "\n  params: {'img_index': N, 'prompt': 'what to change'}. Images are numbered from 0: the user's"
        "\n  images first, then your tags in order. Point only at a user image or an earlier tag."
    ),
}

_EXAMPLES = {
    "code": (
        "Explain how a sine wave repeats.",
        "A sine wave rises and falls smoothly and repeats every 2π.\n"
        "<imgen>{'source': 'code', 'description': 'A sine wave over two periods', 'params': {'code': "
        "'x = np.linspace(0, 4 * np.pi, 400)\\nplt.plot(x, np.sin(x))\\n"
        "plt.axhline(y=0, color='k', linestyle='--')\\nplt.title('y = sin(x)')'}}</imgen>\n"
        "Each peak reaches 1 and each trough reaches -1.",
    ),
    "search": (
        "What does the Golden Gate Bridge look like?",
        "The Golden Gate Bridge is a suspension bridge painted a deep orange called International Orange.\n"
        "<imgen>{'source': 'search', 'description': 'The Golden Gate Bridge seen from the Marin headlands', "
        "'params': {'query': 'Golden Gate Bridge from Marin headlands'}}</imgen>\n"
        "Its two towers rise 227 m above the water.",
    ),
    "diffusion": (
        "Describe a city floating in the clouds.",
        "Imagine towers of white stone resting on clouds, linked by rope bridges.\n"
        "<imgen>{'source': 'diffusion', 'description': 'A white stone city on clouds at sunrise', "
        "'params': {'prompt': 'a city of white stone towers floating on clouds at sunrise, rope bridges, "
        "soft golden light'}}</imgen>\n"
        "At dawn the light turns the stone gold.",
    ),
}


def count_rule(image_num: int) -> str:
    """The sentence that states the request's image-count constraint (LLM-I convention)."""
    if image_num == -1:
        return "This request needs no images: write text only, with no tags."
    if image_num == 0:
        return "Use as many images as the content needs, usually one to four."
    if image_num == 99:
        return "Include at least one image."
    return f"Include exactly {image_num} image{'s' if image_num != 1 else ''}."


def build_system_prompt(tools: Sequence[str], image_num: int = 0) -> str:
    """The planner's system prompt, listing only `tools` (the ones with a backend that the request allows)."""
    if not tools or image_num == -1:
        return (
            "You are llmi, a writer. Answer the user's request with a complete, well-organised Markdown "
            "document. Write text only, with no image tags."
        )
    lines = [
        "You are llmi, a writer who makes documents in which text and images alternate.",
        "Answer the user's request with a complete, well-organised Markdown document. Where a picture helps",
        "the reader, put an image tag on its own line at that point in the text:",
        "",
        "<imgen>{'source': SOURCE, 'description': 'what the image shows', 'params': PARAMS}</imgen>",
        "",
        "The image tools you can use:",
        *(_TOOL_LINES[t] for t in tools),
        "",
        "Rules:",
        "- Write each tag exactly as shown: a dict with the keys 'source', 'description' and 'params'.",
        "- Let the text lead into each image; do not announce it (no 'Here is an image:').",
        "- Every image must be specific and relevant to the text around it.",
        f"- {count_rule(image_num)}",
    ]
    return "\n".join(lines)


def example_turns(tools: Sequence[str], image_num: int = 0) -> list[dict[str, str]]:
    """One worked example as a prior user/assistant exchange (small models follow these best)."""
    example = next((t for t in ("code", "search", "diffusion") if t in tools), None)
    if example is None or image_num == -1:
        return []
    question, answer = _EXAMPLES[example]
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def build_messages(
    user_content: str | list[dict[str, Any]], tools: Sequence[str], image_num: int = 0
) -> list[dict[str, Any]]:
    """The planner's chat: system prompt, one worked example, then the user's request."""
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
