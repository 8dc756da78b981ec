"""Llama 4 (Scout, Maverick): each image is cut into square tiles of the best-fitting canvas; each tile's
features fill `<|patch|>` tokens (the image group), tiles separated by `<|tile_x_separator|>` within a row
and `<|tile_y_separator|>` after it, then `<|image|>` and the global view's patches, all between
`<|image_start|>` and `<|image_end|>`; the markers are `system` text. The decoder's MLP is `feed_forward`:
in MoE layers a router, routed experts and a shared expert together (the MLP component, routing
included), returned flattened with the router's logits. Most layers attend within chunks of positions
(`attention_chunk_size`) with rotary positions, every fourth globally without them (NoPE, its queries
scaled by position): a knockout edits each layer's own mask.
"""

from transformers.utils import ModelOutput

from .adapter import ModelAdapter


def mend(model) -> None:
    """Let a Llama 4 model's own multimodal forward run on transformers 5.24 (`_with_image_outputs`); once
    per model, and nothing for other models."""
    if getattr(model.config, "model_type", None) != "llama4":
        return
    language_model = getattr(getattr(model, "model", model), "language_model", None)
    if language_model is not None and not getattr(language_model, "_mllm_arb_image_outputs", False):
        language_model.register_forward_hook(_with_image_outputs)  # for the model's lifetime
        language_model._mllm_arb_image_outputs = True


def _with_image_outputs(module, args, output):
    """transformers 5.24's `Llama4ForConditionalGeneration.forward` reads `image_outputs` off its language
    model's output, which has no such field, so every multimodal forward pass raises AttributeError. The
    field is only passed through to the result; giving the output an empty one lets the model's own
    forward run unchanged."""
    if isinstance(output, ModelOutput) and not hasattr(output, "image_outputs"):
        object.__setattr__(output, "image_outputs", None)
    return output


class Llama4Adapter(ModelAdapter):
    family = "llama4"
    model_types = ("llama4",)
    example_checkpoint = "meta-llama/Llama-4-Scout-17B-16E-Instruct"
    narrow_last_mlp = False
    quirks = ("tiles of <|patch|> tokens with tile separators and a global view (markers are system text); MoE MLPs: the MLP "
              "component is the routed and shared experts together; chunked attention in most layers, global NoPE layers "
              "between them")

    def __init__(self, model, processor, name: str = "") -> None:
        super().__init__(model, processor, name)
        mend(model)
