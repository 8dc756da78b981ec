"""`mllm-arb validate` end to end, on the natural organism with a ground-truth file put beside a copy of
its weights: the natural organism has no anchor route, so validate must score the planted cells as
missed and the direct reads as detected, reuse runs given with --from, and refuse bad input before
writing anything. (The planted organism, which has the route: tests/organism/test_planted.py.)"""

import json

import pytest
from typer.testing import CliRunner

from mllm_arb.cli import app
from mllm_arb.core.ground_truth import GroundTruth
from mllm_arb.core.paths import CHECKPOINT_DIR

SMALL = ["data.n_items=16", "analysis.max_items=16", "sweep.n_random=2", "sweep.n_random_dose=2", "sweep.ks=[0.05]"]
TRUTH = GroundTruth(8, 8, ((0, 2), (1, 5), (2, 1), (3, 6)), ((5, 3), (6, 4)))


def invoke(*args):
    result = CliRunner().invoke(app, list(args))
    assert "Traceback" not in result.output, result.output
    return result


def the_run(root, command):
    runs = [p for p in (root / command).glob("*/*") if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


@pytest.fixture(scope="module")
def with_truth(tmp_path_factory):
    """The natural organism's files, plus a ground truth it does not have."""
    model = tmp_path_factory.mktemp("truth_model")
    for f in CHECKPOINT_DIR.iterdir():
        (model / f.name).symlink_to(f)
    TRUTH.write(model)
    return model


@pytest.fixture(scope="module")
def validated(with_truth, tmp_path_factory):
    out = tmp_path_factory.mktemp("validate")
    result = invoke("validate", f"model.path={with_truth}", "model.name=natural_with_truth", *SMALL, f"output_dir={out}")
    assert result.exit_code == 0, result.output
    return the_run(out, "validate"), result.output


def test_validate_scores_a_model_against_its_ground_truth(validated):
    run, output = validated
    v = json.loads((run / "validation.json").read_text())
    assert set(v["heads"]["methods"]) == {"ablation", "attribution", "hybrid", "verified", "dla"}
    for scores in v["heads"]["methods"].values():
        assert 0 <= scores["auroc"] <= 1 and set(scores["planted_ranks"]) == {"L0H2", "L1H5", "L2H1", "L3H6", "L5H3", "L6H4"}
    ko = v["knockout"]
    assert sum(ko["confusion"].values()) == len(ko["cells"]) == 2 * 8 * 8  # settings × edges × windows
    # the natural organism reads image and context at the last position directly: validate flags those
    # closed edges as detected (false positives), and the transfer edges as missed
    direct = [c for c in ko["cells"] if c["edge"] in ("image->last", "context->last") and c["detected"]]
    assert direct and not any(c["planted"] for c in direct)
    assert ko["false_positive_rate"] > 0
    assert v["findings"]["b_direct_image_negligible"]["holds"] is False
    assert (run / "report.html").exists() and "Validation against the ground truth" in (run / "report.html").read_text()
    assert "Head rankings against the 6 planted heads" in output


def test_runs_given_with_from_are_reused(validated, with_truth, tmp_path):
    run, _ = validated
    result = invoke("validate", f"model.path={with_truth}", "model.name=natural_with_truth", *SMALL, f"output_dir={tmp_path}",
                    "--from", str(run))
    assert result.exit_code == 0, result.output
    again = the_run(tmp_path, "validate")
    assert not any((again / c).exists() for c in ("analyze", "rank-heads", "ablate"))  # nothing recomputed
    first, second = (json.loads((r / "validation.json").read_text()) for r in (run, again))
    assert first["heads"] == second["heads"] and first["knockout"] == second["knockout"]


def test_from_refuses_a_run_of_another_model(validated, with_truth, tmp_path):
    run, _ = validated
    result = invoke("validate", f"model.path={with_truth}", "model.name=other", f"output_dir={tmp_path / 'out'}", "--from", str(run))
    assert result.exit_code == 2 and "not 'other'" in result.output
    assert not (tmp_path / "out").exists()


def test_bad_sweep_options_fail_before_any_run(with_truth, tmp_path):
    result = invoke("validate", f"model.path={with_truth}", "sweep.n_random=1", f"output_dir={tmp_path / 'out'}")
    assert result.exit_code == 2 and "sweep.n_random=1: must be at least 2" in result.output
    assert not (tmp_path / "out").exists()


def test_a_missing_planted_organism_is_one_line(tmp_path, monkeypatch):
    """A wheel or checkout without the planted organism's folder: one line naming how to train it."""
    import mllm_arb.core.paths as paths

    monkeypatch.setattr(paths, "ANCHOR_DIR", tmp_path / "no_anchor")
    result = invoke("validate", "model=organism_anchor", f"output_dir={tmp_path / 'out'}")
    assert result.exit_code == 2 and "planted organism is missing" in result.output
    assert "organism train --config anchor" in result.output
    assert not (tmp_path / "out").exists()


def test_the_natural_organism_shows_no_anchor_route(tmp_path):
    result = invoke("analyze", "data.n_items=16", "analysis.max_items=16", f"output_dir={tmp_path}")
    assert result.exit_code == 0, result.output
    findings = json.loads((the_run(tmp_path, "analyze") / "findings.json").read_text())
    assert findings["a_transfer_peak"]["holds"] is False
    assert findings["b_direct_image_negligible"]["holds"] is False
