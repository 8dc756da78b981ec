"""GLM-4V (GLM-4.1V, GLM-4.5V's dense sibling): `<|image|>` pads counted from `image_grid_thw` between
`<|begin_of_image|>` and `<|end_of_image|>`, after the template's `[gMASK]<sop>`; 3-D rotary positions
over half of each head, from the image grid, computed by the model. Sandwich norms: each sublayer's
write into the residual stream is its post-norm's output, so the decomposition reads those."""

from .adapter import ModelAdapter


class Glm4vAdapter(ModelAdapter):
    family = "glm4v"
    model_types = ("glm4v",)
    example_checkpoint = "zai-org/GLM-4.1V-9B-Thinking"
    positions_from_mask = False
    attn_output_module = "post_self_attn_layernorm"
    mlp_output_module = "post_mlp_layernorm"
    quirks = ("sandwich norms: the residual writers are the post-attention and post-MLP norms; 3-D rotary positions "
              "(on half of each head) from the image grid, the model's own")
