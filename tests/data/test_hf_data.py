"""The Hugging Face VQA loader on small datasets built here: save_to_disk, Parquet and an image folder."""

import json

import pytest
from datasets import Dataset, DatasetDict, Features, Image as HfImage, Value
from PIL import Image

from mllm_arb.core.errors import UserError
from mllm_arb.data import hf
from mllm_arb.data.sources import build_items_with_report

# (question, answer): colours, counts, yes/no, free answers; "What sport?" has a single answer,
# so its row has no competitor and must be skipped and reported.
ROWS = [
    ("What color is the car?", "red"),
    ("What color is the bus?", "Blue"),
    ("What colour is the sky?", "blue"),
    ("What color is the cat?", "black"),
    ("How many dogs are there?", "2"),
    ("How many people are there?", "three"),
    ("How many cups?", "5"),
    ("Is the light on?", "yes"),
    ("Is it raining?", "no"),
    ("Is there a dog?", "Yes"),
    ("What animal is this?", "zebra"),
    ("What is on the table?", "apple"),
    ("What is the man holding?", "umbrella"),
]


def image(k: int) -> Image.Image:
    return Image.new("RGB", (20 + k, 16), (15 * k, 100, 200 - 10 * k))


def columns(n=len(ROWS)) -> dict:
    return {
        "img": [image(k) for k in range(n)],
        "q": [q for q, _ in ROWS[:n]],
        "ans": [a for _, a in ROWS[:n]],
        "kind": ["sport" if k == 0 else "general" for k in range(n)],
    }


FEATURES = Features({"img": HfImage(), "q": Value("string"), "ans": Value("string"), "kind": Value("string")})
MAPPING = {"image": "img", "question": "q", "answer": "ans"}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("vqa")
    ds = Dataset.from_dict(columns(), features=FEATURES)
    ds.save_to_disk(str(root / "disk"))
    ds.to_parquet(str(root / "data.parquet"))
    folder = root / "folder"
    folder.mkdir()
    with open(folder / "metadata.jsonl", "w") as f:
        for k, (q, a) in enumerate(ROWS):
            image(k).save(folder / f"{k}.png")
            f.write(json.dumps({"file_name": f"{k}.png", "q": q, "ans": a}) + "\n")
    return root


def load(path, cache, **kw):
    kw.setdefault("columns", MAPPING)
    return hf.load_hf(path, cache_dir=str(cache), **kw)


@pytest.mark.parametrize("name", ["disk", "data.parquet", "folder"])
def test_every_source_gives_the_same_items(sources, tmp_path, name):
    items, fp, report = load(sources / name, tmp_path, columns={**MAPPING, "image": "image" if name == "folder" else "img"})
    ref, _, _ = load(sources / "disk", tmp_path)
    assert [(i.item_id, i.question, i.answer_image, i.answer_text, i.context) for i in items] == [
        (i.item_id, i.question, i.answer_image, i.answer_text, i.context) for i in ref
    ]
    assert [i.image.size for i in items] == [image(int(i.item_id[3:])).size for i in items]
    assert report.n_rows == report.n_items == len(items) == len(ROWS)


def test_competitors_and_report(sources, tmp_path):
    items, _, report = load(sources / "disk", tmp_path)
    # zebra/apple/umbrella form the "other" pool; yes/no and counts and colours their own pools
    assert report.pool_sizes == {"color": 3, "count": 3, "other": 3, "yes_no": 2}
    assert report.per_task == {"color": 4, "count": 3, "other": 3, "yes_no": 3}
    assert report.no_competitor == () and report.empty == ()
    by_task = {}
    for it in items:
        assert it.answer_text.lower() != it.answer_image.lower()
        by_task.setdefault(it.task, set()).add(it.answer_image.lower())
        assert it.answer_text in it.context and it.answer_image in it.consistent_context
        assert it.context == hf.DEFAULT_TEMPLATES.get(it.task, hf.DEFAULT_TEMPLATES["default"]).format(
            question=it.question, competitor=it.answer_text
        )
    for it in items:
        assert it.answer_text.lower() in by_task[it.task]  # drawn from the same task's pool
    yes_no = [it for it in items if it.task == "yes_no"]
    assert {(it.answer_image.lower(), it.answer_text.lower()) for it in yes_no} == {("yes", "no"), ("no", "yes")}


def test_task_column_and_single_answer_pools(sources, tmp_path):
    items, _, report = load(sources / "disk", tmp_path, columns={**MAPPING, "task": "kind"})
    assert report.no_competitor == ("row0",)  # the only "sport" row
    assert report.to_dict()["n_no_competitor"] == 1
    assert len(items) == len(ROWS) - 1 and {it.task for it in items} == {"general"}


def test_deterministic_by_seed(sources, tmp_path):
    def competitors(seed, **kw):
        items, fp, _ = load(sources / "disk", tmp_path, seed=seed, infer_tasks=False, **kw)
        return {it.item_id: it.answer_text for it in items}, fp

    a, fp_a = competitors(0)
    assert competitors(0) == (a, fp_a)
    b, fp_b = competitors(1)
    assert fp_a != fp_b and any(a[k] != b[k] for k in a)
    # an item's competitor doesn't depend on which other items were taken
    limited, _ = competitors(0, limit=4)
    assert limited == {k: a[k] for k in list(a)[:4]}


def test_mis_mapped_columns_list_the_available_ones(sources, tmp_path):
    with pytest.raises(UserError, match=r"'answer' \(columns.answer\).*available columns: img, q, ans, kind"):
        load(sources / "disk", tmp_path, columns={"image": "img", "question": "q"})
    with pytest.raises(UserError, match="columns.image"):
        load(sources / "data.parquet", tmp_path, columns={**MAPPING, "image": "picture"})


def test_bad_sources_and_templates(sources, tmp_path):
    with pytest.raises(UserError, match="not found"):
        load(tmp_path / "nowhere", tmp_path)
    with pytest.raises(UserError, match="not a save_to_disk folder"):
        load(tmp_path, tmp_path)
    with pytest.raises(UserError, match="placeholders"):
        load(sources / "disk", tmp_path, templates={"color": "It is {colour}."})
    splits = tmp_path / "splits"
    DatasetDict({"train": Dataset.from_dict(columns(4), features=FEATURES), "test": Dataset.from_dict(columns(4), features=FEATURES)}).save_to_disk(str(splits))
    with pytest.raises(UserError, match="splits: train, test"):
        load(splits, tmp_path)
    assert len(load(splits, tmp_path, split="test")[0]) == 4


@pytest.mark.parametrize("as_feature", [True, False])
def test_corrupt_image_names_the_item(tmp_path, as_feature):
    data = {"image": [{"bytes": b"garbage", "path": None}] * 2, "question": ["What color?"] * 2, "answer": ["red", "blue"]}
    features = Features({"image": HfImage(), "question": Value("string"), "answer": Value("string")}) if as_feature else None
    Dataset.from_dict(data, features=features).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(UserError, match="dataset item 'row0': unreadable or corrupt image"):
        hf.load_hf(tmp_path / "bad")


def test_build_items_dispatches_hf(sources, tmp_path):
    from mllm_arb.runtime.config import compose

    cfg = compose([
        "data=hf", f"data.path={sources / 'disk'}", "data.columns.image=img", "data.columns.question=q",
        "data.columns.answer=ans", "+data.context_templates.other='Surely {competitor}.'", f"data.cache_dir={tmp_path}",
    ])  # fmt: skip
    items, _, report = build_items_with_report(cfg.data)
    assert report["n_items"] == len(items) == len(ROWS)
    assert all(it.context == f"Surely {it.answer_text}." for it in items if it.task == "other")
