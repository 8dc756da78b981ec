"""The MC² conflict items (docs/method.md §1) paired with COCO-2014 images from a local folder.

The item file (`evaluate_final.json`, 2,000 items) gives for each item `image_id`, `task`, `question`,
`answer_vision`, `answer_text` and a conflicting `context`. The images are not shipped: the user
points `images_dir` at a folder of COCO-2014 images.

Selection, in order:
1. the single-word rule (`single_word=True`): an answer is a single word when, stripped of surrounding
   whitespace, it contains no whitespace. Both answers must pass. On the released file this keeps
   1,756 of 2,000 items, the count the reference study reports.
2. the task filter (`tasks`): full task names, or any unambiguous prefix ("sport", "position").
3. `limit`: the first N of what is left, before images are opened, so a small run stays cheap.

Items whose image is not in `images_dir` are reported (ids in the returned `Mc2Report`, and a logged
warning), never silently dropped; an image that exists but cannot be decoded is a `UserError` naming it.

MC² has no consistent context. We derive one by replacing the text answer with the vision answer
wherever it occurs as a whole word in the context (case kept). When it doesn't occur (the context
implies the answer in other words, e.g. "nibbling on leaves" for *eating*), the item has no consistent
context and whoever renders skips the CONSISTENT condition for it; `Mc2Report.no_consistent_context`
counts these. The derived context is a best effort: other cues in the text may still point to the
text answer, and number replacements can break agreement ("one dogs").

Three contexts of the released file carry `<answer>...</answer>` markup left over from their
generation; the tags (not the word inside) are removed, since no prompt of the study shows markup.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ..core.errors import UserError
from ..core.records import ConflictItem

log = logging.getLogger(__name__)

#: bump whenever the items built from the same file and options could change
LOADER_VERSION = "mc2-v1"
FIELDS = ("image_id", "task", "question", "answer_vision", "answer_text", "context")
#: fields a whole JSON number may stand for (a COCO id, a count): read as its decimal text
NUMBERS_AS_TEXT = ("image_id", "answer_vision", "answer_text")
#: file names tried for an image id, in each of the folders of `image_dirs`
IMAGE_NAMES = ("COCO_train2014_{id}.jpg", "COCO_val2014_{id}.jpg", "{id}.jpg", "{id}.png")
#: COCO's own layout keeps the two splits in sub-folders; accept both flat and split folders
IMAGE_SUBDIRS = ("", "train2014", "val2014")

_NUMBERS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty"
).split()
#: number words and their digits, both ways: models often answer counting questions with digits
NUMBER_SYNONYMS = {**{w: str(i) for i, w in enumerate(_NUMBERS)}, **{str(i): w for i, w in enumerate(_NUMBERS)}}


@dataclass(frozen=True)
class Mc2Report:
    """What the loader kept, and what it could not use, with reasons."""

    items_file: str
    images_dir: str
    n_records: int
    n_single_word: int  # records passing the single-word rule (all records when the rule is off)
    n_selected: int  # after the task filter and the limit: the items images were looked for
    n_items: int  # items returned (their image was found)
    missing_images: tuple[str, ...]  # image ids with no file in images_dir
    missing_item_ids: tuple[str, ...]
    no_consistent_context: tuple[str, ...]  # returned items whose CONSISTENT condition must be skipped
    per_task: dict[str, int] = field(default_factory=dict)  # returned items per task

    def to_dict(self) -> dict:
        out = asdict(self)
        for key in ("missing_images", "missing_item_ids", "no_consistent_context"):
            out[f"n_{key}"] = len(out[key])
            out[key] = list(out[key])
        return out


def default_items_file() -> Path:
    """The item file shipped beside the repository (`<repo>/../shared/datasets/mc2/`)."""
    return Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "mc2" / "evaluate_final.json"


# ------------------------------------------------------------------------------------- the item file


def read_records(path: str | Path) -> tuple[list[dict], bytes]:
    """The item file's records, validated, and its raw bytes (for the fingerprint)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"MC² item file not found: {path} (set data.items_file=<evaluate_final.json>)")
    raw = path.read_bytes()
    try:
        records = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(records, list):
        raise UserError(f"{path}: expected a JSON list of MC² items, got {type(records).__name__}")
    for n, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise UserError(f"{path}: item {n} is a {type(rec).__name__}, not a JSON object with {', '.join(FIELDS)}")
        for k in NUMBERS_AS_TEXT:  # an image id or a counting answer written as a JSON number is that number's text
            if isinstance(rec.get(k), int) and not isinstance(rec[k], bool):
                rec[k] = str(rec[k])
        wrong = [k for k in FIELDS if k in rec and rec[k] is not None and not isinstance(rec[k], str)]
        if wrong:
            raise UserError(f"{path}: item {n}: field(s) {', '.join(wrong)} must be text, not "
                            f"{', '.join(type(rec[k]).__name__ for k in wrong)}")
        missing = [k for k in FIELDS if not str(rec.get(k) or "").strip()]
        if missing:
            raise UserError(f"{path}: item {n} lacks field(s) {', '.join(missing)}")
    return records, raw


def is_single_word(answer: str) -> bool:
    return len(answer.split()) == 1


def resolve_tasks(wanted: Sequence[str] | None, available: Sequence[str]) -> set[str] | None:
    """Task names from full names or unambiguous prefixes; None keeps every task."""
    if not wanted:
        return None
    available = sorted(set(available))
    chosen = set()
    for name in wanted:
        hits = [t for t in available if t == name] or [t for t in available if t.startswith(str(name))]
        if len(hits) != 1:
            why = "is ambiguous" if hits else "matches no task"
            raise UserError(f"data.tasks: {name!r} {why}; MC² tasks: {', '.join(available)}")
        chosen.add(hits[0])
    return chosen


def select(records: Sequence[dict], tasks: Sequence[str] | None = None, single_word: bool = True) -> list[int]:
    """Indices of the records that pass the single-word rule and the task filter."""
    keep_tasks = resolve_tasks(tasks, [r["task"] for r in records])
    return [
        i
        for i, r in enumerate(records)
        if (not single_word or (is_single_word(r["answer_vision"]) and is_single_word(r["answer_text"])))
        and (keep_tasks is None or r["task"] in keep_tasks)
    ]


def item_id(index: int, record: dict) -> str:
    # image ids repeat across items (1,940 distinct among 2,000): the file position makes ids unique
    return f"mc2-{index:04d}-{record['image_id']}"


# ------------------------------------------------------------------------------------- item fields


def consistent_context(context: str, answer_text: str, answer_vision: str) -> str | None:
    """The context with the text answer replaced by the vision answer as a whole word, or None."""
    pattern = re.compile(rf"(?<!\w){re.escape(answer_text.strip())}(?!\w)", re.IGNORECASE)
    if not pattern.search(context):
        return None
    return pattern.sub(lambda m: _same_case(m.group(0), answer_vision.strip()), context)


def _same_case(original: str, word: str) -> str:
    if original.isupper() and len(original) > 1:
        return word.upper()
    if original[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


_ANSWER_TAG = re.compile(r"</?answer>", re.IGNORECASE)


def clean_context(context: str) -> str:
    return _ANSWER_TAG.sub("", context).strip()


def synonyms_for(task: str, answers: Sequence[str]) -> dict[str, tuple[str, ...]]:
    if "count" not in task:
        return {}
    return {a: (NUMBER_SYNONYMS[a.lower()],) for a in answers if a.lower() in NUMBER_SYNONYMS}


# ------------------------------------------------------------------------------------- images


def find_image(images_dir: Path, image_id: str) -> Path | None:
    for sub in IMAGE_SUBDIRS:
        folder = images_dir / sub if sub else images_dir
        for pattern in IMAGE_NAMES:
            path = folder / pattern.format(id=image_id)
            if path.is_file():
                return path
    return None


def read_image(path: Path) -> tuple[Image.Image, bytes]:
    """The decoded RGB image and the file's bytes; decoding now, so that a corrupt file fails here."""
    raw = path.read_bytes()
    try:
        with Image.open(io.BytesIO(raw)) as im:
            return im.convert("RGB"), raw
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UserError(f"unreadable or corrupt image {path}: {exc}") from None


# ------------------------------------------------------------------------------------- the loader


def load_mc2(
    images_dir: str | Path,
    items_file: str | Path | None = None,
    tasks: Sequence[str] | None = None,
    single_word: bool = True,
    number_synonyms: bool = True,
    limit: int | None = None,
) -> tuple[list[ConflictItem], str, Mc2Report]:
    """Conflict items, a fingerprint of everything that shaped them, and the report of what was kept."""
    items_file = Path(items_file) if items_file else default_items_file()
    images_dir = Path(images_dir).expanduser()
    if not images_dir.is_dir():
        raise UserError(f"MC² images folder not found: {images_dir} (set data.images_dir=<folder of COCO-2014 images>)")
    records, raw = read_records(items_file)
    n_single = len(select(records, single_word=single_word))
    chosen = select(records, tasks, single_word)
    if limit:
        chosen = chosen[: int(limit)]

    options = dict(tasks=sorted(tasks or []), single_word=single_word, number_synonyms=number_synonyms, limit=limit)
    digest = hashlib.sha256(json.dumps({"loader": LOADER_VERSION, **options}, sort_keys=True).encode())
    digest.update(hashlib.sha256(raw).digest())

    items, missing = [], []
    decoded: dict[Path, tuple[Image.Image, bytes]] = {}  # items sharing an image share one decoded copy
    for index in chosen:
        rec = records[index]
        path = find_image(images_dir, rec["image_id"])
        if path is None:
            missing.append(index)
            continue
        if path not in decoded:
            decoded[path] = read_image(path)
        image, image_bytes = decoded[path]
        digest.update(f"{index}:{path.name}:".encode() + hashlib.sha256(image_bytes).digest())
        items.append(to_item(index, rec, image, number_synonyms))

    report = Mc2Report(
        items_file=str(items_file),
        images_dir=str(images_dir),
        n_records=len(records),
        n_single_word=n_single,
        n_selected=len(chosen),
        n_items=len(items),
        missing_images=tuple(dict.fromkeys(records[i]["image_id"] for i in missing)),
        missing_item_ids=tuple(item_id(i, records[i]) for i in missing),
        no_consistent_context=tuple(it.item_id for it in items if it.consistent_context is None),
        per_task=dict(sorted(Counter(it.task for it in items).items())),
    )
    log_report(report)
    if not items:
        raise UserError(
            f"none of the {len(chosen)} selected MC² images is in {images_dir}; "
            f"expected names like {IMAGE_NAMES[1].format(id=records[chosen[0]]['image_id'])}"
            if chosen
            else "no MC² item passes the filters (data.tasks, data.single_word)"
        )
    return items, digest.hexdigest()[:16], report


def to_item(index: int, rec: dict, image: Image.Image, number_synonyms: bool = True) -> ConflictItem:
    vision, text = rec["answer_vision"].strip(), rec["answer_text"].strip()
    context = clean_context(rec["context"])
    try:
        return ConflictItem(
            item_id=item_id(index, rec),
            task=rec["task"],
            question=rec["question"].strip(),
            answer_image=vision,
            answer_text=text,
            context=context,
            consistent_context=consistent_context(context, text, vision),
            synonyms=synonyms_for(rec["task"], (vision, text)) if number_synonyms else {},
            image=image,
        )
    except ValueError as exc:
        raise UserError(f"MC² item {index}: {exc}") from None


def log_report(report: Mc2Report) -> None:
    log.info(
        "MC²: %d records, %d pass the single-word rule, %d selected, %d items with images, %d without a consistent context",
        report.n_records, report.n_single_word, report.n_selected, report.n_items, len(report.no_consistent_context),
    )  # fmt: skip
    if report.missing_images:
        shown = ", ".join(report.missing_images[:10]) + (" ..." if len(report.missing_images) > 10 else "")
        log.warning(
            "MC²: %d of %d selected items have no image in %s and are left out (image ids: %s)",
            len(report.missing_item_ids), report.n_selected, report.images_dir, shown,
        )  # fmt: skip


def load_from_config(data) -> tuple[list[ConflictItem], str, Mc2Report]:
    """`load_mc2` with the options of the `data=mc2` config group."""
    if not data.get("images_dir"):
        raise UserError("data=mc2 needs data.images_dir=<folder of COCO-2014 images>")
    tasks = data.get("tasks")
    return load_mc2(
        images_dir=data.images_dir,
        items_file=data.get("items_file"),
        tasks=list(tasks) if tasks else None,
        single_word=bool(data.get("single_word", True)),
        number_synonyms=bool(data.get("number_synonyms", True)),
        limit=data.get("limit"),
    )
