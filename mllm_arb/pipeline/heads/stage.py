"""What the three head stages share: their input checked whole before any run directory exists
(`HeadStudy`), the ranking and the arm sweeps run batch by batch on the stage skeleton, and the
opening of every head stage's results.json.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from ...core.errors import UserError
from ...core.heads_file import FILE_NAME, HeadSet, check_model, from_ranking, read_head_set, write_head_set
from ...core.prompt import render_all
from ...core.records import ConflictItem, Sample
from ...core.results import HeadsEdited, Provenance
from ...core.scoring import check_answers
from ...data.sources import build_items
from ...models.adapter import ModelAdapter
from ...runtime.loading import load_model
from ...runtime.ranks import Ranks
from ...runtime.stage import Stage
from .arms import Arm, applicable_arms, arm_log_odds, arm_rows, check_split_sizes, split_items
from .config import SweepConfig
from .methods import PairedBatches, Prepared, Removal, head_means, method_agreement, method_scores, passes_per_sample, prepare, rank, score_matrices, score_rows


@dataclass
class HeadStudy:
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
        """How many attention heads the model has (none in its linear-attention layers)."""
        return len(self.adapter.parts.heads())

    @property
    def layers_without_heads(self) -> tuple[int, ...]:
        return tuple(sorted(self.adapter.parts.linear))

    @property
    def title(self) -> str:
        return f"{self.adapter.name} on {self.cfg.data.source}"

    def rank_samples(self) -> list[Sample]:
        return render_checked(self.cfg, self.rank_items, self.sweep.settings)

    def eval_samples(self) -> list[Sample]:
        return render_checked(self.cfg, self.eval_items, (*self.sweep.settings, *self.sweep.controls))

    def provenance(self) -> Provenance:
        """What every head stage's results.json opens with: the model, its shape, the data and the splits."""
        out = {"model": self.adapter.name, "dataset_fingerprint": self.fingerprint, "n_layers": self.n_layers,
               "n_heads": self.n_heads, "n_rank_items": len(self.rank_items), "n_eval_items": len(self.eval_items)}
        if self.layers_without_heads:
            out["layers_without_heads"] = list(self.layers_without_heads)
            out["layers_without_heads_note"] = (
                f"{len(self.layers_without_heads)} of the {self.n_layers} decoder layers mix tokens by linear attention "
                f"(a recurrent state, not attention heads): no head there is ranked, drawn into a random set or edited; "
                f"the {self.total} heads are those of the other {self.n_layers - len(self.layers_without_heads)} layers")
        return out

    def manifest(self) -> dict:
        return {"model_source": str(self.cfg.model.path), "n_rank_items": len(self.rank_items),
                "n_eval_items": len(self.eval_items), "heads_file": self.sweep.heads_file,
                "n_eval_items_dropped_overlap": self.n_overlap_dropped}

    def n_used(self, head_set: HeadSet) -> int:
        """How many heads the stage edits: a file's whole set, or the top `sweep.top_k` / `top_n` of a ranking."""
        return len(head_set.heads) if not head_set.ranking else self.sweep.n_selected(self.total)

    def removal(self, rank_preps: list[Prepared] | None) -> Removal:
        if self.sweep.ablation != "mean":
            return Removal("zero", self.sweep.positions)
        preps = rank_preps if rank_preps is not None else prepare(self.adapter, self.rank_samples(), self.cfg.batch_size)
        try:
            return Removal("mean", self.sweep.positions, head_means(self.adapter, preps, self.sweep.positions))
        except ValueError as exc:
            raise UserError(str(exc)) from None

    def common(self, head_set: HeadSet, removal: Removal, n: int) -> HeadsEdited:
        """The part of ablate's and amplify's results.json that says what was edited, and on what."""
        return {
            **self.provenance(),
            "n_eval_items_dropped_overlap": self.n_overlap_dropped,
            "heads_source": self.sweep.heads_file or "ranked in this run",
            "heads_dataset_fingerprint": head_set.dataset_fingerprint,
            "rank_method": head_set.method,
            "ablation": removal.mode,
            "positions": removal.positions,
            "n_selected": n,
            "fraction_selected": n / self.total,
            "heads": [list(h) for h in head_set.top(n)],
            "settings": [c.value for c in self.sweep.settings],
            "controls": [c.value for c in self.sweep.controls],
        }


def render_checked(cfg: DictConfig, items, conditions) -> list[Sample]:
    try:
        return render_all(items, conditions, **cfg.templates)
    except ValueError as exc:  # e.g. a consistent-context control for items without one
        raise UserError(f"{exc}; drop that condition from sweep.controls / sweep.settings") from None


def setup(cfg: DictConfig, ranks: Ranks | None = None, adapter: ModelAdapter | None = None) -> HeadStudy:
    """The head study of `cfg`: its sweep, data split and model (`adapter`: one already built, as
    `mllm-arb plan` builds its counting one)."""
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
    check_answers_for = render_checked(cfg, [*rank_items, *eval_items], (*sweep.settings, *sweep.controls))
    if adapter is not None:
        pass
    elif ranks is None:
        adapter = load_model(cfg)
    else:
        with ranks.main_first():  # under torchrun: rank 0 fills caches / downloads, then the others load
            adapter = load_model(cfg, ranks)
    check_answers(adapter.tokenizer, check_answers_for)
    parts = adapter.parts
    sweep.check_heads(len(parts.heads()))
    if head_set is not None:
        head_set = check_model(head_set, adapter.name, parts.n_layers, parts.n_heads, sweep.allow_other_model, parts.linear)
    return HeadStudy(cfg, sweep, fp, rank_items, eval_items, adapter, head_set, dropped)


def open_stage(study: HeadStudy, command: str, resume, ranks: Ranks):
    """The stage skeleton for a head stage: its run directory records the study's data and splits."""
    return Stage.open(study.cfg, command, resume, ranks, study.fingerprint, **study.manifest())


# ------------------------------------------------------------------------------------ ranking
@dataclass
class Ranking:
    head_set: HeadSet
    scores: dict[str, dict[str, list[list[float]]]]  # method -> setting/pooled -> [L][H]
    rows: list[dict]
    agreement: dict


def ranking_from(study: HeadStudy, rank_preps: list[Prepared], removal: Removal, per_sample: dict) -> Ranking:
    """The ranking, heads.json and per-sample rows from every method's `[N, L, H]` scores."""
    sweep, adapter = study.sweep, study.adapter
    scores, rows = {}, []
    for method, values in per_sample.items():
        scores[method] = score_matrices(rank_preps, values)
        rows += score_rows(rank_preps, method, values)
    n = sweep.n_selected(study.total)
    ranked = rank(scores[sweep.rank_method][sweep.rank_by])
    if len(ranked) != study.total:  # a NaN score through a whole layer with heads would drop it from the ranking
        raise RuntimeError(f"the {sweep.rank_method} ranking holds {len(ranked)} heads, not the model's {study.total}")
    head_set = from_ranking(
        ranked, n, model=adapter.name, n_layers=study.n_layers, n_heads=study.n_heads, method=sweep.rank_method,
        rank_by=sweep.rank_by, dataset_fingerprint=study.fingerprint, top_k=None if sweep.top_n else sweep.top_k,
        rank_items=tuple(it.item_id for it in study.rank_items),
        extra={"ablation": removal.mode, "positions": removal.positions}, layers_without_heads=study.layers_without_heads,
    )
    agreement = method_agreement({m: s["pooled"] for m, s in scores.items()}, n) if len(scores) > 1 else {}
    return Ranking(head_set, scores, rows, agreement)


def _pairs(stage: Stage, study: HeadStudy, units: list[Prepared]) -> PairedBatches:
    """Batches of the same items that run together (`sweep.share_prefix`), among those this rank computes."""
    return PairedBatches([u for i, u in enumerate(units) if stage.ranks.owns(i)], study.sweep.share_prefix)


def _batch_samples(prep: Prepared):
    return prep.samples


def rank_units(stage: Stage, study: HeadStudy, methods, rank_preps: list[Prepared], removal: Removal) -> dict | None:
    """Every method's scores batch by batch through `partial/rank-<method>/`. Rank 0 gets every
    method's `[N, L, H]` scores in batch order; the other ranks get None once their share is saved."""

    def encode(t):
        return {"dtype": str(t.dtype).removeprefix("torch."), "scores": t.tolist()}

    out = {}
    for method in methods:
        cost = passes_per_sample(method, study.total)
        pairs = _pairs(stage, study, rank_preps)
        saved = stage.map_units(f"rank-{method}", rank_preps,
                            lambda p, step, m=method, pairs=pairs: encode(method_scores(study.adapter, [p], m, removal, on_step=step, pairs=pairs)),
                            f"ranking heads: {method}", cost=lambda i, p, c=cost: c * len(p.batch),
                            samples_of=_batch_samples, merged=False)
        if saved is not None:
            out[method] = torch.cat([torch.tensor(u["scores"], dtype=getattr(torch, u["dtype"])) for u in saved])
    return out if stage.main else None


def heads_for(stage: Stage, study: HeadStudy, rank_preps, removal) -> HeadSet:
    """The file's head set, or a fresh ranking by `sweep.rank_method` (saved as this run's heads.json).
    The ranking goes batch by batch like rank-heads' (resumed, sharded); rank 0 builds the head set
    and every rank receives it."""
    run, ranks = stage.run, stage.ranks
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
    per_sample = rank_units(stage, study, (study.sweep.rank_method,), rank_preps, removal)

    def make() -> HeadSet:
        ranking = ranking_from(study, rank_preps, removal, per_sample)
        run.write_table("scores.parquet", ranking.rows)
        write_head_set(run.file(FILE_NAME), ranking.head_set)
        return ranking.head_set

    return ranks.share(make)


# ------------------------------------------------------------------------------------ arm sweeps
def arm_units(stage: Stage, study: HeadStudy, name: str, units: list[Prepared], arms: list[Arm], removal: Removal,
              label: str, base_of=None, everyone: bool = False) -> list[dict] | None:
    """Every arm over every batch of `units` through `partial/<name>/`. A unit's saved rows are one list
    per arm (empty where the arm does not apply: controls batches run only arms with `arm.controls`),
    and its baseline log-odds. `base_of(index)` gives a unit's baseline instead of computing it. Rank 0
    (every rank, when `everyone`) gets the saved units in unit order; the others None."""
    keep = set(study.sweep.settings)
    is_setting = [p.samples[0].condition in keep for p in units]
    index = {id(p): i for i, p in enumerate(units)}
    pairs = _pairs(stage, study, units)

    def cost(i: int, p: Prepared) -> int:
        n = len(p.batch)
        return (n if base_of is None else 0) + n * sum(1 for a in arms if is_setting[i] or a.controls)

    def compute(p: Prepared, step) -> dict:
        i = index[id(p)]
        applicable = applicable_arms(arms, is_setting[i])
        plain, after = arm_log_odds(study.adapter, p, [arms[a] for a in applicable], removal, step, plain=base_of is None, pairs=pairs)
        if base_of is None:
            step(len(p.batch))  # the baseline: the recorded pass the arms resume from
        before = plain if base_of is None else base_of(i)
        per_arm: list[list[dict]] = [[] for _ in arms]
        for a, log_odds in zip(applicable, after):
            per_arm[a] = arm_rows(arms[a], p, before, log_odds)
        return {"base": [float(v) for v in before], "arms": per_arm}

    return stage.map_units(name, units, compute, label, cost=cost, samples_of=_batch_samples, merged=False, everyone=everyone)


def arm_major(saved: list[dict], units: list[Prepared], settings) -> list[dict]:
    """The per-unit rows in the order one pass over the arms gives (`run_arms` over every batch): arm
    by arm, the settings batches then the controls batches, each in batch order."""
    keep = set(settings)
    order = [i for i, p in enumerate(units) if p.samples[0].condition in keep]
    order += [i for i, p in enumerate(units) if p.samples[0].condition not in keep]
    n_arms = len(saved[0]["arms"]) if saved else 0
    return [row for a in range(n_arms) for i in order for row in saved[i]["arms"][a]]
