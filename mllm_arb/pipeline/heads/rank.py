"""`rank-heads`: score every attention head by every configured method and write heads.json."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from ...core.heads_file import FILE_NAME, write_head_set
from ...core.results import RankResults
from ...report.head_figures import draw_rank_figures
from ...runtime.ranks import session
from ...runtime.stage import StageResult
from .methods import prepare, rank
from .stage import HeadStudy, Ranking, open_stage, rank_units, ranking_from, setup


def ranking_results(study: HeadStudy, ranking: Ranking) -> RankResults:
    n = len(ranking.head_set.heads)
    return {
        **study.provenance(),
        "rank_method": study.sweep.rank_method,
        "rank_by": study.sweep.rank_by,
        "ablation": study.sweep.ablation,
        "positions": study.sweep.positions,
        "n_selected": n,
        "heads": [list(h) for h in ranking.head_set.heads],
        "top": {m: [{"layer": l, "head": h, "score": v} for l, h, v in rank(s["pooled"])[: max(2 * n, 10)]]
                for m, s in ranking.scores.items()},
        "scores": ranking.scores,
        "agreement": ranking.agreement,
    }


def rank_stage(cfg: DictConfig, resume: Path | None = None) -> StageResult:
    with session() as ranks:
        study = setup(cfg, ranks)
        with open_stage(study, "rank-heads", resume, ranks) as stage:
            rank_preps = prepare(study.adapter, study.rank_samples(), cfg.batch_size)
            removal = study.removal(rank_preps)
            with stage.run.timed("rank"):
                per_sample = rank_units(stage, study, study.sweep.methods, rank_preps, removal)
        if not stage.main:
            return stage.result()
        ranking = ranking_from(study, rank_preps, removal, per_sample)
        heads = write_head_set(stage.run.file(FILE_NAME), ranking.head_set)
        results = ranking_results(study, ranking)
        return stage.finish(results, study.title, tables={"scores.parquet": ranking.rows}, figures=draw_rank_figures,
                            files={"heads": heads})
