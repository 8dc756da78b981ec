"""The report's head sections, read from the `rank-heads`, `ablate` and `amplify` run directories
(`mllm_arb/pipeline/heads/` writes them): the score heatmaps and the top-k list, blocking against
random and lowest-ranked heads with its dose-response, amplification recovery and harm against α, the
controls under both edits, and their comparison across models."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from ..core.heads_file import attention_heads
from ..core.names import POOLED
from ..core.verdicts import blocking_finding, recovery_finding
from . import page_figures as pf
from .page import Cell, Page, absent, ci, esc, human, na, num, pct, table
from .study import StageRun, Study, finite

METHOD_WORDS = {
    "ablation": "exact ablation (the drop in following log-odds when the head is removed)",
    "attribution": "attribution patching (that drop predicted from one forward and one backward pass)",
    "hybrid": "hybrid (that drop measured at the last position, predicted by attribution patching elsewhere)",
    "verified": "verified hybrid (the hybrid estimate, with the exact drop for the heads it ranks highest)",
    "dla": "direct logit attribution (what the head writes onto following − competitor at the last position)",
}


def cond_name(c: str) -> str:
    return "conflict (settings pooled)" if c == POOLED else human(c)


#: why a cell has no value, by design
NO_RANDOM = "random head sets are drawn for the settings only"
NO_FAILED = "no failed sample to recover"
NO_FOLLOWED = "no sample followed before"


def interval(e: Mapping | None, digits: int = 3, why: str | None = None) -> Cell:
    """`mean [low, high]` of a summary entry, sorted by the mean; without a value, `why` it has none
    (when that is by design) or "n/a"."""
    if not e or not finite(e.get("mean")):
        return na(why) if why else Cell("n/a", "")
    lo, hi = e.get("ci_low"), e.get("ci_high")
    shown = esc(num(e["mean"], digits)) + (f" <span class='muted'>{esc(ci(lo, hi, 2))}</span>" if finite(lo) and finite(hi) else "")
    return Cell(shown, e["mean"], True)


def score(x: Any) -> Cell:
    """A head score: three significant digits (scores of small models are tiny), sorted by value."""
    return Cell(esc(f"{x:+.3g}"), x, True) if finite(x) else Cell("n/a", "")


def head_label(l: int, h: int) -> str:
    return f"{l}.{h}"


def heads_list(heads: Sequence[Sequence[int]], limit: int = 24) -> str:
    shown = ", ".join(head_label(*h) for h in heads[:limit])
    return shown + (f", … ({len(heads)} in all)" if len(heads) > limit else "")


# ------------------------------------------------------------------------------------- captions
def caption(stem: str, run: StageRun) -> str | None:
    r = run.results
    n = r.get("n_selected")
    m = re.fullmatch(r"scores_(.+)", stem)
    if m:
        method = m.group(1)
        boxed = f", with the {n} selected heads boxed" if n and method == r.get("rank_method") else ""
        return (f"Score of every attention head (layer × head) by {METHOD_WORDS.get(method, method)}, per setting and pooled"
                f"{boxed}; red heads push toward the following answer.")
    if stem == "method_agreement":
        return (f"Each head's pooled score by the other ranking methods against its {r.get('rank_method', 'reference')} score "
                "(dashed: equal), showing whether the cheaper methods rank heads the same way.")
    if stem == "blocking":
        return (f"MFR (settings) and accuracy (controls) before and after blocking the top {n} heads, against random sets of "
                f"{n} heads (mean, with the spread of single sets) and the {n} lowest-ranked heads.")
    if stem == "dose_response":
        return ("MFR and mean following log-odds as a growing share of heads is blocked, for the top-ranked, the "
                "lowest-ranked and random heads (band: spread of random sets), per setting and pooled.")
    if stem == "amplification":
        return (f"Recovery (share of failed samples that follow once the top {n} heads are scaled by α) and harm (share of "
                "following samples that flip) against α, per setting and pooled, with random head sets at the best α.")
    return None


def figures(page: Page, run: StageRun, first: Sequence[str], fallback) -> str:
    order = list(dict.fromkeys(s for s in first if s in run.plots)) + sorted(s for s in run.plots if s not in first)
    if not order:
        return ""
    return '<div class="figs">' + "".join(page.file_figure(run.plots[s], caption(s, run) or fallback(s, run)) for s in order) + "</div>"


# ------------------------------------------------------------------------------------------ heads
def heads(study: Study, page: Page, fallback) -> str:
    rk = study.get("rank-heads")
    if rk is None:
        out = [absent("rank-heads", "head heatmaps or top-k list")]
        for stage in ("ablate", "amplify"):
            run = study.get(stage)
            if run is not None and run.results.get("heads"):
                out.append(f"<p>The {esc(stage)} run edited these {len(run.results['heads'])} heads (layer.head), ranked by "
                           f"{esc(run.results.get('rank_method') or 'a given heads file')}: {esc(heads_list(run.results['heads']))}.</p>")
                break
        return "".join(out)
    r = rk.results
    n, n_layers, n_heads = r.get("n_selected", 0), r.get("n_layers", 0), r.get("n_heads", 0)
    total = n_attention_heads(r)
    scores = r.get("scores") or {}
    methods = list(scores)
    rank_method = r.get("rank_method", methods[0] if methods else "?")
    layers = f"{n_layers} layers × {n_heads} heads"
    if r.get("layers_without_heads"):
        layers = (f"{n_layers - len(r['layers_without_heads'])} attention layers × {n_heads} heads; layers "
                  f"{', '.join(map(str, r['layers_without_heads']))} mix by linear attention and have none")
    out = [f"<p>Every one of the {total} attention heads ({esc(layers)}) was scored on "
           f"{esc(r.get('n_rank_items', '?'))} ranking items (a split kept apart from the items the sweeps measure on) by "
           f"{esc('; '.join(METHOD_WORDS.get(m, m) for m in methods))}. Heads are ranked by <strong>{esc(rank_method)}</strong> "
           f"({esc(r.get('rank_by', 'pooled'))}), and the top {n} ({pct(n / total) if total else 'n/a'}) are selected: "
           f"{esc(heads_list(r.get('heads') or []))}.</p>"]
    out.append(figures(page, rk, [f"scores_{rank_method}", *(f"scores_{m}" for m in methods), "method_agreement"], fallback))
    top = (r.get("top") or {}).get(rank_method) or []
    if top:
        ranked = scores.get(rank_method, {})
        settings = [s for s in ranked if s != "pooled"]
        others = [m for m in methods if m != rank_method]
        rows = []
        for i, e in enumerate(top):
            l, h = e["layer"], e["head"]
            row = [i + 1, Cell(esc(head_label(l, h)), l * 10_000 + h), Cell("yes" if i < n else "no", int(i < n)), score(e["score"])]
            row += [score(_at(ranked.get(s), l, h)) for s in settings]
            row += [score(_at(scores[m].get("pooled"), l, h)) for m in others]
            rows.append(row)
        headers = ["rank", "head (layer.head)", "selected", f"{rank_method} (pooled)"]
        headers += [f"{rank_method}: {human(s)}" for s in settings] + [f"{m} (pooled)" for m in others]
        out.append(table(headers, rows, caption=f"The highest-ranked heads by {rank_method}: the top-k list (scores: Δ following log-odds)."))
    agreement = r.get("agreement") or {}
    if agreement:
        rows = [[pair.replace("~", " vs "), a.get("spearman"), Cell(esc(f"{a.get('top_overlap')} of {a.get('n_top')}"), a.get("top_overlap"), True)]
                for pair, a in agreement.items()]
        out.append(table(["methods", "Spearman rank correlation", "top-k overlap"], rows, caption="Agreement between the ranking methods over all heads."))
    return "".join(out)


def _at(matrix, l: int, h: int) -> Any:
    try:
        return matrix[l][h]
    except (TypeError, IndexError, KeyError):
        return None


# --------------------------------------------------------------------------------------- blocking
def blocking(study: Study, page: Page, fallback) -> str:
    ab = study.get("ablate")
    if ab is None:
        return absent("ablate", "blocking dose–response against random heads")
    r = ab.results
    b = r.get("blocking") or {}
    n = r.get("n_selected", "?")
    out = [f"<p>{blocking_sentence(r)}</p>"]
    out.append(figures(page, ab, ["blocking", "dose_response"], fallback))
    rows = []
    for cond, e in b.items():
        top, rnd, bottom = e.get("top") or {}, e.get("random") or {}, e.get("bottom") or {}
        sep = e.get("separation") or {}
        clears = any((sep.get(m) or {}).get("separated") for m in ("mfr", "log_odds")) if sep else None
        no_random = NO_RANDOM if e.get("kind") == "control" else None if rnd else "no random head sets to compare with"
        rows.append([Cell(esc(cond_name(cond)), cond), "setting" if e.get("kind") == "setting" else "control", e.get("n"),
                     interval((e.get("before") or {}).get("mfr")), interval(top.get("mfr")), interval(rnd.get("mfr"), why=no_random),
                     interval(bottom.get("mfr")), top.get("relative_mfr_drop"), interval((top.get("change") or {}).get("log_odds")),
                     Cell("yes" if clears else "no", int(clears)) if clears is not None else na(no_random) if no_random else Cell("", -1)])
    if rows:
        out.append(table(["condition", "kind", "n", "before", f"top {n} blocked", f"random {n} (mean over sets)", f"bottom {n}",
                          "relative MFR drop", "Δ log-odds (top)", "top clears random"], rows,
                         caption="MFR (settings) or accuracy (controls) with 95% intervals; “clears” means the top set's interval "
                                 "lies below the random sets' (MFR or log-odds)."))
    out.append(interactions_table(r.get("interactions") or {}, amplify=False))
    dose = r.get("dose") or {}
    if dose:
        drows = []
        for cond, pts in dose.items():
            for p in pts:
                drows.append([cond_name(cond), Cell(esc(f"{100 * p['k']:g}%"), p["k"], True), p.get("n_heads"),
                              (p.get("before") or {}).get("mfr"), interval((p.get("top") or {}).get("mfr")),
                              _spread((p.get("random") or {}).get("mfr")), interval((p.get("bottom") or {}).get("mfr"))])
        out.append("<details><summary>Dose–response table</summary>"
                   + table(["condition", "heads blocked", "n heads", "MFR before", "top", "random (spread of sets)", "bottom"], drows)
                   + "</details>")
    return "".join(out)


def _spread(e: Mapping | None, why: str | None = None) -> Cell:
    if not e or not finite(e.get("mean")):
        return na(why) if why else Cell("n/a", "")
    lo, hi = e.get("spread_low"), e.get("spread_high")
    return Cell(esc(num(e["mean"])) + (f" <span class='muted'>{esc(ci(lo, hi, 2))}</span>" if finite(lo) and finite(hi) else ""), e["mean"], True)


def n_attention_heads(r: Mapping) -> int:
    """A head stage's count of attention heads (none in the layers without heads: linear attention)."""
    return len(attention_heads(r.get("n_layers") or 0, r.get("n_heads") or 0, r.get("layers_without_heads") or ()))


def blocking_sentence(r: Mapping) -> str:
    e = (r.get("blocking") or {}).get(POOLED)
    n = r.get("n_selected", "?")
    total = n_attention_heads(r)
    what = (f"Blocking the top {n} heads ({pct(n / total) if total and finite(n) else '?'} of {total}; {r.get('ablation', '?')} "
            f"ablation at {r.get('positions', '?')} positions) on {r.get('n_eval_items', '?')} evaluation items")
    if not e:
        return esc(what + ".")
    before, top = e["before"]["mfr"]["mean"], (e.get("top") or {}).get("mfr", {}).get("mean")
    s = f"{what} moves the MFR of conflict samples from {num(before)} to {num(top)}"
    rel = (e.get("top") or {}).get("relative_mfr_drop")
    if finite(rel):
        s += f" (a {pct(rel)} relative drop)"
    rnd = (e.get("random") or {}).get("mfr")
    if rnd and finite(rnd.get("mean")):
        s += f"; {rnd.get('n_seeds', '')} random sets of {n} heads give {num(rnd['mean'])} {ci(rnd.get('ci_low'), rnd.get('ci_high'), 2)}"
    bottom = (e.get("bottom") or {}).get("mfr")
    if bottom and finite(bottom.get("mean")):
        s += f", the {n} lowest-ranked heads {num(bottom['mean'])}"
    return esc(s + ".")


# ---------------------------------------------------------------------------------- amplification
def amplification(study: Study, page: Page, fallback) -> str:
    am = study.get("amplify")
    if am is None:
        return absent("amplify", "amplification recovery and harm against α")
    r = am.results
    amp = r.get("amplification") or {}
    out = [f"<p>{amplification_sentence(r)}</p>"]
    out.append(figures(page, am, ["amplification"], fallback))
    best = amp.get("best_alpha")
    rows = []
    counts = {}
    for e in amp.get("per_alpha") or []:
        for cond, s in (e.get("settings") or {}).items():
            no_failed = NO_FAILED if s.get("n_failed") == 0 else None
            counts[cond] = (s.get("n_failed"), s.get("n_followed"))
            rows.append([Cell(esc(f"{e['alpha']:g}" + (" (best)" if e["alpha"] == best else "")), e["alpha"], True), cond_name(cond),
                         s.get("n_failed"), interval(s.get("recovery"), why=no_failed), s.get("n_followed"),
                         interval(s.get("harm"), why=NO_FOLLOWED if s.get("n_followed") == 0 else None),
                         interval(s.get("mfr_after")), interval(s.get("failed_log_odds_change"), why=no_failed)])
    per_set = na("random sets are summarised by recovery and harm only (mean and spread over sets)")
    for cond, rnd in (amp.get("random_at_best_alpha") or {}).items():
        if rnd.get("alpha") is not None:
            n_failed, n_followed = counts.get(cond, (None, None))  # the same evaluation samples as the top set's rows
            rows.append([Cell(esc(f"{rnd['alpha']:g} (random sets)"), rnd["alpha"], True), cond_name(cond), n_failed,
                         _spread(rnd.get("recovery"), why=NO_FAILED if n_failed == 0 else None), n_followed,
                         _spread(rnd.get("harm"), why=NO_FOLLOWED if n_followed == 0 else None), per_set, per_set])
    if rows:
        out.append(table(["α", "condition", "failed", "recovery", "following", "harm", "MFR after", "Δ log-odds (failed)"], rows,
                         caption="Per α and condition, with 95% intervals (random sets: mean and spread over sets)."))
    out.append(interactions_table({e["alpha"]: e["interactions"] for e in amp.get("per_alpha") or [] if e.get("interactions")},
                                  amplify=True))
    return "".join(out)


def interactions_table(interactions: Mapping, amplify: bool) -> str:
    """Per head of the set (settings pooled): its effect alone, the set's without it, and its marginal
    effect, so a head that carries the set, or a companion that cancels it, is visible. Blocking: one
    {condition: [heads]} mapping; amplification: {α: {condition: [heads]}}."""
    per_alpha = interactions if amplify else {None: interactions}
    rows = []
    for alpha, by_cond in per_alpha.items():
        for e in by_cond.get(POOLED) or []:
            name = f"L{e['head'][0]}H{e['head'][1]}"
            first = [Cell(esc(name), name)] + ([Cell(esc(f"{alpha:g}"), alpha, True)] if amplify else [])
            if amplify:
                rows.append(first + [interval(e["alone"].get("recovery")), interval(e["without"].get("recovery")),
                                     interval(e["marginal"]["mfr"]), interval(e["marginal"]["log_odds"])])
            else:
                rows.append(first + [interval(e["alone"]["change"]["mfr"]), interval(e["without"]["change"]["mfr"]),
                                     interval(e["marginal"]["mfr"]), interval(e["marginal"]["log_odds"])])
    if not rows:
        return ""
    what = "recovery" if amplify else "MFR change"
    caption = (("Each head of the set amplified alone and the set amplified without it, at every α: recovery of failed "
                "conflict samples; marginal: the whole set minus the set without the head, paired per sample (following on "
                "failed samples, log-odds on all). A negative marginal marks a head that cancels its companions.")
               if amplify else
               ("Each head of the set blocked alone and the set blocked without it: change in conflict MFR; marginal: the whole "
                "set minus the set without the head, paired per sample. Negative: blocking the head on top of the others "
                "lowers following further (it carries following); near zero: its companions cover for it; positive: blocking "
                "it gives following back (it works against them)."))
    headers = ["head"] + (["α"] if amplify else []) + [f"{what}, alone", f"{what}, set without it", "marginal (following)",
                                                       "marginal (log-odds)"]
    return "<h3>Each head of the set: alone and left out</h3>" + table(headers, rows, caption=caption)


def amplification_sentence(r: Mapping) -> str:
    amp = r.get("amplification") or {}
    n = r.get("n_selected", "?")
    best = amp.get("best_alpha")
    alphas = ", ".join(f"{e['alpha']:g}" for e in amp.get("per_alpha") or [])
    s = f"Scaling the outputs of the top {n} heads by α ∈ {{{alphas}}} on {r.get('n_eval_items', '?')} evaluation items"
    at = next((e for e in amp.get("per_alpha") or [] if e["alpha"] == best), None)
    pooled = (at or {}).get("settings", {}).get(POOLED)
    if not pooled:
        return esc(s + ".")
    rec, harm = pooled["recovery"], pooled["harm"]
    s += (f": at the best α = {best:g}, {pct(rec.get('mean'))} of the {pooled['n_failed']} failed conflict samples now follow "
          f"(95% CI {ci(rec.get('ci_low'), rec.get('ci_high'), 2)}), and {pct(harm.get('mean'))} of the {pooled['n_followed']} "
          "samples that followed flip")
    rnd = (amp.get("random_at_best_alpha") or {}).get(POOLED)
    if rnd and finite((rnd.get("recovery") or {}).get("mean")):
        s += f"; random sets of {n} heads at that α recover {pct(rnd['recovery']['mean'])}"
    return esc(s + ".")


# --------------------------------------------------------------------------------------- controls
def controls_under_edits(study: Study) -> str:
    out = []
    ab = study.get("ablate")
    if ab is not None:
        r = ab.results
        n = r.get("n_selected", "?")
        rows = []
        for cond, e in (r.get("blocking") or {}).items():
            if e.get("kind") != "control":
                continue
            before = (e.get("before") or {}).get("mfr") or {}
            top = (e.get("top") or {}).get("mfr") or {}
            change = top.get("mean") - before.get("mean") if finite(top.get("mean")) and finite(before.get("mean")) else None
            rows.append([human(cond), interval(before), interval(top), Cell(esc(num(change, 3, True)), change, True) if change is not None else None,
                         interval(((e.get("random") or {}).get("mfr")), why=NO_RANDOM),
                         interval(((e.get("bottom") or {}).get("mfr")))])
        if rows:
            out.append(f"<h3>Under blocking (top {esc(n)} heads)</h3>")
            out.append(table(["control", "accuracy before", "top blocked", "change", "random sets", "bottom"], rows,
                             caption="General ability with the arbitration heads blocked: it should barely move."))
        else:
            out.append('<p class="muted">The ablate run measured no control condition (<code>sweep.controls</code>).</p>')
    am = study.get("amplify")
    if am is not None:
        amp = am.results.get("amplification") or {}
        per_alpha = amp.get("per_alpha") or []
        conds = [c for e in per_alpha[:1] for c in (e.get("controls") or {})]
        if conds:
            rows = []
            for c in conds:
                row = [human(c), per_alpha[0]["controls"][c].get("before")]
                for e in per_alpha:
                    v = (e.get("controls") or {}).get(c) or {}
                    row.append(interval(v.get("after")))
                rows.append(row)
            out.append(f"<h3>Under amplification (top {esc(am.results.get('n_selected', '?'))} heads)</h3>")
            out.append(table(["control", "accuracy before"] + [f"α = {e['alpha']:g}" for e in per_alpha], rows,
                             caption="General ability with the arbitration heads amplified, per α."))
        else:
            out.append('<p class="muted">The amplify run measured no control condition (<code>sweep.controls</code>).</p>')
    return "".join(out)


# --------------------------------------------------------------------------------------- findings
def derived_findings(study: Study) -> list[tuple[str, str, dict]]:
    """The study's head claims, read off the sweeps' own comparisons when those runs wrote no findings.json
    (runs made before ablate and amplify wrote one): (e) blocking the top heads hurts more than random
    heads; (f) amplifying them recovers more."""
    out = []
    ab = study.get("ablate")
    if ab is not None and not ab.findings:
        e = blocking_finding((ab.results.get("blocking") or {}).get(POOLED))
        if e:
            out.append(("ablate", "e_blocking_beats_random", e))
    am = study.get("amplify")
    if am is not None and not am.findings:
        amp = am.results.get("amplification") or {}
        at = next((e for e in amp.get("per_alpha") or [] if e["alpha"] == amp.get("best_alpha")), None)
        f = recovery_finding((at or {}).get("settings", {}).get(POOLED), (amp.get("random_at_best_alpha") or {}).get(POOLED))
        if f:
            out.append(("amplify", "f_amplification_recovers", f))
    return out


# ------------------------------------------------------------------------------------- comparison
def compare_blocking(studies: Sequence[Study], page: Page) -> str:
    have = [s for s in studies if s.get("ablate") and (s.stages["ablate"].results.get("blocking") or {}).get(POOLED)]
    if not have:
        return _none("ablate", "blocking effects")
    rows, dose = [], {}
    for s in have:
        r = s.stages["ablate"].results
        e = r["blocking"][POOLED]
        top, rnd, bottom = e.get("top") or {}, e.get("random") or {}, e.get("bottom") or {}
        sep = e.get("separation") or {}
        clears = any((sep.get(m) or {}).get("separated") for m in ("mfr", "log_odds"))
        rows.append([s.model, Cell(esc(f"{r.get('n_selected')} ({pct(r.get('fraction_selected'))})"), r.get("n_selected"), True),
                     interval(e["before"]["mfr"]), interval(top.get("mfr")), interval(rnd.get("mfr")), interval(bottom.get("mfr")),
                     top.get("relative_mfr_drop"), Cell("yes" if clears else "no", int(clears))])
        pts = (r.get("dose") or {}).get(POOLED) or []
        if pts:
            dose[s.model] = pts
    out = []
    if dose:
        out.append(page.svg(pf.dose_by_model(dose), "MFR of conflict samples as a growing share of heads is blocked, per model: the "
                            "top-ranked heads (solid) against random heads of the same number (dashed).", "compare_dose", narrow=True))
    out.append(table(["model", "heads blocked", "MFR before", "top blocked", "random", "bottom", "relative MFR drop", "top clears random"],
                     rows, caption="Blocking the top heads, conflict samples pooled (95% intervals)."))
    return out_with_missing(out, studies, have, "ablate")


def compare_amplification(studies: Sequence[Study], page: Page) -> str:
    have = [s for s in studies if s.get("amplify") and (s.stages["amplify"].results.get("amplification") or {}).get("per_alpha")]
    if not have:
        return _none("amplify", "amplification effects")
    rows, curves = [], {}
    for s in have:
        r = s.stages["amplify"].results
        amp = r["amplification"]
        best = amp.get("best_alpha")
        at = next((e for e in amp["per_alpha"] if e["alpha"] == best), amp["per_alpha"][0])
        pooled = at["settings"].get(POOLED) or {}
        rnd = ((amp.get("random_at_best_alpha") or {}).get(POOLED) or {}).get("recovery")
        rows.append([s.model, r.get("n_selected"), best, pooled.get("n_failed"), interval(pooled.get("recovery")),
                     interval(pooled.get("harm")), _spread(rnd)])
        curves[s.model] = [(e["alpha"], e["settings"].get(POOLED) or {}) for e in amp["per_alpha"]]
    out = [page.svg(pf.alpha_by_model(curves), "Recovery of failed conflict samples (left) and harm to samples that already "
                    "followed (right) as the top heads are scaled by α, one line and 95% band per model.", "compare_amplification")]
    out.append(table(["model", "heads", "best α", "failed", "recovery at best α", "harm at best α", "random recovery"], rows,
                     caption="Amplifying the top heads, conflict samples pooled."))
    return out_with_missing(out, studies, have, "amplify")


def _none(stage: str, what: str) -> str:
    return (f'<p class="absent-note" data-absent="{esc(stage)}">No model has a <code>{esc(stage)}</code> run, so there are no '
            f"{esc(what)} to compare. Run <code>mllm-arb {esc(stage)}</code> (or <code>mllm-arb run</code>) on each model.</p>")


def out_with_missing(out: list[str], studies, have, stage: str) -> str:
    missing = [s.model for s in studies if s not in have]
    if missing:
        out.append(f'<p class="absent-note">No {esc(stage)} run for {esc(", ".join(missing))}.</p>')
    return "".join(out)
