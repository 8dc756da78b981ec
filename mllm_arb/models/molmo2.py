"""Molmo 2: each image is a low-resolution view (the image resized to one crop) and overlapping crops of
the image on a canvas of up to `max_crops` windows, their patch features pooled 2 × 2 into the tokens.
The prompt holds the low-resolution view's `<im_patch>` rows, then the crops', each row closed by
`<im_col>`, each view between `<low_res_im_start>` / `<im_start>` and `<im_end>`: the `<im_patch>`
positions are the image group (both views), the markers `system` text. Every image token, markers
included, attends to every other one (one bidirectional block, as the model builds its mask from
`mm_token_type_ids`): suffix sweeps start at the block's first position. The decoder is Qwen3-like
(per-head query and key norms), positions counted from the mask. The OLMo-based variant, whose layers
put their writes through norms after them (`norm_after`), is refused: its writers are not declared here.
"""

from ..core.errors import UserError
from .adapter import ModelAdapter


class Molmo2Adapter(ModelAdapter):
    family = "molmo2"
    model_types = ("molmo2",)
    example_checkpoint = "allenai/Molmo2-8B"
    image_token_attrs = ("image_patch_id",)
    image_sees_ahead = True
    quirks = ("a low-resolution view and overlapping crops, pooled 2 x 2 into <im_patch> rows closed by <im_col> (markers "
              "are system text); the image group holds both views; image tokens attend to each other in both directions")

    def __init__(self, model, processor, name: str = "") -> None:
        if getattr(model.config.get_text_config(), "norm_after", False):
            raise UserError(f"{name or 'this Molmo 2 model'} normalises each layer's writes after them (norm_after, the "
                            "OLMo-based variant): the lens and the decomposition are not defined for it here; not supported")
        super().__init__(model, processor, name)
