"""Figures of the information-flow analysis, as PNG and SVG. Each function takes plain per-layer data
(lists and dicts written to results.json), so plots can be redrawn from a run directory alone."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display on servers or in CI
import matplotlib.pyplot as plt  # noqa: E402

EDGE_COLOURS = plt.get_cmap("tab10").colors
#: no text in a figure is drawn smaller: the report shows figures at 1.33 px per point or more, so
#: this is at least 10 px on the page (tests/report/test_report.py measures it)
MIN_FONT_PT = 8.0
#: where a figure's smallest font size is written into its file, for the report to measure
FONT_TAG = "mllm-arb font-pt"


def _texts(fig):
    from matplotlib.text import Text

    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]


def _overlapping(labels, renderer) -> bool:
    boxes = [t.get_window_extent(renderer) for t in labels]
    return any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def _tick_labels(fig):
    """Draw the figure, then (renderer, axes index, "x" or "y", the axis' visible tick labels) per axis."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for k, ax in enumerate(fig.axes):
        for name, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
            yield renderer, k, name, [t for t in axis.get_ticklabels() if t.get_visible() and t.get_text().strip()]


def tidy(fig) -> float:
    """Make a figure legible before it is written: no text below `MIN_FONT_PT`, and on every axis
    (colour bars included) tick labels that would overlap are thinned to every second one until none
    do. Returns the smallest font size left, in points."""
    for t in _texts(fig):
        if t.get_fontsize() < MIN_FONT_PT:
            t.set_fontsize(MIN_FONT_PT)
    for renderer, _, _, labels in _tick_labels(fig):
        while len(labels) > 1 and _overlapping(labels, renderer):
            for t in labels[1::2]:
                t.set_visible(False)
            labels = labels[::2]
    return min((t.get_fontsize() for t in _texts(fig)), default=MIN_FONT_PT)


def font_tag(fig) -> str:
    """`tidy` the figure; the line its file carries so the report can measure its smallest text."""
    return f"{FONT_TAG}={tidy(fig):g}"


def overlapping_ticks(fig) -> list[str]:
    """Axes whose visible tick labels overlap (what `tidy` removes; the tests check figures with it)."""
    return [f"axes {k} {name}" for renderer, k, name, labels in _tick_labels(fig) if _overlapping(labels, renderer)]


def save(fig, folder: Path, stem: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    tag = font_tag(fig)
    paths = []
    for ext in ("png", "svg"):
        path = folder / f"{stem}.{ext}"
        fig.savefig(path, dpi=150, bbox_inches="tight", metadata={"Description": tag} if ext == "svg" else {"Comment": tag})
        paths.append(path)
    plt.close(fig)
    return paths


def knockout_curves(
    curves: Mapping[str, Sequence[Mapping]], title: str, folder: Path, stem: str, x: str = "center",
    xlabel: str = "layer (centre of the knockout window)", ylabel: str = "Δ log-odds of following",
) -> list[Path]:
    """One line per edge: mean change in following log-odds against the knockout window's centre layer,
    with its 95% interval as a band (the study's Figure 2/3 style); any per-layer mean with an interval
    (`x` names the layer key) draws the same way."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    widths = [p["layers"][1] - p["layers"][0] for pts in curves.values() for p in pts if "layers" in p]
    clipped = False
    for k, (edge, points) in enumerate(curves.items()):
        xs = [p[x] for p in points]
        colour = EDGE_COLOURS[k % len(EDGE_COLOURS)]
        ax.plot(xs, [p["mean"] for p in points], marker="o", ms=3, lw=1.6, color=colour, label=edge)
        ax.fill_between(xs, [p["ci_low"] for p in points], [p["ci_high"] for p in points], color=colour, alpha=0.18, lw=0)
        if x == "center" and widths:  # windows clipped at the decoder's ends block fewer layers: hollow rings
            narrow = [p for p in points if "layers" in p and p["layers"][1] - p["layers"][0] < max(widths)]
            if narrow:
                clipped = True
                ax.plot([p[x] for p in narrow], [p["mean"] for p in narrow], ls="none", marker="o", ms=7, mfc="none", mec=colour, mew=1.0)
    ax.axhline(0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    _integer_layers(ax, curves, x)
    ax.legend(fontsize=8, ncol=2, frameon=False)
    if clipped:
        ax.annotate("ringed: window clipped at the first or last layer (fewer layers blocked)", (0.01, 0.01),
                    xycoords="axes fraction", fontsize=7, color="grey")
    return save(fig, folder, stem)


def component_bars(per_layer: Mapping[str, Sequence[float]], title: str, folder: Path, stem: str) -> list[Path]:
    """Attention vs MLP contribution to (following − competitor) logit, per layer, side by side."""
    names = list(per_layer)
    n_layers = len(per_layer[names[0]])
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(7.5, 4.0))
    for k, name in enumerate(names):
        xs = [i + (k - (len(names) - 1) / 2) * width for i in range(n_layers)]
        ax.bar(xs, per_layer[name], width=width, label=name, color=EDGE_COLOURS[k % len(EDGE_COLOURS)])
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(range(n_layers))
    ax.set_xlabel("layer")
    ax.set_ylabel("contribution to following − competitor logit")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    return save(fig, folder, stem)


def layer_curves(
    series: Mapping[str, Sequence[float]], title: str, ylabel: str, folder: Path, stem: str, hline: float | None = None
) -> list[Path]:
    """Any per-layer quantities as lines (lens logits, agreement share)."""
    fig, ax = plt.subplots(figsize=(7.0, 3.8))
    for k, (name, values) in enumerate(series.items()):
        ax.plot(range(len(values)), values, marker="o", ms=3, lw=1.6, label=name, color=EDGE_COLOURS[k % len(EDGE_COLOURS)])
    if hline is not None:
        ax.axhline(hline, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("layer")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    n = max(len(v) for v in series.values())
    ax.set_xticks(range(n))
    ax.legend(fontsize=8, frameon=False)
    return save(fig, folder, stem)


def heatmap(matrix: Sequence[Sequence[float]], title: str, xlabel: str, ylabel: str, folder: Path, stem: str,
            xticks: Sequence[str] | None = None, yticks: Sequence[str] | None = None) -> list[Path]:
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    im = ax.imshow(matrix, aspect="auto", cmap="RdBu_r", vmin=-max(1e-9, _absmax(matrix)), vmax=max(1e-9, _absmax(matrix)))
    fig.colorbar(im, ax=ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if xticks is not None:
        ax.set_xticks(range(len(xticks)), xticks, rotation=45, ha="right", fontsize=7)
    if yticks is not None:
        ax.set_yticks(range(len(yticks)), yticks, fontsize=7)
    ax.set_title(title, fontsize=10)
    return save(fig, folder, stem)


def _absmax(matrix) -> float:
    return max((abs(v) for row in matrix for v in row), default=0.0)


def _integer_layers(ax, curves, x: str = "center") -> None:
    centres = sorted({p[x] for pts in curves.values() for p in pts})
    if centres:
        ax.set_xticks(centres)
