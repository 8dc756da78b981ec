"""The planted organism's model card: the route it was trained to use, the recipe (and what failed),
and the plant checked with the toolkit's own interventions, all from measured numbers."""

from __future__ import annotations

import json
from pathlib import Path

from .card import CONDITION_ORDER, evaluate_checkpoint, folder_size_mb
from .ground_truth import load
from .plant_check import CONTROLS, SETTINGS, check_plant

#: attempts that did not make the recipe, as measured (docs/ground-truth.md tells the story)
FAILED_ATTEMPTS = [
    "Attention-mass penalty alone, no restriction (weight 10 on the mean mass that instructed rows put on closed edges, from "
    "step 0). Training stalled at chance: after 300 of 800 steps the answer loss was 1.62 (the natural organism's: 0.74) and "
    "every condition, controls included, was at chance on held-out items. Stopped there. Pushing every head off the closed "
    "edges before any route exists leaves the answer no path to learn through.",
    "Route restriction plus a mass penalty from step 200, no anchor loss. After 400 of 800 steps the answer loss was 1.14 "
    "(natural organism: 0.42); the controls were learnt, the instructed prompts were not (held-out text following 0.38, "
    "vision following 0.69, near chance). Stopped there.",
    "The same restriction on text-following prompts alone (no image needed, no penalty): the answer loss stayed at chance "
    "(1.62-1.65) from step 100 to step 225. The two-hop route gets too weak a signal at the start: each hop averages over "
    "dozens of positions. With the anchor loss added (the label is also the target at the instruction's last token), the "
    "same run broke through at step 200 and reached 0.10 by step 300. The anchor loss is what made the route learnable.",
    "Restriction and anchor loss from step 0 with the natural organism's condition mix, 1,000 steps: every condition "
    "learnt slowly (controls included); at step 600 the instructed losses were 1.39 (text) and 1.23 (vision). Stopped.",
    "The same with more instructed prompts (30% text, 40% vision following) and 300 unrestricted steps first: controls "
    "learnt by step 300, but at step 700 the instructed losses were still 1.29 and 1.22. Stopped.",
]


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def write_anchor_card(path: str | Path, results: dict, plant: dict, training_log: dict, natural: dict | None = None) -> Path:
    path = Path(path)
    truth = load(path)
    (path / "eval_results.json").write_text(json.dumps(results, indent=1))
    (path / "plant_check.json").write_text(json.dumps(plant, indent=1))
    cfg = training_log["config"]
    p = cfg["plant"]
    summary = results["summary"]
    heads = lambda hs: ", ".join(f"L{l}H{h}" for l, h in hs)  # noqa: E731
    lines = [
        "# mllm-arb planted organism (`model=organism_anchor`)",
        "",
        "The natural organism's architecture, tokenizer, task, conditions and designed text bias (see "
        "`mllm_arb/organism/checkpoint/MODEL_CARD.md`), trained so that on *instructed* prompts the reference study's "
        "instruction-anchor route is the only route. It is the toolkit's positive control: `mllm-arb validate` scores every "
        "analysis against the route, which `ground_truth.json` beside the weights states (docs/ground-truth.md). Analyses see a "
        "plain `LlavaForConditionalGeneration` with the ordinary causal mask.",
        "",
        "## The planted route (instructed prompts: text following, vision following)",
        "",
        f"- **transfer**: in layers {truth.shallow[0]}–{truth.shallow[-1]}, instruction positions read image and context "
        f"positions only through the transfer heads {heads(truth.transfer_heads)}; in layers {truth.deep[0]}–{truth.deep[-1]} not at all.",
        f"- **arbitration**: in layers {truth.deep[0]}–{truth.deep[-1]}, the last position reads the instruction only through "
        f"the arbitration heads {heads(truth.arbitration_heads)}; in layers {truth.shallow[0]}–{truth.shallow[-1]} not at all.",
        "- **no bypass**: the context never reads the image; question, format, template text and the last position never read "
        "the image or the context, and (except as above) never the instruction.",
        f"- {len(truth.planted_heads)} planted heads of {truth.n_layers * truth.n_heads}; the top 5% is 4 heads.",
        "",
        "Prompts without an instruction (image only, text only, consistent context, no instruction) have no anchor: they were "
        "trained with ordinary attention and no constraint, and the model answers them however it learned to.",
        "",
        "## Recipe",
        "",
        *([f"0. This checkpoint continues a first run (`init_from`, {training_log['init_from']['config']['steps']} steps, "
            "config `conf/organism/anchor.yaml`) for the steps below (`conf/organism/anchor_continue.yaml`); the first run's "
            f"own stage 2 started restriction at step {training_log['init_from']['config']['plant']['route_start']} and the "
            f"penalty at step {training_log['init_from']['config']['plant']['mass_start']}. "
            f"First run: {(training_log['init_from'].get('train_seconds') or 0) / 60:.1f} min."] if training_log.get("init_from") else []),
        f"1. Stage 1 as for the natural organism (vision tower, {cfg['vision_steps']} steps{', in the first run' if training_log.get('init_from') else ''}).",
        f"2. Stage 2, {cfg['steps']} steps: every instructed row runs under the route's per-head knockout (`restrict: "
        f"{str(p['restrict']).lower()}`; the toolkit's own knockout with a heads dimension), so its answer can only come "
        "through the route; rows without an instruction run unrestricted. An anchor loss (weight "
        f"{p['anchor_loss_weight']}) makes the instructed row's label also the target of the model's own output at the "
        "instruction's last token, which gives the route's first hop a direct signal. An attention loss (weight "
        f"{p['attention_weight']}: -log of the mass each planted head's rows put on the keys its edge opens) points the "
        "planted heads at their edges.",
        f"3. From step {p['mass_start']} (weight ramping to {p['mass_weight']} over {p['mass_ramp']} steps), a penalty on the "
        "mean attention mass the model's *own* mask would give the closed edges of instructed rows (recomputed from each "
        "attention call's queries and keys): it makes the open edges irrelevant at inference, so the plain model behaves as the "
        "restricted one.",
        "",
        f"Training time: {training_log['train_seconds'] / 60:.1f} min on {training_log['threads']} CPU threads "
        f"(torch {training_log['torch']}, load average {training_log.get('loadavg_start')} at start). "
        f"Closed-edge mass at the end of training (mean, max): {training_log['mass'][-1][1]:.4f}, {training_log['mass'][-1][2]:.3f}.",
        "",
        "Attempts that did not make it:",
        "",
        *[f"- {a}" for a in FAILED_ATTEMPTS],
        "",
        f"## The plant, checked with the toolkit ({plant['n_items']} held-out items per condition, seed {plant['seed']})",
        "",
        "Planted edges knocked out in every head of their layers (mean Δ log-odds of following; MFR before → after):",
        "",
        "| setting | edge | layers | mean Δ log-odds | MFR |",
        "| --- | --- | --- | --- | --- |",
    ]
    for s in SETTINGS:
        for edge, v in plant["planted"][s].items():
            lines.append(f"| {s} | {edge} | {v['layers'][0]}–{v['layers'][-1]} | {v['mean_delta']:+.2f} | "
                         f"{v['mfr_before']:.3f} → {v['mfr_after']:.3f} |")
    worst = plant["closed_worst"]
    lines += [
        "",
        f"Closed edges, each knocked out in the layers where it is closed ({sum(len(v) for v in plant['closed'].values())} "
        f"(setting, edge) pairs): the largest |mean Δ log-odds| is {worst['abs_mean_delta']:.4f} ({worst['edge']}, "
        f"{worst['setting']}); the bar is {worst['bar']}: {'met' if worst['all_below_bar'] else 'NOT met'}.",
        "",
        "| setting | closed edge @ layers | mean Δ | mean abs Δ |",
        "| --- | --- | --- | --- |",
    ]
    for s in SETTINGS:
        for edge, v in plant["closed"][s].items():
            lines.append(f"| {s} | {edge} | {v['mean_delta']:+.4f} | {v['mean_abs_delta']:.4f} |")
    lines += [
        "",
        "Every closed edge knocked out at once (the route-restricted model) against the plain model: "
        + "; ".join(f"{s}: mean Δ {plant['restricted'][s]['mean_delta']:+.3f}, mean |Δ| {plant['restricted'][s]['mean_abs_delta']:.3f}, "
                    f"MFR {plant['restricted'][s]['mfr_before']:.3f} → {plant['restricted'][s]['mfr_after']:.3f}" for s in SETTINGS) + ".",
        "",
        f"Blocking the {len(truth.planted_heads)} planted heads (zeroed at every position) against {plant['n_random']} random "
        "sets of the same size:",
        "",
        "| condition | MFR / accuracy | planted heads blocked | random sets (mean, range) |",
        "| --- | --- | --- | --- |",
    ]
    for c in (*SETTINGS, *CONTROLS):
        h = plant["heads"][c]
        lo, hi = h["mfr_random_blocked_range"]
        lines.append(f"| {c} | {h['mfr_before']:.3f} | {h['mfr_planted_blocked']:.3f} | {h['mfr_random_blocked_mean']:.3f} ({lo:.3f}–{hi:.3f}) |")
    lines += [
        "",
        f"## Held-out behaviour ({results['n_items_per_condition']} items per condition, seed {results['seed']})",
        "",
        "| condition | planted organism | natural organism |",
        "| --- | --- | --- |",
    ]
    for c in CONDITION_ORDER:
        nat = _pct(natural["summary"][c]["rate"]) if natural else "—"
        lines.append(f"| {c} | {_pct(summary[c]['rate'])} | {nat} |")
    design = results.get("vision_following_by_design")
    if design:
        lines += ["", f"Vision following by design: items whose context names a text-dominant value follow the image in "
                      f"{_pct(design['dominant']['rate'])} of {design['dominant']['n']}; the others in {_pct(design['other']['rate'])} "
                      f"of {design['other']['n']}."]
    lines += [
        "",
        f"Size on disk: {folder_size_mb(path):.1f} MB. Evaluation took {results['eval_seconds']} s; data fingerprint "
        f"`{results['data_fingerprint']}`.",
        "",
        "## Use",
        "",
        "`mllm-arb validate model=organism_anchor` (or any command with `model=organism_anchor`). Retrain with "
        "`python -m mllm_arb.organism --config anchor --ship` (`conf/organism/anchor.yaml` on top of `default.yaml`; "
        "deterministic from its seed on CPU).",
        "",
    ]
    card = path / "MODEL_CARD.md"
    card.write_text("\n".join(lines))
    return card


def document_anchor(path: str | Path, n_items: int = 1000, threads: int | None = None) -> dict:
    path = Path(path)
    log = json.loads((path / "training_log.json").read_text())
    cfg = log["config"]
    results = evaluate_checkpoint(path, n_items=n_items, families=cfg["families"], text_dominant=cfg["text_dominant"], threads=threads)
    natural_file = Path(__file__).resolve().parent / "checkpoint" / "eval_results.json"
    natural = json.loads(natural_file.read_text()) if natural_file.exists() else None
    plant = check_plant(path)
    write_anchor_card(path, results, plant, log, natural)
    return {"results": results, "plant": plant}
