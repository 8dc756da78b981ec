"""The `sweep` config group of the head stages, validated: every bad value is a `UserError` before any
work starts."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from ...core.errors import UserError
from ...core.heads_file import n_selected
from ...core.records import Condition, parse_conditions
from .methods import ABLATION_MODES, METHODS, POSITIONS


@dataclass(frozen=True)
class SweepConfig:
    """`conf/sweep/default.yaml`, validated: every bad value is a `UserError` before any work starts."""

    methods: tuple[str, ...]
    rank_method: str
    rank_by: str
    rank_fraction: float
    min_split_items: int
    settings: tuple[Condition, ...]
    controls: tuple[Condition, ...]
    top_k: float
    top_n: int | None
    ks: tuple[float, ...]
    n_random: int
    n_random_dose: int
    ablation: str
    positions: str
    alphas: tuple[float, ...]
    heads_file: str | None
    allow_other_model: bool
    interactions: int = 16

    @classmethod
    def from_cfg(cls, sweep: DictConfig) -> SweepConfig:
        s = OmegaConf.to_container(sweep, resolve=True)
        methods = tuple(s["methods"])
        rank_method = s["rank_method"]
        for m in (*methods, rank_method):
            if m not in METHODS:
                raise UserError(f"unknown ranking method {m!r}; choose from {', '.join(METHODS)}")
        if rank_method not in methods:
            methods = (*methods, rank_method)
        settings, controls = parse_conditions(s["settings"], "sweep.settings"), parse_conditions(s["controls"], "sweep.controls")
        if not settings:
            raise UserError("sweep.settings names no setting")
        rank_by = s["rank_by"]
        if rank_by not in ("pooled", *(c.value for c in settings)):
            raise UserError(f"sweep.rank_by={rank_by!r} must be 'pooled' or one of sweep.settings")
        top_n = s.get("top_n")
        if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1):
            raise UserError(f"--top-n {top_n} must be a whole number of heads >= 1")
        top_k = _fraction(s["top_k"], "--top-k")
        ks = tuple(_fraction(k, "sweep.ks entry") for k in s["ks"])
        alphas = tuple(_positive(a) for a in s["alphas"])
        if not alphas:
            raise UserError("sweep.alphas needs at least one α")
        fraction = float(s["rank_fraction"])
        if not 0 < fraction < 1:
            raise UserError(f"sweep.rank_fraction={fraction} must lie strictly between 0 and 1")
        if int(s["n_random"]) < 2 or int(s["n_random_dose"]) < 2:
            raise UserError("sweep.n_random and sweep.n_random_dose need at least 2 seeds for an interval")
        if s["ablation"] not in ABLATION_MODES:
            raise UserError(f"sweep.ablation={s['ablation']!r}: choose {' or '.join(ABLATION_MODES)}")
        interactions = s.get("interactions", 16)
        if isinstance(interactions, bool) or not isinstance(interactions, int) or interactions < 0:
            raise UserError(f"sweep.interactions={interactions!r} must be a whole number of heads >= 0 (0: off)")
        if s["positions"] not in POSITIONS:
            raise UserError(f"sweep.positions={s['positions']!r}: choose from {', '.join(POSITIONS)}")
        return cls(
            methods=methods, rank_method=rank_method, rank_by=rank_by, rank_fraction=fraction,
            min_split_items=max(1, int(s["min_split_items"])), settings=settings, controls=controls,
            top_k=top_k, top_n=top_n, ks=ks, n_random=int(s["n_random"]), n_random_dose=int(s["n_random_dose"]),
            ablation=s["ablation"], positions=s["positions"], alphas=alphas,
            heads_file=s.get("heads_file") or None, allow_other_model=bool(s["allow_other_model"]),
            interactions=interactions,
        )

    def n_selected(self, total: int) -> int:
        return n_selected(total, top_k=None if self.top_n is not None else self.top_k, top_n=self.top_n)

    def check_heads(self, total: int) -> None:
        """Every head count the sweep asks for exists (and random sets are not all the same set)."""
        n = self.n_selected(total)
        for k in self.ks:
            n_selected(total, top_k=k)
        if n >= total:
            raise UserError(f"blocking {n} of the model's {total} heads leaves no other heads to draw random sets from; "
                            "lower --top-k / --top-n")


def _fraction(value, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{name} {value!r} is not a number") from None
    if not 0 < v <= 1:
        raise UserError(f"{name} {v} must be a fraction of the heads in (0, 1]")
    return v


def _positive(value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UserError(f"α {value!r} is not a number") from None
    if not v > 0:
        raise UserError(f"α {v} must be > 0 (α > 1 amplifies, α < 1 damps)")
    return v
