"""LLaVA-NeXT: tiles and row-newline slots live inside the image span; the count depends on image size."""

from .adapter import ModelAdapter


class LlavaNextAdapter(ModelAdapter):
    family = "llava_next"
    model_types = ("llava_next",)
    example_checkpoint = "llava-hf/llava-v1.6-mistral-7b-hf"
    quirks = "anyres tiles and row-newline tokens inside the image span: its length depends on the image size"
