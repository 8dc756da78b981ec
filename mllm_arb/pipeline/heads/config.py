"""The `sweep` config group of the head stages, validated: every bad value is a `UserError` before any
work starts."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from ...core.errors import UserError
from ...core.heads_file import n_selected
from ...core.records import Condition, parse_conditions
from ...runtime.schema import SweepSchema, check_node
from .methods import METHODS


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
    share_prefix: bool = True

    @classmethod
    def from_cfg(cls, sweep: DictConfig) -> SweepConfig:
        check_node(sweep, SweepSchema, "sweep.")  # types and ranges: runtime/schema.py
        s = OmegaConf.to_container(sweep, resolve=True)
        methods = tuple(s["methods"])
        rank_method = s["rank_method"]
        for m in (*methods, rank_method):
            if m not in METHODS:
                raise UserError(f"unknown ranking method {m!r}; choose from {', '.join(METHODS)}")
        if rank_method not in methods:
            methods = (*methods, rank_method)
        settings, controls = parse_conditions(s["settings"], "sweep.settings"), parse_conditions(s["controls"], "sweep.controls")
        rank_by = s["rank_by"]
        if rank_by not in ("pooled", *(c.value for c in settings)):
            raise UserError(f"sweep.rank_by={rank_by!r} must be 'pooled' or one of sweep.settings")
        return cls(
            methods=methods, rank_method=rank_method, rank_by=rank_by, rank_fraction=float(s["rank_fraction"]),
            min_split_items=int(s["min_split_items"]), settings=settings, controls=controls,
            top_k=float(s["top_k"]), top_n=s.get("top_n"), ks=tuple(float(k) for k in s["ks"]), n_random=int(s["n_random"]),
            n_random_dose=int(s["n_random_dose"]), ablation=s["ablation"], positions=s["positions"],
            alphas=tuple(float(a) for a in s["alphas"]), heads_file=s.get("heads_file") or None,
            allow_other_model=bool(s["allow_other_model"]), interactions=int(s.get("interactions", 16)),
            share_prefix=bool(s.get("share_prefix", True)),
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

