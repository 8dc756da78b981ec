"""`amplify`: scale the top heads by α on failed samples; recovery, harm, controls, random heads."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from ...core.names import POOLED
from ...core.results import AmplifyResults, at_best_alpha
from ...core.verdicts import recovery_finding
from ...report.head_figures import draw_amplification_figures
from ...runtime.ranks import session
from ...runtime.stage import StageResult
from .arms import amplify_arms, random_amplification_arms, split_preps
from .methods import Removal, prepare
from .stage import arm_major, arm_units, heads_for, open_stage, setup
from .summaries import summarise_amplification, summarise_random_amplification


def amplify_stage(cfg: DictConfig, resume: Path | None = None) -> StageResult:
    """Two sweeps, each batch by batch: the top heads at every α, and (on the settings batches) each top
    head alone and the set without it at every α (`partial/amplify/`); then, at the best α (from every
    batch of the first), random head sets on the settings batches (`partial/amplify_random/`, reusing
    the first sweep's baselines)."""
    with session() as ranks:
        study = setup(cfg, ranks)
        sweep, adapter = study.sweep, study.adapter
        with open_stage(study, "amplify", resume, ranks) as stage:
            rank_preps = prepare(adapter, study.rank_samples(), cfg.batch_size) if study.head_set is None else None
            eval_preps = prepare(adapter, study.eval_samples(), cfg.batch_size)
            settings, _ = split_preps(eval_preps, sweep.settings)
            names = [c.value for c in sweep.settings], [c.value for c in sweep.controls]
            boot = {"n_boot": cfg.scoring.n_boot, "seed": cfg.seed}
            with stage.run.timed("rank"):
                head_set = heads_for(stage, study, rank_preps, study.removal(rank_preps) if rank_preps else None)
            removal = Removal("zero", sweep.positions)  # amplification only scales: this says where
            n = study.n_used(head_set)
            arms = amplify_arms(head_set, n, sweep)
            with stage.run.timed("sweep"):
                saved = arm_units(stage, study, "amplify", eval_preps, arms, removal,
                                  f"amplifying (α = {', '.join(map(str, sweep.alphas))})", everyone=True)
                rows = arm_major(saved, eval_preps, sweep.settings)
                amp = summarise_amplification(rows, *names, **boot)  # on every rank: the best α picks the next sweep
                rand_arms = random_amplification_arms(head_set, n, amp["best_alpha"], sweep.n_random, cfg.seed)
                where = {id(p): i for i, p in enumerate(eval_preps)}
                bases = [saved[where[id(p)]]["base"] for p in settings]
                rand = arm_units(stage, study, "amplify_random", settings, rand_arms, removal,
                                 f"random heads at α = {amp['best_alpha']}", base_of=lambda i: bases[i])
        if not stage.main:
            return stage.result()
        rows += arm_major(rand, settings, sweep.settings)
        amp["random_at_best_alpha"] = summarise_random_amplification(rows, names[0], **boot)
        results: AmplifyResults = {**study.common(head_set, removal, n), "amplification": amp}
        at = at_best_alpha(results)
        finding = recovery_finding(at["settings"][POOLED] if at else None, amp["random_at_best_alpha"].get(POOLED))
        findings = {"f_amplification_recovers": finding} if finding else {}
        return stage.finish(results, study.title, tables={"samples.parquet": rows}, figures=draw_amplification_figures,
                            json_files={"findings.json": findings}, findings=findings)
