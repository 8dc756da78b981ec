"""The MC² loader on the real item file, with images the test draws itself (COCO isn't on these machines)."""

import logging

import pytest
from PIL import Image

from mllm_arb.core.errors import UserError
from mllm_arb.data import mc2
from mllm_arb.data.sources import build_items, build_items_with_report

pytestmark = pytest.mark.skipif(not mc2.default_items_file().is_file(), reason="MC² item file not present")

#: 23 spread over the file, 3 whose image serves several single-word items, 2 whose image serves
#: single-word and multi-word items, 2 whose items are all multi-word (drawn but never loaded)
IDS = """
000000277961 000000154213 000000417606 000000283858 000000488736 000000486388 000000468541 000000393372
000000501898 000000217303 000000264855 000000232244 000000412364 000000145318 000000197492 000000431655
000000323797 000000474609 000000409119 000000474920 000000177453 000000570952 000000180283
000000412693 000000575349 000000114398 000000440779 000000540473 000000046962 000000061171
""".split()
NAMES = ("COCO_train2014_{}.jpg", "COCO_val2014_{}.jpg", "{}.jpg", "{}.png")

# Measured on evaluate_final.json (2,000 items): the counts the assertions below pin.
N_SINGLE_WORD = 1756  # the reference study's count
N_NO_CONSISTENT = 512  # single-word items whose context never names the text answer as a word
KEPT, MISSING_ITEMS, MISSING_IMAGE_IDS, KEPT_NO_CONSISTENT = 32, 1724, 1680, 8


def colour(k: int) -> tuple[int, int, int]:
    return (10 * k % 256, 255 - 7 * k % 256, 90)


@pytest.fixture(scope="module")
def images_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    (root / "val2014").mkdir()
    for k, image_id in enumerate(IDS):
        # every naming scheme, and COCO's own split sub-folder for one image
        folder = root / "val2014" if k == 5 else root
        Image.new("RGB", (24 + k, 20), colour(k)).save(folder / NAMES[k % len(NAMES)].format(image_id))
    return root


@pytest.fixture(scope="module")
def loaded(images_dir):
    return mc2.load_mc2(images_dir)


def test_single_word_rule_on_the_full_file():
    records, _ = mc2.read_records(mc2.default_items_file())
    assert len(records) == 2000
    chosen = mc2.select(records)
    assert len(chosen) == N_SINGLE_WORD
    assert len(mc2.select(records, single_word=False)) == 2000
    derived = [
        mc2.consistent_context(mc2.clean_context(records[i]["context"]), records[i]["answer_text"].strip(), records[i]["answer_vision"].strip())
        for i in chosen
    ]
    assert sum(c is None for c in derived) == N_NO_CONSISTENT


def test_loader_counts_kept_and_missing(loaded, images_dir):
    items, fp, report = loaded
    assert report.n_records == 2000 and report.n_single_word == N_SINGLE_WORD == report.n_selected
    assert report.n_items == len(items) == KEPT
    assert len(report.missing_item_ids) == MISSING_ITEMS and KEPT + MISSING_ITEMS == N_SINGLE_WORD
    assert len(report.missing_images) == MISSING_IMAGE_IDS
    assert not set(report.missing_images) & set(IDS)
    assert len(report.no_consistent_context) == KEPT_NO_CONSISTENT
    assert sum(report.per_task.values()) == KEPT
    assert report.to_dict()["n_missing_item_ids"] == MISSING_ITEMS
    assert len({it.item_id for it in items}) == KEPT
    # each item got its own image (drawn with a size and colour unique to its id)
    for it in items:
        k = IDS.index(it.item_id.rsplit("-", 1)[1])
        assert it.image.size == (24 + k, 20) and it.image.mode == "RGB"
        assert it.image.getpixel((3, 3)) == pytest.approx(colour(k), abs=6)  # JPEG is lossy
    assert mc2.load_mc2(images_dir)[1] == fp


def test_items_are_well_formed(loaded):
    items, _, _ = loaded
    for it in items:
        assert it.answer_image == it.answer_image.strip() and len(it.answer_image.split()) == 1
        assert it.answer_text.lower() != it.answer_image.lower()
        assert "<answer>" not in it.context
        if it.consistent_context is not None:
            assert it.answer_image.lower() in it.consistent_context.lower()
    counting = [it for it in items if it.task == "counting"]
    assert counting and all(it.synonyms[it.answer_image] == (mc2.NUMBER_SYNONYMS[it.answer_image],) for it in counting)


def test_missing_images_are_logged(images_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="mllm_arb.data.mc2"):
        mc2.load_mc2(images_dir, tasks=["counting"])
    assert any("have no image" in r.getMessage() for r in caplog.records)


def test_task_filter_and_limit(images_dir):
    items, _, report = mc2.load_mc2(images_dir, tasks=["count", "sport"])
    assert {it.task for it in items} == {"counting", "sport_recognition"}
    assert report.n_selected == 250 + 183
    _, _, report = mc2.load_mc2(images_dir, limit=40)
    assert report.n_selected == 40
    with pytest.raises(UserError, match="matches no task"):
        mc2.load_mc2(images_dir, tasks=["weather"])
    with pytest.raises(UserError, match="ambiguous"):
        mc2.load_mc2(images_dir, tasks=["s"])


def test_build_items_dispatches_mc2(images_dir):
    from mllm_arb.runtime.config import compose

    cfg = compose(["data=mc2", f"data.images_dir={images_dir}", "data.tasks=[color]"])
    items, fp, report = build_items_with_report(cfg.data)
    assert {it.task for it in items} == {"color"} and report["n_items"] == len(items) == 4
    assert build_items(cfg.data)[1] == fp
    with pytest.raises(UserError, match="images_dir"):
        build_items(compose(["data=mc2"]).data)


def test_corrupt_image_is_one_clear_error(tmp_path):
    records, _ = mc2.read_records(mc2.default_items_file())
    first = records[mc2.select(records)[0]]["image_id"]
    bad = tmp_path / f"COCO_val2014_{first}.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(UserError, match=rf"corrupt image .*{bad.name}"):
        mc2.load_mc2(tmp_path, limit=3)


def test_no_images_at_all_is_an_error(tmp_path):
    with pytest.raises(UserError, match="COCO_val2014_"):
        mc2.load_mc2(tmp_path, limit=5)
    with pytest.raises(UserError, match="images folder not found"):
        mc2.load_mc2(tmp_path / "nowhere")


def test_consistent_context_rule():
    assert mc2.consistent_context("Two dogs. Then two more, and twofold.", "two", "three") == "Three dogs. Then three more, and twofold."
    assert mc2.consistent_context("A RED car.", "red", "blue") == "A BLUE car."
    assert mc2.consistent_context("The cows are grazing.", "eating", "running") is None
