"""What the benchmark adapters share: finding a benchmark's data folder, and taking a stratified sample."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

from evals.base import Item

R = TypeVar("R")

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "benchmarks"
"""Where development copies of benchmarks live beside this repository (never committed to it)."""


def benchmark_dir(env: str, default: str, files: Sequence[str], how: str) -> Path:
    """The folder `$env` names, else `SHARED/default`, when it holds one of `files`; else `FileNotFoundError`
    saying where the data was looked for and `how` to get it."""
    configured = os.environ.get(env)
    folder = Path(configured).expanduser() if configured else SHARED / default
    if not any((folder / name).is_file() for name in files):
        where = f"{env}={configured}" if configured else f"{folder} (the default)"
        raise FileNotFoundError(f"{' or '.join(files)} not found in {where}: {how}, set {env} to its folder, or "
                                "pass the file's path")  # fmt: skip
    return folder


def names(value: str | Iterable[str] | None) -> list[str] | None:
    """A filter given as one name or several."""
    if value is None:
        return None
    return [value] if isinstance(value, str) else list(value)


def check_limit(name: str, value: int | None) -> None:
    if value is not None and value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


def sample(
    rows: Iterable[R],
    *,
    limit: int | None,
    per_group: int | None,
    group: Callable[[R], str],
    skip_reason: Callable[[R], str | None],
    item: Callable[[R, str | None], Item],
) -> list[Item]:
    """Items in file order: the first `per_group` runnable rows of each group (a deterministic stratified sample),
    then the first `limit` of those. Rows that cannot run come back with `skip` set, but only in a full load: a
    sample (either limit set) holds runnable items only."""
    sampling = limit is not None or per_group is not None
    items: list[Item] = []
    taken: Counter[str] = Counter()
    runnable = 0
    for row in rows:
        if limit is not None and runnable >= limit:
            break
        skip = skip_reason(row)
        if skip is not None:
            if not sampling:
                items.append(item(row, skip))
            continue
        if per_group is not None and taken[group(row)] >= per_group:
            continue
        taken[group(row)] += 1
        runnable += 1
        items.append(item(row, None))
    return items
