"""The llmi graph as the target of LangSmith's `aevaluate`, scored by llmi's own rule metrics.

Run offline (results stay on this machine; nothing needs a LangSmith account):

    python examples/langsmith_eval.py --limit 2

With a LangSmith account, upload the experiment (the examples become a dataset there):

    LANGSMITH_API_KEY=... python examples/langsmith_eval.py --limit 5 --upload

The target runs the graph on each example's request; the evaluators are llmi's rule metrics for the Rubric
benchmark (tool accuracy, the image-number score, tag validity). Set LLMI_POLICY_URL to use a served policy (the
embedded SmolLM2 otherwise), and add a judge as `llmi eval rubric` does for the rubric score itself.
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from typing import Any

from langsmith import Client, schemas
from langsmith.evaluation import aevaluate

from evals.rubric import RubricBenchmark, tool_accuracy, tools_made
from judges.rule import image_num_score, tag_validity
from llmi_graph import Config, State, build_graph


def examples(limit: int) -> list[schemas.Example]:
    """The first `limit` Rubric items as LangSmith examples: the request in, what scoring needs out."""
    dataset = uuid.uuid4()
    return [
        schemas.Example(
            id=uuid.uuid5(uuid.NAMESPACE_URL, f"llmi-rubric/{item.id}"),
            dataset_id=dataset,
            inputs=item.request,
            outputs={"requirements": item.meta["requirements"], "image_num": item.request["image_num"]},
        )
        for item in RubricBenchmark().load(limit=limit)
    ]


graph = build_graph(config=Config())


async def target(inputs: dict[str, Any]) -> dict[str, Any]:
    """One llmi run: the document as the output LangSmith records."""
    state = State.model_validate(await graph.ainvoke(inputs))
    return {"state": state.model_dump(mode="json"), "draft": state.draft}


def _state(run: Any) -> State:
    return State.model_validate(run.outputs["state"])


def tool_accuracy_evaluator(run: Any, example: Any) -> dict[str, Any]:
    required = [requirement["tool"] for requirement in example.outputs["requirements"]]
    return {"key": "tool_accuracy", "score": tool_accuracy(required, tools_made(_state(run)))}


def image_num_evaluator(run: Any, example: Any) -> dict[str, Any]:
    made = sum(1 for r in _state(run).results if r.status == "ok")
    return {"key": "image_num_score", "score": image_num_score(made, example.outputs["image_num"], split="eval")}


def tag_validity_evaluator(run: Any, example: Any) -> dict[str, Any]:
    state = _state(run)
    return {"key": "tag_validity", "score": tag_validity(state.draft, len(state.input_images))}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=2, help="Rubric items to run.")
    parser.add_argument("--upload", action="store_true", help="Upload the experiment to LangSmith.")
    args = parser.parse_args()
    # Offline: aevaluate still traces the target to get its run, so give it a client that samples every trace
    # out (nothing is sent anywhere).
    client = None if args.upload else Client(api_key="offline", tracing_sampling_rate=0.0, info=schemas.LangSmithInfo())
    results = await aevaluate(
        target,
        data=examples(args.limit),
        evaluators=[tool_accuracy_evaluator, image_num_evaluator, tag_validity_evaluator],
        experiment_prefix="llmi-rubric",
        max_concurrency=2,
        upload_results=args.upload,
        client=client,
    )
    async for row in results:
        scores = {r.key: r.score for r in row["evaluation_results"]["results"]}
        print(row["example"].id, scores)


if __name__ == "__main__":
    asyncio.run(main())
