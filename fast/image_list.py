"""Batching images of different sizes, fast: one channels-last allocation, only the padding is filled.

Same contract as reference/image_list.py (d2-spec §1.1, INPUT.PADDING): pad bottom/right with pad_value to
ceil(max / size_divisibility) * size_divisibility and return the unpadded sizes. The batch comes back in
channels-last memory format (same shape and values), which is the layout fast/resnet.py runs in, so the
backbone does not copy it again.

``size_bounds`` gives the (w, h, w, h) clipping bounds of a batch's unpadded sizes on the boxes' device without a
host synchronisation (the proposals' and the ROI heads' clipping).

Shape legend: N images, C channels, Hi, Wi the size of image i, H, W the padded batch size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from spec import validate as v
from spec.config import BASE_RCNN_FPN

_INPUT = BASE_RCNN_FPN.input


def pad_images(images: Sequence[Tensor], size_divisibility: int = _INPUT.size_divisibility,
               pad_value: float = _INPUT.pad_value) -> tuple[Tensor, list[tuple[int, int]]]:
    """list of [C, Hi, Wi] -> ([N, C, H, W] channels-last, [(Hi, Wi), ...])."""
    image_sizes = v.check_pad_args(images, size_divisibility)
    max_h = max(h for h, _ in image_sizes)
    max_w = max(w for _, w in image_sizes)
    if size_divisibility > 1:
        d = size_divisibility
        max_h, max_w = -(-max_h // d) * d, -(-max_w // d) * d
    first = images[0]
    batch = torch.empty((len(images), first.shape[0], max_h, max_w), dtype=first.dtype, device=first.device,
                        memory_format=torch.channels_last)
    pad_value = float(pad_value)
    for i, img in enumerate(images):  # one copy per image; the pad region is written once, never twice
        h, w = image_sizes[i]
        batch[i, :, :h, :w].copy_(img)
        batch[i, :, :h, w:].fill_(pad_value)
        batch[i, :, h:, :].fill_(pad_value)
    return batch, image_sizes


def size_bounds(image_sizes: Sequence[Sequence[int] | Tensor] | Tensor, like: Tensor) -> Tensor:
    """N (h, w) sizes -> [N, 4] (w, h, w, h) in like's dtype and device, with no blocking host-to-device copy.

    image_sizes is an [N, 2] tensor (on like's device: no copy at all, which keeps CUDA-graph capture free of
    host-to-device copies) or a list of (h, w) pairs, each a sequence of numbers or a [2] tensor. A list of
    numbers is copied in one go, asynchronously through pinned memory on CUDA; tensor entries are stacked on
    the device, never read on the host.
    """
    if isinstance(image_sizes, Tensor):
        hw = image_sizes.to(device=like.device, dtype=like.dtype).reshape(-1, 2)
    elif any(isinstance(s, Tensor) for s in image_sizes):
        hw = torch.stack([torch.as_tensor(s, dtype=like.dtype, device=like.device).reshape(2)
                          for s in image_sizes])
    else:
        rows = [[float(h), float(w)] for h, w in image_sizes]
        hw = torch.tensor(rows, dtype=like.dtype).reshape(len(rows), 2)
        if like.device.type == "cuda":  # pinned + non_blocking: an async copy, not a synchronising one
            hw = hw.pin_memory().to(like.device, non_blocking=True)
        else:
            hw = hw.to(like.device)
    return hw.flip(1).repeat(1, 2)  # (w, h, w, h); a list index (hw[:, [1, 0, 1, 0]]) would copy and sync


