"""Benchmark: the code sandbox's cost on a trivial plot, and how fast it stops hostile code, against references.

It prints, each the median of --repeats runs:
- a trivial plot in the sandbox, with the run's cgroup and with rlimits only, against the same imports and plot
  run by plain `python -c` outside any sandbox (the reference), as a ratio;
- the time to end a fork bomb, a memory hog (one process, then eight processes together), a disk filler and a
  file filler, each with the reason the tool gave, against the trivial plot in the sandbox.

Run: .venv/bin/python bench/sandbox.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools import code as code_tool
from tools.base import ToolError
from tools.code import LocalSandbox, SandboxLimits

TRIVIAL = "plt.plot([1, 2, 3], [3, 1, 2])\nplt.title('trivial')"
REFERENCE = (
    "import io, matplotlib\nmatplotlib.use('Agg')\n"
    "import numpy as np, pandas as pd, matplotlib.pyplot as plt, seaborn as sns\n"
    f"{TRIVIAL}\nplt.gcf().savefig(io.BytesIO(), format='png', dpi=100, bbox_inches='tight')"
)
HOSTILE = {
    "fork bomb": (
        "import os, time\nn = 0\ntry:\n    while True:\n        if os.fork() == 0:\n            time.sleep(30)\n"
        "            os._exit(0)\n        n += 1\nexcept OSError:\n    pass\nplt.plot([0, 1])\nplt.title(f'{n} forks')"
    ),
    "memory hog, 1 process": "blocks = []\nwhile True:\n    blocks.append(b'x' * (50 * 1024 * 1024))",
    "memory hog, 8 processes": (
        "import os, time\nalive = []\nfor _ in range(8):\n    r, w = os.pipe()\n    pid = os.fork()\n"
        "    if pid == 0:\n        block = b'x' * (600 * 1024 * 1024)\n        os.write(w, b'1')\n"
        "        time.sleep(30)\n        os._exit(0)\n    os.close(w)\n    os.read(r, 1)\n    alive.append(pid)\n"
        "held = sum(os.waitpid(pid, os.WNOHANG) == (0, 0) for pid in alive)\n"
        "plt.plot([1])\nplt.title(f'{held} of 8 children hold 600 MB')"
    ),
    "disk filler": "i = 0\nwhile True:\n    open(f'part{i}', 'wb').write(b'x' * (4 * 1024 * 1024))\n    i += 1",
    "file filler": "i = 0\nwhile True:\n    open(f'f{i}', 'w').close()\n    i += 1",
}


async def timed_run(sandbox: LocalSandbox, code: str) -> tuple[float, str]:
    start = time.perf_counter()
    try:
        out = await sandbox.run(code)
        outcome = f"figure ({', '.join(out.provenance['figure_texts'])}; {out.provenance['limits']})"
    except ToolError as exc:
        outcome = exc.reason
    return time.perf_counter() - start, outcome


def reference_seconds(sandbox: LocalSandbox) -> float:
    """The same imports and plot by plain `python -c`, with the same prebuilt font list."""
    with tempfile.TemporaryDirectory() as config:
        for font_list in sandbox.cache_dir.glob("fontlist-*.json"):
            shutil.copy(font_list, config)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "MPLCONFIGDIR": config, "OPENBLAS_NUM_THREADS": "1"}
        start = time.perf_counter()
        subprocess.run([sys.executable, "-I", "-c", REFERENCE], env=env, check=True)
        return time.perf_counter() - start


async def main_async(repeats: int) -> None:
    limits = SandboxLimits(timeout_s=30, memory_mb=1024)
    sandbox = LocalSandbox(limits)
    await sandbox.run(TRIVIAL)  # builds the font cache and warms the page cache
    reference = statistics.median(reference_seconds(sandbox) for _ in range(repeats))
    with_cgroup = statistics.median([(await timed_run(sandbox, TRIVIAL))[0] for _ in range(repeats)])
    create = code_tool._RunCgroup.create
    code_tool._RunCgroup.create = staticmethod(lambda *args, **kwargs: None)
    try:
        rlimits_only = statistics.median([(await timed_run(sandbox, TRIVIAL))[0] for _ in range(repeats)])
    finally:
        code_tool._RunCgroup.create = create
    print(f"limits: {limits}; cgroup parents: {code_tool._cgroup_parents()}")
    print(f"trivial plot, plain python -c (reference): {reference:.3f} s")
    print(f"trivial plot in the sandbox, cgroup:        {with_cgroup:.3f} s  ({with_cgroup / reference:.2f}x)")
    print(f"trivial plot in the sandbox, rlimits only:  {rlimits_only:.3f} s  ({rlimits_only / reference:.2f}x)")
    # Address space enough for each child, so that only the total stops them.
    together = LocalSandbox(SandboxLimits(timeout_s=30, memory_mb=2048, total_memory_mb=1024))
    for name, code in HOSTILE.items():
        runner = together if name == "memory hog, 8 processes" else sandbox
        runs = [await timed_run(runner, code) for _ in range(repeats)]
        seconds = statistics.median(s for s, _ in runs)
        print(f"{name:24s} {seconds:6.3f} s  ({seconds / with_cgroup:.2f}x the trivial plot): {runs[-1][1]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure (the median is printed)")
    args = parser.parse_args()
    if not code_tool.bwrap_works():
        sys.exit("bubblewrap (bwrap) is not usable here: the benchmark measures the real sandbox")
    asyncio.run(main_async(args.repeats))


if __name__ == "__main__":
    main()
