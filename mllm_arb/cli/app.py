"""The `mllm-arb` command line: one small function per stage, configuration composed by Hydra.

Every command takes Hydra overrides after its options (`mllm-arb evaluate model=qwen2_5_vl_tiny
data.limit=32`) and `--cfg` to print the composed configuration instead of running.
"""

from __future__ import annotations

import re
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from ..core.errors import UserError
from ..core.heads_file import FILE_NAME
from ..core.names import SHARDABLE
from ..core.paths import conf_dir
from ..runtime.config import config_error_line, configure, resolved
from ..runtime.progress import console_width, log_every
from ..runtime.runs import OPENED, unlock_run
from .tables import console, show

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.splitlines()[0])
err_console = Console(stderr=True, width=console_width())

OVERRIDES = typer.Argument(None, help="Hydra overrides, e.g. model=llava_tiny data.limit=32")
PRINT_CFG = typer.Option(False, "--cfg", help="Print the composed config and exit.")
RESUME = typer.Option(None, "--resume", help="Continue an interrupted run directory of this command with its saved "
                      "config: batches it saved are read back, not recomputed.")
TOP_K = typer.Option(None, "--top-k", help="Fraction of all heads to select, in (0, 1]: ceil(k × layers × heads).")
TOP_N = typer.Option(None, "--top-n", help="Exact number of heads to select (instead of --top-k).")
HEADS_FILE = typer.Option(None, "--heads", help="A heads.json to use instead of ranking the heads here.")
FROM_RUN = typer.Option(None, "--from", help="A rank-heads run directory whose heads.json to reuse.")


@contextmanager
def user_errors():
    """Bad input ends in one clear line and exit code 2, never a traceback."""
    from hydra.errors import HydraException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    OPENED.clear()
    try:
        yield
    except UserError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        resume_hint()
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        err_console.print("[bold red]interrupted[/]", highlight=False)
        resume_hint()
        raise typer.Exit(130) from None
    except OverrideParseException as exc:
        err_console.print(
            f"[bold red]config error:[/] cannot parse override {exc.override!r}; quote values with special characters, "
            "e.g. 'analysis.edges=[\"image->last\"]'",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(2) from None
    except (HydraException, OmegaConfBaseException) as exc:
        err_console.print(f"[bold red]config error:[/] {config_error_line(exc)}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except OSError as exc:  # (after Hydra's errors, some of which are OSErrors) a full disk, a folder that is a file or read-only: the system's reason and where
        where = f": {exc.filename}" if exc.filename else ""
        err_console.print(f"[bold red]error:[/] {exc.strerror or type(exc).__name__}{where}", highlight=False, soft_wrap=True)
        resume_hint()
        raise typer.Exit(2) from None
    except typer.Exit:
        raise
    except Exception:  # a fault, not bad input: its traceback stays, but the saved batches are not lost either
        resume_hint()
        raise
    finally:
        unlock_run()  # the command is over: its folders are free for a --resume from another process


def resume_hint() -> None:
    """After a failure, name the unfinished stage run and the command that continues it (nothing is lost:
    every finished batch is saved)."""
    unfinished = [(command, path) for command, path in OPENED if not (path / "results.json").exists()]
    if unfinished:
        command, path = unfinished[-1]
        err_console.print(f"the run folder {path} keeps every finished batch; continue it with: mllm-arb {command} --resume {path}",
                          highlight=False, soft_wrap=True)


def config_or_print(command: str, overrides: list[str] | None, print_cfg: bool, resume: Path | None = None) -> DictConfig | None:
    """The command's config; with --cfg it is printed instead (and None returned)."""
    from ..pipeline.registry import check_known_values

    cfg = configure(command, overrides, resume)
    check_known_values(cfg)
    log_every()  # a bad MLLM_ARB_LOG_EVERY fails here, not once a run folder exists
    if print_cfg:
        console.print(OmegaConf.to_yaml(cfg), highlight=False, markup=False)
        return None
    return cfg


def single_process(command: str) -> None:
    """Commands without sharding refuse a torchrun launch instead of running N times side by side."""
    from ..runtime.ranks import Ranks

    if Ranks.from_env().sharded:
        raise UserError(f"`{command}` does not run sharded; launch it without torchrun ({', '.join(SHARDABLE[:-1])} "
                        f"and {SHARDABLE[-1]} shard)")


def hydra_quoted(text: str) -> str:
    """`text` for the inside of a single-quoted Hydra override value (its quotes escaped). A `${` would be
    read as an interpolation whatever the quoting: such a path is refused."""
    if "${" in text:
        raise UserError(f"{text}: a path containing '${{' cannot be passed through the configuration; rename or link it")
    # Hydra's quoted strings: a quote is escaped by a backslash, and backslashes right before a quote (or the
    # closing quote) are doubled; every other backslash is literal
    text = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", text)
    return re.sub(r"(\\+)$", lambda m: m.group(1) * 2, text)


def head_overrides(top_k=None, top_n=None, heads=None, from_run=None, method=None, alphas=None, compare=False) -> list[str]:
    """The head commands' options as Hydra overrides, so they land in the saved config and its hash."""
    from ..pipeline.heads.methods import METHODS

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
        out.append(f"sweep.heads_file='{hydra_quoted(str(Path(heads).resolve()))}'")
    if method is not None:
        if method not in METHODS:
            raise UserError(f"--method {method!r}: choose from {', '.join(METHODS)}")
        out.append(f"sweep.rank_method={method}")
    if compare:
        out.append(f"sweep.methods=[{','.join(METHODS)}]")
    if alphas:
        out.append(f"sweep.alphas=[{','.join(str(a) for a in alphas)}]")
    return out


def run_stage(command: str, overrides: list[str] | None, print_cfg: bool, resume: Path | None = None) -> None:
    """One stage command: its config (or the resumed run's), the stage, its tables."""
    from ..pipeline.registry import stage_function

    cfg = config_or_print(command, overrides, print_cfg, resume)
    if cfg is None:
        return
    fn = stage_function(command)
    show(fn(cfg, resume) if resume is not None else fn(cfg))


# ------------------------------------------------------------------------------------- commands
@app.command("models")
def models_cmd() -> None:
    """List supported model families and their configs."""
    from ..models.loading import ADAPTERS, IntrospectedAdapter

    configs = {p.stem: OmegaConf.load(p) for p in sorted((conf_dir() / "model").glob("*.yaml"))}
    table = Table(title="Supported model families and their configs (use: model=<config>)")
    for col in ("family", "model types", "config", "loads", "what the analyses must know"):
        table.add_column(col, overflow="fold")
    for a in (*ADAPTERS, IntrospectedAdapter):
        mine = [(name, str(c.path)) for name, c in configs.items() if c.get("family") == a.family]
        types = ", ".join(a.model_types) if a.model_types else "any other"
        for k, (name, path) in enumerate(mine or [("", "")]):
            table.add_row(a.family if k == 0 else "", types if k == 0 else "", name, path, a.quirks if k == 0 else "",
                          end_section=k == len(mine) - 1)
    console.print(table)


@app.command("build-data")
def build_data_cmd(overrides: Optional[list[str]] = OVERRIDES, print_cfg: bool = PRINT_CFG) -> None:
    """Build a conflict dataset from the `data` config group and save it into a run directory."""
    with user_errors():
        single_process("build-data")
        run_stage("build-data", overrides, print_cfg)


@app.command("evaluate")
def evaluate_cmd(overrides: Optional[list[str]] = OVERRIDES, print_cfg: bool = PRINT_CFG, resume: Optional[Path] = RESUME) -> None:
    """Behaviour: score every condition and report the modality-following ratio with intervals."""
    with user_errors():
        run_stage("evaluate", overrides, print_cfg, resume)


@app.command("analyze")
def analyze_cmd(overrides: Optional[list[str]] = OVERRIDES, print_cfg: bool = PRINT_CFG, resume: Optional[Path] = RESUME) -> None:
    """Information flow: attention knockout between token groups, logit lens by component, anchor
    agreement, plots, and a findings check against the study's claims."""
    with user_errors():
        run_stage("analyze", overrides, print_cfg, resume)


@app.command("rank-heads")
def rank_heads_cmd(
    method: Optional[str] = typer.Option(None, "--method", help="Ranking that heads.json keeps: ablation, attribution, hybrid, verified or dla."),
    compare: bool = typer.Option(False, "--compare", help="Also compute every other ranking method and compare them (agreement, overlap of the top sets)."),
    overrides: Optional[list[str]] = OVERRIDES,
    print_cfg: bool = PRINT_CFG,
    resume: Optional[Path] = RESUME,
) -> None:
    """Heads: score every attention head with the ranking method (exact ablation by default) and write heads.json."""
    with user_errors():
        run_stage("rank-heads", [*(overrides or []), *head_overrides(method=method, compare=compare)], print_cfg, resume)


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
        run_stage("ablate", [*(overrides or []), *head_overrides(top_k, top_n, heads, from_run)], print_cfg, resume)


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
        run_stage("amplify", [*(overrides or []), *head_overrides(top_k, top_n, heads, from_run, alphas=alpha)], print_cfg, resume)


@app.command("run")
def run_cmd(overrides: Optional[list[str]] = OVERRIDES, print_cfg: bool = PRINT_CFG) -> None:
    """The whole study: build-data → evaluate → analyze → rank-heads → ablate → amplify in one parent run."""
    with user_errors():
        single_process("run")
        cfg = config_or_print("run", overrides, print_cfg)
        if cfg is not None:
            from ..pipeline.run import run_pipeline

            show(run_pipeline(cfg, list(overrides or []), on_stage=show))


@app.command("plan")
def plan_cmd(
    command: str = typer.Argument(..., help="The command to plan: evaluate, analyze, rank-heads, ablate, amplify or run."),
    overrides: Optional[list[str]] = OVERRIDES,
    memory: Optional[float] = typer.Option(None, "--memory", help="Memory the model may use, in GiB: plan says the largest "
                                           "batch that fits."),
    calibrate: bool = typer.Option(False, "--calibrate", help="Also predict wall time: load the model and time a few real "
                                   "forward passes on this machine, then scale by the counts."),
    print_cfg: bool = PRINT_CFG,
) -> None:
    """Count what COMMAND would compute (forward passes, decoder-layer passes with and without the fast paths,
    tokens per sample, memory) from the model's config.json and processor alone: no weights, no GPU."""
    with user_errors():
        if memory is not None and not memory > 0:
            raise UserError(f"--memory {memory}: give the memory in GiB, above 0")
        from ..pipeline.plan.plan import calibrate as calibrate_plan
        from ..pipeline.plan.plan import check_plannable, plan_command, write_plan

        cfg = config_or_print(command if command != "run" else "run", overrides, print_cfg)
        if cfg is None:
            return
        check_plannable(cfg, command)
        plan = plan_command(cfg, command, memory)
        if calibrate:
            plan["time"] = calibrate_plan(cfg, plan)
        path = write_plan(cfg, plan)
        show_plan(plan, path)


def show_plan(plan: dict, path: Path) -> None:
    table = Table(title=f"plan: {plan['command']} on {plan['model']['name']} ({plan['model']['n_layers']} layers × "
                        f"{plan['model']['n_heads']} heads)")
    for col in ("stage", "samples", "tokens (median / max)", "forward passes", "decoder token passes", "without fast paths", "saved"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    n_layers = plan["model"]["n_layers"]
    for name, s in (*plan["stages"].items(), ("total", {**plan["total"], "samples": "", "tokens": None})):
        fast, slow = s["fast"], s["straightforward"]
        tokens = f"{s['tokens']['per_sample_median']:g} / {s['tokens']['per_sample_max']}" if s.get("tokens") else ""
        ratio = slow["decoder_layer_tokens"] / fast["decoder_layer_tokens"] if fast["decoder_layer_tokens"] else float("nan")
        table.add_row(name, str(s["samples"]), tokens, f"{fast['forward_passes']:,}",
                      f"{fast['decoder_layer_tokens'] / n_layers:,.0f}", f"{slow['decoder_layer_tokens'] / n_layers:,.0f}", f"{ratio:.2f}×")
    console.print(table)
    mem = plan["memory"]
    line = (f"memory ({mem['dtype']}): weights {mem['weights_gib']:.2f} GiB, activations {mem['activations_per_row_gib']:.3f} GiB "
            f"per row of the longest batch ({mem['longest_batch_tokens']} tokens); batch {mem['batch_size']}: "
            f"{mem['peak_per_batch_gib']:.2f} GiB at the peak")
    if "largest_batch_that_fits" in mem:
        line += f"; in {mem['memory_gib']:g} GiB the largest batch is {mem['largest_batch_that_fits']}"
    console.print(line, highlight=False)
    console.print("decoder token passes: Σ rows × positions over every decoder-layer call, divided by the layers "
                  "(one token through the whole decoder counts 1)", highlight=False)
    if "time" in plan:
        t = plan["time"]
        console.print("predicted wall time on this machine: " + ", ".join(f"{k} {v:.0f} s" for k, v in t["stages_s"].items())
                      + f"; total {t['total_s']:.0f} s (calibration took {t['calibration_s']:.1f} s)", highlight=False)
    for a in plan["assumptions"]:
        console.print(f"assumed: {a}", highlight=False)
    console.print(f"plan: {path}", highlight=False)


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
        cfg = config_or_print("validate", overrides, print_cfg)
        if cfg is not None:
            from ..pipeline.validate.stage import validate_stage

            show(validate_stage(cfg, list(overrides or []), list(from_runs or []), on_stage=show))


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
        from ..pipeline.grid import run_grid

        single_process("grid")
        result = run_grid(command, list(overrides or []), resolved, on_stage=show)
        show(result)
        summary = result.results
        if summary["n_failed"]:
            err_console.print(f"[bold red]error:[/] {summary['n_failed']} of {summary['n_jobs']} jobs failed "
                              f"(see {result.path / 'results.json'})", highlight=False, soft_wrap=True)
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
        from ..report.html import write_compare, write_report

        path = write_compare(run_dirs, out) if compare else write_report(run_dirs, out)
        console.print(f"report: {path}")
        if screenshot:
            from ..report.browser import BrowserError, screenshot_report

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
        from ..organism.__main__ import organism_config, train_and_ship

        cfg = organism_config(config, list(overrides or []))
        if print_cfg:
            console.print(OmegaConf.to_yaml(cfg), highlight=False, markup=False)
            return
        try:
            train_and_ship(config, cfg, ship)
        except (ValueError, FileExistsError) as exc:
            raise UserError(str(exc)) from None


def main() -> None:  # pragma: no cover - console entry
    app(prog_name="mllm-arb")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
