"""PIL twins of image processors that transformers ships only as torchvision backends.

This project does not depend on torchvision. Where a family's image processor exists only on torchvision
(Llama 4's), its twin here reproduces the documented behaviour on PIL and NumPy, and the loader uses it
when torchvision is missing (`processor_loading.py`). Resampling differs from torchvision's by rounding,
as transformers' own PIL backends do.
"""

from __future__ import annotations

import math

import numpy as np
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import PILImageResampling, SizeDict
from transformers.processing_utils import ImagesKwargs


class Llama4ImageProcessorKwargs(ImagesKwargs, total=False):
    max_patches: int
    resize_to_max_canvas: bool


def canvases(max_tiles: int, tile: int) -> list[tuple[int, int]]:
    """Every (height, width) canvas of whole tiles, from 1 to `max_tiles` tiles, grouped by aspect ratio in
    the order the ratios first appear from the most tiles down (the order that breaks ties between equals)."""
    by_ratio: dict[float, list[tuple[int, int]]] = {}
    for n in range(max_tiles, 0, -1):
        for rows in (r for r in range(1, n + 1) if n % r == 0):
            by_ratio.setdefault(rows / (n // rows), []).append((rows * tile, (n // rows) * tile))
    return [canvas for group in by_ratio.values() for canvas in group]


def best_canvas(height: int, width: int, options: list[tuple[int, int]], to_max: bool = False) -> tuple[int, int]:
    """The canvas an image fits best without distortion: the least upscaling that some canvas allows (the
    most, with `to_max`), else the least downscaling; among equal scales, the smallest area (least padding)."""
    scales = [min(h / height, w / width) for h, w in options]
    up = [s for s in scales if s >= 1]
    chosen = (max(up) if to_max else min(up)) if up else max(scales)
    tied = [i for i, s in enumerate(scales) if s == chosen]
    return options[min(tied, key=lambda i: options[i][0] * options[i][1])]  # the first of equal areas


def fit_inside(height: int, width: int, target_h: int, target_w: int) -> tuple[int, int]:
    """The largest size of the image's aspect ratio inside (target_h, target_w), the limiting side exact."""
    scale_w, scale_h = target_w / width, target_h / height
    if scale_w < scale_h:
        return max(min(math.floor(height * scale_w), target_h), 1), target_w
    return target_h, max(min(math.floor(width * scale_h), target_w), 1)


class Llama4ImageProcessorPil(PilBackend):
    """Llama 4's tiling: the image is resized without distortion into the best canvas of up to `max_patches`
    square tiles (upscaled only as far as one tile's side, unless `resize_to_max_canvas`), padded with 0
    at the bottom and right, normalised and cut into tiles row by row; an image of several tiles also gets
    the whole image resized to one tile (the global view) after them. `aspect_ratios` is (rows, columns)."""

    resample = PILImageResampling.BILINEAR
    image_mean = [0.5, 0.5, 0.5]
    image_std = [0.5, 0.5, 0.5]
    size = {"height": 336, "width": 336}
    do_resize = True
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True
    max_patches = 16
    resize_to_max_canvas = False
    valid_kwargs = Llama4ImageProcessorKwargs
    model_input_names = ["pixel_values"]

    def _preprocess(self, images, do_resize, size, resample, do_rescale, rescale_factor, do_normalize, image_mean,
                    image_std, max_patches, resize_to_max_canvas, return_tensors, **kwargs) -> BatchFeature:
        if size.height != size.width:
            raise ValueError("Llama 4 tiles are square: size height and width must be equal")
        tile = size.height
        options = canvases(max_patches, tile)
        pixels, ratios = [], []
        for image in images:  # [C, H, W]
            height, width = image.shape[-2:]
            canvas_h, canvas_w = best_canvas(height, width, options, resize_to_max_canvas)
            limit_h, limit_w = canvas_h, canvas_w
            if not resize_to_max_canvas:  # upscale no further than one tile's side
                limit_h, limit_w = min(max(height, tile), canvas_h), min(max(width, tile), canvas_w)
            new_h, new_w = fit_inside(height, width, limit_h, limit_w)
            resized = self.resize(image, SizeDict(height=new_h, width=new_w), resample=resample)
            canvas = np.zeros((resized.shape[0], canvas_h, canvas_w), dtype=resized.dtype)
            canvas[:, :new_h, :new_w] = resized
            canvas = self._scale(canvas, do_rescale, rescale_factor, do_normalize, image_mean, image_std)
            rows, cols = canvas_h // tile, canvas_w // tile
            tiles = [canvas[:, r * tile : (r + 1) * tile, c * tile : (c + 1) * tile] for r in range(rows) for c in range(cols)]
            if rows * cols > 1:
                whole = self.resize(image, SizeDict(height=tile, width=tile), resample=resample)
                tiles.append(self._scale(whole, do_rescale, rescale_factor, do_normalize, image_mean, image_std))
            pixels += tiles
            ratios.append([rows, cols])
        data = {"pixel_values": np.stack(pixels) if return_tensors else pixels, "aspect_ratios": np.array(ratios)}
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _scale(self, image, do_rescale, rescale_factor, do_normalize, mean, std):
        if do_rescale:
            image = self.rescale(image, rescale_factor)
        if do_normalize:
            image = self.normalize(image, mean, std)
        return image
