"""Blocking and amplification sweeps: splits, random sets, the no-op paths, summaries, the CLI
commands end to end (tiny model and the organism), and their answers to bad input."""

import json
import math

import pyarrow.parquet as pq
import pytest
import torch

from mllm_arb.core.heads_file import HeadSet, attention_heads, from_ranking, read_head_set, write_head_set
from mllm_arb.core.names import POOLED
from mllm_arb.pipeline.heads.methods import Removal, prepare
from mllm_arb.pipeline.heads.arms import (
    Arm,
    amplification_arms,
    baseline,
    interaction_arms,
    blocking_arms,
    random_sets,
    run_arms,
    split_items,
    split_preps,
)
from mllm_arb.core.errors import UserError
from mllm_arb.core.paths import CHECKPOINT_DIR
from mllm_arb.core.records import ConflictItem, Condition
from mllm_arb.models.loading import load_adapter
from mllm_arb.pipeline.heads.config import SweepConfig
from mllm_arb.pipeline.heads.summaries import summarise_amplification, summarise_blocking, summarise_dose, summarise_interactions

from ..conftest import conflict_items
from ..conftest import invoke, only_run

SETTINGS = ["text_following", "vision_following"]


def _items(n, tasks=("color", "shape", "count")):
    return [ConflictItem(f"i{k}", tasks[k % len(tasks)], "q?", "a", "b", "ctx", None) for k in range(n)]


def test_split_is_disjoint_stratified_and_seeded():
    items = _items(30)
    rank_a, eval_a = split_items(items, 0.5, seed=0)
    rank_b, eval_b = split_items(items, 0.5, seed=0)
    assert [i.item_id for i in rank_a] == [i.item_id for i in rank_b]
    assert len(rank_a) == 15 and len(eval_a) == 15
    assert not {i.item_id for i in rank_a} & {i.item_id for i in eval_a}
    assert {i.item_id for i in rank_a} | {i.item_id for i in eval_a} == {i.item_id for i in items}
    for task in ("color", "shape", "count"):  # 10 items per task: 5 on each side
        assert sum(i.task == task for i in rank_a) == 5
    assert [i.item_id for i in split_items(items, 0.5, seed=1)[0]] != [i.item_id for i in rank_a]


def test_random_sets_are_seeded_and_of_the_requested_size():
    heads = attention_heads(8, 8)
    sets = random_sets(heads, 4, n_seeds=20, seed=0)
    assert sets == random_sets(heads, 4, n_seeds=20, seed=0)
    assert all(len(s) == len(set(s)) == 4 for s in sets) and len(set(sets)) > 15
    assert all(0 <= l < 8 and 0 <= h < 8 for s in sets for l, h in s)
    assert random_sets(heads, 4, n_seeds=3, seed=0) == sets[:3]  # seed s does not depend on how many
    # a model with linear-attention layers: the sets never reach them, and cover the others
    hybrid = random_sets(attention_heads(8, 8, (0, 1, 2, 4, 5, 6)), 4, n_seeds=20, seed=0)
    assert {l for s in hybrid for l, _ in s} == {3, 7}


@pytest.fixture(scope="module")
def swept():
    """Tiny llava over 4 items: setting and control batches, their baseline, and a ranking by index."""
    adapter = load_adapter("tiny:llava")
    conds = [Condition(c) for c in (*SETTINGS, "image_only")]
    from mllm_arb.core.prompt import render_all

    preps = prepare(adapter, render_all(conflict_items(4), conds), 4)
    settings, controls = split_preps(preps, [Condition(c) for c in SETTINGS])
    base = dict(zip(map(id, preps), baseline(adapter, preps)))
    ranked = [(l, h, float(-4 * l - h)) for l in range(2) for h in range(4)]
    head_set = from_ranking(ranked, 1, model=adapter.name, n_layers=2, n_heads=4, method="ablation")
    return adapter, settings, controls, base, head_set


def test_no_op_edits_leave_every_sample_as_it_was(swept):
    """The sweeps' own no-op paths: α = 1 on the selected heads, and "blocking" every head with scale 1."""
    adapter, settings, controls, base, head_set = swept
    every = tuple(head_set.ranking)
    arms = [*amplification_arms(head_set.top(2), [1.0]), Arm("headline", "top", every, 1.0, 1.0, controls=True)]
    rows = run_arms(adapter, arms, settings, controls, base, Removal("zero", "all"))
    assert rows and all(r["log_odds_after"] == r["log_odds_before"] for r in rows)
    amp = summarise_amplification(rows, SETTINGS, ["image_only"], n_boot=50)
    (at_one,) = amp["per_alpha"]
    pooled = at_one["settings"][POOLED]
    assert pooled["n_failed"] + pooled["n_followed"] == pooled["n"] == 8
    if pooled["n_failed"]:
        assert pooled["recovery"]["mean"] == 0.0
    if pooled["n_followed"]:
        assert pooled["harm"]["mean"] == 0.0
    assert at_one["controls"]["image_only"]["change"] == 0.0


def test_blocking_rows_and_summaries(swept):
    adapter, settings, controls, base, head_set = swept
    cfg = SweepConfig.from_cfg(_sweep_cfg(n_random=3, n_random_dose=2, ks=[0.1, 0.5]))
    arms = blocking_arms(head_set, 1, cfg, seed=0)
    assert [a.set for a in arms if a.study == "headline"] == ["top", "bottom", "random", "random", "random"]
    assert {a.heads for a in arms if a.set == "top"} == {((0, 0),), ((0, 0), (0, 1), (0, 2), (0, 3))}
    rows = run_arms(adapter, arms, settings, controls, base, Removal("zero", "all"))
    assert {r["condition"] for r in rows if r["set"] == "random"} == set(SETTINGS)  # random sets: settings only
    blocking = summarise_blocking(rows, SETTINGS, ["image_only"], n_boot=50)
    assert list(blocking) == [POOLED, *SETTINGS, "image_only"]
    pooled = blocking[POOLED]
    assert pooled["n"] == 8 and pooled["random"]["mfr"]["n_seeds"] == 3 and "separation" in pooled
    assert blocking["image_only"]["kind"] == "control" and "random" not in blocking["image_only"]
    dose = summarise_dose(rows, SETTINGS, n_boot=50)
    assert [p["k"] for p in dose[POOLED]] == [0.1, 0.5] and [p["n_heads"] for p in dose[POOLED]] == [1, 4]


@pytest.mark.parametrize("scale", [0.0, 4.0])
def test_each_head_alone_and_left_out(swept, scale):
    """With two heads, "without one" is "the other alone"; the marginal effect is the whole set minus the set
    without the head, sample by sample; a single head has no interactions."""
    adapter, settings, controls, base, head_set = swept
    pair = ((0, 0), (1, 2))
    arms = [Arm("headline" if scale == 0 else "amplify", "top", pair, scale), *interaction_arms(pair, scale, limit=16)]
    assert [(a.set, a.about, a.heads) for a in arms[1:]] == [("alone", (0, 0), ((0, 0),)), ("without", (0, 0), ((1, 2),)),
                                                             ("alone", (1, 2), ((1, 2),)), ("without", (1, 2), ((0, 0),))]
    assert interaction_arms(pair, scale, limit=1)[-1].about == (0, 0) and interaction_arms(pair[:1], scale, 16) == []
    rows = run_arms(adapter, arms, settings, [], base, Removal("zero", "all"))
    full = [r for r in rows if r["study"] != "interaction"]
    out = summarise_interactions(rows, full, SETTINGS, amplify=scale != 0, n_boot=50)
    assert list(out) == [POOLED, *SETTINGS]
    first, second = out[POOLED]
    assert first["head"] == [0, 0] and second["head"] == [1, 2]
    assert first["without"] == second["alone"] and second["without"] == first["alone"]
    by = lambda set_, about: {(r["condition"], r["item_id"]): r for r in rows if r["set"] == set_ and r.get("about") == about}  # noqa: E731
    whole, without = by("top", None), by("without", "0.0")
    diffs = [whole[k]["log_odds_after"] - without[k]["log_odds_after"] for k in whole]
    assert first["marginal"]["log_odds"]["mean"] == pytest.approx(sum(diffs) / len(diffs))
    assert first["marginal"]["log_odds"]["n"] == 8
    if scale:  # amplification: the marginal following counts failed samples only; summarised per α
        assert first["marginal"]["mfr"]["n"] == sum(not r["follows_before"] for r in whole.values())
        (at,) = summarise_amplification(rows, SETTINGS, [], n_boot=50)["per_alpha"]
        assert at["alpha"] == scale and at["interactions"] == out


def _sweep_cfg(**over):
    from omegaconf import OmegaConf

    from mllm_arb.runtime.config import compose

    cfg = compose([])
    return OmegaConf.merge(cfg.sweep, over)


@pytest.mark.parametrize("over,message", [
    ({"top_k": 0}, "sweep.top_k=0.0: must be greater than 0"),
    ({"top_k": 1.5}, "sweep.top_k=1.5: must be at most 1"),
    ({"alphas": [2, 0]}, "sweep.alphas=0.0: must be greater than 0"),
    ({"alphas": [-1]}, "sweep.alphas=-1.0"),
    ({"ks": [0.05, 2]}, "sweep.ks=2.0: must be at most 1"),
    ({"rank_fraction": 1.0}, "rank_fraction"),
    ({"rank_method": "magic"}, "magic"),
    ({"settings": ["text_folowing"]}, "text_folowing"),
    ({"ablation": "half"}, "half"),
    ({"positions": "first"}, "first"),
    ({"top_n": 0}, "sweep.top_n=0: must be at least 1"),
])
def test_sweep_config_rejects_bad_values(over, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("[", r"\[")):
        SweepConfig.from_cfg(_sweep_cfg(**over))


# ------------------------------------------------------------------------------------ CLI
SMALL = ["model=llava_tiny", "data.n_items=8", "sweep.min_split_items=2", "sweep.n_random=3", "sweep.n_random_dose=2",
         "sweep.ks=[0.1,0.25]", "sweep.alphas=[1,4]", "scoring.n_boot=50", "batch_size=8"]


def test_rank_heads_compares_methods_only_when_asked():
    """The fast ranking stays fast: `--method attribution` computes attribution alone; `--compare` adds every method."""
    import yaml

    def methods(*args):
        result = invoke("rank-heads", *args, "model=llava_tiny", "--cfg")
        assert result.exit_code == 0, result.output
        return yaml.safe_load(result.output)["sweep"]["methods"]

    assert methods("--method", "attribution") == []
    assert methods("--compare") == ["ablation", "attribution", "hybrid", "verified", "dla"]
    assert SweepConfig.from_cfg(_sweep_cfg(methods=[], rank_method="attribution")).methods == ("attribution",)


def test_rank_ablate_amplify_end_to_end_on_a_tiny_model(tmp_path):
    out = tmp_path / "out"
    result = invoke("rank-heads", *SMALL, f"output_dir={out}")
    assert result.exit_code == 0, result.output
    ranked = only_run(out, "rank-heads")
    res = json.loads((ranked / "results.json").read_text())
    assert set(res["scores"]) == {"ablation"}  # the ranking method alone unless --compare
    assert set(res["scores"]["ablation"]) == {"text_following", "vision_following", "pooled"}
    assert len(res["scores"]["ablation"]["pooled"]) == 2 and len(res["scores"]["ablation"]["pooled"][0]) == 4
    assert not res.get("agreement")
    head_set = read_head_set(ranked)
    assert head_set.method == "ablation" and len(head_set.heads) == 1 and len(head_set.ranking) == 8
    assert len(head_set.rank_items) == 4
    rows = pq.read_table(ranked / "scores.parquet").to_pylist()
    assert len(rows) == 8 * 8  # ranking samples (4 items × 2 settings) × heads
    assert (ranked / "plots" / "scores_ablation.png").stat().st_size > 5000
    assert not (ranked / "plots" / "method_agreement.png").exists()

    result = invoke("ablate", "--from", str(ranked), "--top-n", "2", *SMALL, f"output_dir={out}")
    assert result.exit_code == 0, result.output
    ablated = only_run(out, "ablate")
    res = json.loads((ablated / "results.json").read_text())
    assert res["n_selected"] == 2 and res["heads"] == [list(h) for h in head_set.ranking[:2]]
    assert set(res["blocking"]) == {POOLED, *SETTINGS, "image_only", "text_only", "consistent"}
    assert res["blocking"][POOLED]["random"]["mfr"]["n_seeds"] == 3
    eval_ids = {r["item_id"] for r in pq.read_table(ablated / "samples.parquet").to_pylist()}
    assert eval_ids and not eval_ids & set(head_set.rank_items)  # effects only on the evaluation split
    assert (ablated / "plots" / "blocking.png").exists() and (ablated / "plots" / "dose_response.png").exists()
    assert "Blocking the top 2 heads" in result.output
    assert [e["head"] for e in res["interactions"][POOLED]] == res["heads"]  # each head alone and left out
    assert "alone and left out" in result.output
    finding = json.loads((ablated / "findings.json").read_text())["e_blocking_beats_random"]
    assert finding["verdict"] in ("holds", "does not hold", "undecided") and finding["interval_of"] == "top_mfr_change"

    result = invoke("amplify", "--heads", str(ranked / "heads.json"), *SMALL, f"output_dir={out}")
    assert result.exit_code == 0, result.output
    amp = json.loads((only_run(out, "amplify") / "results.json").read_text())["amplification"]
    assert [e["alpha"] for e in amp["per_alpha"]] == [1.0, 4.0]
    at_one = amp["per_alpha"][0]["settings"][POOLED]
    assert at_one["recovery"]["mean"] in (0.0, None) and at_one["harm"]["mean"] in (0.0, None)
    assert amp["random_at_best_alpha"][POOLED]["recovery"]["n_seeds"] in (0, 3)
    assert all("interactions" not in e for e in amp["per_alpha"])  # one head: nothing to interact with
    assert (only_run(out, "amplify") / "plots" / "amplification.png").exists()


def test_a_hybrid_decoder_ranks_and_edits_only_the_heads_of_its_attention_layers(tmp_path):
    """Qwen3.5's linear-attention layers (0 and 2 of the tiny one) have no attention heads: the ranking,
    the selected and the random sets, the arms and the rows cover layers 1 and 3 only; results.json and
    heads.json say which layers were left out, and a heads file naming a head there is one line, exit 2."""
    out = tmp_path / "out"
    small = [a for a in SMALL if not a.startswith("model=")] + ["model=qwen3_5_tiny"]
    result = invoke("ablate", "--top-n", "2", *small, "sweep.rank_method=attribution", f"output_dir={out}")
    assert result.exit_code == 0, result.output
    ablated = only_run(out, "ablate")
    res = json.loads((ablated / "results.json").read_text())
    assert res["layers_without_heads"] == [0, 2] and "linear attention" in res["layers_without_heads_note"]
    assert res["fraction_selected"] == 2 / 8
    head_set = read_head_set(ablated)
    assert head_set.layers_without_heads == (0, 2) and head_set.total == 8
    assert sorted(head_set.ranking) == [(l, h) for l in (1, 3) for h in range(4)]
    rows = pq.read_table(ablated / "samples.parquet").to_pylist()
    edited = {h for r in rows for h in (r["heads"] or "").split(";") if h}
    assert {r["set"] for r in rows} >= {"top", "random"} and {int(h.split(".")[0]) for h in edited} == {1, 3}
    scores = pq.read_table(ablated / "scores.parquet").to_pylist()
    assert {r["layer"] for r in scores} == {1, 3}
    # every ranking method, their agreement, the CLI's table and the report's heat maps with those NaN layers
    result = invoke("rank-heads", "--compare", *small, f"output_dir={out}")
    assert result.exit_code == 0, result.output
    assert "selected: 1 of 8 heads" in result.output
    ranked = only_run(out, "rank-heads")
    res = json.loads((ranked / "results.json").read_text())
    for method, matrices in res["scores"].items():
        pooled = matrices["pooled"]
        assert all(math.isnan(v) for l in (0, 2) for v in pooled[l]) and not any(math.isnan(v) for l in (1, 3) for v in pooled[l]), method
        assert {(e["layer"]) for e in res["top"][method]} <= {1, 3}
    assert set(res["scores"]) == {"ablation", "attribution", "hybrid", "verified", "dla"}
    assert all(-1 <= a["spearman"] <= 1 for a in res["agreement"].values())
    result = invoke("report", str(ranked))
    assert result.exit_code == 0, result.output
    page = (ranked / "report.html").read_text()
    assert "8 attention heads (2 attention layers × 4 heads; layers 0, 2 mix by linear attention and have none)" in page
    # a knockout that linear-attention layers cannot make exactly (a group cut from itself): one line, exit 2,
    # before the stage starts
    result = invoke("analyze", *small, "analysis.edges=[context:context]", f"output_dir={out}")
    assert result.exit_code == 2 and "context->context: layers [0, 2] mix by linear attention" in result.output
    assert not (out / "analyze").exists()
    bad = HeadSet(model="qwen3_5_tiny", n_layers=4, n_heads=4, heads=((2, 1),))
    result = invoke("amplify", "--heads", str(write_head_set(tmp_path / "heads.json", bad)), *small, f"output_dir={out}")
    assert result.exit_code == 2 and "layer 2 of this model (qwen3_5_tiny) mixes by linear attention" in result.output
    assert len(list(out.glob("amplify/*/*"))) == 0


def test_run_chains_every_stage_into_one_parent(tmp_path):
    out = tmp_path / "out"
    result = invoke("run", *SMALL, "sweep.methods=[attribution]", "sweep.rank_method=attribution",
                    "analysis.lens=false", "analysis.edges=[image:last]", "conditions=[text_following,image_only]", f"output_dir={out}")
    assert result.exit_code == 0, result.output
    parent = only_run(out, "run")
    manifest = json.loads((parent / "manifest.json").read_text())
    assert list(manifest["stages"]) == ["build-data", "evaluate", "analyze", "rank-heads", "ablate", "amplify"]
    for rel in manifest["stages"].values():
        assert (parent / rel / "results.json").exists()
    summary = json.loads((parent / "results.json").read_text())
    assert {"mfr", "heads", "blocking", "amplification"} <= set(summary)
    ablate_cfg = (parent / manifest["stages"]["ablate"] / "config.yaml").read_text()
    assert "source: disk" in ablate_cfg and "heads_file:" in ablate_cfg and "rank-heads" in ablate_cfg
    page = (parent / "report.html").read_text()  # the study's page comes last, every stage in it
    assert "data-absent" not in page and "Blocking" in page and "Amplification" in page
    assert "report" in json.loads((parent / "manifest.json").read_text())["timings_s"]


def _heads_for_other_model(tmp_path):
    hs = HeadSet(model="qwen2_vl_tiny", n_layers=2, n_heads=4, heads=((0, 1),))
    return str(write_head_set(tmp_path / "heads.json", hs))


BAD = {
    "top-k zero": (lambda p: ["--top-k", "0"], "sweep.top_k=0.0: must be greater than 0"),
    "top-k above one": (lambda p: ["--top-k", "1.5"], "sweep.top_k=1.5: must be at most 1"),
    "alpha zero": (lambda p: ["--alpha", "0"], "sweep.alphas=0.0: must be greater than 0"),
    "alpha negative": (lambda p: ["sweep.alphas=[2,-1]"], "sweep.alphas=-1.0: must be greater than 0"),
    "heads file of another model": (lambda p: ["--heads", _heads_for_other_model(p)], "ranked on model 'qwen2_vl_tiny'"),
    "missing heads file": (lambda p: ["--heads", str(p / "none.json")], "does not exist"),
    "from a run without heads": (lambda p: ["--from", str(p)], "no heads.json"),
    "split too small": (lambda p: ["data.n_items=5"], "the ranking split holds 2 item(s)"),
    "more heads than the model has": (lambda p: ["--top-n", "9"], "the model has 8 heads"),
    "no heads left for random sets": (lambda p: ["--top-k", "1"], "no other heads"),
    "top-k and top-n": (lambda p: ["--top-k", "0.1", "--top-n", "2"], "not both"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_gets_one_clear_line_and_writes_nothing(case, tmp_path):
    make_args, expected = BAD[case]
    out = tmp_path / "out"
    result = invoke("amplify", "model=llava_tiny", "data.n_items=8", *make_args(tmp_path), f"output_dir={out}")
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "error" in lines[0] and expected in lines[0], result.output
    assert not out.exists()


def test_ablate_rejects_bad_input_before_writing_too(tmp_path):
    out = tmp_path / "out"
    result = invoke("ablate", "--top-k", "-0.2", "model=llava_tiny", f"output_dir={out}")
    assert result.exit_code == 2 and "sweep.top_k=-0.2" in result.output and not out.exists()
    result = invoke("run", "model=llava_tiny", "sweep.alphas=[0]", f"output_dir={out}")
    assert result.exit_code == 2 and "sweep.alphas=0.0" in result.output and not out.exists()


# ------------------------------------------------------------------------------------ the organism
@pytest.mark.skipif(not (CHECKPOINT_DIR / "config.json").exists(),
                    reason="the organism checkpoint (mllm_arb/organism/checkpoint/) is not trained yet")
def test_organism_top_heads_beat_random_heads(tmp_path):
    """Ground truth for the ranking: on a small held-out sample of the organism, blocking its top 5% of
    heads (ranked by attribution patching, the fast method) lowers the following log-odds by clearly
    more than random sets of the same size do."""
    out = tmp_path / "out"
    common = ["data.n_items=48", "sweep.n_random=8", "sweep.controls=[image_only]", "scoring.n_boot=200", f"output_dir={out}"]
    result = invoke("ablate", "sweep.rank_method=attribution", "sweep.ks=[0.05]", "sweep.n_random_dose=2", *common)
    assert result.exit_code == 0, result.output
    res = json.loads((only_run(out, "ablate") / "results.json").read_text())
    pooled = res["blocking"][POOLED]
    top, random = pooled["top"]["change"]["log_odds"], pooled["random"]["change"]["log_odds"]
    assert pooled["separation"]["log_odds"]["separated"], pooled["separation"]  # intervals apart
    assert top["mean"] < -1.0 and top["mean"] < 3 * random["mean"], (top, random)
    # a random set may happen to hold one of the key heads, but few do
    assert pooled["separation"]["log_odds"]["random_at_least_as_low"] <= 0.25
    assert pooled["top"]["mfr"]["mean"] < pooled["before"]["mfr"]["mean"]


def test_the_schema_allows_exactly_the_sweeps_own_choices():
    """runtime/schema.py cannot import the head stages: its lists of choices must equal theirs."""
    import dataclasses

    from mllm_arb.pipeline.heads.methods import ABLATION_MODES, POSITIONS
    from mllm_arb.runtime.schema import SweepSchema

    choices = {f.name: f.metadata.get("choices") for f in dataclasses.fields(SweepSchema)}
    assert set(choices["ablation"]) == set(ABLATION_MODES) and set(choices["positions"]) == set(POSITIONS)
