"""The code tool: run model-written plotting code in an isolated child process and return the figure.

Isolation is bubblewrap (`bwrap`): no network, an empty environment, a read-only view of only the
system and Python files the code needs, one private writable directory, a new PID namespace, and
resource limits (CPU time, address space, file size, process count) plus a wall timeout that kills
the whole process group. Where bwrap cannot run, the tool refuses unless the user opts in to running
code with resource limits only (`allow_unsandboxed=True`, env `LLMI_ALLOW_UNSANDBOXED_CODE=1`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tools.base import ToolError, ToolOutput

log = logging.getLogger(__name__)

RUNNER = Path(__file__).with_name("_code_runner.py")
PREAMBLE = "import numpy as np, pandas as pd, matplotlib.pyplot as plt, seaborn as sns"
"""What model code can rely on (documented in the system prompt)."""

_LOG_TAIL = 4000
# As root, no user namespace: the runner then drops to nobody, whom RLIMIT_NPROC binds (root it does not).
_UNSHARE = (
    ("--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--die-with-parent", "--clearenv")
    if os.getuid() == 0
    else (
        "--unshare-user",
        "--unshare-ipc",
        "--unshare-pid",
        "--unshare-net",
        "--unshare-uts",
        "--die-with-parent",
        "--clearenv",
    )
)
_SANDBOX_DIR = "/sandbox"
_NO_BWRAP = (
    "bubblewrap (bwrap) is not available, so model-written code cannot be isolated: install it "
    "(apt-get install bubblewrap; `make run` does this as root), or set LLMI_ALLOW_UNSANDBOXED_CODE=1 "
    "to run code with resource limits only (unsafe: it can read your files)"
)


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits for one run of model code."""

    timeout_s: float = 30.0
    memory_mb: int = 2048
    file_mb: int = 32
    processes: int = 64
    open_files: int = 256


class LocalSandbox:
    """Runs plotting code under bubblewrap with resource limits; returns the last non-empty figure as PNG."""

    name = "local-sandbox"

    def __init__(
        self,
        limits: SandboxLimits | None = None,
        *,
        allow_unsandboxed: bool = False,
        cache_dir: str | os.PathLike[str] | None = None,
        python: str | None = None,
    ):
        self.limits = limits or SandboxLimits()
        self.allow_unsandboxed = allow_unsandboxed
        self.python = python or sys.executable
        self.cache_root = Path(cache_dir or "~/.cache/llmi").expanduser()

    @property
    def cache_dir(self) -> Path:
        """matplotlib's font list, keyed by the installed fonts so a font installed later gets in (does IO)."""
        return self.cache_root / "sandbox" / f"mpl-{_fonts_key()}"

    @property
    def isolated(self) -> bool:
        return bwrap_works()

    async def __call__(self, params: Mapping[str, Any], inputs: Sequence[bytes] = ()) -> ToolOutput:
        return await self.run(str(params["code"]))

    async def run(self, code: str) -> ToolOutput:
        """Run `code`; return its figure, or raise `ToolError` with the reason."""
        # Files and probes are blocking work: keep them off the event loop (graph servers check this).
        isolated = await asyncio.to_thread(bwrap_works)
        if not isolated and not self.allow_unsandboxed:
            raise ToolError(_NO_BWRAP, backend=self.name)
        if not isolated:
            log.warning("RUNNING MODEL-WRITTEN CODE WITHOUT ISOLATION (bubblewrap unavailable; opted in)")
        await asyncio.to_thread(self._ensure_font_cache)
        tmp = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="llmi-code-"))
        try:
            workdir = await asyncio.to_thread(self._prepare, tmp, code)
            start = time.perf_counter()
            returncode, timed_out = await self._execute(workdir)
            elapsed = time.perf_counter() - start
            return await asyncio.to_thread(self._collect, workdir, code, returncode, timed_out, elapsed)
        finally:
            await asyncio.to_thread(shutil.rmtree, tmp, True)

    @staticmethod
    def _prepare(tmp: Path, code: str) -> Path:
        workdir = tmp / "work"
        workdir.mkdir()
        workdir.chmod(0o777)  # the code runs as nobody; the 0700 parent keeps others out
        (workdir / "code.py").write_text(code, encoding="utf-8")
        return workdir

    # --- running -------------------------------------------------------------------------------------

    def _command(self, workdir: Path, refresh_cache: bool = False) -> tuple[list[str], dict[str, str]]:
        inner = _SANDBOX_DIR if self.isolated else str(workdir)
        mpl = "/tmp/mplconfig" if self.isolated else str(workdir / ".mplconfig")
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": inner,
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "PYTHONIOENCODING": "utf-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONNOUSERSITE": "1",
            "MPLCONFIGDIR": mpl,
            "LLMI_MPL_CACHE": "/mplcache" if self.isolated else str(self.cache_dir),
            "MPLBACKEND": "Agg",
            "OPENBLAS_NUM_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            # Only inside bwrap: outside it, nobody could not read a Python installed under /root.
            "LLMI_DROP_PRIVILEGES": "1" if self.isolated else "0",
        }
        runner = "/llmi/runner.py" if self.isolated else str(RUNNER)
        argv = [self.python, "-I", runner, inner]
        if refresh_cache:
            argv.append("--refresh-font-cache")
        if not self.isolated:
            return argv, env
        cmd = [
            shutil.which("bwrap") or "bwrap",
            *_UNSHARE,
            "--unshare-cgroup-try",
            "--new-session",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--perms",
            "1777",
            "--size",
            str(64 * 1024 * 1024),
            "--tmpfs",
            "/tmp",
        ]
        cmd += _system_binds()
        made: set[str] = {"/", "/usr", "/tmp", "/proc", "/dev"}
        for path in _python_roots(self.python):
            cmd += _bind(path, path, made)
        cmd += _bind(str(RUNNER), "/llmi/runner.py", made)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        cmd += ["--bind" if refresh_cache else "--ro-bind", str(self.cache_dir), "/mplcache"]
        cmd += ["--bind", str(workdir), _SANDBOX_DIR, "--chdir", _SANDBOX_DIR]
        for key, value in env.items():
            cmd += ["--setenv", key, value]
        return cmd + argv, {}

    async def _execute(self, workdir: Path) -> tuple[int | None, bool]:
        cmd, env = await asyncio.to_thread(self._command, workdir)
        out, err = await asyncio.to_thread(
            lambda: (open(workdir / "stdout.txt", "wb"), open(workdir / "stderr.txt", "wb"))
        )
        try:
            proc = await asyncio.create_subprocess_exec(
                *cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env,
                cwd=str(workdir),
                start_new_session=True,
                preexec_fn=functools.partial(_apply_limits, self.limits),
            )
        finally:
            out.close()
            err.close()
        try:
            await asyncio.wait_for(proc.wait(), timeout=self.limits.timeout_s)
            return proc.returncode, False
        except TimeoutError:
            _kill_group(proc.pid)
            await proc.wait()
            return proc.returncode, True
        except BaseException:
            _kill_group(proc.pid)
            raise

    def _ensure_font_cache(self) -> None:
        """Build matplotlib's font list once, outside any model code, so runs don't rebuild it."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        if list(self.cache_dir.glob("fontlist-*.json")):
            return
        with open(self.cache_dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if list(self.cache_dir.glob("fontlist-*.json")):
                return
            with tempfile.TemporaryDirectory(prefix="llmi-fonts-") as tmp:
                workdir = Path(tmp)
                workdir.chmod(0o777)
                cmd, env = self._command(workdir, refresh_cache=True)
                subprocess.run(cmd, env=env, cwd=tmp, timeout=300, capture_output=True, check=False)

    # --- reading the outcome --------------------------------------------------------------------------

    def _collect(self, workdir: Path, code: str, returncode: int | None, timed_out: bool, elapsed: float) -> ToolOutput:
        logs = _tail(workdir / "stdout.txt", "stdout") + _tail(workdir / "stderr.txt", "stderr")
        if not self.isolated:
            logs = "WARNING: ran without isolation (bubblewrap unavailable)\n" + logs
        result = _read_result(workdir / "result.json")
        if timed_out:
            raise ToolError(f"code timed out after {self.limits.timeout_s:g} s and was killed", logs=logs)
        if (returncode is not None and returncode < 0) or (returncode or 0) > 128:
            raise ToolError(_signal_reason(returncode, self.limits), logs=logs)
        if result is None:
            reason = "the code ended the run before its figure was saved"
            if returncode:
                reason += f" (exit status {returncode})"
            raise ToolError(reason, logs=logs)
        if not result.get("ok"):
            error = str(result.get("error") or "the code failed")
            if error.startswith("MemoryError"):
                error = f"the code exceeded its {self.limits.memory_mb} MB memory limit"
            raise ToolError(error, logs=logs)
        figure = workdir / "figure.png"
        if not figure.is_file() or figure.is_symlink():
            raise ToolError("the code's figure was not written", logs=logs)
        return ToolOutput(
            image=figure.read_bytes(),
            backend=self.name,
            logs=logs,
            provenance={
                "code": code,
                "figure_texts": [str(t) for t in result.get("texts", [])][:50],
                "isolated": self.isolated,
                "run_s": round(elapsed, 3),
            },
        )


@functools.cache
def _fonts_key() -> str:
    names: list[str] = []
    for root in ("/usr/share/fonts", "/usr/local/share/fonts"):
        for _dirpath, _dirs, files in os.walk(root):
            names += files
    return hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()[:12]


def _apply_limits(limits: SandboxLimits) -> None:
    """Runs in the child before exec: resource limits that the whole sandbox inherits."""
    cpu = int(limits.timeout_s) + 1
    memory = limits.memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_mb * 1024 * 1024,) * 2)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files,) * 2)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # Root is exempt from RLIMIT_NPROC, so the runner drops to nobody; an ordinary user's count
    # includes their other processes, so allow for those.
    nproc = limits.processes if os.getuid() == 0 else _user_tasks() + limits.processes
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))


def _user_tasks() -> int:
    uid, count = os.getuid(), 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    count += len(os.listdir(f"/proc/{entry.name}/task"))
            except OSError:
                continue
    return count


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _signal_reason(returncode: int | None, limits: SandboxLimits) -> str:
    sig = -returncode if returncode is not None and returncode < 0 else (returncode or 0) - 128
    reasons = {
        signal.SIGXCPU: f"the code used up its CPU time limit ({int(limits.timeout_s) + 1} s)",
        signal.SIGXFSZ: f"the code wrote a file over the {limits.file_mb} MB limit",
        signal.SIGKILL: f"the code was killed (memory limit {limits.memory_mb} MB, or a limit was hit)",
        signal.SIGSEGV: "the code crashed (segmentation fault)",
    }
    try:
        name = signal.Signals(sig).name
    except ValueError:
        name = str(sig)
    return reasons.get(sig, f"the code was stopped by signal {name}")


def _tail(path: Path, label: str) -> str:
    if not path.is_file():
        return ""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        fh.seek(max(0, size - _LOG_TAIL))
        text = fh.read().decode("utf-8", errors="replace").strip()
    if not text:
        return ""
    cut = "[...]\n" if size > _LOG_TAIL else ""
    return f"--- {label} ---\n{cut}{text}\n"


def _read_result(path: Path) -> dict[str, Any] | None:
    if not path.is_file() or path.is_symlink() or path.stat().st_size > 1_000_000:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


# --- bubblewrap -------------------------------------------------------------------------------------


def _bind(src: str, dest: str, made: set[str]) -> list[str]:
    """A read-only bind of `src` at `dest`, creating missing parents world-traversable (0755)."""
    args: list[str] = []
    parts = Path(dest).parent.parts
    for i in range(2, len(parts) + 1):
        parent = str(Path(*parts[:i]))
        if parent not in made and not any(parent.startswith(m + "/") for m in ("/usr", "/proc", "/dev")):
            args += ["--perms", "0755", "--dir", parent]
            made.add(parent)
    made.add(dest)
    return [*args, "--ro-bind", src, dest]


def _system_binds() -> list[str]:
    """/usr read-only, the merged-/usr symlinks, and the few /etc files that loaders and fonts read."""
    args = ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    for path in (
        "/etc/ld.so.cache",
        "/etc/ld.so.conf",
        "/etc/ld.so.conf.d",
        "/etc/fonts",
        "/etc/alternatives",
    ):
        args += ["--ro-bind-try", path, path]
    return args


@functools.cache
def _python_roots(python: str) -> list[str]:
    """The directories the interpreter needs: its installation and the virtualenv (if any)."""
    out = subprocess.run(
        [python, "-I", "-c", "import sys, json; print(json.dumps([sys.base_prefix, sys.prefix]))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    roots = []
    for path in json.loads(out.stdout):
        real = os.path.realpath(path)
        if not real.startswith("/usr/") and real != "/usr" and real not in roots:
            roots.append(real)
    return roots


@functools.cache
def bwrap_works() -> bool:
    """Whether bubblewrap is installed and can create the namespaces the sandbox uses (checked once)."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return False
    probe = [bwrap, *_UNSHARE, *_system_binds(), "--proc", "/proc", "--dev", "/dev", "true"]
    try:
        return subprocess.run(probe, capture_output=True, timeout=30, check=False).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


# --- E2B --------------------------------------------------------------------------------------------

E2B_PREAMBLE = """\
import matplotlib
matplotlib.use("Agg")
import numpy as np, pandas as pd, matplotlib.pyplot as plt, seaborn as sns
plt.close("all")
_llmi_show, _llmi_savefig, _llmi_close = plt.show, plt.savefig, plt.close
plt.show = lambda *a, **k: None
plt.savefig = lambda *a, **k: None
plt.close = lambda *a, **k: None
"""
E2B_TRAILER = """
def _llmi_has_content(fig):
    for ax in fig.axes:
        if ax.lines or ax.collections or ax.patches or ax.images or ax.texts or ax.tables or ax.artists:
            return True
    return bool(fig.texts or fig.images)
_llmi_figs = [plt.figure(n) for n in plt.get_fignums()]
_llmi_chosen = next((f for f in reversed(_llmi_figs) if _llmi_has_content(f)), None)
plt.show, plt.savefig, plt.close = _llmi_show, _llmi_savefig, _llmi_close
if _llmi_chosen is None:
    raise RuntimeError("the code drew no figure (use matplotlib: plt.plot, plt.bar, sns.lineplot, ...)")
from IPython.display import display as _llmi_display
_llmi_display(_llmi_chosen)
plt.close("all")
"""


class E2BSandbox:
    """Runs plotting code in an E2B cloud sandbox (no internet inside); one sandbox per run, killed at its end.

    The same preamble and rules as the local sandbox; the PNG comes from the execution's results. `timeout_s`
    bounds each execution, `request_timeout_s` each request to E2B, `sandbox_timeout_s` the sandbox's life.
    """

    name = "e2b"
    cache_id = "e2b:1"

    def __init__(
        self,
        api_key: str,
        *,
        timeout_s: float = 30.0,
        request_timeout_s: float = 30.0,
        sandbox_timeout_s: int = 600,
        sandbox_factory: Any = None,
    ):
        self.api_key = api_key
        self.timeout_s, self.request_timeout_s, self.sandbox_timeout_s = timeout_s, request_timeout_s, sandbox_timeout_s
        self._factory = sandbox_factory
        self._sandbox: Any = None
        self._lock = asyncio.Lock()

    async def _get(self) -> Any:
        async with self._lock:
            if self._sandbox is None:
                from e2b import SandboxException

                factory = self._factory
                if factory is None:
                    from e2b_code_interpreter import AsyncSandbox

                    factory = AsyncSandbox.create
                try:
                    self._sandbox = await factory(
                        api_key=self.api_key, timeout=self.sandbox_timeout_s, allow_internet_access=False,
                        request_timeout=self.request_timeout_s,
                    )  # fmt: skip
                except SandboxException as exc:
                    raise ToolError(f"could not start an E2B sandbox: {exc}", transient=True) from None
            return self._sandbox

    async def __call__(self, params: Mapping[str, Any], inputs: Sequence[bytes] = ()) -> ToolOutput:
        return await self.run(str(params["code"]))

    async def run(self, code: str) -> ToolOutput:
        from e2b import SandboxException, TimeoutException

        sandbox = await self._get()
        started = time.perf_counter()
        try:
            execution = await sandbox.run_code(
                E2B_PREAMBLE + code + "\n" + E2B_TRAILER, timeout=self.timeout_s, request_timeout=self.request_timeout_s
            )
        except TimeoutException as exc:
            raise ToolError(f"code timed out on E2B ({exc})") from None
        except SandboxException as exc:
            raise ToolError(f"E2B failed: {exc}", transient=True) from None
        return e2b_output(execution, code, time.perf_counter() - started)

    async def aclose(self) -> None:
        """Kill the run's sandbox (a later call starts a new one)."""
        async with self._lock:
            sandbox, self._sandbox = self._sandbox, None
        if sandbox is not None:
            with contextlib.suppress(Exception):
                await sandbox.kill()


def e2b_output(execution: Any, code: str, elapsed: float) -> ToolOutput:
    """Turn an e2b_code_interpreter `Execution` into a ToolOutput (the last PNG result), or raise ToolError."""
    stdout = "".join(execution.logs.stdout)[-_LOG_TAIL:]
    stderr = "".join(execution.logs.stderr)[-_LOG_TAIL:]
    logs = (f"--- stdout ---\n{stdout}\n" if stdout else "") + (f"--- stderr ---\n{stderr}\n" if stderr else "")
    if execution.error is not None:
        err = execution.error
        raise ToolError(f"{err.name}: {err.value}", logs=logs + (err.traceback or "")[-_LOG_TAIL:])
    pngs = [r.png for r in execution.results if getattr(r, "png", None)]
    if not pngs:
        raise ToolError("the code drew no figure (no PNG in the E2B results)", logs=logs)
    return ToolOutput(
        image=base64.b64decode(pngs[-1]),
        backend="e2b",
        logs=logs,
        provenance={"code": code, "isolated": True, "run_s": round(elapsed, 3)},
    )
