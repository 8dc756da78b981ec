"""The ground-truth file, the planted route's masks, per-head knockout, and validate's refusals."""

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from mllm_arb.cli import app
from mllm_arb.core.errors import UserError
from mllm_arb.core.ground_truth import GroundTruth, load
from mllm_arb.core.prompt import render
from mllm_arb.core.records import Condition
from mllm_arb.data.synthetic import SyntheticConfig, generate_items
from mllm_arb.interventions.knockout import knock_out, knock_out_rows, knockout_mask
from mllm_arb.interventions.plant import forbidden_mass, restrict_to_route, route_blocks
from mllm_arb.pipeline.validate import score

TRUTH = GroundTruth(8, 8, ((0, 2), (1, 5), (2, 1), (3, 6)), ((5, 3), (6, 4)))
RELAYED = GroundTruth(8, 8, TRUTH.transfer_heads, TRUTH.arbitration_heads, ((0, 3),))


@pytest.fixture(scope="module")
def organism():
    from mllm_arb.models.loading import load_adapter

    return load_adapter("organism")


def batch_of(adapter, condition, n=3):
    items = generate_items(SyntheticConfig(n_items=n, seed=1007))
    return adapter.build_batch([render(it, condition) for it in items])


# ------------------------------------------------------------------------------ the file
def test_file_round_trip(tmp_path):
    TRUTH.write(tmp_path)
    assert load(tmp_path) == TRUTH
    data = json.loads((tmp_path / "ground_truth.json").read_text())
    assert {e["edge"] for e in data["planted_edges"]} == {"image->instruction", "context->instruction", "instruction->last"}
    assert load(tmp_path / "elsewhere") is None


def test_relay_heads_round_trip_and_are_optional(tmp_path):
    RELAYED.write(tmp_path)
    assert load(tmp_path) == RELAYED and RELAYED.planted_heads == (*TRUTH.transfer_heads, (0, 3), *TRUTH.arbitration_heads)
    relay = [e for e in json.loads((tmp_path / "ground_truth.json").read_text())["planted_edges"] if e["edge"] == "instruction->instruction"]
    assert relay == [{"edge": "instruction->instruction", "layers": [0], "heads": [[0, 3]], "governs": "both"}]
    data = RELAYED.to_dict()
    data.pop("relay_heads")  # a file written before the relay rule
    (tmp_path / "ground_truth.json").write_text(json.dumps(data))
    assert load(tmp_path) == TRUTH and TRUTH.relay_layers == ()


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.update(transfer_heads=[[0, 9]]), "L0H9"),
        (lambda d: d.update(transfer_heads=[[6, 1]]), "L6H1"),  # a transfer head in the second half
        (lambda d: d.update(arbitration_heads=[[1, 1]]), "L1H1"),
        (lambda d: d.update(arbitration_heads=[]), "no arbitration heads"),
        (lambda d: d.update(n_layers="8"), "integer"),
        (lambda d: d.pop("transfer_heads"), "missing field"),
        (lambda d: d.update(format="something else"), "not an mllm-arb ground-truth file"),
        (lambda d: d.update(transfer_heads=[[0, 2], [0, 2]]), "named twice"),
        (lambda d: d.update(relay_heads=[[5, 0]]), "relay head L5H0"),  # relays live in the first half
        (lambda d: d.update(relay_heads=[[0, 2]]), "also a transfer head"),
        (lambda d: d.update(relay_heads="L0H3"), "relay_heads must be a list"),
    ],
)
def test_bad_files_are_one_line_errors(tmp_path, edit, message):
    data = TRUTH.to_dict()
    edit(data)
    (tmp_path / "ground_truth.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match=message) as exc:
        load(tmp_path)
    assert "\n" not in str(exc.value)


def test_unreadable_file_and_wrong_model(tmp_path):
    (tmp_path / "ground_truth.json").write_text("{not json")
    with pytest.raises(UserError, match="unreadable"):
        load(tmp_path)
    with pytest.raises(UserError, match="12 × 8"):
        TRUTH.check_model(12, 8)


# ------------------------------------------------------------------------------ masks
def test_route_blocks_follow_the_rules(organism):
    batch = batch_of(organism, Condition.VISION_FOLLOWING)
    blocks = route_blocks(batch, TRUTH)
    g = {name: batch.group_mask(name) for name in ("image", "context", "instruction", "question", "last")}
    row = 0
    last = batch.last[row]
    inst = g["instruction"][row].nonzero().flatten()
    img = g["image"][row].nonzero().flatten()
    q = g["question"][row].nonzero().flatten()
    for layer in range(8):
        for head in range(8):
            b = blocks[layer][row, head]
            assert b[last][img].all() and b[q][:, img].all()  # no bypass, ever
            reads_instruction = not b[last][inst].any()
            assert reads_instruction == ((layer, head) in TRUTH.arbitration_heads)
            transfers = not b[inst][:, img].any()
            assert transfers == ((layer, head) in TRUTH.transfer_heads)
            assert not b.diagonal().any()
    # the relay rule: in the first half, instruction positions read each other only through the relay and
    # transfer heads (each still reads itself); the second half leaves the instruction to itself
    relayed = route_blocks(batch, RELAYED)
    off_diagonal = ~torch.eye(len(inst), dtype=torch.bool)
    for layer in range(8):
        for head in range(8):
            within = relayed[layer][row, head][inst][:, inst]
            closed = layer < 4 and (layer, head) not in RELAYED.relay_heads + RELAYED.transfer_heads
            assert within[off_diagonal].all() if closed else not within.any()
            assert torch.equal(relayed[layer][row, head] & ~blocks[layer][row, head], relayed[layer][row, head] & _pairs_of(inst, batch))
    # no instruction, no route: nothing is blocked
    plain = batch_of(organism, Condition.IMAGE_ONLY)
    assert not any(b.any() for b in route_blocks(plain, TRUTH).values())


def _pairs_of(positions, batch):
    """`[T, T]` True where a query among `positions` reads a key among them."""
    mask = torch.zeros(batch.inputs["input_ids"].shape[1], dtype=torch.bool)
    mask[positions] = True
    return mask[:, None] & mask[None, :]


def test_per_head_knockout_of_every_head_equals_the_group_knockout(organism):
    batch = batch_of(organism, Condition.TEXT_FOLLOWING)
    edges = [("image", "last"), ("instruction", "last")]
    block = knockout_mask(batch, edges)
    with torch.no_grad(), knock_out(organism, batch, edges, [0, 1]):
        grouped = organism.last_logits(batch)
    per_head = block[:, None].repeat(1, organism.parts.n_heads, 1, 1)
    with torch.no_grad(), knock_out_rows(organism, per_head, [{0, 1}] * len(batch)):
        headed = organism.last_logits(batch)
    assert torch.equal(grouped, headed)
    # one head's edge only: between no knockout and the whole layer's
    one = torch.zeros_like(per_head)
    one[:, 3] = block
    with torch.no_grad(), knock_out_rows(organism, one, [{0}] * len(batch)):
        single = organism.last_logits(batch)
    plain = organism.last_logits(batch).detach()
    assert not torch.equal(single, plain)
    with pytest.raises(UserError, match="7 heads"):
        with knock_out_rows(organism, per_head[:, :7], [{0}] * len(batch)):
            pass


def test_mass_recording_leaves_the_forward_bit_identical(organism):
    batch = batch_of(organism, Condition.TEXT_FOLLOWING, n=4)
    blocks = route_blocks(batch, TRUTH)
    with torch.no_grad():
        plain = organism.last_logits(batch)
        with forbidden_mass(organism.model, blocks) as record:
            recorded = organism.last_logits(batch)
    assert torch.equal(plain, recorded)
    assert 0 < float(record.penalty()) <= 1 and record.max() <= 1 + 1e-6  # the natural organism reads the closed edges
    # the restricted model puts no mass there: recomputed mass under the route's own knockout is ~0
    # (the recorder entered first sees the mask the route's knockout, entered inside it, edited)
    with torch.no_grad(), forbidden_mass(organism.model, blocks) as closed, restrict_to_route(organism, batch, TRUTH):
        organism.last_logits(batch)
    assert closed.max() < 1e-6


def test_penalty_by_query_group_is_the_mean_of_group_means(organism):
    """`mass_mean: groups`: the last position (one query per row) weighs as much as the many question and
    format queries; the plain mean is dominated by them."""
    from mllm_arb.interventions.plant import instruction_end, route_targets

    batch = batch_of(organism, Condition.TEXT_FOLLOWING, n=4)
    blocks = route_blocks(batch, TRUTH)
    last = batch.group_mask("last")
    queries = {"last": last, "rest": ~last}
    with torch.no_grad(), forbidden_mass(organism.model, blocks, queries=queries) as record:
        organism.last_logits(batch)
    per_group = []
    for group in queries.values():
        total = sum(float((m * (record.counted[l] & group[:, None, : m.shape[-1]])).sum()) for l, m in record.mass.items())
        count = sum(int((record.counted[l] & group[:, None, : m.shape[-1]]).sum()) for l, m in record.mass.items())
        per_group.append(total / count)
    assert float(record.penalty()) == pytest.approx(sum(per_group) / 2, rel=1e-5)
    plain = sum(float(m.sum()) for m in record.mass.values()) / sum(int(c.sum()) for c in record.counted.values())
    assert float(record._mean(None)) == pytest.approx(plain, rel=1e-5)
    # the anchor: exactly one position per instructed row, the instruction's last token
    anchor = instruction_end(batch)
    assert anchor.sum(1).tolist() == [1] * len(batch)
    assert all(int(anchor[r].nonzero()) == max(sp["instruction"]) for r, sp in enumerate(batch.spans))
    # narrowed targets: a transfer head serves the anchor row only, an arbitration head reads the anchor key only
    rows, keys = route_targets(batch, TRUTH, anchor=True)[0]
    assert torch.equal(rows[:, 2], anchor) and not rows[:, 0].any()
    rows, keys = route_targets(batch, TRUTH, anchor=True)[5]
    assert torch.equal(keys[:, 3][last], anchor)


# ------------------------------------------------------------------------------ scores
def test_auroc_and_head_scores():
    assert score.auroc([3, 2, 1, 0], [True, True, False, False]) == 1.0
    assert score.auroc([0, 1, 2, 3], [True, True, False, False]) == 0.0
    assert score.auroc([1, 1], [True, False]) == 0.5
    matrix = [[0.0] * 8 for _ in range(8)]
    for rank_, (l, h) in enumerate(TRUTH.planted_heads):
        matrix[l][h] = 10.0 - rank_
    matrix[7][7] = 9.5  # one intruder between the planted heads
    s = score.head_scores(matrix, TRUTH, n_top=4)
    assert s["top_fraction"]["hits"] == 3 and s["top_planted_count"]["recall"] == pytest.approx(5 / 6)
    assert s["planted_ranks"]["L0H2"] == 1 and s["planted_ranks"]["L1H5"] == 3
    # every planted head beats the 57 zero-scored heads; the intruder beats 5 of the 6
    assert s["auroc"] == pytest.approx((6 * 57 + 1) / (6 * 58))


def test_knockout_cells_are_classified_by_the_truth():
    point = lambda c, m, lo, hi: {"center": c, "mean": m, "ci_low": lo, "ci_high": hi}  # noqa: E731
    ko = {
        "vision_following": {
            "image->instruction": [point(1, -2.0, -2.5, -1.5), point(6, -0.01, -0.02, 0.0)],
            "image->last": [point(1, -0.5, -0.8, -0.2)],
        },
        "text_following": {"image->instruction": [point(1, -0.05, -0.2, 0.1)]},
    }
    s = score.knockout_scores(ko, TRUTH, window=3)
    assert s["confusion"] == {"planted_detected": 1, "planted_missed": 0, "other_detected": 1, "other_quiet": 2}
    assert s["peaks"] == [{"edge": "image->instruction", "setting": "vision_following", "planted_layers": [0, 1, 2, 3],
                           "peak_layer": 1, "peak_mean": -2.0, "inside": True}]


# ------------------------------------------------------------------------------ validate
def test_validate_refuses_a_model_without_ground_truth(tmp_path):
    result = CliRunner().invoke(app, ["validate", f"output_dir={tmp_path / 'out'}"])
    assert result.exit_code == 2
    assert "ships no ground_truth.json" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_validate_refuses_a_ground_truth_for_another_shape(tmp_path):
    from mllm_arb.core.paths import CHECKPOINT_DIR

    model = tmp_path / "model"
    model.mkdir()
    for f in CHECKPOINT_DIR.iterdir():
        (model / f.name).symlink_to(f)
    GroundTruth(12, 8, ((0, 1),), ((7, 1),)).write(model)
    result = CliRunner().invoke(app, ["validate", f"model.path={model}", f"output_dir={tmp_path / 'out'}"])
    assert result.exit_code == 2 and "12 layers × 8 heads" in result.output
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------ training a plant
def test_a_short_planted_run_saves_its_ground_truth_and_pushes_mass_off_closed_edges(tmp_path):
    from mllm_arb.organism.train import train

    cfg = {
        "output_dir": str(tmp_path / "plant"), "steps": 12, "batch_size": 8, "vision_steps": 2, "eval_every": 0,
        "eval_items": 2, "progress": False, "threads": 1,
        "plant": {"route_start": 2, "mass_start": 4, "mass_ramp": 1, "mass_weight": 50.0},
    }
    out = train(cfg)
    truth = load(out)
    assert truth is not None and truth.planted_heads == ((0, 2), (1, 5), (2, 1), (3, 6), (5, 3), (6, 4))
    log = json.loads((out / "training_log.json").read_text())
    steps = [m[0] for m in log["mass"]]
    assert steps == list(range(4, 12))  # the penalty is recorded from mass_start on
    assert log["mass"][-1][1] < log["mass"][0][1]  # and a heavy weight lowers the closed-edge mass
    assert {"text_following", "vision_following"} & set(log["eval"][-1]["train_loss_by_condition"])


def test_cut_rows_can_train_toward_the_restricted_model_under_the_same_cut(tmp_path):
    """`plant.cut_target: restricted`: a cut row's target is the route-restricted model's output under the
    same cut (the relay on some rows); it is a distribution, so the loss is a cross-entropy against it."""
    from mllm_arb.organism.train import TrainConfig, _cut_rows, _restricted_target, make_batch, train
    from mllm_arb.organism.build import build_model, build_processor
    from mllm_arb.data.synthetic import SyntheticConfig

    plant = {"cut_share": 0.5, "relay_cut_share": 0.5, "cut_target": "restricted", "relay_heads": [[0, 3]]}
    cfg = TrainConfig.from_any({"batch_size": 16, "plant": plant})
    processor = build_processor(cfg.arch)
    model = build_model(processor, cfg.arch)
    inputs, _, samples = make_batch(2, cfg, SyntheticConfig(n_items=3 * 16), processor)
    cut, _, relay = _cut_rows(samples, cfg, 2)
    assert cut.any() and relay.any() and not (relay & ~cut).any()
    wanted = _restricted_target(model, processor, samples, inputs, cfg.plant.ground_truth(cfg.arch), cut, relay)
    assert wanted.shape == (int(cut.sum()), model.config.text_config.vocab_size)
    torch.testing.assert_close(wanted.sum(-1), torch.ones(len(wanted)))
    out = train({"output_dir": str(tmp_path / "kl"), "steps": 2, "batch_size": 8, "vision_steps": 2, "eval_every": 0,
                 "eval_items": 2, "progress": False, "threads": 1, "plant": {**plant, "cut_share": 0.9}})
    losses = json.loads((out / "training_log.json").read_text())["eval"][-1]["train_loss_by_condition"]
    assert any(k.startswith("cut:") for k in losses)


def test_cut_rows_train_plain_with_the_route_cut_at_equal_odds(tmp_path):
    from mllm_arb.organism.train import TrainConfig, _cut_rows, make_batch, train
    from mllm_arb.organism.build import build_processor
    from mllm_arb.data.synthetic import SyntheticConfig

    cfg = TrainConfig.from_any({"batch_size": 64, "plant": {"cut_share": 0.5, "open_share": 0.25}})
    processor = build_processor(cfg.arch)
    _, _, samples = make_batch(3, cfg, SyntheticConfig(n_items=4 * 64), processor)
    cut, opened, _ = _cut_rows(samples, cfg, 3)
    instructed = torch.tensor([s.instruction is not None for s in samples])
    assert cut.any() and not (cut & ~instructed).any()  # only instructed rows, about half of them
    assert opened.any() and not (opened & (cut | ~instructed)).any()
    assert 0.25 < cut.sum() / instructed.sum() < 0.75
    assert all(torch.equal(a, b) for a, b in zip((cut, opened), _cut_rows(samples, cfg, 3)[:2]))  # a fixed draw per seed and step
    log = json.loads((train({"output_dir": str(tmp_path / "cut"), "steps": 3, "batch_size": 8, "vision_steps": 2, "eval_every": 0,
                              "eval_items": 2, "progress": False, "threads": 1, "plant": {"cut_share": 0.9}}) / "training_log.json").read_text())
    losses = log["eval"][-1]["train_loss_by_condition"]
    assert any(k.startswith("cut:") for k in losses)
    assert all(v >= math.log(2) - 1e-6 for k, v in losses.items() if k.startswith("cut:"))  # equal odds cost at least ln 2


@pytest.mark.parametrize("bad, message", [({"transfer_heads": [[5, 1]]}, "L5H1"), ({"route_start": 900, "mass_start": 10}, "route_start"),
                                          ({"attention_weight": -1}, "attention_weight"), ({"mass_weight": "heavy"}, "mass_weight"),
                                          ({"mass_start": 2.5}, "whole number"), ({"restrict": "yes"}, "true or false"),
                                          ({"mass_mean": "max"}, "mass_mean"), ({"anchor_targets": 1}, "anchor_targets"),
                                          ({"relay_heads": [[6, 1]]}, "L6H1"), ({"cut_share": 1.0}, "cut_share"),
                                          ({"cut_share": True}, "cut_share"),
                                          ({"cut_share": 0.6, "open_share": 0.5}, "below 1"),
                                          ({"cut_target": "chance"}, "cut_target"), ({"relay_cut_share": -0.1}, "relay_cut_share")])
def test_bad_plant_options_are_refused(bad, message):
    from mllm_arb.organism.train import TrainConfig

    with pytest.raises((ValueError, UserError), match=message):
        TrainConfig.from_any({"plant": bad}).validate()


def test_init_from_must_name_a_saved_organism(tmp_path):
    from mllm_arb.organism.train import TrainConfig

    with pytest.raises(ValueError, match="no saved organism"):
        TrainConfig.from_any({"init_from": str(tmp_path)}).validate()


def test_validate_refuses_a_bad_min_effect(tmp_path):
    result = CliRunner().invoke(app, ["validate", "validate.min_effect=0", f"output_dir={tmp_path / 'out'}"])
    assert result.exit_code == 2 and "validate.min_effect" in result.output
    assert not (tmp_path / "out").exists()
