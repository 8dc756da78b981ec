"""`ablate`: block the top heads; MFR against random and lowest-ranked heads, controls, dose-response, and
each top head alone and left out of the set."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from ...core.results import AblateResults, pooled_blocking
from ...core.verdicts import blocking_finding
from ...report.head_figures import draw_blocking_figures
from ...runtime.ranks import session
from ...runtime.stage import StageResult
from .arms import ablate_arms
from .methods import prepare
from .stage import arm_major, arm_units, heads_for, open_stage, setup
from .summaries import summarise_blocking, summarise_dose, summarise_interactions


def ablate_stage(cfg: DictConfig, resume: Path | None = None) -> StageResult:
    with session() as ranks:
        study = setup(cfg, ranks)
        sweep, adapter = study.sweep, study.adapter
        with open_stage(study, "ablate", resume, ranks) as stage:
            needs_rank = study.head_set is None or sweep.ablation == "mean"
            rank_preps = prepare(adapter, study.rank_samples(), cfg.batch_size) if needs_rank else None
            eval_preps = prepare(adapter, study.eval_samples(), cfg.batch_size)
            removal = study.removal(rank_preps)  # mean ablation: the means are recomputed on resume (one pass)
            with stage.run.timed("rank"):
                head_set = heads_for(stage, study, rank_preps, removal)
            n = study.n_used(head_set)
            arms = ablate_arms(head_set, n, sweep, cfg.seed)
            with stage.run.timed("sweep"):
                saved = arm_units(stage, study, "ablate", eval_preps, arms, removal, f"blocking ({len(arms)} head sets)")
        if not stage.main:
            return stage.result()
        rows = arm_major(saved, eval_preps, sweep.settings)
        names = [c.value for c in sweep.settings], [c.value for c in sweep.controls]
        results: AblateResults = {
            **study.common(head_set, removal, n),
            "blocking": summarise_blocking(rows, *names, n_boot=cfg.scoring.n_boot, seed=cfg.seed),
            "dose": summarise_dose(rows, names[0], n_boot=cfg.scoring.n_boot, seed=cfg.seed),
            "interactions": summarise_interactions(rows, [r for r in rows if r["study"] == "headline" and r["set"] == "top"], names[0],
                                                   amplify=False, n_boot=cfg.scoring.n_boot, seed=cfg.seed),
        }
        finding = blocking_finding(pooled_blocking(results))
        findings = {"e_blocking_beats_random": finding} if finding else {}
        return stage.finish(results, study.title, tables={"samples.parquet": rows}, figures=draw_blocking_figures,
                            json_files={"findings.json": findings}, findings=findings)
