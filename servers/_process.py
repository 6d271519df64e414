"""Running server processes: start in their own process group, wait for health, stop cleanly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import httpx


class ServerStartError(RuntimeError):
    """A server process exited or never became healthy; the message holds the end of its log."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on `host`."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, chars: int = 3000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-chars:]


class ManagedProcess:
    """One server process: its own session (so the whole group can be stopped), output to a log file."""

    def __init__(self, argv: Sequence[str], *, env: dict[str, str], log_path: Path, cwd: str | None = None):
        self.argv = list(argv)
        self.env = env
        self.log_path = log_path
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_healthy(self, url: str, timeout_s: float, headers: dict[str, str] | None = None) -> None:
        """Poll `url` until it answers 200; raise `ServerStartError` if the process dies or time runs out."""
        deadline = time.monotonic() + timeout_s
        while True:
            if not self.running():
                code = self.proc.returncode if self.proc else None
                raise ServerStartError(
                    f"{self.argv[0]} exited with status {code} before it was healthy; log {self.log_path}:\n"
                    + log_tail(self.log_path)
                )
            try:
                if httpx.get(url, timeout=2.0, headers=headers).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise ServerStartError(
                    f"no healthy answer from {url} within {timeout_s:g} s; log {self.log_path}:\n"
                    + log_tail(self.log_path)
                )
            time.sleep(0.5)

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM the process group, then SIGKILL what is left after `grace_s`."""
        if self.proc is None or self.proc.poll() is not None:
            return
        _signal_group(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            _signal_group(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        # Children that outlived their parent in the same group go too.
        _signal_group(self.proc.pid, signal.SIGKILL)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def raise_on_sigterm() -> None:
    """Route SIGTERM to the same path as Ctrl-C (KeyboardInterrupt), so launchers stop their children."""

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
