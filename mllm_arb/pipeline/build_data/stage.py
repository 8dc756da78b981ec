"""`build-data`: build the items, filter them with a model when asked, save them into a run directory."""

from __future__ import annotations

import hashlib

from omegaconf import DictConfig

from ...core.errors import UserError
from ...core.results import BuildDataResults
from ...data.sources import build_items_with_report
from ...data.store import save_items
from ...runtime.loading import load_model
from ...runtime.progress import bars
from ...runtime.runs import RunDir
from ...runtime.stage import StageResult


def build_data_stage(cfg: DictConfig) -> StageResult:
    items, fp, report = build_items_with_report(cfg.data)
    adapter = load_model(cfg) if cfg.build_data.filter_with_model else None
    run = RunDir.create(cfg.output_dir, "build-data", cfg.data.source, cfg)
    results: BuildDataResults = {"source": cfg.data.source, "source_report": report}  # type: ignore[typeddict-item]
    if adapter is not None:
        from .filtering import filter_items

        with run.timed("filter"), bars() as bar:
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
    return StageResult("build-data", run.path, results, f"{len(items)} items ({fp})", {"dataset": run.file("dataset")})
