"""A reusable head set: `heads.json` (which heads, their scores, how and on what they were ranked),
and how many of them a sweep selects. `interventions.heads.use_head_set` applies one to a loaded model.

`heads.json`, as `rank-heads` writes it:

    {"format": "mllm-arb-heads/1", "model": "organism", "n_layers": 8, "n_heads": 8,
     "method": "ablation", "rank_by": "pooled", "dataset_fingerprint": "…",
     "heads": [[5, 2], [7, 1], …],                       # the selected set, most important first
     "ranking": [{"layer": 5, "head": 2, "score": 3.1}, …],  # every head, highest score first
     "top_k": 0.05, "rank_items": ["syn1000-000003", …]}

A hand-written file needs only `model`, `n_layers`, `n_heads` and `heads`; without a `ranking` its
heads are used as they are, and the controls that need a ranking (lowest-ranked heads, dose-response)
are skipped.

A model whose decoder mixes some layers by linear attention (Qwen3.5) has attention heads in its other
layers only: the file then lists the layers without heads (`"layers_without_heads": [0, 1, 2, 4, …]`), no
head may lie in them, and a ranking covers the heads of the other layers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import UserError
from .files import atomic_write_bytes, to_jsonable

FORMAT = "mllm-arb-heads/1"
FILE_NAME = "heads.json"

Head = tuple[int, int]


@dataclass(frozen=True)
class HeadSet:
    model: str
    n_layers: int
    n_heads: int
    heads: tuple[Head, ...]
    ranking: tuple[Head, ...] = ()
    scores: tuple[float, ...] = ()  # aligned with `ranking`
    method: str | None = None
    rank_by: str | None = None
    dataset_fingerprint: str | None = None
    top_k: float | None = None
    rank_items: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict)
    #: layers that have no attention heads (linear attention): none of the set's heads lies there
    layers_without_heads: tuple[int, ...] = ()

    @property
    def total(self) -> int:
        """How many heads the model has that a set may hold (the layers without heads have none)."""
        return (self.n_layers - len(self.layers_without_heads)) * self.n_heads

    @property
    def candidates(self) -> list[Head]:
        """Every head a set may hold, layer by layer (random sets are drawn from these)."""
        return attention_heads(self.n_layers, self.n_heads, self.layers_without_heads)

    def top(self, n: int) -> tuple[Head, ...]:
        """The `n` highest-ranked heads (a hand-made set: its heads, whatever `n`)."""
        return self.ranking[:n] if self.ranking else self.heads

    def bottom(self, n: int) -> tuple[Head, ...] | None:
        """The `n` lowest-ranked heads, lowest first; None without a ranking."""
        return tuple(reversed(self.ranking[-n:])) if self.ranking else None

    def to_json(self) -> dict:
        out = {
            "format": FORMAT,
            "model": self.model,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "method": self.method,
            "rank_by": self.rank_by,
            "dataset_fingerprint": self.dataset_fingerprint,
            "top_k": self.top_k,
            "heads": [list(h) for h in self.heads],
            "ranking": [{"layer": l, "head": h, "score": s} for (l, h), s in zip(self.ranking, self.scores)],
            "rank_items": list(self.rank_items),
            **({"layers_without_heads": list(self.layers_without_heads)} if self.layers_without_heads else {}),
            **self.extra,
        }
        return out


def attention_heads(n_layers: int, n_heads: int, layers_without_heads=()) -> list[Head]:
    """Every (layer, head) of a decoder, layer by layer, leaving out the layers without attention heads."""
    skip = set(layers_without_heads)
    return [(l, h) for l in range(n_layers) if l not in skip for h in range(n_heads)]


def from_ranking(ranked: Sequence[tuple[int, int, float]], n_selected: int, *, model: str, n_layers: int, n_heads: int,
                 **meta) -> HeadSet:
    """A head set from `pipeline.heads.methods.rank` output, selecting its first `n_selected` heads."""
    order = tuple((l, h) for l, h, _ in ranked)
    return HeadSet(model=model, n_layers=n_layers, n_heads=n_heads, heads=order[:n_selected], ranking=order,
                   scores=tuple(s for _, _, s in ranked), **meta)


def write_head_set(path: str | Path, head_set: HeadSet) -> Path:
    path = Path(path)
    atomic_write_bytes(path, json.dumps(to_jsonable(head_set.to_json()), indent=1).encode())
    return path


def read_head_set(path: str | Path) -> HeadSet:
    """Read and validate a heads file; every problem is one clear `UserError`."""
    path = Path(path)
    if path.is_dir():
        path = path / FILE_NAME
    if not path.is_file():
        raise UserError(f"heads file {path} does not exist")
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"heads file {path} is not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise UserError(f"heads file {path} must hold a JSON object")
    missing = [k for k in ("model", "n_layers", "n_heads", "heads") if k not in raw]
    if missing:
        raise UserError(f"heads file {path} lacks {', '.join(missing)}")
    try:
        n_layers, n_heads = int(raw["n_layers"]), int(raw["n_heads"])
        listed = raw.get("layers_without_heads") or []
        if not isinstance(listed, list):
            raise UserError(f"heads file {path}: layers_without_heads must be a list of layer indices, not {listed!r}")
        without = tuple(sorted({_layer(l) for l in listed}))
        heads = tuple(_head(h) for h in raw["heads"])
        ranking = tuple((int(r["layer"]), int(r["head"])) for r in raw.get("ranking") or [])
        scores = tuple(float(r["score"]) for r in raw.get("ranking") or [])
    except (TypeError, ValueError, KeyError) as exc:
        raise UserError(f"heads file {path}: heads must be [layer, head] pairs and ranking entries "
                        f"{{layer, head, score}} ({exc})") from None
    for l in without:
        if not 0 <= l < n_layers:
            raise UserError(f"heads file {path}: layers_without_heads names layer {l}, outside its model's {n_layers} layers")
    for l, h in heads + ranking:
        if not (0 <= l < n_layers and 0 <= h < n_heads):
            raise UserError(f"heads file {path}: head ({l}, {h}) lies outside its model's {n_layers} layers × {n_heads} heads")
        if l in without:
            raise UserError(f"heads file {path}: head ({l}, {h}) lies in layer {l}, which the file lists as having no attention heads")
    if not heads and not ranking:
        raise UserError(f"heads file {path} names no heads")
    if len(set(heads)) != len(heads) or len(set(ranking)) != len(ranking):
        raise UserError(f"heads file {path} lists a head twice")
    total = (n_layers - len(without)) * n_heads
    if ranking and len(ranking) != total:
        hint = "" if without else "; a model with linear-attention layers lists them as layers_without_heads"
        raise UserError(f"heads file {path}: a ranking must list all {total} heads, not {len(ranking)}{hint}")
    known = {"format", "model", "n_layers", "n_heads", "heads", "ranking", "method", "rank_by",
             "dataset_fingerprint", "top_k", "rank_items", "layers_without_heads"}
    return HeadSet(
        model=str(raw["model"]),
        n_layers=n_layers,
        n_heads=n_heads,
        heads=heads or ranking,
        ranking=ranking,
        scores=scores,
        method=raw.get("method"),
        rank_by=raw.get("rank_by"),
        dataset_fingerprint=raw.get("dataset_fingerprint"),
        top_k=raw.get("top_k"),
        rank_items=tuple(str(i) for i in raw.get("rank_items") or ()),
        extra={k: v for k, v in raw.items() if k not in known},
        layers_without_heads=without,
    )


def _layer(value) -> int:
    if isinstance(value, bool) or int(value) != value:
        raise ValueError(f"{value!r} is not a layer index")
    return int(value)


def _head(value) -> Head:
    l, h = value  # noqa: E741 - raises ValueError/TypeError on anything but a pair
    if isinstance(l, bool) or isinstance(h, bool) or int(l) != l or int(h) != h:
        raise ValueError(f"{value!r} is not a pair of integers")
    return int(l), int(h)


def check_model(head_set: HeadSet, model: str, n_layers: int, n_heads: int, allow_other_model: bool = False,
                layers_without_heads=()) -> HeadSet:
    """The head set, refused if it was ranked on another model (a shape mismatch always, and a head in a
    layer of this model that has no attention heads); returned with this model's layers without heads."""
    if (head_set.n_layers, head_set.n_heads) != (n_layers, n_heads):
        raise UserError(f"the heads file is for a model with {head_set.n_layers} layers × {head_set.n_heads} heads "
                        f"({head_set.model}); this model ({model}) has {n_layers} × {n_heads}")
    without = tuple(sorted(layers_without_heads))
    if head_set.layers_without_heads and head_set.layers_without_heads != without:
        raise UserError(f"the heads file is for a model whose layers {list(head_set.layers_without_heads)} have no attention "
                        f"heads ({head_set.model}); in this model ({model}) that is {list(without) or 'no layer'}")
    inside = [(l, h) for l, h in head_set.heads + head_set.ranking if l in without]
    if inside:
        l, h = inside[0]
        raise UserError(f"the heads file names head ({l}, {h}), but layer {l} of this model ({model}) mixes by linear "
                        "attention and has no attention heads")
    if head_set.model != model and not allow_other_model:
        raise UserError(f"the heads file was ranked on model {head_set.model!r}, not {model!r}; "
                        "pass sweep.allow_other_model=true to use it anyway")
    return replace(head_set, layers_without_heads=without)


def n_selected(total: int, top_k: float | None = None, top_n: int | None = None) -> int:
    """How many heads `--top-n N` or `--top-k FRACTION` (ceil(fraction × total)) selects."""
    if top_n is not None:
        if not 1 <= int(top_n) <= total:
            raise UserError(f"--top-n {top_n}: the model has {total} heads, choose 1 to {total}")
        return int(top_n)
    if top_k is None or not 0 < float(top_k) <= 1:
        raise UserError(f"--top-k {top_k} must be a fraction in (0, 1]")
    return max(1, math.ceil(float(top_k) * total - 1e-9))  # 0.05 × 60 is 3.0000000000000004 in floats
