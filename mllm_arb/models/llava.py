"""LLaVA-1.5: a fixed number of image tokens, all `<image>`; nothing else differs."""

from .adapter import ModelAdapter


class LlavaAdapter(ModelAdapter):
    family = "llava"
    model_types = ("llava",)
    example_checkpoint = "llava-hf/llava-1.5-7b-hf"
    quirks = "a fixed number of image tokens (576 at 336 px); causal attention throughout"
