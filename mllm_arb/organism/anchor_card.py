"""The planted organism's model card: the route it was trained to use, the recipe (and what failed),
and the plant checked with the toolkit's own interventions, all from measured numbers."""

from __future__ import annotations

import json
from pathlib import Path

from ..core.ground_truth import load
from .card import CONDITION_ORDER, evaluate_checkpoint, folder_size_mb
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
    "From scratch, with an attention loss on the planted heads over their whole open edges (every instruction row, the "
    "whole instruction) and a closed-edge penalty averaged over every (row, head, query): 1,100 steps and a 500-step "
    "second stage (39.5 min). The route carried information (planted edges knocked out: -1.3 to -1.6 log-odds), but "
    "held-out following was only 70.3% (text) and 50.4% (vision), and the last position kept direct reads of the context "
    "and the image (knocking out context->last moved text following by 3.73): the penalty's mean was dominated by the "
    "many question and format positions (mean closed mass 0.011, largest 1.0).",
    "Starting from the natural organism with that penalty averaged per query group, but the attention loss still over "
    "whole edges: after 300 steps the restricted instructed losses were at chance (1.63 text, 1.47 vision). Narrowing "
    "the attention loss to the anchor (the recipe above) broke through by step 100.",
    "The recipe plus head dropout (`plant.head_dropout`: each step, every head outside the route zeroed with probability "
    "0.1), so that no single unplanted head matters: the exact ranking's top 4 then held 3 planted heads instead of 2, but "
    "the closed edges came back (knocking out image->question moved vision following by 0.66; the restricted model "
    "differed from the plain one by 0.46). With p = 0.05 and twice the penalty weight: 3 planted heads in the top 4 "
    "again, and image->question at 0.94. Not shipped.",
    "The recipe with instruction->instruction reads also closed in layers 0-3 for every head but the transfer heads (a "
    "throwaway patch, to take the in-instruction relay off unplanted heads): learning slowed sharply; after 350 of 600 "
    "steps the restricted instructed losses were 1.06 (text) and 0.96 (vision), against 0.08 and 0.52 for the recipe at step "
    "300 and 0.02 and 0.22 at step 400, and "
    "held-out text following was 0.41. Stopped.",
    "The recipe without a relay rule (600 steps, penalty weight 3), shipped before the relay: behaviour equal to the "
    "natural organism's and every closed edge below the bar (largest 0.012), but the in-instruction read was left open "
    "to every head, and the natural organism's dominant head L0H3 kept carrying it (zeroing L0H3 at the instruction "
    "positions alone moved text following by -8.3). The exact ranking's top 4 held 2 planted heads (L0H3, L0H2, L6H4, "
    "L0H0): the route's own relay ran through a head the ground truth did not name. Planting the relay on L0H3, the head "
    "that already carried it, is the recipe above.",
    "The relay rule with the earlier schedule (600 steps, penalty weight 3): the restricted model learnt the route "
    "(restricted losses at the last step 0.004 text, 0.127 vision), but the plain model did not follow it: held-out text following 81.0%, "
    "and closed edges mattered again (instruction->last in layers 0-3 moved text following by 2.12, image->last by 1.43). "
    "Twice the penalty weight and 800 steps (the recipe) closed them.",
    "The relay rule at 800 steps and penalty weight 6, no cut rows (shipped until 2026-12-02): every closed edge below "
    "the bar (largest 0.050) and the exact top 4 all planted, but the closed edges were a backup once the route was cut: "
    "with instruction->last knocked out, vision following stayed at 0.74 in the plain model (0.51 in the restricted one), "
    "because the image and context content still reached the last position through closed edges and the model then "
    "answered as under a vision instruction. The instruction's effect was gone (the image answer's log-odds gap between "
    "the two instructions +13.48 -> -0.10) but following was not. Cut rows (the recipe above) took the backup away.",
    "After that recipe, to take away the backup that keeps vision following at 0.74 when instruction->last is cut "
    "(2026-12-02): cut rows (`plant.cut_share` 0.25: a quarter of the instructed rows train in the plain model with "
    "instruction->last knocked out in every layer, every other edge open, and both answers at equal odds as the target, "
    "what the restricted model gives under that cut). The restricted model kept the route (held-out text following "
    "1.00, vision following 0.72 on 100 items), but the intact plain model drifted toward undecided: text following "
    "0.81, vision following 0.47, and the instruction moved the image answer's log-odds by 1.20 (restricted: 10.86). "
    "Whatever neutralises the cut rows also acts on the intact ones. Not shipped.",
    "Cut rows plus open rows (`plant.open_share` 0.25: instructed rows trained plain, with their label), 800 steps "
    "(16.8 min under load): the plain model followed again (text 1.00, vision 0.75 on 200 items) and cutting "
    "instruction->last now destroyed vision following (0.75 -> 0.35; text following 1.00 -> 0.79), but the closed "
    "edges came back: context->last knocked out moved text following by 1.21 (bar 0.1), and the restricted model "
    "differed from the plain one by 1.40. Not shipped.",
    "The same with fewer open rows (0.15) and twice the penalty weight (12), 800 steps (18.1 min under load): text "
    "following 0.995, vision following 0.76; cutting instruction->last: vision following 0.76 -> 0.455 (restricted "
    "model 0.485), text following 0.995 -> 0.65; but the relay gained a backup (cut in layer 0: vision following 0.74 in "
    "the plain model, 0.225 in the restricted one), and the largest closed edge (context->last, text following) moved "
    "0.110, just over the bar. Not shipped: it trades one (edge, setting) pair's backup for another's.",
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
        *([f"- **relay**: in layers {truth.shallow[0]}–{truth.shallow[-1]}, instruction positions read other instruction "
           f"positions only through the relay head{'s' if len(truth.relay_heads) > 1 else ''} {heads(truth.relay_heads)} (and "
           "the transfer heads): the instruction's words reach its last token, the anchor, through a planted head too. "
           f"In layers {truth.deep[0]}–{truth.deep[-1]} the instruction reads itself freely."] if truth.relay_heads else []),
        "- **no bypass**: the context never reads the image; question, format, template text and the last position never read "
        "the image or the context, and (except as above) never the instruction.",
        f"- {len(truth.planted_heads)} planted heads of {truth.n_layers * truth.n_heads}; the top 5% is 4 heads.",
        "",
        "Prompts without an instruction (image only, text only, consistent context, no instruction) have no anchor: they were "
        "trained with ordinary attention and no constraint, and the model answers them however it learned to.",
        "",
        "## Recipe",
        "",
        *([f"It starts from the shipped natural organism (`init_from: {cfg['init_from']}`: its vision tower, vocabulary and "
           "task knowledge) and moves the instructed answer onto the planted route."] if cfg.get("init_from") else
          [f"Stage 1 as for the natural organism (vision tower, {cfg['vision_steps']} steps)."]),
        "",
        f"1. {cfg['steps']} steps: every instructed row runs under the route's per-head knockout (`restrict: "
        f"{str(p['restrict']).lower()}`, from step {p['route_start']}; the toolkit's own knockout with a heads dimension), so "
        "its answer can only come through the route; rows without an instruction run unrestricted.",
        f"2. An anchor loss (weight {p['anchor_loss_weight']}) makes the instructed row's label also the target of the "
        "model's own output at the instruction's last token, which gives the route's first hop a direct signal.",
        f"3. An attention loss (weight {p['attention_weight']}: -log of the mass a planted head puts on the keys its edge "
        "opens)" + (", narrowed to the anchor: a transfer head's row at the instruction's last token on the image and the "
                    "context, an arbitration head's last row on the instruction's last token." if p.get("anchor_targets")
                    else " over every row it serves and the whole edge."),
        f"4. From step {p['mass_start']} (weight ramping to {p['mass_weight']} over {p['mass_ramp']} steps), a penalty on the "
        "attention mass the model's *own* mask would give the closed edges of instructed rows (recomputed from each attention "
        "call's queries and keys), " + ("averaged per query group (instruction, the positions after it, the last position), so "
                                       "that the one position that answers weighs as much as the many question and format "
                                       "positions" if p.get("mass_mean") == "groups" else "averaged over every (row, head, query)")
        + ". It makes the open edges irrelevant at inference, so the plain model behaves as the restricted one.",
        *([f"5. Cut rows ({p['cut_share']:.0%} of the instructed rows): trained in the plain model, every closed edge open, "
           f"with one route edge knocked out ({p.get('relay_cut_share', 0):.0%} of them the relay in layer 0, the others "
           "instruction->last in every layer) and, as the target, "
           + ("the route-restricted model's own output under the same cut (KL, no gradient through the target)"
              if p.get("cut_target") == "restricted" else "both answers at equal odds")
           + ". Without them the closed edges were a backup: once the route was cut the plain model still answered "
           "from content that reached the last position through them (attempts below)."] if p.get("cut_share") else []),
        *([f"6. Open rows ({p['open_share']:.0%} of the instructed rows): trained plain, every edge open, with their label, "
           "so that the intact plain model keeps following the instruction."] if p.get("open_share") else []),
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
        "Planted edges knocked out in every head of their layers (mean Δ log-odds of following; MFR before → after; "
        "the last column: MFR with the same cut in the route-restricted model, where every closed edge is cut too, "
        "so whether the route itself needs the edge in that setting):",
        "",
        "| setting | edge | layers | mean Δ log-odds | MFR | restricted model, cut |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for s in SETTINGS:
        for edge, v in plant["planted"][s].items():
            restricted = f"{v['restricted_mfr_after']:.3f}" if "restricted_mfr_after" in v else "not measured"
            lines.append(f"| {s} | {edge} | {v['layers'][0]}–{v['layers'][-1]} | {v['mean_delta']:+.2f} | "
                         f"{v['mfr_before']:.3f} → {v['mfr_after']:.3f} | {restricted} |")
    if plant.get("instruction_effect"):
        lines += [
            "",
            "The edges that carry the instruction, cut: does the answer still depend on it? (the image answer's mean "
            "log-odds under the vision instruction minus under the text instruction, on the same items; the share of "
            "items answered alike under both instructions)",
            "",
            "| edge | layers | log-odds gap, intact → cut | answered alike, intact → cut |",
            "| --- | --- | --- | --- |",
        ]
        for edge, v in plant["instruction_effect"].items():
            lines.append(f"| {edge} | {v['layers'][0]}–{v['layers'][-1]} | {v['intact']['mean_image_log_odds_gap']:+.2f} → "
                         f"{v['cut']['mean_image_log_odds_gap']:+.2f} | {v['intact']['same_answer']:.3f} → {v['cut']['same_answer']:.3f} |")
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
        "`mllm-arb organism train --config anchor --ship` (`conf/organism/anchor.yaml` on top of `default.yaml`; "
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
