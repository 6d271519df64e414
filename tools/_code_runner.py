"""Runs inside the code sandbox (trusted): drop privileges, pre-import, run the model's code, hand back the figure.

Usage: python _code_runner.py CODE_FD RESULT_FD FIGURE_FD
       python _code_runner.py --refresh-font-cache

The parent opens every file this process touches for it and passes them in as descriptors: it reads the code from
CODE_FD and writes the result (JSON) to RESULT_FD and the PNG to FIGURE_FD, so the parent reads nothing back by a
path the code could swap. Standard output and error are descriptors too (so print() is harmless). The model's code
runs in this process and can write to all of them: the parent treats what comes back as untrusted bytes.
"""

import glob
import importlib
import io
import json
import os
import shutil
import sys
import traceback
import types


def drop_privileges() -> None:
    """Become the run's own uid (set by the parent when it runs us as root): root ignores RLIMIT_NPROC."""
    uid = os.environ.get("LLMI_SANDBOX_UID")
    if uid and os.getuid() == 0:
        os.setgroups([])
        os.setgid(int(uid))
        os.setuid(int(uid))


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


def hand_back(fd: int, data: bytes) -> None:
    """Replace the contents of a descriptor the parent passed in (the code may have written to it)."""
    os.ftruncate(fd, 0)
    view = memoryview(data)
    offset = 0
    while offset < len(view):
        offset += os.pwrite(fd, view[offset:], offset)


class LazyModule(types.ModuleType):
    """A module imported on first use. pandas and seaborn cost about a second of CPU per run to import, and most
    charts use neither; on a machine where the tools share cores with the policy, that second is generation time."""

    def __init__(self, name: str):
        super().__init__(name)

    def __getattr__(self, attr: str) -> object:
        module = importlib.import_module(self.__name__)
        self.__dict__.update({k: v for k, v in vars(module).items() if k != "__name__"})
        return getattr(module, attr)


def import_plotting(eager: bool = True) -> tuple:
    """matplotlib (Agg, with a CJK fallback font when one is installed), numpy, pandas and seaborn (the last two
    imported on first use unless `eager`)."""
    prime_font_cache()
    import logging

    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib import font_manager

    if eager:
        import pandas as pd
        import seaborn as sns
    else:
        pd, sns = LazyModule("pandas"), LazyModule("seaborn")

    installed = {f.name for f in font_manager.fontManager.ttflist}
    fallbacks = ["Droid Sans Fallback", "Noto Sans CJK SC", "WenQuanYi Zen Hei", "Arial Unicode MS"]
    plt.rcParams["font.family"] = ["DejaVu Sans", *(f for f in fallbacks if f in installed)]
    plt.rcParams["axes.unicode_minus"] = False
    return matplotlib, plt, np, pd, sns


def refresh_font_cache() -> None:
    """Build matplotlib's font list (trusted: no model code runs) and copy it into the shared cache."""
    import_plotting()
    for path in glob.glob(os.path.join(os.environ["MPLCONFIGDIR"], "fontlist-*.json")):
        shutil.copy(path, os.environ["LLMI_MPL_CACHE"])


def run_model_code(code_fd: int, result_fd: int, figure_fd: int) -> None:
    drop_privileges()
    with os.fdopen(code_fd, encoding="utf-8") as fh:
        source = fh.read()
    # Programs the code starts do not inherit the channel back.
    os.set_inheritable(result_fd, False)
    os.set_inheritable(figure_fd, False)
    matplotlib, plt, np, pd, sns = import_plotting(eager=False)

    # show/savefig/close become no-ops, so every figure the code drew is still open afterwards.
    plt.show = lambda *a, **k: None
    plt.savefig = lambda *a, **k: None
    plt.close = lambda *a, **k: None

    result = {"ok": False, "error": None, "texts": []}
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
            png = io.BytesIO()
            chosen.savefig(png, format="png", dpi=100, bbox_inches="tight")
            hand_back(figure_fd, png.getvalue())
            result.update(ok=True, texts=figure_texts(chosen))
    hand_back(result_fd, json.dumps(result, ensure_ascii=False).encode("utf-8"))


if __name__ == "__main__":
    if sys.argv[1:] == ["--refresh-font-cache"]:
        refresh_font_cache()
    else:
        run_model_code(*(int(arg) for arg in sys.argv[1:4]))
