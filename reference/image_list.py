"""Batching images of different sizes: pad bottom/right to a common size divisible by 32.

Spec: d2-spec §1.1 (INPUT.PADDING); detectron2 structures/image_list.py ImageList.from_tensors.

- The batch size is H = ceil(max_i Hi / d) * d and W = ceil(max_i Wi / d) * d, with d = size_divisibility
  (32, the stride of res5, so every level of the pyramid halves exactly).
- Image i sits in the top-left corner; the rest (bottom rows, right columns) is filled with pad_value (0.0,
  applied after normalization, so padded pixels equal the mean colour).
- The unpadded sizes (Hi, Wi) are returned, because boxes are later clipped to them, not to the padded size.

Shape legend: N images, C channels, Hi, Wi the size of image i, H, W the padded batch size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from spec import validate as v
from spec.config import BASE_RCNN_FPN

_INPUT = BASE_RCNN_FPN.input


def pad_images(images: Sequence[Tensor], size_divisibility: int = _INPUT.size_divisibility,
               pad_value: float = _INPUT.pad_value) -> tuple[Tensor, list[tuple[int, int]]]:
    """list of [C, Hi, Wi] -> ([N, C, H, W], [(Hi, Wi), ...]).  # INPUT.PADDING

    size_divisibility <= 1 pads only to the largest image. Errors: an empty list, non-tensors, tensors that are
    not 3-D, different channel counts, dtypes or devices.
    """
    image_sizes = v.check_pad_args(images, size_divisibility)
    max_h = max(h for h, _ in image_sizes)
    max_w = max(w for _, w in image_sizes)
    if size_divisibility > 1:
        max_h = math.ceil(max_h / size_divisibility) * size_divisibility
        max_w = math.ceil(max_w / size_divisibility) * size_divisibility
    first = images[0]
    batch = torch.full((len(images), first.shape[0], max_h, max_w), float(pad_value), dtype=first.dtype,
                       device=first.device)
    for i, img in enumerate(images):
        h, w = image_sizes[i]
        batch[i, :, :h, :w] = img  # top-left corner; bottom rows and right columns keep pad_value
    return batch, image_sizes


