"""`mllm-arb report`: one self-contained HTML page that tells the story of a study on one model, and a
page that puts several models side by side.

The page is a single file: figures are embedded as data URIs (the SVGs the runs wrote, or ones drawn
here), the style sheet and a few lines of script are inline, and a Content-Security-Policy forbids any
fetch, so it opens the same offline, from an e-mail or from a repository. Sections follow the study:
provenance, behaviour, information flow, components and anchor agreement, findings, heads, blocking,
amplification, controls. A section whose stage was not run says so and names the command that fills it.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..core import verdicts as V
from ..core.verdicts import verdict_of
from . import head_sections as hs
from . import page_figures as pf
from .page import (
    CONDITIONS,
    CONTROLS,
    SOURCE,
    Cell,
    Page,
    absent,
    na,
    badge,
    ci,
    esc,
    facts,
    footer,
    human,
    num,
    pct,
    table,
    write_page,
)
from .study import STAGES, StageRun, Study, finite, load_studies, load_study

REPORT_NAME = "report.html"
COMPARE_NAME = "compare.html"


# -------------------------------------------------------------------------------------- captions
def setting_words(setting: str) -> str:
    return human(setting) if setting in CONDITIONS else setting.replace("_", " ")


def caption_for(stem: str, run: StageRun) -> str:
    """One sentence saying what a run's figure shows, from its file name (the plot functions' names)."""
    r = run.results
    window = r.get("window")
    m = re.fullmatch(r"knockout_(.+)", stem)
    if m:
        setting = m.group(1)
        size = f"a {window}-layer window" if window else "a window of layers"
        return (f"Change in the log-odds of following the {SOURCE.get(setting, 'instructed source')} ({setting_words(setting)} "
                f"prompts) when attention from one token group to another is blocked in {size} centred on each layer, "
                "with 95% bootstrap bands; a dip below zero means the edge carries information the decision needs.")
    m = re.fullmatch(r"cumulative_(from|until)_(.+)", stem)
    if m:
        span, setting = m.groups()
        which = "in every layer from the one on the axis to the last" if span == "from" else "in every layer from the first up to the one on the axis"
        return (f"Change in the log-odds of following the {SOURCE.get(setting, 'instructed source')} ({setting_words(setting)} "
                f"prompts) when attention from one token group to another is blocked {which}, with 95% bootstrap bands: "
                "a read spread thinly over many layers shows here even where no single window moves it.")
    m = re.fullmatch(r"lens_(.+)", stem)
    if m:
        return (f"Logit-lens log-odds of the following answer over the competitor, read after each layer at the last "
                f"position and at the instruction tokens, for all, followed and failed {setting_words(m.group(1))} samples.")
    m = re.fullmatch(r"components_(.+)_(all|failed|followed)", stem)
    if m:
        setting, split = m.groups()
        entry = (((r.get("lens") or {}).get("components") or {}).get(setting) or {}).get("last", {}).get(split) or {}
        n = f", n={entry['n']}" if "n" in entry else ""
        which = {"all": "all", "failed": "failed (competitor-following)", "followed": "followed"}[split]
        return (f"How much each layer's attention and MLP push the last position toward the following answer rather than "
                f"the competitor, on {which} {setting_words(setting)} samples{n}.")
    m = re.fullmatch(r"saliency_(.+)", stem)
    if m:
        return (f"Attention saliency |A ⊙ ∂L/∂A| of each group pair per layer ({setting_words(m.group(1))} prompts; L: "
                "following log-odds at the last position), summed over heads and averaged over the pair's attention entries, "
                "with 95% bootstrap bands; higher means the decision is more sensitive to that attention.")
    if stem == "agreement":
        return ("Share of samples whose decision read by the logit lens at the instruction tokens agrees with the "
                "model's final answer, per layer and setting (dashed line: 95%).")
    return hs.caption(stem, run) or generic_caption(stem, run)


def generic_caption(stem: str, run: StageRun) -> str:
    return f"The {stem.replace('_', ' ')} figure of the {run.command} run."


# ----------------------------------------------------------------------------------- the sections
def provenance(study: Study) -> str:
    runs = study.ordered()
    first = runs[0]
    cfg = first.config
    data = cfg.get("data") or {}
    model_cfg = cfg.get("model") or {}
    man = first.manifest
    fps = sorted({str(r.manifest.get("dataset_fingerprint")) for r in runs if r.manifest.get("dataset_fingerprint")})
    shas = sorted({str(r.manifest.get("git_sha")) for r in runs if r.manifest.get("git_sha")})
    n_items = next((r.results.get("n_items") for r in runs if r.results.get("n_items")), None)
    if n_items is None and "evaluate" in study.stages:
        mfr = study.stages["evaluate"].results.get("mfr", {})
        n_items = max((e["mfr"]["n"] for k, e in mfr.items() if "/" not in k), default=None)
    data_desc = ", ".join(f"{k}={v}" for k, v in data.items() if v not in (None, "") and k != "families") or "n/a"
    if data.get("families"):
        data_desc += f", families={', '.join(map(str, data['families']))}"
    versions = man.get("versions") or {}
    parts = [
        ("model", f"<strong>{esc(study.model)}</strong>"),
        ("weights", f"<code>{esc(man.get('model_source') or model_cfg.get('path', 'n/a'))}</code>"),
        ("precision, device", esc(f"{model_cfg.get('dtype', 'n/a')}, {man.get('device', 'n/a')}" + (f" ({man['cuda']})" if man.get("cuda") else ""))
         + esc(f"; attention: {model_cfg['attn_implementation']}" if model_cfg.get("attn_implementation") else "")),
        ("layers", esc(study.n_layers) if study.n_layers else None),
        ("data", esc(data_desc)),
        ("items", esc(n_items) if n_items else None),
        ("model filter", item_filter(study)),
        ("dataset fingerprint", ", ".join(f"<code>{esc(f)}</code>" for f in fps) or "n/a"),
        ("seed", esc(cfg.get("seed", man.get("seed", "n/a")))),
        ("code", ", ".join(f"<code>{esc(s[:12])}</code>" for s in shas) or "n/a (not a git checkout)"),
        ("versions", esc(", ".join(f"{k} {v}" for k, v in versions.items()))),
        ("python, host", esc(f"{man.get('python', 'n/a')}, {man.get('host', 'n/a')}")),
    ]
    out = [facts(parts)]
    if len(fps) > 1:
        out.append('<p class="warn">The stages were run on different datasets (fingerprints differ): their numbers describe different items.</p>')
    if len(shas) > 1:
        out.append('<p class="warn">The stages were run from different code versions (git shas differ).</p>')
    rows = []
    for r in runs:
        timings = r.manifest.get("timings_s") or {}
        total = sum(v for v in timings.values() if finite(v))
        sha = str(r.manifest.get("git_sha") or "")
        sha_cell = Cell(f'<code class="nowrap">{esc(sha[:10])}</code>', sha) if sha else na("not recorded: the code was not run from a git checkout")
        rows.append([r.command, Cell(f"<code>{esc(shown_path(r, study))}</code>", str(r.path)), r.created.replace("T", " "),
                     sha_cell, r.manifest.get("config_hash", "n/a"),
                     r.manifest.get("dataset_fingerprint", "n/a"), Cell(esc(num(total, 1)), total, True)])
    out.append(table(["stage", "run directory", "started", "git sha", "config hash", "dataset", "time (s)"], rows,
                     caption="The stage runs this report is drawn from."))
    if study.parent is not None:
        out.append(f'<p class="muted">Chained by the <code>run</code> at <code>{esc(study.parent.path)}</code> '
                   "(the directories above are inside it).</p>")
    if study.superseded:
        older = ", ".join(f"<code>{esc(r.path)}</code>" for r in study.superseded)
        out.append(f'<p class="muted">Older runs of the same stages were given and left out (the latest of each stage is shown): {older}.</p>')
    for r in runs:
        cfg_file = r.path / "config.yaml"
        if cfg_file.exists():
            out.append(f"<details><summary>Composed configuration of the {esc(r.command)} run</summary><pre>{esc(cfg_file.read_text())}</pre></details>")
    return "".join(out)


def shown_path(run: StageRun, study: Study) -> str:
    """A stage run's directory, relative to its `run` parent when it lies inside it."""
    if study.parent is not None:
        try:
            return str(run.path.resolve().relative_to(study.parent.path.resolve()))
        except ValueError:
            pass
    return str(run.path)


def item_filter(study: Study) -> str | None:
    """What `build-data`'s per-model filter kept (items the model answers from the image alone and from the text alone)."""
    bd = study.get("build-data")
    f = (bd.results.get("filter") if bd else None) or {}
    if not f.get("n_total"):
        return None
    return esc(f"kept {f.get('n_kept')} of {f['n_total']} items that {f.get('model', 'the model')} answers correctly from the "
               "image alone and from the text alone")


def mfr_rows(mfr: Mapping[str, Mapping]) -> list[str]:
    keys = [k for k in CONDITIONS if k in mfr] + sorted(k for k in mfr if "/" not in k and k not in CONDITIONS)
    return keys


def behaviour(study: Study, page: Page) -> str:
    ev = study.get("evaluate")
    if ev is None:
        out = [absent("evaluate", "behavioural MFR with intervals")]
        an = study.get("analyze")
        if an is not None:
            rows = []
            for setting, edges in (an.results.get("knockout") or {}).items():
                pts = next(iter(edges.values()), [])
                if pts:
                    rows.append([human(setting), pts[0].get("n"), pts[0].get("mfr_before")])
            if rows:
                out.append("<p>The analyze run scored its own samples before any knockout:</p>")
                out.append(table(["condition", "n", "MFR"], rows, caption="MFR of the samples the analyze run used (no intervals)."))
        return "".join(out)
    mfr = ev.results.get("mfr") or {}
    keys = mfr_rows(mfr)
    fig_rows, rows = [], []
    has_gen = any("generation" in mfr[k] for k in keys)
    for k in keys:
        e = mfr[k]
        m, lo = e["mfr"], e.get("log_odds", {})
        label, measure, what = CONDITIONS.get(k, (k, "share following", ""))
        fig_rows.append((f"{label} ({measure})", m["mean"], m["ci_low"], m["ci_high"]))
        row = [Cell(f"{esc(label)}<br><span class='muted'>{esc(what)}</span>", label), measure, m["n"], m["mean"],
               Cell(esc(ci(m["ci_low"], m["ci_high"])), m["ci_low"]), lo.get("mean"), Cell(esc(ci(lo.get("ci_low"), lo.get("ci_high"), 2)), lo.get("ci_low"))]
        if has_gen:
            row.append(e.get("generation", {}).get("other"))
        rows.append(row)
    headers = ["condition", "measure", "n", "value", "95% CI", "mean log-odds", "95% CI (log-odds)"] + (["generation: other"] if has_gen else [])
    out = [f"<p>{behaviour_sentence(mfr)}</p>"]
    out.append(page.svg(pf.interval_dots(fig_rows, "share of samples (MFR; accuracy for the controls)"),
                        "Share of samples that follow the instructed source under conflict (MFR), the share that follows the text "
                        "without an instruction, and accuracy in the control conditions, each with its 95% bootstrap interval "
                        "(dashed line: chance).", "mfr", narrow=True))
    out.append(table(headers, rows, caption="Modality-following ratio per condition (log-odds: following vs competitor)."))
    per_task = [k for k in mfr if "/" in k]
    if per_task:
        trows = []
        for k in sorted(per_task):
            cond, task = k.split("/", 1)
            m = mfr[k]["mfr"]
            trows.append([human(cond), task, m["n"], m["mean"], Cell(esc(ci(m["ci_low"], m["ci_high"])), m["ci_low"])])
        out.append("<details><summary>Per task</summary>" + table(["condition", "task", "n", "value", "95% CI"], trows) + "</details>")
    return "".join(out)


def behaviour_sentence(mfr: Mapping) -> str:
    bits = []
    for k in ("text_following", "vision_following"):
        if k in mfr:
            m = mfr[k]["mfr"]
            bits.append(f"asked to trust the {SOURCE[k]}, the model does so in {pct(m['mean'])} of conflicts (95% CI {ci(m['ci_low'], m['ci_high'], 2)})")
    if "no_instruction" in mfr:
        bits.append(f"without an instruction it follows the text in {pct(mfr['no_instruction']['mfr']['mean'])}")
    if not bits:
        return "Behaviour per condition."
    s = "; ".join(bits) + "."
    return esc(s[0].upper() + s[1:])


def knockout_table(results: Mapping) -> str:
    rows = []
    for setting, edges in (results.get("knockout") or {}).items():
        for edge, pts in edges.items():
            if not pts:
                continue
            p = max(pts, key=lambda q: abs(q["mean"]) if finite(q["mean"]) else -1)
            where = f"{p['layers'][0]}–{p['layers'][1]}" if "layers" in p else "?"
            rows.append([human(setting), edge, Cell(esc(f"{p['center']} (layers {where})"), p["center"]), Cell(esc(num(p["mean"], 3, True)), p["mean"], True),
                         Cell(esc(ci(p["ci_low"], p["ci_high"])), p["ci_low"]), p.get("mfr_before"), p.get("mfr_after")])
    return table(["setting", "edge", "layer", "Δ log-odds", "95% CI", "MFR before", "MFR under knockout"], rows,
                 caption="The strongest knockout effect of each edge (the window centre where |Δ log-odds| is largest).")


def cumulative_table(results: Mapping) -> str:
    """Per setting and edge: blocking it in every layer, and the window that moves it most, side by side,
    so an edge read a little in many layers stands out."""
    rows = []
    for setting, edges in (results.get("cumulative") or {}).items():
        for edge, spans in edges.items():
            whole = next((p for p in spans.get("from", []) if p["layer"] == 0), None)
            window = max((results.get("knockout") or {}).get(setting, {}).get(edge) or [], key=lambda q: abs(q["mean"]), default=None)
            if whole is None:
                continue
            rows.append([human(setting), edge, Cell(esc(num(whole["mean"], 3, True)) + f" <span class='muted'>{esc(ci(whole['ci_low'], whole['ci_high'], 2))}</span>",
                                                    whole["mean"], True),
                         f"{num(whole['mfr_before'])} → {num(whole['mfr_after'])}",
                         Cell(esc(num(window["mean"], 3, True)), window["mean"]) if window else "n/a"])
    return table(["setting", "edge", "Δ log-odds, every layer blocked", "MFR", "strongest single window"], rows,
                 caption="Each edge blocked in every layer at once, beside the strongest single window.")


def plots_matching(run: StageRun, pattern: str) -> list[tuple[str, Path]]:
    rx = re.compile(pattern)
    return [(stem, p) for stem, p in run.plots.items() if rx.fullmatch(stem)]


def setting_order(stem: str) -> tuple:
    order = {"text_following": 0, "vision_following": 1}
    for k, v in order.items():
        if k in stem:
            return (v, stem)
    return (9, stem)


def flow(study: Study, page: Page) -> str:
    an = study.get("analyze")
    if an is None:
        return absent("analyze", "information-flow figures")
    r = an.results
    out = [f"<p>Attention knockout on {esc(len(r.get('knockout') or {}))} settings over {esc(r.get('n_layers', '?'))} layers "
           f"(window {esc(r.get('window', '?'))}), edges from one token group to another, on {esc(r.get('n_items', '?'))} items.</p>"]
    figs = sorted(plots_matching(an, r"knockout_.+"), key=lambda x: setting_order(x[0]))
    out.append('<div class="figs">' + "".join(page.file_figure(p, caption_for(s, an)) for s, p in figs) + "</div>")
    out.append(knockout_table(r))
    cumulative = sorted(plots_matching(an, r"cumulative_.+"), key=lambda x: setting_order(x[0]))
    if cumulative:
        out.append("<h3>Cumulative knockout</h3>")
        out.append('<div class="figs">' + "".join(page.file_figure(p, caption_for(s, an)) for s, p in cumulative) + "</div>")
        out.append(cumulative_table(r))
    lens = sorted(plots_matching(an, r"lens_.+"), key=lambda x: setting_order(x[0]))
    if lens:
        out.append("<h3>Logit lens</h3>")
        out.append('<div class="figs">' + "".join(page.file_figure(p, caption_for(s, an)) for s, p in lens) + "</div>")
    elif not r.get("lens"):
        out.append('<p class="muted">The logit lens was switched off in this run (<code>analysis.lens=false</code>).</p>')
    saliency = sorted(plots_matching(an, r"saliency_.+"), key=lambda x: setting_order(x[0]))
    if saliency:
        out.append("<h3>Attention saliency</h3>")
        out.append('<div class="figs">' + "".join(page.file_figure(p, caption_for(s, an)) for s, p in saliency) + "</div>")
    return "".join(out)


def components(study: Study, page: Page) -> str:
    an = study.get("analyze")
    if an is None:
        return absent("analyze", "component contributions or anchor agreement")
    lens = an.results.get("lens")
    if not lens:
        return '<p class="absent-note">The analyze run did not compute the logit lens (<code>analysis.lens=false</code>), so there are no component contributions or anchor agreement.</p>'
    figs = sorted(plots_matching(an, r"components_.+"), key=lambda x: (setting_order(x[0]), "failed" in x[0]))
    out = ['<div class="figs">' + "".join(page.file_figure(p, caption_for(s, an)) for s, p in figs) + "</div>"]
    if "agreement" in an.plots:
        out.append(page.file_figure(an.plots["agreement"], caption_for("agreement", an), narrow=True))
    agreement = lens.get("agreement") or {}
    if agreement:
        n = len(next(iter(agreement.values())))
        rows = [[layer] + [v[layer] if layer < len(v) else None for v in agreement.values()] for layer in range(n)]
        out.append("<details><summary>Anchor agreement per layer</summary>"
                   + table(["layer"] + [human(s) for s in agreement], rows) + "</details>")
    return "".join(out)


def finding_value(f: Mapping) -> str:
    v, (lo, hi) = f.get("value"), (f.get("interval") or [None, None])[:2]
    interval = f" <span class='muted'>{esc(ci(lo, hi, 3))}</span>" if finite(lo) and finite(hi) else ""
    if isinstance(v, Mapping):
        text = "<br>".join(f"{esc(k.replace('_difference', '').replace('_', ' '))}: {esc(num(x, 3, True))}"
                           + (interval if k == f.get("interval_of") else "") for k, x in v.items())
    else:
        text = esc(num(v, 3, True)) + interval
    for m in f.get("measured") or []:
        if isinstance(m, Mapping) and "edge" in m:
            text += f"<br><span class='muted'>{esc(m['edge'])}: {esc(num(m.get('peak_delta_log_odds'), 3, True))} at layer {esc(m.get('peak_layer'))}</span>"
    if f.get("note"):
        text += f"<br><span class='muted'>{esc(f['note'])}</span>"
    return text


def sort_value(f: Mapping) -> Any:
    v = f.get("value")
    if isinstance(v, Mapping):
        v = next((x for x in v.values() if finite(x)), None)
    return v if finite(v) else ""


def all_findings(study: Study) -> list[tuple[str, str, Mapping]]:
    out = []
    for stage in STAGES:
        run = study.get(stage)
        if run is None:
            continue
        for key, f in (run.findings or {}).items():
            if isinstance(f, Mapping) and "claim" in f:
                out.append((stage, key, f))
    return out + hs.derived_findings(study)


#: table sort order of the verdicts
VERDICT_ORDER = {V.HOLDS: 3, V.UNDECIDED: 2, V.FAILS: 1, V.UNCHECKED: 0}


def findings(study: Study) -> str:
    found = all_findings(study)
    if not found:
        return absent("analyze", "findings check")
    rows = []
    for stage, key, f in found:
        label = f"({key[0]}) " if re.match(r"[a-z]_", key) else ""
        rows.append([Cell(esc(label + f["claim"]), key), Cell(finding_value(f), sort_value(f), True),
                     f.get("threshold"), Cell(badge(verdict_of(f)), VERDICT_ORDER[verdict_of(f)]), stage])
    count = Counter(verdict_of(f) for _, _, f in found)
    parts = [f"{count[v]} {phrase}" for v, phrase in ((V.FAILS, "do not"), (V.UNDECIDED, "are undecided (the interval straddles the threshold)"),
                                                      (V.UNCHECKED, "cannot be checked on this run")) if count[v]]
    intro = f"<p>{count[V.HOLDS]} of {len(found)} claims of the reference study hold on this model"
    intro += (", " + ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + parts[-1] if parts else "") + ".</p>"
    notes = ('<p class="muted">A claim holds when the 95% bootstrap interval of its number lies wholly on the claim\'s side of the '
             "threshold, does not hold when it lies wholly on the other side, and is undecided when it straddles it. "
             "Thresholds come from <code>analysis.findings</code>: the deepest transfer window must fall below the negative "
             "threshold; every direct image window (and the whole-depth block) must stay within it; agreement must exceed it. "
             "Blocking and recovery compare the top heads' interval with the random sets'.</p>")
    return intro + table(["claim", "measured", "threshold", "verdict", "stage"], rows, caption="Each claim, the number that decides it, and whether it holds.") + notes


def controls(study: Study, page: Page) -> str:
    ev = study.get("evaluate")
    out = []
    if ev is None:
        out.append(absent("evaluate", "control accuracies (consistent context, image only, text only)"))
    else:
        mfr = ev.results.get("mfr") or {}
        rows = []
        for k in CONTROLS + ("no_instruction",):
            if k in mfr:
                m = mfr[k]["mfr"]
                rows.append([human(k), CONDITIONS[k][2], CONDITIONS[k][1], m["n"], m["mean"], Cell(esc(ci(m["ci_low"], m["ci_high"])), m["ci_low"])])
        if rows:
            acc = [mfr[k]["mfr"]["mean"] for k in CONTROLS if k in mfr]
            out.append(f"<p>The controls check that the model can read each source on its own (accuracy without conflict; lowest "
                       f"{pct(min(acc)) if acc else 'n/a'}), and what it does in a conflict when no instruction says whom to trust.</p>")
            out.append(table(["condition", "what it is", "measure", "n", "value", "95% CI"], rows, caption="Control conditions."))
        else:
            out.append('<p class="muted">The evaluate run scored no control condition (see <code>conditions</code>).</p>')
    out.append(hs.controls_under_edits(study))
    missing = [s for s in ("ablate", "amplify") if s not in study.stages]
    if missing:
        out.append(f'<p class="absent-note">Controls under {" and ".join(missing)} (unimodal and consistent-context accuracy '
                   "with the heads edited) appear when those stages are run.</p>")
    return "".join(out)


# ------------------------------------------------------------------------------------- the report
def stage_strip(study: Study) -> str:
    items = []
    unfinished = {r.command for r in study.unfinished}
    for s in STAGES[1:]:
        present = s in study.stages
        state = "present" if present else "unfinished" if s in unfinished else "absent"
        items.append(f'<li class="{state}" data-stage="{esc(s)}">{esc(s)}: {"run" if present else state.replace("absent", "not run")}</li>')
    return f'<ul class="stages" aria-label="Stages">{"".join(items)}</ul>'


def render_report(study: Study) -> str:
    page = Page(f"Modality arbitration in {study.model}")
    page.add("provenance", "Model, data and configuration", provenance(study))
    page.add("behaviour", "Behaviour", behaviour(study, page))
    page.add("flow", "Information flow", flow(study, page))
    page.add("components", "Component contributions and anchor agreement", components(study, page))
    page.add("findings", "Findings", findings(study))
    page.add("heads", "Heads", hs.heads(study, page, generic_caption))
    page.add("blocking", "Blocking", hs.blocking(study, page, generic_caption))
    page.add("amplification", "Amplification", hs.amplification(study, page, generic_caption))
    page.add("controls", "Controls", controls(study, page))
    checked = validation_of(study)
    if checked is not None:
        page.add("validation", "Validation against the ground truth", validation(checked))
    missing = [s for s in study.missing]
    lead = ("How this model decides between the image and a conflicting text context when an instruction names the "
            "source to trust: behaviour, where the information flows, which heads carry it, and what editing them does.")
    absent_line = (f'<p class="note">Stages not run: {", ".join(f"<code>{esc(s)}</code>" for s in missing)}; their sections say so.</p>'
                   if missing else "")
    unfinished = "".join(
        f'<p class="warn">The {esc(r.command)} run <code>{esc(r.path)}</code> is unfinished (no results.json: interrupted, or '
        f"still running) and is not read here; continue it with <code>mllm-arb {esc(r.command)} --resume {esc(r.path)}</code>.</p>"
        for r in study.unfinished)
    intro = f'<p class="sub">{esc(lead)}</p>{stage_strip(study)}{absent_line}{unfinished}'
    return page.render(intro, footer(study_paths(study)))


def validation_of(study: Study) -> Mapping | None:
    """validation.json of the study's `validate` parent, if the study is one."""
    if study.parent is None:
        return None
    found = study.parent.extra.get("validation")
    return found if isinstance(found, Mapping) else None


def validation(v: Mapping) -> str:
    """What `mllm-arb validate` measured: each analysis scored against the route the model was trained to use."""
    ko, hd, gt = v["knockout"], v["heads"], v["ground_truth"]
    c = ko["confusion"]
    heads = lambda hs_: ", ".join(f"L{l}H{h}" for l, h in hs_)  # noqa: E731
    relay = f", relay head{'s' if len(gt.get('relay_heads') or []) > 1 else ''} {esc(heads(gt['relay_heads']))} (within the " \
            "instruction, the same layers)" if gt.get("relay_heads") else ""
    out = [f"<p>The model ships a ground truth: transfer heads {esc(heads(gt['transfer_heads']))} (layers "
           f"{gt['shallow_layers'][0]}–{gt['shallow_layers'][-1]}){relay}, arbitration heads {esc(heads(gt['arbitration_heads']))} "
           "(the later layers). Each analysis below is scored against it.</p>"]
    out.append(table(["", "detected", "not detected", "rate"], [
        ["planted", c["planted_detected"], c["planted_missed"], f"true-positive rate {num(ko['true_positive_rate'])}"],
        ["not planted", c["other_detected"], c["other_quiet"], f"false-positive rate {num(ko['false_positive_rate'])}"],
    ], caption=f"Knockout cells (setting × edge × window): detected when the 95% interval excludes 0 and |mean Δ log-odds| ≥ "
               f"{ko['min_effect']}.", sortable=False))
    out.append(table(["edge", "setting", "planted layers", "peak layer", "peak Δ log-odds", "inside"], [
        [p["edge"], p["setting"], f"{p['planted_layers'][0]}–{p['planted_layers'][-1]}", p["peak_layer"], num(p["peak_mean"], 2, True),
         badge(p["inside"])] for p in ko["peaks"]
    ], caption="Where each planted edge's knockout peaks."))
    rows = []
    for m, s in hd["methods"].items():
        name = f"{m} (recovers best)" if m == hd["best_method"] else m
        rows.append([name, num(s["auroc"]), num(s["top_fraction"]["precision"]), num(s["top_planted_count"]["recall"]),
                     " ".join(f"{k}: {r}" for k, r in s["planted_ranks"].items())])
    n_planted = next(iter(hd["methods"].values()))["top_planted_count"]["n"]  # every kind of planted head
    out.append(table(["method", "AUROC", f"precision of the top {hd['n_top']}", f"recall of the top {n_planted}", "planted heads' ranks"],
                     rows, caption="Each ranking method against the planted heads."))
    verdicts = ", ".join(f"({k[0]}) {verdict_of(f)}" for k, f in v["findings"].items())
    out.append(f"<p>The study's findings on this model: {esc(verdicts)}.</p>")
    b = v["blocking"]
    pooled = b["mfr"].get("conflict")
    if pooled:
        out.append(f"<p>Blocking the {len(b['heads'])} selected heads ({b['planted_among_them']} of them planted) moves MFR from "
                   f"{num(pooled['before'])} to {num(pooled['top'])}; random sets of the same size: {num(pooled.get('random'))}.</p>")
    return "".join(out)


def study_paths(study: Study) -> list[Path]:
    return [r.path for r in study.stages.values()]


def write_report(paths: Sequence[Path], out: Path | None = None) -> Path:
    """Render the study of one model and write it (default: `report.html` in its run directory)."""
    study = load_study([Path(p) for p in paths])
    return write_page(Path(out) if out else study.home / REPORT_NAME, render_report(study))


# ------------------------------------------------------------------------------------ comparison
def compare_models(studies: Sequence[Study]) -> str:
    rows = []
    for s in studies:
        runs = s.ordered()
        fp = ", ".join(sorted({str(r.manifest.get("dataset_fingerprint")) for r in runs if r.manifest.get("dataset_fingerprint")})) or "n/a"
        src = next((r.manifest.get("model_source") for r in runs if r.manifest.get("model_source")), "n/a")
        rows.append([s.model, Cell(f"<code>{esc(src)}</code>", str(src)), s.n_layers, fp,
                     ", ".join(k for k in STAGES if k in s.stages), ", ".join(s.missing) or "none",
                     Cell("<br>".join(f"<code>{esc(r.path)}</code>" for r in runs), "")])
    out = [table(["model", "weights", "layers", "dataset", "stages run", "stages absent", "run directories"], rows,
                 caption="The models compared and the runs each is drawn from.")]
    fps = {r.manifest.get("dataset_fingerprint") for s in studies for r in s.stages.values() if r.manifest.get("dataset_fingerprint")}
    if len(fps) > 1:
        out.append('<p class="warn">The models were evaluated on different datasets (fingerprints differ); compare their numbers with care.</p>')
    return "".join(out)


def compare_behaviour(studies: Sequence[Study], page: Page) -> str:
    have = [s for s in studies if s.get("evaluate")]
    if not have:
        return '<p class="absent-note" data-absent="evaluate">No model has an <code>evaluate</code> run: there is no behaviour to compare.</p>'
    keys = [k for k in CONDITIONS if any(k in s.stages["evaluate"].results.get("mfr", {}) for s in have)]
    rows, fig_rows = [], []
    for k in keys:
        row = [Cell(esc(f"{human(k)} ({CONDITIONS[k][1]})"), k)]
        for s in have:
            e = s.stages["evaluate"].results["mfr"].get(k)
            if e is None:
                row.append(Cell("n/a"))
                continue
            m = e["mfr"]
            row.append(Cell(f"{esc(num(m['mean']))} <span class='muted'>{esc(ci(m['ci_low'], m['ci_high'], 2))}</span>", m["mean"], True))
            fig_rows.append((f"{s.model}: {human(k)}", m["mean"], m["ci_low"], m["ci_high"]))
    out = [page.svg(pf.interval_dots(fig_rows, "share of samples (MFR; accuracy for the controls)", groups=[s.model for s in have]),
                    "MFR under conflict and accuracy in the controls for each model, with 95% bootstrap intervals (dashed line: chance).",
                    "compare_mfr", narrow=True)]
    out.append(table(["condition"] + [s.model for s in have], rows, caption="Value and 95% interval per model."))
    missing = [s.model for s in studies if s not in have]
    if missing:
        out.append(f'<p class="absent-note">No evaluate run for {esc(", ".join(missing))}.</p>')
    return "".join(out)


def compare_findings(studies: Sequence[Study]) -> str:
    claims: dict[str, str] = {}
    per: dict[str, dict[str, Mapping]] = {}
    for s in studies:
        per[s.model] = {}
        for _, key, f in all_findings(s):
            claims.setdefault(key, f["claim"])
            per[s.model][key] = f
    if not claims:
        return '<p class="absent-note" data-absent="analyze">No model has a findings check (an <code>analyze</code> run).</p>'
    rows = []
    for key, claim in claims.items():
        label = f"({key[0]}) " if re.match(r"[a-z]_", key) else ""
        row = [Cell(esc(label + claim), key)]
        for s in studies:
            f = per[s.model].get(key)
            row.append(Cell(f"{badge(verdict_of(f))}<br>{finding_value(f)}", sort_value(f), True) if f else Cell("not run", ""))
        rows.append(row)
    return table(["claim"] + [s.model for s in studies], rows, caption="Each claim of the reference study, per model: verdict and the number that decides it.")


def compare_knockout(studies: Sequence[Study], page: Page) -> str:
    have = [s for s in studies if s.get("analyze") and s.stages["analyze"].results.get("knockout")]
    if not have:
        return '<p class="absent-note" data-absent="analyze">No model has an <code>analyze</code> run: there are no knockout curves to compare.</p>'
    out = []
    settings = [k for k in CONDITIONS if any(k in s.stages["analyze"].results["knockout"] for s in have)]
    for setting in settings:
        per_model = {}
        edges: list[str] = []
        for s in have:
            r = s.stages["analyze"].results
            curves = r["knockout"].get(setting)
            if not curves:
                continue
            per_model[s.model] = (int(r.get("n_layers") or 1), curves)
            edges += [e for e in curves if e not in edges]
        if not per_model:
            continue
        svg = pf.knockout_by_depth(per_model, edges, f"Attention knockout, {human(setting)}")
        out.append(page.svg(svg, f"Change in the log-odds of following the {SOURCE.get(setting, 'instructed source')} under attention "
                                 f"knockout of each edge ({human(setting)} prompts), against relative depth (layer / number of layers) "
                                 "so that models of different depth line up, one line and 95% band per model.", f"compare_knockout_{setting}"))
    missing = [s.model for s in studies if s not in have]
    if missing:
        out.append(f'<p class="absent-note">No analyze run for {esc(", ".join(missing))}.</p>')
    return "".join(out)


def render_compare(studies: Sequence[Study]) -> str:
    names = ", ".join(s.model for s in studies)
    page = Page(f"Modality arbitration across models: {names}")
    page.add("models", "Models", compare_models(studies))
    page.add("behaviour", "Behaviour", compare_behaviour(studies, page))
    page.add("findings", "Findings side by side", compare_findings(studies))
    page.add("knockout", "Knockout by relative depth", compare_knockout(studies, page))
    page.add("blocking", "Blocking", hs.compare_blocking(studies, page))
    page.add("amplification", "Amplification", hs.compare_amplification(studies, page))
    intro = ('<p class="sub">The same study on several models: behaviour, the reference study\'s claims, and knockout curves '
             "on a shared relative-depth axis.</p>")
    return page.render(intro, footer([r.path for s in studies for r in s.stages.values()]))


def write_compare(paths: Sequence[Path], out: Path | None = None) -> Path:
    """Render a comparison of the models among the runs given (default: `compare.html` here)."""
    studies = load_studies([Path(p) for p in paths])
    return write_page(Path(out) if out else Path(COMPARE_NAME), render_compare(studies))
