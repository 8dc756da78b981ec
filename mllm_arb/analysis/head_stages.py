"""The stages behind `rank-heads`, `ablate`, `amplify` and `run`: validate everything, then create
the run directory, compute, and write per-sample rows, results.json, heads.json and plots.

Every stage checks its whole input (sweep options, splits, the heads file against the loaded model)
before its run directory exists, so bad input leaves nothing behind.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from rich.table import Table

from ..data.records import ConflictItem, Sample
from ..errors import UserError
from ..runs import RunDir
from .head_sets import FILE_NAME, HeadSet, check_model, from_ranking, read_head_set, write_head_set
from .heads import (
    METHODS,
    Prepared,
    Removal,
    head_means,
    method_agreement,
    method_scores,
    passes_per_sample,
    prepare,
    rank,
    score_matrices,
    score_rows,
)
from .sweeps import (
    POOLED,
    Arm,
    SweepConfig,
    amplification_arms,
    applicable_arms,
    arm_log_odds,
    arm_rows,
    blocking_arms,
    check_split_sizes,
    random_amplification_arms,
    split_items,
    split_preps,
    summarise_amplification,
    summarise_blocking,
    summarise_dose,
    summarise_random_amplification,
)


def _cli():
    from .. import cli  # the console, progress bars and model loading the other commands use

    return cli


def cli_overrides(top_k=None, top_n=None, heads=None, from_run=None, method=None, alphas=None) -> list[str]:
    """The head commands' options as Hydra overrides, so they land in the saved config and its hash."""
    out = []
    if top_k is not None and top_n is not None:
        raise UserError("give --top-k or --top-n, not both")
    if heads is not None and from_run is not None:
        raise UserError("give --heads or --from, not both")
    if top_k is not None:
        out.append(f"sweep.top_k={top_k}")
    if top_n is not None:
        out.append(f"sweep.top_n={top_n}")
    if from_run is not None:
        if not Path(from_run).is_dir():
            raise UserError(f"--from {from_run}: not a run directory")
        heads = Path(from_run) / FILE_NAME
        if not heads.is_file():
            raise UserError(f"--from {from_run}: no {FILE_NAME} there (is it a rank-heads, ablate or amplify run?)")
    if heads is not None:
        out.append(f"sweep.heads_file='{Path(heads).resolve()}'")
    if method is not None:
        if method not in METHODS:
            raise UserError(f"--method {method!r}: choose from {', '.join(METHODS)}")
        out.append(f"sweep.rank_method={method}")
    if alphas:
        out.append(f"sweep.alphas=[{','.join(str(a) for a in alphas)}]")
    return out


# ------------------------------------------------------------------------------------ shared setup
@dataclass
class Study:
    """Everything a head stage needs, validated before any run directory exists."""

    cfg: DictConfig
    sweep: SweepConfig
    fingerprint: str
    rank_items: list[ConflictItem]
    eval_items: list[ConflictItem]
    adapter: object
    head_set: HeadSet | None  # from --heads / --from
    n_overlap_dropped: int

    @property
    def n_layers(self) -> int:
        return self.adapter.parts.n_layers

    @property
    def n_heads(self) -> int:
        return self.adapter.parts.n_heads

    @property
    def total(self) -> int:
        return self.n_layers * self.n_heads

    def rank_samples(self) -> list[Sample]:
        return render(self.cfg, self.rank_items, self.sweep.settings)

    def eval_samples(self) -> list[Sample]:
        return render(self.cfg, self.eval_items, (*self.sweep.settings, *self.sweep.controls))

    def provenance(self) -> dict:
        """What every head stage's results.json opens with: the model, its shape, the data and the splits."""
        return {"model": self.adapter.name, "dataset_fingerprint": self.fingerprint, "n_layers": self.n_layers,
                "n_heads": self.n_heads, "n_rank_items": len(self.rank_items), "n_eval_items": len(self.eval_items)}

    def manifest(self) -> dict:
        return {"dataset_fingerprint": self.fingerprint, "model_source": str(self.cfg.model.path),
                "n_rank_items": len(self.rank_items), "n_eval_items": len(self.eval_items),
                "heads_file": self.sweep.heads_file, "n_eval_items_dropped_overlap": self.n_overlap_dropped}

    def removal(self, rank_preps: list[Prepared] | None) -> Removal:
        if self.sweep.ablation != "mean":
            return Removal("zero", self.sweep.positions)
        preps = rank_preps if rank_preps is not None else prepare(self.adapter, self.rank_samples(), self.cfg.batch_size)
        try:
            return Removal("mean", self.sweep.positions, head_means(self.adapter, preps, self.sweep.positions))
        except ValueError as exc:
            raise UserError(str(exc)) from None


def render(cfg: DictConfig, items, conditions) -> list[Sample]:
    from ..data.templates import render_all

    try:
        return render_all(items, conditions, **cfg.templates)
    except ValueError as exc:  # e.g. a consistent-context control for items without one
        raise UserError(f"{exc}; drop that condition from sweep.controls / sweep.settings") from None


def setup(cfg: DictConfig, ranks=None) -> Study:
    from ..analysis.behaviour import check_answers
    from ..data.sources import build_items

    sweep = SweepConfig.from_cfg(cfg.sweep)
    head_set = read_head_set(sweep.heads_file) if sweep.heads_file else None
    items, fp = build_items(cfg.data)
    rank_items, eval_items = split_items(items, sweep.rank_fraction, cfg.seed)
    dropped = 0
    if head_set is not None and head_set.rank_items:
        # effects are measured only on items the heads were not ranked on, whatever split made them
        used = set(head_set.rank_items)
        kept = [it for it in eval_items if it.item_id not in used]
        dropped, eval_items = len(eval_items) - len(kept), kept
    check_split_sizes(len(rank_items), len(eval_items), len(items), sweep)
    study_items = [*rank_items, *eval_items]
    check_answers_for = render(cfg, study_items, (*sweep.settings, *sweep.controls))
    cli = _cli()
    if ranks is None:
        adapter = cli.load_model(cfg)
    else:
        with ranks.main_first():  # under torchrun: rank 0 fills caches / downloads, then the others load
            adapter = cli.load_model(cfg, ranks)
    check_answers(adapter.tokenizer, check_answers_for)
    parts = adapter.parts
    sweep.check_heads(parts.n_layers * parts.n_heads)
    if head_set is not None:
        check_model(head_set, adapter.name, parts.n_layers, parts.n_heads, sweep.allow_other_model)
    return Study(cfg, sweep, fp, rank_items, eval_items, adapter, head_set, dropped)


def _title(study: Study) -> str:
    return f"{study.adapter.name} on {study.cfg.data.source}"


# ------------------------------------------------------------------------------------ rank-heads
@dataclass
class Ranking:
    head_set: HeadSet
    scores: dict[str, dict[str, list[list[float]]]]  # method -> setting/pooled -> [L][H]
    rows: list[dict]
    agreement: dict


def ranking_from(study: Study, rank_preps: list[Prepared], removal: Removal, per_sample: dict) -> Ranking:
    """The ranking, heads.json and per-sample rows from every method's `[N, L, H]` scores."""
    sweep, adapter = study.sweep, study.adapter
    scores, rows = {}, []
    for method, values in per_sample.items():
        scores[method] = score_matrices(rank_preps, values)
        rows += score_rows(rank_preps, method, values)
    n = sweep.n_selected(study.total)
    ranked = rank(scores[sweep.rank_method][sweep.rank_by])
    head_set = from_ranking(
        ranked, n, model=adapter.name, n_layers=study.n_layers, n_heads=study.n_heads, method=sweep.rank_method,
        rank_by=sweep.rank_by, dataset_fingerprint=study.fingerprint, top_k=None if sweep.top_n else sweep.top_k,
        rank_items=tuple(it.item_id for it in study.rank_items),
        extra={"ablation": removal.mode, "positions": removal.positions},
    )
    agreement = method_agreement({m: s["pooled"] for m, s in scores.items()}, n) if len(scores) > 1 else {}
    return Ranking(head_set, scores, rows, agreement)


def unit_scores(study: Study, methods, rank_preps: list[Prepared], removal: Removal, run: RunDir, ranks, bar) -> dict | None:
    """`method_scores` batch by batch through `partial/rank-<method>/` (saved as they go, read back on
    --resume, split over the ranks under torchrun). Rank 0 gets every method's `[N, L, H]` scores in
    batch order; the other ranks get None once their share is saved."""
    import torch

    from ..partial import load_units, run_units, stage_store
    from ..stages import record_batches

    def encode(t):
        return {"dtype": str(t.dtype).removeprefix("torch."), "scores": t.tolist()}

    samples_of = lambda p: p.samples  # noqa: E731
    stores = {}
    for method in methods:
        store = stores[method] = stage_store(run.path, f"rank-{method}", len(rank_preps))
        cost = passes_per_sample(method, study.n_layers, study.n_heads)
        task = bar.add_task(f"ranking heads: {method}", total=cost * sum(len(p.batch) for i, p in enumerate(rank_preps) if ranks.owns(i)))
        step = lambda n, t=task: bar.advance(t, n)  # noqa: E731
        run_units(store, rank_preps, lambda p, m=method, s=step: encode(method_scores(study.adapter, [p], m, removal, on_step=s)),
                  ranks, on_reused=lambda p, s=step, c=cost: s(c * len(p.batch)), samples_of=samples_of)
    ranks.barrier()
    if not ranks.main:
        return None
    out = {}
    for method, store in stores.items():
        saved = load_units(store, rank_preps, samples_of)
        out[method] = torch.cat([torch.tensor(u["scores"], dtype=getattr(torch, u["dtype"])) for u in saved])
        record_batches(run, store)
    return out


def ranking_results(study: Study, ranking: Ranking) -> dict:
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


def rank_stage(cfg: DictConfig, resume: Path | None = None) -> Path:
    from ..distributed import session
    from ..report.head_figures import draw_rank_figures
    from ..stages import start_run

    cli = _cli()
    with session() as ranks:
        study = setup(cfg, ranks)
        manifest = study.manifest()
        run = start_run(cfg, "rank-heads", resume, ranks, manifest.pop("dataset_fingerprint"), **manifest)
        rank_preps = prepare(study.adapter, study.rank_samples(), cfg.batch_size)
        removal = study.removal(rank_preps)
        with run.timed("rank"), cli.progress(ranks.main) as bar:
            per_sample = unit_scores(study, study.sweep.methods, rank_preps, removal, run, ranks, bar)
        if per_sample is None:
            return run.path
        ranking = ranking_from(study, rank_preps, removal, per_sample)
        run.write_table("scores.parquet", ranking.rows)
        write_head_set(run.file(FILE_NAME), ranking.head_set)
        results = ranking_results(study, ranking)
        with run.timed("plots"):
            draw_rank_figures(results, run.file("plots"), _title(study))
        run.write_json("results.json", results)  # last: its presence marks the run complete
        print_ranking(cli.console, results, _title(study))
        cli.console.print(f"heads: {run.file(FILE_NAME)}  (use: mllm-arb ablate --from {run.path})")
        cli.console.print(f"run directory: {run.path}")
        return run.path


def heads_for(study: Study, run: RunDir, ranks, rank_preps, removal, bar) -> HeadSet:
    """The file's head set, or a fresh ranking by `sweep.rank_method` (saved as this run's heads.json).
    The ranking goes batch by batch through `partial/rank-<method>/` like rank-heads' (resumed, sharded);
    rank 0 builds the head set and every rank receives it."""
    if study.head_set is not None:
        def keep() -> HeadSet:
            saved = run.file(FILE_NAME)
            # a resumed run's saved batches were measured with the heads it saved: a heads file edited since
            # would mix two head sets in one table
            if saved.exists() and read_head_set(saved).to_json() != study.head_set.to_json():
                raise UserError(f"{study.sweep.heads_file} no longer holds the heads this run started with "
                                f"({saved}); start a new run instead of resuming")
            write_head_set(saved, study.head_set)
            return study.head_set

        return ranks.share(keep)
    per_sample = unit_scores(study, (study.sweep.rank_method,), rank_preps, removal, run, ranks, bar)

    def make() -> HeadSet:
        ranking = ranking_from(study, rank_preps, removal, per_sample)
        run.write_table("scores.parquet", ranking.rows)
        write_head_set(run.file(FILE_NAME), ranking.head_set)
        return ranking.head_set

    return ranks.share(make)


def sweep_units(study: Study, run: RunDir, ranks, stage: str, units: list[Prepared], arms: list[Arm], removal: Removal,
                bar, label: str, base_of=None, everyone: bool = False) -> list[dict] | None:
    """Every arm over every batch of `units`, batch by batch through `partial/<stage>/` (saved as they
    go, read back on --resume, split over the ranks under torchrun). A unit's saved rows are one list per
    arm (empty where the arm does not apply: controls batches run only arms with `arm.controls`), and
    its baseline log-odds. `base_of(index)` gives a unit's baseline instead of computing it. After a
    barrier rank 0 (every rank, when `everyone`) gets the saved units in unit order; the others None."""
    from ..partial import load_units, run_units, stage_store
    from ..stages import _share, record_batches

    keep = set(study.sweep.settings)
    is_setting = [p.samples[0].condition in keep for p in units]
    store = stage_store(run.path, stage, len(units))
    index = {id(p): i for i, p in enumerate(units)}

    def cost(i: int) -> int:
        n = len(units[i].batch)
        return (n if base_of is None else 0) + n * sum(1 for a in arms if is_setting[i] or a.controls)

    task = bar.add_task(f"{label}{_share(ranks)}", total=sum(cost(i) for i in range(len(units)) if ranks.owns(i)))
    step = lambda k: bar.advance(task, k)  # noqa: E731

    def compute(p: Prepared) -> dict:
        i = index[id(p)]
        applicable = applicable_arms(arms, is_setting[i])
        plain, after = arm_log_odds(study.adapter, p, [arms[a] for a in applicable], removal, step, plain=base_of is None)
        if base_of is None:
            step(len(p.batch))  # the baseline: the recorded pass the arms resume from
        before = plain if base_of is None else base_of(i)
        per_arm: list[list[dict]] = [[] for _ in arms]
        for a, log_odds in zip(applicable, after):
            per_arm[a] = arm_rows(arms[a], p, before, log_odds)
        return {"base": [float(v) for v in before], "arms": per_arm}

    samples_of = lambda p: p.samples  # noqa: E731
    run_units(store, units, compute, ranks, on_reused=lambda p: step(cost(index[id(p)])), samples_of=samples_of)
    ranks.barrier()
    if not (ranks.main or everyone):
        return None
    saved = load_units(store, units, samples_of)
    if ranks.main:
        record_batches(run, store)
    return saved


def arm_major(saved: list[dict], units: list[Prepared], settings) -> list[dict]:
    """The per-unit rows in the order one pass over the arms gives (`run_arms` over every batch): arm
    by arm, the settings batches then the controls batches, each in batch order."""
    keep = set(settings)
    order = [i for i, p in enumerate(units) if p.samples[0].condition in keep]
    order += [i for i, p in enumerate(units) if p.samples[0].condition not in keep]
    n_arms = len(saved[0]["arms"]) if saved else 0
    return [row for a in range(n_arms) for i in order for row in saved[i]["arms"][a]]


# ------------------------------------------------------------------------------------ ablate
def ablate_stage(cfg: DictConfig, resume: Path | None = None) -> Path:
    from ..distributed import session
    from ..report.head_figures import draw_blocking_figures
    from ..stages import start_run

    cli = _cli()
    with session() as ranks:
        study = setup(cfg, ranks)
        sweep, adapter = study.sweep, study.adapter
        manifest = study.manifest()
        run = start_run(cfg, "ablate", resume, ranks, manifest.pop("dataset_fingerprint"), **manifest)
        needs_rank = study.head_set is None or sweep.ablation == "mean"
        rank_preps = prepare(adapter, study.rank_samples(), cfg.batch_size) if needs_rank else None
        eval_preps = prepare(adapter, study.eval_samples(), cfg.batch_size)
        with cli.progress(ranks.main) as bar:
            removal = study.removal(rank_preps)  # mean ablation: the means are recomputed on resume (one pass)
            with run.timed("rank"):
                head_set = heads_for(study, run, ranks, rank_preps, removal, bar)
            n = len(head_set.heads) if not head_set.ranking else sweep.n_selected(study.total)
            arms = blocking_arms(head_set, n, sweep, cfg.seed)
            with run.timed("sweep"):
                saved = sweep_units(study, run, ranks, "ablate", eval_preps, arms, removal, bar,
                                    f"blocking ({len(arms)} head sets)")
        if not ranks.main:
            return run.path
        rows = arm_major(saved, eval_preps, sweep.settings)
        run.write_table("samples.parquet", rows)
        names = [c.value for c in sweep.settings], [c.value for c in sweep.controls]
        results = {
            **_common(study, head_set, removal, n),
            "blocking": summarise_blocking(rows, *names, n_boot=cfg.scoring.n_boot, seed=cfg.seed),
            "dose": summarise_dose(rows, names[0], n_boot=cfg.scoring.n_boot, seed=cfg.seed),
        }
        return _finish(run, study, results, draw_blocking_figures, print_blocking)


def _finish(run: RunDir, study: Study, results: dict, draw, show) -> Path:
    """Plots, then results.json (last: its presence marks the run complete), then the table."""
    with run.timed("plots"):
        draw(results, run.file("plots"), _title(study))
    run.write_json("results.json", results)
    show(_cli().console, results, _title(study))
    _cli().console.print(f"run directory: {run.path}")
    return run.path


def _common(study: Study, head_set: HeadSet, removal: Removal, n: int) -> dict:
    return {
        **study.provenance(),
        "n_eval_items_dropped_overlap": study.n_overlap_dropped,
        "heads_source": study.sweep.heads_file or "ranked in this run",
        "heads_dataset_fingerprint": head_set.dataset_fingerprint,
        "rank_method": head_set.method,
        "ablation": removal.mode,
        "positions": removal.positions,
        "n_selected": n,
        "fraction_selected": n / study.total,
        "heads": [list(h) for h in head_set.top(n)],
        "settings": [c.value for c in study.sweep.settings],
        "controls": [c.value for c in study.sweep.controls],
    }


# ------------------------------------------------------------------------------------ amplify
def amplify_stage(cfg: DictConfig, resume: Path | None = None) -> Path:
    """Two sweeps, each batch by batch: the top heads at every α (`partial/amplify/`), then, at the best
    α (from every batch of the first), random head sets on the settings batches (`partial/amplify_random/`,
    reusing the first sweep's baselines)."""
    from ..distributed import session
    from ..report.head_figures import draw_amplification_figures
    from ..stages import start_run

    cli = _cli()
    with session() as ranks:
        study = setup(cfg, ranks)
        sweep, adapter = study.sweep, study.adapter
        manifest = study.manifest()
        run = start_run(cfg, "amplify", resume, ranks, manifest.pop("dataset_fingerprint"), **manifest)
        rank_preps = prepare(adapter, study.rank_samples(), cfg.batch_size) if study.head_set is None else None
        eval_preps = prepare(adapter, study.eval_samples(), cfg.batch_size)
        settings, _ = split_preps(eval_preps, sweep.settings)
        names = [c.value for c in sweep.settings], [c.value for c in sweep.controls]
        boot = {"n_boot": cfg.scoring.n_boot, "seed": cfg.seed}
        with cli.progress(ranks.main) as bar:
            with run.timed("rank"):
                head_set = heads_for(study, run, ranks, rank_preps, study.removal(rank_preps) if rank_preps else None, bar)
            removal = Removal("zero", sweep.positions)  # amplification only scales: this says where
            n = len(head_set.heads) if not head_set.ranking else sweep.n_selected(study.total)
            arms = amplification_arms(head_set.top(n), sweep.alphas)
            with run.timed("sweep"):
                saved = sweep_units(study, run, ranks, "amplify", eval_preps, arms, removal, bar,
                                    f"amplifying (α = {', '.join(map(str, sweep.alphas))})", everyone=True)
                rows = arm_major(saved, eval_preps, sweep.settings)
                amp = summarise_amplification(rows, *names, **boot)  # on every rank: the best α picks the next sweep
                rand_arms = random_amplification_arms(head_set, n, amp["best_alpha"], sweep.n_random, cfg.seed)
                where = {id(p): i for i, p in enumerate(eval_preps)}
                bases = [saved[where[id(p)]]["base"] for p in settings]
                rand = sweep_units(study, run, ranks, "amplify_random", settings, rand_arms, removal, bar,
                                   f"random heads at α = {amp['best_alpha']}", base_of=lambda i: bases[i])
        if not ranks.main:
            return run.path
        rows += arm_major(rand, settings, sweep.settings)
        run.write_table("samples.parquet", rows)
        amp["random_at_best_alpha"] = summarise_random_amplification(rows, names[0], **boot)
        results = {**_common(study, head_set, removal, n), "amplification": amp}
        return _finish(run, study, results, draw_amplification_figures, print_amplification)


# ------------------------------------------------------------------------------------ run (the chain)
STAGES = ("build-data", "evaluate", "analyze", "rank-heads", "ablate", "amplify")


def _is_data_override(o: str) -> bool:
    key = o.lstrip("+~").split("=", 1)[0]
    return key == "data" or key.startswith("data.")


def _new_run(root: Path, command: str, before: set[Path]) -> Path:
    made = sorted(p for p in (root / command).glob("*/*") if p.is_dir() and p not in before)
    if len(made) != 1:
        raise RuntimeError(f"expected one new {command} run under {root}, found {len(made)}")
    return made[0]


def run_pipeline(cfg: DictConfig, overrides: list[str], commands: dict) -> Path:
    """build-data → evaluate → analyze → rank-heads → ablate → amplify, as child run directories
    inside one parent `outputs/run/<model>/<stamp>/`; the parent's manifest links each child and its
    results.json gathers their headline numbers. Later stages read the dataset the first one saved;
    ablate and amplify reuse rank-heads' heads.json."""
    from ..data.sources import build_items

    sweep = SweepConfig.from_cfg(cfg.sweep)  # bad sweep options fail before anything is written
    if sweep.heads_file:
        raise UserError("`run` ranks heads itself; drop sweep.heads_file (use ablate/amplify --heads for a given set)")
    items, _ = build_items(cfg.data)
    rank_items, eval_items = split_items(items, sweep.rank_fraction, cfg.seed)
    check_split_sizes(len(rank_items), len(eval_items), len(items), sweep)
    parent = RunDir.create(cfg.output_dir, "run", cfg.model.name, cfg)
    root = parent.path
    child = [o for o in overrides if o.lstrip("+~").split("=", 1)[0] != "output_dir"] + [f"output_dir='{root}'"]
    stages: dict[str, str] = {}

    def stage(command: str, fn, args: list[str]) -> Path:
        before = {p for p in (root / command).glob("*/*")}
        with parent.timed(command):
            fn(args)
        path = _new_run(root, command, before)
        stages[command] = str(path.relative_to(root))
        parent.write_manifest(stages=stages)
        return path

    built = stage("build-data", commands["build-data"], child)
    later = [o for o in child if not _is_data_override(o)] + ["data=disk", f"data.path='{built / 'dataset'}'"]
    stage("evaluate", commands["evaluate"], later)
    stage("analyze", commands["analyze"], later)
    ranked = stage("rank-heads", lambda a: rank_stage(_compose(a)), later)
    with_heads = [*later, f"sweep.heads_file='{ranked / FILE_NAME}'"]
    stage("ablate", lambda a: ablate_stage(_compose(a)), with_heads)
    stage("amplify", lambda a: amplify_stage(_compose(a)), with_heads)
    parent.write_json("results.json", gather(root, stages))
    from ..report.html import write_report

    with parent.timed("report"):
        page = write_report([root], None)
    _cli().console.print(f"report: {page}")
    _cli().console.print(f"pipeline run directory: {root}")
    return root


def _compose(overrides: list[str]) -> DictConfig:
    cfg = _cli().compose(overrides)
    OmegaConf.resolve(cfg)
    return cfg


def gather(root: Path, stages: dict[str, str]) -> dict:
    """The headline numbers of every stage, read back from the children's results.json."""
    import json

    def res(command):
        return json.loads((root / stages[command] / "results.json").read_text())

    ev, ab, am, rk = res("evaluate"), res("ablate"), res("amplify"), res("rank-heads")
    out = {"stages": stages, "mfr": {c: e["mfr"]["mean"] for c, e in ev["mfr"].items() if "/" not in c}}
    findings = root / stages["analyze"] / "findings.json"
    if findings.exists():
        out["findings"] = {k: f["holds"] for k, f in json.loads(findings.read_text()).items()}
    out["heads"] = rk["heads"]
    pooled = ab["blocking"].get(POOLED, {})
    if pooled:
        out["blocking"] = {"mfr_before": pooled["before"]["mfr"]["mean"], "mfr_top": pooled["top"]["mfr"]["mean"],
                           "mfr_random": pooled["random"]["mfr"]["mean"],
                           "separated_mfr": pooled["separation"]["mfr"]["separated"],
                           "separated_log_odds": pooled["separation"]["log_odds"]["separated"]}
    best = am["amplification"]["best_alpha"]
    at = next((e for e in am["amplification"]["per_alpha"] if e["alpha"] == best), None)
    if at:
        out["amplification"] = {"best_alpha": best, "recovery": at["settings"][POOLED]["recovery"]["mean"],
                                "harm": at["settings"][POOLED]["harm"]["mean"]}
    return out


# ------------------------------------------------------------------------------------ tables
def _f(x, fmt="{:.3f}") -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def _ci(e: dict, fmt="{:.3f}") -> str:
    return f"[{_f(e.get('ci_low'), fmt)}, {_f(e.get('ci_high'), fmt)}]"


def print_ranking(console, results: dict, title: str) -> None:
    methods = list(results["top"])
    table = Table(title=f"Top heads by {results['rank_method']} ({results['rank_by']}) — {title}")
    table.add_column("rank", justify="right")
    table.add_column("head (layer.head)")
    for m in methods:
        table.add_column(f"{m} score", justify="right")
    n = results["n_selected"]
    scores = {m: results["scores"][m]["pooled"] for m in methods}
    for i, e in enumerate(results["top"][results["rank_method"]][: max(n, 5)]):
        marker = " *" if i < n else ""
        table.add_row(str(i + 1), f"{e['layer']}.{e['head']}{marker}", *(f"{scores[m][e['layer']][e['head']]:+.3g}" for m in methods))
    console.print(table)
    for pair, a in results["agreement"].items():
        console.print(f"{pair.replace('~', ' vs ')}: Spearman {_f(a['spearman'], '{:+.2f}')}, top-{a['n_top']} overlap {a['top_overlap']}")
    console.print(f"* selected: {n} of {results['n_layers'] * results['n_heads']} heads")


def print_blocking(console, results: dict, title: str) -> None:
    n = results["n_selected"]
    table = Table(title=f"Blocking the top {n} heads ({results['ablation']}, {results['positions']} positions) — {title}")
    table.add_column("condition", no_wrap=True)
    for col in ("n", "before", f"top {n}", f"random {n} [95% CI]", f"bottom {n}", "Δ log-odds top", "random", "top < random"):
        table.add_column(col, justify="right")
    controls_started = False
    for cond, e in results["blocking"].items():
        if e["kind"] == "control" and not controls_started:
            table.add_section()
            controls_started = True
        rnd, sep = e.get("random"), e.get("separation")
        table.add_row(
            cond,
            str(e["n"]),
            _f(e["before"]["mfr"]["mean"]),
            _f(e["top"]["mfr"]["mean"]),
            f"{_f(rnd['mfr']['mean'])} {_ci(rnd['mfr'], '{:.2f}')}" if rnd else "–",
            _f(e["bottom"]["mfr"]["mean"]) if "bottom" in e else "–",
            _f(e["top"]["change"]["log_odds"]["mean"], "{:+.2f}"),
            _f(rnd["change"]["log_odds"]["mean"], "{:+.2f}") if rnd else "–",
            ("[green]yes[/]" if sep["mfr"]["separated"] or sep["log_odds"]["separated"] else "[red]no[/]") if sep else "",
        )
    console.print(table)
    console.print("MFR for the settings, accuracy for the controls (below the line). top < random: the interval of the "
                  "top set's mean change (MFR or log-odds) lies wholly below the random sets'.")


def print_amplification(console, results: dict, title: str) -> None:
    amp = results["amplification"]
    n = results["n_selected"]
    controls = results["controls"]
    table = Table(title=f"Amplifying the top {n} heads — {title}")
    for col in ("α", "failed", "recovery [95% CI]", "following", "harm", *(f"Δ {c}" for c in controls)):
        table.add_column(col, justify="right", no_wrap=col == "α")
    for e in amp["per_alpha"]:
        s = e["settings"][POOLED]
        best = " *" if e["alpha"] == amp["best_alpha"] else ""
        table.add_row(f"{e['alpha']:g}{best}", str(s["n_failed"]), f"{_f(s['recovery']['mean'])} {_ci(s['recovery'], '{:.2f}')}",
                      str(s["n_followed"]), _f(s["harm"]["mean"]),
                      *(_f(e["controls"][c]["change"], "{:+.3f}") if c in e["controls"] else "–" for c in controls))
    rnd = amp.get("random_at_best_alpha", {}).get(POOLED)
    if rnd and rnd["alpha"] is not None:
        table.add_section()
        table.add_row(f"{rnd['alpha']:g} random", "", f"{_f(rnd['recovery']['mean'])} {_ci(rnd['recovery'], '{:.2f}')}", "",
                      _f(rnd["harm"]["mean"]), *("" for _ in controls))
    console.print(table)
    console.print(f"Settings pooled; recovery: failed samples that now follow; harm: following samples that flip; "
                  f"* best α (recovery − harm); last row: {rnd['recovery']['n_seeds'] if rnd else 0} random sets of {n} heads at the best α.")
