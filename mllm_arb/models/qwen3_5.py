"""Qwen3.5: Qwen3-VL's image layout and interleaved 3-D rotary positions (the model's own), no DeepStack,
and a hybrid decoder: most layers mix tokens by linear attention (a gated DeltaNet, `linear_attn`), every
few a full-attention layer (`self_attn`, its output gated per head before `o_proj`).

A knockout in a linear-attention layer is the recurrence run as if the sources had written nothing into
its state (interventions/knockout.py); the layers' heads are not attention heads, so head ranking, the
random head sets and every head edit cover the full-attention layers only (results.json says which layers
were left out). A thinking model: its prompts close the thought empty, so the answer is the next token.
In the MoE variant (`qwen3_5_moe`) every MLP is a sparse block, router, experts and gated shared expert
together: the MLP component is the block's output.
"""

from .adapter import ModelAdapter


class Qwen3_5Adapter(ModelAdapter):
    family = "qwen3_5"
    model_types = ("qwen3_5", "qwen3_5_moe")
    example_checkpoint = "Qwen/Qwen3.5-27B"
    positions_from_mask = False
    template_kwargs = {"enable_thinking": False}
    mixers = ("linear_attention",)
    quirks = ("linear attention (gated DeltaNet) in most layers: knockout skips the sources in the recurrent state; heads "
              "ranked and edited in the full-attention layers only; 3-D rotary positions (interleaved) from the image grid, "
              "the model's own; thinking closed empty in the prompt; MoE variant: the MLP component is the sparse block, routing and "
              "the gated shared expert included")
