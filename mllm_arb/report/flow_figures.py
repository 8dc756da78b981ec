"""The figures of an `analyze` run, drawn from its results.json content alone."""

from __future__ import annotations

from pathlib import Path

from . import plots


def draw_flow_figures(results: dict, folder: Path, title: str) -> list[Path]:
    paths: list[Path] = []
    for setting, curves in results["knockout"].items():
        paths += plots.knockout_curves(curves, f"Attention knockout, {setting.replace('_', '-')} — {title}", folder, f"knockout_{setting}")
    for setting, edges in (results.get("cumulative") or {}).items():
        for span, words in (("from", "from each layer to the last"), ("until", "from the first layer up to each layer")):
            curves = {edge: spans[span] for edge, spans in edges.items() if spans.get(span)}
            if curves:
                paths += plots.knockout_curves(curves, f"Cumulative knockout {words}, {setting.replace('_', '-')} — {title}", folder,
                                               f"cumulative_{span}_{setting}", x="layer",
                                               xlabel="first blocked layer" if span == "from" else "last blocked layer")
    for setting, curves in (results.get("saliency") or {}).items():
        paths += plots.knockout_curves(curves, f"Attention saliency |A ⊙ ∂L/∂A|, {setting.replace('_', '-')} — {title}", folder,
                                       f"saliency_{setting}", x="layer", xlabel="layer",
                                       ylabel="mean saliency per attention entry")
    lens = results.get("lens")
    if not lens:
        return paths
    for setting, sites in lens["components"].items():
        for split in ("all", "failed"):
            entry = sites.get("last", {}).get(split)
            if not entry or entry["n"] == 0:
                continue
            paths += plots.component_bars(
                {"attention": entry["attn_difference"], "MLP": entry["mlp_difference"]},
                f"Contribution to following − competitor at the last position ({setting}, {split}, n={entry['n']}) — {title}",
                folder,
                f"components_{setting}_{split}",
            )
        series = {}
        for site, splits in sites.items():
            for split, entry in splits.items():
                if entry["n"]:
                    series[f"{site}, {split} (n={entry['n']})"] = entry["lens_log_odds"]
        paths += plots.layer_curves(series, f"Logit lens: following log-odds after each layer ({setting}) — {title}",
                                    "lens log-odds (following vs competitor)", folder, f"lens_{setting}", hline=0.0)
    if lens.get("agreement"):
        paths += plots.layer_curves(lens["agreement"], f"Anchor decision agreement at the instruction tokens — {title}",
                                    "share agreeing with the final decision", folder, "agreement", hline=0.95)
    return paths
