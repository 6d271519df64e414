"""The repair loop (`repair_rounds`): a failed slot goes back to the policy with its reason, the tag it rewrites runs
again (with the edits that read it), and the run keeps every attempt. The policy is langchain-core's
`FakeListChatModel` (a scripted fake: each call returns its next reply); code runs in the real local sandbox."""

from __future__ import annotations

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from llmi_graph import ChatModelPolicy, Config, State, Toolbox, build_graph
from llmi_graph.graph import REPAIR_MAX_TOKENS, InputError
from llmi_graph.state import Figure
from llmi_graph.tags import parse_replacement
from tests.fakes import FakeBackend


def tag(source: str, description: str = "d", **params: object) -> str:
    return f"<imgen>{{'source': '{source}', 'description': '{description}', 'params': {params!r}}}</imgen>"


BROKEN = tag("code", "sales", code="plt.line([1, 2], [3, 4])")  # matplotlib has no plt.line: the sandbox fails
FIXED = tag("code", "sales", code="plt.plot([1, 2], [3, 4])")


@pytest.fixture
def local_code():
    """The real local code sandbox (bubblewrap)."""
    from tools.code import LocalSandbox, SandboxLimits

    return LocalSandbox(SandboxLimits(timeout_s=30))


def graph_for(replies: list[str], *, code, edit=None, search=None):
    fake = FakeListChatModel(responses=replies)
    toolbox = Toolbox(backends={"search": search, "diffusion": None, "code": code, "edit": edit})
    return build_graph(policy=ChatModelPolicy(fake), toolbox=toolbox), fake


async def run(graph, cfg: Config, **request: object) -> State:
    request.setdefault("prompt", "Chart the sales")
    return State.model_validate(await graph.ainvoke(request, context=cfg))


def figures(state: State) -> list[Figure]:
    return [item for item in state.document if isinstance(item, Figure)]


async def test_a_failed_chart_is_repaired_and_every_attempt_is_kept(cfg, local_code):
    graph, _ = graph_for([f"Sales grew.\n{BROKEN}\nThe end.", f"Here it is: {FIXED}"], code=local_code)
    state = await run(graph, cfg, repair_rounds=2)
    assert [f.status for f in figures(state)] == ["ok"]
    assert [r.status for r in state.results] == ["failed", "ok"]  # both attempts, in order
    assert "AttributeError" in (state.results[0].error or "")
    (repair,) = state.repairs
    assert repair.round == 1 and repair.index == 0 and repair.call is not None and repair.call.valid
    assert "plt.line" in repair.failed.params["code"] and "AttributeError" in repair.reason
    assert repair.call.params["code"] == "plt.plot([1, 2], [3, 4])"
    assert state.calls[0].params["code"] == "plt.plot([1, 2], [3, 4])"  # the slot's call is the repaired one
    assert state.draft.startswith("Sales grew.") and "plt.line" in state.draft  # the policy's first turn, as written
    assert repair.reply is not None and repair.reply.text.startswith("Here it is")
    assert state.document[0].text == "Sales grew.\n"


async def test_the_policy_is_told_the_tag_and_the_reason_as_a_turn_of_its_own(cfg, local_code):
    seen: list = []
    asked: list = []

    class Recording(ChatModelPolicy):
        async def generate(self, messages, sampling, on_token=None):
            seen.append(list(messages))
            asked.append(sampling)
            return await super().generate(messages, sampling, on_token)

    toolbox = Toolbox(backends={"search": None, "diffusion": None, "code": local_code, "edit": None})
    fake = FakeListChatModel(responses=[f"A chart. {BROKEN}", FIXED])
    graph = build_graph(policy=Recording(fake), toolbox=toolbox)
    await run(graph, cfg, repair_rounds=1)
    first, second = seen
    assert second[: len(first)] == first  # the same chat, then the draft and the repair request
    assert second[len(first)] == {"role": "assistant", "content": f"A chat. {BROKEN}".replace("chat", "chart")}
    ask = second[-1]["content"]
    assert second[-1]["role"] == "user" and BROKEN in ask and "AttributeError" in ask and "'code'" in ask
    # the reply is read for one tag: its length is capped, however long the draft may be
    assert asked[0].max_tokens == cfg.max_tokens > REPAIR_MAX_TOKENS == asked[1].max_tokens


async def test_no_repair_by_default_and_the_rounds_stop_at_the_limit(cfg, local_code):
    graph, _ = graph_for([f"A. {BROKEN}"], code=local_code)
    state = await run(graph, cfg)  # the operator's default: 0 rounds
    assert [f.status for f in figures(state)] == ["failed"] and not state.repairs

    graph, _ = graph_for([f"A. {BROKEN}", BROKEN, BROKEN, FIXED], code=local_code)
    state = await run(graph, cfg, repair_rounds=2)
    assert [f.status for f in figures(state)] == ["failed"]  # the fix would have come in round 3
    assert [r.round for r in state.repairs] == [1, 2] and len(state.results) == 3


async def test_a_request_over_the_operator_cap_is_refused_before_anything_runs(cfg, local_code):
    graph, fake = graph_for([f"A. {BROKEN}"], code=local_code)
    with pytest.raises(InputError, match="repair_rounds 9 is over this server's limit of 3"):
        await run(graph, cfg, repair_rounds=9)
    assert fake.i == 0  # the policy was never called
    state = await run(graph, cfg.replace(repair_rounds=1), repair_rounds=None)  # the operator's default applies
    assert [r.round for r in state.repairs] == [1]


async def test_an_invalid_tag_is_repaired_and_the_edit_that_reads_it_runs_again(cfg):
    code, edit = FakeBackend("code"), FakeBackend("edit")
    draft = f"A. <imagen>{{'source': 'code'}}</imagen> B. {tag('edit', 'brighter', img_index=0, prompt='brighter')}"
    graph, _ = graph_for([draft, FIXED], code=code, edit=edit)
    state = await run(graph, cfg, repair_rounds=1)
    assert [f.status for f in figures(state)] == ["ok", "ok"]
    first_edit = next(r for r in state.results if r.index == 1)
    assert first_edit.error.startswith("dependency failed")  # the edit's own failure was its source's
    assert [r.index for r in state.repairs] == [0]  # only the slot at fault is sent back
    assert len(code.calls) == 1 and len(edit.calls) == 1


async def test_a_reply_without_a_tag_leaves_the_slot_failed_with_its_reason(cfg, local_code):
    graph, _ = graph_for([f"A. {BROKEN}", "Sorry, I cannot fix it."], code=local_code)
    state = await run(graph, cfg, repair_rounds=1)
    (repair,) = state.repairs
    assert repair.call is None and repair.error == "the reply holds no <imgen> tag"
    (figure,) = figures(state)
    assert figure.status == "failed" and "AttributeError" in (figure.error or "")


async def test_a_repair_may_switch_to_a_tool_the_request_allows(cfg):
    search = FakeBackend("search")
    draft = f"A. {tag('code', 'c', code='plt.plot([1])')}"
    fix = tag("search", "a photo", query="a photo")
    graph, _ = graph_for([draft, fix], code=FakeBackend("code"), search=search)
    state = await run(graph, cfg, allowed_tools=["search"], repair_rounds=1)
    assert "not allowed" in state.repairs[0].reason
    assert [f.status for f in figures(state)] == ["ok"] and len(search.calls) == 1


def test_a_replacement_tag_is_read_as_the_slot_it_replaces():
    reply = f"Sure: {tag('edit', 'e', img_index=1, prompt='p')} done"
    call = parse_replacement(reply, index=2, total=3, num_input_images=0)
    assert call is not None and call.valid and call.index == 2 and call.depends_on == 1
    assert reply[call.start : call.end] == call.raw
    late = parse_replacement(tag("edit", "e", img_index=2, prompt="p"), index=2, total=3)
    assert late is not None and not late.valid and "img_index" in (late.error or "")
    assert parse_replacement("no tag here", index=0, total=1) is None


def test_rl_rollouts_refuse_repair_rounds_they_could_not_train_honestly(cfg):
    from rl.data import RowIndex
    from rl.rollout import GraphRollout

    with pytest.raises(ValueError, match="RL rollouts run without repair"):
        GraphRollout(RowIndex([]), cfg.replace(repair_rounds=1))
    with pytest.raises(ValueError, match="cannot wait for a person"):
        GraphRollout(RowIndex([]), cfg.replace(approve="code"))
    GraphRollout(RowIndex([]), cfg)  # no repair: fine
