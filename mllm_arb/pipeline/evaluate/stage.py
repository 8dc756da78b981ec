"""`evaluate`: score every sample of every configured condition, batch by batch, and tabulate MFR."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from ...core.prompt import render_all
from ...core.records import parse_conditions
from ...core.results import EvaluateResults
from ...core.scoring import ScoredSample, batches, check_answers
from ...data.sources import build_items
from ...models.scoring import score_samples
from ...runtime.loading import load_model
from ...runtime.ranks import session
from ...runtime.stage import Stage, StageResult
from .mfr import mfr_table


def evaluate_stage(cfg: DictConfig, resume: Path | None = None) -> StageResult:
    with session() as ranks:
        conditions = parse_conditions(cfg.conditions, "conditions")
        items, fp = build_items(cfg.data)
        samples = render_all(items, conditions, **cfg.templates)
        with ranks.main_first():
            adapter = load_model(cfg, ranks)
        check_answers(adapter.tokenizer, samples)
        units = list(batches(samples, cfg.batch_size))
        with Stage.open(cfg, "evaluate", resume, ranks, fp, model_source=str(cfg.model.path), n_samples=len(samples)) as stage:
            def score(unit, step):
                return [r.to_row() for r in score_samples(adapter, unit, cfg.batch_size, cfg.scoring.generate_tokens, on_batch=step)]

            with stage.run.timed("score"):
                saved = stage.map_units("score", units, score, "scoring")
        if not stage.main:
            return stage.result()
        rows = [ScoredSample(**r) for r in saved]
        table = mfr_table(rows, n_boot=cfg.scoring.n_boot, seed=cfg.seed)
        results: EvaluateResults = {"model": adapter.name, "dataset_fingerprint": fp, "mfr": table}
        return stage.finish(results, f"{adapter.name} on {cfg.data.source} ({len(items)} items)",
                            tables={"samples.parquet": [r.to_row() for r in rows]})
