"""`mllm-arb plan COMMAND`: what a command would compute, counted before anything runs.

The model is built from its config.json on the meta device (no weights) with its real processor, so
every batch has the token count and token groups a run would see; its adapter counts passes instead of
running them (`models/ledger.py`). Each stage's own functions then run as in the stage itself (batching,
the knockout sweep, the head scan, the arms, with the fast paths' scheduling, stacking and chunking by
memory), once with the fast paths and once without, so the counts are the run's by construction
(`tests/pipeline/test_plan.py` holds them to a real run's, counted with hooks).

What the counting cannot know is stated with the plan: scores are zeros, so the ranking that selects
heads is a tie broken by head order (the selected set then includes the first layer with heads, so every
arm resumes from there: the most a run can cost). Ranking methods that need gradients or the heads' outputs
(attribution, hybrid, verified, dla), attention saliency and generated tokens are not planned yet.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch
from omegaconf import DictConfig

from ...core.errors import UserError
from ...core.prompt import render_all
from ...core.records import parse_conditions
from ...core.scoring import batches
from ...data.sources import build_items
from ...interventions.prefix import _sizes
from ...models.adapter import ModelAdapter
from ...models.ledger import Ledger
from ...models.loading import planning_adapter
from ...models.scoring import score_samples
from ..analyze.flow import knockout_rows, lens_rows
from ..analyze.stage import analysis_edges, analysis_samples, knockout_plan
from ..heads.arms import ablate_arms, amplify_arms, applicable_arms, arm_log_odds, random_amplification_arms, split_preps
from ..heads.methods import PairedBatches, Removal, ablation_scores, by_head, method_scores, prepare
from ..heads.stage import ranking_from, setup

#: what `plan` covers, and the stages each command runs
COMMANDS = {
    "evaluate": ("evaluate",),
    "analyze": ("analyze",),
    "rank-heads": ("rank-heads",),
    "ablate": ("ablate",),
    "amplify": ("amplify",),
    "run": ("evaluate", "analyze", "rank-heads", "ablate", "amplify"),
}
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "auto": 2}
ASSUMPTIONS = [
    "scores are not computed: the selected heads are a tie broken by head order, so they include layer 0 and every "
    "head-set arm resumes from the first layer (an upper bound on what a run computes)",
]


def check_plannable(cfg: DictConfig, command: str) -> None:
    """One line for what the counting cannot plan yet, before anything is built."""
    if command not in COMMANDS:
        raise UserError(f"plan covers {', '.join(COMMANDS)}; not {command!r}")
    stages = COMMANDS[command]
    if "evaluate" in stages and cfg.scoring.generate_tokens:
        raise UserError("plan does not count generated tokens yet: set scoring.generate_tokens=0")
    if "analyze" in stages and cfg.analysis.saliency:
        raise UserError("plan does not count attention saliency (gradients) yet: set analysis.saliency=false")
    if any(s in stages for s in ("rank-heads", "ablate", "amplify")):
        methods = set(cfg.sweep.methods) | {cfg.sweep.rank_method} if "rank-heads" in stages else {cfg.sweep.rank_method}
        other = sorted(m for m in methods if m != "ablation")
        if other and not cfg.sweep.heads_file:
            raise UserError(f"plan counts the exact ranking (ablation) only; not {', '.join(other)} yet")
        if cfg.sweep.ablation == "mean":
            raise UserError("plan does not count mean ablation's head means yet: set sweep.ablation=zero")


def _both(adapter: ModelAdapter, work: Callable[[bool], None]) -> dict:
    """The counts of `work(fast)` with the fast paths and without."""
    out = {}
    for fast in (True, False):
        adapter.ledger = Ledger()
        work(fast)
        out["fast" if fast else "straightforward"] = adapter.ledger.summary()
    return out


def _tokens(adapter: ModelAdapter, samples, batch_size: int) -> dict:
    lengths, widths, images = [], [], []
    for chunk in batches(samples, batch_size):
        batch = adapter.build_batch(chunk)
        mask = batch.inputs.get("attention_mask")
        lengths += [int(m.sum()) for m in mask] if mask is not None else [batch.inputs["input_ids"].shape[1]] * len(chunk)
        widths.append(int(batch.inputs["input_ids"].shape[1]))
        images += [len(sp.get("image", [])) for sp in batch.spans]
    return {"per_sample_min": min(lengths), "per_sample_median": statistics.median(lengths), "per_sample_max": max(lengths),
            "image_tokens_max": max(images), "longest_batch": max(widths)}


def plan_evaluate(cfg: DictConfig, adapter: ModelAdapter) -> dict:
    items, _ = build_items(cfg.data)
    samples = render_all(items, parse_conditions(cfg.conditions, "conditions"), **cfg.templates)
    counts = _both(adapter, lambda fast: score_samples(adapter, samples, cfg.batch_size))
    return {"samples": len(samples), "tokens": _tokens(adapter, samples, cfg.batch_size), **counts}


def plan_analyze(cfg: DictConfig, adapter: ModelAdapter) -> dict:
    a = cfg.analysis
    _, _, _, samples = analysis_samples(cfg)
    plan = knockout_plan(cfg, analysis_edges(cfg), adapter.parts.n_layers, adapter.parts.linear)

    def work(fast: bool) -> None:
        for unit in batches(samples, cfg.batch_size):  # the stage's units: one batch each
            knockout_rows(adapter, unit, plan, cfg.batch_size, fast=fast)
            if a.lens:
                lens_rows(adapter, unit, cfg.batch_size)

    return {"samples": len(samples), "tokens": _tokens(adapter, samples, cfg.batch_size), **_both(adapter, work)}


def _scores(adapter: ModelAdapter, prep, method: str, removal: Removal, fast: bool, pairs: PairedBatches | None = None):
    return method_scores(adapter, [prep], method, removal, pairs=pairs) if fast else ablation_scores(adapter, [prep], removal, fast=False)


def _pairs(preps, sweep, fast: bool) -> PairedBatches | None:
    """The stage's pairing of batches of the same items (`sweep.share_prefix`), a fast path."""
    return PairedBatches(preps, sweep.share_prefix) if fast else None


def _head_set(cfg: DictConfig, adapter: ModelAdapter, study, removal: Removal, fast: bool, count: bool):
    """The head set a head stage uses: its file's, or the ranking by `sweep.rank_method` that the stage
    computes itself (counted when `count`; inside `run`, rank-heads computed it before)."""
    if study.head_set is not None:
        return study.head_set
    method = study.sweep.rank_method
    preps = prepare(adapter, study.rank_samples(), cfg.batch_size)
    if count:
        pairs = _pairs(preps, study.sweep, fast)
        scores = torch.cat([_scores(adapter, p, method, removal, fast, pairs) for p in preps])
    else:
        scores = by_head(torch.zeros(sum(len(p.batch) for p in preps), study.total), adapter.parts)
    return ranking_from(study, preps, removal, {method: scores}).head_set


def plan_heads(cfg: DictConfig, adapter: ModelAdapter, stage: str, ranked: bool = False) -> dict:
    """rank-heads, ablate or amplify, unit by unit as the stage runs them; `ranked`: the heads come from
    the rank-heads stage before (`run`)."""
    study = setup(cfg, adapter=adapter)
    sweep = study.sweep
    removal = Removal("zero", sweep.positions)

    def work(fast: bool) -> None:
        if stage == "rank-heads":
            preps = prepare(adapter, study.rank_samples(), cfg.batch_size)
            for method in sweep.methods:
                pairs = _pairs(preps, sweep, fast)
                for p in preps:
                    _scores(adapter, p, method, removal, fast, pairs)
            return
        head_set = _head_set(cfg, adapter, study, removal, fast, count=not ranked)
        n = study.n_used(head_set)
        eval_preps = prepare(adapter, study.eval_samples(), cfg.batch_size)
        settings, _ = split_preps(eval_preps, sweep.settings)
        if stage == "ablate":
            sweeps = [(eval_preps, ablate_arms(head_set, n, sweep, cfg.seed), True)]
        else:  # the second sweep's α is the best one measured; the count does not depend on which
            sweeps = [(eval_preps, amplify_arms(head_set, n, sweep), True),
                      (settings, random_amplification_arms(head_set, n, max(sweep.alphas), sweep.n_random, cfg.seed), False)]
        for units, unit_arms, plain in sweeps:
            pairs = _pairs(units, sweep, fast)
            for p in units:
                applicable = applicable_arms(unit_arms, any(p is q for q in settings))
                arm_log_odds(adapter, p, [unit_arms[a] for a in applicable], removal, fast=fast, plain=plain, pairs=pairs)

    counts = _both(adapter, work)
    samples = study.rank_samples() if stage == "rank-heads" else study.eval_samples()
    return {"samples": len(samples), "tokens": _tokens(adapter, samples, cfg.batch_size), **counts}


def plan_command(cfg: DictConfig, command: str, memory_gib: float | None = None) -> dict:
    """The plan of `command` under `cfg` (see the module docstring), as one JSON-ready dict."""
    check_plannable(cfg, command)
    m = cfg.model
    adapter = planning_adapter(m.path, attn_implementation=m.attn_implementation, padding_side=m.padding_side,
                               name=m.name, family=m.get("family"))
    stages = {}
    for stage in COMMANDS[command]:
        if stage == "evaluate":
            stages[stage] = plan_evaluate(cfg, adapter)
        elif stage == "analyze":
            stages[stage] = plan_analyze(cfg, adapter)
        else:
            stages[stage] = plan_heads(cfg, adapter, stage, ranked=command == "run")
    total = {kind: {k: sum(s[kind][k] for s in stages.values()) for k in stages[next(iter(stages))][kind]}
             for kind in ("fast", "straightforward")}
    n_params = sum(p.numel() for p in adapter.model.parameters())
    width = DTYPE_BYTES.get(str(m.dtype), 4)
    longest = max(s["tokens"]["longest_batch"] for s in stages.values())
    per_row = activation_bytes_per_row(adapter, longest, width, m.attn_implementation == "eager")
    mem = {"dtype": str(m.dtype), "parameters": n_params, "weights_gib": n_params * width / 2**30,
           "activations_per_row_gib": per_row / 2**30, "batch_size": int(cfg.batch_size),
           "peak_per_batch_gib": (n_params * width + per_row * int(cfg.batch_size)) / 2**30, "longest_batch_tokens": longest}
    if memory_gib is not None:
        room = memory_gib * 2**30 - n_params * width
        mem["memory_gib"] = memory_gib
        mem["largest_batch_that_fits"] = max(0, int(room // per_row))
    text = adapter.model.config.get_text_config()
    return {
        "command": command,
        "model": {"name": m.name, "path": str(m.path), "model_type": adapter.model.config.model_type, "family": adapter.family,
                  "n_layers": adapter.parts.n_layers, "n_heads": adapter.parts.n_heads, "hidden_size": int(text.hidden_size)},
        "stages": stages,
        "total": total,
        "saving": {k: (total["straightforward"][k] / total["fast"][k] if total["fast"][k] else None)
                   for k in ("forward_passes", "decoder_layer_tokens")},
        "memory": mem,
        "assumptions": ASSUMPTIONS if any(s in COMMANDS[command] for s in ("ablate", "amplify")) else [],
    }


def activation_bytes_per_row(adapter: ModelAdapter, n_tokens: int, width: int, eager: bool) -> int:
    """The peak bytes one row of a plain forward pass holds beyond the weights: per position, the larger of
    the full-sequence logits (with the last hidden states) and the MLP's intermediates (with the residual
    and attention input), plus the attention scores where the implementation materialises them (eager).
    The text decoder's peak; the vision tower runs before it and is smaller on the models studied. Measured
    within 10% of the CPU peak on the organism and every tiny family tried (`tests/pipeline/test_plan.py`)."""
    d, ffn, _ = _sizes(adapter)
    vocab = int(adapter.parts.unembed.out_features)
    per_token = max(vocab + 2 * d, 3 * ffn + 4 * d) + (adapter.parts.n_heads * n_tokens if eager else 0)
    return per_token * n_tokens * width


def calibrate(cfg: DictConfig, plan: dict, repeats: int = 3) -> dict:
    """Predicted wall time per stage on this machine: time real forward passes of the model (its weights
    are loaded for this) over one batch of the study's prompts and over one row of it, fit seconds per
    decoder-layer call and per decoder-layer token (`t = a · calls + b · tokens`), and apply them to the
    plan's counts (fast paths on). Suffix sweeps' longer keys and the vision tower of resumed passes are
    not in the fit; the calibration's own time is reported with it."""
    import time

    from ...runtime.loading import load_model

    start = time.perf_counter()
    adapter = load_model(cfg)
    items, _ = build_items(cfg.data)
    samples = render_all(items[: int(cfg.batch_size)], parse_conditions(cfg.analysis.settings, "analysis.settings"), **cfg.templates)
    full = adapter.build_batch(samples[: int(cfg.batch_size)])
    one = adapter.build_batch(samples[:1])
    n_layers = adapter.parts.n_layers

    def seconds(batch) -> float:
        with torch.no_grad():
            adapter.last_logits(batch)  # warm-up
            best = float("inf")
            for _ in range(repeats):
                t = time.perf_counter()
                adapter.last_logits(batch)
                best = min(best, time.perf_counter() - t)
        return best

    points = [(n_layers, n_layers * b.inputs["input_ids"].numel(), seconds(b)) for b in (full, one)]
    (c1, k1, t1), (c2, k2, t2) = points
    per_token = max((t1 - t2) / (k1 - k2), 0.0) if k1 != k2 else t1 / k1
    per_call = max((t1 - per_token * k1) / c1, 0.0)
    stages = {name: per_call * st["fast"]["decoder_layer_calls"] + per_token * st["fast"]["decoder_layer_tokens"]
              for name, st in plan["stages"].items()}
    return {"seconds_per_layer_call": per_call, "seconds_per_layer_token": per_token, "stages_s": stages,
            "total_s": sum(stages.values()), "calibration_s": time.perf_counter() - start,
            "device": str(adapter.device), "threads": torch.get_num_threads()}


def write_plan(cfg: DictConfig, plan: dict):
    """plan.json in a fresh run directory `<output_dir>/plan/<model>/<stamp>-<hash>/` (never over another)."""
    from ...runtime.runs import RunDir

    run = RunDir.create(cfg.output_dir, "plan", cfg.model.name, cfg)
    return run.write_json("plan.json", plan)
