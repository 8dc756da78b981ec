"""PIL twins of image processors that transformers ships only as torchvision backends.

This project does not depend on torchvision. Where a family's image processor exists only on torchvision
(Llama 4's, Molmo 2's), its twin here reproduces that behaviour on PIL and NumPy, and the loader uses it
when torchvision is missing (`processor_loading.py`). Resampling differs from torchvision's by rounding,
as transformers' own PIL backends do.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import PILImageResampling, SizeDict
from transformers.processing_utils import ImagesKwargs


class _PilTwin(PilBackend):
    """What both twins share: bilinear resampling, RGB, rescaled to [0, 1] and normalised around 0.5."""

    resample = PILImageResampling.BILINEAR
    image_mean = [0.5, 0.5, 0.5]
    image_std = [0.5, 0.5, 0.5]
    do_resize = True
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True

    def _normalised(self, image: np.ndarray, do_rescale: bool, rescale_factor: float, do_normalize: bool, mean, std) -> np.ndarray:
        if do_rescale:
            image = self.rescale(image, rescale_factor)
        if do_normalize:
            image = self.normalize(image, mean, std)
        return image


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


class Llama4ImageProcessorPil(_PilTwin):
    """Llama 4's tiling: the image is resized without distortion into the best canvas of up to `max_patches`
    square tiles (upscaled only as far as one tile's side, unless `resize_to_max_canvas`), padded with 0
    at the bottom and right, normalised and cut into tiles row by row; an image of several tiles also gets
    the whole image resized to one tile (the global view) after them. `aspect_ratios` is (rows, columns)."""

    size = {"height": 336, "width": 336}
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
            canvas = self._normalised(canvas, do_rescale, rescale_factor, do_normalize, image_mean, image_std)
            rows, cols = canvas_h // tile, canvas_w // tile
            tiles = [canvas[:, r * tile : (r + 1) * tile, c * tile : (c + 1) * tile] for r in range(rows) for c in range(cols)]
            if rows * cols > 1:
                whole = self.resize(image, SizeDict(height=tile, width=tile), resample=resample)
                tiles.append(self._normalised(whole, do_rescale, rescale_factor, do_normalize, image_mean, image_std))
            pixels += tiles
            ratios.append([rows, cols])
        data = {"pixel_values": np.stack(pixels) if return_tensors else pixels, "aspect_ratios": np.array(ratios)}
        return BatchFeature(data=data, tensor_type=return_tensors)



class Molmo2ImageProcessorKwargs(ImagesKwargs, total=False):
    max_crops: int
    overlap_margins: list[int]
    patch_size: int
    pooling_size: list[int]


def molmo2_tiling(height: int, width: int, window: int, max_crops: int) -> tuple[int, int]:
    """(rows, columns) of crop windows for an image: the tilings of at most `max_crops` windows, by count then
    rows; the one needing the least upscaling, or, when every tiling must shrink the image, the least shrinking."""
    tilings = sorted(((h, w) for h in range(1, max_crops + 1) for w in range(1, max_crops + 1) if h * w <= max_crops),
                     key=lambda t: (t[0] * t[1], t[0]))
    # float32 like the reference, so that ties and comparisons with 1 fall the same way
    scales = [float(np.float32(min(np.float32(h * window) / np.float32(height), np.float32(w * window) / np.float32(width))))
              for h, w in tilings]
    if all(s < 1 for s in scales):
        return tilings[int(np.argmax(scales))]
    return tilings[int(np.argmin([s if s >= 1 else 1e10 for s in scales]))]


def pooling_windows(grid: np.ndarray, pool_h: int, pool_w: int) -> np.ndarray:
    """`[rows × cols, pool_h × pool_w]` patch indices grouped into pooling windows, the grid padded with -1
    (split evenly, the extra row or column after) to whole windows."""
    pad_h = -grid.shape[0] % pool_h
    pad_w = -grid.shape[1] % pool_w
    grid = np.pad(grid, ((pad_h // 2, (pad_h + 1) // 2), (pad_w // 2, (pad_w + 1) // 2)), constant_values=-1)
    rows, cols = grid.shape[0] // pool_h, grid.shape[1] // pool_w
    return grid.reshape(rows, pool_h, cols, pool_w).transpose(0, 2, 1, 3).reshape(rows * cols, pool_h * pool_w)


def to_patches(crop: np.ndarray, patch: int) -> np.ndarray:
    """`[n_patches, patch × patch × C]` of a `[S, S, C]` crop, patches row by row, pixels row by row."""
    size, _, channels = crop.shape
    n = size // patch
    return crop.reshape(n, patch, n, patch, channels).transpose(0, 2, 1, 3, 4).reshape(n * n, patch * patch * channels)


class Molmo2ImageProcessorPil(_PilTwin):
    """Molmo 2's crops: a low-resolution view (the image resized to one crop) and overlapping crops of the image
    resized to a canvas of windows (`max_crops` at most; crops overlap by `overlap_margins` patches, whose
    patches count once), each cut into patches; `image_token_pooling` groups patch indices into
    `pooling_size` windows (the low-resolution view's first), `image_grids` is (low-res rows, columns,
    high-res rows, columns) of pooled tokens."""

    valid_kwargs = Molmo2ImageProcessorKwargs
    model_input_names = ["pixel_values", "image_token_pooling", "image_grids", "image_num_crops"]
    size = {"height": 378, "width": 378}
    max_crops = 8
    overlap_margins = [4, 4]
    patch_size = 14
    pooling_size = [2, 2]

    def _preprocess(self, images, size, resample, do_rescale, rescale_factor, do_normalize, image_mean, image_std,
                    max_crops, overlap_margins, patch_size, pooling_size, return_tensors, **kwargs) -> BatchFeature:
        if size.height != size.width:
            raise ValueError(f"Molmo 2 crops are square: size height and width must be equal, not {size.height} and {size.width}")
        crop, (pool_h, pool_w) = size.height, pooling_size
        left, right = overlap_margins
        per_crop = (crop // patch_size) ** 2
        window = (crop // patch_size - left - right) * patch_size
        margins = (left + right) * patch_size
        pixels, pooled, grids, counts = [], [], [], []
        offset = 0
        for image in images:  # [C, H, W]
            height, width = image.shape[-2:]
            rows, cols = molmo2_tiling(height - margins, width - margins, window, max_crops)
            canvas_h, canvas_w = rows * window + margins, cols * window + margins
            canvas = self._scaled(image, canvas_h, canvas_w, resample, do_rescale, rescale_factor, do_normalize, image_mean, image_std)
            low = self._scaled(image, crop, crop, resample, do_rescale, rescale_factor, do_normalize, image_mean, image_std)
            crops = [low] + [canvas[:, r * window : r * window + crop, c * window : c * window + crop] for r in range(rows) for c in range(cols)]
            # each crop's patches, minus the margins it shares with its neighbours, laid out on the canvas
            side = crop // patch_size
            index = np.arange(rows * cols * per_crop).reshape(rows, cols, side, side)
            if left:
                index[1:, :, :left, :] = -1
                index[:, 1:, :, :left] = -1
            if right:
                index[:-1, :, -right:, :] = -1
                index[:, :-1, :, -right:] = -1
            index = index.transpose(0, 2, 1, 3).reshape(-1)
            high = index[index >= 0].reshape(canvas_h // patch_size, canvas_w // patch_size)
            high_windows = pooling_windows(high, pool_h, pool_w)
            low_windows = pooling_windows(np.arange(per_crop).reshape(side, side), pool_h, pool_w)
            windows = np.concatenate([low_windows, np.where(high_windows >= 0, high_windows + per_crop, -1)])
            pooled.append(np.where(windows >= 0, windows + offset, -1))
            pixels.append(np.stack([to_patches(c.transpose(1, 2, 0), patch_size) for c in crops]))
            grids.append([-(-side // pool_h), -(-side // pool_w), -(-high.shape[0] // pool_h), -(-high.shape[1] // pool_w)])
            counts.append(len(crops))
            offset += len(crops) * per_crop
        data = {"pixel_values": np.concatenate(pixels), "image_token_pooling": np.concatenate(pooled),
                "image_grids": np.array(grids, dtype=np.int64), "image_num_crops": np.array(counts, dtype=np.int64)}
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _scaled(self, image, height, width, resample, do_rescale, rescale_factor, do_normalize, mean, std):
        # bilinear without antialiasing, in float, rounded back to bytes: Molmo 2's own resize (PIL's bilinear
        # antialiases when it shrinks, and the low-resolution view nearly always shrinks)
        pixels = torch.from_numpy(np.ascontiguousarray(image)).float()[None]
        resized = F.interpolate(pixels, size=(height, width), mode="bilinear", align_corners=False, antialias=False)[0]
        if not np.issubdtype(image.dtype, np.floating):
            resized = resized.round().clamp(0, 255)
        resized = resized.numpy().astype(image.dtype)
        return self._normalised(resized, do_rescale, rescale_factor, do_normalize, mean, std)
