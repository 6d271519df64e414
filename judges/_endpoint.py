"""Asking a judge model for scores: structured output first, `Name: 4` lines as the fallback, honest failures.

Any OpenAI-compatible endpoint (vLLM-served Qwen3 or Qwen2.5-VL, OpenAI, ...) through `ChatOpenAI`. A judge that
cannot give a valid score (unreachable, timed out, unparseable after retries) returns "no score" with the reason,
never a made-up score.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from langchain_core.messages import BaseMessage
from pydantic import BaseModel, ValidationError
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_random_exponential


@dataclass(kw_only=True)
class JudgeEndpoint:
    """Where a judge model is served."""

    base_url: str = field(metadata={"help": "OpenAI-compatible base URL, e.g. http://127.0.0.1:8001/v1."})
    model: str = field(metadata={"help": "Model name at the endpoint."})
    api_key_env: str = field(
        default="LLMI_JUDGE_API_KEY", metadata={"help": "Env var with the key (else OPENAI_API_KEY)."}
    )
    timeout_s: float = field(default=120.0, metadata={"help": "Wall limit for one judge request."})
    attempts: int = field(default=3, metadata={"help": "Attempts for transient errors and unusable answers."})
    concurrency: int = field(default=8, metadata={"help": "Judge requests at once in a batch."})
    max_tokens: int = field(default=512, metadata={"help": "Most tokens a judgement may take."})
    structured: bool = field(default=True, metadata={"help": "Ask for JSON-schema output (else parse lines)."})

    @property
    def api_key(self) -> str:
        return os.environ.get(self.api_key_env) or os.environ.get("OPENAI_API_KEY") or "EMPTY"


@dataclass
class JudgeResult:
    """A judgement: scores, or no score and why. Always records which model and prompt version judged."""

    scores: dict[str, float] | None
    model: str
    prompt_version: str
    reason: str | None = None
    explanation: str | None = None
    latency_s: float = 0.0
    attempts: int = 0
    raw: str | None = None

    @property
    def scored(self) -> bool:
        return self.scores is not None

    def as_dict(self) -> dict[str, Any]:
        return {
            "scores": self.scores,
            "reason": self.reason,
            "model": self.model,
            "prompt_version": self.prompt_version,
            "explanation": self.explanation,
            "latency_s": round(self.latency_s, 3),
            "attempts": self.attempts,
        }


class _Unusable(Exception):
    """The judge answered, but not with valid scores."""


def _transient(exc: BaseException) -> bool:
    import openai

    if isinstance(exc, _Unusable):
        return True  # ask again: sampling noise or a truncated answer
    return isinstance(
        exc,
        openai.APIConnectionError
        | openai.APITimeoutError
        | openai.RateLimitError
        | openai.InternalServerError
        | httpx.TransportError
        | TimeoutError,
    )


def parse_score_lines(text: str, names: Sequence[str], low: int = 1, high: int = 5) -> dict[str, float] | None:
    """Scores from `Name: 4`-style lines (case-insensitive, `**Name**: 4/5` too); None unless all are present."""
    scores: dict[str, float] = {}
    for name in names:
        label = re.escape(name).replace("_", "[ _-]")
        m = re.search(rf"{label}[\"'*]*\s*(?:score)?\s*[:=]\s*[\"'*]*\s*(\d+(?:\.\d+)?)", text, re.IGNORECASE)
        if m is None:
            return None
        value = float(m.group(1))
        if not low <= value <= high:
            return None
        scores[name] = value
    return scores


async def ask_for_scores(
    endpoint: JudgeEndpoint,
    messages: list[BaseMessage],
    schema: type[BaseModel],
    names: Sequence[str],
    prompt_version: str,
    *,
    low: int = 1,
    high: int = 5,
) -> JudgeResult:
    """Ask the judge; structured output first, then line parsing; retries; never raises for judge failures."""
    started = time.perf_counter()
    attempts = 0
    last_raw: str | None = None

    response_format = {
        "type": "json_schema",
        "json_schema": {"name": schema.__name__, "schema": schema.model_json_schema(), "strict": False},
    }
    structured = endpoint.structured

    async def once() -> tuple[dict[str, float], str | None]:
        nonlocal attempts, last_raw, structured
        import openai
        from langchain_openai import ChatOpenAI

        attempts += 1
        async with httpx.AsyncClient(timeout=httpx.Timeout(endpoint.timeout_s, connect=10.0)) as client:
            model = await asyncio.to_thread(
                ChatOpenAI,
                base_url=endpoint.base_url,
                model=endpoint.model,
                api_key=endpoint.api_key,
                temperature=0.0,
                max_tokens=endpoint.max_tokens,
                timeout=endpoint.timeout_s,
                max_retries=0,
                use_responses_api=False,
                http_async_client=client,
            )
            # Sent as a raw body field, so ChatOpenAI treats the answer as text (we parse it, truncated or not).
            kwargs = {"extra_body": {"response_format": response_format}} if structured else {}
            try:
                reply = await asyncio.wait_for(model.ainvoke(messages, **kwargs), endpoint.timeout_s)
            except openai.BadRequestError:
                if not structured:
                    raise
                structured = False  # the endpoint does not take JSON schemas: ask for score lines instead
                raise _Unusable("the endpoint refused structured output; retrying without it") from None
        last_raw = reply.text if hasattr(reply, "text") else str(reply.content)
        return _scores_from(last_raw or "", schema, names, low, high)

    try:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(max(1, endpoint.attempts)),
            wait=wait_random_exponential(multiplier=0.5, max=8.0),
            retry=retry_if_exception(_transient),
            reraise=True,
        )
        scores, explanation = await retrying(once)
    except Exception as exc:  # every failure is "no score, because ..."
        reason = str(exc) if isinstance(exc, _Unusable) else f"{type(exc).__name__}: {exc}"
        return JudgeResult(
            scores=None, model=endpoint.model, prompt_version=prompt_version, reason=f"no score: {reason}"[:1000],
            latency_s=time.perf_counter() - started, attempts=attempts, raw=last_raw,
        )  # fmt: skip
    return JudgeResult(
        scores=scores, model=endpoint.model, prompt_version=prompt_version, explanation=explanation,
        latency_s=time.perf_counter() - started, attempts=attempts, raw=last_raw,
    )  # fmt: skip


def _scores_from(
    text: str, schema: type[BaseModel], names: Sequence[str], low: int, high: int
) -> tuple[dict[str, float], str | None]:
    """Scores from a JSON answer matching `schema`, else from `Name: 4` lines; `_Unusable` if neither works."""
    body = text.strip()
    fenced = re.search(r"\{.*\}", body, re.DOTALL)
    if fenced:
        try:
            data = schema.model_validate(json.loads(fenced.group(0))).model_dump()
        except (ValueError, ValidationError):
            data = None
        if data is not None:
            return {n: float(data[n]) for n in names}, data.get("explanation") or data.get("justification")
    scores = parse_score_lines(body, names, low, high)
    if scores is None:
        raise _Unusable(f"no valid {', '.join(names)} scores ({low}-{high}) in the answer: {body[:200]!r}")
    return scores, None


async def gather_bounded(coroutines: Sequence[Any], limit: int) -> list[Any]:
    """Await coroutines with at most `limit` running at once, keeping their order."""
    gate = asyncio.Semaphore(max(1, limit))

    async def run(coro: Any) -> Any:
        async with gate:
            return await coro

    return list(await asyncio.gather(*(run(c) for c in coroutines)))
