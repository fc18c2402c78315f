"""What the chapters' code blocks share: a matplotlib figure as the page's picture, and images as a row.

The chapters run at build time (markdown-exec); `svg(figure)` returns the figure as inline SVG, so a
picture is the output of the code above it and no file can go missing.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

FIGURES = Path(__file__).resolve().parents[1] / "book" / "figures"  # make docs-figures writes them

plt.rcParams.update({"svg.fonttype": "path", "figure.dpi": 100, "font.size": 9, "axes.grid": True,
                     "grid.alpha": 0.3, "svg.hashsalt": "ddpm"})  # text as paths: no font to load


def svg(figure, caption: str = "") -> str:
    """The figure as an HTML <figure> holding inline SVG, closed after drawing."""
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(figure)
    body = buffer.getvalue()
    body = body[body.index("<svg"):]  # drop the XML prolog and doctype: the page is HTML
    note = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f'<figure class="book" role="img" aria-label="{caption or "figure"}">{body}{note}</figure>'


def images(rows, titles=None, row_titles=None, scale: float = 1.0):
    """A grid of images in [-1, 1] ([rows][columns] of [C, H, W] tensors) as a matplotlib figure."""
    rows = [list(row) for row in rows]
    height, width = len(rows), max(len(row) for row in rows)
    figure, axes = plt.subplots(height, width, figsize=(scale * 1.1 * width, scale * 1.1 * height), squeeze=False)
    for r, row in enumerate(rows):
        for c in range(width):
            axis = axes[r][c]
            axis.axis("off")
            if c < len(row):
                image = ((row[c].detach().float().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()
                axis.imshow(image.squeeze(-1) if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=1)
            if titles and r == 0 and c < len(titles):
                axis.set_title(titles[c])
        if row_titles:
            axes[r][0].text(-0.1, 0.5, row_titles[r], transform=axes[r][0].transAxes, ha="right", va="center")
    return figure
