"""Qwen2-VL and Qwen2.5-VL: image pads counted from `image_grid_thw`, wrapped in vision start/end
tokens; 3-D rotary positions come from the processor's `image_grid_thw`, which the batch carries."""

from .adapter import ModelAdapter


class Qwen2VLAdapter(ModelAdapter):
    family = "qwen2_vl"
    model_types = ("qwen2_vl",)
    example_checkpoint = "Qwen/Qwen2-VL-7B-Instruct"
    positions_from_mask = False
    quirks = "3-D rotary positions from the image grid (the model's own, not counted from the mask); image span length depends on the image size"


class Qwen2_5_VLAdapter(ModelAdapter):
    family = "qwen2_5_vl"
    model_types = ("qwen2_5_vl",)
    example_checkpoint = "Qwen/Qwen2.5-VL-7B-Instruct"
    positions_from_mask = False
    quirks = "3-D rotary positions from the image grid (the model's own, not counted from the mask); image span length depends on the image size"
