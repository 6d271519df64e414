"""Writing a report never deletes or replaces what llmi did not write, and a failure leaves the folder as it was."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmi_graph import report
from llmi_graph.cli import _prepare_out, app
from llmi_graph.report import write_report
from llmi_graph.state import Figure, ImageResult, State
from llmi_graph.store import ImageStore, InvalidImageError
from llmi_graph.tags import ImageSlot, TextSegment, ToolCall
from tests.fakes import FakeOpenAIServer, png

REPORT = ["images", "report.html", "report.md", "trajectory.json"]


def state_of(*items: TextSegment | Figure, prompt: str = "p") -> State:
    """A finished state holding this document (calls and results made to match)."""
    figures = [item for item in items if isinstance(item, Figure)]
    return State(
        prompt=prompt,
        draft="".join(item.text if isinstance(item, TextSegment) else "<imgen>...</imgen>" for item in items),
        calls=[ToolCall(index=f.index, source=f.source, description=f.description) for f in figures],
        results=[
            ImageResult(index=f.index, source=f.source, status=f.status, image=f.image, error=f.error) for f in figures
        ],
        segments=[item if isinstance(item, TextSegment) else ImageSlot(index=item.index) for item in items],
        document=list(items),
    )


def made_state(store: ImageStore, text: str = "Intro.") -> State:
    figure = Figure(index=0, source="code", description="a chart", status="ok", image=store.put(png()))
    return state_of(TextSegment(text=text), figure, TextSegment(text="End."))


def snapshot(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def no_staging(*folders: Path) -> bool:
    return not [p for folder in folders for p in folder.rglob(".llmi-staging-*")]


@pytest.fixture
def store(tmp_path) -> ImageStore:
    return ImageStore(tmp_path / "store")


def test_a_folder_with_files_llmi_did_not_write_is_refused_and_left_alone(tmp_path, store):
    out = tmp_path / "mine"
    (out / "images").mkdir(parents=True)
    (out / "images" / "holiday.png").write_bytes(png((1, 2, 3)))
    (out / "report.html").write_text("my own report")
    (out / "notes.txt").write_text("notes")
    before = snapshot(out)
    with pytest.raises(FileExistsError, match="mine is not empty: pick a new folder"):
        write_report(made_state(store), out, store)
    assert snapshot(out) == before and no_staging(tmp_path)


def test_a_new_folder_appears_whole_or_not_at_all(tmp_path, store):
    state = made_state(store)
    out = tmp_path / "a" / "report"
    paths = write_report(state, out, store)
    assert sorted(p.name for p in out.iterdir()) == REPORT and paths.out_dir == out.resolve()
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # an ordinary folder, not a private temp folder
    for image in store.root.rglob("*.png"):
        image.unlink()  # the store lost the image: writing fails while staging
    failed = tmp_path / "failed"
    with pytest.raises((OSError, InvalidImageError)):
        write_report(state, failed, store)
    assert not failed.exists() and no_staging(tmp_path)


def test_an_empty_folder_is_filled_in_place_or_left_empty(tmp_path, store, monkeypatch):
    out = tmp_path / "given"
    out.mkdir(mode=0o750)
    inode = out.stat().st_ino
    replace = os.replace

    def failing_last_move(source, target):
        if Path(target).name == "report.html":
            raise OSError(errno.EIO, "disk trouble")
        return replace(source, target)

    monkeypatch.setattr(os, "replace", failing_last_move)
    with pytest.raises(OSError, match="disk trouble"):
        write_report(made_state(store), out, store)
    assert list(out.iterdir()) == []  # the entries already moved in were taken back out
    monkeypatch.setattr(os, "replace", replace)
    write_report(made_state(store), out, store)
    assert sorted(p.name for p in out.iterdir()) == REPORT
    assert out.stat().st_ino == inode and out.stat().st_mode & 0o777 == 0o750  # the user's own folder, kept


def test_a_file_that_appears_while_writing_is_never_replaced(tmp_path, store, monkeypatch):
    out = tmp_path / "given"
    out.mkdir()
    render = report.render_markdown

    def someone_writes_too(state):
        (out / "report.md").write_text("theirs")
        return render(state)

    monkeypatch.setattr(report, "render_markdown", someone_writes_too)
    with pytest.raises(FileExistsError, match="is not empty"):
        write_report(made_state(store), out, store)
    assert snapshot(out) == {"report.md": b"theirs"}

    new = tmp_path / "new"

    def someone_makes_the_folder(state):
        new.mkdir(exist_ok=True)
        (new / "theirs.txt").write_text("theirs")
        return render(state)

    monkeypatch.setattr(report, "render_markdown", someone_makes_the_folder)
    with pytest.raises(FileExistsError, match="is not empty"):
        write_report(made_state(store), new, store)
    assert snapshot(new) == {"theirs.txt": b"theirs"} and no_staging(tmp_path)


# --- llmi run --out ------------------------------------------------------------------------------------


def llmi(args: list[str], env: dict[str, str]):
    return CliRunner().invoke(app, args, env=env)


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    return {"LLMI_IMAGE_DIR": str(tmp_path / "store"), "LLMI_TOOL_ATTEMPTS": "1"}


def test_run_refuses_a_non_empty_out_before_any_work(tmp_path, env):
    out = tmp_path / "work"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    with FakeOpenAIServer(["A draft."]) as server:
        result = llmi(["run", "p", "--policy-url", server.url, "--out", str(out)], env)
        assert server.requests == []
    assert result.exit_code == 2
    assert f"--out {out} is not empty: pick a new folder (llmi never overwrites files it did not" in result.output
    assert snapshot(out) == {"thesis.tex": b"years of work"}

    empty = tmp_path / "empty"
    empty.mkdir()
    with FakeOpenAIServer(["A draft."]) as server:
        result = llmi(["run", "p", "--policy-url", server.url, "--out", str(empty)], env)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in empty.iterdir()) == REPORT


def test_a_failed_run_leaves_no_trace(tmp_path, env):
    empty = tmp_path / "empty"
    empty.mkdir()
    for out in (empty, tmp_path / "new" / "deeper" / "report"):
        result = llmi(["run", "p", "--policy-url", "http://127.0.0.1:9/v1", "--out", str(out)], env)
        assert result.exit_code == 1, result.output
    assert list(empty.iterdir()) == [] and not (tmp_path / "new").exists()


def test_the_default_out_is_always_a_new_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(time, "strftime", lambda fmt: "20250101-120000")
    taken = tmp_path / "llmi-out" / "20250101-120000"
    taken.mkdir(parents=True)
    (taken / "report.html").write_text("an earlier run")
    out = _prepare_out(None)
    assert out == Path("llmi-out") / "20250101-120000-2" and not out.exists()
