"""`analyze`: knockout sweeps over every edge and layer window, the logit lens by component, optional
attention saliency, then the curves, the study's findings and the figures."""

from __future__ import annotations

import hashlib
from pathlib import Path

from omegaconf import DictConfig

from ...core.errors import UserError
from ...core.prompt import render_all
from ...core.records import parse_conditions
from ...core.results import AnalyzeResults
from ...core.scoring import batches, check_answers
from ...data.sources import build_items
from ...interventions.knockout import default_window_size
from ...report.flow_figures import draw_flow_figures
from ...runtime.loading import load_model
from ...runtime.ranks import session
from ...runtime.stage import Stage, StageResult
from .findings import check_findings
from .flow import KnockoutPlan, knockout_rows, lens_rows, parse_edge, summarise_cumulative, summarise_knockout, summarise_lens
from .saliency import saliency_rows, summarise_saliency


def analysis_edges(cfg: DictConfig) -> tuple[tuple[str, str], ...]:
    try:
        return tuple(parse_edge(e) for e in cfg.analysis.edges)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def analysis_samples(cfg: DictConfig) -> tuple[list, str, str, list]:
    """(items, dataset fingerprint, fingerprint of the items analysed, samples): the dataset's first
    `analysis.max_items` items, rendered in each of `analysis.settings`."""
    a = cfg.analysis
    items, fp = build_items(cfg.data)
    items_fp = fp  # the dataset stays the other stages' one; the items analysed may be its first few
    if a.max_items and len(items) > a.max_items:
        # the sweep costs edges × layers forward passes per sample: cap it unless asked for more
        items = items[: int(a.max_items)]
        items_fp = hashlib.sha256(f"{fp}:first-{a.max_items}".encode()).hexdigest()[:16]
    return items, fp, items_fp, render_all(items, parse_conditions(a.settings, "analysis.settings"), **cfg.templates)


def knockout_plan(cfg: DictConfig, edges, n_layers: int, linear: frozenset[int] = frozenset()) -> KnockoutPlan:
    """The knockout sweep of `cfg`, refused before anything runs where it cannot be exact: a window outside the
    model, or an edge from a group to itself where layers mix by linear attention (`linear`: those layers),
    whose knockout needs every target cut from sources that are not targets themselves."""
    a = cfg.analysis
    window = int(a.window) if a.window else default_window_size(n_layers)
    if not 1 <= window <= n_layers:
        raise UserError(f"analysis.window={window} must lie in [1, {n_layers}] (the model has {n_layers} layers)")
    selfish = [f"{src}->{dst}" for src, dst in edges if src == dst]
    if linear and selfish:
        raise UserError(f"analysis.edges {', '.join(selfish)}: layers {sorted(linear)} mix by linear attention, where a knockout "
                        "must cut its targets from other positions (docs/method.md §4); drop those edges for this model")
    return KnockoutPlan(edges=edges, window=window, n_layers=n_layers, cumulative=bool(a.cumulative))


def analyze_stage(cfg: DictConfig, resume: Path | None = None) -> StageResult:
    a = cfg.analysis
    edges = analysis_edges(cfg)
    with session() as ranks:
        items, fp, items_fp, samples = analysis_samples(cfg)
        with ranks.main_first():
            adapter = load_model(cfg, ranks)
        check_answers(adapter.tokenizer, samples)
        n_layers = adapter.parts.n_layers
        plan = knockout_plan(cfg, edges, n_layers, adapter.parts.linear)
        window = plan.window
        units = list(batches(samples, cfg.batch_size))
        with Stage.open(cfg, "analyze", resume, ranks, fp, model_source=str(cfg.model.path), n_samples=len(samples),
                        window=window, n_items=len(items), items_fingerprint=items_fp) as stage:
            passes = plan.n_passes_per_batch
            with stage.run.timed("knockout"):
                ko_rows = stage.map_units("knockout", units, lambda u, step: knockout_rows(adapter, u, plan, cfg.batch_size, on_step=step),
                                      f"knockout ({len(edges)} edges × {passes // len(edges)} layer sets)", cost=lambda i, u: len(u) * passes)
            l_rows = s_rows = None
            if a.lens:
                with stage.run.timed("lens"):
                    l_rows = stage.map_units("lens", units, lambda u, step: lens_rows(adapter, u, cfg.batch_size, on_step=step),
                                         "logit lens by component")
            if a.saliency:
                with stage.run.timed("saliency"):
                    s_rows = stage.map_units("saliency", units, lambda u, step: saliency_rows(adapter, u, edges, cfg.batch_size, on_step=step),
                                         "attention saliency (eager, gradients)")
        if not stage.main:
            return stage.result()
        tables = {"knockout.parquet": ko_rows}
        lens = saliency = None
        if l_rows is not None:
            tables["lens.parquet"] = l_rows
            lens = summarise_lens(l_rows, n_layers)
        if s_rows is not None:
            tables["saliency.parquet"] = s_rows
            saliency = summarise_saliency(s_rows, n_boot=cfg.scoring.n_boot, seed=cfg.seed)
        boot = {"n_boot": cfg.scoring.n_boot, "seed": cfg.seed}
        knockout = summarise_knockout(ko_rows, **boot)
        cumulative = summarise_cumulative(ko_rows, **boot)
        results: AnalyzeResults = {
            "model": adapter.name,
            "dataset_fingerprint": fp,
            "items_fingerprint": items_fp,
            "n_layers": n_layers,
            "window": window,
            "n_items": len(items),
            "knockout": knockout,
            **({"cumulative": cumulative} if plan.cumulative else {}),
            "lens": lens,
            "saliency": saliency,
        }
        findings = check_findings(knockout, l_rows, n_layers, a.findings, cumulative, **boot)
        return stage.finish(results, f"{adapter.name} on {cfg.data.source} ({len(items)} items)", tables=tables,
                            figures=draw_flow_figures, json_files={"findings.json": findings}, findings=findings)
