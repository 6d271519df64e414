"""Give an agent the llmi graph as a tool (`llmi_graph.as_tool`).

Run:  python examples/agent_tool.py
      LLMI_POLICY_URL=http://127.0.0.1:8000/v1 python examples/agent_tool.py \
          --agent-url http://127.0.0.1:8001/v1 --agent-model NAME

The agent is LangGraph's prebuilt ReAct agent; any chat model that calls tools can drive it (`--agent-url`: an
OpenAI-compatible endpoint). Without one, the agent is a scripted fake chat model that calls the tool once and then
answers; without LLMI_POLICY_URL the policy is a scripted fake too, so this runs offline. The code tool still runs
the chart code for real, in the local sandbox.

The agent chooses only what a request may choose (prompt, image_num, tools). Your app is the operator: it sets the
policy, the backends, the caps and the folder the reports go to (`--out`), none of which the agent can change.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import warnings

from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import FakeListChatModel, FakeMessagesListChatModel
from langchain_core.messages import AIMessage, ToolMessage
from langgraph.prebuilt import create_react_agent
from langgraph.warnings import LangGraphDeprecatedSinceV10

from llmi_graph import ChatModelPolicy, Config, as_tool

# langgraph 1.x points to `langchain.agents.create_agent` (the `langchain` package) as the successor of
# create_react_agent; the tool works the same with either.
warnings.filterwarnings("ignore", category=LangGraphDeprecatedSinceV10)

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
TOOL_CALL = {
    "name": "llmi_create_document",
    "args": {
        "prompt": "A short explainer of tides with a chart of the tide over a day",
        "image_num": 1,
        "tools": ["code"],
    },
    "id": "call-1",
}


class FakeAgentModel(FakeMessagesListChatModel):
    """A scripted fake chat model for the agent: its replies are fixed, so binding tools changes nothing."""

    def bind_tools(self, tools: object, **kwargs: object) -> FakeAgentModel:
        return self


def agent_model(url: str | None, model: str) -> BaseChatModel:
    """The agent's chat model: an OpenAI-compatible endpoint's, else the scripted fake."""
    if url:
        from langchain_openai import ChatOpenAI

        return ChatOpenAI(base_url=url, model=model, api_key=os.environ.get("OPENAI_API_KEY", "EMPTY"))
    return FakeAgentModel(
        responses=[
            AIMessage("", tool_calls=[TOOL_CALL]),
            AIMessage("Your explainer of tides is ready; the report above has the chart."),
        ]
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="llmi-out", help="Where the tool writes its reports (one folder a call).")
    parser.add_argument("--agent-url", help="OpenAI-compatible endpoint of a tool-calling model for the agent.")
    parser.add_argument("--agent-model", default="default", help="Model name at --agent-url.")
    args = parser.parse_args()

    config = Config(max_tokens_limit=1024)  # operator settings: the environment's, with this cap
    if os.environ.get("LLMI_POLICY_URL"):
        tool = as_tool(config=config, out_dir=args.out, max_images=4)  # the policy comes from the config
    else:
        scripted = ChatModelPolicy(FakeListChatModel(responses=[SCRIPTED_DRAFT]), name="scripted")
        tool = as_tool(policy=scripted, config=config, out_dir=args.out, max_images=4)
    agent = create_react_agent(agent_model(args.agent_url, args.agent_model), [tool])

    # The llmi graph runs as a subgraph of the agent: with subgraphs=True its progress events come through.
    request = {"messages": [("user", "Explain tides to me, with a chart.")]}
    final = None
    async for namespace, mode, chunk in agent.astream(request, stream_mode=["custom", "values"], subgraphs=True):
        if mode == "custom":
            print("event:", chunk)
        elif not namespace:
            final = chunk
    assert final is not None
    for message in final["messages"]:
        if isinstance(message, ToolMessage):
            print(f"--- tool {message.name} ({message.status}) ---\n{message.content}")
            if message.artifact:
                print("figures:", message.artifact["figures"])
        elif isinstance(message, AIMessage) and message.content:
            print(f"--- agent ---\n{message.content}")


if __name__ == "__main__":
    asyncio.run(main())
