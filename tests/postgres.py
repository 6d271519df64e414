"""A throwaway PostgreSQL server for tests: Debian's binaries, a cluster in a temp folder, loopback only.

    with PostgresServer() as server:
        server.url  # postgresql://postgres@127.0.0.1:PORT/llmi_test

The cluster trusts loopback connections (any password is accepted, which lets a test put one in the URL),
listens on 127.0.0.1 and a free port with its unix socket in the temp folder, and runs without fsync: the
tests kill the client, never the server. PostgreSQL refuses to run as root, so as root the server runs as the
`postgres` user (made by Debian's package). `make system-deps` installs the package.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.fakes import free_port


class PostgresMissing(RuntimeError):
    """PostgreSQL's server programs (or the user to run them as) are not on this machine."""


def find_bin_dir() -> Path | None:
    """The newest PostgreSQL's bin folder with initdb and pg_ctl (Debian keeps them off PATH), if any."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0
    )
    on_path = shutil.which("initdb")
    if on_path:
        candidates.insert(0, Path(on_path).parent)
    for bin_dir in reversed(candidates):
        if (bin_dir / "initdb").is_file() and (bin_dir / "pg_ctl").is_file():
            return bin_dir
    return None


class PostgresServer:
    """A PostgreSQL server of our own with one database (a context manager; `url` once started)."""

    def __init__(self, database: str = "llmi_test", start_timeout_s: int = 60):
        self.database = database
        self.start_timeout_s = start_timeout_s
        self.port = 0
        self.root: Path | None = None
        self._as_user: list[str] = []
        self._bin: Path | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.database}"

    def _run(self, *args: str | Path, as_owner: bool = True, timeout: float = 120) -> None:
        command = [*(self._as_user if as_owner else []), *map(str, args)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            log = self.root / "server.log" if self.root else None
            tail = log.read_text(errors="replace")[-2000:] if log and log.is_file() else ""
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr[-2000:]}{tail}")

    def start(self) -> PostgresServer:
        """initdb, start on 127.0.0.1 (waiting until it accepts connections), create the database.
        Raises `PostgresMissing` when PostgreSQL is not installed."""
        self._bin = find_bin_dir()
        if self._bin is None:
            raise PostgresMissing(
                "PostgreSQL's server programs (initdb, pg_ctl) are not installed: `make system-deps` "
                "(as root) or `apt-get install postgresql`"
            )
        self.root = Path(tempfile.mkdtemp(prefix="llmi-pg-"))
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresMissing("there is no `postgres` user to run the server as (root cannot)") from None
            shutil.chown(self.root, "postgres", "postgres")
            self._as_user = ["runuser", "-u", "postgres", "--"]
        data = self.root / "data"
        try:
            self._run(
                self._bin / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C",
                "--no-sync", "--no-instructions",
            )  # fmt: skip
            self.port = free_port()
            options = (
                f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.root} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            )
            self._run(
                self._bin / "pg_ctl", "-D", data, "-l", self.root / "server.log", "-w",
                "-t", str(self.start_timeout_s), "-o", options, "start",
            )  # fmt: skip
            self._run(
                self._bin / "createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", self.database,
                as_owner=False,
            )  # fmt: skip
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove its folder."""
        if self.root is None:
            return
        data = self.root / "data"
        if self._bin is not None and (data / "postmaster.pid").is_file():
            subprocess.run(
                [*self._as_user, str(self._bin / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
