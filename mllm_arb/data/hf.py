"""Any VQA dataset readable by Hugging Face `datasets`, turned into conflict items.

Sources (`fmt`, or `auto` to detect): a folder written by `save_to_disk`, a Parquet file or folder of
Parquet files, or an image folder with `metadata.jsonl`/`metadata.csv` (`imagefolder`). A column
mapping names the image, question and answer columns (optionally task and id).

A VQA item has one answer; a conflict needs two. The image's answer is the dataset's answer, and the
text context claims a *competitor*: another answer of the same task, drawn from that task's answer
pool with a generator seeded by (seed, item id), so an item's competitor doesn't depend on row order,
filters or limits. It never equals the true answer (case-insensitive). Items whose task pool holds no
other answer are skipped and reported. The context comes from a per-task template
(`{question}`, `{competitor}`; user templates are merged over `DEFAULT_TEMPLATES`); the same template
filled with the true answer is the consistent context.

Without a task column, questions are grouped by what their answers look like (`infer_task`): yes/no,
counts, colours, and everything else, so that a colour question gets a colour as its competitor.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import random
import string
from collections import Counter
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ..core.errors import UserError
from ..core.records import ConflictItem

log = logging.getLogger(__name__)

#: bump whenever the items built from the same dataset and options could change
LOADER_VERSION = "hf-v1"
FORMATS = ("auto", "disk", "parquet", "imagefolder")
DEFAULT_COLUMNS = {"image": "image", "question": "question", "answer": "answer", "task": None, "id": None}
DEFAULT_TEMPLATES = {
    "default": "The answer to '{question}' is {competitor}.",
    "color": "The color asked about in '{question}' is clearly {competitor}.",
    "count": "There are exactly {competitor} of them, so the answer to '{question}' is {competitor}.",
    "yes_no": "It is certain that the answer to '{question}' is {competitor}.",
}
PLACEHOLDERS = ("question", "competitor")

_COLORS = set(
    "red orange yellow green blue purple violet pink brown black white gray grey silver gold beige tan "
    "maroon navy teal turquoise cyan magenta".split()
)
_NUMBER_WORDS = set("zero one two three four five six seven eight nine ten eleven twelve".split())


@dataclass(frozen=True)
class HfReport:
    source: str
    n_rows: int
    n_items: int
    no_competitor: tuple[str, ...]  # ids of rows whose task pool has no other answer
    empty: tuple[str, ...]  # ids of rows with an empty question or answer
    per_task: dict[str, int] = field(default_factory=dict)  # items per task
    pool_sizes: dict[str, int] = field(default_factory=dict)  # distinct answers per task

    def to_dict(self) -> dict:
        out = asdict(self)
        for key in ("no_competitor", "empty"):
            out[f"n_{key}"] = len(out[key])
            out[key] = list(out[key])
        return out


# ------------------------------------------------------------------------------------- opening


@contextmanager
def _quiet_datasets():
    """Our own progress display owns the terminal; `datasets` bars would interleave with it."""
    import datasets

    was_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_on:
            datasets.enable_progress_bars()


def detect_format(path: Path) -> str:
    if path.is_file():
        if path.suffix == ".parquet":
            return "parquet"
        raise UserError(f"{path}: a file that is not Parquet; give a save_to_disk folder, Parquet, or an image folder")
    if not path.is_dir():
        raise UserError(f"dataset path not found: {path}")
    if (path / "state.json").exists() or (path / "dataset_dict.json").exists():
        return "disk"
    if any(path.rglob("*.parquet")):
        return "parquet"
    if any(path.rglob("metadata.jsonl")) or any(path.rglob("metadata.csv")):
        return "imagefolder"
    raise UserError(
        f"{path}: not a save_to_disk folder (state.json), a Parquet folder, or an image folder with "
        "metadata.jsonl/metadata.csv; set data.format explicitly if it is one of them"
    )


def open_dataset(path: str | Path, fmt: str = "auto", split: str | None = None, cache_dir: str | None = None):
    """One split of the dataset at `path` as a `datasets.Dataset`."""
    from datasets import DatasetDict, load_dataset, load_from_disk

    path = Path(path).expanduser()
    if fmt not in FORMATS:
        raise UserError(f"data.format {fmt!r} unknown; choose one of {', '.join(FORMATS)}")
    fmt = detect_format(path) if fmt == "auto" else fmt
    try:
        with _quiet_datasets():
            if fmt == "disk":
                ds = load_from_disk(str(path))
            elif fmt == "parquet":
                files = [str(path)] if path.is_file() else sorted(str(p) for p in path.rglob("*.parquet"))
                ds = load_dataset("parquet", data_files=files, cache_dir=cache_dir)
            else:
                ds = load_dataset("imagefolder", data_dir=str(path), cache_dir=cache_dir)
    except UserError:
        raise
    except Exception as exc:  # datasets raises many types for one cause: an unreadable source
        raise UserError(f"cannot read {path} as {fmt}: {_first_line(exc)}") from None
    if isinstance(ds, DatasetDict):
        ds = pick_split(ds, split, path)
    return ds, fmt


def pick_split(ds, split: str | None, path: Path):
    names = list(ds.keys())
    if split is None and len(names) == 1:
        return ds[names[0]]
    if split in names:
        return ds[split]
    want = f"split {split!r} is not in" if split else "choose a split of"
    raise UserError(f"data.split: {want} {path} (splits: {', '.join(names)})")


def check_columns(available: Sequence[str], columns: Mapping[str, str | None]) -> None:
    wrong = [f"{name!r} (columns.{role})" for role, name in columns.items() if name is not None and name not in available]
    if wrong:
        raise UserError(f"column(s) {', '.join(wrong)} not in the dataset; available columns: {', '.join(available)}")


# ------------------------------------------------------------------------------------- values


def answer_text(value) -> str:
    """The answer as text; from a list of annotator answers (VQAv2 style), the most common one."""
    if isinstance(value, Mapping):
        value = value.get("answer", "")
    if isinstance(value, (list, tuple)):
        texts = [answer_text(v) for v in value]
        texts = [t for t in texts if t]
        return Counter(texts).most_common(1)[0][0] if texts else ""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value).strip()


def infer_task(question: str, answer: str) -> str:
    a, q = answer.lower(), question.lower()
    if a in ("yes", "no"):
        return "yes_no"
    if a.isdigit() or a in _NUMBER_WORDS or q.startswith("how many"):
        return "count"
    if a in _COLORS or "color" in q or "colour" in q:
        return "color"
    return "other"


def to_image(value, base: Path, row_id: str) -> Image.Image:
    """An RGB image from what a dataset column may hold: a PIL image, {bytes, path}, or a path."""
    try:
        if isinstance(value, Image.Image):
            return value.convert("RGB")
        if isinstance(value, Mapping) and value.get("bytes"):
            with Image.open(io.BytesIO(value["bytes"])) as im:
                return im.convert("RGB")
        path = value.get("path") if isinstance(value, Mapping) else value
        if isinstance(path, str) and path:
            full = Path(path) if Path(path).is_absolute() else base / path
            with Image.open(full) as im:
                return im.convert("RGB")
    except FileNotFoundError as exc:
        raise UserError(f"dataset item {row_id!r}: image file not found: {exc.filename}") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UserError(f"dataset item {row_id!r}: unreadable or corrupt image: {exc}") from None
    raise UserError(f"dataset item {row_id!r}: the image column holds {type(value).__name__}, not an image, bytes or a path")


# ------------------------------------------------------------------------------------- conflicts


def answer_pools(tasks: Sequence[str], answers: Sequence[str]) -> dict[str, list[str]]:
    """Distinct answers per task (case-insensitive, first spelling kept), in a fixed order."""
    pools: dict[str, dict[str, str]] = {}
    for task, ans in zip(tasks, answers):
        if ans:
            pools.setdefault(task, {}).setdefault(ans.lower(), ans)
    return {t: [p[k] for k in sorted(p)] for t, p in pools.items()}


def draw_competitor(pool: Sequence[str], answer: str, seed: int, item_id: str) -> str | None:
    """A pool answer other than `answer`, the same for the same (seed, item id); None if there is none."""
    others = [a for a in pool if a.lower() != answer.lower()]
    if not others:
        return None
    key = hashlib.sha256(f"{seed}\0{item_id}".encode()).digest()
    return random.Random(int.from_bytes(key[:8], "big")).choice(others)


def check_templates(templates: Mapping[str, str]) -> None:
    if "default" not in templates:
        raise UserError("data.context_templates needs a 'default' template")
    for task, template in templates.items():
        used = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
        unknown = used - set(PLACEHOLDERS)
        if unknown:
            raise UserError(
                f"context template {task!r} uses {', '.join(sorted(unknown))}; placeholders: "
                + ", ".join("{" + p + "}" for p in PLACEHOLDERS)
            )


def fill(templates: Mapping[str, str], task: str, question: str, claim: str) -> str:
    return templates.get(task, templates["default"]).format(question=question, competitor=claim)


# ------------------------------------------------------------------------------------- the loader


def load_hf(
    path: str | Path,
    columns: Mapping[str, str | None] | None = None,
    fmt: str = "auto",
    split: str | None = None,
    templates: Mapping[str, str] | None = None,
    seed: int = 0,
    infer_tasks: bool = True,
    tasks: Sequence[str] | None = None,
    limit: int | None = None,
    cache_dir: str | None = None,
) -> tuple[list[ConflictItem], str, HfReport]:
    """Conflict items from a VQA dataset, a fingerprint, and the report of what was skipped."""
    columns = {**DEFAULT_COLUMNS, **(columns or {})}
    for role in ("image", "question", "answer"):
        if not columns.get(role):
            raise UserError(f"data.columns.{role} must name a column")
    templates = {**DEFAULT_TEMPLATES, **(templates or {})}
    check_templates(templates)
    ds, fmt = open_dataset(path, fmt, split, cache_dir)
    check_columns(ds.column_names, columns)

    text_cols = [c for c in (columns["question"], columns["answer"], columns["task"], columns["id"]) if c]
    table = ds.select_columns(list(dict.fromkeys(text_cols)))[:]
    n = ds.num_rows
    questions = [str(q or "").strip() for q in table[columns["question"]]]
    answers = [answer_text(a) for a in table[columns["answer"]]]
    ids = [str(v) for v in table[columns["id"]]] if columns["id"] else [f"row{i}" for i in range(n)]
    if len(set(ids)) != n:
        dup = next(i for i, c in Counter(ids).items() if c > 1)
        raise UserError(f"columns.id {columns['id']!r} is not unique (e.g. {dup!r} repeats)")
    if columns["task"]:
        row_tasks = [str(t).strip() or "default" for t in table[columns["task"]]]
    elif infer_tasks:
        row_tasks = [infer_task(q, a) for q, a in zip(questions, answers)]
    else:
        row_tasks = ["default"] * n
    if tasks:
        unknown = sorted(set(tasks) - set(row_tasks))
        if unknown:
            raise UserError(f"data.tasks: {', '.join(unknown)} not in the dataset; tasks: {', '.join(sorted(set(row_tasks)))}")

    pools = answer_pools(row_tasks, answers)
    base = Path(path).expanduser()
    base = base if base.is_dir() else base.parent
    images = ds.select_columns([columns["image"]])
    items, empty, no_competitor = [], [], []
    for i in range(n):
        if limit and len(items) >= int(limit):
            break
        if tasks and row_tasks[i] not in tasks:
            continue
        if not questions[i] or not answers[i]:
            empty.append(ids[i])
            continue
        competitor = draw_competitor(pools[row_tasks[i]], answers[i], seed, ids[i])
        if competitor is None:
            no_competitor.append(ids[i])
            continue
        try:
            raw_image = images[i][columns["image"]]
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise UserError(f"dataset item {ids[i]!r}: unreadable or corrupt image: {_first_line(exc)}") from None
        items.append(
            ConflictItem(
                item_id=ids[i],
                task=row_tasks[i],
                question=questions[i],
                answer_image=answers[i],
                answer_text=competitor,
                context=fill(templates, row_tasks[i], questions[i], competitor),
                consistent_context=fill(templates, row_tasks[i], questions[i], answers[i]),
                image=to_image(raw_image, base, ids[i]),
            )
        )

    report = HfReport(
        source=f"{fmt}:{path}",
        n_rows=n,
        n_items=len(items),
        no_competitor=tuple(no_competitor),
        empty=tuple(empty),
        per_task=dict(sorted(Counter(it.task for it in items).items())),
        pool_sizes={t: len(p) for t, p in sorted(pools.items())},
    )
    log_report(report)
    options = dict(
        loader=LOADER_VERSION, fmt=fmt, split=split, columns=columns, templates=templates, seed=seed,
        infer_tasks=infer_tasks, tasks=sorted(tasks or []), limit=limit, dataset=ds._fingerprint,
    )  # fmt: skip
    digest = hashlib.sha256(json.dumps(options, sort_keys=True).encode())
    digest.update(json.dumps([ids, questions, answers, row_tasks]).encode())
    return items, digest.hexdigest()[:16], report


def log_report(report: HfReport) -> None:
    log.info("%s: %d rows, %d conflict items %s", report.source, report.n_rows, report.n_items, report.per_task)
    if report.no_competitor:
        log.warning(
            "%d rows skipped: their task's answer pool has no other answer to claim (ids: %s)",
            len(report.no_competitor), ", ".join(report.no_competitor[:10]),
        )  # fmt: skip
    if report.empty:
        log.warning("%d rows skipped: empty question or answer (ids: %s)", len(report.empty), ", ".join(report.empty[:10]))


def load_from_config(data) -> tuple[list[ConflictItem], str, HfReport]:
    """`load_hf` with the options of the `data=hf` config group."""
    from omegaconf import OmegaConf

    if not data.get("path"):
        raise UserError("data=hf needs data.path=<save_to_disk folder | Parquet file or folder | image folder>")
    cfg = OmegaConf.to_container(data, resolve=True)
    tasks = cfg.get("tasks")
    return load_hf(
        path=cfg["path"],
        columns=cfg.get("columns") or {},
        fmt=cfg.get("format") or "auto",
        split=cfg.get("split"),
        templates=cfg.get("context_templates") or None,
        seed=int(cfg.get("seed") or 0),
        infer_tasks=bool(cfg.get("infer_task", True)),
        tasks=[str(t) for t in tasks] if tasks else None,
        limit=cfg.get("limit"),
        cache_dir=cfg.get("cache_dir"),
    )


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
