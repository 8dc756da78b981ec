"""Knockout in linear-attention layers (Qwen3.5's gated DeltaNet), against a brute-force definition.

The definition (interventions/knockout.py): a target's output is what the mixer gives it had the source
positions written nothing into the recurrent state, short convolution included. The brute force below
computes that from the mixer's input and weights by the recurrence itself, position by position in float64,
skipping the sources (no decay, no write) after zeroing their projections before the convolution."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig

from mllm_arb.core.errors import UserError
from mllm_arb.interventions.knockout import knock_out_rows
from mllm_arb.models.adapter import find_decoder_parts

LAYER_TYPES = ["linear_attention", "linear_attention", "full_attention"]


@pytest.fixture(scope="module")
def qwen35():
    config = Qwen3_5TextConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                               num_key_value_heads=2, head_dim=8, linear_num_key_heads=2, linear_num_value_heads=4,
                               linear_key_head_dim=8, linear_value_head_dim=8, layer_types=LAYER_TYPES)
    torch.manual_seed(0)
    model = Qwen3_5ForCausalLM(config).eval()
    return SimpleNamespace(model=model, parts=find_decoder_parts(model), ledger=None)


def _brute_force(mixer, x: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
    """The mixer's output at every position, each source having written nothing into the state."""
    x = x.double()
    weight = {name: p.detach().double() for name, p in mixer.named_parameters()}
    qkv = x @ weight["in_proj_qkv.weight"].T
    qkv = qkv.masked_fill(sources[..., None], 0.0)  # a source reaches no convolution window
    kernel = weight["conv1d.weight"][:, 0]  # [channels, K]
    size = kernel.shape[1]
    padded = F.pad(qkv, (0, 0, size - 1, 0))
    conv = sum(padded[:, j : j + qkv.shape[1]] * kernel[:, j] for j in range(size))
    conv = F.silu(conv)
    q, k, v = conv.split([mixer.key_dim, mixer.key_dim, mixer.value_dim], -1)
    n_rows, n_tok = x.shape[:2]
    heads = mixer.num_v_heads
    q = q.view(n_rows, n_tok, mixer.num_k_heads, -1).repeat_interleave(heads // mixer.num_k_heads, 2)
    k = k.view(n_rows, n_tok, mixer.num_k_heads, -1).repeat_interleave(heads // mixer.num_k_heads, 2)
    v = v.view(n_rows, n_tok, heads, -1)
    q = q / torch.sqrt((q * q).sum(-1, keepdim=True) + 1e-6) / q.shape[-1] ** 0.5
    k = k / torch.sqrt((k * k).sum(-1, keepdim=True) + 1e-6)
    beta = torch.sigmoid(x @ weight["in_proj_b.weight"].T)
    decay = torch.exp(-weight["A_log"].exp() * F.softplus(x @ weight["in_proj_a.weight"].T + weight["dt_bias"]))
    out = torch.zeros_like(v)
    for row in range(n_rows):
        state = torch.zeros(heads, k.shape[-1], v.shape[-1], dtype=torch.float64)
        for t in range(n_tok):
            if not sources[row, t]:
                state = state * decay[row, t][:, None, None]
                error = v[row, t] - torch.einsum("hk,hkv->hv", k[row, t], state)
                state = state + beta[row, t][:, None, None] * torch.einsum("hk,hv->hkv", k[row, t], error)
            out[row, t] = torch.einsum("hk,hkv->hv", q[row, t], state)
    z = (x @ weight["in_proj_z.weight"].T).float().reshape(-1, mixer.head_v_dim)
    with torch.no_grad():
        gated = mixer.norm(out.float().reshape(-1, mixer.head_v_dim), z).reshape(n_rows, n_tok, -1)
        return mixer.out_proj(gated)


def _spans(n_rows: int, n_tok: int, rows: list[tuple[range, range]]) -> torch.Tensor:
    block = torch.zeros(n_rows, n_tok, n_tok, dtype=torch.bool)
    for row, (sources, targets) in enumerate(rows):
        block[row, torch.tensor(list(targets))[:, None], torch.tensor(list(sources))] = True
    return block


def test_a_linear_attention_knockout_is_the_recurrence_without_the_sources_writes(qwen35):
    adapter = qwen35
    ids = torch.randint(0, 64, (2, 14), generator=torch.Generator().manual_seed(1))
    # row 0: positions 2..5 cut from 9..13; row 1: 4..6 cut from 7..12 (within the convolution's reach of the sources)
    block = _spans(2, 14, [(range(2, 6), range(9, 14)), (range(4, 7), range(7, 13))])
    sources, targets = block.any(-2), block.any(-1)
    mixer = adapter.parts.attn(0)
    seen = {}

    def record(module, args, kwargs, output):
        seen["x"], seen["y"] = kwargs["hidden_states"].detach(), output.detach()

    with torch.no_grad():
        plain = adapter.model(ids, use_cache=False).logits
        with knock_out_rows(adapter, block, [{0}, {0}]):
            handle = mixer.register_forward_hook(record, with_kwargs=True)
            try:
                knocked = adapter.model(ids, use_cache=False).logits
            finally:
                handle.remove()
        expected = _brute_force(mixer, seen["x"], sources)
        alone = mixer(hidden_states=seen["x"])  # the same input, no knockout
    torch.testing.assert_close(seen["y"][targets], expected[targets].to(seen["y"].dtype), atol=2e-6, rtol=1e-5)
    assert torch.equal(seen["y"][~targets], alone[~targets])  # every other row as the plain mixer gives it
    # the brute force without sources is the plain mixer: the recurrence above is the model's own
    torch.testing.assert_close(_brute_force(mixer, seen["x"], torch.zeros_like(sources)), alone, atol=2e-6, rtol=1e-5)
    assert not torch.allclose(expected[targets], alone[targets], atol=1e-4)  # the knockout moves the targets
    assert torch.equal(knocked[:, :2], plain[:, :2]) and not torch.allclose(knocked[:, -1], plain[:, -1])
    assert len(mixer._forward_hooks) == 0 and all(len(p._forward_hooks) == 0 for p in mixer.children())


def test_a_knockout_in_attention_layers_only_leaves_linear_layers_alone_and_an_empty_one_changes_nothing(qwen35):
    adapter = qwen35
    ids = torch.randint(0, 64, (2, 14), generator=torch.Generator().manual_seed(2))
    block = _spans(2, 14, [(range(2, 6), range(9, 14)), (range(2, 6), range(9, 14))])
    with torch.no_grad():
        plain = adapter.model(ids, use_cache=False).logits
        with knock_out_rows(adapter, torch.zeros_like(block), [{0, 1, 2}] * 2):
            assert torch.equal(adapter.model(ids, use_cache=False).logits, plain)
        with knock_out_rows(adapter, block, [{2}] * 2):  # the full-attention layer: a mask edit
            full = adapter.model(ids, use_cache=False).logits
        with knock_out_rows(adapter, block, [{0, 1, 2}] * 2):
            every = adapter.model(ids, use_cache=False).logits
    assert torch.equal(full[:, :9], plain[:, :9]) and not torch.allclose(full[:, -1], plain[:, -1])
    assert not torch.allclose(every[:, -1], full[:, -1])


def test_a_knockout_a_recurrent_state_cannot_express_is_refused(qwen35):
    adapter = qwen35
    ragged = _spans(1, 14, [(range(2, 6), range(9, 14))])
    ragged[0, 12, 2] = False  # one target still sees one source: no single state without the sources
    overlapping = _spans(1, 14, [(range(2, 8), range(6, 10))])
    overlapping &= ~torch.eye(14, dtype=torch.bool)
    for block in (ragged, overlapping, ragged[:, None].expand(1, 4, 14, 14)):
        with pytest.raises(UserError, match="linear-attention layer"):
            with knock_out_rows(adapter, block, [{1}]):
                pass
    with knock_out_rows(adapter, ragged, [{2}]):  # in the attention layer, any mask is fine
        pass
