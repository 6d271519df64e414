"""What the judges read: only images inside the report's images/ or the image store, and only the bytes their
hash names. Anything else is "no score" with the reason, never an exception and never a file from elsewhere."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from judges import mllm
from judges._endpoint import JudgeEndpoint
from judges.mllm import ImageReadError, MLLMJudge, read_image
from llmi.cli import app
from llmi_graph.report import write_report
from llmi_graph.state import Figure, ImageRef
from llmi_graph.store import ImageStore
from llmi_graph.tags import TextSegment
from rl.rewards import RewardSuite
from tests.fakes import FakeOpenAIServer, png
from tests.test_report_files import made_state, state_of

ANSWER = json.dumps({"explanation": "ok", "quality": 4, "task_relevance": 4, "text_image_relevance": 4})


def ref_to(path: Path, data: bytes | None = None) -> ImageRef:
    data = path.read_bytes() if data is None else data
    return ImageRef(sha256=hashlib.sha256(data).hexdigest(), path=str(path), mime="image/png", width=64, height=48)


def endpoint(url: str) -> JudgeEndpoint:
    return JudgeEndpoint(base_url=url, model="vision-judge", attempts=1)


@pytest.fixture
def secret(tmp_path) -> Path:
    """A file outside every allowed folder (an image, so a judge that read it would send it)."""
    path = tmp_path / "private" / "secret.png"
    path.parent.mkdir()
    path.write_bytes(png((7, 7, 7)))
    return path


def test_read_image_takes_only_plain_files_inside_the_roots_with_their_hash(tmp_path, secret, monkeypatch):
    root = tmp_path / "report" / "images"
    root.mkdir(parents=True)
    good = root / "00-code.png"
    good.write_bytes(png())
    assert read_image(ref_to(good), [root]) == good.read_bytes()

    (root / "link.png").symlink_to(secret)
    os.mkfifo(root / "fifo.png")
    (root / "sub").mkdir()
    refused = {
        "outside": (ref_to(secret), "is outside the folders a judge may read images from"),
        "dot-dot": (ref_to(root / ".." / ".." / "private" / "secret.png", secret.read_bytes()), "is outside"),
        "symlink out": (ref_to(root / "link.png", secret.read_bytes()), "is outside"),
        "other bytes": (ref_to(good, b"what the document recorded"), "does not match the SHA-256"),
        "missing": (ref_to(root / "gone.png", b""), "cannot be read"),
        "a fifo": (ref_to(root / "fifo.png", b""), "is not a regular file"),  # refused, not waited on
        "a folder": (ref_to(root / "sub", b""), "is not a regular file"),
    }
    for ref, reason in refused.values():
        with pytest.raises(ImageReadError, match=reason):
            read_image(ref, [root])
    monkeypatch.setattr(mllm, "MAX_IMAGE_BYTES", 100)
    with pytest.raises(ImageReadError, match="over the"):
        read_image(ref_to(good), [root])


async def test_the_mllm_judge_gives_no_score_for_an_image_it_may_not_read(tmp_path, secret, monkeypatch):
    monkeypatch.setenv("LLMI_IMAGE_DIR", str(tmp_path / "store"))  # the default root: the image store
    document = [TextSegment(text="Look:"), Figure(index=0, source="search", status="ok", image=ref_to(secret))]
    with FakeOpenAIServer([ANSWER]) as server:
        result = await MLLMJudge(endpoint(server.url)).judge("p", document)
    assert server.requests == []  # nothing was sent
    assert result.scores is None and result.model == "vision-judge"
    assert result.reason.startswith("no score: image 0: ") and "is outside the folders" in result.reason


async def test_the_rubric_judge_leaves_every_criterion_unscored_for_an_image_it_may_not_read(tmp_path, secret):
    from judges.rubric import RubricJudge

    document = [TextSegment(text="Look:"), Figure(index=0, source="search", status="ok", image=ref_to(secret))]
    with FakeOpenAIServer([json.dumps({"justification": "x", "score": 2})]) as server:
        judge = RubricJudge(endpoint(server.url), image_roots=[tmp_path / "store"])
        result = await judge.judge("p", document, ["has a photo", "is accurate"])
    assert server.requests == []
    assert result.score is None and result.unscored == ["has a photo", "is accurate"]
    assert "is outside the folders" in result.criteria[0].reason


async def test_live_states_are_judged_from_the_image_store(tmp_path):
    """RL rewards judge graph states whose images are in the store; a tampered reference is still refused."""
    store = ImageStore(tmp_path / "store")
    state = made_state(store)
    moved = tmp_path / "elsewhere.png"
    moved.write_bytes(Path(state.results[0].image.path).read_bytes())
    tampered = state_of(Figure(index=0, source="code", status="ok", image=ref_to(moved)))
    with FakeOpenAIServer([ANSWER]) as server:
        suite = RewardSuite(mllm_judge=MLLMJudge(endpoint(server.url), image_roots=[store.root]))
        reward = await suite.score("r1", state.model_dump(mode="json"), [])
        sent = server.requests[0]["messages"][1]["content"]
        assert [p["type"] for p in sent].count("image_url") == 1 and reward.mllm == pytest.approx(0.75)
        reward = await suite.score("r2", tampered.model_dump(mode="json"), [])
        assert len(server.requests) == 1  # nothing sent for the tampered one
    assert reward.mllm is None and "is outside the folders" in reward.judges["mllm"]["reason"]


def crafted_report(folder: Path, secret: Path, how: str) -> Path:
    """A report whose trajectory or images/ were tampered with `how` to point the judge at `secret`."""
    store = ImageStore(folder / "store")
    out = folder / "report"
    write_report(made_state(store), out, store)
    trajectory = json.loads((out / "trajectory.json").read_text())
    call = trajectory["calls"][0]
    if how == "absolute path":
        call.update(image=str(secret), sha256=hashlib.sha256(secret.read_bytes()).hexdigest())
    elif how == "relative path":
        call.update(image=os.path.relpath(secret, out), sha256=hashlib.sha256(secret.read_bytes()).hexdigest())
    elif how == "symlink":
        (out / call["image"]).unlink()
        (out / call["image"]).symlink_to(secret)
        call.update(sha256=hashlib.sha256(secret.read_bytes()).hexdigest())
    elif how == "other bytes":
        (out / call["image"]).write_bytes(secret.read_bytes())
    (out / "trajectory.json").write_text(json.dumps(trajectory))
    return out


def test_llmi_score_judges_report_images_and_never_sends_a_file_from_elsewhere(tmp_path, secret):
    env = {"LLMI_IMAGE_DIR": str(tmp_path / "store")}
    out = crafted_report(tmp_path / "intact", secret, "intact")
    with FakeOpenAIServer([ANSWER]) as server:
        result = CliRunner().invoke(app, ["score", str(out), "--mllm-url", server.url], env=env)
        sent = server.requests[0]["messages"][1]["content"]
    assert result.exit_code == 0, result.output
    assert json.loads((out / "score.json").read_text())["mllm"] == pytest.approx(0.75)
    assert [p["type"] for p in sent].count("image_url") == 1

    for how in ("absolute path", "relative path", "symlink", "other bytes"):
        out = crafted_report(tmp_path / how.replace(" ", "-"), secret, how)
        with FakeOpenAIServer([ANSWER]) as server:
            result = CliRunner().invoke(app, ["score", str(out), "--mllm-url", server.url], env=env)
            assert server.requests == [], how
        assert result.exit_code == 0, result.output
        judged = json.loads((out / "score.json").read_text())
        assert judged["mllm"] is None and judged["reward"] is not None  # renormalized without the MLLM term
        reason = judged["judges"]["mllm"]["reason"]
        assert reason.startswith("no score: image 0: ") and reason in result.output.replace("\n", "")
        assert ("does not match the SHA-256" if how == "other bytes" else "is outside the folders") in reason
