"""The stages behind `build-data`, `evaluate` and `analyze`, each a function of a composed config.

`evaluate` and `analyze` run batch by batch through `partial.run_units`: every batch's rows are saved
as soon as they exist (so `--resume RUN_DIR` recomputes nothing already saved) and, under torchrun,
each rank computes its share of the batches and rank 0 merges them into the tables and results a
single process would have written.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path

from omegaconf import DictConfig

from .distributed import Ranks, session
from .errors import UserError
from .models.fingerprint import weights_fingerprint
from .partial import UnitStore, drop_interrupted_writes, merge_units, run_units, stage_store
from .resume import saved_units
from .runs import RunDir


def _cli():
    from . import cli  # the console, progress bars and model loading every command shares

    return cli


def start_run(cfg: DictConfig, command: str, resume: Path | None, ranks: Ranks, fingerprint: str, **manifest) -> RunDir:
    """Rank 0 creates the run directory (or reopens the one being resumed) and every rank gets its
    path; only rank 0's RunDir writes. A resumed run must see the same dataset it started on, and a
    stage that runs a model (its manifest names `model_source`) the same checkpoint files.
    `run.saved_at_start` counts each stage's batches saved before any rank of this session started."""

    def make() -> tuple[str, dict[str, int]]:
        if "model_source" in manifest:
            manifest["model_fingerprint"] = weights_fingerprint(cfg.model.path)
        if resume is None:
            run = RunDir.create(cfg.output_dir, command, cfg.model.name, cfg)
        else:
            run = RunDir.open(resume, cfg)
            saved_fp = run.extra.get("dataset_fingerprint")
            if saved_fp is not None and saved_fp != fingerprint:
                raise UserError(f"--resume {resume}: the dataset changed since the run started (fingerprint {saved_fp} "
                                f"then, {fingerprint} now); start a new run")
            saved_model, model_now = run.extra.get("model_fingerprint"), manifest.get("model_fingerprint")
            if saved_model and model_now and saved_model != model_now:
                raise UserError(f"--resume {resume}: the files of model {cfg.model.path} changed since the run started "
                                f"(fingerprint {saved_model} then, {model_now} now); start a new run")
            drop_interrupted_writes(run.path)
            history = list(run.extra.get("resumes", []))
            history.append({"at": datetime.now().isoformat(timespec="seconds"), "saved_batches": saved_units(run.path)})
            run.write_manifest(resumes=history)
        run.write_manifest(dataset_fingerprint=fingerprint, world_size=ranks.world, **manifest)
        return str(run.path), saved_units(run.path)

    path, saved = ranks.share(make)
    run = RunDir.open(path, cfg, writer=ranks.main)
    run.saved_at_start = saved
    return run


def record_batches(run: RunDir, store: UnitStore) -> None:
    """Say in the manifest how many of a stage's batches this session reused and computed."""
    reused = run.saved_at_start.get(store.folder.name, 0)
    batches = dict(run.extra.get("batches", {}))
    batches[store.folder.name] = {"total": store.n_units, "reused": reused, "computed": store.n_units - reused}
    run.write_manifest(batches=batches)


# ------------------------------------------------------------------------------------ build-data
def build_data_stage(cfg: DictConfig) -> Path:
    from rich.table import Table

    from .data.sources import build_items_with_report
    from .data.store import save_items

    cli = _cli()
    items, fp, report = build_items_with_report(cfg.data)
    adapter = cli.load_model(cfg) if cfg.build_data.filter_with_model else None
    run = RunDir.create(cfg.output_dir, "build-data", cfg.data.source, cfg)
    results: dict = {"source": cfg.data.source, "source_report": report}
    if adapter is not None:
        from .data.filtering import filter_items

        with run.timed("filter"), cli.progress() as bar:
            task = bar.add_task(f"filtering with {adapter.name} (image-only and text-only)", total=2 * len(items))
            items, freport = filter_items(adapter, items, cfg.batch_size, on_batch=lambda n: bar.advance(task, n), **cfg.templates)
        fp = hashlib.sha256(f"{fp}:filtered-by:{cfg.model.path}".encode()).hexdigest()[:16]
        filter_dict = freport.to_dict()
        filter_dict.pop("rows", None)
        results["filter"] = {"model": adapter.name, **filter_dict}
        if not items:
            run.write_json("results.json", results)
            raise UserError(f"{adapter.name} answers no item correctly from both image and text alone; nothing kept")
    with run.timed("save"):
        save_items(items, run.file("dataset"), fp, meta={"source": cfg.data.source, "n_items": len(items)})
    counts: dict[str, int] = {}
    for it in items:
        counts[it.task] = counts.get(it.task, 0) + 1
    results.update({"n_items": len(items), "fingerprint": fp, "per_task": counts})
    run.write_json("results.json", results)
    run.write_manifest(dataset_fingerprint=fp)
    table = Table(title=f"{len(items)} items ({fp})")
    table.add_column("task")
    table.add_column("items", justify="right")
    for task, n in sorted(counts.items()):
        table.add_row(task, str(n))
    cli.console.print(table)
    cli.console.print(f"dataset: {run.file('dataset')}  (use: data=disk data.path={run.file('dataset')})")
    return run.path


# ------------------------------------------------------------------------------------ evaluate
def evaluate_stage(cfg: DictConfig, resume: Path | None = None) -> Path:
    from .analysis.behaviour import batches, check_answers, mfr_table, score_samples
    from .data.sources import build_items
    from .data.templates import render_all
    from .scoring import ScoredSample

    cli = _cli()
    with session() as ranks:
        conditions = cli.conditions_from(cfg.conditions)
        items, fp = build_items(cfg.data)
        samples = render_all(items, conditions, **cfg.templates)
        with ranks.main_first():
            adapter = cli.load_model(cfg, ranks)
        check_answers(adapter.tokenizer, samples)
        units = list(batches(samples, cfg.batch_size))
        run = start_run(cfg, "evaluate", resume, ranks, fp, model_source=str(cfg.model.path), n_samples=len(samples))
        store = stage_store(run.path, "score", len(units))

        def score(unit):
            return [r.to_row() for r in score_samples(adapter, unit, cfg.batch_size, cfg.scoring.generate_tokens, on_batch=step)]

        with run.timed("score"), cli.progress(ranks.main) as bar:
            task = bar.add_task("scoring" + _share(ranks), total=sum(len(u) for i, u in enumerate(units) if ranks.owns(i)))
            step = lambda n: bar.advance(task, n)  # noqa: E731
            run_units(store, units, score, ranks, on_reused=lambda u: step(len(u)))
        ranks.barrier()
        if not ranks.main:
            return run.path
        rows = [ScoredSample(**r) for r in merge_units(store, units)]
        record_batches(run, store)
        run.write_table("samples.parquet", [r.to_row() for r in rows])
        table = mfr_table(rows, n_boot=cfg.scoring.n_boot, seed=cfg.seed)
        run.write_json("results.json", {"model": adapter.name, "dataset_fingerprint": fp, "mfr": table})
        cli.print_mfr(table, title=f"{adapter.name} on {cfg.data.source} ({len(items)} items)")
        cli.console.print(f"run directory: {run.path}")
        return run.path


def _share(ranks: Ranks) -> str:
    return f" (rank {ranks.rank} of {ranks.world})" if ranks.sharded else ""


# ------------------------------------------------------------------------------------ analyze
def analyze_stage(cfg: DictConfig, resume: Path | None = None) -> Path:
    from .analysis.behaviour import batches, check_answers
    from .analysis.findings import check_findings
    from .analysis.flow import KnockoutPlan, knockout_rows, lens_rows, parse_edge, summarise_knockout, summarise_lens
    from .analysis.saliency import saliency_rows, summarise_saliency
    from .data.sources import build_items
    from .data.templates import render_all
    from .interventions.knockout import default_window_size
    from .report.flow_figures import draw_flow_figures

    cli = _cli()
    a = cfg.analysis
    try:
        edges = tuple(parse_edge(e) for e in a.edges)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    with session() as ranks:
        items, fp = build_items(cfg.data)
        items_fp = fp  # the dataset stays the other stages' one; the items analysed may be its first few
        if a.max_items and len(items) > a.max_items:
            # the sweep costs edges × layers forward passes per sample: cap it unless asked for more
            items = items[: int(a.max_items)]
            items_fp = hashlib.sha256(f"{fp}:first-{a.max_items}".encode()).hexdigest()[:16]
        samples = render_all(items, cli.conditions_from(a.settings), **cfg.templates)
        with ranks.main_first():
            adapter = cli.load_model(cfg, ranks)
        check_answers(adapter.tokenizer, samples)
        n_layers = adapter.parts.n_layers
        window = int(a.window) if a.window else default_window_size(n_layers)
        if not 1 <= window <= n_layers:
            raise UserError(f"analysis.window={window} must lie in [1, {n_layers}] (the model has {n_layers} layers)")
        plan = KnockoutPlan(edges=edges, window=window, n_layers=n_layers)
        units = list(batches(samples, cfg.batch_size))
        run = start_run(cfg, "analyze", resume, ranks, fp, model_source=str(cfg.model.path), n_samples=len(samples), window=window,
                        n_items=len(items), items_fingerprint=items_fp)
        ko_store = stage_store(run.path, "knockout", len(units))
        lens_store = stage_store(run.path, "lens", len(units)) if a.lens else None
        sal_store = stage_store(run.path, "saliency", len(units)) if a.saliency else None
        mine = sum(len(u) for i, u in enumerate(units) if ranks.owns(i))
        with cli.progress(ranks.main) as bar:
            task = bar.add_task(f"knockout ({len(edges)} edges × {n_layers} windows){_share(ranks)}", total=mine * plan.n_passes_per_batch)
            step = lambda n, t=task: bar.advance(t, n)  # noqa: E731
            with run.timed("knockout"):
                run_units(ko_store, units, lambda u: knockout_rows(adapter, u, plan, cfg.batch_size, on_step=step), ranks,
                          on_reused=lambda u: step(len(u) * plan.n_passes_per_batch))
            if lens_store is not None:
                task = bar.add_task(f"logit lens by component{_share(ranks)}", total=mine)
                lens_step = lambda n, t=task: bar.advance(t, n)  # noqa: E731
                with run.timed("lens"):
                    run_units(lens_store, units, lambda u: lens_rows(adapter, u, cfg.batch_size, on_step=lens_step), ranks,
                              on_reused=lambda u: lens_step(len(u)))
            if sal_store is not None:
                task = bar.add_task(f"attention saliency (eager, gradients){_share(ranks)}", total=mine)
                sal_step = lambda n, t=task: bar.advance(t, n)  # noqa: E731
                with run.timed("saliency"):
                    run_units(sal_store, units, lambda u: saliency_rows(adapter, u, edges, cfg.batch_size, on_step=sal_step),
                              ranks, on_reused=lambda u: sal_step(len(u)))
        ranks.barrier()
        if not ranks.main:
            return run.path
        ko_rows = merge_units(ko_store, units)
        record_batches(run, ko_store)
        run.write_table("knockout.parquet", ko_rows)
        lens = None
        if lens_store is not None:
            l_rows = merge_units(lens_store, units)
            record_batches(run, lens_store)
            run.write_table("lens.parquet", l_rows)
            lens = summarise_lens(l_rows, n_layers)
        saliency = None
        if sal_store is not None:
            s_rows = merge_units(sal_store, units)
            record_batches(run, sal_store)
            run.write_table("saliency.parquet", s_rows)
            saliency = summarise_saliency(s_rows, n_boot=cfg.scoring.n_boot, seed=cfg.seed)
        knockout = summarise_knockout(ko_rows, n_boot=cfg.scoring.n_boot, seed=cfg.seed)
        results = {
            "model": adapter.name,
            "dataset_fingerprint": fp,
            "items_fingerprint": items_fp,
            "n_layers": n_layers,
            "window": window,
            "n_items": len(items),
            "knockout": knockout,
            "lens": lens,
            "saliency": saliency,
        }
        findings = check_findings(knockout, lens or {"components": {}, "agreement": {}}, n_layers, a.findings)
        title = f"{adapter.name} on {cfg.data.source} ({len(items)} items)"
        with run.timed("plots"):
            draw_flow_figures(results, run.file("plots"), title)
        run.write_json("findings.json", findings)
        run.write_json("results.json", results)  # last: its presence marks the run complete
        cli.print_findings(findings, title)
        cli.console.print(f"run directory: {run.path}")
        return run.path
