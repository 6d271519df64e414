"""Fakes for offline tests, each named as a fake.

- `FakeOpenAIServer`: a real HTTP server on 127.0.0.1 that speaks the OpenAI chat-completions protocol
  with vLLM's extra fields (`token_ids`, `prompt_token_ids`, logprobs) and answers with scripted drafts, as one
  JSON reply or, when the request says `stream`, as server-sent chunks the way vLLM streams them.
  It stands in for a policy server where none can run in the fast suite; the real vLLM server is tested
  in the serving issue's slow tests.
- `FakeBackend`: a latency-controlled image backend that draws a real PNG, can fail, or fail transiently.
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from PIL import Image

from tools.base import ToolError, ToolOutput


def png(color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LoopbackApp:
    """Serve an ASGI app on 127.0.0.1 in a background thread (a context manager)."""

    def __init__(self, app: Any):
        self.app = app
        self.port = free_port()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LoopbackApp:
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.time() + 10
        while not self._server.started:
            if time.time() > deadline:
                raise RuntimeError("loopback app did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None and self._thread is not None
        self._server.should_exit = True
        self._thread.join(timeout=10)


class FakeOpenAIServer:
    """A fake OpenAI-compatible (vLLM-flavoured) chat server on loopback, answering with scripted drafts.

    One fake token per character: ids `1000 * <draft number> + <position>`, logprob `-0.01 * (position % 7)`. A
    streamed reply sends each character as a chunk, `chunk_delay_s` apart.
    """

    def __init__(
        self, drafts: Sequence[str] = (), *, status: int = 200, delay_s: float = 0.0, chunk_delay_s: float = 0.0
    ):
        self.drafts = list(drafts)
        self.status = status
        self.delay_s = delay_s
        self.chunk_delay_s = chunk_delay_s
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.port = free_port()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._counter = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Response:
            body = await request.json()
            self.requests.append(body)
            self.headers.append(dict(request.headers))
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            if self.status != 200:
                return JSONResponse({"error": {"message": "fake server error"}}, status_code=self.status)
            last = body["messages"][-1]["content"]
            choices, completion_tokens = [], 0
            for index in range(int(body.get("n") or 1)):  # n > 1: the next n drafts, one choice each
                text = self.drafts[min(self._counter, len(self.drafts) - 1)] if self.drafts else f"echo: {last}"
                self._counter += 1
                # Deterministic fake token ids: one per character, offset by the draft number.
                base = 1000 * self._counter
                completion_tokens += len(text)
                choices.append(
                    {
                        "index": index,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                        "token_ids": [base + i for i in range(len(text))],
                        "logprobs": {
                            "content": [
                                {"token": ch, "logprob": -0.01 * (i % 7), "bytes": None, "top_logprobs": []}
                                for i, ch in enumerate(text)
                            ]
                        },
                    }
                )
            reply = {
                "id": f"chatcmpl-fake-{self._counter}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "prompt_token_ids": [1, 2, 3, self._counter],
                "choices": choices,
                "usage": {
                    "prompt_tokens": 4,
                    "completion_tokens": completion_tokens,
                    "total_tokens": 4 + completion_tokens,
                },
            }
            if body.get("stream"):
                usage = (body.get("stream_options") or {}).get("include_usage")
                return StreamingResponse(self._chunks(reply, bool(usage)), media_type="text/event-stream")
            return JSONResponse(reply)

        return app

    async def _chunks(self, reply: dict[str, Any], usage: bool) -> Any:
        """A reply as vLLM streams it: per choice a first chunk with the role (and, at the top, the prompt's token
        ids), then a chunk per token with its id and logprob, the last one with the finish reason; then the usage
        when asked for, and `[DONE]`."""
        head = {k: reply[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}

        def event(chunk: dict[str, Any]) -> str:
            return f"data: {json.dumps(head | chunk)}\n\n"

        for choice in reply["choices"]:
            index, text = choice["index"], choice["message"]["content"]
            first = {"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
            yield event({"choices": [first], "prompt_token_ids": reply["prompt_token_ids"]})
            for i, ch in enumerate(text):
                await asyncio.sleep(self.chunk_delay_s)
                part = {
                    "index": index,
                    "delta": {"content": ch},
                    "logprobs": {"content": [choice["logprobs"]["content"][i]]},
                    "token_ids": [choice["token_ids"][i]],
                    "finish_reason": "stop" if i == len(text) - 1 else None,
                }
                yield event({"choices": [part]})
            if not text:
                yield event({"choices": [{"index": index, "delta": {}, "finish_reason": "stop"}]})
        if usage:
            yield event({"choices": [], "usage": reply["usage"]})
        yield "data: [DONE]\n\n"

    def __enter__(self) -> FakeOpenAIServer:
        config = uvicorn.Config(self._app(), host="127.0.0.1", port=self.port, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.time() + 10
        while not self._server.started:
            if time.time() > deadline:
                raise RuntimeError("fake OpenAI server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None and self._thread is not None
        self._server.should_exit = True
        self._thread.join(timeout=10)


class FakeBackend:
    """A fake image backend: waits `latency_s`, then returns a solid PNG (or fails as told)."""

    def __init__(
        self,
        name: str = "fake",
        *,
        latency_s: float = 0.0,
        color: tuple[int, int, int] = (30, 120, 200),
        error: str | None = None,
        transient_failures: int = 0,
    ):
        self.name = name
        self.latency_s = latency_s
        self.color = color
        self.error = error
        self.transient_failures = transient_failures
        self.calls: list[tuple[dict[str, Any], list[bytes]]] = []
        self.started: list[float] = []
        self.finished: list[float] = []

    async def __call__(self, params: Mapping[str, Any], inputs: Sequence[bytes] = ()) -> ToolOutput:
        self.calls.append((dict(params), list(inputs)))
        self.started.append(time.perf_counter())
        try:
            await asyncio.sleep(self.latency_s)
            if self.transient_failures > 0:
                self.transient_failures -= 1
                raise ToolError("fake 503 from backend", transient=True)
            if self.error:
                raise ToolError(self.error)
            color = self.color
            if inputs:  # an "edit": invert the input's first pixel colour so the output differs
                first = Image.open(io.BytesIO(inputs[0])).convert("RGB").getpixel((0, 0))
                color = tuple(255 - c for c in first)
            return ToolOutput(image=png(color), backend=self.name, provenance={"fake": True})
        finally:
            self.finished.append(time.perf_counter())
