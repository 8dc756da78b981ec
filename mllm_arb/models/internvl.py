"""InternVL (transformers-native): `<IMG_CONTEXT>` tokens wrapped in `<img>` / `</img>`."""

from .adapter import ModelAdapter


class InternVLAdapter(ModelAdapter):
    family = "internvl"
    model_types = ("internvl",)
    example_checkpoint = "OpenGVLab/InternVL3-8B-hf"
    quirks = "<IMG_CONTEXT> tokens wrapped in <img> / </img>"
