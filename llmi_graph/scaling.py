r"""Test-time scaling (the LLM-I paper's pipeline, each stage switchable): sample K candidate drafts, validate each
without running anything, select one, enhance it per tool, make its document with the llmi graph (composed here as
a subgraph), and polish the text around the final images.

    START -> candidates -> select -> enhance -> create -> polish -> END
                                                  |
                                                  \-- the llmi graph (`build_graph`): planner (takes the chosen
                                                      draft as it is) -> parse -> tools -> review (repair) -> assemble

- **candidates**: `candidates=K` drafts for one request, from one request with `n=K` to an OpenAI-compatible
  server, or one batch on the embedded model (`llmi_graph.policy.generate_n`). All K are kept in the output.
- **validation** (`llmi_graph.checks.validate`): per tag, parse and schema, edit indices, empty queries and
  prompts, tools this request may use, Python code that compiles. Problems count against a candidate; after the
  tools run, the repair loop (`repair_rounds`) sends the slots that failed back to the policy.
- **select**: `rules` (the default, no judge: image-count fit plus the share of tags that would work), or a
  `DraftScorer` the composing app passes in by name (`judge`: the LLM judge scores each draft; `relative`: one
  judge call ranks the K drafts against each other). The graph does not import `judges`.
- **enhance** (`enhance=True`): the policy rewrites each diffusion prompt of the chosen draft into a detailed one
  before generation (recorded before and after, with the turn's tokens); code and edit failures go back to the
  policy once with their reason (the repair loop for those tools, when the request asked for no repair); an edit
  the local editor cannot do comes back with the vocabulary it understands. A search keeps, of its top results,
  the one an `ImageChooser` the app passes in (`judges.select.MLLMImageChooser`) scores highest; the rank order
  without one.
- **polish** (`polish=True`): the policy rewrites the document's text around the final figures, told which ones
  failed. The rewrite is used only if every figure marker stays in its place and it writes no tag; else the
  document stays as it was, and the turn is recorded with the reason. Images are never touched.

Settings: a request may choose `candidates` (up to the operator's `max_candidates`), `select` (among the
selectors this graph has), `enhance`, `polish` and `repair_rounds`; the operator's settings are the defaults.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol

from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime
from pydantic import Field

from llmi_graph._checkpoint import with_state_types
from llmi_graph.checks import rules_score, validate
from llmi_graph.config import Config
from llmi_graph.graph import InputError, PolicyError, _Nodes, _sampling, build_graph, policy_turn, repair_rounds
from llmi_graph.policy import Policy, generate_n
from llmi_graph.prompts import FIGURE_MARK, detail_message, polish_messages
from llmi_graph.state import Candidate, Enhancement, Figure, Output, Polish, Request, State
from llmi_graph.tags import TextSegment, ToolCall, parse_tags
from llmi_graph.toolbox import ImageChooser, Toolbox

SELECTORS = ("rules", "judge", "relative")


class DraftScorer(Protocol):
    """Scores candidate drafts for one prompt (higher is better), e.g. with a judge. `judges.select` has the ones
    llmi ships; any object with this method will do."""

    async def score(self, prompt: str, drafts: Sequence[str]) -> list[float]: ...


class ScaledRequest(Request):
    """A request to the scaled graph: a `Request` plus what a caller may choose of the scaling."""

    candidates: int | None = Field(default=None, ge=1, description="Drafts to sample (capped; None: the default).")
    select: Literal["rules", "judge", "relative"] | None = Field(
        default=None, description="How to choose among the drafts (None: the operator's default)."
    )
    enhance: bool | None = Field(default=None, description="Tool-specific enhancement (None: the operator's default).")
    polish: bool | None = Field(default=None, description="Rewrite the text around the final images (None: default).")


class ScaledState(State):
    candidates: int | None = None
    select: str | None = None
    enhance: bool | None = None
    polish: bool | None = None


def candidate_count(state: ScaledState, cfg: Config) -> int:
    if state.candidates is not None and state.candidates > cfg.max_candidates:
        raise InputError(f"candidates {state.candidates} is over this server's limit of {cfg.max_candidates}")
    return state.candidates if state.candidates is not None else cfg.candidates


class _ScaledNodes:
    def __init__(self, nodes: _Nodes, scorers: Mapping[str, DraftScorer]):
        self.nodes = nodes
        self.scorers = dict(scorers)

    async def candidates(self, state: ScaledState, runtime: Runtime[Any]) -> dict[str, Any]:
        cfg = self.nodes._config(runtime)
        emit = get_stream_writer()
        k = candidate_count(state, cfg)
        self._selector(state, cfg)  # an unusable selector fails now, before any sampling
        repair_rounds(state, cfg)
        sampling = _sampling(state, cfg)
        refs, messages, tools = await self.nodes.chat(state, cfg)
        policy: Policy = await self.nodes.policy_for(cfg)
        emit({"event": "candidates", "status": "sampling", "k": k})
        started = time.time()
        try:
            turn = policy_turn(generate_n(policy, messages, sampling, k), "candidates")
            outputs = await asyncio.wait_for(turn, timeout=cfg.policy_timeout_s)
        except TimeoutError as exc:
            raise PolicyError(f"the policy gave no {k} drafts within {cfg.policy_timeout_s:g} s") from exc
        except Exception as exc:
            raise PolicyError(f"the policy failed: {type(exc).__name__}: {exc}") from exc
        drafts = []
        for output in outputs:
            output = output.model_copy(update={"sampling": {**dataclasses.asdict(sampling), "n": k}})
            found = validate(output.text, tools, len(refs))
            drafts.append(Candidate(output=output, validation=found, rules_score=rules_score(found, state.image_num)))
        emit({"event": "candidates", "status": "validated", "k": k, "passed": sum(d.validation.passed for d in drafts)})
        return {
            "drafts": drafts,
            "timings": {"candidates_s": time.time() - started},
            # a new run on a thread that held one: nothing of the last run's later stages stays
            "selected": None,
            "enhancements": [],
            "polish_turn": None,
            "overrides": {},
            "enhance_repair": [],
            "enhance_search": False,
        }

    def _selector(self, state: ScaledState, cfg: Config) -> str:
        name = state.select or cfg.select
        if name not in SELECTORS:
            raise InputError(f"unknown selector {name!r}: expected one of {', '.join(SELECTORS)}")
        if name != "rules" and name not in self.scorers:
            raise InputError(
                f"the {name} selector needs a judge, and this graph has none (its app passes scorers to "
                "build_scaled_graph; `llmi run` does with --judge-url)"
            )
        return name

    async def select(self, state: ScaledState, runtime: Runtime[Any]) -> dict[str, Any]:
        cfg = self.nodes._config(runtime)
        name = self._selector(state, cfg)
        drafts = state.drafts
        started = time.time()
        if name == "rules" or len(drafts) == 1:
            scores = [d.rules_score for d in drafts]
        else:
            scores = [float(s) for s in await self.scorers[name].score(state.prompt, [d.output.text for d in drafts])]
            if len(scores) != len(drafts):
                raise PolicyError(f"the {name} selector scored {len(scores)} of {len(drafts)} drafts")
        # the highest score; ties go to the rules score, then to the earliest draft
        best = max(range(len(drafts)), key=lambda i: (scores[i], drafts[i].rules_score, -i))
        scored = [d.model_copy(update={"score": s}) for d, s in zip(drafts, scores, strict=True)]
        get_stream_writer()({"event": "select", "selector": name, "selected": best, "scores": scores})
        return {
            "drafts": scored,
            "selected": best,
            "selector": name,
            "given": drafts[best].output,
            "timings": {"select_s": time.time() - started},
        }

    async def enhance(self, state: ScaledState, runtime: Runtime[Any]) -> dict[str, Any]:
        """Tool-specific enhancement of the chosen draft: diffusion prompts rewritten into detailed ones by the
        policy before generation; code and edit failures sent back once with their reason (the repair loop, for
        those tools only, when the request asked for no repair rounds); searches keep the result the chooser prefers
        among the top ones (the rank order without a chooser)."""
        cfg = self.nodes._config(runtime)
        if not (state.enhance if state.enhance is not None else cfg.enhance) or state.given is None:
            return {}
        emit = get_stream_writer()
        calls = parse_tags(state.given.text, len(state.images)).calls
        toolbox = self.nodes._toolbox(cfg)
        diffusion = [c for c in calls if c.valid and c.source == "diffusion" and toolbox.backend("diffusion")]
        policy: Policy = await self.nodes.policy_for(cfg)
        sampling = _sampling(state, cfg)
        emit({"event": "enhance", "status": "rewriting prompts", "count": len(diffusion)})
        enhancements = await asyncio.gather(*(self._detail(policy, c, sampling, cfg) for c in diffusion))
        update: dict[str, Any] = {
            "enhancements": list(enhancements),
            "overrides": {e.index: {"prompt": e.after} for e in enhancements if e.after},
        }
        update["enhance_repair"] = ["code", "edit"]  # one round for these when the request asked for none
        update["enhance_search"] = self.nodes.chooser is not None  # else search keeps its rank order
        emit({"event": "enhance", "status": "done", "count": len(diffusion)})
        return update

    async def _detail(self, policy: Policy, call: ToolCall, sampling: Any, cfg: Config) -> Enhancement:
        before = str(call.params.get("prompt", ""))
        base = Enhancement(index=call.index, before=before)
        try:
            reply = await self.nodes.sample(
                policy, detail_message(before), sampling, cfg, turn="enhance", llmi_index=call.index
            )
        except PolicyError as exc:
            return base.model_copy(update={"error": str(exc)})
        after = reply.text.strip().removeprefix("Prompt:").strip()
        if not after or "<imgen" in after.lower() or len(after) > 2000:
            reason = "the rewrite was empty, held a tag, or ran over 2000 characters: the prompt is kept"
            return base.model_copy(update={"reply": reply, "error": reason})
        return base.model_copy(update={"reply": reply, "after": after})

    async def polish(self, state: ScaledState, runtime: Runtime[Any]) -> dict[str, Any]:
        """The policy rewrites the text around the final figures; the rewrite is used only if it keeps every figure
        marker in its place and writes no tag. Figures (images and failures) are never touched."""
        cfg = self.nodes._config(runtime)
        if not (state.polish if state.polish is not None else cfg.polish):
            return {}
        emit = get_stream_writer()
        emit({"event": "polish", "status": "rewriting"})
        figures = [item for item in state.document if isinstance(item, Figure)]
        lines = []
        for item in state.document:
            if isinstance(item, Figure):
                what = "shows" if item.status == "ok" else "FAILED"
                lines.append(f"\n{FIGURE_MARK.format(index=item.index)}\n({what}: {item.description or 'a figure'})\n")
            else:
                lines.append(item.text)
        policy: Policy = await self.nodes.policy_for(cfg)
        try:
            reply = await self.nodes.sample(
                policy, polish_messages(state.prompt, "".join(lines)), _sampling(state, cfg), cfg, turn="polish"
            )
        except PolicyError as exc:
            return {"polish_turn": Polish(applied=False, error=str(exc))}
        document, error = _polished(reply.text, figures, original="".join(lines))
        emit({"event": "polish", "status": "applied" if document else "kept the original", "error": error})
        if document is None:
            return {"polish_turn": Polish(applied=False, reply=reply, error=error)}
        return {"document": document, "polish_turn": Polish(applied=True, reply=reply)}


_MARK_RE = re.compile(r"\[\[FIGURE (\d+)\]\]")
_WHAT_RE = re.compile(r"^\s*\((?:shows|FAILED): .*\)\s*$", re.MULTILINE)
_WORD_RE = re.compile(r"[a-z0-9]+")
_ECHO_WORDS = 5  # a run of this many words of the editor's instructions in the rewrite is an echo, not a rewrite


def _ngrams(text: str, n: int = _ECHO_WORDS) -> list[tuple[str, ...]]:
    words = _WORD_RE.findall(text.lower())
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


# The instructions of the polish turn without the request and the document: what a small policy tends to copy back
_INSTRUCTIONS = frozenset(_ngrams(" \n".join(str(m["content"]) for m in polish_messages("\n", "\n"))))


def _echo(text: str, original: str) -> str | None:
    """The first run of the instructions' words that the rewrite repeats and the document did not have, if any."""
    had = set(_ngrams(original))
    return next((" ".join(g) for g in _ngrams(text) if g in _INSTRUCTIONS and g not in had), None)


def _polished(
    text: str, figures: list[Figure], original: str = ""
) -> tuple[list[TextSegment | Figure] | None, str | None]:
    """The polished document (the rewrite's text between the original figures), or None and why it is unusable:
    a tag written, a figure moved, dropped or repeated, or the editor's instructions copied into the text."""
    if "<imgen" in text.lower():
        return None, "the rewrite wrote an image tag"
    if (echo := _echo(text, original)) is not None:
        return None, f"the rewrite repeats the editor's instructions ({echo!r}...)"
    marks = [int(m.group(1)) for m in _MARK_RE.finditer(text)]
    if marks != [f.index for f in figures]:
        return None, f"the rewrite has figures {marks} where the document has {[f.index for f in figures]}"
    pieces = _MARK_RE.split(text)[::2]  # the text around the marks (split also returns the captured numbers)
    document: list[TextSegment | Figure] = []
    for k, piece in enumerate(pieces):
        cleaned = _WHAT_RE.sub("", piece).strip("\n")
        if cleaned.strip():
            document.append(TextSegment(text=("\n" if k else "") + cleaned + ("\n" if k < len(figures) else "")))
        if k < len(figures):
            document.append(figures[k])
    return document, None


def build_scaled_graph(
    policy: Policy | None = None,
    toolbox: Toolbox | None = None,
    *,
    config: Config | None = None,
    scorers: Mapping[str, DraftScorer] | None = None,
    chooser: ImageChooser | None = None,
    checkpointer: Any = None,
) -> CompiledStateGraph:
    """The scaled graph: candidates -> select -> enhance -> create (the llmi graph as a subgraph) -> polish. `scorers`
    maps selector names (`judge`, `relative`) to scorers; `rules` needs none. The input is a `ScaledRequest`, the
    output an `Output` with its scaling fields filled (`drafts`, `selected`, `selector`, `enhancements`,
    `polish_turn`); operator settings as in `build_graph`."""
    cfg = config or Config()
    unknown = set(scorers or {}) - set(SELECTORS[1:])
    if unknown:
        raise ValueError(f"unknown selector(s) {sorted(unknown)}: scorers are for {', '.join(SELECTORS[1:])}")
    nodes = _ScaledNodes(_Nodes(policy, toolbox, cfg, chooser), scorers or {})
    creator = build_graph(policy, toolbox, config=cfg, subgraph=True, chooser=chooser)
    builder = StateGraph(ScaledState, input_schema=ScaledRequest, output_schema=Output)
    builder.add_node("candidates", nodes.candidates)
    builder.add_node("select", nodes.select)
    builder.add_node("enhance", nodes.enhance)
    builder.add_node("create", creator)
    builder.add_node("polish", nodes.polish)
    builder.add_edge(START, "candidates")
    builder.add_edge("candidates", "select")
    builder.add_edge("select", "enhance")
    builder.add_edge("enhance", "create")
    builder.add_edge("create", "polish")
    builder.add_edge("polish", END)
    return builder.compile(checkpointer=with_state_types(checkpointer), name="llmi-scaled")


def scaling_on(cfg: Config) -> bool:
    """Whether the operator's settings ask for any test-time scaling stage (candidates, enhance, polish)."""
    return cfg.candidates > 1 or cfg.enhance or cfg.polish


def graph_for(
    cfg: Config,
    policy: Policy | None = None,
    toolbox: Toolbox | None = None,
    *,
    checkpointer: Any = None,
    scorers: Mapping[str, DraftScorer] | None = None,
    chooser: ImageChooser | None = None,
) -> CompiledStateGraph:
    """The graph a batch or a run should use: the scaled graph when `scaling_on(cfg)` or a judge selector is set,
    else the llmi graph (`repair_rounds` works in both)."""
    if scaling_on(cfg) or cfg.select != "rules":
        return build_scaled_graph(
            policy, toolbox, config=cfg, scorers=scorers, chooser=chooser, checkpointer=checkpointer
        )
    return build_graph(policy, toolbox, config=cfg, checkpointer=checkpointer)


scaled_graph = build_scaled_graph(config=Config())
"""The scaled graph `langgraph.json` exports (rules selection; operator settings from the environment)."""

__all__ = [
    "SELECTORS",
    "Candidate",
    "DraftScorer",
    "Enhancement",
    "Polish",
    "ScaledRequest",
    "ScaledState",
    "build_scaled_graph",
    "graph_for",
    "scaled_graph",
    "scaling_on",
]
