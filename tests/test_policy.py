"""Policy backends: the OpenAI-compatible client against a fake vLLM-flavoured server on loopback."""

from __future__ import annotations

import asyncio

import pytest

from llmi_graph import OpenAIPolicy, PolicyError, Sampling, State, Toolbox, build_graph, data_url
from tests.fakes import FakeOpenAIServer

MESSAGES = [{"role": "system", "content": "sys"}, {"role": "user", "content": "hello"}]


async def test_token_ids_and_logprobs_come_from_the_raw_response():
    with FakeOpenAIServer(["Some draft."]) as server:
        policy = OpenAIPolicy(server.url, "smol", api_key="k")
        out = await policy.generate(MESSAGES, Sampling(max_tokens=50, temperature=0.5, seed=7))
    assert out.text == "Some draft."
    assert out.completion_token_ids == [1000 + i for i in range(len("Some draft."))]
    assert out.prompt_token_ids == [1, 2, 3, 1]
    assert out.logprobs is not None and len(out.logprobs) == len(out.completion_token_ids)
    assert out.backend == "openai-compatible" and out.model == "smol" and out.finish_reason == "stop"
    request = server.requests[0]
    assert request["return_token_ids"] is True and request["logprobs"] is True
    assert request["model"] == "smol" and request["temperature"] == 0.5 and request["seed"] == 7
    assert request["messages"][1] == {"role": "user", "content": "hello"}
    assert server.headers[0]["authorization"] == "Bearer k"


async def test_concurrent_calls_each_get_their_own_token_ids():
    with FakeOpenAIServer(["a" * 5, "b" * 9, "c" * 3], delay_s=0.1) as server:
        policy = OpenAIPolicy(server.url, "smol")
        outs = await asyncio.gather(*(policy.generate(MESSAGES, Sampling()) for _ in range(3)))
    for out in outs:
        assert len(out.completion_token_ids) == len(out.text)
        # ids of one response share its request's base: no mixing between concurrent calls
        assert len({i // 1000 for i in out.completion_token_ids}) == 1
        assert out.prompt_token_ids[-1] == out.completion_token_ids[0] // 1000


async def test_api_key_comes_from_the_environment(monkeypatch, cfg):
    monkeypatch.setenv("LLMI_POLICY_API_KEY", "from-env")
    with FakeOpenAIServer(["Hi."]) as server:
        graph = build_graph(toolbox=Toolbox(backends={}))
        await graph.ainvoke({"prompt": "x"}, context=cfg.replace(policy_url=server.url, policy_model="m"))
    assert server.headers[0]["authorization"] == "Bearer from-env"


async def test_graph_records_token_ids_from_an_openai_compatible_policy(cfg):
    with FakeOpenAIServer(["Only text."]) as server:
        graph = build_graph(toolbox=Toolbox(backends={}))
        state = State.model_validate(
            await graph.ainvoke({"prompt": "x"}, context=cfg.replace(policy_url=server.url, policy_model="m"))
        )
    assert state.policy.completion_token_ids is not None and len(state.policy.logprobs) == len("Only text.")


async def test_server_error_is_a_policy_error_naming_the_endpoint(cfg):
    with FakeOpenAIServer(status=500) as server:
        graph = build_graph(toolbox=Toolbox(backends={}))
        with pytest.raises(PolicyError, match=f"the policy at {server.url} failed"):
            await graph.ainvoke({"prompt": "x"}, context=cfg.replace(policy_url=server.url, policy_model="m"))


async def test_unreachable_endpoint_is_a_policy_error(cfg):
    graph = build_graph(toolbox=Toolbox(backends={}))
    with pytest.raises(PolicyError, match=r"failed: \w*ConnectionError: Connection error"):
        await graph.ainvoke({"prompt": "x"}, context=cfg.replace(policy_url="http://127.0.0.1:9/v1"))


async def test_policy_timeout(cfg):
    with FakeOpenAIServer(["late"], delay_s=3) as server:
        graph = build_graph(toolbox=Toolbox(backends={}))
        context = cfg.replace(policy_url=server.url, policy_timeout_s=0.5)
        with pytest.raises(PolicyError, match=r"no draft within 0\.5 s"):
            await graph.ainvoke({"prompt": "x"}, context=context)


async def test_vision_policy_receives_input_images_as_image_parts(cfg, tmp_path):
    from tests.fakes import png

    image = tmp_path / "in.png"
    image.write_bytes(png())
    with FakeOpenAIServer(["Seen."]) as server:
        graph = build_graph(toolbox=Toolbox(backends={}))
        context = cfg.replace(policy_url=server.url, policy_vision=True)
        await graph.ainvoke({"prompt": "describe", "images": [data_url(image.read_bytes())]}, context=context)
    content = server.requests[0]["messages"][-1]["content"]
    assert content[0]["type"] == "text" and "image 0 (64x48)" in content[0]["text"]
    assert content[1]["type"] == "image_url" and content[1]["image_url"]["url"].startswith("data:image/png;base64,")


class _SlowBatches:
    """A fake model behind `ModelPolicy`'s queue: each batch takes 0.3 s and its size is recorded."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def __call__(self, prompts, sampling, listeners=()):
        import time

        from llmi_graph.policy import PolicyOutput

        self.sizes.append(len(prompts))
        time.sleep(0.3)
        return [PolicyOutput(text=f"draft {p[0]}", backend="fake", model="fake") for p in prompts]


async def test_requests_that_arrive_while_a_batch_runs_share_the_next_batch():
    """Under load (a batch run, the scaled graph's repair turns) requests trickle in while the model is busy: they
    must queue and go together, not start a one-request batch each behind the model's lock."""
    from llmi_graph.policy import ModelPolicy

    policy = ModelPolicy(None, None, "fake", batch_wait_s=0.01)
    policy.generate_batch = batches = _SlowBatches()  # type: ignore[method-assign]
    policy.prompt_ids = lambda messages: [int(messages[0]["content"])]  # type: ignore[method-assign]
    sampling = Sampling(max_tokens=8, seed=1)

    async def ask(n: int, after_s: float) -> str:
        await asyncio.sleep(after_s)
        return (await policy.generate([{"role": "user", "content": str(n)}], sampling)).text

    texts = await asyncio.gather(ask(0, 0.0), *(ask(n, 0.05 + 0.03 * n) for n in range(1, 6)))
    assert texts == [f"draft {n}" for n in range(6)]
    assert batches.sizes == [1, 5]  # the five late ones waited for the first batch, then went as one
    await asyncio.sleep(0.1)
    assert not policy._drainers  # the drainer ends once the queue is empty


async def test_a_failed_batch_fails_its_requests_and_the_queue_goes_on():
    from llmi_graph.policy import ModelPolicy

    policy = ModelPolicy(None, None, "fake", batch_wait_s=0.01)
    calls: list[int] = []

    def flaky(prompts, sampling, listeners=()):
        calls.append(len(prompts))
        if len(calls) == 1:
            raise RuntimeError("out of memory")
        return _SlowBatches()(prompts, sampling, listeners)

    policy.generate_batch = flaky  # type: ignore[method-assign]
    policy.prompt_ids = lambda messages: [int(messages[0]["content"])]  # type: ignore[method-assign]
    first = await asyncio.gather(
        policy.generate([{"role": "user", "content": "1"}], Sampling(seed=1)), return_exceptions=True
    )
    assert isinstance(first[0], RuntimeError)
    second = await policy.generate([{"role": "user", "content": "2"}], Sampling(seed=1))
    assert second.text == "draft 2"
