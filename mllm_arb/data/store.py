"""Conflict items on disk as a `datasets` Arrow dataset (images as PNG), with their fingerprint."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from ..core.errors import UserError
from ..core.records import ConflictItem

FINGERPRINT_FILE = "mllm_arb_fingerprint.json"


def save_items(items: Sequence[ConflictItem], path: str | Path, fingerprint: str, meta: dict | None = None) -> Path:
    from datasets import Dataset, Features, Image, Value

    path = Path(path)
    if path.exists():
        raise UserError(f"dataset folder {path} already exists; refusing to overwrite it")
    features = Features(
        {
            "item_id": Value("string"),
            "task": Value("string"),
            "question": Value("string"),
            "answer_image": Value("string"),
            "answer_text": Value("string"),
            "context": Value("string"),
            "consistent_context": Value("string"),
            "synonyms": Value("string"),
            "image": Image(),
        }
    )
    columns = {k: [] for k in features}
    for it in items:
        columns["item_id"].append(it.item_id)
        columns["task"].append(it.task)
        columns["question"].append(it.question)
        columns["answer_image"].append(it.answer_image)
        columns["answer_text"].append(it.answer_text)
        columns["context"].append(it.context)
        columns["consistent_context"].append(it.consistent_context)
        columns["synonyms"].append(json.dumps({k: list(v) for k, v in it.synonyms.items()}))
        columns["image"].append(it.image)
    Dataset.from_dict(columns, features=features).save_to_disk(str(path))
    (path / FINGERPRINT_FILE).write_text(json.dumps({"fingerprint": fingerprint, "n_items": len(items), **(meta or {})}, indent=2))
    return path


def load_items(path: str | Path) -> tuple[list[ConflictItem], str]:
    from datasets import load_from_disk

    path = Path(path)
    if not (path / FINGERPRINT_FILE).exists():
        raise UserError(f"{path} is not a dataset written by `mllm-arb build-data`")
    try:
        saved = json.loads((path / FINGERPRINT_FILE).read_text())
        fingerprint = saved["fingerprint"]
        ds = load_from_disk(str(path))
        rows = list(ds)
    except Exception as exc:  # noqa: BLE001 - a missing shard, a truncated Arrow file, a damaged state.json: all the same to the user
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: the saved dataset is damaged or incomplete ({first}); rebuild it with `mllm-arb build-data`") from None
    if "n_items" in saved and len(rows) != saved["n_items"]:
        raise UserError(f"{path}: the saved dataset holds {len(rows)} of its {saved['n_items']} items (a partial copy?); "
                        "rebuild it with `mllm-arb build-data`")
    items = [
        ConflictItem(
            item_id=r["item_id"],
            task=r["task"],
            question=r["question"],
            answer_image=r["answer_image"],
            answer_text=r["answer_text"],
            context=r["context"],
            consistent_context=r["consistent_context"],
            synonyms={k: tuple(v) for k, v in json.loads(r["synonyms"] or "{}").items()},
            image=r["image"].convert("RGB") if r["image"] is not None else None,
        )
        for r in rows
    ]
    return items, fingerprint
