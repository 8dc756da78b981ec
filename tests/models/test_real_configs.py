"""Configs of real checkpoints: they compose, name a supported family, and load through `load_adapter`
with their own fields. The real weights aren't here, so each loads the tiny model of its family."""

import pytest
import torch
from transformers import AutoConfig

from mllm_arb.core.prompt import render
from mllm_arb.core.records import Condition
from mllm_arb.models.loading import adapter_for, load_adapter, materialise
from mllm_arb.models.scoring import score_samples
from mllm_arb.runtime.config import compose

from ..conftest import conflict_items

# config -> (hub id, the model_type in that checkpoint's config.json, tiny family)
REAL = {
    "llava_1_5_7b": ("llava-hf/llava-1.5-7b-hf", "llava", "llava"),
    "llava_next_mistral_7b": ("llava-hf/llava-v1.6-mistral-7b-hf", "llava_next", "llava_next"),
    "llava_onevision_7b": ("llava-hf/llava-onevision-qwen2-7b-ov-hf", "llava_onevision", "llava_onevision"),
    "qwen2_vl_7b": ("Qwen/Qwen2-VL-7B-Instruct", "qwen2_vl", "qwen2_vl"),
    "qwen2_5_vl_7b": ("Qwen/Qwen2.5-VL-7B-Instruct", "qwen2_5_vl", "qwen2_5_vl"),
    "internvl3_8b": ("OpenGVLab/InternVL3-8B-hf", "internvl", "internvl"),
    "smolvlm": ("HuggingFaceTB/SmolVLM-Instruct", "idefics3", "idefics3"),
    "gemma3_4b": ("google/gemma-3-4b-it", "gemma3", "gemma3"),
    "gemma4_e4b": ("google/gemma-4-e4b-it", "gemma4", "gemma4"),
    "qwen3_vl_8b": ("Qwen/Qwen3-VL-8B-Instruct", "qwen3_vl", "qwen3_vl"),
    "qwen3_vl_30b_a3b": ("Qwen/Qwen3-VL-30B-A3B-Instruct", "qwen3_vl_moe", "qwen3_vl_moe"),
    "qwen3_5_27b": ("Qwen/Qwen3.5-27B", "qwen3_5", "qwen3_5"),
    "qwen3_5_35b_a3b": ("Qwen/Qwen3.5-35B-A3B", "qwen3_5_moe", "qwen3_5_moe"),
    "mistral3_small_24b": ("mistralai/Mistral-Small-3.1-24B-Instruct-2503", "mistral3", "mistral3"),
    "llama4_scout": ("meta-llama/Llama-4-Scout-17B-16E-Instruct", "llama4", "llama4"),
    "molmo2_8b": ("allenai/Molmo2-8B", "molmo2", "molmo2"),
    "glm4_1v_9b": ("zai-org/GLM-4.1V-9B-Thinking", "glm4v", "glm4v"),
}


def model_cfg(name: str):
    return compose([f"model={name}"]).model


def forward(adapter, n: int = 2) -> list:
    samples = [render(it, Condition.TEXT_FOLLOWING) for it in conflict_items(n)]
    return score_samples(adapter, samples, batch_size=n)


@pytest.mark.parametrize("name", sorted(REAL))
def test_config_composes_with_the_organism_keys(name):
    m, organism = model_cfg(name), model_cfg("organism")
    assert set(m) == set(organism)
    hub_id = REAL[name][0]
    assert (m.name, m.path, m.dtype, m.device, m.attn_implementation, m.padding_side) == (name, hub_id, "bfloat16", "auto", "sdpa", "left")


@pytest.mark.parametrize("name", sorted(REAL))
def test_config_loads_as_its_family(name):
    m = model_cfg(name)
    _, model_type, family = REAL[name]
    tiny_dir = materialise(f"tiny:{family}")
    adapter_cls = adapter_for(model_type)
    assert adapter_cls is adapter_for(AutoConfig.from_pretrained(tiny_dir).model_type)
    # bf16 on CPU is slow; one family below checks it
    adapter = load_adapter(tiny_dir, dtype="float32", device="cpu", attn_implementation=m.attn_implementation, padding_side=m.padding_side, name=m.name)
    assert type(adapter) is adapter_cls and adapter.name == name
    assert adapter.tokenizer.padding_side == "left"
    rows = forward(adapter)
    assert all(0.0 <= r.p_follow <= 1.0 for r in rows)


def test_bfloat16_loads_and_runs_on_cpu():
    m = model_cfg("llava_1_5_7b")
    adapter = load_adapter(materialise("tiny:llava"), dtype=m.dtype, device="cpu", attn_implementation=m.attn_implementation, padding_side=m.padding_side)
    assert next(adapter.model.parameters()).dtype == torch.bfloat16
    rows = forward(adapter)
    assert all(torch.isfinite(torch.tensor(r.log_odds)) for r in rows)
