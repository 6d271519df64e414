"""Opening a LangGraph checkpointer from a URL: SQLite (a file, the default) or PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from llmi_graph._extras import require

_SETUP_LOCK = 0x6C6C6D69  # "llmi": the advisory lock that lets one process at a time create the tables


def describe(url: str | None, default_path: Path) -> str:
    """Where checkpoints go, for messages and settings.json: a URL without its password (in the user part, as
    written, percent-encoded or not, or in a `password=` parameter)."""
    if url is None:
        return f"sqlite:{default_path}"
    parts = urlsplit(url)
    netloc = parts.netloc
    userinfo, at, host = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.split(':', 1)[0]}:***@{host}"
    query = "&".join(
        "password=***" if field.split("=", 1)[0].lower() == "password" else field for field in parts.query.split("&")
    )
    return parts._replace(netloc=netloc, query=query).geturl()


def state_types() -> list[tuple[str, str]]:
    """(module, name) of every pydantic type our states hold: the msgpack allowlist of our checkpoints."""
    from pydantic import BaseModel

    from llmi_graph import checks, scaling, state, tags

    return [
        (module.__name__, name)
        for module in (checks, scaling, state, tags)
        for name, value in vars(module).items()
        if isinstance(value, type) and issubclass(value, BaseModel) and value.__module__ == module.__name__
    ]


def serializer() -> Any:
    """LangGraph's checkpoint serializer, told which of our types the state holds: it restores them without the
    "Deserializing unregistered type" warning, and refuses any other non-builtin type a checkpoint may name (what
    LangGraph's strict mode, `LANGGRAPH_STRICT_MSGPACK`, will make the default)."""
    from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

    return JsonPlusSerializer(allowed_msgpack_modules=state_types())


def with_state_types(checkpointer: Any) -> Any:
    """The checkpointer a caller compiles the graph with, with our state's types added to its serializer's allowlist
    (LangGraph's own `with_allowlist`: a shallow copy on the same storage, so the caller's object reads the same
    checkpoints). A serializer with an allowlist of its own would otherwise refuse our types; LangGraph's permissive
    default (every type, with a warning for each it was not told of) stays as it is: build that one with
    `serde=checkpoint_serializer()` for no warnings. `None`/`True`/`False` (none, or the parent's) pass through."""
    from langgraph.checkpoint.base import BaseCheckpointSaver

    if isinstance(checkpointer, BaseCheckpointSaver):
        return checkpointer.with_allowlist(state_types())
    return checkpointer


@contextlib.asynccontextmanager
async def open_checkpointer(url: str | None, default_path: Path) -> AsyncIterator[Any]:
    """An async LangGraph checkpointer: `AsyncSqliteSaver` on `default_path` (url None, or `sqlite:PATH`), or
    `AsyncPostgresSaver` for a `postgresql://` URL (its tables are created on first use)."""
    if url is None or url.startswith("sqlite:"):
        path = default_path if url is None else Path(url.removeprefix("sqlite:").removeprefix("//"))
        try:
            from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
        except ImportError as exc:
            raise RuntimeError("checkpoints need `pip install langgraph-checkpoint-sqlite`") from exc
        path.parent.mkdir(parents=True, exist_ok=True)
        import aiosqlite

        async with aiosqlite.connect(str(path)) as conn:  # AsyncSqliteSaver.from_conn_string, with our serializer
            yield AsyncSqliteSaver(conn, serde=serializer())
        return
    if url.startswith(("postgresql://", "postgres://")):
        require("batch", "langgraph.checkpoint.postgres", "psycopg", what="a postgresql:// checkpoint URL")
        from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
        from psycopg import OperationalError

        async with contextlib.AsyncExitStack() as stack:
            try:
                saver = await stack.enter_async_context(AsyncPostgresSaver.from_conn_string(url, serde=serializer()))
            except OperationalError as exc:
                raise RuntimeError(
                    f"cannot open the checkpoint database {describe(url, default_path)}: {exc}"
                ) from None
            # Processes that start together (Ray workers, two batches) on a fresh database would race to create
            # the tables (a duplicate-key error from Postgres): they take turns. They poll rather than wait in
            # pg_advisory_lock, since a waiting statement would block the setup's CREATE INDEX CONCURRENTLY.
            await _setup_lock(saver.conn)
            try:
                await saver.setup()
            finally:
                await saver.conn.execute("SELECT pg_advisory_unlock(%s)", (_SETUP_LOCK,))
            yield saver
        return
    raise ValueError(f"{url[:80]!r}: a checkpoint URL is postgresql://... or sqlite:PATH")


async def _setup_lock(conn: Any) -> None:
    """Take the setup's advisory lock on `conn` (an autocommit connection: the lock lasts until unlocked)."""
    while True:
        row = await (await conn.execute("SELECT pg_try_advisory_lock(%s) AS ok", (_SETUP_LOCK,))).fetchone()
        if row["ok"]:
            return
        await asyncio.sleep(0.1)
