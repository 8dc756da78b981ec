"""The `mllm-arb` command line: one small function per stage, configuration composed by Hydra.

Every command takes Hydra overrides after its options (`mllm-arb evaluate model=qwen2_5_vl_tiny
data.limit=32`) and `--cfg` to print the composed configuration instead of running.
"""

from __future__ import annotations

import hashlib
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from .errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.splitlines()[0])
console = Console()
err_console = Console(stderr=True)

OVERRIDES = typer.Argument(None, help="Hydra overrides, e.g. model=llava_tiny data.limit=32")
PRINT_CFG = typer.Option(False, "--cfg", help="Print the composed config and exit.")


def conf_dir() -> Path:
    env = os.environ.get("MLLM_ARB_CONF")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "conf"


def compose(overrides: list[str] | None) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        return hydra_compose(config_name="config", overrides=list(overrides or []))


@contextmanager
def user_errors():
    """Bad input ends in one clear line and exit code 2, never a traceback."""
    from hydra.errors import HydraException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    try:
        yield
    except UserError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except OverrideParseException as exc:
        err_console.print(
            f"[bold red]config error:[/] cannot parse override {exc.override!r}; quote values with special characters, "
            "e.g. 'analysis.edges=[\"image->last\"]'",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(2) from None
    except (HydraException, OmegaConfBaseException) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        err_console.print(f"[bold red]config error:[/] {msg}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def prepare(overrides: list[str] | None, print_cfg: bool) -> DictConfig | None:
    cfg = compose(overrides)
    OmegaConf.resolve(cfg)  # fail now on a missing mandatory value (???), not half-way through
    if print_cfg:
        console.print(OmegaConf.to_yaml(cfg), highlight=False, markup=False)
        return None
    return cfg


def progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
    )


def load_model(cfg: DictConfig):
    import transformers

    from .models.loading import load_adapter

    # our own rich bars report progress; transformers' per-load bars and notices are noise here
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()

    m = cfg.model
    return load_adapter(
        m.path,
        dtype=m.dtype,
        device=m.device,
        attn_implementation=m.attn_implementation,
        padding_side=m.padding_side,
        name=m.name,
        family=m.get("family"),
    )


# ------------------------------------------------------------------------------------- commands
@app.command("models")
def models_cmd() -> None:
    """List supported model families and their configs."""
    from .models.loading import ADAPTERS

    configs = {p.stem: OmegaConf.load(p) for p in sorted((conf_dir() / "model").glob("*.yaml"))}
    table = Table(title="Supported model families and their configs (use: model=<config>)")
    for col in ("family", "model types", "config", "loads"):
        table.add_column(col, overflow="fold")
    for a in ADAPTERS:
        mine = [(name, str(c.path)) for name, c in configs.items() if c.get("family") == a.family]
        for k, (name, path) in enumerate(mine or [("", "")]):
            table.add_row(a.family if k == 0 else "", ", ".join(a.model_types) if k == 0 else "", name, path, end_section=k == len(mine) - 1)
    console.print(table)


@app.command("build-data")
def build_data_cmd(overrides: Optional[list[str]] = OVERRIDES, print_cfg: bool = PRINT_CFG) -> None:
    """Build a conflict dataset from the `data` config group and save it into a run directory."""
    with user_errors():
        cfg = prepare(overrides, print_cfg)
        if cfg is None:
            return
        from .data.sources import build_items_with_report
        from .data.store import save_items
        from .runs import RunDir

        items, fp, report = build_items_with_report(cfg.data)
        adapter = load_model(cfg) if cfg.build_data.filter_with_model else None
        run = RunDir.create(cfg.output_dir, "build-data", cfg.data.source, cfg)
        results: dict = {"source": cfg.data.source, "source_report": report}
        if adapter is not None:
            from .data.filtering import filter_items

            with run.timed("filter"), progress() as bar:
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
        console.print(table)
        console.print(f"dataset: {run.file('dataset')}  (use: data=disk data.path={run.file('dataset')})")


@app.command("evaluate")
def evaluate_cmd(overrides: Optional[list[str]] = OVERRIDES, print_cfg: bool = PRINT_CFG) -> None:
    """Behaviour: score every condition and report the modality-following ratio with intervals."""
    with user_errors():
        cfg = prepare(overrides, print_cfg)
        if cfg is None:
            return
        from .analysis.behaviour import check_answers, mfr_table, score_samples
        from .data.sources import build_items
        from .data.templates import render_all
        from .runs import RunDir

        conditions = conditions_from(cfg.conditions)
        items, fp = build_items(cfg.data)
        samples = render_all(items, conditions, **cfg.templates)
        adapter = load_model(cfg)
        check_answers(adapter.tokenizer, samples)
        run = RunDir.create(cfg.output_dir, "evaluate", cfg.model.name, cfg)
        run.write_manifest(dataset_fingerprint=fp, model_source=str(cfg.model.path), n_samples=len(samples))
        with run.timed("score"), progress() as bar:
            task = bar.add_task("scoring", total=len(samples))
            rows = score_samples(
                adapter,
                samples,
                batch_size=cfg.batch_size,
                generate_tokens=cfg.scoring.generate_tokens,
                on_batch=lambda n: bar.advance(task, n),
            )
        run.write_table("samples.parquet", [r.to_row() for r in rows])
        table = mfr_table(rows, n_boot=cfg.scoring.n_boot, seed=cfg.seed)
        run.write_json("results.json", {"model": adapter.name, "dataset_fingerprint": fp, "mfr": table})
        print_mfr(table, title=f"{adapter.name} on {cfg.data.source} ({len(items)} items)")
        console.print(f"run directory: {run.path}")


def conditions_from(names) -> list:
    from .data.records import Condition

    try:
        return [Condition(c) for c in names]
    except ValueError as exc:
        raise UserError(f"{exc}; conditions are {', '.join(c.value for c in Condition)}") from None


@app.command("analyze")
def analyze_cmd(overrides: Optional[list[str]] = OVERRIDES, print_cfg: bool = PRINT_CFG) -> None:
    """Information flow: attention knockout between token groups, logit lens by component, anchor
    agreement, plots, and a findings check against the study's claims."""
    with user_errors():
        cfg = prepare(overrides, print_cfg)
        if cfg is None:
            return
        from .analysis.behaviour import check_answers
        from .analysis.findings import check_findings
        from .analysis.flow import KnockoutPlan, knockout_rows, lens_rows, parse_edge, summarise_knockout, summarise_lens
        from .data.sources import build_items
        from .data.templates import render_all
        from .interventions.knockout import default_window_size
        from .report.flow_figures import draw_flow_figures
        from .runs import RunDir

        a = cfg.analysis
        try:
            edges = tuple(parse_edge(e) for e in a.edges)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        items, fp = build_items(cfg.data)
        if a.max_items and len(items) > a.max_items:
            # the sweep costs edges × layers forward passes per sample: cap it unless asked for more
            items = items[: int(a.max_items)]
            fp = hashlib.sha256(f"{fp}:first-{a.max_items}".encode()).hexdigest()[:16]
        samples = render_all(items, conditions_from(a.settings), **cfg.templates)
        adapter = load_model(cfg)
        check_answers(adapter.tokenizer, samples)
        n_layers = adapter.parts.n_layers
        window = int(a.window) if a.window else default_window_size(n_layers)
        if not 1 <= window <= n_layers:
            raise UserError(f"analysis.window={window} must lie in [1, {n_layers}] (the model has {n_layers} layers)")
        plan = KnockoutPlan(edges=edges, window=window, n_layers=n_layers)
        run = RunDir.create(cfg.output_dir, "analyze", cfg.model.name, cfg)
        run.write_manifest(dataset_fingerprint=fp, model_source=str(cfg.model.path), n_samples=len(samples), window=window)
        with progress() as bar:
            task = bar.add_task(f"knockout ({len(edges)} edges × {n_layers} windows)", total=len(samples) * plan.n_passes_per_batch)
            with run.timed("knockout"):
                ko_rows = knockout_rows(adapter, samples, plan, cfg.batch_size, on_step=lambda n: bar.advance(task, n))
            run.write_table("knockout.parquet", ko_rows)
            lens = None
            if a.lens:
                task = bar.add_task("logit lens by component", total=len(samples))
                with run.timed("lens"):
                    l_rows = lens_rows(adapter, samples, cfg.batch_size, on_step=lambda n: bar.advance(task, n))
                run.write_table("lens.parquet", l_rows)
                lens = summarise_lens(l_rows, n_layers)
            saliency = None
            if a.saliency:
                from .analysis.saliency import saliency_rows, summarise_saliency

                task = bar.add_task("attention saliency (eager, gradients)", total=len(samples))
                with run.timed("saliency"):
                    s_rows = saliency_rows(adapter, samples, edges, cfg.batch_size, on_step=lambda n: bar.advance(task, n))
                run.write_table("saliency.parquet", s_rows)
                saliency = summarise_saliency(s_rows, n_boot=cfg.scoring.n_boot, seed=cfg.seed)
        knockout = summarise_knockout(ko_rows, n_boot=cfg.scoring.n_boot, seed=cfg.seed)
        results = {
            "model": adapter.name,
            "dataset_fingerprint": fp,
            "n_layers": n_layers,
            "window": window,
            "n_items": len(items),
            "knockout": knockout,
            "lens": lens,
            "saliency": saliency,
        }
        run.write_json("results.json", results)
        findings = check_findings(knockout, lens or {"components": {}, "agreement": {}}, n_layers, a.findings)
        run.write_json("findings.json", findings)
        title = f"{adapter.name} on {cfg.data.source} ({len(items)} items)"
        with run.timed("plots"):
            draw_flow_figures(results, run.file("plots"), title)
        print_findings(findings, title)
        console.print(f"run directory: {run.path}")


TOP_K = typer.Option(None, "--top-k", help="Fraction of all heads to select, in (0, 1]: ceil(k × layers × heads).")
TOP_N = typer.Option(None, "--top-n", help="Exact number of heads to select (instead of --top-k).")
HEADS_FILE = typer.Option(None, "--heads", help="A heads.json to use instead of ranking the heads here.")
FROM_RUN = typer.Option(None, "--from", help="A rank-heads run directory whose heads.json to reuse.")


@app.command("rank-heads")
def rank_heads_cmd(
    method: Optional[str] = typer.Option(None, "--method", help="Ranking that heads.json keeps: ablation, attribution or dla."),
    overrides: Optional[list[str]] = OVERRIDES,
    print_cfg: bool = PRINT_CFG,
) -> None:
    """Heads: score every attention head (ablation, attribution patching, DLA) and write heads.json."""
    with user_errors():
        from .analysis.head_stages import cli_overrides, rank_stage

        cfg = prepare([*(overrides or []), *cli_overrides(method=method)], print_cfg)
        if cfg is not None:
            rank_stage(cfg)


@app.command("ablate")
def ablate_cmd(
    top_k: Optional[float] = TOP_K,
    top_n: Optional[int] = TOP_N,
    heads: Optional[Path] = HEADS_FILE,
    from_run: Optional[Path] = FROM_RUN,
    overrides: Optional[list[str]] = OVERRIDES,
    print_cfg: bool = PRINT_CFG,
) -> None:
    """Heads: block the top heads; MFR against random and lowest-ranked heads, controls, dose-response."""
    with user_errors():
        from .analysis.head_stages import ablate_stage, cli_overrides

        cfg = prepare([*(overrides or []), *cli_overrides(top_k, top_n, heads, from_run)], print_cfg)
        if cfg is not None:
            ablate_stage(cfg)


@app.command("amplify")
def amplify_cmd(
    top_k: Optional[float] = TOP_K,
    top_n: Optional[int] = TOP_N,
    heads: Optional[Path] = HEADS_FILE,
    from_run: Optional[Path] = FROM_RUN,
    alpha: Optional[list[float]] = typer.Option(None, "--alpha", help="Scale factor α (repeatable); default sweep.alphas."),
    overrides: Optional[list[str]] = OVERRIDES,
    print_cfg: bool = PRINT_CFG,
) -> None:
    """Heads: scale the top heads by α on failed samples; recovery, harm, controls, random heads."""
    with user_errors():
        from .analysis.head_stages import amplify_stage, cli_overrides

        cfg = prepare([*(overrides or []), *cli_overrides(top_k, top_n, heads, from_run, alphas=alpha)], print_cfg)
        if cfg is not None:
            amplify_stage(cfg)


@app.command("run")
def run_cmd(overrides: Optional[list[str]] = OVERRIDES, print_cfg: bool = PRINT_CFG) -> None:
    """The whole study: build-data → evaluate → analyze → rank-heads → ablate → amplify in one parent run."""
    with user_errors():
        from .analysis.head_stages import run_pipeline

        cfg = prepare(overrides, print_cfg)
        if cfg is not None:
            commands = {"build-data": lambda o: build_data_cmd(o, False), "evaluate": lambda o: evaluate_cmd(o, False),
                        "analyze": lambda o: analyze_cmd(o, False)}
            run_pipeline(cfg, list(overrides or []), commands)


@app.command("report")
def report_cmd(
    run_dirs: list[Path] = typer.Argument(..., metavar="RUN_DIR", help="A `run` directory, one stage run, or several "
                                          "stage runs of one model (with --compare: runs of several models)."),
    compare: bool = typer.Option(False, "--compare", help="One page putting the models of the runs side by side."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Where to write the page (default: report.html in the "
                                       "run directory; with --compare, compare.html here)."),
    screenshot: bool = typer.Option(False, "--screenshot", help="Also open the page in headless Chromium, check it, and "
                                    "save a PNG screenshot beside it."),
) -> None:
    """A self-contained HTML report of a study (or, with --compare, of several models side by side)."""
    with user_errors():
        from .report.html import write_compare, write_report

        path = write_compare(run_dirs, out) if compare else write_report(run_dirs, out)
        console.print(f"report: {path}")
        if screenshot:
            from .report.browser import BrowserError, screenshot_report

            try:
                png, check = screenshot_report(path)
            except BrowserError as exc:
                raise UserError(str(exc)) from None
            console.print(f"screenshot: {png} ({len(check.desktop.get('figures', []))} figures, "
                          f"{len(check.console_errors)} console errors)")


organism_app = typer.Typer(no_args_is_help=True, help="The model organism: train it from scratch, or ship it.")
app.add_typer(organism_app, name="organism")


@organism_app.command("train")
def organism_train_cmd(
    ship: bool = typer.Option(False, "--ship", help="Train into the package's checkpoint folder, then evaluate it on "
                              "1,000 held-out items per condition and rewrite its MODEL_CARD.md."),
    overrides: Optional[list[str]] = OVERRIDES,
    print_cfg: bool = PRINT_CFG,
) -> None:
    """Train the organism from scratch on CPU (config conf/organism/default.yaml), deterministically from a seed."""
    with user_errors():
        from hydra import compose as hydra_compose
        from hydra import initialize_config_dir

        with initialize_config_dir(config_dir=str(conf_dir() / "organism"), version_base=None):
            cfg = hydra_compose(config_name="default", overrides=list(overrides or []))
        if print_cfg:
            console.print(OmegaConf.to_yaml(cfg), highlight=False, markup=False)
            return
        from .organism import CHECKPOINT_DIR
        from .organism.card import document
        from .organism.train import train

        if ship:
            cfg.output_dir, cfg.overwrite = str(CHECKPOINT_DIR), True
        try:
            path = train(cfg)
        except (ValueError, FileExistsError) as exc:
            raise UserError(str(exc)) from None
        console.print(f"organism saved to {path}")
        if ship:
            results = document(path, threads=cfg.threads)
            console.print({c: round(v["rate"], 4) for c, v in results["summary"].items()}, results["targets_met"])


def print_findings(findings: dict, title: str) -> None:
    table = Table(title=f"Findings — {title}")
    for col in ("claim", "measured", "threshold", "holds"):
        table.add_column(col)
    for key, f in findings.items():
        value = f["value"]
        if isinstance(value, dict):
            shown = "\n".join(f"{k.replace('_difference', '')}: {v:+.3f}" for k, v in value.items())
        else:
            shown = f"{value:+.3f}"
        if key.startswith("a_") and f.get("measured"):
            shown += "".join(f"\n{m['edge']}: layer {m['peak_layer']}" for m in f["measured"])
        holds = {True: "[green]yes[/]", False: "[red]no[/]", None: "[yellow]n/a[/]"}[f["holds"]]
        table.add_row(f"({key[0]}) {f['claim']}", shown, f"{f['threshold']}", holds)
    console.print(table)


def print_mfr(table: dict[str, dict], title: str) -> None:
    out = Table(title=title)
    for col in ("condition", "n", "MFR / accuracy", "95% CI", "mean log-odds"):
        out.add_column(col, justify="left" if col == "condition" else "right")
    for key, entry in table.items():
        if "/" in key:
            continue
        m, lo = entry["mfr"], entry["log_odds"]
        out.add_row(key, str(m["n"]), f"{m['mean']:.3f}", f"[{m['ci_low']:.3f}, {m['ci_high']:.3f}]", f"{lo['mean']:+.2f}")
    console.print(out)


def main() -> None:  # pragma: no cover - console entry
    app(prog_name="mllm-arb")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
