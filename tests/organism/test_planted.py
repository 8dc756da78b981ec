"""The planted organism (`model=organism_anchor`) is a positive control: `validate` on it, with a small
item count, must find the route it was trained to use. The natural organism's side (it has no anchor
route, so (a) and (b) do not hold) is tests/pipeline/test_validate.py."""

import json

import pytest

from mllm_arb.core.ground_truth import load
from mllm_arb.core.paths import ANCHOR_DIR

from ..conftest import invoke, only_run

SMALL = ["model=organism_anchor", "data.n_items=24", "analysis.max_items=24", "sweep.n_random=2", "sweep.n_random_dose=2",
         "sweep.ks=[0.05]", "sweep.alphas=[2]", "scoring.n_boot=200"]


@pytest.fixture(scope="module")
def validated(tmp_path_factory):
    out = tmp_path_factory.mktemp("planted")
    result = invoke("validate", *SMALL, f"output_dir={out}")
    assert result.exit_code == 0, result.output
    run = only_run(out, "validate")
    return json.loads((run / "validation.json").read_text()), result.output


def test_the_planted_organism_ships_its_ground_truth():
    truth = load(ANCHOR_DIR)
    assert truth is not None and len(truth.planted_heads) == 7 and truth.relay_heads == ((0, 3),)
    assert (ANCHOR_DIR / "MODEL_CARD.md").is_file() and (ANCHOR_DIR / "plant_check.json").is_file()
    plant = json.loads((ANCHOR_DIR / "plant_check.json").read_text())
    assert plant["closed_worst"]["all_below_bar"]  # the card's own check, on 200 held-out items


def test_the_shipped_plant_check_finds_no_backup_beside_the_route():
    """The card's plant check (200 held-out items): under every planted cut the plain model equals the
    route-restricted one (no closed edge carries the answer once the route is cut), and once an edge that
    carries the instruction is cut, the answer no longer depends on the instruction."""
    plant = json.loads((ANCHOR_DIR / "plant_check.json").read_text())
    for edges in plant["planted"].values():
        for v in edges.values():
            assert v["mfr_after"] < v["mfr_before"] - 0.09  # every planted cut costs following
            assert abs(v["mfr_after"] - v["restricted_mfr_after"]) <= 0.02
    for v in plant["instruction_effect"].values():
        assert abs(v["cut"]["mean_image_log_odds_gap"]) < 1.0 < v["intact"]["mean_image_log_odds_gap"]


def test_findings_a_and_b_hold_on_the_planted_organism(validated):
    findings = validated[0]["findings"]
    assert findings["a_transfer_peak"]["holds"] is True
    assert findings["b_direct_image_negligible"]["holds"] is True


def test_the_planted_edges_peak_inside_their_layers(validated):
    peaks = validated[0]["knockout"]["peaks"]
    transfer = [p for p in peaks if p["edge"] in ("image->instruction", "context->instruction")]
    assert transfer and all(p["inside"] and p["peak_mean"] < -1 for p in transfer)


def test_the_exact_ranking_recovers_the_planted_heads_best(validated):
    """Exact ablation ranks the planted heads far above the rest and beats the estimates (which miss the
    transfer heads): its top 5% (4 heads) holds at least 3 planted heads."""
    heads = validated[0]["heads"]
    assert heads["n_top"] == 4
    exact = heads["methods"]["ablation"]
    assert exact["top_fraction"]["hits"] >= 3 and exact["auroc"] >= 0.8  # L2H1, a transfer head, barely matters
    assert all(exact["auroc"] > other["auroc"] for m, other in heads["methods"].items() if m != "ablation")
    assert heads["best_method"] == "ablation"


def test_forbidden_edges_knocked_out_move_the_answer_by_less_than_the_bar(validated):
    cells = [c for c in validated[0]["knockout"]["cells"]
             if not c["planted"] and c["edge"] in ("image->last", "context->last", "image->context")]
    assert cells and max(abs(c["mean"]) for c in cells) < 0.1
    assert not any(c["detected"] for c in cells)


def test_the_shipped_planted_organism_was_trained_by_its_config():
    """conf/organism/anchor.yaml made the shipped weights (retraining it is deterministic)."""
    from dataclasses import asdict

    from mllm_arb.organism.__main__ import organism_config
    from mllm_arb.organism.train import TrainConfig

    composed = asdict(TrainConfig.from_any(organism_config("anchor")))
    shipped = asdict(TrainConfig.from_any(json.loads((ANCHOR_DIR / "training_log.json").read_text())["config"]))
    where = {"output_dir", "overwrite", "progress", "max_minutes"}  # where and how, not what
    assert {k: v for k, v in composed.items() if k not in where} == {k: v for k, v in shipped.items() if k not in where}


def test_validate_counts_the_relay_head_among_the_planted_ones(validated):
    v, output = validated
    assert "Head rankings against the 7 planted heads" in output
    for scores in v["heads"]["methods"].values():
        assert "L0H3" in scores["planted_ranks"] and scores["top_planted_count"]["n"] == 7
