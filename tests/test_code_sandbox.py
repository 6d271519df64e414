"""The code tool's sandbox, for real: bubblewrap, resource limits, and hostile code."""

from __future__ import annotations

import asyncio
import io
import json
import os
import secrets
import subprocess
import time

import pytest
from PIL import Image

from tests.conftest import require
from tools.base import ToolError, ToolOutput
from tools.code import LocalSandbox, SandboxLimits

pytestmark = pytest.mark.usefixtures("requires_bwrap")


@pytest.fixture
def sandbox() -> LocalSandbox:
    return LocalSandbox(SandboxLimits(timeout_s=15, memory_mb=1536))


async def test_a_chart_comes_back_as_png(sandbox):
    out = await sandbox.run("x = np.linspace(-3, 3, 50)\nplt.plot(x, x**2)\nplt.title('y = x^2')")
    img = Image.open(io.BytesIO(out.image))
    assert img.format == "PNG" and img.size[0] > 100
    assert out.provenance["figure_texts"] == ["y = x^2"]
    assert out.provenance["isolated"] is True


async def test_pandas_and_seaborn_load_on_first_use():
    sandbox = LocalSandbox(SandboxLimits(timeout_s=30))  # the default 2 GB: seaborn's scipy maps more than 1.5 GB
    out = await sandbox.run(
        "import sys\nplt.plot([1, 2])\nplt.title(str(sorted({'pandas', 'seaborn'} & set(sys.modules))))"
    )
    assert out.provenance["figure_texts"] == ["[]"]  # a chart that uses neither does not pay for importing them
    code = (
        "df = pd.DataFrame({'day': ['Mon', 'Tue'], 'temp': [14, 17]})\n"
        "sns.barplot(data=df, x='day', y='temp')\nplt.title(f'{pd.__name__} {len(df)}')"
    )
    out = await sandbox.run(code)
    assert Image.open(io.BytesIO(out.image)).format == "PNG"
    assert out.provenance["figure_texts"][0] == "pandas 2"


async def test_print_is_harmless_and_kept_in_logs(sandbox):
    out = await sandbox.run("print('hello from model code')\nprint('x' * 100000)\nplt.bar(['a', 'b'], [1, 2])")
    assert Image.open(io.BytesIO(out.image)).format == "PNG"
    assert "stdout" in out.logs and len(out.logs) < 10_000


async def test_chinese_title_reaches_the_chart_intact(sandbox):
    out = await sandbox.run("plt.plot([1, 2, 3], [3, 1, 2])\nplt.title('2023年销售额')\nplt.xlabel('月份')")
    assert out.provenance["figure_texts"] == ["2023年销售额", "月份"]
    assert "missing from font" not in out.logs  # a CJK fallback font is installed and used


async def test_show_savefig_and_close_do_not_lose_the_figure(sandbox):
    out = await sandbox.run("plt.plot([1, 2]); plt.title('kept'); plt.savefig('x.png'); plt.close(); plt.show()")
    assert out.provenance["figure_texts"] == ["kept"]


async def test_last_non_empty_figure_wins(sandbox):
    code = "plt.figure(); plt.plot([1]); plt.title('first')\nplt.figure(); plt.title('second')\nplt.figure()"
    out = await sandbox.run(code)
    assert out.provenance["figure_texts"] == ["first"]


async def test_no_figure_is_a_clear_failure(sandbox):
    with pytest.raises(ToolError, match="drew no figure"):
        await sandbox.run("x = 1")


async def test_exceptions_report_their_type(sandbox):
    with pytest.raises(ToolError, match="ZeroDivisionError") as info:
        await sandbox.run("1 / 0")
    assert "Traceback" in info.value.logs


async def test_infinite_loop_is_killed_at_the_wall_timeout():
    sandbox = LocalSandbox(SandboxLimits(timeout_s=3))
    start = time.perf_counter()
    with pytest.raises(ToolError, match="timed out after 3 s"):
        await sandbox.run("while True:\n    pass")
    assert time.perf_counter() - start < 10


def _processes_running(argv: list[str]) -> list[int]:
    wanted = ("\0".join(argv) + "\0").encode()
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                    if fh.read() == wanted:
                        found.append(int(entry.name))
            except OSError:
                continue
    return found


async def test_children_die_with_the_sandbox():
    sandbox = LocalSandbox(SandboxLimits(timeout_s=2))
    code = "import subprocess, time\nsubprocess.Popen(['sleep', '31.5'])\ntime.sleep(60)"
    with pytest.raises(ToolError, match="timed out"):
        await sandbox.run(code)
    deadline = time.time() + 3
    while _processes_running(["sleep", "31.5"]) and time.time() < deadline:
        time.sleep(0.1)
    assert _processes_running(["sleep", "31.5"]) == []


async def test_memory_bomb_hits_the_memory_limit(sandbox):
    with pytest.raises(ToolError, match="memory limit"):
        await sandbox.run("blocks = []\nwhile True:\n    blocks.append(bytearray(50 * 1024 * 1024))")


async def test_fork_bomb_is_capped_by_the_process_limit():
    sandbox = LocalSandbox(SandboxLimits(timeout_s=15, processes=32))
    code = (
        "import os, time\nn = 0\ntry:\n    while True:\n        if os.fork() == 0:\n"
        "            time.sleep(30)\n            os._exit(0)\n        n += 1\nexcept OSError:\n    pass\n"
        "plt.plot([0, 1], [n, n])\nplt.title(str(n))"
    )
    out = await sandbox.run(code)
    forked = int(out.provenance["figure_texts"][0])
    assert 0 <= forked < 32


async def test_secrets_in_the_parent_environment_are_invisible(sandbox, monkeypatch):
    monkeypatch.setenv("LLMI_TEST_SECRET", "hunter2")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    code = "import os\nplt.plot([1])\nplt.title(repr(sorted(os.environ.items())))"
    out = await sandbox.run(code)
    seen = out.provenance["figure_texts"][0]
    assert "hunter2" not in seen and "sk-secret" not in seen and "OPENAI_API_KEY" not in seen


async def test_writing_outside_its_directory_fails(sandbox, tmp_path):
    target = tmp_path / "pwned"
    for path in (str(target), "/usr/pwned", "/etc/pwned"):
        with pytest.raises(ToolError, match=r"OSError|PermissionError|FileNotFoundError"):
            await sandbox.run(f"open({path!r}, 'w').write('x')")
    assert not target.exists() and not os.path.exists("/usr/pwned")


async def test_our_files_are_not_visible(sandbox):
    here = os.path.abspath(__file__)
    code = f"import os\nplt.plot([1])\nplt.title(str(os.path.exists({here!r})) + str(os.path.exists('/root/.cache')))"
    out = await sandbox.run(code)
    assert out.provenance["figure_texts"] == ["FalseFalse"]


async def test_network_is_unreachable(sandbox):
    code = "import socket\ns = socket.socket()\ns.settimeout(3)\ns.connect(('127.0.0.1', 22))"
    with pytest.raises(ToolError, match=r"OSError|ConnectionRefused|Network is unreachable"):
        await sandbox.run(code)
    code = "import socket\nsocket.getaddrinfo('pypi.org', 443)"
    with pytest.raises(ToolError, match=r"gaierror|OSError"):
        await sandbox.run(code)


async def test_file_size_limit():
    sandbox = LocalSandbox(SandboxLimits(timeout_s=15, file_mb=4))
    with pytest.raises(ToolError, match=r"File too large|file over the 4 MB limit"):
        await sandbox.run("open('big', 'wb').write(b'x' * (16 * 1024 * 1024))")


async def test_refuses_without_isolation_unless_opted_in(monkeypatch):
    monkeypatch.setattr("tools.code.bwrap_works", lambda: False)
    with pytest.raises(ToolError, match=r"bubblewrap .* not available"):
        await LocalSandbox().run("plt.plot([1])")
    out = await LocalSandbox(SandboxLimits(timeout_s=20), allow_unsandboxed=True).run("plt.plot([1]); plt.title('t')")
    assert out.provenance["isolated"] is False and "without isolation" in out.logs


# --- what the code can reach through what llmi reads back ---------------------------------------------


@pytest.fixture
def secrets_outside(tmp_path):
    """A secret the parent can read and the sandbox cannot: in a host file, and in another process's environment."""
    secret = f"canary-{secrets.token_hex(8)}"
    host_file = tmp_path / "host-secret.txt"
    host_file.write_text(f"LLMI_TEST_CANARY_SECRET={secret}\n")
    holder = subprocess.Popen(["sleep", "300"], env={"LLMI_TEST_CANARY_SECRET": secret})
    yield secret, {"host file": str(host_file), "environ": f"/proc/{holder.pid}/environ"}
    holder.kill()
    holder.wait()


def _handed_back(outcome: ToolOutput | ToolError) -> str:
    """Everything a run hands back to llmi (and so to the trajectory)."""
    if isinstance(outcome, ToolError):
        return f"{outcome.reason}\n{outcome.logs}"
    return f"{outcome.logs}\n{json.dumps(outcome.provenance)}\n{outcome.image!r}"


async def _outcome(sandbox: LocalSandbox, code: str) -> ToolOutput | ToolError:
    try:
        return await sandbox.run(code)
    except ToolError as exc:
        return exc


def _own_environment() -> list[str]:
    """This process's environment as /proc/self/environ shows it (what a symlink to it would reveal)."""
    with open("/proc/self/environ", "rb") as fh:
        return [entry.decode(errors="replace") for entry in fh.read().split(b"\0") if len(entry) > 5]


SWAP = """\
import os
name, kind, target = {name!r}, {kind!r}, {target!r}
if os.path.isdir(name) and not os.path.islink(name):
    os.rmdir(name)
elif os.path.lexists(name):
    os.remove(name)
if kind == "symlink":
    os.symlink(target, name)
elif kind == "fifo":
    os.mkfifo(name)
elif kind == "directory":
    os.mkdir(name)
plt.plot([1, 2])
plt.title("drawn")
"""
LEFT_BEHIND = [
    ("stdout.txt", "symlink", "host file"),
    ("stderr.txt", "symlink", "environ"),
    ("stdout.txt", "symlink", "/proc/self/environ"),
    ("figure.png", "symlink", "host file"),
    ("figure.png", "directory", ""),
    ("result.json", "fifo", ""),
    ("result.json", "directory", ""),
]


@pytest.mark.parametrize(("name", "kind", "target"), LEFT_BEHIND)
async def test_nothing_the_code_leaves_in_its_directory_is_read_back(sandbox, secrets_outside, name, kind, target):
    secret, targets = secrets_outside
    code = SWAP.format(name=name, kind=kind, target=targets.get(target, target))
    start = time.perf_counter()
    outcome = await _outcome(sandbox, code)
    handed_back = _handed_back(outcome)
    assert secret not in handed_back
    assert not [entry for entry in _own_environment() if entry in handed_back]
    assert isinstance(outcome, ToolOutput), outcome
    assert outcome.provenance["figure_texts"] == ["drawn"]
    assert time.perf_counter() - start < 10


async def test_unsandboxed_runs_read_nothing_back_by_path_either(monkeypatch, secrets_outside):
    monkeypatch.setattr("tools.code.bwrap_works", lambda: False)
    secret, targets = secrets_outside
    sandbox = LocalSandbox(SandboxLimits(timeout_s=20), allow_unsandboxed=True)
    for name in ("stdout.txt", "stderr.txt"):
        outcome = await _outcome(sandbox, SWAP.format(name=name, kind="symlink", target=targets["host file"]))
        assert isinstance(outcome, ToolOutput) and secret not in _handed_back(outcome)


async def test_a_forged_result_with_a_non_png_figure_is_refused(sandbox):
    code = (
        'import os\nforged = b\'{"ok": true, "texts": ["forged"]}\'\n'
        "for fd in range(3, 64):\n    try:\n        os.write(fd, forged)\n    except OSError:\n        pass\n"
        "open('result.json', 'wb').write(forged)\nopen('figure.png', 'wb').write(forged)\nos._exit(0)"
    )
    with pytest.raises(ToolError, match="figure did not come back as a PNG"):
        await sandbox.run(code)


async def test_the_run_cannot_break_its_channel_back(sandbox):
    with pytest.raises(ToolError, match="before its figure was saved"):
        await sandbox.run("import os\nplt.plot([1])\nos.closerange(3, 1024)")


# --- totals for the whole run, not only per file and per process ----------------------------------------

MB = 1024 * 1024


async def test_disk_is_capped_for_the_whole_run():
    sandbox = LocalSandbox(SandboxLimits(timeout_s=30))
    code = "for i in range(64):\n    open(f'part{i}', 'wb').write(b'x' * (4 * 1024 * 1024))\nplt.plot([1])"
    with pytest.raises(ToolError, match=r"filled its disk \(64 MB"):
        await sandbox.run(code)


async def test_files_are_capped_for_the_whole_run():
    require(os.getuid() == 0, "the file count is held by a tmpfs of the run's own, which needs root")
    sandbox = LocalSandbox(SandboxLimits(timeout_s=30, files=1000))
    with pytest.raises(ToolError, match=r"filled its disk \(64 MB, 1000 files\)"):
        await sandbox.run("for i in range(5000):\n    open(f'f{i}', 'w').close()\nplt.plot([1])")


HOLD_IN_CHILDREN = """\
import os, time
alive = []
for _ in range(8):
    r, w = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        block = b"x" * ({block_mb} * 1024 * 1024)
        os.write(w, b"1")
        time.sleep(60)
        os._exit(0)
    os.close(w)
    os.read(r, 1)  # returns once the child holds its block, or died trying
    alive.append(pid)
held = sum(os.waitpid(pid, os.WNOHANG) == (0, 0) for pid in alive)
plt.plot([0, 1])
plt.title(str(held))
"""


async def _memory_held_in_children(sandbox: LocalSandbox, block_mb: int) -> int:
    """How many MB the run's children held at once (0 when the run was killed for its memory)."""
    outcome = await _outcome(sandbox, HOLD_IN_CHILDREN.format(block_mb=block_mb))
    if isinstance(outcome, ToolError):
        assert "memory limit" in outcome.reason, outcome.reason
        return 0
    return int(outcome.provenance["figure_texts"][0]) * block_mb


async def test_memory_is_capped_across_all_processes():
    limits = SandboxLimits(timeout_s=30, memory_mb=2048, total_memory_mb=1024)
    held = await _memory_held_in_children(LocalSandbox(limits), block_mb=300)
    assert held <= limits.total_mb + limits.disk_mb  # 8 x 300 MB without a total


async def test_without_a_cgroup_the_limits_multiply_out_to_the_total(monkeypatch):
    monkeypatch.setattr("tools.code._RunCgroup.create", lambda *args: None)
    limits = SandboxLimits(timeout_s=30, memory_mb=1024, total_memory_mb=2048)
    held = await _memory_held_in_children(LocalSandbox(limits), block_mb=300)
    assert held <= 2048


async def test_a_run_gets_its_own_cgroup_and_leaves_none_behind(sandbox):
    from tools.code import _cgroup_parents

    parents = _cgroup_parents()
    require(parents is not None, "no cgroup can be made here (neither v2 with memory+pids nor v1 hierarchies)")
    out = await sandbox.run("plt.plot([1])")
    assert out.provenance["limits"] == "cgroup"
    ours = f"llmi-sandbox-{os.getpid()}-"  # other processes may be running sandboxes beside this one
    assert not [path for parent in parents for path in parent.iterdir() if path.name.startswith(ours)]


async def test_concurrent_runs_have_separate_process_budgets():
    limits = SandboxLimits(timeout_s=30, processes=8, memory_mb=1024, total_memory_mb=8192)
    hog = (
        "import os, time\nfor _ in range(8):\n    try:\n        if os.fork() == 0:\n"
        "            time.sleep(10)\n            os._exit(0)\n    except OSError:\n        break\n"
        "time.sleep(8)\nplt.plot([1])"
    )
    other = "import subprocess, time\ntime.sleep(4)\nsubprocess.run(['true'], check=True)\nplt.plot([1])"
    _, ran = await asyncio.gather(LocalSandbox(limits).run(hog), _outcome(LocalSandbox(limits), other))
    assert isinstance(ran, ToolOutput), ran
