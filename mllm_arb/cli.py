"""The `mllm-arb` command line: one small function per stage, configuration composed by Hydra.

Every command takes Hydra overrides after its options (`mllm-arb evaluate model=qwen2_5_vl_tiny
data.limit=32`) and `--cfg` to print the composed configuration instead of running.
"""

from __future__ import annotations

import json
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
# Piped into a log (CI, `| tee`), rich would fold the result tables to 80 columns ("befo…"): give them room.
_WIDTH = None if os.environ.get("COLUMNS") or sys.stdout.isatty() else 140
console = Console(width=_WIDTH)
err_console = Console(stderr=True, width=_WIDTH)

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


def progress(enabled: bool = True):
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
        disable=not enabled,
    )


def load_model(cfg: DictConfig, ranks=None):
    """The configured model; under torchrun (`ranks` sharded) on this rank's own GPU."""
    import transformers

    from .models.loading import load_adapter

    # our own rich bars report progress; transformers' per-load bars and notices are noise here
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()

    m = cfg.model
    return load_adapter(
        m.path,
        dtype=m.dtype,
        device=ranks.device(m.device) if ranks is not None else m.device,
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


RESUME = typer.Option(None, "--resume", help="Continue an interrupted run directory of this command with its saved "
                      "config: batches it saved are read back, not recomputed.")


def configure(command: str, overrides: list[str] | None, print_cfg: bool, resume: Path | None) -> DictConfig | None:
    """The composed config, or with --resume the run's saved one (overrides given beside it must agree)."""
    if resume is None:
        return prepare(overrides, print_cfg)
    from .resume import resume_config

    cfg = resume_config(resume, command, prepare(overrides, False) if overrides else None)
    if print_cfg:
        console.print(OmegaConf.to_yaml(cfg), highlight=False, markup=False)
        return None
    return cfg


def single_process(command: str) -> None:
    """Commands without sharding refuse a torchrun launch instead of running N times side by side."""
    from .distributed import Ranks

    if Ranks.from_env().sharded:
        raise UserError(f"`{command}` does not run sharded; launch it without torchrun (evaluate, analyze, rank-heads, ablate and amplify shard)")


@app.command("build-data")
def build_data_cmd(overrides: Optional[list[str]] = OVERRIDES, print_cfg: bool = PRINT_CFG) -> None:
    """Build a conflict dataset from the `data` config group and save it into a run directory."""
    with user_errors():
        single_process("build-data")
        cfg = prepare(overrides, print_cfg)
        if cfg is not None:
            from .stages import build_data_stage

            build_data_stage(cfg)


@app.command("evaluate")
def evaluate_cmd(overrides: Optional[list[str]] = OVERRIDES, print_cfg: bool = PRINT_CFG, resume: Optional[Path] = RESUME) -> None:
    """Behaviour: score every condition and report the modality-following ratio with intervals."""
    with user_errors():
        cfg = configure("evaluate", overrides, print_cfg, resume)
        if cfg is not None:
            from .stages import evaluate_stage

            evaluate_stage(cfg, resume)


def conditions_from(names) -> list:
    from .data.records import Condition

    try:
        return [Condition(c) for c in names]
    except ValueError as exc:
        raise UserError(f"{exc}; conditions are {', '.join(c.value for c in Condition)}") from None


@app.command("analyze")
def analyze_cmd(overrides: Optional[list[str]] = OVERRIDES, print_cfg: bool = PRINT_CFG, resume: Optional[Path] = RESUME) -> None:
    """Information flow: attention knockout between token groups, logit lens by component, anchor
    agreement, plots, and a findings check against the study's claims."""
    with user_errors():
        cfg = configure("analyze", overrides, print_cfg, resume)
        if cfg is not None:
            from .stages import analyze_stage

            analyze_stage(cfg, resume)


TOP_K = typer.Option(None, "--top-k", help="Fraction of all heads to select, in (0, 1]: ceil(k × layers × heads).")
TOP_N = typer.Option(None, "--top-n", help="Exact number of heads to select (instead of --top-k).")
HEADS_FILE = typer.Option(None, "--heads", help="A heads.json to use instead of ranking the heads here.")
FROM_RUN = typer.Option(None, "--from", help="A rank-heads run directory whose heads.json to reuse.")


@app.command("rank-heads")
def rank_heads_cmd(
    method: Optional[str] = typer.Option(None, "--method", help="Ranking that heads.json keeps: ablation, attribution, hybrid, verified or dla."),
    overrides: Optional[list[str]] = OVERRIDES,
    print_cfg: bool = PRINT_CFG,
    resume: Optional[Path] = RESUME,
) -> None:
    """Heads: score every attention head (ablation, attribution patching, DLA) and write heads.json."""
    with user_errors():
        from .analysis.head_stages import cli_overrides, rank_stage

        cfg = configure("rank-heads", [*(overrides or []), *cli_overrides(method=method)], print_cfg, resume)
        if cfg is not None:
            rank_stage(cfg, resume)


@app.command("ablate")
def ablate_cmd(
    top_k: Optional[float] = TOP_K,
    top_n: Optional[int] = TOP_N,
    heads: Optional[Path] = HEADS_FILE,
    from_run: Optional[Path] = FROM_RUN,
    overrides: Optional[list[str]] = OVERRIDES,
    print_cfg: bool = PRINT_CFG,
    resume: Optional[Path] = RESUME,
) -> None:
    """Heads: block the top heads; MFR against random and lowest-ranked heads, controls, dose-response."""
    with user_errors():
        from .analysis.head_stages import ablate_stage, cli_overrides

        cfg = configure("ablate", [*(overrides or []), *cli_overrides(top_k, top_n, heads, from_run)], print_cfg, resume)
        if cfg is not None:
            ablate_stage(cfg, resume)


@app.command("amplify")
def amplify_cmd(
    top_k: Optional[float] = TOP_K,
    top_n: Optional[int] = TOP_N,
    heads: Optional[Path] = HEADS_FILE,
    from_run: Optional[Path] = FROM_RUN,
    alpha: Optional[list[float]] = typer.Option(None, "--alpha", help="Scale factor α (repeatable); default sweep.alphas."),
    overrides: Optional[list[str]] = OVERRIDES,
    print_cfg: bool = PRINT_CFG,
    resume: Optional[Path] = RESUME,
) -> None:
    """Heads: scale the top heads by α on failed samples; recovery, harm, controls, random heads."""
    with user_errors():
        from .analysis.head_stages import amplify_stage, cli_overrides

        cfg = configure("amplify", [*(overrides or []), *cli_overrides(top_k, top_n, heads, from_run, alphas=alpha)], print_cfg, resume)
        if cfg is not None:
            amplify_stage(cfg, resume)


@app.command("run")
def run_cmd(overrides: Optional[list[str]] = OVERRIDES, print_cfg: bool = PRINT_CFG) -> None:
    """The whole study: build-data → evaluate → analyze → rank-heads → ablate → amplify in one parent run."""
    with user_errors():
        single_process("run")
        cfg = prepare(overrides, print_cfg)
        if cfg is not None:
            pipeline(cfg, list(overrides or []))


def pipeline(cfg: DictConfig, overrides: list[str]) -> Path:
    from .analysis.head_stages import run_pipeline
    from .stages import analyze_stage, build_data_stage, evaluate_stage

    commands = {"build-data": lambda o: build_data_stage(prepare(o, False)),
                "evaluate": lambda o: evaluate_stage(prepare(o, False)),
                "analyze": lambda o: analyze_stage(prepare(o, False))}
    return run_pipeline(cfg, overrides, commands)


@app.command("validate")
def validate_cmd(
    from_runs: Optional[list[Path]] = typer.Option(None, "--from", help="Finished analyze, rank-heads, ablate, run or validate "
                                                   "runs to reuse instead of recomputing them (repeatable)."),
    overrides: Optional[list[str]] = OVERRIDES,
    print_cfg: bool = PRINT_CFG,
) -> None:
    """Ground truth: score knockout, head rankings, findings and blocking against the mechanism a model
    ships in ground_truth.json (model=organism_anchor); validation.json in a validate run directory."""
    with user_errors():
        single_process("validate")
        cfg = prepare(overrides, print_cfg)
        if cfg is not None:
            from .validation.stage import validate_stage

            validate_stage(cfg, list(overrides or []), list(from_runs or []))


@app.command("grid", context_settings={"allow_interspersed_args": False})
def grid_cmd(
    command: str = typer.Argument(..., help="The command every job runs: evaluate, analyze, rank-heads, ablate, amplify, "
                                  "build-data or run."),
    overrides: Optional[list[str]] = typer.Argument(None, help="Hydra overrides; comma-separated values sweep, e.g. "
                                                    "model=llava_tiny,qwen2_vl_tiny data.n_items=8,16 hydra/launcher=slurm"),
) -> None:
    """Grids: a Hydra multirun of one command over models × datasets × settings (joblib locally, submitit on SLURM);
    every job a normal run directory, and a summary of the jobs in a grid run directory."""
    with user_errors():
        from .grid import run_grid

        single_process("grid")
        path = run_grid(command, list(overrides or []), lambda o: prepare(o, False))
        summary = json.loads((path / "results.json").read_text())
        if summary["n_failed"]:
            err_console.print(f"[bold red]error:[/] {summary['n_failed']} of {summary['n_jobs']} jobs failed "
                              f"(see {path / 'results.json'})", highlight=False, soft_wrap=True)
            raise typer.Exit(1)


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
    ship: bool = typer.Option(False, "--ship", help="Train into the package's folder of that organism, then evaluate it on "
                              "1,000 held-out items per condition and rewrite its MODEL_CARD.md."),
    config: str = typer.Option("default", "--config", help="conf/organism/<NAME>.yaml: default (the natural organism) or "
                               "anchor (the planted one, model=organism_anchor)."),
    overrides: Optional[list[str]] = OVERRIDES,
    print_cfg: bool = PRINT_CFG,
) -> None:
    """Train an organism from scratch on CPU (conf/organism/), deterministically from a seed."""
    with user_errors():
        from .organism.__main__ import compose as compose_organism

        cfg = compose_organism(config, list(overrides or []))
        if print_cfg:
            console.print(OmegaConf.to_yaml(cfg), highlight=False, markup=False)
            return
        from .organism.__main__ import main as organism_main

        try:
            organism_main(["--config", config, *(["--ship"] if ship else []), *(overrides or [])])
        except (ValueError, FileExistsError) as exc:
            raise UserError(str(exc)) from None


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
