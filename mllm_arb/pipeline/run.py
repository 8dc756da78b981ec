"""`run`: build-data → evaluate → analyze → rank-heads → ablate → amplify, as child run directories
inside one parent `outputs/run/<model>/<stamp>/`; the parent's manifest links each child and its
results.json gathers their headline numbers. Later stages read the dataset the first one saved;
ablate and amplify reuse rank-heads' heads.json."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig

from ..core.errors import UserError
from ..core.heads_file import FILE_NAME
from ..core.names import POOLED
from ..core.results import RunResults, at_best_alpha, mfr_means, pooled_blocking, read_results
from ..core.verdicts import verdict_of
from ..data.sources import build_items
from ..report.html import write_report
from ..runtime.config import resolved
from ..runtime.progress import log_line
from ..runtime.runs import RunDir
from ..runtime.stage import StageResult
from .heads.arms import check_split_sizes, split_items
from .heads.config import SweepConfig
from .registry import stage_function

OnStage = Callable[[StageResult], None]


def _is_data_override(o: str) -> bool:
    key = o.lstrip("+~").split("=", 1)[0]
    return key == "data" or key.startswith("data.")


def child_overrides(overrides: list[str], root: Path) -> list[str]:
    """The parent's overrides for a child run, writing below the parent's folder."""
    return [o for o in overrides if o.lstrip("+~").split("=", 1)[0] != "output_dir"] + [f"output_dir='{root}'"]


class Children:
    """The child stage runs of a parent run directory (`run`, `validate`), linked from its manifest."""

    def __init__(self, parent: RunDir, on_stage: OnStage | None = None, reused: dict[str, Path] | None = None) -> None:
        self.parent = parent
        self.on_stage = on_stage
        self.reused = dict(reused or {})
        self.stages: dict[str, str] = {c: str(p.resolve()) for c, p in self.reused.items()}
        self.results: list[StageResult] = []

    def run(self, command: str, overrides: list[str], fn: Callable[[DictConfig], StageResult] | None = None) -> Path:
        """Run `command` as a child (or give the reused run of it); its folder."""
        if command in self.reused:
            return self.reused[command]
        root = self.parent.path
        done = len(self.stages)
        log_line(f"{self.parent.command}: stage {done + 1}, {command}")
        with self.parent.timed(command):
            result = (fn or stage_function(command))(resolved(overrides))
        self.stages[command] = str(result.path.relative_to(root))
        self.parent.write_manifest(stages=self.stages)
        self.results.append(result)
        if self.on_stage is not None:
            self.on_stage(result)
        return result.path


def run_pipeline(cfg: DictConfig, overrides: list[str], on_stage: OnStage | None = None) -> StageResult:
    sweep = SweepConfig.from_cfg(cfg.sweep)  # bad sweep options fail before anything is written
    if sweep.heads_file:
        raise UserError("`run` ranks heads itself; drop sweep.heads_file (use ablate/amplify --heads for a given set)")
    items, _ = build_items(cfg.data)
    rank_items, eval_items = split_items(items, sweep.rank_fraction, cfg.seed)
    check_split_sizes(len(rank_items), len(eval_items), len(items), sweep)
    parent = RunDir.create(cfg.output_dir, "run", cfg.model.name, cfg)
    root = parent.path
    children = Children(parent, on_stage)
    child = child_overrides(overrides, root)
    built = children.run("build-data", child)
    later = [o for o in child if not _is_data_override(o)] + ["data=disk", f"data.path='{built / 'dataset'}'"]
    children.run("evaluate", later)
    children.run("analyze", later)
    ranked = children.run("rank-heads", later)
    with_heads = [*later, f"sweep.heads_file='{ranked / FILE_NAME}'"]
    children.run("ablate", with_heads)
    children.run("amplify", with_heads)
    results = gather(root, children.stages)
    parent.write_json("results.json", results)
    with parent.timed("report"):
        page = write_report([root], None)
    return StageResult("run", root, results, cfg.model.name, {"report": page}, children=children.results)


def gather(root: Path, stages: dict[str, str]) -> RunResults:
    """The headline numbers of every stage, read back from the children's results.json."""

    def res(command, name="results.json"):
        return read_results(root / stages[command], name)

    ev, ab, am, rk = res("evaluate"), res("ablate"), res("amplify"), res("rank-heads")
    out: RunResults = {"stages": stages, "mfr": mfr_means(ev), "heads": []}
    if (root / stages["analyze"] / "findings.json").exists():
        out["findings"] = {k: verdict_of(f) for k, f in res("analyze", "findings.json").items()}
    out["heads"] = rk["heads"]
    pooled = pooled_blocking(ab)
    if pooled:
        out["blocking"] = {"mfr_before": pooled["before"]["mfr"]["mean"], "mfr_top": pooled["top"]["mfr"]["mean"],
                           "mfr_random": pooled["random"]["mfr"]["mean"],
                           "separated_mfr": pooled["separation"]["mfr"]["separated"],
                           "separated_log_odds": pooled["separation"]["log_odds"]["separated"]}
    at = at_best_alpha(am)
    if at:
        out["amplification"] = {"best_alpha": am["amplification"]["best_alpha"], "recovery": at["settings"][POOLED]["recovery"]["mean"],
                                "harm": at["settings"][POOLED]["harm"]["mean"]}
    return out
