"""Figures of the head stages (rank-heads, ablate, amplify), drawn from their results.json content
alone, so they can be redrawn from a run directory."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.colors import SymLogNorm

from ..core.names import POOLED
from . import plots
from .plots import EDGE_COLOURS, plt
SET_COLOURS = {"top": EDGE_COLOURS[3], "random": EDGE_COLOURS[7], "bottom": EDGE_COLOURS[0], "before": EDGE_COLOURS[2]}


def score_heatmaps(scores: Mapping[str, Sequence[Sequence[float]]], method: str, title: str, folder: Path,
                   stem: str, marked: Sequence[Sequence[int]] = ()) -> list[Path]:
    """Layer × head score maps, one panel per setting and the pooled one, on a shared symmetric scale;
    `marked` heads (the selected set) get a box."""
    names = list(scores)
    # NaN: a layer without attention heads (linear attention), left blank
    vmax = max(1e-9, max(float(np.nanmax(np.abs(np.asarray(m, dtype=float)))) for m in scores.values()))
    n_layers, n_heads = np.asarray(scores[names[0]]).shape
    fig, axes = plt.subplots(1, len(names), figsize=(2.2 + 2.6 * len(names) * max(1.0, n_heads / 8), 0.6 + 0.38 * n_layers + 1.2),
                             squeeze=False)
    # a few heads often carry most of the effect: a symmetric log scale keeps the rest visible
    norm = SymLogNorm(linthresh=vmax / 100, vmin=-vmax, vmax=vmax)
    for ax, name in zip(axes[0], names):
        ax.set_facecolor("#bdbdbd")  # NaN cells (layers without heads) show grey, apart from a score near 0
        im = ax.imshow(scores[name], cmap="RdBu_r", norm=norm, aspect="auto", origin="lower")
        ax.set_title(name.replace("_", " "), fontsize=9)
        ax.set_xlabel("head")
        ax.set_xticks(range(n_heads))
        ax.set_yticks(range(n_layers))
        for l, h in marked:
            ax.add_patch(plt.Rectangle((h - 0.5, l - 0.5), 1, 1, fill=False, lw=1.4, ec="black"))
    axes[0][0].set_ylabel("layer")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.85, label=f"{method} score (drop in following log-odds; symlog)")
    fig.suptitle(title, fontsize=10, y=1.04)
    return plots.save(fig, folder, stem)


def method_scatter(pooled: Mapping[str, Sequence[Sequence[float]]], reference: str, title: str, folder: Path, stem: str) -> list[Path]:
    """Every head's pooled score by each method against the reference method's."""
    others = [m for m in pooled if m != reference]
    fig, axes = plt.subplots(1, len(others), figsize=(4.0 * len(others), 3.8), squeeze=False)
    x = np.ravel(pooled[reference])
    for ax, m in zip(axes[0], others):
        y = np.ravel(pooled[m])
        ax.scatter(x, y, s=14, alpha=0.75, color=EDGE_COLOURS[0])
        lim = max(1e-9, float(np.nanmax(np.abs(np.concatenate([x, y]))))) * 1.05  # NaN: layers without heads
        ax.plot([-lim, lim], [-lim, lim], color="grey", lw=0.8, ls="--")
        ax.axhline(0, color="grey", lw=0.5)
        ax.axvline(0, color="grey", lw=0.5)
        ax.set_xlabel(f"{reference} score")
        ax.set_ylabel(f"{m} score")
    fig.suptitle(title, fontsize=10)
    return plots.save(fig, folder, stem)


def draw_rank_figures(results: dict, folder: Path, title: str) -> list[Path]:
    paths = []
    for method, scores in results["scores"].items():
        paths += score_heatmaps(scores, method, f"Head scores ({method}) — {title}", folder, f"scores_{method}",
                                marked=results["heads"] if method == results["rank_method"] else ())
    pooled = {m: s["pooled"] for m, s in results["scores"].items()}
    if len(pooled) > 1:
        ref = results["rank_method"]
        paths += method_scatter(pooled, ref, f"Pooled head scores against {ref} — {title}", folder, "method_agreement")
    return paths


def _err(entry: dict) -> tuple[float, float]:
    """Error bar half-widths: a random baseline's spread of single sets, else the bootstrap interval."""
    m = entry["mean"]
    lo, hi = entry.get("spread_low", entry.get("ci_low")), entry.get("spread_high", entry.get("ci_high"))
    if m is None or lo is None:
        return 0.0, 0.0
    return max(0.0, m - lo), max(0.0, hi - m)


def blocking_bars(blocking: Mapping[str, dict], n: int, title: str, folder: Path, stem: str) -> list[Path]:
    """Per condition, before and after blocking the top set, random sets (mean, with the 2.5–97.5%
    spread of single sets) and the lowest-ranked set: MFR / accuracy on top, the change in mean
    following log-odds below (MFR saturates when margins are large; the log-odds do not)."""
    conds = list(blocking)
    bars = [("before", "before"), ("top", f"top {n}"), ("random", f"random {n}"), ("bottom", f"bottom {n}")]
    width = 0.8 / len(bars)
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(1.3 + 1.25 * len(conds), 6.8), sharex=True)
    for k, (key, label) in enumerate(bars):
        xs, ys, errs, ds, derrs = [], [], [], [], []
        for i, c in enumerate(conds):
            e = blocking[c].get(key)
            if not e:
                continue
            xs.append(i + (k - (len(bars) - 1) / 2) * width)
            ys.append(e["mfr"]["mean"])
            errs.append(_err(e["mfr"]))
            ds.append(0.0 if key == "before" else e["change"]["log_odds"]["mean"])
            derrs.append((0.0, 0.0) if key == "before" else _err(e["change"]["log_odds"]))
        if xs:
            ax.bar(xs, ys, width=width, label=label, color=SET_COLOURS[key], yerr=np.array(errs).T, capsize=2, ecolor="black")
            if key != "before":
                ax2.bar(xs, ds, width=width, color=SET_COLOURS[key], yerr=np.array(derrs).T, capsize=2, ecolor="black")
    ax.set_ylabel("MFR (settings) / accuracy (controls)")
    ax.set_ylim(0, 1.05)
    fig.suptitle(title, fontsize=10)
    ax.legend(fontsize=8, frameon=False, ncol=4, loc="lower center", bbox_to_anchor=(0.5, 1.0))
    ax2.axhline(0, color="grey", lw=0.8)
    ax2.set_ylabel("Δ log-odds of following (paired)")
    ax2.set_xticks(range(len(conds)), [c.replace("_", "\n") for c in conds], fontsize=8)
    return plots.save(fig, folder, stem)


def dose_response(dose: Mapping[str, Sequence[dict]], title: str, folder: Path, stem: str) -> list[Path]:
    """MFR and mean following log-odds against the share of heads blocked: top, lowest-ranked, random."""
    conds = list(dose)
    fig, axes = plt.subplots(2, len(conds), figsize=(3.8 * len(conds), 6.4), squeeze=False, sharex=True)
    for j, cond in enumerate(conds):
        pts = dose[cond]
        ks = [100 * p["k"] for p in pts]
        for row, metric, label in ((0, "mfr", "MFR"), (1, "log_odds", "mean log-odds")):
            ax = axes[row][j]
            ax.axhline(pts[0]["before"][metric], color=SET_COLOURS["before"], lw=1, ls=":", label="before")
            for name in ("top", "bottom"):
                if all(name in p for p in pts):
                    ax.plot(ks, [p[name][metric]["mean"] for p in pts], marker="o", ms=3, color=SET_COLOURS[name], label=name)
            rp = [p for p in pts if "random" in p and p["random"][metric]["mean"] is not None]
            if rp:
                rk = [100 * p["k"] for p in rp]
                ax.plot(rk, [p["random"][metric]["mean"] for p in rp], marker="o", ms=3, color=SET_COLOURS["random"], label="random")
                ax.fill_between(rk, [p["random"][metric]["spread_low"] for p in rp], [p["random"][metric]["spread_high"] for p in rp],
                                color=SET_COLOURS["random"], alpha=0.2, lw=0)
            if row == 0:
                ax.set_title(cond.replace("_", " "), fontsize=9)
                ax.set_ylim(-0.02, 1.02)
            ax.set_xscale("log")
            ax.set_xticks(ks, [f"{k:g}" for k in ks])
            ax.minorticks_off()
            if row == 1:
                ax.set_xlabel("heads blocked (% of all)")
            if j == 0:
                ax.set_ylabel(label)
    axes[0][0].legend(fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    return plots.save(fig, folder, stem)


def draw_blocking_figures(results: dict, folder: Path, title: str) -> list[Path]:
    n = results["n_selected"]
    paths = blocking_bars(results["blocking"], n, f"Blocking {n} heads ({results['ablation']}, {results['positions']}) — {title}",
                          folder, "blocking")
    if results.get("dose"):
        paths += dose_response(results["dose"], f"Dose-response: blocking the top / bottom / random k% of heads — {title}", folder, "dose_response")
    return paths


def amplification_curves(amp: dict, title: str, folder: Path, stem: str) -> list[Path]:
    """Recovery (failed samples that now follow) and harm (following samples that flip) against α, per
    setting and pooled, with random head sets at the best α."""
    per_alpha = amp["per_alpha"]
    conds = list(per_alpha[0]["settings"])
    alphas = [e["alpha"] for e in per_alpha]
    fig, axes = plt.subplots(1, len(conds), figsize=(3.8 * len(conds), 3.8), squeeze=False, sharey=True)
    for ax, cond in zip(axes[0], conds):
        for key, colour in (("recovery", SET_COLOURS["top"]), ("harm", SET_COLOURS["bottom"])):
            vals = [e["settings"][cond][key] for e in per_alpha]
            ys = [v["mean"] if v["mean"] is not None else np.nan for v in vals]
            ax.plot(alphas, ys, marker="o", ms=3, color=colour, label=key)
            lo = [v["ci_low"] if v["ci_low"] is not None else np.nan for v in vals]
            hi = [v["ci_high"] if v["ci_high"] is not None else np.nan for v in vals]
            ax.fill_between(alphas, lo, hi, color=colour, alpha=0.15, lw=0)
        rnd = amp.get("random_at_best_alpha", {}).get(cond)
        if rnd and rnd["alpha"] is not None:
            for key, marker, shift in (("recovery", "^", 0.96), ("harm", "v", 1.04)):
                r = rnd[key]
                if r["mean"] is not None:
                    ax.errorbar([rnd["alpha"] * shift], [r["mean"]], yerr=np.array([_err(r)]).T, fmt=marker, color=SET_COLOURS["random"],
                                capsize=2, label=f"random {key}")
        n_failed = per_alpha[0]["settings"][cond]["n_failed"]
        ax.set_title(f"{cond.replace('_', ' ')} (failed n={n_failed})", fontsize=9)
        ax.set_xscale("log")
        ax.set_xticks(alphas, [f"{a:g}" for a in alphas])
        ax.minorticks_off()
        ax.set_xlabel("α (head output scale)")
        ax.set_ylim(-0.02, 1.02)
    axes[0][0].set_ylabel("share of samples")
    axes[0][0].legend(fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    return plots.save(fig, folder, stem)


def draw_amplification_figures(results: dict, folder: Path, title: str) -> list[Path]:
    n = results["n_selected"]
    return amplification_curves(results["amplification"], f"Amplifying the top {n} heads — {title}", folder, "amplification")
