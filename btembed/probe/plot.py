"""The probe's confusion matrix as a picture: class names on both axes, colour by share of the true class, counts."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..plotting import new_figure, save_png

NAME_CHARS = 22  # longer class names are cut with an ellipsis so the matrix keeps its room


def short_name(name: str) -> str:
    """A class name cut to NAME_CHARS characters."""
    return name if len(name) <= NAME_CHARS else name[:NAME_CHARS - 1] + "…"


def row_shares(confusion) -> np.ndarray:
    """Each row divided by its total (a true class without images stays all zero)."""
    counts = np.asarray(confusion, dtype=np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def draw_confusion(classes: list, confusion, title: str = ""):
    """A Figure: rows true classes, columns predicted; colour = share of the row, number = count (zeros blank)."""
    counts = np.asarray(confusion, dtype=np.int64)
    n = len(classes)
    shares = row_shares(counts)
    side = max(4.5, 0.34 * n + 2.8)  # about 0.34 inch per class keeps 30 classes and their counts legible
    figure = new_figure(side + 1.0, side)
    ax = figure.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    names = [short_name(str(c)) for c in classes]
    ax.set_xticks(range(n), names, rotation=60, ha="right", rotation_mode="anchor",
                  fontsize=9 if n <= 15 else 7)
    ax.set_yticks(range(n), names, fontsize=9 if n <= 15 else 7)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    cell_font = 9 if n <= 12 else 7 if n <= 20 else 5.5
    for i in range(n):
        for j in range(n):
            if counts[i, j]:
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=cell_font,
                        color="white" if shares[i, j] > 0.55 else "black")
    figure.colorbar(image, ax=ax, shrink=0.8, label="share of the true class")
    if title:
        ax.set_title(title, fontsize=10)
    return figure


def plot_confusion(classes: list, confusion, path: str | Path, title: str = "") -> Path:
    """Draw the confusion matrix into a PNG file; returns its path."""
    return save_png(draw_confusion(classes, confusion, title), path)
