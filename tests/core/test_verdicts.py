"""Three-way verdicts and the findings that use them: an interval wholly on the claim's side holds, wholly
on the other side fails, straddling the threshold is undecided."""

import math

import numpy as np
import pytest

from mllm_arb.core import verdicts as V
from mllm_arb.pipeline.analyze.findings import anchor_agreement, direct_image_negligible, late_mlp_inertia, transfer_peak


@pytest.mark.parametrize("lo,hi,expected", [(0.6, 0.9, V.HOLDS), (0.1, 0.4, V.FAILS), (0.3, 0.7, V.UNDECIDED),
                                            (0.1, 0.5, V.FAILS), (math.nan, 1.0, V.UNCHECKED)])
def test_above_is_three_way(lo, hi, expected):
    assert V.above(lo, hi, 0.5) == expected
    assert V.below(-hi, -lo, -0.5) == expected  # the mirror claim


def test_within_and_combinations():
    assert V.within(-0.1, 0.2, 0.25) == V.HOLDS
    assert V.within(0.3, 0.9, 0.25) == V.FAILS
    assert V.within(0.1, 0.4, 0.25) == V.UNDECIDED
    assert V.all_of([V.HOLDS, V.UNDECIDED]) == V.UNDECIDED and V.all_of([V.UNDECIDED, V.FAILS]) == V.FAILS
    assert V.any_of([V.FAILS, V.HOLDS]) == V.HOLDS and V.any_of([V.FAILS, V.UNDECIDED]) == V.UNDECIDED
    assert V.all_of([V.UNCHECKED]) == V.UNCHECKED and V.all_of([V.UNCHECKED, V.HOLDS]) == V.HOLDS
    assert [V.holds_of(v) for v in V.VERDICTS] == [True, False, None, None]
    assert V.verdict_of({"holds": False}) == V.FAILS and V.verdict_of({"holds": None}) == V.UNCHECKED


def test_bootstrap_statistic_covers_the_value_and_narrows_with_samples():
    rng = np.random.default_rng(0)
    small, large = rng.normal(1.0, 1.0, 20), rng.normal(1.0, 1.0, 2000)
    v1, lo1, hi1 = V.bootstrap_statistic([small], lambda m: m[0], n_boot=500)
    v2, lo2, hi2 = V.bootstrap_statistic([large], lambda m: m[0], n_boot=500)
    assert lo1 < v1 < hi1 and lo2 < v2 < hi2 and (hi2 - lo2) < (hi1 - lo1) / 5
    assert v1 == pytest.approx(small.mean())
    # paired rows stay together: min(mean of column 0, -mean of column 1)
    x = np.c_[np.full(10, 2.0), np.full(10, -1.0)]
    assert V.bootstrap_statistic([x], lambda m: np.minimum(m[0][:, 0], -m[0][:, 1])) == (1.0, 1.0, 1.0)
    assert all(math.isnan(v) for v in V.bootstrap_statistic([[]], lambda m: m[0]))


def _point(center, values, key="center"):
    x = np.asarray(values, float)
    _, lo, hi = V.bootstrap_statistic([x], lambda m: m[0], n_boot=400)
    return {key: center, "mean": float(x.mean()), "ci_low": lo, "ci_high": hi, "n": len(x), "mfr_before": 1.0, "mfr_after": 0.5}


def test_a_finding_straddling_its_threshold_is_undecided():
    rng = np.random.default_rng(1)
    clear = [_point(0, rng.normal(-3.0, 0.3, 40)), _point(1, rng.normal(0.0, 0.1, 40))]
    straddles = [_point(0, rng.normal(-0.5, 1.5, 40)), _point(1, rng.normal(0.0, 0.1, 40))]
    nothing = [_point(0, np.zeros(40)), _point(1, rng.normal(0.0, 0.05, 40))]
    ko = lambda c, i: {"text_following": {"context->instruction": c}, "vision_following": {"image->instruction": i}}  # noqa: E731
    a = transfer_peak(ko(clear, clear), 0.5, 2)
    assert a["verdict"] == V.HOLDS and a["holds"] is True and a["interval"][1] < -0.5
    a = transfer_peak(ko(clear, straddles), 0.5, 2)
    assert a["verdict"] == V.UNDECIDED and a["holds"] is None
    assert a["measured"][1]["ci"][0] < -0.5 < a["measured"][1]["ci"][1]
    assert transfer_peak(ko(nothing, clear), 0.5, 2)["verdict"] == V.FAILS
    # (b): inside ±0.25, straddling it, beyond it; the whole-depth block counts too
    b = lambda pts: direct_image_negligible({"vision_following": {"image->last": pts}}, 0.25)  # noqa: E731
    assert b(nothing)["verdict"] == V.HOLDS
    assert b([_point(0, rng.normal(0.25, 0.3, 40))])["verdict"] == V.UNDECIDED
    assert b(clear)["verdict"] == V.FAILS
    whole = {"vision_following": {"image->last": {"from": [_point(0, rng.normal(-2.0, 0.2, 40), "layer")]}}}
    with_whole = direct_image_negligible({"vision_following": {"image->last": nothing}}, 0.25, whole)
    assert with_whole["verdict"] == V.FAILS and with_whole["at"]["layers"] == "every layer"


def _lens_rows(attn, mlp, follows, n_layers=3, setting="text_following", agree=None):
    rows = []
    for i, (a, m, f) in enumerate(zip(attn, mlp, follows)):
        for layer in range(n_layers):
            rows.append({"item_id": f"i{i}", "setting": setting, "layer": layer, "follows": f,
                         "last_attn_following": a, "last_attn_competitor": 0.0, "last_mlp_following": m, "last_mlp_competitor": 0.0,
                         "instruction_lens_log_odds": (1.0 if f else -1.0) * (1 if agree is None or agree[i] else -1)})
    return rows


def test_late_mlp_and_agreement_findings_are_three_way():
    rng = np.random.default_rng(2)
    n = 40
    holds = late_mlp_inertia(_lens_rows(rng.normal(1, 0.2, n), rng.normal(-1, 0.2, n), [False] * n), 3, 400, 0)
    assert holds["verdict"] == V.HOLDS and holds["n_failed"] == n and holds["interval"][0] > 0
    undecided = late_mlp_inertia(_lens_rows(rng.normal(1, 0.2, n), rng.normal(0.0, 1.0, n), [False] * n), 3, 400, 0)
    assert undecided["verdict"] == V.UNDECIDED and undecided["interval"][0] < 0 < undecided["interval"][1]
    fails = late_mlp_inertia(_lens_rows(rng.normal(1, 0.2, n), rng.normal(1, 0.2, n), [False] * n), 3, 400, 0)
    assert fails["verdict"] == V.FAILS
    assert late_mlp_inertia(_lens_rows([1.0], [1.0], [True]), 3, 100, 0)["verdict"] == V.UNCHECKED

    all_agree = _lens_rows(np.zeros(n), np.zeros(n), [True] * n)
    assert anchor_agreement(all_agree, 0.95, 3, 200, 0)["verdict"] == V.HOLDS
    half = _lens_rows(np.zeros(n), np.zeros(n), [True] * n, agree=[k % 2 == 0 for k in range(n)])
    assert anchor_agreement(half, 0.95, 3, 200, 0)["verdict"] == V.FAILS
    most = _lens_rows(np.zeros(n), np.zeros(n), [True] * n, agree=[k != 0 for k in range(n)])  # 39/40 = 0.975
    d = anchor_agreement(most, 0.95, 3, 400, 0)
    assert d["value"] == pytest.approx(0.975) and d["verdict"] == V.UNDECIDED


def test_head_claims_compare_the_top_set_with_random_sets():
    def s(mean, lo, hi):
        return {"mean": mean, "ci_low": lo, "ci_high": hi}

    def blocking(top, rnd):
        return {"top": {"change": {"mfr": top, "log_odds": top}, "relative_mfr_drop": 0.5},
                "random": {"change": {"mfr": rnd, "log_odds": rnd}, "log_odds": s(0, 0, 0)}, "before": {"log_odds": s(0, 0, 0)}}

    assert V.blocking_finding(blocking(s(-0.5, -0.6, -0.4), s(0, -0.05, 0.05)))["verdict"] == V.HOLDS
    assert V.blocking_finding(blocking(s(-0.1, -0.3, 0.1), s(0, -0.05, 0.05)))["verdict"] == V.UNDECIDED
    assert V.blocking_finding(blocking(s(0.2, 0.1, 0.3), s(0, -0.05, 0.05)))["verdict"] == V.FAILS
    assert V.blocking_finding({"top": {}}) is None

    def pooled(rec, n_failed=10):
        return {"recovery": rec, "harm": s(0, 0, 0), "n_failed": n_failed}

    assert V.recovery_finding(pooled(s(0.6, 0.4, 0.8)), {"recovery": s(0.1, 0.0, 0.2)})["verdict"] == V.HOLDS
    assert V.recovery_finding(pooled(s(0.2, 0.05, 0.4)), {"recovery": s(0.1, 0.0, 0.2)})["verdict"] == V.UNDECIDED
    assert V.recovery_finding(pooled(s(0.0, 0.0, 0.0)), {"recovery": s(0.0, 0.0, 0.0)})["verdict"] == V.FAILS
    assert V.recovery_finding(pooled(s(None, None, None), 0), {"recovery": s(0, 0, 0)})["verdict"] == V.UNCHECKED
