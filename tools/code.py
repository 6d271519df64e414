"""The code tool: run model-written plotting code in an isolated child process and return the figure.

Isolation is bubblewrap (`bwrap`): no network, an empty environment, a read-only view of only the system and
Python files the code needs, a new PID namespace, and (as root) a uid of the run's own. Everything the code writes
lands in one size-limited tmpfs inside the sandbox, never on the host. The parent opens every file the run uses
and hands it in as a descriptor (the code in; stdout, stderr, the result and the figure out), and reads back only
through its own descriptors, with size caps: never by a path the code could swap for a symlink.

Limits: where a cgroup can be made (v2 with memory and pids delegated, or the v1 memory and pids hierarchies), a
run's processes share one, with a memory limit (processes and files together) and a task limit; elsewhere the
process limit shrinks so that address space x processes stays within the total. Per-process rlimits (CPU time,
address space, file size, open files, processes) apply always; `prlimit` sets them in the exec chain, so nothing
runs between fork and exec in this (threaded) process. A wall timeout kills the whole process group. Where bwrap
cannot run, the tool refuses unless the user opts in to running code with limits only (`allow_unsandboxed=True`,
env `LLMI_ALLOW_UNSANDBOXED_CODE=1`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import fcntl
import functools
import hashlib
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tools.base import ToolError, ToolOutput

log = logging.getLogger(__name__)

RUNNER = Path(__file__).with_name("_code_runner.py")
PREAMBLE = "import numpy as np, pandas as pd, matplotlib.pyplot as plt, seaborn as sns"
"""What model code can rely on (documented in the system prompt)."""

_MB = 1024 * 1024
_LOG_TAIL = 4000
_RESULT_MAX = 1_000_000
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_ROOT = os.getuid() == 0
# As root there is no user namespace: the runner drops to a uid of the run's own, whom RLIMIT_NPROC binds (root it
# does not) and who shares that count with no other run or user.
_UNSHARE = (
    ("--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--die-with-parent", "--clearenv")
    if _ROOT
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
# As root bwrap would leave the runner every capability until it drops them; it needs only these to drop.
_ROOT_CAPS = ("--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID") if _ROOT else ()
_RUN_UIDS = (2_000_000_000, 3_000_000_000)
_HOME = "/tmp"
"""The run's working directory and only writable place inside the sandbox: a tmpfs of `disk_mb`."""
_LAUNCHER_TASKS = 2
"""bwrap's own processes, in the run's cgroup beside the code's."""
_ENTER_CGROUPS = 'while [ "$1" != -- ]; do echo $$ > "$1/cgroup.procs" || exit 125; shift; done; shift; exec "$@"'
# As root, in a mount namespace of the run's own (gone with its last process): a tmpfs with a size and a file count
# (bwrap's own --tmpfs takes no file count, and a 1 MB tmpfs holds millions of empty files).
_MOUNT_HOME = '"$1" -t tmpfs -o "$2" llmi-sandbox "$3" && shift 3 && exec "$@"'
_NO_BWRAP = (
    "bubblewrap (bwrap 0.5 or later) is not available, so model-written code cannot be isolated: install it "
    "(apt-get install bubblewrap; `make run` does this as root), or set LLMI_ALLOW_UNSANDBOXED_CODE=1 "
    "to run code with resource limits only (unsafe: it can read your files)"
)
_NO_PRLIMIT = "prlimit is not installed, so model-written code cannot be limited: install util-linux"


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits for one run of model code."""

    timeout_s: float = 30.0  # wall clock; CPU time is capped at the next whole second
    memory_mb: int = 2048  # address space of each process
    total_memory_mb: int | None = None  # all its processes together (None: memory_mb); its files come on top
    disk_mb: int = 64  # everything it writes: its directory (and /tmp) is one tmpfs of this size
    files: int = 10_000  # files and directories in it (as root; otherwise only the cgroup's memory bounds them)
    file_mb: int = 32  # each file it writes, its output and its figure included
    processes: int = 64  # processes and threads at once
    open_files: int = 256  # per process

    @property
    def total_mb(self) -> int:
        """Memory for all the run's processes together."""
        return self.total_memory_mb or self.memory_mb


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
        if await asyncio.to_thread(shutil.which, "prlimit") is None:
            raise ToolError(_NO_PRLIMIT, backend=self.name)
        if not isolated:
            log.warning("RUNNING MODEL-WRITTEN CODE WITHOUT ISOLATION (bubblewrap unavailable; opted in)")
        await asyncio.to_thread(self._ensure_font_cache)
        run = await asyncio.to_thread(self._prepare, code, isolated)
        try:
            start = time.perf_counter()
            returncode, timed_out = await self._execute(run)
            elapsed = time.perf_counter() - start
            return await asyncio.to_thread(self._collect, run, code, returncode, timed_out, elapsed)
        finally:
            await asyncio.to_thread(run.close)

    # --- running -------------------------------------------------------------------------------------

    def _prepare(self, code: str, isolated: bool) -> _Run:
        """Open the run's descriptors, make its cgroup, and build its command (nothing runs yet)."""
        limits = self.limits
        run = _Run(isolated=isolated)
        try:
            for name in ("code", "stdout", "stderr", "result", "figure"):
                run.fds[name] = os.memfd_create(f"llmi-{name}", os.MFD_CLOEXEC)
            _write_all(run.fds["code"], code.encode("utf-8"))
            run.cgroup = _RunCgroup.create((limits.total_mb + limits.disk_mb) * _MB, limits.processes + _LAUNCHER_TASKS)
            # Without a cgroup, fewer processes keep address space x processes within the total.
            processes = (
                limits.processes if run.cgroup else max(1, min(limits.processes, limits.total_mb // limits.memory_mb))
            )
            # RLIMIT_NPROC counts every process of an ordinary user, so allow for those.
            nproc = processes if _ROOT else processes + _user_tasks()
            fds = [str(run.fds[name]) for name in ("code", "result", "figure")]
            if isolated:
                # As root the tmpfs is ours (it can cap files); its mount point stays empty on this side.
                run.workdir = tempfile.mkdtemp(prefix="llmi-code-") if _ROOT else None
                env = self._environment(_HOME, "/mplcache", run_uid=_run_uid() if _ROOT else None)
                inner = self._bwrap(self._runner(fds), env, home=run.workdir)
                if run.workdir is not None:
                    inner = [*self._private_tmpfs(run.workdir), *inner]
            else:
                run.workdir = run.cwd = tempfile.mkdtemp(prefix="llmi-code-")
                run.env = self._environment(run.workdir, str(self.cache_dir), run_uid=None)
                inner = [self.python, "-I", str(RUNNER), *fds]
            enter = run.cgroup.enter_command() if run.cgroup else []
            run.argv = [*enter, *_rlimits(limits, nproc), *inner]
        except BaseException:
            run.close()
            raise
        return run

    def _environment(self, home: str, mpl_cache: str, run_uid: int | None) -> dict[str, str]:
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": home,
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "PYTHONIOENCODING": "utf-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONNOUSERSITE": "1",
            "MPLCONFIGDIR": f"{home}/.mplconfig",
            "LLMI_MPL_CACHE": mpl_cache,
            "MPLBACKEND": "Agg",
            "OPENBLAS_NUM_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        }
        if run_uid is not None:
            env["LLMI_SANDBOX_UID"] = str(run_uid)
        return env

    def _runner(self, args: Sequence[str]) -> list[str]:
        """The runner's command line inside the sandbox."""
        return [self.python, "-I", "/llmi/runner.py", *args]

    def _private_tmpfs(self, mount_point: str) -> list[str]:
        """A prefix that mounts the run's tmpfs on `mount_point` in a mount namespace only the run sees."""
        limits = self.limits
        options = f"size={limits.disk_mb * _MB},nr_inodes={limits.files},mode=1777,nosuid,nodev"
        unshare = [shutil.which("unshare") or "unshare", "--mount", "--propagation", "private", "--"]
        return [*unshare, "/bin/sh", "-c", _MOUNT_HOME, "sh", shutil.which("mount") or "mount", options, mount_point]

    def _bwrap(
        self, argv: list[str], env: Mapping[str, str], *, home: str | None = None, refresh_cache: bool = False
    ) -> list[str]:
        """`argv` under bubblewrap, its /tmp the tmpfs at `home` or a new one of `disk_mb`; the font cache is
        writable only for the trusted run that builds it."""
        cmd = [
            shutil.which("bwrap") or "bwrap",
            *_UNSHARE,
            *_ROOT_CAPS,
            "--unshare-cgroup-try",
            "--new-session",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
        ]
        if home is None:
            cmd += ["--perms", "1777", "--size", str(self.limits.disk_mb * _MB), "--tmpfs", _HOME]
        else:
            cmd += ["--bind", home, _HOME]
        cmd += _system_binds()
        made: set[str] = {"/", "/usr", "/tmp", "/proc", "/dev"}
        for path in _python_roots(self.python):
            cmd += _bind(path, path, made)
        cmd += _bind(str(RUNNER), "/llmi/runner.py", made)
        cmd += ["--bind" if refresh_cache else "--ro-bind", str(self.cache_dir), "/mplcache", "--chdir", _HOME]
        for key, value in env.items():
            cmd += ["--setenv", key, value]
        return cmd + argv

    async def _execute(self, run: _Run) -> tuple[int | None, bool]:
        proc = await asyncio.create_subprocess_exec(
            *run.argv,
            stdin=subprocess.DEVNULL,
            stdout=run.fds["stdout"],
            stderr=run.fds["stderr"],
            env=run.env,
            cwd=run.cwd,
            start_new_session=True,
            pass_fds=(run.fds["code"], run.fds["result"], run.fds["figure"]),
        )
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
                if self.isolated:
                    inside = self._environment(_HOME, "/mplcache", run_uid=None)
                    cmd, env = self._bwrap(self._runner(["--refresh-font-cache"]), inside, refresh_cache=True), {}
                else:
                    env = self._environment(tmp, str(self.cache_dir), run_uid=None)
                    cmd = [self.python, "-I", str(RUNNER), "--refresh-font-cache"]
                subprocess.run(cmd, env=env, cwd=tmp, timeout=300, capture_output=True, check=False)

    # --- reading the outcome --------------------------------------------------------------------------

    def _collect(self, run: _Run, code: str, returncode: int | None, timed_out: bool, elapsed: float) -> ToolOutput:
        out_of_memory = run.stop()
        logs = _tail(run.fds["stdout"], "stdout") + _tail(run.fds["stderr"], "stderr")
        if not run.isolated:
            logs = "WARNING: ran without isolation (bubblewrap unavailable)\n" + logs
        result = _parse_result(_read_capped(run.fds["result"], _RESULT_MAX))
        limits = self.limits
        killed = (returncode is not None and returncode < 0) or (returncode or 0) > 128
        if timed_out:
            raise ToolError(f"code timed out after {limits.timeout_s:g} s and was killed", logs=logs)
        if out_of_memory and (killed or result is None or not result["ok"]):
            reason = f"the code exceeded its {limits.total_mb} MB memory limit (all its processes, plus its files)"
            raise ToolError(reason, logs=logs)
        if killed:
            raise ToolError(_signal_reason(returncode, limits), logs=logs)
        if result is None:
            reason = "the code ended the run before its figure was saved"
            if returncode:
                reason += f" (exit status {returncode})"
            raise ToolError(reason, logs=logs)
        if not result["ok"]:
            error = result["error"]
            if error.startswith("MemoryError"):
                error = f"the code exceeded its {limits.memory_mb} MB memory limit"
            elif f"[Errno {errno.ENOSPC}]" in error:
                error = f"the code filled its disk ({limits.disk_mb} MB, {limits.files} files): {error}"
            raise ToolError(error, logs=logs)
        image = _read_capped(run.fds["figure"], limits.file_mb * _MB)
        if not image or not image.startswith(_PNG_SIGNATURE):
            raise ToolError(
                "the code's figure did not come back as a PNG (the run's output was tampered with)", logs=logs
            )
        return ToolOutput(
            image=image,
            backend=self.name,
            logs=logs,
            provenance={
                "code": code,
                "figure_texts": result["texts"],
                "isolated": run.isolated,
                "limits": "cgroup" if run.cgroup else "rlimits",
                "run_s": round(elapsed, 3),
            },
        )


@dataclass
class _Run:
    """One run: its command, the descriptors the parent reads back through, its cgroup and (unsandboxed) directory."""

    isolated: bool
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    fds: dict[str, int] = field(default_factory=dict)
    cgroup: _RunCgroup | None = None
    workdir: str | None = None  # the tmpfs's mount point, or the code's directory if unsandboxed: never read
    cwd: str | None = None

    def stop(self) -> bool:
        """Kill whatever of the run is left and remove its cgroup; whether its OOM killer struck."""
        if self.cgroup is None:
            return False
        out_of_memory = self.cgroup.oom_killed()
        self.cgroup.remove()
        return out_of_memory

    def close(self) -> None:
        self.stop()
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)  # fd-based: symlinks inside are not followed


class _RunCgroup:
    """One run's cgroup: a memory limit for its processes and files together, and a task limit; removed after."""

    def __init__(self, dirs: list[Path], v2: bool):
        self.dirs, self.v2 = dirs, v2

    @classmethod
    def create(cls, memory_bytes: int, tasks: int, parents: Sequence[Path] | None = None) -> _RunCgroup | None:
        """Make it under `parents` (default: where this process can, see `_cgroup_parents`); None where it cannot."""
        parents = _cgroup_parents() if parents is None else parents
        if not parents:
            return None
        name = f"llmi-sandbox-{os.getpid()}-{secrets.token_hex(4)}"
        cgroup = cls([Path(parent, name) for parent in parents], v2=len(parents) == 1)
        memory = "memory.max" if cgroup.v2 else "memory.limit_in_bytes"
        swap = "memory.swap.max" if cgroup.v2 else "memory.memsw.limit_in_bytes"
        settings = {memory: memory_bytes, swap: 0 if cgroup.v2 else memory_bytes, "pids.max": tasks}
        try:
            written = set()
            for path in cgroup.dirs:
                path.mkdir()
                for setting, value in settings.items():
                    if (path / setting).exists():
                        (path / setting).write_text(str(value))
                        written.add(setting)
            if not {memory, "pids.max"} <= written:
                raise OSError(f"no {memory} or pids.max in {', '.join(map(str, cgroup.dirs))}")
        except OSError as exc:
            log.warning("could not make a cgroup for the code sandbox (%s): holding totals by rlimits only", exc)
            cgroup.remove()
            return None
        return cgroup

    def enter_command(self) -> list[str]:
        """A prefix that moves the command into this cgroup before it execs (no code of ours runs after fork)."""
        return ["/bin/sh", "-c", _ENTER_CGROUPS, "sh", *map(str, self.dirs), "--"]

    def oom_killed(self) -> bool:
        events = "memory.events" if self.v2 else "memory.oom_control"
        for path in self.dirs:
            with contextlib.suppress(OSError, ValueError):
                for line in (path / events).read_text().splitlines():
                    key, _, count = line.partition(" ")
                    if key == "oom_kill" and int(count) > 0:
                        return True
        return False

    def remove(self) -> None:
        """Kill what is left in it and delete it (exiting processes leave it within milliseconds)."""
        deadline = time.monotonic() + 5
        for path in self.dirs:
            while path.exists():
                _kill_cgroup(path)
                try:
                    path.rmdir()
                except OSError as exc:
                    if time.monotonic() > deadline:
                        log.warning("could not remove the code sandbox's cgroup %s: %s", path, exc)
                        break
                    time.sleep(0.01)


def _kill_cgroup(path: Path) -> None:
    with contextlib.suppress(OSError):
        if (path / "cgroup.kill").exists():
            (path / "cgroup.kill").write_text("1")
            return
        for pid in (path / "cgroup.procs").read_text().split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


@functools.cache
def _cgroup_parents() -> tuple[Path, ...] | None:
    """Where this process can make a run's cgroup (checked once by making one): one v2 directory whose children
    get the memory and pids controllers, or this process's own cgroups in the v1 memory and pids hierarchies."""
    try:
        own = _own_cgroups()
    except OSError:
        return None
    candidates: list[tuple[Path, ...]] = []
    if "" in own:
        mount, here = own[""]
        parent = here if here == mount else here.parent
        with contextlib.suppress(OSError):
            if {"memory", "pids"} <= set((parent / "cgroup.subtree_control").read_text().split()):
                candidates.append((parent,))
    if "memory" in own and "pids" in own:
        candidates.append((own["memory"][1], own["pids"][1]))
    for parents in candidates:
        probe = _RunCgroup.create(64 * _MB, 8, parents)
        if probe is not None:
            probe.remove()
            return parents
    log.info("no cgroup can be made for the code sandbox: a run's totals are held by rlimits only")
    return None


def _own_cgroups() -> dict[str, tuple[Path, Path]]:
    """This process's cgroups as (mount point, directory): "" for v2, "memory" and "pids" for v1."""
    mounts: dict[str, tuple[str, str]] = {}
    with open("/proc/self/mountinfo", encoding="utf-8") as fh:
        for line in fh:
            fields, _, fs = line.partition(" - ")
            root, point = fields.split()[3:5]
            fstype, _source, options = fs.split()[:3]
            if fstype == "cgroup2":
                mounts.setdefault("", (root, point))
            elif fstype == "cgroup":
                for name in set(options.split(",")) & {"memory", "pids"}:
                    mounts.setdefault(name, (root, point))
    own: dict[str, tuple[Path, Path]] = {}
    with open("/proc/self/cgroup", encoding="utf-8") as fh:
        for line in fh:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for name in controllers.split(",") if controllers else [""]:
                if name in mounts:
                    root, point = mounts[name]
                    relative = os.path.relpath(path, root)
                    if not relative.startswith(".."):
                        own[name] = (Path(point), Path(point, relative))
    return own


@functools.cache
def _fonts_key() -> str:
    names: list[str] = []
    for root in ("/usr/share/fonts", "/usr/local/share/fonts"):
        for _dirpath, _dirs, files in os.walk(root):
            names += files
    return hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()[:12]


def _rlimits(limits: SandboxLimits, nproc: int) -> list[str]:
    """`prlimit` setting per-process limits for the command it execs (they are inherited by the whole sandbox)."""
    cpu = int(limits.timeout_s) + 1
    return [
        shutil.which("prlimit") or "prlimit",
        f"--cpu={cpu}",
        f"--as={limits.memory_mb * _MB}",
        f"--fsize={limits.file_mb * _MB}",
        f"--nofile={limits.open_files}",
        f"--nproc={nproc}",
        "--core=0",
        "--",
    ]


def _run_uid() -> int:
    """A uid of the run's own: RLIMIT_NPROC then counts only its processes, not other runs' or nobody's."""
    return _RUN_UIDS[0] + secrets.randbelow(_RUN_UIDS[1] - _RUN_UIDS[0])


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


# --- reading back: only through the parent's own descriptors, as untrusted bytes -------------------------


def _write_all(fd: int, data: bytes) -> None:
    view, offset = memoryview(data), 0
    while offset < len(view):
        offset += os.pwrite(fd, view[offset:], offset)


def _read_capped(fd: int, cap: int) -> bytes | None:
    """All of a descriptor's file, or None when it is over `cap` bytes."""
    size = os.fstat(fd).st_size
    if size > cap:
        return None
    chunks, offset = [], 0
    while offset < size:
        chunk = os.pread(fd, size - offset, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _tail(fd: int, label: str) -> str:
    size = os.fstat(fd).st_size
    text = os.pread(fd, _LOG_TAIL, max(0, size - _LOG_TAIL)).decode("utf-8", errors="replace").strip()
    if not text:
        return ""
    cut = "[...]\n" if size > _LOG_TAIL else ""
    return f"--- {label} ---\n{cut}{text}\n"


def _parse_result(raw: bytes | None) -> dict[str, Any] | None:
    """The runner's result, checked field by field: the model's code could have written anything there."""
    if not raw:
        return None
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("ok"), bool):
        return None
    texts = data.get("texts")
    return {
        "ok": data["ok"],
        "error": str(data.get("error") or "the code failed"),
        "texts": [str(text) for text in texts[:50]] if isinstance(texts, list) else [],
    }


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
    """Whether bubblewrap is installed and can build the sandbox as the tool uses it (checked once)."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return False
    probe = [bwrap, *_UNSHARE, *_ROOT_CAPS, *_system_binds(), "--proc", "/proc", "--dev", "/dev"]
    probe += ["--size", str(_MB), "--tmpfs", _HOME, "true"]
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
    The toolbox holds one instance per process; each run works on its own copy (`for_run`), whose sandbox
    starts with the run's first call and is killed when the run ends (`aclose`).
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

    def for_run(self) -> E2BSandbox:
        """A copy for one run: same key and timeouts, its own sandbox."""
        return E2BSandbox(
            self.api_key,
            timeout_s=self.timeout_s,
            request_timeout_s=self.request_timeout_s,
            sandbox_timeout_s=self.sandbox_timeout_s,
            sandbox_factory=self._factory,
        )

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
