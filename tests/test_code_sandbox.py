"""The code tool's sandbox, for real: bubblewrap, resource limits, and hostile code."""

from __future__ import annotations

import io
import os
import time

import pytest
from PIL import Image

from tools.base import ToolError
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
