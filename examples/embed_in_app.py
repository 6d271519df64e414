"""Embed the llmi graph in your own LangChain / LangGraph app.

Run:  python examples/embed_in_app.py
      LLMI_POLICY_URL=http://127.0.0.1:8000/v1 LLMI_POLICY_MODEL=NAME python examples/embed_in_app.py

Any LangChain chat model can be the policy (`ChatModelPolicy`). Without an endpoint this example uses a
scripted fake chat model, so it runs offline; the code tool still runs the chart code for real.

Your app is the operator: it sets backends, URLs and limits with `Config` (or `LLMI_*` variables). What your
users choose per run (prompt, input images as data, image_num, tools, sampling) goes in the graph's input.
"""

from __future__ import annotations

import asyncio
import os

from langchain_core.language_models.fake_chat_models import FakeListChatModel

from llmi_graph import ChatModelPolicy, Config, Figure, State, build_graph

CHART_CODE = (
    "h = np.arange(0, 24.1, 0.25)\n"
    "plt.plot(h, 1.8 * np.sin(2 * np.pi * h / 12.42))\n"
    "plt.xlabel('hour')\nplt.ylabel('height (m)')\nplt.title('Semidiurnal tide')"
)
SCRIPTED_DRAFT = (
    "## Tides in one chart\nThe sea rises and falls about twice a day.\n"
    f"<imgen>{{'source': 'code', 'description': 'Tide height over 24 hours', 'params': {{'code': {CHART_CODE!r}}}}}"
    "</imgen>\nTwo highs and two lows arrive each lunar day, about 50 minutes later than the day before."
)


async def main() -> None:
    config = Config(max_tokens_limit=1024)  # operator settings: the environment's, with this cap
    if os.environ.get("LLMI_POLICY_URL"):
        graph = build_graph(config=config)  # the policy comes from the config: an OpenAI-compatible endpoint
    else:
        scripted = ChatModelPolicy(FakeListChatModel(responses=[SCRIPTED_DRAFT]), name="scripted")
        graph = build_graph(policy=scripted, config=config)

    # Stream progress events while the graph runs, then read the final state.
    request = {"prompt": "Explain tides with a chart", "max_tokens": 512, "temperature": 0.3}
    final = None
    async for mode, chunk in graph.astream(request, stream_mode=["custom", "values"]):
        if mode == "custom":
            print("event:", chunk)
        else:
            final = chunk
    state = State.model_validate(final)
    for item in state.document:
        if isinstance(item, Figure):
            where = item.image.path if item.image else item.error
            print(f"[image {item.index} ({item.source}): {item.status} {where}]")
        else:
            print(item.text)


if __name__ == "__main__":
    asyncio.run(main())
