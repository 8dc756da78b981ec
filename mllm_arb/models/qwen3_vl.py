"""Qwen3-VL and its mixture-of-experts variant: Qwen2-VL's image layout (pads counted from
`image_grid_thw` between vision start/end tokens) and interleaved 3-D rotary positions, plus DeepStack:
the vision tower's intermediate features are added to the hidden states at image positions after the
first text layers (`deepstack_visual_indexes`), a residual writer besides attention and MLP. The text
model applies it between layers with its own `_deepstack_process`; `deepstack_writes` records those
calls so that a pass resumed at a later layer (prefix reuse) replays them and the lens reports them as
their own component. In the MoE variant the MLP writer is the sparse block (router and experts)."""

from .adapter import ModelAdapter


class Qwen3VLAdapter(ModelAdapter):
    family = "qwen3_vl"
    model_types = ("qwen3_vl", "qwen3_vl_moe")
    example_checkpoint = "Qwen/Qwen3-VL-8B-Instruct"
    positions_from_mask = False
    gap_writer = "_deepstack_process"
    gap_component = "deepstack"
    quirks = ("DeepStack: vision features written into the first text layers at image positions (the lens's own "
              "'deepstack' component); 3-D rotary positions (interleaved) from the image grid, the model's own; "
              "MoE variant: the MLP component is the sparse block, routing included")
