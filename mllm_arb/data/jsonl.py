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
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not valid UTF-8 text (byte {exc.start})") from None
    items = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
        if not isinstance(rec, dict):
            raise UserError(f"{path}:{n}: an item is a JSON object with the fields {', '.join(REQUIRED)}, not a {type(rec).__name__}")
        missing = [k for k in REQUIRED if rec.get(k) is None or (isinstance(rec[k], str) and not rec[k].strip())]
        if missing:
            raise UserError(f"{path}:{n}: missing field(s) {', '.join(missing)}")
        wrong = [k for k in (*REQUIRED, "task") if k in rec and not isinstance(rec[k], str)]
        if wrong:
            raise UserError(f"{path}:{n}: field(s) {', '.join(wrong)} must be text (a JSON string), not "
                            f"{', '.join(type(rec[k]).__name__ for k in wrong)}")
        synonyms = rec.get("synonyms", {})
        if not isinstance(synonyms, dict) or not all(isinstance(v, list) for v in synonyms.values()):
            raise UserError(f"{path}:{n}: synonyms must map each answer to a list of words")
        try:
            items.append(
                ConflictItem(
                    item_id=rec["item_id"],
                    task=rec.get("task", "default"),
                    question=rec["question"],
                    answer_image=rec["answer_image"],
                    answer_text=rec["answer_text"],
                    context=rec["context"],
                    consistent_context=rec.get("consistent_context"),
                    synonyms={k: tuple(v) for k, v in synonyms.items()},
                    image=open_image(path.parent / rec["image"]),
                )
            )
        except ValueError as exc:
            raise UserError(f"{path}:{n}: {exc}") from None
        if limit and len(items) >= limit:
            break
    return items, hashlib.sha256(raw).hexdigest()[:16]
