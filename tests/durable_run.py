"""One run of the llmi graph under a SQLite checkpointer that can die mid-tools (used by tests/test_durable.py).

    python -m tests.durable_run DB THREAD LOG IMAGE_DIR CACHE_DIR [--resume]

With `LLMI_TEST_CRASH=1` the backend kills its own process (SIGKILL) while the tool phase is under way: the first
diffusion call has finished, its edit is still running. `--resume` continues the thread with `None` input. The
backend (a fake, named as one) appends one JSON line to LOG per execution it completes; the final output goes to
stdout as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import os
import signal
from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from PIL import Image

from llmi_graph import ChatModelPolicy, Config, Output, Toolbox, build_graph
from tools.base import ToolOutput


def tag(source: str, **params: object) -> str:
    return f"<imgen>{{'source': '{source}', 'description': 'd', 'params': {params!r}}}</imgen>"


DRAFT = (
    f"Intro {tag('diffusion', prompt='first')} then "
    f"{tag('edit', img_index=0, prompt='slow edit')} and {tag('diffusion', prompt='crash')} end."
)
LATENCY = {"first": 0.05, "slow edit": 3.0, "crash": 0.05}


class LoggedFakeBackend:
    """A fake image backend: a colour from the prompt (and input), a log line per finished execution."""

    def __init__(self, name: str, log: str):
        self.name, self.log = name, log

    async def __call__(self, params: Mapping[str, Any], inputs: Sequence[bytes] = ()) -> ToolOutput:
        prompt = str(params["prompt"])
        if prompt == "crash" and os.environ.get("LLMI_TEST_CRASH") == "1":
            await asyncio.sleep(1.0)  # "first" is done, "slow edit" is mid-way
            os.kill(os.getpid(), signal.SIGKILL)
        await asyncio.sleep(LATENCY[prompt])
        seed = hashlib.sha256(prompt.encode() + b"".join(inputs)).digest()
        buf = io.BytesIO()
        Image.new("RGB", (48, 32), tuple(seed[:3])).save(buf, format="PNG")
        image = buf.getvalue()
        with open(self.log, "a", encoding="utf-8") as fh:
            line = {
                "backend": self.name,
                "prompt": prompt,
                "inputs": [hashlib.sha256(i).hexdigest() for i in inputs],
                "output": hashlib.sha256(image).hexdigest(),
                "pid": os.getpid(),
            }
            fh.write(json.dumps(line) + "\n")
        return ToolOutput(image=image, backend=self.name)


async def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("db", "thread", "log", "image_dir", "cache_dir"):
        parser.add_argument(name)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    cfg = Config(image_dir=args.image_dir, cache_dir=args.cache_dir, tool_attempts=1, tool_timeout_s=30.0)
    toolbox = Toolbox(
        backends={
            "search": None,
            "code": None,
            "diffusion": LoggedFakeBackend("diffusion", args.log),
            "edit": LoggedFakeBackend("edit", args.log),
        }
    )
    async with AsyncSqliteSaver.from_conn_string(args.db) as saver:
        policy = ChatModelPolicy(FakeListChatModel(responses=[DRAFT]), name="scripted")
        graph = build_graph(policy=policy, toolbox=toolbox, config=cfg, checkpointer=saver)
        thread = {"configurable": {"thread_id": args.thread}}
        request = None if args.resume else {"prompt": "a durable run"}
        out = Output.model_validate(await graph.ainvoke(request, thread, durability="sync"))
    print(json.dumps(out.model_dump(mode="json")))


if __name__ == "__main__":
    asyncio.run(main())
