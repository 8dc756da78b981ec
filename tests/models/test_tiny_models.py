"""Tiny checkpoints of every family: save, reload, render a chat, batch, forward, tokenizer round trip."""

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoTokenizer, SmolVLMImageProcessorPil, SmolVLMProcessor

from mllm_arb.core.prompt import render_all
from mllm_arb.core.records import Condition
from mllm_arb.models.llama4 import mend
from mllm_arb.models.loading import load_adapter
from mllm_arb.models.processor_loading import load_processor
from mllm_arb.models.tiny import STUDY_SENTENCES, TINY_FAMILIES, save_tiny_model

from ..conftest import conflict_items

@pytest.fixture(scope="module", params=TINY_FAMILIES)
def tiny(request, tmp_path_factory):
    family = request.param
    path = save_tiny_model(family, tmp_path_factory.mktemp(family))
    return family, path, _load(path), load_processor(path)


def _load(path, **kwargs):
    model = AutoModelForImageTextToText.from_pretrained(path, **kwargs).eval()
    mend(model)  # Llama 4: transformers 5.24's multimodal forward needs it (models/llama4.py); others: nothing
    return model


def _chat(processor, text: str, image: bool = True) -> str:
    content = ([{"type": "image"}] if image else []) + [{"type": "text", "text": text}]
    messages = [{"role": "user", "content": content}]
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _image(colour) -> Image.Image:
    return Image.new("RGB", (40, 40), colour)


def _image_batch(processor):
    """Two prompts of different lengths, one 40x40 image each."""
    texts = [_chat(processor, STUDY_SENTENCES[3]), _chat(processor, " ".join(STUDY_SENTENCES[:3]))]
    # One list of images per prompt: Gemma 3 needs it, every family accepts it.
    images = [[_image("red")], [_image("blue")]]
    return processor(text=texts, images=images, return_tensors="pt", padding=True)


def test_batch_with_images_runs(tiny):
    _, _, model, processor = tiny
    inputs = _image_batch(processor)
    seen = {}
    hook = model.get_decoder().register_forward_pre_hook(
        lambda module, args, kwargs: seen.update(embeds=kwargs["inputs_embeds"]), with_kwargs=True
    )
    with torch.no_grad(), hook:
        out = model(**inputs)
        plain = model.get_input_embeddings()(inputs["input_ids"])

    length = inputs["input_ids"].shape[1]
    assert out.logits.shape == (2, length, model.config.get_text_config().vocab_size)
    assert torch.isfinite(out.logits).all()
    # The positions the vision features filled are exactly the image-token positions.
    filled = (seen["embeds"] != plain).any(dim=-1)
    is_image = inputs["input_ids"] == model.config.image_token_id
    assert is_image.sum() > 0
    assert torch.equal(filled, is_image)
    # Each row holds the same image span; the padding differs.
    per_row = is_image.sum(dim=1)
    assert per_row[0] == per_row[1]
    assert inputs["attention_mask"][0].sum() < inputs["attention_mask"][1].sum()


def test_text_only_prompt_runs(tiny):
    _, _, model, processor = tiny
    text = _chat(processor, STUDY_SENTENCES[4], image=False)
    inputs = processor(text=[text], return_tensors="pt")
    assert (inputs["input_ids"] == model.config.image_token_id).sum() == 0
    with torch.no_grad():
        out = model(**inputs)
    assert out.logits.shape[:2] == inputs["input_ids"].shape


def test_eager_and_sdpa_agree(tiny):
    _, path, _, processor = tiny
    inputs = _image_batch(processor)
    sdpa, eager = (_load(path, attn_implementation=impl) for impl in ("sdpa", "eager"))
    real = inputs["attention_mask"].bool()  # logits at padding positions are meaningless
    with torch.no_grad():
        torch.testing.assert_close(sdpa(**inputs).logits[real], eager(**inputs).logits[real], atol=1e-5, rtol=1e-4)


def test_tokenizer_round_trip(tiny):
    _, _, model, processor = tiny
    tokenizer = processor.tokenizer
    for text in (*STUDY_SENTENCES, "  odd  spacing, ünïcode 你好 and émoji 🙂\n"):
        ids = tokenizer(text).input_ids
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
    offsets = tokenizer(STUDY_SENTENCES[0], return_offsets_mapping=True)["offset_mapping"]
    assert offsets[-1][1] == len(STUDY_SENTENCES[0])
    assert tokenizer.pad_token_id is not None
    assert len(tokenizer) <= model.config.get_text_config().vocab_size
    assert tokenizer.convert_ids_to_tokens(model.config.image_token_id) in tokenizer.all_special_tokens


def test_chat_template_mimics_the_family(tiny):
    family, path, _, processor = tiny
    text = _chat(processor, "What color is the umbrella?")
    expected = {
        "llava": "USER: <image>\nWhat color is the umbrella? ASSISTANT:",
        "llava_next": "[INST] <image>\nWhat color is the umbrella? [/INST]",
        "llava_onevision": "<|im_start|>user\n<image>\nWhat color is the umbrella?<|im_end|>\n<|im_start|>assistant\n",
        "qwen2_vl": "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What color is the umbrella?"
        "<|im_end|>\n<|im_start|>assistant\n",
        "idefics3": "User:<image>What color is the umbrella?<end_of_utterance>\nAssistant:",
        "gemma3": "<start_of_turn>user\n<start_of_image>What color is the umbrella?<end_of_turn>\n"
        "<start_of_turn>model\n",
        "gemma4": "<|turn>user\n<|image|>What color is the umbrella?<turn|>\n<|turn>model\n",
        "internvl": "<|im_start|>user\n<IMG_CONTEXT>\nWhat color is the umbrella?<|im_end|>\n<|im_start|>assistant\n",
        "glm4v": "[gMASK]<sop><|user|>\n<|begin_of_image|><|image|><|end_of_image|>What color is the umbrella?<|assistant|>\n",
        "mistral3": "<s>[INST][IMG]What color is the umbrella?[/INST]",
        "molmo2": "<|endoftext|><|im_start|>user\n<|image|>What color is the umbrella?<|im_end|>\n<|im_start|>assistant\n",
        "llama4": "<|begin_of_text|><|header_start|>user<|header_end|>\n\n<|image|>What color is the umbrella?<|eot|>"
        "<|header_start|>assistant<|header_end|>\n\n",
    }
    expected["qwen2_5_vl"] = expected["qwen3_vl"] = expected["qwen3_vl_moe"] = expected["qwen2_vl"]
    # a thinking model opens its thought unless told not to (the adapter tells it: `template_kwargs`)
    expected["qwen3_5"] = expected["qwen3_5_moe"] = expected["qwen2_vl"] + "<think>\n"
    assert text.endswith(expected[family])
    if family.startswith("qwen3_5"):  # the adapter closes the thought: the answer is the next token
        adapter = load_adapter(str(path))
        assert adapter.prompt_text(render_all(conflict_items(1), [Condition.TEXT_FOLLOWING])[0]).endswith("<think>\n\n</think>\n\n")
        closed = processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": "Hi"}]}], tokenize=False,
                                               add_generation_prompt=True, enable_thinking=False)
        assert closed == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


def test_image_token_id_names_the_family_token(tiny):
    family, _, model, processor = tiny
    expected = {f: "<|image_pad|>" for f in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe")} | {"gemma3": "<image_soft_token>"}
    expected["internvl"], expected["glm4v"], expected["gemma4"], expected["mistral3"] = "<IMG_CONTEXT>", "<|image|>", "<|image|>", "[IMG]"
    expected["llama4"] = "<|patch|>"  # the features fill the patch tokens; <|image|> marks the global view
    expected["molmo2"] = "<im_patch>"  # the pooled features fill the patch tokens; <|image|> is the prompt's placeholder
    token = processor.tokenizer.convert_ids_to_tokens(model.config.image_token_id)
    assert token == expected.get(family, "<image>")
    # Gemma 3's processor names the begin-of-image token instead (Llama 4's the global view's marker): take
    # the id from the model config.
    assert (processor.image_token_id == model.config.image_token_id) == (family not in ("gemma3", "llama4", "molmo2"))


def test_deterministic_from_seed(tmp_path):
    a = save_tiny_model("llava", tmp_path / "a", seed=3)
    b = save_tiny_model("llava", tmp_path / "b", seed=3)
    c = save_tiny_model("llava", tmp_path / "c", seed=4)
    ma, mb, mc = (AutoModelForImageTextToText.from_pretrained(p) for p in (a, b, c))
    for (name, pa), pb, pc in zip(ma.named_parameters(), mb.parameters(), mc.parameters()):
        assert torch.equal(pa, pb), name
    assert any(not torch.equal(pa, pc) for pa, pc in zip(ma.parameters(), mc.parameters()))
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()


def test_load_processor_assembles_smolvlm_without_torchvision(tmp_path):
    """SmolVLM's processor owns a video slot too; lay out a checkpoint like the real ones and load it."""
    idefics3 = save_tiny_model("idefics3", tmp_path / "idefics3")
    tokenizer = AutoTokenizer.from_pretrained(idefics3)
    tokenizer.save_pretrained(tmp_path / "smolvlm")
    SmolVLMImageProcessorPil(size={"longest_edge": 64}, max_image_size={"longest_edge": 32}).save_pretrained(
        tmp_path / "smolvlm"
    )
    config = {"processor_class": "SmolVLMProcessor", "image_seq_len": 4}
    (tmp_path / "smolvlm" / "processor_config.json").write_text(json.dumps(config))
    (tmp_path / "smolvlm" / "chat_template.jinja").write_text((idefics3 / "chat_template.jinja").read_text())

    processor = load_processor(tmp_path / "smolvlm")
    assert isinstance(processor, SmolVLMProcessor) and processor.video_processor is None
    text = _chat(processor, STUDY_SENTENCES[3])
    inputs = processor(text=[text], images=[[_image("red")]], return_tensors="pt")
    assert (inputs["input_ids"] == tokenizer.convert_tokens_to_ids("<image>")).sum() == 5 * 4  # 4 tiles + global


def test_load_processor_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        load_processor(tmp_path / "missing")
    with pytest.raises(ValueError, match=str(tmp_path)):
        load_processor(tmp_path)


def test_unknown_family(tmp_path):
    with pytest.raises(ValueError, match="unknown tiny family"):
        save_tiny_model("nope", tmp_path)


@pytest.mark.parametrize("family, image_processor_type, processor_class, video_type", [
    ("qwen3_vl", "Qwen2VLImageProcessorFast", "Qwen3VLProcessor", "Qwen3VLVideoProcessor"),
    ("glm4v", "Glm4vImageProcessor", "Glm4vProcessor", "Glm4vVideoProcessor"),
])
def test_a_real_checkpoint_layout_loads_without_torchvision(tmp_path, family, image_processor_type, processor_class, video_type):
    """Qwen3-VL's and GLM-4V's checkpoints name torchvision image processors and a video processor; on a
    machine without torchvision the processor is assembled from the tokenizer and the PIL image processor."""
    import shutil

    src = save_tiny_model(family, tmp_path / "tiny")
    real = tmp_path / "real"
    real.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "config.json"):
        shutil.copy(src / name, real / name)
    pre = json.loads((src / "preprocessor_config.json").read_text())
    (real / "preprocessor_config.json").write_text(json.dumps({**pre, "image_processor_type": image_processor_type, "processor_class": processor_class}))
    video = {"video_processor_type": video_type, "processor_class": processor_class, "patch_size": pre["patch_size"],
             "merge_size": pre["merge_size"], "temporal_patch_size": 2}
    (real / "video_preprocessor_config.json").write_text(json.dumps(video))
    processor = load_processor(real)
    from transformers.utils import is_torchvision_available

    assert type(processor).__name__ == processor_class
    assert is_torchvision_available() or type(processor.image_processor).__name__.endswith("Pil")
    inputs = processor(text=[_chat(processor, STUDY_SENTENCES[3])], images=[[_image("red")]], return_tensors="pt")
    image_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    assert (inputs["input_ids"] == image_id).sum() == 25  # 40x40 px: 5x5 merged patches
