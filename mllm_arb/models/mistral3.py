"""Mistral 3 (Mistral Small 3.1 and later): a Pixtral vision tower whose features, merged 2 × 2, fill
rows of `[IMG]` tokens; each row is closed by an `[IMG_BREAK]` token and the image by `[IMG_END]`. Those
two are ordinary tokens with their own embeddings (the `system` group, like other image markers), so
a knockout of `image` leaves them readable. The span's length follows the image's size. The decoder is
Mistral's: causal attention throughout, positions counted from the mask.
"""

from .adapter import ModelAdapter


class Mistral3Adapter(ModelAdapter):
    family = "mistral3"
    model_types = ("mistral3",)
    example_checkpoint = "mistralai/Mistral-Small-3.1-24B-Instruct-2503"
    quirks = ("Pixtral vision tower: rows of [IMG] tokens closed by [IMG_BREAK], the image by [IMG_END] (markers are "
              "system text: a knockout of image leaves them readable); image span length depends on the image size")
