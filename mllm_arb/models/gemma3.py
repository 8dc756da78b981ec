"""Gemma 3: sandwich norms (the residual writers are the post-norms), bidirectional attention inside
an image, images nested per sample, and soft image tokens distinct from the begin-of-image token."""

from .adapter import ModelAdapter


class Gemma3Adapter(ModelAdapter):
    family = "gemma3"
    model_types = ("gemma3",)
    nest_images = True
    image_sees_ahead = True
    example_checkpoint = "google/gemma-3-4b-it"
    quirks = ("bidirectional attention inside an image (suffix sweeps start at its first position); sandwich norms: "
              "the residual writers are the post-norms; sliding and full attention layers")
    image_token_attrs = ("image_token_id", "image_token_index")
    attn_output_module = "post_attention_layernorm"
    mlp_output_module = "post_feedforward_layernorm"
