"""`mllm-arb validate`: score the analyses against the ground truth a model ships (`ground_truth.json`).

It runs what it needs as child runs of one `validate` run directory (analyze; rank-heads with every
ranking method; ablate with the heads `sweep.rank_method` selects), or reuses finished runs given with
`--from`, then writes `validation.json` (and `results.json`, last) and prints the scores. A model
without a ground-truth file is refused before anything is written.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from omegaconf import DictConfig

from ..analysis.head_sets import FILE_NAME as HEADS_FILE
from ..analysis.head_stages import _compose, _new_run
from ..analysis.heads import METHODS
from ..errors import UserError
from ..organism.ground_truth import GroundTruth, load
from ..runs import RunDir
from . import score

#: the child runs validate needs, in the order it runs them
NEEDED = ("analyze", "rank-heads", "ablate")


def _cli():
    from .. import cli

    return cli


def ground_truth_of(cfg: DictConfig) -> GroundTruth:
    """The model's ground truth, checked against its config (before any weights are loaded)."""
    from transformers import AutoConfig

    from ..models.loading import materialise

    source = materialise(cfg.model.path)
    truth = load(source) if Path(source).is_dir() else None
    if truth is None:
        raise UserError(f"model {cfg.model.name} ({source}) ships no ground_truth.json: validate needs a model with a planted "
                        "mechanism (model=organism_anchor)")
    text = AutoConfig.from_pretrained(source).get_text_config()
    truth.check_model(int(text.num_hidden_layers), int(text.num_attention_heads), where=f"{source}/ground_truth.json")
    return truth


def reused_runs(paths: list[Path], model_name: str) -> dict[str, Path]:
    """The finished runs `--from` names, by command (a `run` or `validate` directory gives its children)."""
    found: dict[str, Path] = {}
    for path in paths:
        path = Path(path)
        manifest = _read(path / "manifest.json", f"--from {path}: not a run directory (no readable manifest.json)")
        command = manifest.get("command")
        if command in ("run", "validate"):
            children = {c: path / rel for c, rel in manifest.get("stages", {}).items() if c in NEEDED}
        elif command in NEEDED:
            children = {command: path}
        else:
            raise UserError(f"--from {path}: a {command!r} run; validate reuses analyze, rank-heads, ablate, run or validate runs")
        for child_command, child in children.items():
            results = _read(child / "results.json", f"--from {child}: the {child_command} run did not finish (no results.json)")
            if results.get("model") != model_name:
                raise UserError(f"--from {child}: a run of model {results.get('model')!r}, not {model_name!r}")
            if child_command in found:
                raise UserError(f"--from: two {child_command} runs ({found[child_command]} and {child})")
            found[child_command] = child
    if "ablate" in found and "rank-heads" not in found:
        raise UserError("--from: an ablate run needs the rank-heads run its heads came from (validate scores every method)")
    return found


def _read(path: Path, message: str) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        raise UserError(message) from None


def validate_stage(cfg: DictConfig, overrides: list[str], from_runs: list[Path]) -> Path:
    from ..analysis.head_stages import ablate_stage, rank_stage
    from ..stages import analyze_stage

    cli = _cli()
    min_effect = cfg.validate.min_effect
    if isinstance(min_effect, bool) or not isinstance(min_effect, (int, float)) or not min_effect > 0:
        raise UserError(f"validate.min_effect={min_effect!r} must be a number > 0")
    from ..analysis.sweeps import SweepConfig

    SweepConfig.from_cfg(_compose([*overrides, f"sweep.methods=[{','.join(METHODS)}]"]).sweep)  # bad options fail before any run
    truth = ground_truth_of(cfg)
    reused = reused_runs(from_runs, cfg.model.name)
    parent = RunDir.create(cfg.output_dir, "validate", cfg.model.name, cfg)
    root = parent.path
    child = [o for o in overrides if o.lstrip("+~").split("=", 1)[0] != "output_dir"] + [f"output_dir='{root}'"]
    stages: dict[str, str] = {c: str(p.resolve()) for c, p in reused.items()}
    parent.write_manifest(stages=stages, reused=sorted(reused))

    def stage(command: str, fn, args: list[str]) -> Path:
        if command in reused:
            return reused[command]
        before = set((root / command).glob("*/*"))
        with parent.timed(command):
            fn(_compose(args))
        made = _new_run(root, command, before)
        stages[command] = str(made.relative_to(root))
        parent.write_manifest(stages=stages)
        return made

    analyzed = stage("analyze", analyze_stage, child)
    ranked = stage("rank-heads", rank_stage, [*child, f"sweep.methods=[{','.join(METHODS)}]"])
    ablated = stage("ablate", ablate_stage, [*child, f"sweep.heads_file='{ranked / HEADS_FILE}'"])
    report = validation(truth, analyzed, ranked, ablated, float(cfg.validate.min_effect))
    report["stages"] = stages
    parent.write_json("validation.json", report)
    parent.write_json("results.json", headline(report, cfg.model.name))  # last: its presence marks the run complete
    print_validation(cli.console, report, cfg.model.name)
    from ..report.html import write_report

    with parent.timed("report"):
        page = write_report([root], None)
    cli.console.print(f"validation: {parent.file('validation.json')}")
    cli.console.print(f"report: {page}")
    return root


def validation(truth: GroundTruth, analyzed: Path, ranked: Path, ablated: Path, min_effect: float = score.MIN_EFFECT) -> dict:
    """Every score of validation.json, from three finished run directories."""
    an = json.loads((analyzed / "results.json").read_text())
    findings = json.loads((analyzed / "findings.json").read_text())
    rk = json.loads((ranked / "results.json").read_text())
    ab = json.loads((ablated / "results.json").read_text())
    n_top = int(ab["n_selected"])
    heads = score.heads_scores(rk["scores"], truth, n_top, rk.get("rank_by", "pooled"))
    missing = [m for m in METHODS if m not in heads]
    lens = an.get("lens") or {}
    return {
        "ground_truth": truth.to_dict(),
        "knockout": score.knockout_scores(an["knockout"], truth, int(an["window"]), min_effect),
        "heads": {"n_top": n_top, "methods": heads, "missing_methods": missing,
                  "best_method": score.best_method(heads) if heads else None, "rank_method": rk["rank_method"]},
        "findings": score.findings_summary(findings),
        "anchor_agreement": lens.get("agreement"),
        "blocking": score.blocking_summary(ab["blocking"], ab["heads"], truth),
    }


def headline(report: dict, model: str) -> dict:
    ko, hd = report["knockout"], report["heads"]
    return {
        "model": model,
        "knockout": {k: ko[k] for k in ("confusion", "true_positive_rate", "false_positive_rate")},
        "peaks_inside": [p["inside"] for p in ko["peaks"]],
        "heads": {m: {"auroc": v["auroc"], "recall_top_planted": v["top_planted_count"]["recall"],
                      "precision_top_fraction": v["top_fraction"]["precision"]} for m, v in hd["methods"].items()},
        "best_method": hd["best_method"],
        "findings": {k: f["holds"] for k, f in report["findings"].items()},
        "stages": report["stages"],
    }


def _f(x: float, fmt: str = "{:.3f}") -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def print_validation(console, report: dict, model: str) -> None:
    from rich.table import Table

    ko = report["knockout"]
    c = ko["confusion"]
    t = Table(title=f"Knockout against the planted route — {model} (detected: 95% CI excludes 0 and |Δ| ≥ {ko['min_effect']})")
    for col in ("", "detected", "not detected", "rate"):
        t.add_column(col, justify="right")
    t.add_row("planted", str(c["planted_detected"]), str(c["planted_missed"]), f"TPR {_f(ko['true_positive_rate'])}")
    t.add_row("not planted", str(c["other_detected"]), str(c["other_quiet"]), f"FPR {_f(ko['false_positive_rate'])}")
    console.print(t)
    t = Table(title="Planted edges: where the knockout peaks")
    for col in ("edge", "setting", "planted layers", "peak layer", "peak Δ log-odds", "inside"):
        t.add_column(col)
    for p in ko["peaks"]:
        t.add_row(p["edge"], p["setting"], f"{p['planted_layers'][0]}–{p['planted_layers'][-1]}", str(p["peak_layer"]),
                  f"{p['peak_mean']:+.2f}", "[green]yes[/]" if p["inside"] else "[red]no[/]")
    console.print(t)
    hd = report["heads"]
    n_planted = len(report["ground_truth"]["transfer_heads"]) + len(report["ground_truth"]["arbitration_heads"])
    t = Table(title=f"Head rankings against the {n_planted} planted heads")
    for col in ("method", "AUROC", f"top {hd['n_top']}: precision", f"top {n_planted}: recall", "planted heads' ranks"):
        t.add_column(col)
    for m, v in hd["methods"].items():
        name = f"{m} (best)" if m == hd["best_method"] else m
        t.add_row(name, _f(v["auroc"]), _f(v["top_fraction"]["precision"]), _f(v["top_planted_count"]["recall"]),
                  " ".join(f"{k}:{r}" for k, r in v["planted_ranks"].items()))
    console.print(t)
    yes = {True: "[green]yes[/]", False: "[red]no[/]", None: "[yellow]n/a[/]"}
    console.print("findings: " + ", ".join(f"({k[0]}) {yes[f['holds']]}" for k, f in report["findings"].items()))
    b = report["blocking"]
    pooled = b["mfr"].get("conflict")
    if pooled:
        console.print(f"blocking {len(b['heads'])} heads ({b['planted_among_them']} planted): MFR {pooled['before']:.3f} → "
                      f"{pooled['top']:.3f}; random sets {_f(pooled.get('random'))}")
