"""Running server processes: start in their own process group, wait for health, stop cleanly.

Also the one binding rule every server here follows: listening beyond loopback needs a token (or an explicit
`--insecure`), since anyone who can reach the port could otherwise use the server.
"""

from __future__ import annotations

import ipaddress
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
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def is_loopback(host: str) -> bool:
    """Whether a server bound to `host` is reachable from this machine only (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a hostname, or "" (every interface)


def refuse_open_binding(host: str, *, has_token: bool, insecure: bool, set_token: str) -> None:
    """Raise `ValueError` if a server would listen beyond loopback with no token, unless `insecure` says so.

    `set_token` tells the operator how to give the server a token, e.g. "set LLMI_IMAGE_SERVER_TOKEN".
    """
    if is_loopback(host) or has_token or insecure:
        return
    raise ValueError(
        f"binding {host or 'every interface'} without a token exposes the server to the network: "
        f"{set_token} or pass --insecure"
    )


def connect_host(host: str) -> str:
    """The address a client on this machine uses to reach a server bound to `host` (URL form)."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


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
