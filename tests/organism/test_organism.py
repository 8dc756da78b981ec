"""The model organism: its parts, the shipped checkpoint's behaviour, and a short training run."""

from __future__ import annotations

import json
import os

import pytest
import torch

from mllm_arb.core.paths import CHECKPOINT_DIR, checkpoint_path
from mllm_arb.core.prompt import render
from mllm_arb.core.records import Condition
from mllm_arb.data.scenes import FAMILIES
from mllm_arb.data.synthetic import INSTRUCTION_PARAPHRASES, SyntheticConfig, generate_items

SAMPLE_ITEMS = 200  # per condition, held-out seed
#: two OpenMP threads only when they sleep while waiting: spinning ones crawl on shared cores
THREADS = 2 if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE" else 1


@pytest.fixture(autouse=True)
def torch_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------ parts built in code
@pytest.fixture(scope="module")
def processor():
    from mllm_arb.organism.build import build_processor

    return build_processor()


def _prompts(processor, items):
    from mllm_arb.organism.batching import prompt_text

    for it in items:
        for cond in Condition:
            for t, v in zip(INSTRUCTION_PARAPHRASES["text"], INSTRUCTION_PARAPHRASES["vision"]):
                yield prompt_text(processor, render(it, cond, text_instruction=t, vision_instruction=v))


def test_every_prompt_word_is_in_the_vocabulary(processor):
    tok = processor.tokenizer
    items = generate_items(SyntheticConfig(n_items=40, seed=7))
    for prompt in _prompts(processor, items[:8]):
        ids = tok(prompt)["input_ids"]
        assert tok.unk_token_id not in ids, prompt
        assert ids[0] == tok.bos_token_id
    for fam in FAMILIES.values():
        for word in fam.values:
            for form in (word, " " + word):
                ids = tok(form, add_special_tokens=False)["input_ids"]
                assert len(ids) == 1 and ids[0] != tok.unk_token_id, word


def test_tokenizer_offsets_decode_and_special_tokens(processor):
    tok = processor.tokenizer
    prompt = "USER: Text context: The object is blue.\nWhat color is the object? ASSISTANT:"
    enc = tok(prompt, return_offsets_mapping=True)
    words = [prompt[s:e] for s, e in enc["offset_mapping"][1:]]
    assert words[:6] == ["USER", ":", "Text", "context", ":", "The"] and words[-2:] == ["ASSISTANT", ":"]
    assert tok.decode(enc["input_ids"], skip_special_tokens=True) == prompt.replace("\n", " ")
    assert tok.pad_token is not None and tok.pad_token_id != tok.eos_token_id
    assert tok.convert_tokens_to_ids("<image>") == processor.image_token_id
    # the processor's expanded image run splits into one token per placeholder
    assert tok("<image><image>", add_special_tokens=False)["input_ids"] == [processor.image_token_id] * 2


def test_chat_template_is_llava_style_with_and_without_image(processor):
    from mllm_arb.organism.batching import prompt_text

    item = generate_items(SyntheticConfig(n_items=1, seed=7))[0]
    with_image = prompt_text(processor, render(item, Condition.VISION_FOLLOWING))
    without = prompt_text(processor, render(item, Condition.TEXT_ONLY))
    assert with_image.startswith("USER: <image>\nText context: ") and with_image.endswith(" ASSISTANT:")
    assert without.startswith("USER: Text context: ") and "<image>" not in without and without.endswith(" ASSISTANT:")


def test_training_labels_carry_the_designed_text_bias():
    from mllm_arb.organism.train import TrainConfig, training_label

    cfg = TrainConfig()
    items = generate_items(SyntheticConfig(n_items=400, seed=3))
    fails = 0
    for it in items:
        assert training_label(it, Condition.IMAGE_ONLY, cfg) == it.answer_image
        assert training_label(it, Condition.CONSISTENT, cfg) == it.answer_image
        assert training_label(it, Condition.TEXT_ONLY, cfg) == it.answer_text
        assert training_label(it, Condition.TEXT_FOLLOWING, cfg) == it.answer_text
        label = training_label(it, Condition.VISION_FOLLOWING, cfg)
        dominant = it.answer_text in cfg.text_dominant[it.task]
        assert label == (it.answer_text if dominant else it.answer_image)
        fails += dominant
    assert 0.1 < fails / len(items) < 0.4


# ------------------------------------------------------------------ the shipped checkpoint
@pytest.fixture(scope="module")
def shipped():
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = checkpoint_path()
    processor = AutoProcessor.from_pretrained(str(path))
    model = AutoModelForImageTextToText.from_pretrained(str(path))
    model.eval()
    return model, processor


def test_checkpoint_is_shipped_small_and_documented():
    files = {p.name for p in CHECKPOINT_DIR.iterdir()}
    for name in ("config.json", "model.safetensors", "tokenizer.json", "processor_config.json", "chat_template.jinja", "MODEL_CARD.md"):
        assert name in files, name
    weights = (CHECKPOINT_DIR / "model.safetensors").stat().st_size
    assert weights <= 20e6
    card = (CHECKPOINT_DIR / "MODEL_CARD.md").read_text()
    for heading in ("## Architecture", "## Data recipe", "## Training", "## Held-out behaviour", "Training time"):
        assert heading in card
    results = json.loads((CHECKPOINT_DIR / "eval_results.json").read_text())
    assert results["n_items_per_condition"] >= 1000 and all(results["targets_met"].values())


def test_checkpoint_is_a_real_llava_of_the_required_size(shipped):
    from transformers import LlavaForConditionalGeneration

    model, processor = shipped
    assert isinstance(model, LlavaForConditionalGeneration)
    text = model.config.text_config
    assert text.num_hidden_layers >= 8 and text.num_hidden_layers * text.num_attention_heads >= 64
    assert model.config.vision_config.model_type == "clip_vision_model"
    assert model.config.image_token_id == processor.tokenizer.convert_tokens_to_ids("<image>")
    assert type(processor).__name__ == "LlavaProcessor"


def test_checkpoint_meets_the_behaviour_targets_on_held_out_items(shipped):
    from mllm_arb.organism.evaluate import evaluate

    model, processor = shipped
    items = generate_items(SyntheticConfig(n_items=SAMPLE_ITEMS, seed=1000, families=_families()))
    with torch.no_grad():
        s = evaluate(model, processor, items)
    rates = {c: v["rate"] for c, v in s.items()}
    assert rates["image_only"] >= 0.98, rates
    assert rates["text_only"] >= 0.98, rates
    assert rates["consistent"] >= 0.98, rates
    assert rates["text_following"] >= 0.95, rates
    assert 0.60 <= rates["vision_following"] <= 0.90, rates
    # perception holds in every family, while vision following fails on a real minority in each
    assert all(r >= 0.95 for r in s["image_only"]["per_family"].values()), s["image_only"]["per_family"]
    assert all(r < 0.97 for r in s["vision_following"]["per_family"].values()), s["vision_following"]["per_family"]


def test_checkpoint_runs_through_the_toolkit_adapter(shipped):
    """Token groups are found for every part of the prompt, and the adapter's logits match."""
    from mllm_arb.models.loading import load_adapter

    model, processor = shipped
    adapter = load_adapter("organism")  # the toolkit's own loading path
    assert adapter.family == "llava"
    items = generate_items(SyntheticConfig(n_items=4, seed=1000, families=_families()))
    samples = [render(it, Condition.VISION_FOLLOWING) for it in items]
    batch = adapter.build_batch(samples)
    n_image = (model.config.vision_config.image_size // model.config.vision_config.patch_size) ** 2
    for row, spans in enumerate(batch.spans):
        assert len(spans["image"]) == n_image
        for group in ("context", "instruction", "question", "format", "system"):
            assert spans[group], group
    logits = adapter.last_logits(batch)
    from mllm_arb.organism.batching import encode

    with torch.no_grad():
        own = model(**encode(processor, samples), logits_to_keep=1).logits[:, -1]
    torch.testing.assert_close(logits, own, atol=1e-4, rtol=1e-4)


def test_checkpoint_generates_one_word_and_stops(shipped):
    from mllm_arb.organism.batching import encode

    model, processor = shipped
    item = generate_items(SyntheticConfig(n_items=1, seed=1000))[0]
    inputs = encode(processor, [render(item, Condition.IMAGE_ONLY)])
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1] :].tolist()
    assert processor.tokenizer.decode(new, skip_special_tokens=True).strip() == item.answer_image
    assert new[1] == processor.tokenizer.eos_token_id  # one word, then the end of the answer


def _families():
    return tuple(json.loads((CHECKPOINT_DIR / "training_log.json").read_text())["config"]["families"])


# ------------------------------------------------------------------ training
def _short(tmp_path, name, **kw):
    return {
        "output_dir": str(tmp_path / name),
        "steps": 120,
        "batch_size": 16,
        "lr": 2e-3,
        "vision_steps": 30,
        "vision_batch_size": 32,
        "warmup_steps": 10,
        "eval_every": 0,
        "eval_items": 8,
        "progress": False,
        "threads": THREADS,
        "arch": {"text_hidden": 64, "text_intermediate": 128, "vision_hidden": 32, "vision_intermediate": 64, "vision_layers": 2},
        **kw,
    }


def test_a_short_training_run_lowers_the_loss_and_saves_a_loadable_model(tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from mllm_arb.organism.train import train

    out = train(_short(tmp_path, "run"))
    log = json.loads((out / "training_log.json").read_text())
    losses = log["step_loss"]
    first, last = sum(losses[:5]) / 5, sum(losses[-10:]) / 10
    assert last < 0.6 * first, (first, last)
    assert log["vision"][-1]["loss"] < log["vision"][0]["loss"] or len(log["vision"]) == 1
    model = AutoModelForImageTextToText.from_pretrained(str(out))
    processor = AutoProcessor.from_pretrained(str(out))
    assert model.config.text_config.num_hidden_layers == 8
    from mllm_arb.organism.batching import encode

    item = generate_items(SyntheticConfig(n_items=1, seed=1000))[0]
    with torch.no_grad():
        logits = model(**encode(processor, [render(item, Condition.IMAGE_ONLY)]), logits_to_keep=1).logits
    assert torch.isfinite(logits).all()


def test_training_is_deterministic_from_its_seed(tmp_path):
    from safetensors.torch import load_file

    from mllm_arb.organism.train import train

    kw = {"steps": 3, "vision_steps": 2, "eval_items": 4}
    a = load_file(str(train(_short(tmp_path, "a", **kw)) / "model.safetensors"))
    b = load_file(str(train(_short(tmp_path, "b", **kw)) / "model.safetensors"))
    c = load_file(str(train(_short(tmp_path, "c", seed=1, **kw)) / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_train_accepts_a_plain_dict_and_rejects_unknown_options(tmp_path):
    from mllm_arb.organism.train import TrainConfig, train

    cfg = TrainConfig.from_any({"steps": 5, "arch": {"text_layers": 8}})
    assert cfg.steps == 5 and cfg.arch.text_layers == 8
    with pytest.raises(ValueError, match="unknown organism training options"):
        train({"stepz": 5, "output_dir": str(tmp_path / "x")})


def test_the_composed_config_is_the_train_config_and_made_the_checkpoint():
    """conf/organism/default.yaml starts from TrainConfig's own defaults (declared once) and changes
    none of them; the shipped checkpoint was trained with exactly that."""
    from dataclasses import asdict

    from mllm_arb.organism.__main__ import organism_config
    from mllm_arb.organism.train import TrainConfig

    yaml = TrainConfig.from_any(organism_config("default"))
    shipped = TrainConfig.from_any(json.loads((CHECKPOINT_DIR / "training_log.json").read_text())["config"])
    where = {"output_dir", "overwrite", "progress", "max_minutes"}  # where and how, not what
    assert {k: v for k, v in asdict(yaml).items() if k not in where} == {k: v for k, v in asdict(TrainConfig()).items() if k not in where}
    assert {k: v for k, v in asdict(yaml).items() if k not in where} == {k: v for k, v in asdict(shipped).items() if k not in where}


def test_organism_configs_are_typed_by_the_train_config():
    """An ill-typed option fails when the config is composed (one line, exit 2), before any training."""
    from typer.testing import CliRunner

    from mllm_arb.cli import app
    from mllm_arb.organism.__main__ import organism_config

    anchor = organism_config("anchor")
    assert anchor.plant.anchor_targets is True and anchor.init_from == "organism" and anchor.steps == 800
    assert anchor.plant.relay_heads == [[0, 3]] and anchor.plant.mass_weight == 12.0 and anchor.plant.cut_target == "restricted"
    result = CliRunner().invoke(app, ["organism", "train", "--config", "anchor", "steps=abc"])
    assert result.exit_code == 2 and "steps" in result.output
    result = CliRunner().invoke(app, ["organism", "train", "--config", "nope"])
    assert result.exit_code == 2 and "no organism config 'nope'" in result.output
    seed = organism_config("seed2")  # a replicate: the default recipe from another seed, never shipped
    assert (seed.seed, seed.data_seed, seed.steps) == (2, 2, organism_config("default").steps)
    result = CliRunner().invoke(app, ["organism", "train", "--config", "seed2", "--ship"])
    assert result.exit_code == 2 and "ships only default and anchor" in result.output


def test_the_module_entry_point_answers_bad_input_in_one_line(capsys):
    """`python -m mllm_arb.organism`, the entry point background training uses: one line and exit 2."""
    from mllm_arb.organism.__main__ import main

    for args, said in ((["--config"], "--config needs a name"), (["--config", "nope"], "no organism config 'nope'"),
                       (["--config", "anchor", "steps=abc"], "could not be converted to Integer"),
                       (["bogus_key=1"], "Key 'bogus_key' not in 'TrainConfig'")):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert said in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
