"""Every family: load a saved tiny model through the user-facing loader, build a padded batch, check
that every token-group span decodes to exactly its text, and run a forward pass with images."""

import pytest
import torch

from mllm_arb.core.errors import UserError
from mllm_arb.core.prompt import CONTEXT_PREFIX, render_all
from mllm_arb.core.records import Condition
from mllm_arb.models.loading import load_adapter, materialise

from ..conftest import FAMILIES, conflict_items


def _norm(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("family", FAMILIES)
def test_spans_decode_to_their_text(family, padding_side):
    adapter = load_adapter(f"tiny:{family}", padding_side=padding_side)
    samples = render_all(conflict_items(4), [Condition.TEXT_FOLLOWING])
    batch = adapter.build_batch(samples)
    ids = batch.inputs["input_ids"]
    mask = batch.inputs["attention_mask"]
    assert len({int(m.sum()) for m in mask}) > 1, "the batch should need padding"
    for row, sample in enumerate(samples):
        spans = batch.spans[row]
        expected = {
            "context": CONTEXT_PREFIX + sample.context,
            "instruction": sample.instruction,
            "question": sample.question,
            "format": sample.format,
        }
        for group, text in expected.items():
            got = adapter.tokenizer.decode(ids[row, spans[group]])
            assert _norm(got) == _norm(text), (family, group)
            assert spans[group] == list(range(spans[group][0], spans[group][-1] + 1)), "text spans are contiguous"
        image_positions = (ids[row] == adapter.image_token_id).nonzero().flatten().tolist()
        assert spans["image"] == image_positions and image_positions
        last = spans["last"][0]
        assert mask[row, last] == 1 and (last == ids.shape[1] - 1 or mask[row, last + 1 :].sum() == 0)
        covered = sorted(p for pos in spans.values() for p in pos)
        assert covered == mask[row].nonzero().flatten().tolist(), "groups partition the real tokens, each in one group"
        assert spans["last"] == [last] and all(last not in pos for g, pos in spans.items() if g != "last")
        assert max(spans["image"]) < min(spans["context"]), "the image comes first"
    out = adapter.model(**batch.inputs)
    assert out.logits.shape[:2] == ids.shape and torch.isfinite(out.logits).all()


@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl"])
def test_text_only_prompts_have_no_image_group(family):
    adapter = load_adapter(f"tiny:{family}")
    samples = render_all(conflict_items(2), [Condition.TEXT_ONLY])
    batch = adapter.build_batch(samples)
    assert all(not s["image"] for s in batch.spans)
    assert "pixel_values" not in batch.inputs
    assert adapter.last_logits(batch).shape[0] == 2


def test_decoder_parts_are_found_by_introspection():
    adapter = load_adapter("tiny:qwen2_vl")
    parts = adapter.parts
    assert parts.n_layers == adapter.model.config.get_text_config().num_hidden_layers
    assert all(parts.o_proj(l).in_features == parts.n_heads * parts.head_dim(l) for l in range(parts.n_layers))
    assert parts.unembed is adapter.model.get_output_embeddings()


def test_missing_model_path_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_adapter(str(tmp_path / "nope"))
    with pytest.raises(UserError, match="no config.json"):
        load_adapter(str(tmp_path))


def test_unsupported_architecture_is_named(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=50)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "llama")
    with pytest.raises(UserError, match="unsupported architecture 'llama'"):
        load_adapter(str(tmp_path / "llama"))


def test_a_model_with_linear_attention_layers_is_refused_without_a_family_file_that_declares_them(tmp_path):
    """GLM-5-Next's hybrid decoder has no family file: the knockout and head edits defined for Qwen3.5's
    linear-attention layers are not claimed for it, so it is refused in one line naming them, from
    config.json alone (no weights are written here)."""
    from transformers import Glm5NextConfig

    config = Glm5NextConfig()
    text = config.get_text_config()
    text.num_hidden_layers, text.layer_types = 4, ["linear_attention"] * 3 + ["full_attention"]
    text.mlp_layer_types = text.mlp_layer_types[:4]
    folder = tmp_path / "glm5_next"
    config.save_pretrained(folder)
    with pytest.raises(UserError, match="has 3 linear_attention layers .* only for the families that declare them \\(qwen3_5\\)"):
        load_adapter(str(folder))


@pytest.mark.parametrize("family", FAMILIES)
def test_no_double_bos(family):
    adapter = load_adapter(f"tiny:{family}")
    batch = adapter.build_batch(render_all(conflict_items(1), [Condition.TEXT_FOLLOWING]))
    bos = adapter.tokenizer.bos_token_id
    ids = batch.inputs["input_ids"][0].tolist()
    assert bos is None or ids.count(bos) <= 1


def test_a_model_type_without_a_family_file_loads_by_introspection(tmp_path, monkeypatch, caplog):
    """A model type no family file declares, but whose decoder layers, attention output projections, final
    norm, unembedding and image token can be found, loads with one warning and runs the stages; one
    that cannot be introspected is one line naming what was not found. (The family file is taken away
    from a tiny LLaVA, which stands for a family the package does not know.)"""
    import logging

    from mllm_arb.models import loading

    from ..conftest import invoke, only_run

    path = materialise("tiny:llava")
    expected = load_adapter(path)
    monkeypatch.setattr(loading, "ADAPTERS", tuple(a for a in loading.ADAPTERS if a.family != "llava"))
    with caplog.at_level(logging.WARNING, logger="mllm_arb.models.loading"):
        adapter = load_adapter(path)
    assert type(adapter).__name__ == "IntrospectedAdapter" and adapter.image_token_id == expected.image_token_id
    warning = [r.getMessage() for r in caplog.records if "no family file" in r.getMessage()]
    assert len(warning) == 1 and "'llava'" in warning[0] and "\n" not in warning[0]
    batch = adapter.build_batch(render_all(conflict_items(2), [Condition.VISION_FOLLOWING]))
    torch.testing.assert_close(adapter.last_logits(batch), expected.last_logits(expected.build_batch(batch.samples)))
    result = invoke("analyze", f"model.path={path}", "model.name=unknown_family", "data.n_items=2", "batch_size=2",
                    "analysis.edges=[image:last]", f"output_dir={tmp_path}")
    assert result.exit_code == 0, result.output
    assert (only_run(tmp_path, "analyze") / "findings.json").exists()

    # the same model type, with nothing to find: one line, naming what is missing
    from mllm_arb.models import adapter as adapter_module

    def nothing(model):
        raise UserError(f"{type(model).__name__}: no text decoder layers with self_attn.o_proj found")

    monkeypatch.setattr(adapter_module, "find_decoder_parts", nothing)
    with pytest.raises(UserError, match="has no family file and cannot be introspected .*no text decoder layers") as exc:
        load_adapter(path)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_sample_scores_the_same_alone_and_in_a_padded_batch(family):
    """Left-padded rows count their positions from the mask (as generation does), so padding moves nothing."""
    from mllm_arb.core.scoring import answer_ids, binary_scores

    adapter = load_adapter(f"tiny:{family}")
    samples = render_all(conflict_items(4), [Condition.VISION_FOLLOWING])
    ids = [answer_ids(adapter.tokenizer, s) for s in samples]
    batch = adapter.build_batch(samples)
    with torch.no_grad():
        together = binary_scores(adapter.last_logits(batch), ids)[0]
        alone = torch.cat([binary_scores(adapter.last_logits(adapter.build_batch([s])), [i])[0] for s, i in zip(samples, ids)])
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-5)
    if adapter.positions_from_mask:  # each row's first real token is at position 0
        mask, positions = batch.inputs["attention_mask"], batch.inputs["position_ids"]
        assert [int(p[m.bool()][0]) for p, m in zip(positions, mask)] == [0] * len(samples)
        assert torch.equal(positions[mask.bool()].max(), (mask.sum(1) - 1).max())


def test_padding_moves_no_score_on_the_organism():
    """The organism's logits are large enough for rotary positions offset by padding to show (2e-4 before
    positions were counted from the mask); now a padded batch scores each sample as alone, to float noise."""
    import mllm_arb as ma

    model = ma.load("organism")
    items = ma.conflict_items(16)
    batch = ma.conflict_batch(model, items, "vision_following")
    with torch.no_grad():
        together = ma.log_odds(model, batch)
        alone = torch.cat([ma.log_odds(model, ma.conflict_batch(model, [item], "vision_following")) for item in items])
    assert (batch.batch.inputs["attention_mask"] == 0).any(), "the batch should need padding"
    torch.testing.assert_close(together, alone, rtol=0, atol=2e-5)


def test_mistral3_lays_each_image_out_in_rows_closed_by_break_and_end_tokens():
    """Without torchvision the loader builds Mistral 3's prompt with the project's own PixtralProcessor: a
    40 × 24 px image is 3 rows of 5 [IMG] (8 px each), each row closed by [IMG_BREAK], the last by [IMG_END]
    in its place; the image group is the [IMG] positions alone, and the model accepts the count."""
    from dataclasses import replace

    from PIL import Image
    from transformers.utils import is_torchvision_available

    adapter = load_adapter("tiny:mistral3")
    if not is_torchvision_available():
        assert type(adapter.processor).__module__ == "mllm_arb.models.processor_loading"
    item = replace(conflict_items(1)[0], image=Image.new("RGB", (40, 24), (200, 30, 30)))
    batch = adapter.build_batch(render_all([item], [Condition.TEXT_FOLLOWING]))
    tokens = adapter.tokenizer.convert_ids_to_tokens(batch.inputs["input_ids"][0])
    start, end = tokens.index("[IMG]"), tokens.index("[IMG_END]")
    assert tokens[start : end + 1] == (["[IMG]"] * 5 + ["[IMG_BREAK]"]) * 2 + ["[IMG]"] * 5 + ["[IMG_END]"]
    image = batch.spans[0]["image"]
    assert len(image) == 15 and all(tokens[p] == "[IMG]" for p in image)
    assert {tokens[p] for p in batch.spans[0]["system"]} >= {"[IMG_BREAK]", "[IMG_END]"}
    assert torch.isfinite(adapter.last_logits(batch)).all()


def test_llama4_tiles_an_image_into_the_best_canvas_with_separators_and_a_global_view():
    """The PIL twin of Llama 4's image processor (transformers has it on torchvision only): a 40 × 24 px
    image fits a 1 × 2 canvas of 32 px tiles best (the least upscaling, then the least area), unscaled and
    padded with 0 (-1 once normalised) at the right; each tile's 4 patch tokens are the image group, a row's
    tiles are split by <|tile_x_separator|> and closed by <|tile_y_separator|>, and the global view follows
    <|image|>; the model accepts the count."""
    from dataclasses import replace

    from PIL import Image

    from mllm_arb.models.image_processing import best_canvas, canvases, fit_inside

    assert canvases(4, 224) == [(224, 896), (448, 448), (224, 224), (896, 224), (224, 672), (672, 224), (224, 448), (448, 224)]
    assert best_canvas(200, 300, canvases(5, 224)) == (224, 448)  # upscales 1.12: the least of those above 1
    assert best_canvas(2000, 3000, canvases(4, 224)) == (448, 448)  # no upscaling: the least downscaling
    assert fit_inside(200, 300, 450, 200) == (133, 200) and fit_inside(800, 600, 450, 1300) == (450, 337)
    adapter = load_adapter("tiny:llama4")
    item = replace(conflict_items(1)[0], image=Image.new("RGB", (40, 24), (255, 255, 255)))
    batch = adapter.build_batch(render_all([item], [Condition.TEXT_FOLLOWING]))
    tokens = adapter.tokenizer.convert_ids_to_tokens(batch.inputs["input_ids"][0])
    start, end = tokens.index("<|image_start|>"), tokens.index("<|image_end|>")
    patch = ["<|patch|>"] * 4
    assert tokens[start : end + 1] == ["<|image_start|>", *patch, "<|tile_x_separator|>", *patch, "<|tile_y_separator|>",
                                       "<|image|>", *patch, "<|image_end|>"]
    assert [tokens[p] for p in batch.spans[0]["image"]] == ["<|patch|>"] * 12
    pixels = batch.inputs["pixel_values"]  # two tiles, then the global view
    assert pixels.shape == (3, 3, 32, 32) and (pixels[2] == 1).all()  # the global view: the whole image resized
    assert (pixels[0, :, :24] == 1).all() and (pixels[0, :, 24:] == -1).all()  # padded below the image's 24 rows
    assert (pixels[1, :, :24, :8] == 1).all() and (pixels[1, :, :, 8:] == -1).all() and (pixels[1, :, 24:] == -1).all()
    assert torch.isfinite(adapter.last_logits(batch)).all()


def test_llama4_still_needs_its_mend_on_the_installed_transformers():
    """A tripwire: transformers 5.24's Llama4ForConditionalGeneration.forward reads `image_outputs` off its
    language model's output, which has none, so a plain model fails on any input; the family's `mend` gives
    it an empty one (models/llama4.py). When transformers fixes this, this test fails: drop the mend."""
    from transformers import AutoModelForImageTextToText

    from mllm_arb.models.llama4 import mend

    path = materialise("tiny:llama4")
    adapter = load_adapter(path)
    batch = adapter.build_batch(render_all(conflict_items(1), [Condition.TEXT_FOLLOWING]))
    plain = AutoModelForImageTextToText.from_pretrained(path).eval()
    with pytest.raises(AttributeError, match="image_outputs"), torch.no_grad():
        plain(**batch.inputs)
    mended = AutoModelForImageTextToText.from_pretrained(path).eval()
    mend(mended)
    rows = torch.arange(len(batch))
    with torch.no_grad():
        torch.testing.assert_close(mended(**batch.inputs).logits[rows, batch.last].float(), adapter.last_logits(batch))


def test_a_checkpoint_naming_the_fast_image_processor_loads_its_pil_twin(tmp_path):
    """Checkpoints saved by transformers 4 name Llama 4's torchvision image processor with its `Fast` suffix;
    without torchvision the loader still finds the PIL twin."""
    import json
    import shutil

    from transformers.utils import is_torchvision_available

    from mllm_arb.models.image_processing import Llama4ImageProcessorPil
    from mllm_arb.models.processor_loading import load_processor

    folder = tmp_path / "llama4"
    shutil.copytree(materialise("tiny:llama4"), folder)
    config = json.loads((folder / "processor_config.json").read_text())
    config["image_processor"]["image_processor_type"] = "Llama4ImageProcessorFast"
    (folder / "processor_config.json").write_text(json.dumps(config))
    processor = load_processor(folder)
    assert is_torchvision_available() or type(processor.image_processor) is Llama4ImageProcessorPil


def test_a_post_norm_molmo2_is_refused_in_one_line(tmp_path):
    """The OLMo-based Molmo 2 writes through norms after each sublayer (`norm_after`), which its family file
    does not declare: refused, not mis-measured."""
    import json
    import shutil

    folder = tmp_path / "molmo2"
    shutil.copytree(materialise("tiny:molmo2"), folder)
    config = json.loads((folder / "config.json").read_text())
    config["text_config"]["norm_after"] = True
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="norm_after"):
        load_adapter(str(folder))


def test_molmo2_lays_out_a_low_resolution_view_then_pooled_overlapping_crops():
    """The PIL twin of Molmo 2's image processor (transformers has it on torchvision only). The tiny model's
    crops are 32 px of 4 px patches with 1-patch overlap margins, so each crop adds a 24 px window: a 40 × 24
    image takes a 1 × 2 tiling (the least upscaling), a 32 × 56 canvas, 3 crops (the low-resolution view
    first); pooled 2 × 2, the low view is 4 rows of 4 tokens and the canvas 4 rows of 7, each row closed by
    <im_col>. The image group is the <im_patch> positions of both views, and the model accepts the count."""
    from dataclasses import replace

    from PIL import Image

    from mllm_arb.models.image_processing import molmo2_tiling, pooling_windows

    assert molmo2_tiling(16, 32, 24, 4) == (1, 2) and molmo2_tiling(400, 400, 24, 4) == (2, 2)  # the latter shrinks least
    assert pooling_windows(torch.arange(9).reshape(3, 3).numpy(), 2, 2).tolist() == [[0, 1, 3, 4], [2, -1, 5, -1],
                                                                                    [6, 7, -1, -1], [8, -1, -1, -1]]
    adapter = load_adapter("tiny:molmo2")
    item = replace(conflict_items(1)[0], image=Image.new("RGB", (40, 24), (255, 255, 255)))
    batch = adapter.build_batch(render_all([item], [Condition.TEXT_FOLLOWING]))
    tokens = adapter.tokenizer.convert_ids_to_tokens(batch.inputs["input_ids"][0])
    start = tokens.index("<low_res_im_start>")
    low, high = (["<im_patch>"] * 4 + ["<im_col>"]) * 4, (["<im_patch>"] * 7 + ["<im_col>"]) * 4
    assert tokens[start : start + 2 + len(low) + 2 + len(high)] == ["<low_res_im_start>", *low, "<im_end>", "<im_start>", *high, "<im_end>"]
    assert [tokens[p] for p in batch.spans[0]["image"]] == ["<im_patch>"] * 44
    assert batch.inputs["pixel_values"].shape == (3, 64, 4 * 4 * 3) and batch.inputs["image_token_pooling"].shape == (44, 4)
    assert batch.inputs["image_grids"].tolist() == [[4, 4, 4, 7]]
    assert torch.isfinite(adapter.last_logits(batch)).all()
