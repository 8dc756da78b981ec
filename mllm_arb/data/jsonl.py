"""Users' own conflict items: a JSON-lines file, one item a line, images as paths beside the file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ..core.errors import UserError
from ..core.records import ConflictItem

REQUIRED = ("item_id", "question", "answer_image", "answer_text", "context", "image")


def open_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise UserError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise UserError(f"unreadable or corrupt image {path}: {exc}") from None


def load_jsonl(path: str | Path, limit: int | None = None) -> tuple[list[ConflictItem], str]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"items file not found: {path}")
    raw = path.read_bytes()
    items = []
    for n, line in enumerate(raw.decode().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
        missing = [k for k in REQUIRED if not str(rec.get(k, "")).strip()]
        if missing:
            raise UserError(f"{path}:{n}: missing field(s) {', '.join(missing)}")
        try:
            items.append(
                ConflictItem(
                    item_id=str(rec["item_id"]),
                    task=str(rec.get("task", "default")),
                    question=rec["question"],
                    answer_image=str(rec["answer_image"]),
                    answer_text=str(rec["answer_text"]),
                    context=rec["context"],
                    consistent_context=rec.get("consistent_context"),
                    synonyms={k: tuple(v) for k, v in rec.get("synonyms", {}).items()},
                    image=open_image(path.parent / rec["image"]),
                )
            )
        except ValueError as exc:
            raise UserError(f"{path}:{n}: {exc}") from None
        if limit and len(items) >= limit:
            break
    return items, hashlib.sha256(raw).hexdigest()[:16]
