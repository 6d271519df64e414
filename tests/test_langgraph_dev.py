"""`langgraph dev` loads the exported graph from langgraph.json and runs it over its HTTP API."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from langgraph_sdk import get_client

from tests.conftest import require
from tests.fakes import FakeOpenAIServer, free_port

ROOT = Path(__file__).resolve().parents[1]
SECRET = "server-secret-0b7c"
CODE = "plt.bar(['a', 'b'], [3, 5])\nplt.title('two bars')"
DRAFT = (
    "Two bars compared.\n"
    f"<imgen>{{'source': 'code', 'description': 'two bars', 'params': {{'code': {CODE!r}}}}}</imgen>\nDone."
)


@pytest.fixture
def dev_server(tmp_path):
    langgraph = shutil.which("langgraph", path=os.path.dirname(sys.executable))
    require(langgraph is not None, "langgraph-cli[inmem] is not installed")
    with FakeOpenAIServer([DRAFT]) as policy:
        port = free_port()
        env = {
            **os.environ,
            "LLMI_POLICY_URL": policy.url,
            "LLMI_POLICY_MODEL": "fake",
            "LLMI_IMAGE_DIR": str(tmp_path / "store"),
            "LLMI_TEST_SERVER_SECRET": SECRET,
            "LANGGRAPH_NO_VERSION_CHECK": "1",
        }
        log = tmp_path / "dev.log"
        with open(log, "w") as log_file:
            proc = subprocess.Popen(
                [langgraph, "dev", "--host", "127.0.0.1", "--port", str(port), "--no-browser", "--no-reload"],
                cwd=ROOT,
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 90
            while True:
                try:
                    if httpx.get(f"{url}/ok", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"langgraph dev did not start: {log.read_text()[-2000:]}")
                time.sleep(0.5)
            yield url, policy
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


async def test_langgraph_dev_runs_the_graph(dev_server, requires_bwrap):
    url, policy = dev_server
    client = get_client(url=url)
    assistants = await client.assistants.search()
    assert sorted(a["graph_id"] for a in assistants) == ["llmi", "llmi-scaled"]
    state = await client.runs.wait(None, "llmi", input={"prompt": "Compare a and b", "max_tokens": 64})
    assert state["draft"] == DRAFT
    figures = [item for item in state["document"] if item["kind"] == "figure"]
    assert len(figures) == 1 and figures[0]["status"] == "ok", figures
    assert figures[0]["image"]["mime"] == "image/png"
    assert policy.requests[0]["max_completion_tokens"] == 64 or policy.requests[0].get("max_tokens") == 64


async def test_a_client_cannot_choose_operator_settings(dev_server, tmp_path):
    # The reviewer's attacks through the API: a policy URL of the client's own plus the name of a server secret,
    # a diffusers model with remote code, the sandbox switched off, a server path as an input image.
    url, policy = dev_server
    client = get_client(url=url)
    marker = tmp_path / "remote-code-ran"
    with FakeOpenAIServer(["stolen"]) as attacker:
        context = {
            "policy_url": attacker.url,
            "policy_model": "x",
            "policy_api_key_env": "LLMI_TEST_SERVER_SECRET",
            "diffusion_backend": "diffusers",
            "diffusers_model": str(tmp_path / "model-with-remote-code"),
            "diffusers_trust_remote_code": True,
            "allow_unsandboxed_code": True,
            "image_dir": str(marker),
        }
        state = await client.runs.wait(
            None, "llmi", input={"prompt": "Compare a and b", "policy_url": attacker.url}, context=context
        )
        assert attacker.requests == [] and attacker.headers == []
    assert state["draft"] == DRAFT  # the operator's policy wrote it
    assert not any(SECRET in str(h) for h in policy.headers)
    assert not marker.exists()
    assert all(f.get("error") is None for f in state["document"] if f["kind"] == "figure")

    with pytest.raises(Exception, match=r"InputError: input image 0 is unusable: .*file paths are not accepted"):
        await client.runs.wait(None, "llmi", input={"prompt": "x", "images": ["/etc/hostname"]})
    ids = {a["graph_id"]: a["assistant_id"] for a in await client.assistants.search()}
    schema = await client.assistants.get_schemas(ids["llmi"])
    request = {"prompt", "images", "image_num", "allowed_tools", "max_tokens", "temperature", "top_p", "seed"}
    assert set(schema["input_schema"]["properties"]) == request | {"repair_rounds"}
    assert "run_key" not in schema["output_schema"]["properties"]
    scaled = await client.assistants.get_schemas(ids["llmi-scaled"])
    scaling = {"repair_rounds", "candidates", "select", "enhance", "polish"}
    assert set(scaled["input_schema"]["properties"]) == request | scaling
    with pytest.raises(Exception, match="candidates 99 is over this server's limit of 8"):
        await client.runs.wait(None, "llmi-scaled", input={"prompt": "x", "candidates": 99})


async def test_langgraph_dev_runs_the_scaled_graph(dev_server, requires_bwrap):
    url, policy = dev_server
    client = get_client(url=url)
    state = await client.runs.wait(None, "llmi-scaled", input={"prompt": "Compare a and b", "candidates": 2})
    assert len(policy.requests) == 1 and policy.requests[0]["n"] == 2  # both candidates from one request
    assert [d["output"]["text"] for d in state["drafts"]] == [DRAFT, DRAFT] and state["selected"] == 0
    assert state["selector"] == "rules" and state["draft"] == DRAFT
    figures = [item for item in state["document"] if item["kind"] == "figure"]
    assert len(figures) == 1 and figures[0]["status"] == "ok", figures


# --- token streaming through the server ---------------------------------------------------------------------------


@contextlib.contextmanager
def langgraph_dev(env: dict[str, str], log: Path) -> Iterator[str]:
    """`langgraph dev` on a free loopback port with this environment: its URL, once it answers."""
    langgraph = shutil.which("langgraph", path=os.path.dirname(sys.executable))
    require(langgraph is not None, "langgraph-cli[inmem] is not installed")
    port = free_port()
    with open(log, "w") as log_file:
        proc = subprocess.Popen(
            [langgraph, "dev", "--host", "127.0.0.1", "--port", str(port), "--no-browser", "--no-reload"],
            cwd=ROOT,
            env={**env, "LANGGRAPH_NO_VERSION_CHECK": "1"},
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                if httpx.get(f"{url}/ok", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"langgraph dev did not start: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def embedded_dev_server(tmp_path, embedded_model_dir):
    """`langgraph dev` with no policy URL: its policy is the embedded SmolLM2 (with the shipped adapter)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMI_POLICY_")}
    with langgraph_dev({**env, "LLMI_IMAGE_DIR": str(tmp_path / "store")}, tmp_path / "dev.log") as url:
        yield url


async def stream_run(url: str, request: dict[str, Any], stream_mode: Any) -> list[tuple[float, str, Any]]:
    """A threadless run streamed with langgraph-sdk: its events, with the time each arrived."""
    events = []
    async for part in get_client(url=url).runs.stream(None, "llmi", input=request, stream_mode=stream_mode):
        events.append((time.perf_counter(), part.event, part.data))
    return events


def check_streamed_planner(events: list[tuple[float, str, Any]]) -> dict[str, Any]:
    """The planner's text came in `messages-tuple` events, chat-message chunks tagged as the planner's, all before the
    planner's update, which keeps the token ids and logprobs; returns that update."""
    chunks = [(i, data) for i, (_, event, data) in enumerate(events) if event == "messages"]
    assert len(chunks) > 3
    for _, (message, meta) in chunks:
        assert message["type"] == "AIMessageChunk" and meta["langgraph_node"] == "planner"
        assert meta["llmi_turn"] == "planner" and "llmi:planner" in meta["tags"]
    end = next(i for i, (_, event, data) in enumerate(events) if event == "updates" and "planner" in data)
    assert chunks[-1][0] < end
    update = events[end][2]["planner"]
    assert "".join(message["content"] for _, (message, _) in chunks) == update["draft"]
    policy = update["policy"]
    assert policy["completion_token_ids"] and len(policy["logprobs"]) == len(policy["completion_token_ids"])
    return update


async def test_langgraph_dev_streams_the_planner_text_as_it_is_written(dev_server):
    url, policy = dev_server
    policy.chunk_delay_s = 0.02  # the fake endpoint writes DRAFT in about 3 s
    events = await stream_run(url, {"prompt": "Compare a and b"}, ["messages-tuple", "custom", "updates"])
    update = check_streamed_planner(events)
    assert update["draft"] == DRAFT and update["policy"]["completion_token_ids"][:2] == [1000, 1001]
    times = [t for t, event, _ in events if event == "messages"]
    assert times[-1] - times[1] > 1.5  # the chunks came as the endpoint wrote them, not all at the end
    custom = [data for _, event, data in events if event == "custom"]
    assert [c["status"] for c in custom if c["event"] == "planner"] == ["preparing the policy", "writing", "done"]
    assert [c["status"] for c in custom if c["event"] == "tool"][:1] == ["queued"]
    assert policy.requests[0]["stream"] is True

    # stream_mode="messages": the server adds the chunks up into one message as they come
    events = await stream_run(url, {"prompt": "Compare a and b"}, "messages")
    partial = [data for _, event, data in events if event == "messages/partial"]
    assert len(partial) > 3 and partial[-1][0]["content"] == DRAFT and partial[0][0]["content"] != DRAFT


@pytest.mark.slow
async def test_langgraph_dev_streams_the_embedded_policy(embedded_dev_server):
    request = {"prompt": "A short guide to tea", "max_tokens": 32, "seed": 1}
    events = await stream_run(embedded_dev_server, request, ["messages-tuple", "updates"])
    update = check_streamed_planner(events)
    assert update["policy"]["backend"] == "embedded"
