"""One step of an approved run under a SQLite checkpointer (used by tests/test_approval.py): start it, or answer it.

    python -m tests.approval_run DB THREAD IMAGE_DIR CACHE_DIR [--resume JSON]

Without `--resume` the run starts and stops at the approval interrupt; with it, the JSON is the answer and the run
finishes. Either way one JSON line goes to stdout: {"pid", "interrupt": payload or null, "output": state or null}.
The policy is a scripted fake (langchain-core's `FakeListChatModel`); code runs in the real local sandbox, and the
edit of the chart in the offline local editor.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os

from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.types import Command

from llmi_graph import ChatModelPolicy, Config, Output, Toolbox, build_graph
from tools.code import LocalSandbox, SandboxLimits
from tools.edit import LocalEditor

DRAFT = (
    "A chart: <imgen>{'source': 'code', 'description': 'bars', 'params': {'code': 'plt.bar([1, 2], [3, 4])'}}</imgen>"
    " and in gray: <imgen>{'source': 'edit', 'description': 'gray', 'params': {'img_index': 0, 'prompt': 'grayscale'}}"
    "</imgen> The end."
)


async def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("db", "thread", "image_dir", "cache_dir"):
        parser.add_argument(name)
    parser.add_argument("--resume")
    args = parser.parse_args()
    cfg = Config(image_dir=args.image_dir, cache_dir=args.cache_dir, tool_attempts=1, approve="code")
    toolbox = Toolbox(
        backends={
            "search": None,
            "diffusion": None,
            "code": LocalSandbox(SandboxLimits(timeout_s=30)),
            "edit": LocalEditor(),
        }
    )
    async with AsyncSqliteSaver.from_conn_string(args.db) as saver:
        policy = ChatModelPolicy(FakeListChatModel(responses=[DRAFT]), name="scripted")
        graph = build_graph(policy=policy, toolbox=toolbox, config=cfg, checkpointer=saver)
        thread = {"configurable": {"thread_id": args.thread}}
        value = Command(resume=json.loads(args.resume)) if args.resume else {"prompt": "a reviewed chart"}
        state = await graph.ainvoke(value, thread, durability="sync")
    pending = state.get("__interrupt__")
    line = {
        "pid": os.getpid(),
        "interrupt": pending[0].value if pending else None,
        "output": None if pending else Output.model_validate(state).model_dump(mode="json"),
    }
    print(json.dumps(line))


if __name__ == "__main__":
    asyncio.run(main())
