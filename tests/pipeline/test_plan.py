"""`mllm-arb plan`: the passes it predicts are the passes a real run makes, counted with hooks, exactly;
on the organism stage by stage, and on the tiny model of every family for the sweeps themselves."""

import json

import pytest
import torch

from mllm_arb.core.prompt import render_all
from mllm_arb.core.records import CONFLICT_CONDITIONS
from mllm_arb.interventions.prefix import whole_passes
from mllm_arb.models.ledger import Ledger, count_calls
from mllm_arb.models.loading import load_adapter, planning_adapter
from mllm_arb.pipeline.analyze.flow import STUDY_EDGES, KnockoutPlan, knockout_rows, lens_rows
from mllm_arb.pipeline.heads.arms import Arm, baseline, random_sets, run_arms
from mllm_arb.pipeline.heads.methods import Removal, ablation_scores, prepare
from mllm_arb.pipeline.plan.plan import plan_command
from mllm_arb.runtime.config import resolved

from ..conftest import conflict_items, invoke, only_run

SMALL = ["data.n_items=12", "analysis.max_items=4", "batch_size=4", "sweep.n_random=2", "sweep.n_random_dose=2",
         "sweep.ks=[0.05]", "sweep.alphas=[2,3]", "sweep.interactions=2", "scoring.n_boot=50"]


#: a representative few (an end-to-end check of the planner, not an identity): the plain layout, tiles,
#: the model's own positions, a between-layer writer, bidirectional image attention, and a recurrent state
#: along the sequence (no suffix sweeps: Qwen3.5, planned by the same rule as Gemma 4's shared keys and values),
#: and one bidirectional block of every image token (Molmo 2)
PLANNED = ("llava", "llava_next", "qwen2_vl", "qwen3_vl", "qwen3_5", "gemma3", "molmo2")


@pytest.mark.parametrize("family", PLANNED)
def test_planned_sweeps_equal_the_passes_a_real_run_makes(family):
    """The knockout sweep, the lens, the exact head scan and blocking/amplification arms, fast and
    straightforward: every decoder-layer call (layer, rows, positions), forward pass and image."""
    real = load_adapter(f"tiny:{family}")
    planned = planning_adapter(f"tiny:{family}")
    assert next(planned.model.parameters()).device.type == "meta"  # no weights
    samples = render_all(conflict_items(3), CONFLICT_CONDITIONS)
    # families whose sweeps resume whole passes (Gemma 4, Qwen3.5) run each knockout from its first layer:
    # three edges (into the instruction, the context and the last position) keep the check at less cost
    edges = STUDY_EDGES[0:5:2] if whole_passes(real) else STUDY_EDGES
    plan = KnockoutPlan(edges=edges, window=1, n_layers=real.parts.n_layers, cumulative=True)
    arms = [Arm("headline", "random", hs, 0.0, 0.1, seed=s) for s, hs in enumerate(random_sets(real.parts.heads(), 2, 2, 0))]
    heads = real.parts.heads()  # head 1 of the first layer with heads and head 0 of the next
    arms.append(Arm("amplify", "top", (heads[1], heads[real.parts.n_heads]), 2.0, controls=True))

    def work(adapter, fast):
        knockout_rows(adapter, samples, plan, batch_size=3, fast=fast)
        lens_rows(adapter, samples, 3)
        preps = prepare(adapter, samples, 3)
        ablation_scores(adapter, preps, Removal("zero", "all"), fast=fast)
        ablation_scores(adapter, preps, Removal("zero", "last"), fast=fast)
        base = {id(p): baseline(adapter, [p])[0] for p in preps}
        run_arms(adapter, arms, preps[:1], preps[1:], base, Removal("zero", "all"), fast=fast)

    for fast in (True, False):
        planned.ledger = Ledger()
        work(planned, fast)
        with count_calls(real) as measured:
            work(real, fast)
        assert planned.ledger.layers == measured.layers and planned.ledger.forwards == measured.forwards
        assert planned.ledger.images == measured.images > 0


@pytest.fixture(scope="module")
def organism():
    return load_adapter()


def _measure(monkeypatch, adapter, stage_fn, cfg):
    """A real stage run on `adapter`, its passes counted."""
    for module in ("mllm_arb.pipeline.evaluate.stage", "mllm_arb.pipeline.analyze.stage", "mllm_arb.pipeline.heads.stage"):
        monkeypatch.setattr(f"{module}.load_model", lambda cfg, ranks=None: adapter)
    with count_calls(adapter) as measured:
        result = stage_fn(cfg)
    return measured.summary(), result


def test_the_plan_of_each_stage_is_what_the_stage_computes_on_the_organism(organism, monkeypatch, tmp_path):
    from mllm_arb.pipeline.analyze.stage import analyze_stage
    from mllm_arb.pipeline.evaluate.stage import evaluate_stage
    from mllm_arb.pipeline.heads.ablate import ablate_stage
    from mllm_arb.pipeline.heads.amplify import amplify_stage
    from mllm_arb.pipeline.heads.rank import rank_stage

    cfg = resolved([*SMALL, f"output_dir={tmp_path}"])
    for name, fn in (("evaluate", evaluate_stage), ("analyze", analyze_stage), ("rank-heads", rank_stage)):
        measured, result = _measure(monkeypatch, organism, fn, cfg)
        assert plan_command(cfg, name)["stages"][name]["fast"] == measured, name
    # ablate and amplify on the heads rank-heads chose: the head set is the run's, not the plan's tie
    heads = result.files["heads"]
    cfg = resolved([*SMALL, f"output_dir={tmp_path}", f"sweep.heads_file={heads}"])
    for name, fn in (("ablate", ablate_stage), ("amplify", amplify_stage)):
        measured, _ = _measure(monkeypatch, organism, fn, cfg)
        assert plan_command(cfg, name)["stages"][name]["fast"] == measured, name


def test_plan_prints_counts_and_writes_plan_json_without_weights(tmp_path):
    result = invoke("plan", "run", *SMALL, f"output_dir={tmp_path}", "--memory", "2")
    assert result.exit_code == 0, result.output
    plan = json.loads((only_run(tmp_path, "plan") / "plan.json").read_text())
    assert list(plan["stages"]) == ["evaluate", "analyze", "rank-heads", "ablate", "amplify"]
    assert all(s["fast"]["decoder_layer_tokens"] > 0 for s in plan["stages"].values())
    total = plan["total"]
    assert total["fast"]["decoder_layer_tokens"] < total["straightforward"]["decoder_layer_tokens"]
    assert plan["saving"]["forward_passes"] > 1 and plan["memory"]["largest_batch_that_fits"] > 0
    assert plan["assumptions"] and "plan: " in result.output and "decoder token passes" in result.output


@pytest.mark.parametrize("args, said", [
    (["generate"], "plan covers evaluate"),
    (["analyze", "analysis.saliency=true"], "attention saliency"),
    (["rank-heads", "sweep.methods=[attribution]"], "ablation) only"),
    (["evaluate", "--memory", "0"], "--memory"),
    (["analyze", "model.path=/nonexistent/model"], "does not exist"),
])
def test_plan_refuses_what_it_cannot_count_in_one_line(tmp_path, args, said):
    result = invoke("plan", *args, f"output_dir={tmp_path}")
    assert result.exit_code == 2 and said in result.output
    assert not (tmp_path / "plan").exists()


def test_a_planned_model_holds_no_weights():
    planned = planning_adapter()
    assert all(p.device.type == "meta" for p in planned.model.parameters())
    assert planned.device == torch.device("cpu") and planned.ledger is not None


# ------------------------------------------------------------------ a 7B-shaped model, for README's example
#: LLaVA-1.5-7B's published shape (llava-hf/llava-1.5-7b-hf config.json): a Vicuna-7B text model and a
#: CLIP ViT-L/14 tower at 336 px (576 image tokens)
LLAVA_7B_TEXT = dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=32, vocab_size=32064, max_position_embeddings=4096, rms_norm_eps=1e-5)
LLAVA_7B_VISION = dict(model_type="clip_vision_model", hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                       num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768)
#: README's example (docs/plan/llava-1.5-7b-shape.json, the default configuration: 1m40s to plan on 2 cores);
#: the test replans it at 16 items (docs/plan/llava-1.5-7b-shape-small.json)
EXAMPLE = ("run", "--memory", "80")
SMALL_EXAMPLE = ("data.n_items=16", "analysis.max_items=4")


def write_llava_7b_shape(folder):
    """config.json with LLaVA-1.5-7B's shape numbers and a processor at its image size (336 px, patch 14:
    576 image tokens), with the tiny LLaVA's tokenizer: text token counts are this tokenizer's, not Llama's."""
    import shutil

    from transformers import CLIPImageProcessor, LlavaConfig

    from mllm_arb.models.loading import materialise

    tiny = materialise("tiny:llava")
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(f"{tiny}/{name}", folder / name)
    image_token = json.loads(open(f"{tiny}/config.json").read())["image_token_index"]
    LlavaConfig(text_config=LLAVA_7B_TEXT, vision_config=LLAVA_7B_VISION, image_token_index=image_token,
                vision_feature_layer=-2, vision_feature_select_strategy="default").save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}).save_pretrained(folder)
    (folder / "processor_config.json").write_text(json.dumps({"processor_class": "LlavaProcessor", "patch_size": 14,
                                                              "vision_feature_select_strategy": "default",
                                                              "num_additional_image_tokens": 1}))
    return folder


def test_the_committed_7b_example_is_what_plan_says(tmp_path):
    """README's example: `mllm-arb plan run model.path=<that folder> --memory 80` on a config.json with
    LLaVA-1.5-7B's shape, its plan.json committed in docs/plan/. The counts are deterministic, so the
    committed 16-item plan must be what plan says today, and the committed full one has the same model."""
    from pathlib import Path

    folder = write_llava_7b_shape(tmp_path / "llava-1.5-7b-shape")
    result = invoke("plan", EXAMPLE[0], f"model.path={folder}", "model.name=llava-1.5-7b-shape", "model.family=llava",
                    "model.dtype=bfloat16", f"output_dir={tmp_path / 'out'}", *SMALL_EXAMPLE, *EXAMPLE[1:])
    assert result.exit_code == 0, result.output
    plan = json.loads((only_run(tmp_path / "out", "plan") / "plan.json").read_text())
    assert plan["model"]["n_layers"] == 32 and plan["model"]["n_heads"] == 32
    assert plan["stages"]["analyze"]["tokens"]["image_tokens_max"] == 576
    docs = Path(__file__).resolve().parents[2] / "docs" / "plan"
    committed = json.loads((docs / "llava-1.5-7b-shape-small.json").read_text())
    for key in ("stages", "total", "memory"):
        assert plan[key] == committed[key], key
    full = json.loads((docs / "llava-1.5-7b-shape.json").read_text())
    assert {k: v for k, v in full["model"].items() if k != "path"} == {k: v for k, v in plan["model"].items() if k != "path"}
    assert full["memory"]["weights_gib"] == plan["memory"]["weights_gib"] and full["stages"]["analyze"]["samples"] == 192


@pytest.mark.parametrize("model, impl", [(None, "sdpa"), ("tiny:llava", "sdpa"), ("tiny:gemma3", "eager"), (None, "eager")])
def test_the_memory_estimate_is_within_a_quarter_of_the_measured_cpu_peak(model, impl):
    """A plain forward pass's peak tensor memory on the CPU (torch's profiler) against plan's estimate."""
    from benchmarks.common import peak_bytes
    from mllm_arb.pipeline.plan.plan import activation_bytes_per_row

    adapter = load_adapter(model, attn_implementation=impl)
    batch = adapter.build_batch(render_all(conflict_items(4), CONFLICT_CONDITIONS[:1]))
    n_rows, n_tokens = batch.inputs["input_ids"].shape
    with torch.no_grad():
        measured = peak_bytes(lambda: adapter.last_logits(batch))
    predicted = n_rows * activation_bytes_per_row(adapter, n_tokens, 4, impl == "eager")
    assert 0.75 <= predicted / measured <= 1.25, (predicted, measured)


def test_calibrate_times_real_passes_and_predicts_each_stage(tmp_path):
    """`--calibrate` loads the model, times real forward passes and scales the counts (how close the
    prediction comes is a benchmark, benchmarks/bench_plan.py, not a timed test)."""
    result = invoke("plan", "analyze", *SMALL, f"output_dir={tmp_path}", "--calibrate")
    assert result.exit_code == 0, result.output
    t = json.loads((only_run(tmp_path, "plan") / "plan.json").read_text())["time"]
    assert t["seconds_per_layer_token"] > 0 and set(t["stages_s"]) == {"analyze"} and t["total_s"] > 0
    assert t["calibration_s"] > 0 and "predicted wall time on this machine" in result.output
