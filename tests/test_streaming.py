"""Token streaming: the policy's text arrives in LangGraph's `messages` stream mode as it is written, from the embedded
model (a tiny random Qwen2 with a real byte-level tokenizer, and the real SmolLM2 in the slow tests), from an
OpenAI-compatible endpoint (`FakeOpenAIServer` streaming like vLLM, and the real vLLM server in the slow tests) and
from any LangChain chat model; the final state keeps the token ids and logprobs. The `langgraph dev` server's side is
in tests/test_langgraph_dev.py."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import torch
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from llmi_graph import ChatModelPolicy, Config, EmbeddedPolicy, State, Toolbox, build_graph
from llmi_graph.policy import ModelPolicy, _IncrementalDecoder
from llmi_graph.scaling import build_scaled_graph
from tests.fakes import FakeBackend, FakeOpenAIServer
from tests.tiny_qwen import tiny_tokenizer

MODES = ["messages", "custom", "updates", "values"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "<|im_start|>assistant\n"
)
TEXT = "the cat ☕ naïve 日本 sat  on\nthe mat"  # multi-byte characters that the tokenizers split into bytes


def llama_style_tokenizer() -> PreTrainedTokenizerFast:
    """A SentencePiece-style tokenizer (Metaspace spaces, byte fallback, the leading space stripped), as Llama's."""
    pieces = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), *"▁abcdefghijklmnopqrstuvwxyz"]
    vocab = {t: i for i, t in enumerate([*pieces, "▁c", "▁ca", "▁cat"])}
    merges = [("▁", "c"), ("▁c", "a"), ("▁ca", "t")]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.add_special_tokens([AddedToken(t, special=True) for t in ["<unk>", "<s>", "</s>"]])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.mark.parametrize("make_tokenizer", [tiny_tokenizer, llama_style_tokenizer], ids=["byte-level", "llama-style"])
def test_decoded_pieces_add_up_to_the_whole_decode(make_tokenizer):
    tokenizer = make_tokenizer()
    ids = [*tokenizer(TEXT, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
    assert len(ids) > len(TEXT.split())  # merged and byte-split tokens both occur
    decoder = _IncrementalDecoder(tokenizer)
    pieces = [decoder.push(token) for token in ids]
    pieces.append(decoder.finish())
    assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=True) == TEXT
    assert not any("\ufffd" in piece for piece in pieces)  # a character split over tokens waits for its last byte
    assert sum(1 for piece in pieces if piece) > 10


@pytest.fixture(scope="module")
def tiny_policy() -> ModelPolicy:
    """A tiny random Qwen2 on the byte-level tokenizer: its samples are random bytes, often invalid UTF-8."""
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = eos
    return ModelPolicy(model, tokenizer, "tiny-qwen2", batch_wait_s=0.5)  # concurrent runs meet in one batch


async def stream(graph: Any, request: dict[str, Any], context: Config) -> dict[str, Any]:
    """Run a graph in the messages, custom, updates and values modes: the events in order, with their arrival times."""
    events: list[tuple[float, str, Any]] = []
    async for mode, chunk in graph.astream(request, context=context, stream_mode=MODES):
        events.append((time.perf_counter(), mode, chunk))
    final = next(chunk for _, mode, chunk in reversed(events) if mode == "values")
    return {"events": events, "state": State.model_validate(final)}


def chunks_of(run: dict[str, Any], turn: str) -> list[tuple[int, AIMessageChunk, dict[str, Any]]]:
    """The messages-mode chunks of one turn (`llmi_turn` in their metadata), with their positions in the stream."""
    found = enumerate(run["events"])
    return [(i, c[0], c[1]) for i, (_, mode, c) in found if mode == "messages" and c[1].get("llmi_turn") == turn]


def text_of(chunks: list[tuple[int, AIMessageChunk, dict[str, Any]]]) -> str:
    return "".join(message.content for _, message, _ in chunks)


def planner_end(run: dict[str, Any]) -> int:
    """The position of the planner's update in the stream: where the planner node ended."""
    return next(i for i, (_, mode, c) in enumerate(run["events"]) if mode == "updates" and "planner" in c)


def check_planner_stream(run: dict[str, Any]) -> None:
    """The planner's text came as chunks of one message, tagged as the planner's, before the node ended, adding up to
    the draft; the final state keeps the token ids and logprobs."""
    chunks = chunks_of(run, "planner")
    assert sum(1 for _, message, _ in chunks if message.content) > 3
    assert all(isinstance(message, AIMessageChunk) for _, message, _ in chunks)
    assert all(meta["langgraph_node"] == "planner" and "llmi:planner" in meta["tags"] for _, _, meta in chunks)
    assert len({message.id for _, message, _ in chunks}) == 1
    assert chunks[-1][0] < planner_end(run)
    state = run["state"]
    assert text_of(chunks) == state.draft == state.policy.text
    ids, logprobs = state.policy.completion_token_ids, state.policy.logprobs
    assert ids and logprobs and len(ids) == len(logprobs)


async def test_the_embedded_policy_streams_each_request_of_a_batch_to_its_own_run(tiny_policy, cfg):
    batches: list[int] = []
    real = tiny_policy.generate_batch

    def counting(prompts, sampling, listeners=()):
        batches.append(len(prompts))
        return real(prompts, sampling, listeners)

    tiny_policy.generate_batch = counting  # type: ignore[method-assign]
    try:
        graph = build_graph(policy=tiny_policy, toolbox=Toolbox(backends={}))
        context = cfg.replace(max_tokens=40, temperature=1.0, seed=5)
        runs = await asyncio.gather(*(stream(graph, {"prompt": p}, context) for p in ("a red cat", "a blue mat")))
    finally:
        del tiny_policy.generate_batch
    assert batches == [2]  # one generate call for both runs
    for run in runs:
        check_planner_stream(run)
    assert runs[0]["state"].draft != runs[1]["state"].draft
    custom = [c for _, mode, c in runs[0]["events"] if mode == "custom"]
    assert [c["status"] for c in custom if c["event"] == "planner"][-1] == "done"
    assert any(c.get("tokens") == 16 for c in custom if c["status"] == "writing")  # the token count, every 16


async def test_a_streamed_embedded_draft_is_the_one_an_unstreamed_run_gets(tiny_policy, cfg):
    graph = build_graph(policy=tiny_policy, toolbox=Toolbox(backends={}))
    context = cfg.replace(max_tokens=32, temperature=1.0, seed=11)
    streamed = (await stream(graph, {"prompt": "a red cat"}, context))["state"].policy
    plain = State.model_validate(await graph.ainvoke({"prompt": "a red cat"}, context=context)).policy
    assert streamed.model_dump(exclude={"latency_s"}) == plain.model_dump(exclude={"latency_s"})


async def test_the_endpoint_streams_as_it_writes_and_the_output_is_the_unstreamed_one(cfg):
    draft = "A streamed draft ☕, one character at a time."
    with FakeOpenAIServer([draft], chunk_delay_s=0.02) as server:  # about 0.9 s of chunks
        graph = build_graph(toolbox=Toolbox(backends={}))
        run = await stream(graph, {"prompt": "x"}, cfg.replace(policy_url=server.url, policy_model="m"))
        sent = server.requests[0]
    check_planner_stream(run)
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    first = next(i for i, message, _ in chunks_of(run, "planner") if message.content)
    assert run["events"][planner_end(run)][0] - run["events"][first][0] > 0.5  # the text came as it was written
    with FakeOpenAIServer([draft]) as server:  # a fresh server: the same ids for the same first draft
        state = await graph.ainvoke({"prompt": "x"}, context=cfg.replace(policy_url=server.url, policy_model="m"))
        assert not server.requests[0].get("stream")  # nobody listens for tokens: one JSON reply
    plain = State.model_validate(state).policy
    streamed = run["state"].policy
    assert streamed.model_dump(exclude={"latency_s"}) == plain.model_dump(exclude={"latency_s"})
    assert streamed.prompt_token_ids == [1, 2, 3, 1] and streamed.usage["output_tokens"] == len(draft)


async def test_embedded_candidates_stream_one_message_each_from_one_batch(tiny_policy, cfg):
    graph = build_scaled_graph(policy=tiny_policy, toolbox=Toolbox(backends={}))
    context = cfg.replace(max_tokens=24, temperature=1.0, seed=3)
    run = await stream(graph, {"prompt": "a red cat", "candidates": 3}, context)
    messages: dict[str, str] = {}
    for _, message, meta in chunks_of(run, "candidates"):
        assert meta["langgraph_node"] == "candidates" and "llmi:candidates" in meta["tags"]
        messages[message.id] = messages.get(message.id, "") + message.content
    assert sorted(messages.values()) == sorted(d.output.text for d in run["state"].drafts)
    assert len(set(messages.values())) == 3


async def test_endpoint_candidates_come_whole_from_one_unstreamed_request(cfg):
    # ChatOpenAI streams only the first of n choices: a request for n drafts is not streamed.
    with FakeOpenAIServer(["First draft.", "Second draft."]) as server:
        graph = build_scaled_graph(toolbox=Toolbox(backends={}))
        run = await stream(graph, {"prompt": "x", "candidates": 2}, cfg.replace(policy_url=server.url))
        assert len(server.requests) == 1 and server.requests[0]["n"] == 2 and not server.requests[0].get("stream")
    drafts = [d.output for d in run["state"].drafts]
    assert [d.text for d in drafts] == ["First draft.", "Second draft."]
    assert all(len(d.completion_token_ids or ()) == len(d.text) for d in drafts)
    assert not chunks_of(run, "candidates")


async def test_a_chat_model_streams_and_each_turn_says_which_it_is(cfg):
    broken = "<imgen>{'source': 'diffusion', 'description': 'a cat', 'params': {'prompt': 'a cat'}}</imgen>"
    draft, reply = f"A cat.\n{broken}\nThe end.", f"Once more: {broken.replace('a cat', 'a red cat')}"
    model = GenericFakeChatModel(messages=iter([AIMessage(draft), AIMessage(reply)]))
    toolbox = Toolbox(backends={"diffusion": FakeBackend(error="the generator is down")})
    graph = build_graph(policy=ChatModelPolicy(model), toolbox=toolbox)
    run = await stream(graph, {"prompt": "a cat", "repair_rounds": 1}, cfg)
    planner = chunks_of(run, "planner")
    assert len(planner) > 3 and text_of(planner) == draft == run["state"].draft
    assert all(meta["langgraph_node"] == "planner" and "llmi:planner" in meta["tags"] for _, _, meta in planner)
    repair = chunks_of(run, "repair")
    assert len(repair) > 3 and text_of(repair) == reply == run["state"].repairs[0].reply.text
    assert all(meta["langgraph_node"] == "review" and "llmi:repair" in meta["tags"] for _, _, meta in repair)
    assert all(meta["llmi_round"] == 1 and meta["llmi_index"] == 0 for _, _, meta in repair)


@pytest.mark.slow
async def test_the_embedded_smollm2_streams_its_draft(embedded_model_dir, cfg):
    graph = build_graph(policy=EmbeddedPolicy(embedded_model_dir), toolbox=Toolbox(backends={}))
    run = await stream(graph, {"prompt": "A short guide to tea", "max_tokens": 48, "seed": 1}, cfg)
    check_planner_stream(run)


@pytest.mark.slow
async def test_the_vllm_server_streams_the_draft_an_unstreamed_request_gets(policy_server, cfg):
    graph = build_graph(toolbox=Toolbox(backends={}))
    context = cfg.replace(policy_url=policy_server.url, policy_model="smollm2")
    request = {"prompt": "A short guide to tea", "max_tokens": 32, "temperature": 0.0}
    run = await stream(graph, request, context)
    check_planner_stream(run)
    plain = State.model_validate(await graph.ainvoke(request, context=context)).policy
    streamed = run["state"].policy
    assert streamed.text == plain.text and streamed.completion_token_ids == plain.completion_token_ids
    assert streamed.prompt_token_ids == plain.prompt_token_ids and streamed.finish_reason == plain.finish_reason
    assert streamed.usage == plain.usage
    assert streamed.logprobs == pytest.approx(plain.logprobs, abs=1e-3)
