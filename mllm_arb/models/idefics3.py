"""Idefics3 / SmolVLM: image tokens wrapped in fake-token markers; images nested per sample."""

from .adapter import ModelAdapter


class Idefics3Adapter(ModelAdapter):
    family = "idefics3"
    model_types = ("idefics3", "smolvlm")
    nest_images = True
    example_checkpoint = "HuggingFaceTB/SmolVLM-Instruct"
    quirks = "image split into tiles plus a global view, each wrapped in fake-token markers"
