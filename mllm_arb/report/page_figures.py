"""The figures the HTML report draws itself (the run directories already hold the others): MFR per
condition with intervals, and the comparison figures across models. Each returns SVG bytes, drawn in
memory and deterministic (fixed ids, no date), so a report rebuilt from the same runs is the same file."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLOURS = plt.get_cmap("tab10").colors


def to_svg(fig) -> bytes:
    from .plots import font_tag

    buf = io.BytesIO()
    with matplotlib.rc_context({"svg.hashsalt": "mllm-arb", "svg.fonttype": "path"}):
        tag = font_tag(fig)
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": "mllm-arb", "Description": tag})
    plt.close(fig)
    return buf.getvalue()


def interval_dots(rows: Sequence[tuple[str, float, float, float]], xlabel: str, reference: float | None = 0.5,
                  groups: Sequence[str] | None = None) -> bytes:
    """Horizontal dot-and-whisker chart: one row per label, (label, mean, low, high); with `groups`,
    the label is `group: name` and each group gets its colour and a small vertical offset."""
    labels: list[str] = []
    for lab, *_ in rows:
        base = lab.split(": ", 1)[1] if groups else lab
        if base not in labels:
            labels.append(base)
    fig, ax = plt.subplots(figsize=(6.8, 0.42 * len(labels) + 1.1))
    n_groups = len(groups) if groups else 1
    for lab, mean, lo, hi in rows:
        g, base = (lab.split(": ", 1) if groups else ("", lab))
        k = groups.index(g) if groups else 0
        y = labels.index(base) + (k - (n_groups - 1) / 2) * (0.6 / max(n_groups, 1))
        colour = COLOURS[k % len(COLOURS)]
        ax.plot([lo, hi], [y, y], color=colour, lw=2.2, solid_capstyle="round")
        ax.plot([mean], [y], "o", color=colour, ms=6, label=g if groups else None)
    if reference is not None:
        ax.axvline(reference, color="grey", lw=0.8, ls="--")
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlim(-0.02, 1.02)
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", color="#dddddd", lw=0.6)
    ax.set_axisbelow(True)
    if groups:
        handles, names = ax.get_legend_handles_labels()
        seen = dict(zip(names, handles))
        ax.legend(seen.values(), seen.keys(), fontsize=8, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.18),
                  ncol=min(4, len(seen)))
    return to_svg(fig)


def knockout_by_depth(per_model: Mapping[str, tuple[int, Mapping[str, Sequence[Mapping]]]], edges: Sequence[str],
                      title: str) -> bytes:
    """Small multiples, one panel per edge: the mean change in following log-odds under knockout against
    relative depth (layer / number of layers), one line (with its 95% band) per model."""
    n = len(edges)
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.7 * cols + 0.6, 2.3 * rows + 0.9), sharex=True, squeeze=False)
    for ax, edge in zip(axes.flat, edges):
        for k, (model, (n_layers, curves)) in enumerate(per_model.items()):
            points = curves.get(edge)
            if not points:
                continue
            xs = [p["center"] / n_layers for p in points]
            colour = COLOURS[k % len(COLOURS)]
            ax.plot(xs, [p["mean"] for p in points], lw=1.6, marker="o", ms=2.5, color=colour, label=model)
            ax.fill_between(xs, [p["ci_low"] for p in points], [p["ci_high"] for p in points], color=colour, alpha=0.15, lw=0)
        ax.axhline(0, color="grey", lw=0.8, ls="--")
        ax.set_title(edge, fontsize=9)
        ax.set_xlim(0, 1)
        ax.tick_params(labelsize=8)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for k, ax in enumerate(axes.flat):
        if k >= n - cols:  # the lowest panel of each column
            ax.set_xlabel("relative depth (layer / n layers)", fontsize=8)
            ax.tick_params(labelbottom=True)
    for ax in axes[:, 0]:
        ax.set_ylabel("Δ log-odds", fontsize=8)
    handles, names = axes.flat[0].get_legend_handles_labels()
    fig.suptitle(title, fontsize=10)
    if handles:
        fig.legend(handles, names, fontsize=8, frameon=False, loc="lower center", ncol=min(5, len(names)),
                   bbox_to_anchor=(0.5, 0.0))
    fig.tight_layout(rect=(0, 0.03 + 0.08 / rows, 1, 1))
    return to_svg(fig)


def _nan(x) -> float:
    return float(x) if isinstance(x, (int, float)) and x is not None else float("nan")


def dose_by_model(per_model: Mapping[str, Sequence[Mapping]]) -> bytes:
    """Pooled MFR against the share of heads blocked: top-ranked heads solid, random heads dashed."""
    fig, ax = plt.subplots(figsize=(6.8, 3.8))
    ks_all: set[float] = set()
    for k, (model, pts) in enumerate(per_model.items()):
        colour = COLOURS[k % len(COLOURS)]
        ks = [100 * p["k"] for p in pts]
        ks_all.update(ks)
        ax.plot(ks, [_nan((p.get("top") or {}).get("mfr", {}).get("mean")) for p in pts], marker="o", ms=3, lw=1.6,
                color=colour, label=f"{model}: top")
        rnd = [(100 * p["k"], p["random"]["mfr"]) for p in pts if (p.get("random") or {}).get("mfr")]
        if rnd:
            ax.plot([x for x, _ in rnd], [_nan(e.get("mean")) for _, e in rnd], ls="--", lw=1.2, color=colour, label=f"{model}: random")
            ax.fill_between([x for x, _ in rnd], [_nan(e.get("spread_low")) for _, e in rnd], [_nan(e.get("spread_high")) for _, e in rnd],
                            color=colour, alpha=0.12, lw=0)
        if pts:
            ax.axhline(_nan((pts[0].get("before") or {}).get("mfr")), color=colour, lw=0.8, ls=":")
    ax.set_xscale("log")
    ticks = sorted(ks_all)
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("heads blocked (% of all heads)")
    ax.set_ylabel("MFR, conflict samples")
    ax.legend(fontsize=8, frameon=False, ncol=2)
    return to_svg(fig)


def alpha_by_model(per_model: Mapping[str, Sequence[tuple[float, Mapping]]]) -> bytes:
    """Recovery and harm (pooled) against α, one line with its 95% band per model."""
    fig, axes = plt.subplots(1, 2, figsize=(7.6, 3.4), sharey=True)
    alphas: set[float] = set()
    for k, (model, pts) in enumerate(per_model.items()):
        colour = COLOURS[k % len(COLOURS)]
        xs = [a for a, _ in pts]
        alphas.update(xs)
        for ax, key in zip(axes, ("recovery", "harm")):
            es = [e.get(key) or {} for _, e in pts]
            ax.plot(xs, [_nan(e.get("mean")) for e in es], marker="o", ms=3, lw=1.6, color=colour, label=model)
            ax.fill_between(xs, [_nan(e.get("ci_low")) for e in es], [_nan(e.get("ci_high")) for e in es], color=colour, alpha=0.15, lw=0)
    for ax, title in zip(axes, ("recovery of failed samples", "harm to following samples")):
        ax.set_xscale("log")
        ticks = sorted(alphas)
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("α (head output scale)")
        ax.set_title(title, fontsize=9)
    axes[0].set_ylabel("share of samples")
    axes[0].legend(fontsize=8, frameon=False)
    return to_svg(fig)
