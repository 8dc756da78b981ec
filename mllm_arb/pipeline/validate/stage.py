"""`mllm-arb validate`: score the analyses against the ground truth a model ships (`ground_truth.json`).

It runs what it needs as child runs of one `validate` run directory (analyze; rank-heads with every
ranking method; ablate with the heads `sweep.rank_method` selects), or reuses finished runs given with
`--from`, then writes `validation.json` (and `results.json`, last). A model without a ground-truth file
is refused before anything is written.
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig

from ...core.errors import UserError
from ...core.ground_truth import GroundTruth, load
from ...core.heads_file import FILE_NAME as HEADS_FILE
from ...core.names import VALIDATE_NEEDS
from ...core.results import ValidateResults, read_results
from ...core.verdicts import verdict_of
from ...report.html import write_report
from ...runtime.config import resolved
from ...runtime.runs import RunDir
from ...runtime.stage import StageResult
from ..heads.config import SweepConfig
from ..heads.methods import METHODS
from ..run import Children, OnStage, child_overrides
from . import score


def ground_truth_of(cfg: DictConfig) -> GroundTruth:
    """The model's ground truth, checked against its config (before any weights are loaded)."""
    from transformers import AutoConfig

    from ...models.loading import materialise

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
            children = {c: path / rel for c, rel in manifest.get("stages", {}).items() if c in VALIDATE_NEEDS}
        elif command in VALIDATE_NEEDS:
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


def validate_stage(cfg: DictConfig, overrides: list[str], from_runs: list[Path], on_stage: OnStage | None = None) -> StageResult:
    min_effect = cfg.validate.min_effect
    if isinstance(min_effect, bool) or not isinstance(min_effect, (int, float)) or not min_effect > 0:
        raise UserError(f"validate.min_effect={min_effect!r} must be a number > 0")
    every_method = f"sweep.methods=[{','.join(METHODS)}]"
    SweepConfig.from_cfg(resolved([*overrides, every_method]).sweep)  # bad options fail before any run
    truth = ground_truth_of(cfg)
    reused = reused_runs(from_runs, cfg.model.name)
    parent = RunDir.create(cfg.output_dir, "validate", cfg.model.name, cfg)
    root = parent.path
    children = Children(parent, on_stage, reused)
    parent.write_manifest(stages=children.stages, reused=sorted(reused))
    child = child_overrides(overrides, root)
    analyzed = children.run("analyze", child)
    ranked = children.run("rank-heads", [*child, every_method])
    ablated = children.run("ablate", [*child, f"sweep.heads_file='{ranked / HEADS_FILE}'"])
    report = validation(truth, analyzed, ranked, ablated, float(cfg.validate.min_effect))
    report["stages"] = children.stages
    parent.write_json("validation.json", report)
    results = headline(report, cfg.model.name)
    parent.write_json("results.json", results)  # last: its presence marks the run complete
    with parent.timed("report"):
        page = write_report([root], None)
    return StageResult("validate", root, results, cfg.model.name,
                       {"validation": parent.file("validation.json"), "report": page},
                       children=children.results, extra={"validation": report})


def validation(truth: GroundTruth, analyzed: Path, ranked: Path, ablated: Path, min_effect: float = score.MIN_EFFECT) -> dict:
    """Every score of validation.json, from three finished run directories."""
    an, findings = read_results(analyzed), read_results(analyzed, "findings.json")
    rk, ab = read_results(ranked), read_results(ablated)
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


def headline(report: dict, model: str) -> ValidateResults:
    ko, hd = report["knockout"], report["heads"]
    return {
        "model": model,
        "knockout": {k: ko[k] for k in ("confusion", "true_positive_rate", "false_positive_rate")},
        "peaks_inside": [p["inside"] for p in ko["peaks"]],
        "heads": {m: {"auroc": v["auroc"], "recall_top_planted": v["top_planted_count"]["recall"],
                      "precision_top_fraction": v["top_fraction"]["precision"]} for m, v in hd["methods"].items()},
        "best_method": hd["best_method"],
        "findings": {k: verdict_of(f) for k, f in report["findings"].items()},
        "stages": report["stages"],
    }
