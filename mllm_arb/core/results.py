"""The shape of every file a stage writes: results.json of each command, findings.json, validation.json,
and the rows of the per-sample tables. They are TypedDicts: what is written is plain JSON, and what is
read back is checked by a type checker against one declaration instead of string keys spread over the
package. `heads.json` is `core.heads_file.HeadSet`; an evaluated sample's row is
`core.scoring.ScoredSample`.

`read_results` and the accessors below are how other stages, the grid summary and the report read
results back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypedDict

from typing_extensions import NotRequired

from .errors import UserError
from .names import POOLED


# ------------------------------------------------------------------------------------ statistics
class Summary(TypedDict):
    """A mean over samples with its 95% bootstrap interval (None / NaN when there are no values)."""

    mean: float | None
    ci_low: float | None
    ci_high: float | None
    n: int


class OverSeeds(TypedDict):
    """A random-set baseline: the mean over seeds, its interval, and the spread of single sets."""

    mean: float | None
    ci_low: float | None
    ci_high: float | None
    spread_low: float | None
    spread_high: float | None
    n_seeds: int
    per_seed: NotRequired[list[float]]


# ------------------------------------------------------------------------------------ build-data
class BuildDataResults(TypedDict):
    source: str
    source_report: dict[str, Any]
    filter: NotRequired[dict[str, Any]]
    n_items: int
    fingerprint: str
    per_task: dict[str, int]


# ------------------------------------------------------------------------------------ evaluate
class ConditionMFR(TypedDict):
    mfr: Summary
    log_odds: Summary
    generation: NotRequired[dict[str, float]]  # following / competitor / other shares


class EvaluateResults(TypedDict):
    model: str
    dataset_fingerprint: str
    mfr: dict[str, ConditionMFR]  # per condition, and per "condition/task"


# ------------------------------------------------------------------------------------ analyze
class KnockoutRow(TypedDict):
    item_id: str
    task: str
    setting: str
    edge: str
    span: NotRequired[str]  # window | from | until (rows written before cumulative spans: window)
    center: int  # the window's centre, or the layer a cumulative span starts or ends at
    first_layer: NotRequired[int]  # the layers actually blocked
    last_layer: NotRequired[int]
    log_odds_before: float
    log_odds_after: float
    delta: float
    follows_before: bool
    follows_after: bool


class _KnockoutEffect(TypedDict):
    """The mean change in following log-odds under a knockout, its 95% interval, and MFR before and under it."""

    layers: NotRequired[list[int]]  # [first, last] layer actually blocked (windows clip at the decoder's ends)
    mean: float
    ci_low: float
    ci_high: float
    n: int
    mfr_before: float
    mfr_after: float


class KnockoutPoint(_KnockoutEffect):
    """One window of one edge in one setting."""

    center: int


#: setting -> edge ("src->dst") -> one point per window centre
KnockoutCurves = dict[str, dict[str, list[KnockoutPoint]]]


class CumulativePoint(_KnockoutEffect):
    """One cumulative span of one edge in one setting: blocked from `layer` to the last layer ("from")
    or from the first layer to `layer` ("until")."""

    layer: int


#: setting -> edge -> "from" | "until" -> one point per layer
CumulativeCurves = dict[str, dict[str, dict[str, list[CumulativePoint]]]]


class LensSplit(TypedDict):
    """Per-layer means at one site on one split of the samples (all, followed, failed)."""

    n: int
    attn_following: list[float]
    attn_competitor: list[float]
    attn_difference: list[float]
    mlp_following: list[float]
    mlp_competitor: list[float]
    mlp_difference: list[float]
    lens_log_odds: list[float]


class LensSummary(TypedDict):
    components: dict[str, dict[str, dict[str, LensSplit]]]  # setting -> site -> split
    agreement: dict[str, list[float]]  # setting -> per layer


class AnalyzeResults(TypedDict):
    model: str
    dataset_fingerprint: str
    items_fingerprint: str
    n_layers: int
    window: int
    n_items: int
    knockout: KnockoutCurves
    cumulative: NotRequired[CumulativeCurves]  # when analysis.cumulative
    lens: LensSummary | None
    saliency: dict[str, Any] | None


class Finding(TypedDict):
    """One of the study's claims checked on a run (findings.json: key "a_…" to "d_…" -> Finding)."""

    claim: str
    value: float | dict[str, float]
    threshold: float | str
    verdict: NotRequired[str]  # holds | does not hold | undecided | not checkable (core/verdicts.py)
    interval: NotRequired[list[float | None]]  # the deciding number's 95% bootstrap interval
    interval_of: NotRequired[str]  # which entry of a dict value the interval belongs to
    holds: bool | None  # True / False with the verdict; None when undecided or not checkable
    measured: NotRequired[list[dict[str, Any]]]
    at: NotRequired[dict[str, Any]]
    layers: NotRequired[list[int]]
    n_failed: NotRequired[int]
    per_setting: NotRequired[dict[str, float]]
    note: NotRequired[str]


# ------------------------------------------------------------------------------------ heads
class HeadScore(TypedDict):
    layer: int
    head: int
    score: float


class ScoreRow(TypedDict):
    item_id: str
    task: str
    setting: str
    method: str
    layer: int
    head: int
    score: float


class Agreement(TypedDict):
    spearman: float
    top_overlap: int
    n_top: int


class Provenance(TypedDict):
    """What every head stage's results.json opens with."""

    model: str
    dataset_fingerprint: str
    n_layers: int
    n_heads: int
    n_rank_items: int
    n_eval_items: int


class RankResults(Provenance):
    rank_method: str
    rank_by: str
    ablation: str
    positions: str
    n_selected: int
    heads: list[list[int]]
    top: dict[str, list[HeadScore]]  # method -> the best heads
    scores: dict[str, dict[str, list[list[float]]]]  # method -> setting or "pooled" -> [layer][head]
    agreement: dict[str, Agreement]  # "method~method"


class ArmRow(TypedDict):
    """One sample under one arm (head set and scale) of a blocking or amplification sweep."""

    study: str  # headline | dose | amplify
    set: str  # top | bottom | random
    k: float | None
    n_heads: int
    seed: int | None
    scale: float
    heads: str  # "layer.head;layer.head"
    condition: str
    item_id: str
    task: str
    log_odds_before: float
    log_odds_after: float
    follows_before: bool
    follows_after: bool


class Edited(TypedDict):
    """Levels after an edit and the paired per-sample change."""

    mfr: Summary
    log_odds: Summary
    change: dict[str, Summary]  # "mfr", "log_odds"
    relative_mfr_drop: NotRequired[float | None]


class RandomSets(TypedDict):
    mfr: OverSeeds
    log_odds: OverSeeds
    change: dict[str, OverSeeds]
    relative_mfr_drop: NotRequired[float | None]


class Separation(TypedDict):
    top_change: float | None
    top_ci_high: float | None
    random_change: float | None
    random_ci_low: float | None
    separated: bool
    random_at_least_as_low: float | None


class Blocking(TypedDict):
    kind: str  # setting | control
    n: int
    before: dict[str, Summary]  # "mfr", "log_odds"
    top: Edited
    bottom: NotRequired[Edited]
    random: NotRequired[RandomSets]
    separation: NotRequired[dict[str, Separation]]  # "mfr", "log_odds"


class HeadsEdited(Provenance):
    """What ablate's and amplify's results.json say about the heads they edited."""

    n_eval_items_dropped_overlap: int
    heads_source: str
    heads_dataset_fingerprint: str | None
    rank_method: str | None
    ablation: str
    positions: str
    n_selected: int
    fraction_selected: float
    heads: list[list[int]]
    settings: list[str]
    controls: list[str]


class Interaction(TypedDict):
    """One head of the selected set: edited alone, the set without it, and its marginal effect (the whole
    set minus the set without it, paired per sample; under amplification the MFR part counts failed
    samples only). `alone` and `without` are `Edited` under blocking, `RecoveryHarm` under amplification."""

    head: list[int]
    alone: dict[str, Any]
    without: dict[str, Any]
    marginal: dict[str, Summary]  # "mfr", "log_odds"


class AblateResults(HeadsEdited):
    blocking: dict[str, Blocking]  # POOLED, each setting, each control
    dose: dict[str, list[dict[str, Any]]]  # condition -> one point per k
    interactions: NotRequired[dict[str, list[Interaction]]]  # POOLED, each setting (sweep.interactions > 0, 2+ heads)


class RecoveryHarm(TypedDict):
    n: int
    n_failed: int
    n_followed: int
    recovery: Summary
    harm: Summary
    mfr_after: Summary
    failed_log_odds_change: Summary


class AlphaPoint(TypedDict):
    alpha: float
    settings: dict[str, RecoveryHarm]  # POOLED and each setting
    controls: dict[str, dict[str, Any]]
    interactions: NotRequired[dict[str, list[Interaction]]]  # POOLED, each setting (sweep.interactions > 0, 2+ heads)


class Amplification(TypedDict):
    per_alpha: list[AlphaPoint]
    best_alpha: float | None
    random_at_best_alpha: NotRequired[dict[str, dict[str, Any]]]


class AmplifyResults(HeadsEdited):
    amplification: Amplification


# ------------------------------------------------------------------------------------ parents
class RunResults(TypedDict):
    """`run`'s results.json: each child's folder and its headline numbers."""

    stages: dict[str, str]
    mfr: dict[str, float]
    findings: NotRequired[dict[str, str]]  # claim -> verdict
    heads: list[list[int]]
    blocking: NotRequired[dict[str, Any]]
    amplification: NotRequired[dict[str, Any]]


class ValidateResults(TypedDict):
    """`validate`'s results.json (validation.json holds every score)."""

    model: str
    knockout: dict[str, Any]
    peaks_inside: list[bool]
    heads: dict[str, dict[str, float]]
    best_method: str | None
    findings: dict[str, str]  # claim -> verdict
    stages: dict[str, str]


class GridJob(TypedDict):
    overrides: list[str]
    status: str  # ok | failed
    run_dir: NotRequired[str]
    error: NotRequired[str]
    job: int | None
    headline: NotRequired[dict[str, Any]]


class GridResults(TypedDict):
    command: str
    sweeps: list[str]
    n_jobs: int
    n_ok: int
    n_failed: int
    jobs: list[GridJob]


# ------------------------------------------------------------------------------------ reading back
def read_results(run_dir: str | Path, name: str = "results.json") -> dict[str, Any]:
    """A finished run's results.json (or another JSON file of it); a missing or damaged file is a
    UserError naming the run."""
    path = Path(run_dir) / name
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{run_dir}: no {name} (did the run finish?)") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable ({type(exc).__name__})") from None


def mfr_means(results: EvaluateResults) -> dict[str, float]:
    """The MFR of every condition (not the per-task rows) of evaluate's results."""
    return {c: e["mfr"]["mean"] for c, e in results["mfr"].items() if "/" not in c}


def pooled_blocking(results: AblateResults) -> Blocking | None:
    """The headline row of ablate's results: the settings pooled."""
    return results["blocking"].get(POOLED)


def at_best_alpha(results: AmplifyResults) -> AlphaPoint | None:
    """Amplify's results at its best α."""
    amp = results["amplification"]
    return next((e for e in amp["per_alpha"] if e["alpha"] == amp["best_alpha"]), None)
