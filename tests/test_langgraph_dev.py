"""`langgraph dev` loads the exported graph from langgraph.json and runs it over its HTTP API."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

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
