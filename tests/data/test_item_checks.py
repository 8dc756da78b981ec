"""Every item field is checked, wherever items come from: a bad line is one error naming the file and
line (or the item), duplicate ids are refused, and nothing is silently converted."""

from __future__ import annotations

import json

import pytest

from ..conftest import invoke, write_items


def _edit(path, change):
    """Rewrite the items file: `change(list of records or raw lines) -> lines (str or bytes)`."""
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    out = change(recs)
    data = b"\n".join(x if isinstance(x, bytes) else (x if isinstance(x, str) else json.dumps(x)).encode() for x in out) + b"\n"
    path.write_bytes(data)
    return path


BAD = {
    "a line that is an array": (lambda r: [r[0], [1, 2, 3]], "items.jsonl:2: an item is a JSON object"),
    "a number where text is expected": (lambda r: [r[0], {**r[1], "answer_text": 5}], "items.jsonl:2: field(s) answer_text must be text"),
    "a list as the question": (lambda r: [{**r[0], "question": ["what?"]}], "items.jsonl:1: field(s) question must be text"),
    "invalid UTF-8": (lambda r: [r[0], b'{"item_id": "\\xff\xfe"}'], "items.jsonl:2: not valid UTF-8"),
    "duplicate item ids": (lambda r: [r[0], {**r[1], "item_id": r[0]["item_id"]}], "appears 2 times"),
    "synonyms not lists": (lambda r: [{**r[0], "synonyms": {"red": "crimson"}}], "synonyms must map"),
    "an empty context": (lambda r: [{**r[0], "context": " "}], "missing field(s) context"),
    "a null answer": (lambda r: [{**r[0], "answer_image": None}], "missing field(s) answer_image"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_item_is_one_line_naming_where(case, tmp_path):
    change, message = BAD[case]
    items = _edit(write_items(tmp_path / "data"), change)
    out = tmp_path / "out"
    result = invoke("evaluate", "model=llava_tiny", "data=jsonl", f"data.path={items}", f"output_dir={out}")
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and message in " ".join(result.output.split()), result.output
    assert not out.exists()


def test_mc2_records_read_numbers_as_text_and_refuse_other_types(tmp_path):
    """An MC² file written with numeric image ids or counts loads as their text; a float, a bool or a list
    where text belongs is one clear error naming the item."""
    from mllm_arb.core.errors import UserError
    from mllm_arb.data.mc2 import read_records

    good = {"image_id": 139, "task": "counting", "question": "How many?", "answer_vision": 2, "answer_text": 3,
            "context": "There are 3 dogs."}
    path = tmp_path / "items.json"
    path.write_text(json.dumps([good]))
    (rec,), _ = read_records(path)
    assert (rec["image_id"], rec["answer_vision"], rec["answer_text"]) == ("139", "2", "3")
    for field, value in (("answer_vision", 2.5), ("question", ["q"]), ("answer_text", True), ("context", 7)):
        path.write_text(json.dumps([{**good, field: value}]))
        with pytest.raises(UserError, match=f"item 0: field\\(s\\) {field} must be text"):
            read_records(path)
    path.write_text(json.dumps([["not", "an", "object"]]))
    with pytest.raises(UserError, match="item 0 is a list"):
        read_records(path)


@pytest.mark.parametrize("damage", ["arrow file truncated", "arrow file missing", "state.json missing"])
def test_a_half_copied_saved_dataset_is_refused(tmp_path, damage):
    from mllm_arb.core.errors import UserError
    from mllm_arb.data.store import load_items, save_items

    from ..conftest import conflict_items

    folder = save_items(conflict_items(4), tmp_path / "ds", "fp")
    assert len(load_items(folder)[0]) == 4
    arrow = sorted(folder.glob("*.arrow"))[0]
    if damage == "arrow file truncated":
        arrow.write_bytes(arrow.read_bytes()[: arrow.stat().st_size // 3])
    elif damage == "arrow file missing":
        arrow.unlink()
    else:
        (folder / "state.json").unlink()
    with pytest.raises(UserError, match="damaged or incomplete|rebuild it"):
        load_items(folder)
