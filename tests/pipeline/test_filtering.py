"""The per-model filter on a tiny model: it keeps exactly the items whose two controls follow."""

import dataclasses

import pytest

from mllm_arb.core.prompt import render
from mllm_arb.core.records import Condition
from mllm_arb.models.loading import load_adapter
from mllm_arb.models.scoring import score_samples
from mllm_arb.pipeline.build_data.filtering import filter_items

from ..conftest import conflict_items, solid_image

PAIRS = [("red", "green"), ("blue", "yellow"), ("white", "black"), ("cat", "dog"), ("green", "white"), ("yellow", "red")]


@pytest.fixture(scope="module")
def adapter():
    return load_adapter("tiny:llava")


@pytest.fixture(scope="module")
def items():
    base = conflict_items(4)
    extra = [
        dataclasses.replace(base[0], item_id=f"x{k}", task="other", answer_image=a, answer_text=b, context=f"It is {b}.", image=solid_image((40 * k, 90, 160)))
        for k, (a, b) in enumerate(PAIRS)
    ]
    # the tiny tokenizer starts "zebra" and "zebu" with the same tokens: unscorable, dropped apart
    same_start = dataclasses.replace(base[1], item_id="zeb", task="other", answer_image="zebra", answer_text="zebu")
    return base + extra + [same_start]


def test_kept_are_exactly_the_items_both_controls_follow(adapter, items):
    seen = []
    kept, report = filter_items(adapter, items, batch_size=3, on_batch=seen.append)

    scorable = [it for it in items if it.item_id != "zeb"]
    samples = [render(it, c) for c in (Condition.IMAGE_ONLY, Condition.TEXT_ONLY) for it in scorable]
    follows = {(r.item_id, r.condition): r.follows for r in score_samples(adapter, samples, batch_size=5)}
    expected = [it.item_id for it in scorable if follows[(it.item_id, "image_only")] and follows[(it.item_id, "text_only")]]

    assert [it.item_id for it in kept] == expected
    assert 0 < len(kept) < len(scorable)  # this tiny model both keeps and drops: the test can tell
    assert sum(seen) == len(samples)
    assert report.unscorable == ("zeb",)
    assert set(report.failed_image_only) == {it.item_id for it in scorable if not follows[(it.item_id, "image_only")]}
    assert set(report.failed_text_only) == {it.item_id for it in scorable if not follows[(it.item_id, "text_only")]}


def test_report_counts_are_consistent(adapter, items):
    kept, report = filter_items(adapter, items)
    assert report.n_total == len(items) and report.n_kept == len(kept)
    assert report.n_kept + len(report.dropped) == report.n_total
    assert set(report.dropped) == set(report.failed_image_only) | set(report.failed_text_only) | set(report.unscorable)
    assert sum(t["total"] for t in report.per_task.values()) == len(items)
    assert sum(t["kept"] for t in report.per_task.values()) == len(kept)
    for task, counts in report.per_task.items():
        assert counts["kept"] == sum(it.task == task for it in kept)
    assert report.to_dict()["n_dropped"] == len(report.dropped)
    assert len(report.rows) == 2 * (len(items) - 1)
