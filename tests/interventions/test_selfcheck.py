"""A model without a family file is checked on one batch before any stage runs (`check_measurable`): a
layer that changes the residual stream besides its attention and MLP, logits that are not the lens at
the last residual, or layers that depend on more than their arguments are refused in one line."""

import pytest
import torch

from mllm_arb.core.errors import UserError
from mllm_arb.core.prompt import render_all
from mllm_arb.core.records import Condition
from mllm_arb.interventions.selfcheck import check_measurable
from mllm_arb.models import loading
from mllm_arb.models.loading import IntrospectedAdapter, load_adapter, materialise

from ..conftest import conflict_items, invoke


@pytest.fixture(scope="module")
def introspected():
    """The tiny LLaVA with its family file taken away: it loads by introspection."""
    saved = loading.ADAPTERS
    loading.ADAPTERS = tuple(a for a in saved if a.family != "llava")
    try:
        adapter = load_adapter(materialise("tiny:llava"))
    finally:
        loading.ADAPTERS = saved
    assert type(adapter) is IntrospectedAdapter
    return adapter, adapter.build_batch(render_all(conflict_items(2), [Condition.TEXT_FOLLOWING]))


def _refused(adapter, batch, match: str) -> str:
    with pytest.raises(UserError, match=match) as exc:
        check_measurable(adapter, batch)
    assert "\n" not in str(exc.value) and "no family file" in str(exc.value)
    return str(exc.value)


def test_a_model_whose_layers_write_only_through_attention_and_mlp_passes(introspected):
    adapter, batch = introspected
    check_measurable(adapter, batch)


def test_a_scaled_layer_output_is_refused_naming_the_layer(introspected):
    adapter, batch = introspected
    scale = lambda module, args, out: (out[0] * 0.5, *out[1:]) if isinstance(out, tuple) else out * 0.5  # noqa: E731
    handle = adapter.parts.layers[1].register_forward_hook(scale)
    try:
        assert "decoder layer 1 changes the residual stream" in _refused(adapter, batch, "besides its attention and MLP")
    finally:
        handle.remove()
    check_measurable(adapter, batch)


def test_soft_capped_logits_are_refused(introspected):
    adapter, batch = introspected
    cap = lambda module, args, out: out.__class__(**{**out, "logits": 3 * torch.tanh(out.logits / 3)})  # noqa: E731
    handle = adapter.model.register_forward_hook(cap)
    try:
        _refused(adapter, batch, "soft-capping")
    finally:
        handle.remove()


def test_layers_that_depend_on_more_than_their_arguments_are_refused(introspected):
    adapter, batch = introspected
    calls = {"n": 0}

    def stateful(module, args, kwargs):  # a layer that reads state the previous call left behind
        calls["n"] += 1
        hidden = args[0] if args else kwargs["hidden_states"]
        moved = hidden + 0.1 * (calls["n"] - 1)
        return ((moved, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": moved})

    last = adapter.parts.n_layers - 1
    handle = adapter.parts.layers[last].register_forward_pre_hook(stateful, with_kwargs=True)
    try:
        # the recorded pass sees nothing moved, so the lens identities hold; the resumed pass does not
        _refused(adapter, batch, "resumed at decoder layer")
    finally:
        handle.remove()


def test_a_gemma4_model_is_refused():
    """Gemma 4's decoder layers add a per-layer input after the MLP, put their attention and MLP outputs
    through norms before the residual sum and scale the residual: introspection would read the wrong
    writers. A tiny random Gemma 4 (the tiny Gemma 3's tokenizer and processor, text-only prompts) is
    refused in one line."""
    from transformers import AutoModelForImageTextToText, Gemma4Config

    gemma3 = load_adapter("tiny:gemma3")
    vocab = gemma3.model.config.get_text_config().vocab_size
    text = dict(vocab_size=vocab, vocab_size_per_layer_input=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                num_attention_heads=4, num_key_value_heads=2, head_dim=16, hidden_size_per_layer_input=8, per_layer_config={},
                layer_types=["sliding_attention", "full_attention"] * 2, sliding_window=128, pad_token_id=gemma3.tokenizer.pad_token_id)
    config = Gemma4Config(text_config=text, vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                               num_attention_heads=2, head_dim=16))
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(config).eval()
    adapter = IntrospectedAdapter(model, gemma3.processor, name="tiny-gemma4")
    batch = adapter.build_batch(render_all(conflict_items(2), [Condition.TEXT_ONLY]))
    _refused(adapter, batch, "decoder layer 0 changes the residual stream")


def test_a_stage_refuses_such_a_model_with_exit_2_before_it_runs(tmp_path, monkeypatch):
    """Through the command line: the tiny LLaVA without its family file, its decoder layers scaling their
    output (as a learnt layer scalar would), stops with one line and exit 2, and writes no results."""
    from transformers.models.llama import modeling_llama

    forward = modeling_llama.LlamaDecoderLayer.forward
    monkeypatch.setattr(modeling_llama.LlamaDecoderLayer, "forward", lambda self, *a, **k: 0.5 * forward(self, *a, **k))
    monkeypatch.setattr(loading, "ADAPTERS", tuple(a for a in loading.ADAPTERS if a.family != "llava"))
    result = invoke("evaluate", f"model.path={materialise('tiny:llava')}", "model.name=scaled", "data.n_items=2",
                    f"output_dir={tmp_path}")
    assert result.exit_code == 2, result.output
    assert "(llava, no family file): decoder layer 0 changes the residual stream" in result.output
    assert not list(tmp_path.rglob("results.json"))


def test_a_model_whose_forward_pass_fails_is_refused_in_one_line(tmp_path, monkeypatch):
    from transformers.models.llama import modeling_llama

    def broken(self, *args, **kwargs):
        raise AttributeError("shapes do not match\nmore detail")  # not only the usual error types

    monkeypatch.setattr(modeling_llama.LlamaDecoderLayer, "forward", broken)
    monkeypatch.setattr(loading, "ADAPTERS", tuple(a for a in loading.ADAPTERS if a.family != "llava"))
    result = invoke("evaluate", f"model.path={materialise('tiny:llava')}", "model.name=broken", "data.n_items=2",
                    f"output_dir={tmp_path}")
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "no family file): a forward pass over two conflict items failed (shapes do not match)" in result.output
