"""matplotlib, an optional extra (`pip install 'btembed[plot]'`): figures drawn off-screen by Agg, saved as PNG."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import BtembedError

INSTALL_HINT = "pip install 'btembed[plot]'"
MISSING = f"plots need matplotlib, which is not installed; install it with `{INSTALL_HINT}`"


class PlotError(BtembedError):
    """A plot that cannot be made: matplotlib is missing, or the PNG cannot be written."""


def plotting_available() -> bool:
    """Whether matplotlib is installed (found without importing it)."""
    return importlib.util.find_spec("matplotlib") is not None


def check_plot_target(path: str | Path) -> Path:
    """Refuse a plot before any slow work: matplotlib must be installed and the PNG's folder must exist."""
    path = Path(path)
    if not plotting_available():
        raise PlotError(MISSING)
    if not path.parent.is_dir():
        raise PlotError(f"cannot write {path}: its folder {path.parent} does not exist; create it or pick another path")
    return path


def new_figure(width: float, height: float):
    """A matplotlib Figure on its own Agg canvas (no pyplot, no display, no global backend switch)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotError(MISSING) from None
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_png(figure, path: str | Path, dpi: int = 100) -> Path:
    """Write the figure as a PNG file."""
    path = check_plot_target(path)
    try:
        figure.savefig(path, format="png", dpi=dpi)
    except OSError as e:
        raise PlotError(f"cannot write {path} ({e.strerror or e}); pick another path") from None
    return path
