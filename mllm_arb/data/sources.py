"""Build conflict items from the `data` config group, whatever the source."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ..core.errors import UserError
from ..core.records import ConflictItem


def build_items(data: DictConfig) -> tuple[list[ConflictItem], str]:
    """Items and a fingerprint that changes whenever the items could."""
    items, fp, _ = build_items_with_report(data)
    return items, fp


def build_items_with_report(data: DictConfig) -> tuple[list[ConflictItem], str, dict | None]:
    """`build_items` plus, for sources that leave items out (mc2, hf), the report of what and why. Every
    item is checked (`ConflictItem`: fields and types) and item ids must be unique."""
    try:
        items, fp, report = _load(data)
    except ValueError as exc:  # an item that does not hold (its id in the message)
        raise UserError(f"{data.get('source')} data: {exc}") from None
    counts = Counter(it.item_id for it in items)
    repeated = [i for i, c in counts.items() if c > 1]
    if repeated:
        raise UserError(f"{data.get('source')} data: item_id {repeated[0]!r} appears {counts[repeated[0]]} times"
                        + (f" ({len(repeated) - 1} more ids repeat)" if len(repeated) > 1 else "") + "; item ids must be unique")
    return items, fp, report


def _load(data: DictConfig) -> tuple[list[ConflictItem], str, dict | None]:
    source = data.get("source")
    limit = data.get("limit")
    report = None
    if source == "synthetic":
        from .synthetic import SyntheticConfig, fingerprint, generate_items

        fields = {k: v for k, v in OmegaConf.to_container(data, resolve=True).items() if k in SyntheticConfig.__dataclass_fields__}
        if limit:
            fields["n_items"] = min(int(limit), int(fields.get("n_items", limit)))
        cfg = SyntheticConfig(**fields)
        items, fp = generate_items(cfg), fingerprint(cfg)
    elif source == "jsonl":
        from .jsonl import load_jsonl

        if not data.get("path"):
            raise UserError("data=jsonl needs data.path=<items.jsonl>")
        items, fp = load_jsonl(data.path, limit=limit)
    elif source == "disk":
        from .store import load_items

        if not data.get("path"):
            raise UserError("data=disk needs data.path=<folder written by build-data>")
        items, fp = load_items(data.path)
        if limit:
            items = items[: int(limit)]
            fp = hashlib.sha256(f"{fp}:{limit}".encode()).hexdigest()[:16]
    elif source == "mc2":
        from .mc2 import load_from_config

        items, fp, rep = load_from_config(data)
        report = rep.to_dict()
    elif source == "hf":
        from .hf import load_from_config

        items, fp, rep = load_from_config(data)
        report = rep.to_dict()
    else:
        raise UserError(f"unknown data source {source!r}; choose synthetic, jsonl, disk, mc2 or hf")
    if not items:
        raise UserError(f"the dataset ({source}) holds no items")
    return items, fp, report


