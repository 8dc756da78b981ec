"""What the user sees of a finished stage: its tables on the console, and where its files are."""

from __future__ import annotations

import json
import math

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..core import verdicts as V
from ..core.heads_file import attention_heads
from ..core.names import POOLED
from ..runtime.progress import console_width
from ..runtime.stage import StageResult

console = Console(width=console_width())


def _f(x, fmt="{:.3f}") -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def _ci(e: dict, fmt="{:.3f}") -> str:
    return f"[{_f(e.get('ci_low'), fmt)}, {_f(e.get('ci_high'), fmt)}]"


def print_ranking(console, results: dict, title: str) -> None:
    methods = list(results["top"])
    table = Table(title=f"Top heads by {results['rank_method']} ({results['rank_by']}) — {title}")
    table.add_column("rank", justify="right")
    table.add_column("head (layer.head)")
    for m in methods:
        table.add_column(f"{m} score", justify="right")
    n = results["n_selected"]
    scores = {m: results["scores"][m]["pooled"] for m in methods}
    for i, e in enumerate(results["top"][results["rank_method"]][: max(n, 5)]):
        marker = " *" if i < n else ""
        table.add_row(str(i + 1), f"{e['layer']}.{e['head']}{marker}", *(f"{scores[m][e['layer']][e['head']]:+.3g}" for m in methods))
    console.print(table)
    for pair, a in results["agreement"].items():
        console.print(f"{pair.replace('~', ' vs ')}: Spearman {_f(a['spearman'], '{:+.2f}')}, top-{a['n_top']} overlap {a['top_overlap']}")
    total = len(attention_heads(results["n_layers"], results["n_heads"], results.get("layers_without_heads") or ()))
    console.print(f"* selected: {n} of {total} heads")


def print_blocking(console, results: dict, title: str) -> None:
    n = results["n_selected"]
    table = Table(title=f"Blocking the top {n} heads ({results['ablation']}, {results['positions']} positions) — {title}")
    table.add_column("condition", no_wrap=True)
    for col in ("n", "before", f"top {n}", f"random {n} [95% CI]", f"bottom {n}", "Δ log-odds top", "random", "top < random"):
        table.add_column(col, justify="right")
    controls_started = False
    for cond, e in results["blocking"].items():
        if e["kind"] == "control" and not controls_started:
            table.add_section()
            controls_started = True
        rnd, sep = e.get("random"), e.get("separation")
        table.add_row(
            cond,
            str(e["n"]),
            _f(e["before"]["mfr"]["mean"]),
            _f(e["top"]["mfr"]["mean"]),
            f"{_f(rnd['mfr']['mean'])} {_ci(rnd['mfr'], '{:.2f}')}" if rnd else "–",
            _f(e["bottom"]["mfr"]["mean"]) if "bottom" in e else "–",
            _f(e["top"]["change"]["log_odds"]["mean"], "{:+.2f}"),
            _f(rnd["change"]["log_odds"]["mean"], "{:+.2f}") if rnd else "–",
            ("[green]yes[/]" if sep["mfr"]["separated"] or sep["log_odds"]["separated"] else "[red]no[/]") if sep else "",
        )
    console.print(table)
    console.print("MFR for the settings, accuracy for the controls (below the line). top < random: the interval of the "
                  "top set's mean change (MFR or log-odds) lies wholly below the random sets'.")
    print_interactions(console, results.get("interactions", {}).get(POOLED), amplify=False)


def print_interactions(console, entries: list | None, amplify: bool, alpha=None) -> None:
    """Each head of the set alone and left out (settings pooled)."""
    if not entries:
        return
    what = "recovery" if amplify else "Δ MFR"
    table = Table(title=f"Each head of the set: alone and left out{f' (α = {alpha:g})' if alpha is not None else ''}")
    for col in ("head", f"{what} alone", f"{what} without it", "marginal following [95% CI]", "marginal log-odds"):
        table.add_column(col, justify="right")
    for e in entries:
        alone, without = (e["alone"]["recovery"], e["without"]["recovery"]) if amplify else (e["alone"]["change"]["mfr"], e["without"]["change"]["mfr"])
        m = e["marginal"]
        table.add_row(f"L{e['head'][0]}H{e['head'][1]}", _f(alone["mean"], "{:+.3f}"), _f(without["mean"], "{:+.3f}"),
                      f"{_f(m['mfr']['mean'], '{:+.3f}')} {_ci(m['mfr'], '{:+.2f}')}", _f(m["log_odds"]["mean"], "{:+.2f}"))
    console.print(table)
    console.print("marginal: the whole set minus the set without the head, paired per sample"
                  + (" (following on failed samples); negative: the head cancels its companions." if amplify else
                     "; negative: blocking it lowers following further, positive: blocking it gives following back."))


def print_amplification(console, results: dict, title: str) -> None:
    amp = results["amplification"]
    n = results["n_selected"]
    controls = results["controls"]
    table = Table(title=f"Amplifying the top {n} heads — {title}")
    for col in ("α", "failed", "recovery [95% CI]", "following", "harm", *(f"Δ {c}" for c in controls)):
        table.add_column(col, justify="right", no_wrap=col == "α")
    for e in amp["per_alpha"]:
        s = e["settings"][POOLED]
        best = " *" if e["alpha"] == amp["best_alpha"] else ""
        table.add_row(f"{e['alpha']:g}{best}", str(s["n_failed"]), f"{_f(s['recovery']['mean'])} {_ci(s['recovery'], '{:.2f}')}",
                      str(s["n_followed"]), _f(s["harm"]["mean"]),
                      *(_f(e["controls"][c]["change"], "{:+.3f}") if c in e["controls"] else "–" for c in controls))
    rnd = amp.get("random_at_best_alpha", {}).get(POOLED)
    if rnd and rnd["alpha"] is not None:
        table.add_section()
        table.add_row(f"{rnd['alpha']:g} random", "", f"{_f(rnd['recovery']['mean'])} {_ci(rnd['recovery'], '{:.2f}')}", "",
                      _f(rnd["harm"]["mean"]), *("" for _ in controls))
    console.print(table)
    console.print(f"Settings pooled; recovery: failed samples that now follow; harm: following samples that flip; "
                  f"* best α (recovery − harm); last row: {rnd['recovery']['n_seeds'] if rnd else 0} random sets of {n} heads at the best α.")
    for alpha in interaction_alphas(amp):
        entry = next(e for e in amp["per_alpha"] if e["alpha"] == alpha)
        print_interactions(console, entry["interactions"].get(POOLED), amplify=True, alpha=alpha)


def interaction_alphas(amp: dict) -> list[float]:
    """The α values whose per-head table is worth printing: the best α, and the α at which one head alone
    recovers the most failed samples (where a companion's cancelling shows), if that differs."""
    with_heads = [e for e in amp["per_alpha"] if e.get("interactions", {}).get(POOLED)]
    if not with_heads:
        return []
    def best_alone(e):
        return max((h["alone"]["recovery"]["mean"] or 0.0) for h in e["interactions"][POOLED])
    strongest = max(with_heads, key=lambda e: (best_alone(e), -e["alpha"]))["alpha"]
    return list(dict.fromkeys(a for a in (amp["best_alpha"], strongest) if any(e["alpha"] == a for e in with_heads)))


#: how each verdict shows on the console (core/verdicts.py)
VERDICT_STYLE = {V.HOLDS: "[green]holds[/]", V.FAILS: "[red]does not hold[/]", V.UNDECIDED: "[yellow]undecided[/]",
                 V.UNCHECKED: "[dim]not checkable[/]"}


def print_findings(console, findings: dict, title: str) -> None:
    table = Table(title=f"Findings — {title}")
    for col in ("claim", "measured [95% interval]", "threshold", "verdict"):
        table.add_column(col)
    for key, f in findings.items():
        value, (lo, hi) = f["value"], (f.get("interval") or [None, None])[:2]
        interval = f" [{_f(lo, '{:+.3f}')}, {_f(hi, '{:+.3f}')}]" if lo is not None else ""
        if isinstance(value, dict):
            shown = "\n".join(f"{k.replace('_difference', '').replace('_', ' ')}: {_f(v, '{:+.3f}')}" + (interval if k == f.get("interval_of") else "")
                              for k, v in value.items() if v is None or isinstance(v, (int, float)))
        else:
            shown = _f(value, "{:+.3f}") + interval
        if key.startswith("a_") and f.get("measured"):
            shown += "".join(f"\n{m['edge']}: layer {m['peak_layer']}" for m in f["measured"])
        table.add_row(f"({key[0]}) {f['claim']}", shown, f"{f['threshold']}", VERDICT_STYLE[V.verdict_of(f)])
    console.print(table)


def print_mfr(console, table: dict[str, dict], title: str) -> None:
    out = Table(title=title)
    for col in ("condition", "n", "MFR / accuracy", "95% CI", "mean log-odds"):
        out.add_column(col, justify="left" if col == "condition" else "right")
    for key, entry in table.items():
        if "/" in key:
            continue
        m, lo = entry["mfr"], entry["log_odds"]
        out.add_row(key, str(m["n"]), f"{m['mean']:.3f}", f"[{m['ci_low']:.3f}, {m['ci_high']:.3f}]", f"{lo['mean']:+.2f}")
    console.print(out)


def print_validation(console, report: dict, model: str) -> None:
    ko = report["knockout"]
    c = ko["confusion"]
    t = Table(title=f"Knockout against the planted route — {model} (detected: 95% CI excludes 0 and |Δ| ≥ {ko['min_effect']})")
    for col in ("", "detected", "not detected", "rate"):
        t.add_column(col, justify="right")
    t.add_row("planted", str(c["planted_detected"]), str(c["planted_missed"]), f"TPR {_f(ko['true_positive_rate'])}")
    t.add_row("not planted", str(c["other_detected"]), str(c["other_quiet"]), f"FPR {_f(ko['false_positive_rate'])}")
    console.print(t)
    t = Table(title="Planted edges: where the knockout peaks")
    for col in ("edge", "setting", "planted layers", "peak layer", "peak Δ log-odds", "inside"):
        t.add_column(col)
    for p in ko["peaks"]:
        t.add_row(p["edge"], p["setting"], f"{p['planted_layers'][0]}–{p['planted_layers'][-1]}", str(p["peak_layer"]),
                  f"{p['peak_mean']:+.2f}", "[green]yes[/]" if p["inside"] else "[red]no[/]")
    console.print(t)
    hd = report["heads"]
    n_planted = next(iter(hd["methods"].values()))["top_planted_count"]["n"]  # every kind of planted head
    t = Table(title=f"Head rankings against the {n_planted} planted heads")
    for col in ("method", "AUROC", f"top {hd['n_top']}: precision", f"top {n_planted}: recall", "planted heads' ranks"):
        t.add_column(col)
    for m, v in hd["methods"].items():
        name = f"{m} (best)" if m == hd["best_method"] else m
        t.add_row(name, _f(v["auroc"]), _f(v["top_fraction"]["precision"]), _f(v["top_planted_count"]["recall"]),
                  " ".join(f"{k}:{r}" for k, r in v["planted_ranks"].items()))
    console.print(t)
    console.print("findings: " + ", ".join(f"({k[0]}) {VERDICT_STYLE[V.verdict_of(f)]}" for k, f in report["findings"].items()))
    b = report["blocking"]
    pooled = b["mfr"].get("conflict")
    if pooled:
        console.print(f"blocking {len(b['heads'])} heads ({b['planted_among_them']} planted): MFR {pooled['before']:.3f} → "
                      f"{pooled['top']:.3f}; random sets {_f(pooled.get('random'))}")


def print_grid(console, results: dict) -> None:
    table = Table(title=f"grid: {results['command']} × {results['n_jobs']} jobs ({results['n_failed']} failed)")
    for col in ("job", "overrides", "status", "headline / error"):
        table.add_column(col, overflow="fold")
    for j in results["jobs"]:
        shown = j.get("error") or json.dumps(j.get("headline", {}))
        status = "[green]ok[/]" if j["status"] == "ok" else "[red]failed[/]"
        table.add_row(str(j["job"]), escape(" ".join(j["overrides"])), status, escape(shown))
    console.print(table)


def print_items(console, results: dict, title: str) -> None:
    table = Table(title=title)
    table.add_column("task")
    table.add_column("items", justify="right")
    for task, n in sorted(results["per_task"].items()):
        table.add_row(task, str(n))
    console.print(table)


_TABLES = {
    "build-data": print_items,
    "evaluate": lambda out, r, title: print_mfr(out, r["mfr"], title),
    "rank-heads": print_ranking,
    "ablate": print_blocking,
    "amplify": print_amplification,
}


def show(result: StageResult) -> None:
    """A finished stage's tables and files, as each command has always printed them."""
    if result.results is None:  # a rank that does not write
        return
    command, results, title, files = result.command, result.results, result.title, result.files
    if command == "analyze":
        print_findings(console, result.extra["findings"], title)
    elif command == "validate":
        print_validation(console, result.extra["validation"], title)
    elif command == "grid":
        print_grid(console, results)
    elif command in _TABLES:
        _TABLES[command](console, results, title)
    if command in ("ablate", "amplify") and result.extra.get("findings"):
        print_findings(console, result.extra["findings"], title)
    if command == "build-data":
        console.print(f"dataset: {files['dataset']}  (use: data=disk data.path={files['dataset']})")
    elif command == "rank-heads":
        console.print(f"heads: {files['heads']}  (use: mllm-arb ablate --from {result.path})")
    if command == "validate":
        console.print(f"validation: {files['validation']}")
    if "report" in files:
        console.print(f"report: {files['report']}")
    where = {"run": "pipeline run directory", "grid": "grid run directory", "build-data": None, "validate": None}
    label = where.get(command, "run directory")
    if label:
        console.print(f"{label}: {result.path}")
