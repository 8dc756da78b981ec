"""The types and ranges of every configuration key (Hydra structured configs).

The YAML files under `conf/` hold every default; these dataclasses hold only what a value may be
(fields are `MISSING` here, so there is one source of defaults). Hydra merges each file and each
command-line override onto its typed node, so `batch_size=abc` or `sweep.alphas=5` fails at compose
time, and `check_ranges` then walks the composed config against the fields' `metadata` (bounds,
choices, non-empty lists), so `batch_size=0` or `data.limit=-1` fails too, before anything runs.
Each error names the key, the value and what is allowed.

Which values are *known* (condition names, edges, ranking methods) is checked where they are defined,
in the layers above, from the same composed config (`pipeline.checks`).
"""

from __future__ import annotations

import math
import dataclasses
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, ListConfig

from ..core.errors import UserError
from ..data.scenes import FAMILY_NAMES


def key(*, min: float | None = None, max: float | None = None, above: float | None = None, choices: tuple = (),
        nonempty: bool = False) -> Any:
    """A field with no default (`???`: the YAML gives it) and what its value may be."""
    meta = {k: v for k, v in (("min", min), ("max", max), ("above", above)) if v is not None}
    if choices:
        meta["choices"] = tuple(choices)
    if nonempty:
        meta["nonempty"] = True
    return field(default=MISSING, metadata=meta)


# ------------------------------------------------------------------------------------------ model
@dataclass
class ModelSchema:
    name: str = key()
    family: str = key()
    path: str = key()
    dtype: str = key(choices=("float32", "float16", "bfloat16", "auto"))
    device: str = key()  # cpu, cuda, cuda:N, mps, auto: checked against the machine when the model loads
    attn_implementation: str = key(choices=("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention"))
    padding_side: str = key(choices=("left", "right"))


# ------------------------------------------------------------------------------------------- data
@dataclass
class SyntheticData:
    source: str = key(choices=("synthetic",))
    n_items: int = key(min=1)
    seed: int = key()
    image_size: int = key(min=8)
    families: list[str] = key(nonempty=True, choices=FAMILY_NAMES)
    paraphrase_prompts: bool = key()
    start: int = key(min=0)
    limit: Optional[int] = key(min=1)


@dataclass
class JsonlData:
    source: str = key(choices=("jsonl",))
    path: str = key()
    limit: Optional[int] = key(min=1)


@dataclass
class DiskData:
    source: str = key(choices=("disk",))
    path: str = key()
    limit: Optional[int] = key(min=1)


@dataclass
class Mc2Data:
    source: str = key(choices=("mc2",))
    items_file: Optional[str] = key()
    images_dir: Optional[str] = key()
    single_word: bool = key()
    tasks: Optional[list[str]] = key(nonempty=True)
    number_synonyms: bool = key()
    limit: Optional[int] = key(min=1)


@dataclass
class HfColumns:
    image: str = key()
    question: str = key()
    answer: str = key()
    task: Optional[str] = key()
    id: Optional[str] = key()


@dataclass
class HfData:
    source: str = key(choices=("hf",))
    path: Optional[str] = key()
    format: str = key(choices=("auto", "disk", "parquet", "imagefolder"))
    split: Optional[str] = key()
    cache_dir: Optional[str] = key()
    columns: HfColumns = field(default_factory=HfColumns)
    infer_task: bool = key()
    tasks: Optional[list[str]] = key(nonempty=True)
    seed: int = key()
    context_templates: dict[str, Any] = key()
    limit: Optional[int] = key(min=1)


#: the schema of each `data=` option (conf/data/<name>.yaml names it in its defaults)
DATA = {"synthetic": SyntheticData, "jsonl": JsonlData, "disk": DiskData, "mc2": Mc2Data, "hf": HfData}


# --------------------------------------------------------------------------------------- analysis
@dataclass
class FindingThresholds:
    transfer_peak: float = key(above=0)
    direct_negligible: float = key(above=0)
    agreement: float = key(above=0, max=1)


@dataclass
class AnalysisSchema:
    settings: list[str] = key(nonempty=True)
    max_items: Optional[int] = key(min=1)
    edges: list[str] = key(nonempty=True)
    window: Optional[int] = key(min=1)
    cumulative: bool = key()
    lens: bool = key()
    saliency: bool = key()
    findings: FindingThresholds = field(default_factory=FindingThresholds)


# ------------------------------------------------------------------------------------------ sweep
@dataclass
class SweepSchema:
    methods: list[str] = key()
    rank_method: str = key()
    rank_by: str = key()
    rank_fraction: float = key(above=0, max=0.999999)
    min_split_items: int = key(min=1)
    settings: list[str] = key(nonempty=True)
    controls: list[str] = key()
    top_k: float = key(above=0, max=1)
    top_n: Optional[int] = key(min=1)
    ks: list[float] = key(above=0, max=1)
    n_random: int = key(min=2)
    n_random_dose: int = key(min=2)
    ablation: str = key(choices=("zero", "mean"))
    positions: str = key(choices=("all", "last", "instruction"))
    alphas: list[float] = key(nonempty=True, above=0)
    interactions: int = key(min=0)
    share_prefix: bool = key()
    heads_file: Optional[str] = key()
    allow_other_model: bool = key()


# ------------------------------------------------------------------------------------------- root
@dataclass
class BuildData:
    filter_with_model: bool = key()


@dataclass
class Scoring:
    generate_tokens: int = key(min=0)
    n_boot: int = key(min=10)


@dataclass
class Templates:
    text_instruction: str = key()
    vision_instruction: str = key()
    format_sentence: str = key()


@dataclass
class Validate:
    min_effect: float = key(min=0)


@dataclass
class RootSchema:
    model: ModelSchema = field(default_factory=ModelSchema)
    data: Any = MISSING  # typed per option (DATA), through the option file's own defaults
    analysis: AnalysisSchema = field(default_factory=AnalysisSchema)
    sweep: SweepSchema = field(default_factory=SweepSchema)
    seed: int = key()
    batch_size: int = key(min=1)
    output_dir: str = key()
    keep_partial: bool = key()
    conditions: list[str] = key(nonempty=True)
    build_data: BuildData = field(default_factory=BuildData)
    scoring: Scoring = field(default_factory=Scoring)
    templates: Templates = field(default_factory=Templates)
    validate: Validate = field(default_factory=Validate)


def register() -> None:
    """The schemas in Hydra's ConfigStore: `config_schema` under conf/config.yaml, `<source>_schema` in
    the data group under each data option."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(name="config_schema", node=RootSchema)
    for source, schema in DATA.items():
        store.store(group="data", name=f"{source}_schema", node=schema)


# ------------------------------------------------------------------------------------------ ranges
def check_ranges(cfg: DictConfig) -> None:
    """Every value of the composed config within what its field allows (bounds, choices, non-empty)."""
    check_node(cfg, RootSchema, "")
    source = cfg.get("data", {}).get("source") if isinstance(cfg.get("data"), DictConfig) else None
    if source in DATA:
        check_node(cfg.data, DATA[source], "data.")


def check_node(node: DictConfig, schema: type, prefix: str) -> None:
    """One config node (e.g. `cfg.sweep`, prefix "sweep.") against its schema's ranges."""
    for f in fields(schema):
        if f.name not in node:
            continue
        value = node[f.name]
        name = f"{prefix}{f.name}"
        sub = f.default_factory() if f.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]
        if is_dataclass(sub) and isinstance(value, DictConfig):
            check_node(value, type(sub), f"{name}.")
            continue
        _value_in_range(name, value, f.metadata)


def _value_in_range(name: str, value: Any, meta) -> None:
    if value is None or not meta:
        return
    values = list(value) if isinstance(value, (ListConfig, list, tuple)) else [value]
    if meta.get("nonempty") and isinstance(value, (ListConfig, list, tuple)) and not values:
        raise UserError(f"{name}=[] must name at least one value")
    for v in values:
        if "choices" in meta and v not in meta["choices"]:
            raise UserError(f"{name}={v!r}: choose one of {', '.join(map(str, meta['choices']))}")
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if isinstance(v, float) and not math.isfinite(v):
                raise UserError(f"{name}={v}: must be a finite number")
            if "min" in meta and v < meta["min"]:
                raise UserError(f"{name}={v}: must be at least {meta['min']}")
            if "above" in meta and not v > meta["above"]:
                raise UserError(f"{name}={v}: must be greater than {meta['above']}")
            if "max" in meta and v > meta["max"]:
                raise UserError(f"{name}={v}: must be at most {meta['max']}")
