"""No-op intervention hooks vs the plain forward pass: a scale-1 edit of every head (a pre-hook on every
layer's o_proj) and an empty knockout (the attention function wrapped in every layer), each set up and
removed around every pass as the sweeps do. Target ≤ 5%. The ratio is the median of per-round ratios
(`paired_ratio`): the overhead is a few percent at most, less than the load of a shared machine varies."""

from __future__ import annotations

import torch

from mllm_arb.interventions import edit_heads, knock_out_rows, scale_heads

from .common import BATCH_SIZES, MODELS, Result, header, paired_ratio, prepared, report

TARGET = 1.05


@torch.no_grad()
def run(model: str, rounds: int = 41) -> Result:
    adapter, batch_size = MODELS[model](), BATCH_SIZES[model]
    parts = adapter.parts
    batch = prepared(adapter, batch_size, batch_size)[0].batch
    n_tok = batch.inputs["input_ids"].shape[1]
    nothing = torch.zeros(len(batch), n_tok, n_tok, dtype=torch.bool)

    def plain():
        adapter.model(**batch.inputs, use_cache=False)

    def hooked():
        with edit_heads(adapter, scale_heads(parts.heads(), 1.0)), \
                knock_out_rows(adapter, nothing, [range(parts.n_layers)] * len(batch)):  # fmt: skip
            adapter.model(**batch.inputs, use_cache=False)

    ratio, t_plain, t_hooked = paired_ratio(plain, hooked, rounds)
    return report(Result("no-op hooks", adapter.name, len(batch), "hooked / plain forward time (median of rounds)", ratio,
                         f"≤ {TARGET}", ratio <= TARGET, f"{rounds} rounds; best: plain {1000 * t_plain:.1f} ms, "
                         f"hooked {1000 * t_hooked:.1f} ms"))


if __name__ == "__main__":
    header("no-op intervention hooks vs plain forward")
    for name in MODELS:
        run(name)
