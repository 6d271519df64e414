"""Runs inside the code sandbox (trusted): drop privileges, pre-import, run the model's code, save the figure.

Usage: python _code_runner.py WORKDIR. Reads WORKDIR/code.py, writes WORKDIR/figure.png and
WORKDIR/result.json. Standard output and error go to files the parent reads (so print() is harmless).
"""

import glob
import json
import os
import shutil
import sys
import traceback

NOBODY = 65534


def drop_privileges() -> None:
    if (
        os.getuid() == 0 and os.environ.get("LLMI_DROP_PRIVILEGES") == "1"
    ):  # root is exempt from RLIMIT_NPROC; an ordinary uid is not
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)


def prime_font_cache() -> None:
    """Copy a prebuilt matplotlib font list into the private config dir (saves seconds per run)."""
    source, target = os.environ.get("LLMI_MPL_CACHE"), os.environ.get("MPLCONFIGDIR")
    if not source or not target:
        return
    os.makedirs(target, exist_ok=True)
    for path in glob.glob(os.path.join(source, "fontlist-*.json")):
        shutil.copy(path, target)


def figure_has_content(fig) -> bool:
    for ax in fig.axes:
        if ax.lines or ax.collections or ax.patches or ax.images or ax.texts or ax.tables or ax.artists:
            return True
    return bool(fig.texts or fig.images)


def figure_texts(fig) -> list:
    texts = [t.get_text() for t in fig.texts]
    if getattr(fig, "_suptitle", None) is not None:
        texts.append(fig._suptitle.get_text())
    for ax in fig.axes:
        texts += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel(), *(t.get_text() for t in ax.texts)]
    return [t for t in texts if t]


def main(workdir: str, refresh_cache: bool) -> None:
    result = {"ok": False, "error": None, "figure": None, "texts": []}
    if not refresh_cache:
        drop_privileges()
    prime_font_cache()
    import logging

    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd
    import seaborn as sns

    # Fall back to a CJK font for glyphs DejaVu lacks, when one is installed.
    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    fallbacks = ["Droid Sans Fallback", "Noto Sans CJK SC", "WenQuanYi Zen Hei", "Arial Unicode MS"]
    plt.rcParams["font.family"] = ["DejaVu Sans", *(f for f in fallbacks if f in installed)]
    plt.rcParams["axes.unicode_minus"] = False
    if refresh_cache:
        cache = os.environ["LLMI_MPL_CACHE"]
        for path in glob.glob(os.path.join(os.environ["MPLCONFIGDIR"], "fontlist-*.json")):
            shutil.copy(path, cache)
        return

    # show/savefig/close become no-ops, so every figure the code drew is still open afterwards.
    plt.show = lambda *a, **k: None
    plt.savefig = lambda *a, **k: None
    plt.close = lambda *a, **k: None

    with open(os.path.join(workdir, "code.py"), encoding="utf-8") as fh:
        source = fh.read()
    namespace = {"__name__": "__main__", "np": np, "pd": pd, "plt": plt, "sns": sns, "matplotlib": matplotlib}
    try:
        exec(compile(source, "<model code>", "exec"), namespace)
    except SystemExit as exc:
        if exc.code not in (None, 0):
            result["error"] = f"SystemExit: {exc.code}"
    except MemoryError:
        result["error"] = "MemoryError: the code ran out of memory"
        traceback.print_exc()
    except BaseException as exc:  # the model's code may raise anything, SystemExit included
        result["error"] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    if result["error"] is None:
        figures = [plt.figure(num) for num in plt.get_fignums()]
        chosen = next((f for f in reversed(figures) if figure_has_content(f)), None)
        if chosen is None:
            result["error"] = "the code drew no figure (use matplotlib: plt.plot, plt.bar, sns.lineplot, ...)"
        else:
            path = os.path.join(workdir, "figure.png")
            chosen.savefig(path, format="png", dpi=100, bbox_inches="tight")
            result.update(ok=True, figure="figure.png", texts=figure_texts(chosen))
    with open(os.path.join(workdir, "result.json"), "w", encoding="utf-8") as fh:
        json.dump(result, fh, ensure_ascii=False)


if __name__ == "__main__":
    main(sys.argv[1], refresh_cache="--refresh-font-cache" in sys.argv)
