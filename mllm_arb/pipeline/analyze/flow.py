"""Information flow (docs/method.md §4): attention knockout between token groups over sliding layer windows
(and, cumulatively, from each layer to the last and from the first to each layer), logit lens by
component at the last and instruction positions, and anchor decision agreement.

Per-sample rows come out of `knockout_rows` and `lens_rows`; `summarise_*` turn them into the per-layer
curves that results.json, the plots and the findings read.
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import nullcontext
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ...core.prompt import GROUPS
from ...core.records import Sample
from ...core.results import CumulativeCurves, KnockoutCurves, KnockoutRow, LensSummary
from ...core.scoring import answer_ids, binary_scores
from ...core.scoring import batches
from ...core.stats import summarise
from ...interventions.knockout import knock_out, knock_out_rows, knockout_mask, layer_window
from ...interventions.lens import component_contributions
from ...interventions.prefix import PrefixRun
from ...models.adapter import ModelAdapter

#: the edges of docs/method.md §4, as (source, target): target rows may not attend to source columns
STUDY_EDGES = (
    ("image", "instruction"),
    ("context", "instruction"),
    ("image", "context"),
    ("image", "last"),
    ("context", "last"),
    ("instruction", "last"),
    ("question", "last"),
    ("format", "last"),
)


def parse_edge(text: str) -> tuple[str, str]:
    """`src->dst`, or `src:dst` (Hydra's command-line grammar has no unquoted `>`)."""
    src, sep, dst = text.partition("->") if "->" in text else text.partition(":")
    src, dst = src.strip(), dst.strip()
    if not sep or src not in GROUPS or dst not in GROUPS:
        raise ValueError(f"edge {text!r} is not 'src->dst' (or 'src:dst') over the groups {', '.join(GROUPS)}")
    return src, dst


def edge_name(edge: tuple[str, str]) -> str:
    return f"{edge[0]}->{edge[1]}"


#: how a knockout variant picks its layers: a window centred on the layer, every layer from it to the
#: last, every layer from the first up to it
SPANS = ("window", "from", "until")


@dataclass(frozen=True)
class KnockoutPlan:
    edges: tuple[tuple[str, str], ...]
    window: int
    n_layers: int
    #: also block each edge from layer l to the last and from the first layer to l: a read spread thinly
    #: over many layers shows there, where no single window catches it
    cumulative: bool = False

    def windows(self) -> list[tuple[int, list[int]]]:
        return [(c, layer_window(c, self.window, self.n_layers)) for c in range(self.n_layers)]

    def spans(self) -> list[tuple[str, int, list[int]]]:
        """(span, layer, the layers blocked) for every variant of one edge."""
        out = [("window", c, layers) for c, layers in self.windows()]
        if self.cumulative:
            out += [("from", l, list(range(l, self.n_layers))) for l in range(self.n_layers)]
            out += [("until", l, list(range(l + 1))) for l in range(self.n_layers)]
        return out

    @property
    def n_passes_per_batch(self) -> int:
        """Distinct (edge, layers) knockouts: a variant that blocks the same layers as another is run once."""
        return len(self.edges) * len({tuple(layers) for _, _, layers in self.spans()})


@torch.no_grad()
def knockout_rows(
    adapter: ModelAdapter,
    samples: Sequence[Sample],
    plan: KnockoutPlan,
    batch_size: int,
    on_step: Callable[[int], None] | None = None,
    fast: bool = True,
    variants: int | None = None,
) -> list[KnockoutRow]:
    """For every sample, edge and window centre: following log-odds before and after the knockout.

    `fast` records one plain pass per batch and resumes it at each window's first layer (the layers
    before it are untouched), `variants` knockouts (edges, windows with the same first layer) stacked per
    pass, or query columns per pass for edges into the final position (default: `max_variants`,
    `max_columns`); `fast=False` runs one full forward pass per edge, window and batch.
    """
    variants_of = [(edge, span, layer, layers) for edge in plan.edges for span, layer, layers in plan.spans()]
    # variants that block the same layers (a clipped window and a cumulative span) share one knockout
    unique: dict[tuple, int] = {}
    for edge, _, _, layers in variants_of:
        unique.setdefault((edge, tuple(layers)), len(unique))
    todo: list[Variant] = [(edge, min(layers), list(layers)) for edge, layers in unique]
    rows: list[dict] = []
    for chunk in batches(samples, batch_size):
        batch = adapter.build_batch(chunk)
        ids = [answer_ids(adapter.tokenizer, s) for s in chunk]
        if fast:
            base, after = _knockout_fast(adapter, batch, ids, todo, on_step, variants)
        else:
            base, after = _knockout_naive(adapter, batch, ids, todo, on_step)
        for edge, span, layer, layers in variants_of:
            log_odds = after[unique[(edge, tuple(layers))]]
            for i, s in enumerate(chunk):
                rows.append(
                    {
                        "item_id": s.item_id,
                        "task": s.task,
                        "setting": s.condition.value,
                        "edge": edge_name(edge),
                        "span": span,
                        "center": layer,
                        "first_layer": min(layers),  # a window at either end of the decoder is clipped: narrower
                        "last_layer": max(layers),
                        "log_odds_before": float(base[i]),
                        "log_odds_after": float(log_odds[i]),
                        "delta": float(log_odds[i] - base[i]),
                        "follows_before": bool(base[i] > 0),
                        "follows_after": bool(log_odds[i] > 0),  # one rule everywhere: follows when log-odds > 0
                    }
                )
    return rows


#: one knockout: the edge, its first layer, the layers it blocks
Variant = tuple[tuple[str, str], int, list[int]]


def knockout_branches(todo: Sequence[Variant]) -> list[tuple[int, int] | None]:
    """Per knockout, `(k, l)` when it blocks the same edge as knockout k in the same layers below l, so
    that it can start at layer l from k's state there (`PrefixRun.suffix_sweep`'s branches), or None.

    A window and the cumulative spans are each other's prefixes: every layer up to l blocked is the
    whole-depth block until layer l + 1, and a window from layer a is the block from a onwards until its
    last layer. The widest knockouts are taken as the ones to branch off, each knockout off the one it
    agrees with longest, if that saves layers."""
    branches: list[tuple[int, int] | None] = [None] * len(todo)
    roots: dict[tuple[str, str], list[int]] = {}
    for j in sorted(range(len(todo)), key=lambda j: -len(todo[j][2])):
        edge, first, layers = todo[j]
        best = None
        for k in roots.get(edge, []):
            differ = set(layers) ^ set(todo[k][2])
            agree = min(differ) if differ else None  # the first layer where the two block differently
            if agree is not None and agree > first and todo[k][1] <= agree and (best is None or agree > best[1]):
                best = (k, agree)
        if best is None:
            roots.setdefault(edge, []).append(j)
        else:
            branches[j] = best
    return branches


def _knockout_naive(adapter, batch, ids, todo: Sequence[Variant], on_step) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Baseline and per-variant `[B]` log-odds, one full forward pass per variant."""
    base = binary_scores(adapter.last_logits(batch), ids)[0]
    after = []
    for edge, _, layers in todo:
        with knock_out(adapter, batch, [edge], layers):
            after.append(binary_scores(adapter.last_logits(batch), ids)[0])
        if on_step:
            on_step(len(batch))
    return base, after


def _knockout_fast(adapter, batch, ids, todo: Sequence[Variant], on_step, variants: int | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """`_knockout_naive` from one recorded pass (`PrefixRun.sweep`). An edge whose first target row comes
    after the first position (into the context, the instruction) recomputes only the positions from
    there on; edges into the final position alone (`last`, left padding) are query columns of one
    last-position sweep (`PrefixRun.last_sweep`), each column's mask row cut as its edge and window say;
    the others resume at their window's first layer.
    An edge that blocks nothing in the batch (a group the prompts lack) leaves the plain pass's
    log-odds, with no pass at all."""
    run = PrefixRun(adapter, batch)
    base = binary_scores(run.logits, ids)[0]
    n_rows, n_tok = len(batch), batch.inputs["input_ids"].shape[1]
    masks = {edge: knockout_mask(batch, [edge]) for edge in dict.fromkeys(e for e, _, _ in todo)}
    # positions before an edge's first target row keep their plain values: a suffix sweep from there
    starts = {edge: run.start_for(mask.any(-1)) for edge, mask in masks.items()}
    active = [j for j, (edge, _, _) in enumerate(todo) if masks[edge].any()]
    after: list[torch.Tensor] = [base] * len(todo)
    if on_step and len(active) < len(todo):
        on_step(n_rows * (len(todo) - len(active)))

    if not active:
        return base, after
    done = (lambda k: on_step(n_rows * k)) if on_step else None
    # edges into the final position alone (into `last`, left padding): query columns, each its own mask row
    final = run.last_is_final
    columns = [j for j in active if final and starts[todo[j][0]] == n_tok - 1]
    rest = [j for j in active if j not in columns]

    def blocked(layer: int, js) -> torch.Tensor | None:
        """`[B, len(js), T - 1]` what the final query of each column may not see in `layer`."""
        chosen = [todo[columns[k]] for k in js]
        if not any(layer in layers for _, _, layers in chosen):
            return None
        none = torch.zeros(n_rows, n_tok - 1, dtype=torch.bool, device=batch.inputs["input_ids"].device)
        return torch.stack([masks[edge][:, -1, :-1] if layer in layers else none for edge, _, layers in chosen], 1)

    def record(js, logits):
        log_odds = binary_scores(logits.flatten(0, 1), list(ids) * len(js))[0].view(len(js), n_rows)
        for v, j in enumerate(js):
            after[j] = log_odds[v]

    if columns:
        record(columns, run.last_sweep([min(todo[j][2]) for j in columns], lambda js: nullcontext(), variants, done, blocked))
    if rest:
        def intervene(js):
            chosen = [todo[rest[j]] for j in js]
            block = torch.cat([masks[edge] for edge, _, _ in chosen])
            return knock_out_rows(adapter, block, [layers for _, _, layers in chosen for _ in range(n_rows)])

        record(rest, run.sweep([min(todo[j][2]) for j in rest], [starts[todo[j][0]] for j in rest], intervene, variants, done,
                               row_extra=n_tok * n_tok // 4,  # a stacked row's blocked entries (bool)
                               branches=knockout_branches([todo[j] for j in rest])))
    return base, after


def _curves(rows: Sequence[KnockoutRow], span: str, key: str, n_boot: int, seed: int) -> dict[str, dict[str, list[dict]]]:
    """{setting: {edge: [per layer of `span`: mean Δ log-odds, 95% interval, MFR before and under knockout]}};
    rows written before cumulative spans existed are windows."""
    grouped: dict[tuple[str, str, int], list[KnockoutRow]] = defaultdict(list)
    for r in rows:
        if r.get("span", "window") == span:
            grouped[(r["setting"], r["edge"], r["center"])].append(r)
    out: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for (setting, edge, layer), rs in grouped.items():  # insertion order: edges as configured, layers ascending
        s = summarise([r["delta"] for r in rs], n_boot=n_boot, seed=seed)
        out[setting][edge].append(
            {
                key: layer,
                **({"layers": [rs[0]["first_layer"], rs[0]["last_layer"]]} if "first_layer" in rs[0] else {}),
                "mean": s["mean"],
                "ci_low": s["ci_low"],
                "ci_high": s["ci_high"],
                "n": s["n"],
                "mfr_before": float(np.mean([r["follows_before"] for r in rs])),
                "mfr_after": float(np.mean([r["follows_after"] for r in rs])),
            }
        )
    return {k: dict(v) for k, v in out.items()}


def summarise_knockout(rows: Sequence[KnockoutRow], n_boot: int = 1000, seed: int = 0) -> KnockoutCurves:
    """{setting: {edge: [per window centre: mean Δ log-odds, 95% interval, MFR before and under knockout]}}."""
    return _curves(rows, "window", "center", n_boot, seed)


def summarise_cumulative(rows: Sequence[KnockoutRow], n_boot: int = 1000, seed: int = 0) -> CumulativeCurves:
    """{setting: {edge: {"from": [per layer l: blocked in l..last], "until": [per l: blocked in 0..l]}}};
    empty when the sweep ran no cumulative spans."""
    out: dict[str, dict[str, dict[str, list]]] = defaultdict(dict)
    for span in ("from", "until"):
        for setting, edges in _curves(rows, span, "layer", n_boot, seed).items():
            for edge, points in edges.items():
                out[setting].setdefault(edge, {})[span] = points
    return dict(out)


@torch.no_grad()
def lens_rows(
    adapter: ModelAdapter,
    samples: Sequence[Sample],
    batch_size: int,
    on_step: Callable[[int], None] | None = None,
) -> list[dict]:
    """Per sample and layer: each sublayer's contribution to the following and competitor lens scores at
    the last position and (averaged) at the instruction positions, and the lens log-odds there after
    the layer (for anchor agreement)."""
    rows: list[dict] = []
    for chunk in batches(samples, batch_size):
        batch = adapter.build_batch(chunk)
        ids = [answer_ids(adapter.tokenizer, s) for s in chunk]
        fol, com = [a.following for a in ids], [a.competitor for a in ids]
        final, _, _ = binary_scores(adapter.last_logits(batch), ids)
        at = {"last": component_contributions(adapter, batch, fol, com, "last")}
        if all(sp["instruction"] for sp in batch.spans):
            at["instruction"] = component_contributions(adapter, batch, fol, com, "instruction")
        per_site = {}
        for site, c in at.items():
            w = c.valid.float()[..., None, None]  # [B, P, 1, 1]: average over real positions only
            mean = lambda x: (x * w).sum(1) / w.sum(1)  # noqa: E731  [B, L, 2]
            f, k = mean(c.following), mean(c.competitor)
            start = ((c.start_following - c.start_competitor) * c.valid).sum(1) / c.valid.sum(1)
            # lens log-odds after each layer: embeddings' score plus every contribution so far
            after_layer = start[:, None] + (f - k).sum(-1).cumsum(-1)
            per_site[site] = (f, k, after_layer)
        n_layers = adapter.parts.n_layers
        for i, s in enumerate(chunk):
            for layer in range(n_layers):
                row = {
                    "item_id": s.item_id,
                    "task": s.task,
                    "setting": s.condition.value,
                    "layer": layer,
                    "follows": bool(final[i] > 0),
                }
                for site, (f, k, after_layer) in per_site.items():
                    for j, component in enumerate(at[site].sublayers):  # attn, mlp (and deepstack, say)
                        row[f"{site}_{component}_following"] = float(f[i, layer, j])
                        row[f"{site}_{component}_competitor"] = float(k[i, layer, j])
                    row[f"{site}_lens_log_odds"] = float(after_layer[i, layer])
                rows.append(row)
        if on_step:
            on_step(len(chunk))
    return rows


SPLITS = {"all": lambda r: True, "followed": lambda r: r["follows"], "failed": lambda r: not r["follows"]}


def summarise_lens(rows: Sequence[dict], n_layers: int) -> LensSummary:
    """{setting: {site: {split: per-layer means of attn/mlp contributions and lens log-odds, n}}} and
    {setting: agreement per layer} (share of samples whose instruction-token lens decision equals the
    model's final decision)."""
    by_setting: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_setting[r["setting"]].append(r)
    components: dict = {}
    agreement: dict = {}
    for setting, rs in by_setting.items():
        components[setting] = {}
        sites = [s for s in ("last", "instruction") if f"{s}_lens_log_odds" in rs[0]]
        for site in sites:
            components[setting][site] = {}
            for split, keep in SPLITS.items():
                sel = [r for r in rs if keep(r)]
                per_layer = defaultdict(list)
                for r in sel:
                    per_layer[r["layer"]].append(r)
                entry = {"n": len(sel) // max(n_layers, 1)}
                for sub in ("attn", "mlp"):
                    for kind in ("following", "competitor"):
                        key = f"{sub}_{kind}"
                        entry[key] = [_mean(per_layer[l], f"{site}_{key}") for l in range(n_layers)]
                    entry[f"{sub}_difference"] = [a - b for a, b in zip(entry[f"{sub}_following"], entry[f"{sub}_competitor"])]
                entry["lens_log_odds"] = [_mean(per_layer[l], f"{site}_lens_log_odds") for l in range(n_layers)]
                components[setting][site][split] = entry
        if "instruction" in sites:
            per_layer = defaultdict(list)
            for r in rs:
                per_layer[r["layer"]].append((r["instruction_lens_log_odds"] > 0) == r["follows"])
            agreement[setting] = [float(np.mean(per_layer[l])) for l in range(n_layers)]
    return {"components": components, "agreement": agreement}


def _mean(rows: Sequence[dict], key: str) -> float:
    return float(np.mean([r[key] for r in rows])) if rows else float("nan")
