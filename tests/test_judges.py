"""Judges and the hybrid reward: rule properties, exact hybrid arithmetic, judges over HTTP, honest failures."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from judges._endpoint import JudgeEndpoint, parse_score_lines
from judges.hybrid import HybridOptions, combine, combine_state, score_state
from judges.llm import LLMJudge
from judges.mllm import MLLMJudge
from judges.rubric import RubricJudge
from judges.rule import TOOL_WEIGHTS, image_num_score, tag_validity, tool_score
from llmi_graph import ChatModelPolicy, State, Toolbox, build_graph
from llmi_graph.state import Figure
from llmi_graph.tags import TextSegment
from tests.fakes import FakeBackend, FakeOpenAIServer
from tests.test_graph import tag

# --- rules ------------------------------------------------------------------------------------------

counts = st.integers(min_value=0, max_value=40)
targets = st.integers(min_value=1, max_value=30).filter(lambda n: n != 99)


@given(counts)
def test_image_num_conventions(count):
    assert image_num_score(count, -1) == (1.0 if count == 0 else 0.0)
    assert image_num_score(count, 0) == 1.0
    assert image_num_score(count, 99) == (1.0 if count > 0 else 0.0)
    for split in ("train", "eval"):
        assert image_num_score(count, -1, split) == image_num_score(count, -1)


@given(counts, targets)
def test_image_num_exactly_n(count, n):
    train, evaluation = image_num_score(count, n), image_num_score(count, n, "eval")
    assert evaluation == (1.0 if count == n else 0.0)
    if count < n:
        assert train == pytest.approx(count / n)
    elif count == n:
        assert train == 1.0
    else:
        assert train == pytest.approx(max(0.0, 1 - 0.3 * (count - n)))
    assert 0.0 <= train <= 1.0


@given(counts, targets)
def test_image_num_peaks_at_n(count, n):
    assert image_num_score(count, n) <= image_num_score(n, n)
    if count < n:
        assert image_num_score(count, n) < image_num_score(count + 1, n)


tool_sets = st.sets(st.sampled_from(["code", "edit", "search", "diffusion"]))


@given(tool_sets, tool_sets, tool_sets, st.floats(min_value=0, max_value=1))
def test_tool_score_matches_its_definition(required, attempted, succeeded, beta):
    w = TOOL_WEIGHTS
    expected = 0.0
    if required:
        total = sum(w[t] for t in required)
        expected = (
            beta * sum(w[t] for t in required & succeeded) / total
            + (1 - beta) * sum(w[t] for t in required & attempted) / total
        )
    assert tool_score(required, attempted, succeeded, beta=beta) == pytest.approx(expected)
    assert 0.0 <= tool_score(required, attempted, succeeded, beta=beta) <= 1.0 + 1e-9


def test_tool_score_hand_worked():
    # code and search required; both attempted, only code succeeded: 0.5 * 0.4/0.6 + 0.5 * 0.6/0.6
    assert tool_score({"code", "search"}, {"code", "search"}, {"code"}) == pytest.approx(0.5 * 0.4 / 0.6 + 0.5)
    assert tool_score(set(), {"code"}, {"code"}) == 0.0
    assert tool_score({"edit"}, set(), set(), weights={"edit": 1.0}) == 0.0
    with pytest.raises(ValueError, match="unknown tool"):
        tool_score({"paint"}, set(), set())


def test_tag_validity():
    good = tag("search", query="x")
    assert tag_validity(f"{good} <imgen>{{'source': 'nope'}}</imgen>") == 0.5
    assert tag_validity("no tags") is None


# --- the hybrid arithmetic --------------------------------------------------------------------------


def test_hybrid_hand_worked_cases():
    best = combine(1.0, 5, 5, 5, 5, 5)
    assert (best.reward, best.llm, best.mllm) == (pytest.approx(1.0), 1.0, 1.0)
    # l = ((1.4*4 + 0.6*2)/2 - 1)/4 = 0.6; m = ((3+4+5)/3 - 1)/4 = 0.75; R = 0.2*0.5 + 0.3*0.75*0.5 + 0.5*0.6
    mid = combine(0.5, 4, 2, 3, 4, 5)
    assert mid.llm == pytest.approx(0.6) and mid.mllm == pytest.approx(0.75)
    assert mid.reward == pytest.approx(0.5125)
    assert combine(0.0, 1, 1, 5, 5, 5).reward == pytest.approx(0.0)  # m is gated by n
    assert combine(0.0, 5, 5, 5, 5, 5).reward == pytest.approx(0.5)
    custom = combine(1.0, 3, 3, 3, 3, 3, w_rule=0.5, w_mllm=0.25, w_llm=0.25)
    assert custom.reward == pytest.approx(0.5 + 0.25 * 0.5 + 0.25 * 0.5)
    with_tools = combine(0.5, 4, 2, 3, 4, 5, tool_score=0.5, tool_weight=0.2)
    assert with_tools.reward == pytest.approx(0.8 * 0.5125 + 0.2 * 0.5)


def test_missing_scores_are_never_the_minimum():
    # no LLM score, renormalize: (0.2*1 + 0.3*0.75*1) / 0.5
    renorm = combine(1.0, None, None, 3, 4, 5)
    assert renorm.llm is None and renorm.reward == pytest.approx(0.85)
    renorm = combine(0.5, 4, 2, None, 4, 5)  # no MLLM score: (0.2*0.5 + 0.5*0.6) / 0.7
    assert renorm.reward == pytest.approx((0.1 + 0.3) / 0.7)
    unscored = combine(1.0, None, None, 3, 4, 5, missing="unscored")
    assert unscored.reward is None and unscored.unscored_reason == "no score from the llm judge"
    with pytest.raises(ValueError, match="text must be a 1-5 score"):
        combine(1.0, 0, 3, 3, 3, 3)


def doc_state(image_num: int, made: int, draft: str = "text") -> State:
    from llmi_graph.state import ImageRef, ImageResult

    ref = ImageRef(sha256="0" * 64, path="/nonexistent.png", mime="image/png", width=1, height=1)
    results = [ImageResult(index=i, source="code", status="ok", image=ref) for i in range(made)]
    return State(prompt="p", image_num=image_num, draft=draft, results=results)


def llm_result(text: float, image: float):
    from judges._endpoint import JudgeResult

    return JudgeResult(scores={"text": text, "image": image}, model="m", prompt_version="v")


def test_no_images_gets_full_mllm_marks_unless_the_option_is_on():
    paper = combine_state(doc_state(0, 0), llm_result(5, 5), None)
    assert paper.mllm == 1.0 and paper.reward == pytest.approx(1.0)  # the original's hack
    closed = combine_state(
        doc_state(0, 0), llm_result(5, 5), None, HybridOptions(mllm_full_marks_only_if_unwanted=True)
    )
    assert closed.mllm == 0.0 and closed.reward == pytest.approx(0.7)
    unwanted = combine_state(
        doc_state(-1, 0), llm_result(5, 5), None, HybridOptions(mllm_full_marks_only_if_unwanted=True)
    )
    assert unwanted.mllm == 1.0


def test_literal_image_markers_count_unless_ignored():
    state = doc_state(2, 0, draft="Look: <image> and <image>")
    assert combine_state(state, llm_result(3, 3), None).image_num_score == 1.0  # the original counted them
    ignored = combine_state(state, llm_result(3, 3), None, HybridOptions(ignore_literal_image_markers=True))
    assert ignored.image_num_score == 0.0 and ignored.image_count == 0


def test_more_than_ten_images_cliff_or_taper():
    from judges._endpoint import JudgeResult

    mllm = JudgeResult(
        scores={"quality": 5, "task_relevance": 5, "text_image_relevance": 5}, model="v", prompt_version="v"
    )
    assert combine_state(doc_state(0, 10), llm_result(5, 5), mllm).reward == pytest.approx(1.0)
    assert combine_state(doc_state(0, 12), llm_result(5, 5), mllm).reward == 0.0
    smooth = combine_state(doc_state(0, 12), llm_result(5, 5), mllm, HybridOptions(smooth_overflow=True))
    assert smooth.reward == pytest.approx(0.6)


# --- judges over HTTP (fake OpenAI-compatible server: no judge model runs in the fast suite) ----------


def endpoint(url: str, **kw) -> JudgeEndpoint:
    return JudgeEndpoint(base_url=url, model="judge", **kw)


async def test_llm_judge_structured_output_and_recording():
    answer = json.dumps({"explanation": "Clear and on topic; one vague tag.", "text": 4, "image": 2})
    with FakeOpenAIServer([answer]) as server:
        result = await LLMJudge(endpoint(server.url)).judge("Explain tides", f"Tides... {tag('search', query='x')}")
    assert result.scores == {"text": 4.0, "image": 2.0}
    assert (result.model, result.prompt_version) == ("judge", "llm-judge/1")
    assert result.explanation.startswith("Clear")
    request = server.requests[0]
    assert request["response_format"]["type"] == "json_schema" and request["temperature"] == 0.0
    assert "Explain tides" in request["messages"][1]["content"] and "<imgen>" in request["messages"][1]["content"]


async def test_llm_judge_falls_back_to_score_lines():
    with FakeOpenAIServer(["The answer is fine.\n**Text**: 4\nImage: 3/5"]) as server:
        result = await LLMJudge(endpoint(server.url)).judge("p", "d")
    assert result.scores == {"text": 4.0, "image": 3.0}
    assert parse_score_lines("Text = 5, Image: 6", ["text", "image"]) is None  # out of range


async def test_judge_failures_are_no_score_with_the_reason():
    with FakeOpenAIServer(["I cannot grade this."]) as server:
        result = await LLMJudge(endpoint(server.url, attempts=2)).judge("p", "d")
    assert result.scores is None and result.attempts == 2 and "no valid text, image scores" in result.reason
    down = await LLMJudge(endpoint("http://127.0.0.1:9/v1", attempts=2)).judge("p", "d")
    assert down.scores is None and "Connection" in down.reason and down.model == "judge"
    with FakeOpenAIServer(["late"], delay_s=3) as server:
        slow = await LLMJudge(endpoint(server.url, timeout_s=0.5, attempts=1)).judge("p", "d")
    assert slow.scores is None and "Timeout" in slow.reason


async def test_mllm_judge_sends_the_document_in_order(cfg):
    """Checked at the HTTP layer with a recorded answer: no vision model runs on these machines."""
    draft = f"Intro text.\n{tag('code', code='a')}\nMiddle.\n{tag('search', query='b')}\nEnd."
    toolbox = Toolbox(backends={"code": FakeBackend(color=(9, 9, 9)), "search": FakeBackend(error="no results")})
    graph = build_graph(policy=ChatModelPolicy(FakeListChatModel(responses=[draft])), toolbox=toolbox)
    state = State.model_validate(await graph.ainvoke({"prompt": "Compare a and b"}, context=cfg))
    recorded = json.dumps({"explanation": "One chart, one missing photo.", "quality": 4, "task_relevance": 2,
                           "text_image_relevance": 3})  # fmt: skip
    with FakeOpenAIServer([recorded]) as server:
        result = await MLLMJudge(endpoint(server.url), image_roots=[cfg.image_path]).judge_state(state)
    assert result.scores == {"quality": 4.0, "task_relevance": 2.0, "text_image_relevance": 3.0}
    parts = server.requests[0]["messages"][1]["content"]
    kinds = [(p["type"], p.get("text", "")[:20]) for p in parts]
    assert kinds[0] == ("text", "User request:\nCompar")
    assert [k for k, _ in kinds[1:]] == ["text", "image_url", "text", "text", "text", "text"]
    assert parts[1]["text"] == "Intro text.\n" and parts[3]["text"] == "\nMiddle.\n"
    assert parts[2]["image_url"]["url"].startswith("data:image/png;base64,")
    assert parts[4]["text"] == "[Figure 2 could not be made: no results]"


async def test_rubric_judge_sums_scored_criteria_and_reports_the_rest():
    answers = [
        json.dumps({"justification": "Has a chart.", "score": 2}),
        json.dumps({"justification": "Half.", "score": 1}),
        "no idea",
    ]
    document = [TextSegment(text="A report."), Figure(index=0, source="code", status="failed", error="x")]
    with FakeOpenAIServer(answers) as server:
        result = await RubricJudge(endpoint(server.url, attempts=1, concurrency=1)).judge(
            "p", document, ["has a chart", "covers 2023", "cites sources"]
        )
    assert [c.score for c in result.criteria] == [2, 1, None]
    assert result.unscored == ["cites sources"] and result.criteria[2].reason.startswith("no score")
    assert result.score == pytest.approx(10 * 3 / 4)


# --- against the real vLLM CPU server (SmolLM2: weak scores, real HTTP and structured output) ---------


@pytest.mark.slow
async def test_llm_judge_against_vllm(policy_server, cfg):
    judge = LLMJudge(JudgeEndpoint(base_url=policy_server.url, model="smollm2", max_tokens=200))
    draft = f"The parabola y = x^2 opens upward.\n{tag('code', code='plt.plot([1, 4, 9])')}\nIt is symmetric."
    results = await judge.judge_many([("Plot y = x^2 and explain it", draft)] * 3)
    for result in results:
        assert result.scores is not None, result.reason
        assert set(result.scores) == {"text", "image"} and all(1 <= v <= 5 for v in result.scores.values())
        assert (result.model, result.prompt_version) == ("smollm2", "llm-judge/1")

    graph = build_graph(policy=ChatModelPolicy(FakeListChatModel(responses=[draft])),
                        toolbox=Toolbox(backends={"code": FakeBackend()}))  # fmt: skip
    state = State.model_validate(await graph.ainvoke({"prompt": "Plot y = x^2", "image_num": 1}, context=cfg))
    reward = await score_state(state, judge, None)  # no vision model here: the MLLM term is renormalized away
    assert reward.image_num_score == 1.0 and reward.llm is not None and reward.mllm is None
    assert 0.0 <= reward.reward <= 1.0 and reward.judges["llm"]["model"] == "smollm2"


@pytest.mark.slow
async def test_judge_outage_is_no_score(policy_server):
    from servers._process import free_port

    stopped = JudgeEndpoint(base_url=f"http://127.0.0.1:{free_port()}/v1", model="smollm2", attempts=2)
    result = await LLMJudge(stopped).judge("p", "d")
    assert result.scores is None and "Connection" in result.reason
    unscored = combine(1.0, None, None, 5, 5, 5, missing="unscored")
    assert unscored.reward is None
