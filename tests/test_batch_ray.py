"""`llmi batch --ray-address`: the same output contract from Ray workers, errors that cross back as themselves,
images that land in the driver's store, and resumes. Ray runs as a local instance on loopback (2 CPUs)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from llmi_graph._ray import GraphWorker, adopt, connect, ray_executor
from llmi_graph.batch import BatchError, BatchItem, BatchSample, BatchSettings, run_batch
from llmi_graph.graph import InputError, PolicyError
from llmi_graph.store import ImageStore
from tests.fakes import FakeOpenAIServer, LoopbackApp, free_port, png
from tests.test_batch import LLMI, ROOT, image_server, items, lines, tag

DRAFT = f"Text. {tag('diffusion', prompt='a lighthouse')} More."


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray instance for this module's tests (2 CPUs, no dashboard), shut down at the end."""
    import ray

    assert connect("local", num_cpus=2), "Ray was already connected in the test process"
    yield
    ray.shutdown()


@pytest.fixture
def servers():
    """A fake policy answering DRAFT, and a fake Qwen-Image server (prompts it drew, counted)."""
    seen: Counter = Counter()
    with FakeOpenAIServer([DRAFT] * 200) as policy, LoopbackApp(image_server(0.1, seen)) as images:
        yield policy, images, seen


def served(cfg, policy, images):
    return cfg.replace(
        policy_url=policy.url, policy_model="fake", image_server_urls=images.url, diffusion_backend="server",
        search_backend="none", edit_backend="none", code_backend="local",
    )  # fmt: skip


def contract(out: Path) -> dict[str, tuple]:
    """What a batch folder holds per sample: its line's fields, status, image counts, report files, images' bytes."""
    found = {}
    for r in lines(out):
        folder = out / "samples" / r["sample_id"]
        images = sorted((folder / "images").iterdir())
        found[r["sample_id"]] = (
            sorted(r),
            r["status"],
            r["images_ok"],
            r["images_failed"],
            sorted(p.name for p in folder.iterdir()),
            [p.read_bytes() for p in images],
        )
    return found


@pytest.mark.slow
async def test_a_ray_batch_writes_what_a_local_batch_writes_and_a_rerun_does_nothing(cfg, tmp_path, ray_local, servers):
    policy, images, seen = servers
    cfg = served(cfg, policy, images)
    local = await run_batch(items(3), BatchSettings(out=tmp_path / "local", samples=2), cfg)
    settings = BatchSettings(out=tmp_path / "ray", samples=2, concurrency=4, ray_address="local", ray_workers=2)
    outcome = await run_batch(items(3), settings, cfg)
    assert (outcome.finished, outcome.ok) == (local.finished, local.ok) == (6, 6)
    assert contract(tmp_path / "ray") == contract(tmp_path / "local")
    summary = json.loads((tmp_path / "ray" / "summary.json").read_text())
    assert summary["finished"] == 6 and summary["images_ok"] == 6 and summary["settings"]["ray_address"] == "local"
    assert (tmp_path / "ray" / "index.html").read_text().count('href="samples/') == 6
    asked = len(policy.requests)
    again = await run_batch(items(3), settings, cfg)
    assert (again.done_before, again.finished) == (6, 0) and len(lines(tmp_path / "ray")) == 6
    assert len(policy.requests) == asked and sum(seen.values()) == 12  # nothing ran again


@pytest.mark.slow
async def test_policy_and_input_errors_cross_back_from_ray_workers_as_themselves(cfg, tmp_path, ray_local, servers):
    policy, images, _ = servers
    bad = BatchItem(row_id="bad", request={"prompt": "x", "images": [base64.b64encode(b"not an image").decode()]})
    settings = BatchSettings(out=tmp_path / "b", ray_address="local", ray_workers=1)
    down = served(cfg, policy, images).replace(policy_url="http://127.0.0.1:9/v1", policy_timeout_s=5)
    async with ray_executor(settings, tmp_path / "b", down) as executor:
        with pytest.raises(InputError, match="input image 0 is unusable"):
            await executor.run(BatchSample(bad, 0, "t:bad"))
        with pytest.raises(PolicyError, match=r"^the policy"):
            await executor.run(BatchSample(items(1)[0], 0, "t:r0"))

    rows = [bad, BatchItem(row_id="skip", request={"prompt": "y"}, skip="no input images here"), *items(1)]
    outcome = await run_batch(rows, BatchSettings(out=tmp_path / "c", ray_address="local"), served(cfg, policy, images))
    by_id = {r["row_id"]: r for r in lines(tmp_path / "c")}
    assert (outcome.ok, outcome.failed, outcome.skipped) == (1, 1, 1)
    assert by_id["bad"]["reason"].startswith("unusable request: input image 0 is unusable")


@pytest.mark.slow
async def test_a_ray_batch_checkpoints_in_postgres_and_deletes_what_finished(
    cfg, tmp_path, ray_local, servers, postgres_url
):
    import psycopg

    policy, images, _ = servers
    settings = BatchSettings(
        out=tmp_path / "b", samples=2, ray_address="local", ray_workers=2, checkpoint_url=postgres_url
    )
    outcome = await run_batch(items(2), settings, served(cfg, policy, images))
    assert outcome.ok == 4 and not (tmp_path / "b" / "checkpoints.sqlite").exists()
    batch_id = json.loads((tmp_path / "b" / "batch.json").read_text())["batch_id"]
    with psycopg.connect(postgres_url) as conn:
        left = conn.execute("SELECT count(*) FROM checkpoints WHERE thread_id LIKE %s", (f"{batch_id}:%",)).fetchone()
    assert left == (0,)


async def test_a_workers_images_land_in_the_drivers_store(cfg, tmp_path, servers):
    """In process (no Ray): what a worker sends back is stored by the driver and the state points there."""
    policy, images, _ = servers
    worker_cfg = served(cfg, policy, images).replace(image_dir=str(tmp_path / "worker-images"))
    worker = GraphWorker(worker_cfg, None, str(tmp_path / "checkpoints.sqlite"))
    photo = base64.b64encode(png((1, 2, 3))).decode()
    sample = BatchSample(BatchItem(row_id="r", request={"prompt": "p", "images": [photo]}), 0, "t:r")
    try:
        reply = await worker.run(sample)
    finally:
        await worker.close()
    driver = ImageStore(tmp_path / "driver-images")
    state = adopt(reply["state"], reply["images"], driver)
    refs = [
        *state.input_images,
        *(r.image for r in state.results),
        *(f.image for f in state.document if f.kind == "figure"),
    ]
    assert len(refs) == 3 and len(reply["images"]) == 2  # the input, the drawn figure (in results and document)
    for ref in refs:
        assert Path(ref.path).is_relative_to(tmp_path / "driver-images") and driver.get(ref)
    with pytest.raises(RuntimeError, match="did not send it"):
        adopt(reply["state"], {}, ImageStore(tmp_path / "elsewhere"))


@pytest.mark.slow
async def test_a_cluster_of_several_machines_needs_postgres_checkpoints(cfg, tmp_path, ray_local, monkeypatch):
    import ray

    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True}, {"Alive": True}])
    with pytest.raises(BatchError, match="--checkpoint-url postgresql://"):
        async with ray_executor(BatchSettings(out=tmp_path, ray_address="local"), tmp_path, cfg):
            pass


async def test_an_address_where_no_ray_head_answers_is_refused_at_once(cfg, tmp_path):
    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(BatchError, match=f"cannot connect to Ray at '{address}': nothing answers"):
        async with ray_executor(BatchSettings(out=tmp_path, ray_address=address), tmp_path, cfg):
            pass


@pytest.mark.slow
def test_llmi_batch_with_a_local_ray_instance_completes_and_resumes(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"Topic {i}", "image_num": 1}) + "\n" for i in range(3)))
    out = tmp_path / "out"
    seen: Counter = Counter()
    with FakeOpenAIServer([DRAFT] * 50) as policy, LoopbackApp(image_server(0.1, seen)) as images:
        command = [
            LLMI, "batch", str(rows), "--out", str(out), "--samples", "2", "--ray-address", "local",
            "--ray-workers", "2", "--policy-url", policy.url, "--model", "fake", "--image-server", images.url,
            "--search-backend", "none", "--edit-backend", "none",
        ]  # fmt: skip
        env = {**os.environ, "LLMI_CACHE_DIR": str(tmp_path / "cache")}
        first = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    records = lines(out)
    assert Counter(r["sample_id"] for r in records) == {f"row-{i:05d}--s{k}": 1 for i in range(3) for k in range(2)}
    assert all(r["status"] == "ok" and r["images_ok"] == 1 for r in records)
    assert "6 already finished" in second.stdout + second.stderr and sum(seen.values()) == 6


@pytest.mark.slow
async def test_ray_workers_select_with_the_judge_the_driver_passed_in(cfg, tmp_path, ray_local):
    """The relative selector is pickled to the workers, which ask the (fake) judge and keep the draft it ranks first."""
    from judges._endpoint import JudgeEndpoint
    from judges.select import selectors_for

    ranking = json.dumps({"answer_1": 1, "answer_2": 8, "explanation": "the second answers"})
    with FakeOpenAIServer(["Short.", "The full answer."] * 4) as policy, FakeOpenAIServer([ranking] * 4) as judge:
        cfg = cfg.replace(policy_url=policy.url, policy_model="fake", candidates=2, select="relative")
        scorers = selectors_for(JudgeEndpoint(base_url=judge.url, model="fake-judge"))
        rows = [BatchItem(row_id=f"r{i}", request={"prompt": f"topic {i}", "image_num": -1}) for i in range(2)]
        settings = BatchSettings(out=tmp_path / "ray", concurrency=2, ray_address="local", ray_workers=1)
        outcome = await run_batch(rows, settings, cfg, scorers=scorers)
        assert (outcome.finished, outcome.ok) == (2, 2) and len(judge.requests) == 2
    for r in lines(tmp_path / "ray"):
        trajectory = json.loads((tmp_path / "ray" / r["report"]).with_name("trajectory.json").read_text())
        assert (trajectory["selector"], trajectory["selected"]) == ("relative", 1)
        assert trajectory["draft"] == "The full answer."
