"""LLaVA-OneVision: a Qwen2 decoder under a SigLIP tower; anyres tiles and row-newline slots inside the
image span (its length depends on the image size), every image placed before the turn's text."""

from .adapter import ModelAdapter


class LlavaOnevisionAdapter(ModelAdapter):
    family = "llava_onevision"
    model_types = ("llava_onevision",)
    example_checkpoint = "llava-hf/llava-onevision-qwen2-7b-ov-hf"
    quirks = "anyres tiles (up to 9) and row-newline tokens inside the image span; SigLIP features used whole (no CLS)"
