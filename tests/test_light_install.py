"""The light install (`pip install llmi`, no extras) and the root command that puts the packages together.

The slow test builds the wheel, installs it without extras into a fresh venv, and runs the graph there with a fake
OpenAI-compatible policy and the local code sandbox. The fast ones check the extras helper, that the extras named
in pyproject.toml are the ones the code knows, and that `llmi --help` imports none of the verbs it lists.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from llmi.cli import VERBS, load
from llmi_graph._extras import EXTRAS, MissingExtra, require
from tests.fakes import FakeOpenAIServer

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("llmi", "llmi_graph", "tools", "servers", "judges", "rl", "evals")
# What the extras bring: none of it may be imported by the light paths.
HEAVY = (
    "torch", "transformers", "gguf", "peft", "sentence_transformers", "diffusers", "fastapi", "uvicorn", "trl",
    "datasets", "accelerate", "ray", "psycopg",
)  # fmt: skip
CHART_DRAFT = (
    "# The parabola\nThe curve y = x^2 is symmetric about the y-axis.\n"
    "<imgen>{'source': 'code', 'description': 'y = x^2 from -3 to 3', 'params': {'code': "
    "\"x = np.linspace(-3, 3, 61)\\nplt.plot(x, x**2)\\nplt.title('y = x^2')\"}}</imgen>\n"
    "That is all."
)


def _modules_after(code: str) -> set[str]:
    """The top-level modules a fresh interpreter holds after running `code`."""
    script = f"import sys\n{code}\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=True)
    return set(out.stdout.split())


def test_a_missing_extra_is_an_error_that_names_it():
    with pytest.raises(MissingExtra) as raised:
        require("embedded", "torch", "no_such_module_llmi")
    assert str(raised.value) == (
        "the embedded policy needs `pip install llmi[embedded]` (missing: no_such_module_llmi)"
    )
    with pytest.raises(MissingExtra, match=r"^`llmi batch` needs `pip install llmi\[batch\]` \(missing: a\.b, c\)$"):
        require("batch", "a.b", "c", what="`llmi batch`")
    for extra in EXTRAS:  # the development install (make setup) has them all
        require(extra)


def test_the_extras_in_pyproject_are_the_ones_the_code_knows():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert set(extras) - {"all", "dev"} == set(EXTRAS)
    assert extras["all"] == [f"llmi[{','.join(EXTRAS)}]"]
    heavy = {"torch", "transformers", "gguf", "peft", "sentence-transformers", "diffusers", "fastapi", "uvicorn",
             "trl", "datasets", "accelerate", "ray", "langgraph-checkpoint-postgres", "psycopg"}  # fmt: skip

    def names(requirements: list[str]) -> set[str]:
        return {r.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0].strip() for r in requirements}

    assert not names(project["dependencies"]) & heavy
    assert not names(extras["dev"]) & heavy


def test_root_help_lists_every_verb_and_imports_none_of_them():
    script = "from llmi.cli import app\ntry:\n    app(['--help'])\nexcept SystemExit:\n    pass"
    loaded = _modules_after(script)
    assert not loaded & {*HEAVY, *PACKAGES[1:]}, sorted(loaded & {*HEAVY, *PACKAGES[1:]})
    out = subprocess.run([sys.executable, "-m", "llmi", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and all(verb in out.stdout for verb in VERBS)


def test_each_verb_help_line_is_the_commands_own():
    for name, verb in VERBS.items():
        own = " ".join((load(name).help or "").split("\n\n")[0].split())
        assert own == verb.help, name


def test_each_verb_names_itself_in_usage_and_refuses_unknown_options_with_exit_2():
    for name in ("run", "batch", "eval", "train"):
        out = subprocess.run(
            [sys.executable, "-m", "llmi", name, "--no-such-option"], capture_output=True, text=True, cwd=ROOT
        )
        said = out.stdout + out.stderr
        assert out.returncode == 2 and "Traceback" not in said, (name, said[-1500:])
        assert f"llmi {name}" in said and "no-such-option" in said, (name, said[-1500:])


def test_the_graph_does_not_import_the_packages_above_it():
    loaded = _modules_after("import llmi_graph, llmi_graph.cli")
    assert not loaded & {"llmi", "servers", "judges", "evals", "rl", *HEAVY}


def _imports(package: str) -> dict[str, set[str]]:
    """Per module file of `package`: the top-level packages its import statements name, lazy ones included."""
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


def test_no_import_anywhere_in_the_graph_or_the_tools_reaches_the_packages_above_them():
    # Not only at import time: a lazy import inside a verb is a dependency too. The app that composes them (`llmi`)
    # passes the judges in; the image servers' client lives with the tools that use it.
    above = {"llmi", "servers", "judges", "evals", "rl"}
    for package in ("llmi_graph", "tools"):
        imports = _imports(package)
        assert len(imports) > 5, f"found no modules of {package}"
        for module, names in imports.items():
            assert not names & above, (module, sorted(names & above))


def _run(argv: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False, **kwargs)


@pytest.mark.slow
def test_light_install_runs_the_graph_with_a_policy_server_and_the_local_sandbox(tmp_path, requires_bwrap):
    # The wheel, built from a copy so the checkout gets no build/ or egg-info of this test's.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    built = _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(src),
                  "-w", str(tmp_path / "wheels")])  # fmt: skip
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "wheels").glob("llmi-*.whl")

    venv = tmp_path / "venv"
    python, llmi = venv / "bin" / "python", venv / "bin" / "llmi"
    assert _run([sys.executable, "-m", "venv", "--without-pip", str(venv)]).returncode == 0
    started = time.perf_counter()
    installed = _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-compile",
                      str(wheel)])  # fmt: skip
    assert installed.returncode == 0, installed.stderr[-4000:]
    size_mb = sum(f.stat().st_size for f in venv.rglob("*") if f.is_file()) / 2**20
    print(f"light install: {time.perf_counter() - started:.0f} s, venv {size_mb:.0f} MB")

    torch = _run([str(python), "-c", "import torch"])
    assert torch.returncode != 0 and "No module named 'torch'" in torch.stderr
    imported = _run([str(python), "-c", "import llmi_graph, llmi_graph.cli, tools.code, tools.edit, tools.search"])
    assert imported.returncode == 0, imported.stderr
    helped = _run([str(llmi), "--help"])
    assert helped.returncode == 0 and all(verb in helped.stdout for verb in VERBS), helped.stderr

    env = {**os.environ, "LLMI_CACHE_DIR": str(tmp_path / "cache"), "LLMI_TOOL_ATTEMPTS": "1"}
    out = tmp_path / "report"
    with FakeOpenAIServer([CHART_DRAFT]) as server:
        ran = _run([str(llmi), "run", "Explain the parabola", "--policy-url", server.url, "--model", "fake-policy",
                    "--out", str(out)], env=env)  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    html = (out / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == 1
    calls = json.loads((out / "trajectory.json").read_text())["calls"]
    assert [(c["source"], c["status"], c["backend"]) for c in calls] == [("code", "ok", "local-sandbox")]

    # What the light install lacks is an error that names the extra, with nothing written.
    embedded = _run([str(llmi), "run", "Explain the parabola", "--out", str(tmp_path / "none")], env=env)
    assert embedded.returncode == 2 and "the embedded policy needs `pip install llmi[embedded]`" in embedded.stderr
    assert not (tmp_path / "none").exists()
    served = _run([str(llmi), "serve-image", "--help"], env=env)
    assert served.returncode == 1 and "`llmi serve-image` needs `pip install llmi[servers]`" in served.stderr
    (tmp_path / "rows.jsonl").write_text('{"prompt": "p"}\n')
    batched = _run([str(llmi), "batch", str(tmp_path / "rows.jsonl"), "--out", str(tmp_path / "b"), "--policy-url",
                    "http://127.0.0.1:9/v1", "--model", "m"], env=env)  # fmt: skip
    assert batched.returncode == 2 and "`llmi batch` needs `pip install llmi[batch]`" in batched.stderr
