"""Drawing primitives of the analysis figures: labelled heatmaps, curves and scatter plots.

Each function takes plain data (no report frame) and returns PNG bytes drawn with the
same canvas, style and metadata rules as :mod:`harness.report.figures`, then stored as a
palette PNG (:func:`compact_png`), so the same inputs give the same bytes. matplotlib is
imported only when something is drawn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from harness.report.figures import _canvas, _png, _styled


@dataclass(frozen=True)
class Panel:
    """One labelled heatmap: ``values`` is (rows, columns), NaN for a missing cell."""

    title: str
    values: np.ndarray
    rows: Sequence[str]
    columns: Sequence[str]


@dataclass(frozen=True)
class Line:
    """One curve over a panel's x labels (NaN where the model has no value)."""

    label: str
    values: Sequence[float]
    colour: int
    dashed: bool = False


@dataclass(frozen=True)
class Point:
    """One scatter point: ``group`` picks its colour, ``hollow`` its marker."""

    x: float
    y: float
    group: str
    hollow: bool = False


def compact_png(data: bytes) -> bytes:
    """The PNG as 256-colour palette PNG: a third of the bytes for these flat-colour
    figures, still byte-stable (median cut, no dithering)."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as opened:
        image = opened.convert("RGB")
    palette = image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _colour(index: int) -> str:
    return f"C{index % 10}"


def heatmaps(
    panels: Sequence[Panel],
    title: str,
    label: str,
    *,
    diverging: bool = False,
    signed_text: bool = False,
) -> bytes:
    """Heatmaps stacked on one colour scale, each cell's value written in it.

    Args:
        panels: the heatmaps (one per dataset, say).
        title: the figure's title.
        label: the colour bar's label.
        diverging: a red-blue scale centred on 0 (for gains) instead of viridis.
        signed_text: write values with a sign (``+0.120``).
    """

    def draw() -> bytes:
        import matplotlib

        finite = np.concatenate([p.values[np.isfinite(p.values)] for p in panels] or [[]])
        if diverging:
            bound = float(np.max(np.abs(finite))) if finite.size else 1.0
            low, high = -(bound or 1.0), bound or 1.0
            cmap = matplotlib.colormaps["RdBu"].with_extremes(bad="white")
        else:
            low = float(finite.min()) if finite.size else 0.0
            high = float(finite.max()) if finite.size else 1.0
            high = high if high > low else low + 1.0
            cmap = matplotlib.colormaps["viridis"].with_extremes(bad="white")
        widest = max(len(p.columns) for p in panels)
        longest = max((len(r) for p in panels for r in p.rows), default=8)
        heights = [0.9 + 0.32 * len(p.rows) for p in panels]
        figure = _canvas(2.2 + 0.065 * longest + 0.62 * widest, 0.6 + sum(heights))
        axes_list = figure.subplots(
            len(panels), 1, squeeze=False, gridspec_kw={"height_ratios": heights}
        )[:, 0]
        image = None
        for axes, panel in zip(axes_list, panels, strict=True):
            masked = np.ma.masked_invalid(panel.values.astype(float))
            image = axes.imshow(masked, cmap=cmap, vmin=low, vmax=high, aspect="auto")
            axes.set_xticks(range(len(panel.columns)), list(panel.columns), rotation=30, ha="right")
            axes.set_yticks(range(len(panel.rows)), list(panel.rows))
            middle = (low + high) / 2
            for i in range(panel.values.shape[0]):
                for j in range(panel.values.shape[1]):
                    value = float(panel.values[i, j])
                    if math.isnan(value):
                        continue
                    text = f"{value:+.3f}" if signed_text else f"{value:.3f}"
                    dark = abs(value) > 0.5 * high if diverging else value < middle
                    axes.text(
                        j, i, text, ha="center", va="center", fontsize=7,
                        color="white" if dark else "black",
                    )  # fmt: skip
            axes.set_title(panel.title)
        figure.colorbar(image, ax=list(axes_list), label=label)
        figure.suptitle(title)
        return _png(figure)

    return compact_png(_styled(draw))


def curves(
    panels: Sequence[tuple[str, Sequence[str], Sequence[Line]]],
    title: str,
    ylabel: str,
    xlabel: str = "layer (shallow to deep)",
) -> bytes:
    """Line plots, one panel per (title, x labels, lines), with one shared legend."""

    def draw() -> bytes:
        figure = _canvas(max(5.0, 1.2 + 3.6 * len(panels)), 4.0)
        axes_list = figure.subplots(1, len(panels), squeeze=False)[0]
        seen: dict[str, object] = {}
        for axes, (name, labels, lines) in zip(axes_list, panels, strict=True):
            positions = list(range(len(labels)))
            for line in lines:
                (handle,) = axes.plot(
                    positions,
                    [float(v) for v in line.values],
                    marker="o",
                    markersize=3,
                    color=_colour(line.colour),
                    linestyle="--" if line.dashed else "-",
                )
                seen.setdefault(line.label, handle)
            axes.set_xticks(positions, list(labels), rotation=30, ha="right")
            axes.set_title(name)
            axes.set_xlabel(xlabel)
            axes.grid(alpha=0.3)
        axes_list[0].set_ylabel(ylabel)
        labels_sorted = sorted(seen)
        figure.legend(
            [seen[k] for k in labels_sorted],
            labels_sorted,
            title="model (dashed: random init)",
            fontsize=7,
            loc="outside lower center",
            ncols=min(3, max(1, len(labels_sorted))),
        )
        figure.suptitle(title)
        return _png(figure)

    return compact_png(_styled(draw))


def scatters(
    panels: Sequence[tuple[str, str, Sequence[Point]]],
    title: str,
    ylabel: str,
    legend: str = "dataset",
) -> bytes:
    """Scatter plots, one panel per (title, x label, points), colours by point group."""

    def draw() -> bytes:
        groups = sorted({p.group for _, _, points in panels for p in points})
        colours = {group: index for index, group in enumerate(groups)}
        figure = _canvas(max(5.0, 1.2 + 3.3 * len(panels)), 3.9)
        axes_list = figure.subplots(1, len(panels), squeeze=False)[0]
        from matplotlib.lines import Line2D

        for axes, (name, xlabel, points) in zip(axes_list, panels, strict=True):
            for point in points:
                colour = _colour(colours[point.group])
                axes.scatter(
                    [point.x],
                    [point.y],
                    s=28,
                    marker="o",
                    facecolors="none" if point.hollow else colour,
                    edgecolors=colour,
                )
            axes.set_title(name)
            axes.set_xlabel(xlabel)
            axes.grid(alpha=0.3)
        axes_list[0].set_ylabel(ylabel)
        # filled markers in the legend: hollow ones mean something else (see the title)
        handles = [
            Line2D([], [], marker="o", linestyle="", color=_colour(colours[g])) for g in groups
        ]
        figure.legend(
            handles,
            groups,
            title=legend,
            fontsize=7,
            loc="outside lower center",
            ncols=min(4, max(1, len(groups))),
        )
        figure.suptitle(title)
        return _png(figure)

    return compact_png(_styled(draw))
