"""Test-time preprocessing (resize, normalize, pad) into one channels-last batch. Same contract as
reference/preprocess.py (d2-spec §1.1; torchvision's GeneralizedRCNNTransform for the torchvision profile).

Normalization and padding are fused: each image is normalized straight into its slot of a preallocated
channels-last batch whose padding is filled once with 0 (the normalized pad value). The loop is over images.

Shape legend: an image is [C, H, W]; N images; H, W the padded batch size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from spec.config import BASE_RCNN_FPN, InputConfig
from spec.sizes import resized_size

_INPUT = BASE_RCNN_FPN.input


def _resize(x: Tensor, size: tuple[int, int], interpolation: str, integral: bool) -> Tensor:
    """[C, H, W] float -> [C, h, w]; integral inputs are rounded back to integers (as PIL does for uint8)."""
    if tuple(x.shape[1:]) == tuple(size):
        return x
    if interpolation not in ("bilinear_antialias", "bilinear"):
        raise ValueError(f"interpolation must be 'bilinear_antialias' or 'bilinear', got {interpolation!r}")
    out = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False,
                        antialias=interpolation == "bilinear_antialias")[0]
    return out.round_().clamp_(0, 255) if integral else out


def preprocess(images: Sequence[Tensor], cfg: InputConfig = _INPUT, resize: bool = True,
               dtype: torch.dtype | None = None) -> tuple[Tensor, list[tuple[int, int]], list[tuple[int, int]]]:
    """N images [3, Hi, Wi] -> (channels-last batch [N, 3, H, W], network sizes, original sizes)."""
    if not isinstance(images, (list, tuple)) or not images:
        raise ValueError("images must be a non-empty list of [3, H, W] tensors")
    c = len(cfg.pixel_mean)
    for i, img in enumerate(images):
        if not isinstance(img, Tensor) or img.dim() != 3 or img.shape[0] != c:
            shape = list(img.shape) if isinstance(img, Tensor) else type(img).__name__
            raise ValueError(f"images[{i}] must be a [{c}, H, W] tensor, got {shape}")
    dtype = dtype or (images[0].dtype if images[0].is_floating_point() else torch.float32)
    device = images[0].device
    mean = torch.tensor(cfg.pixel_mean, dtype=dtype, device=device)[:, None, None]
    inv_std = 1.0 / torch.tensor(cfg.pixel_std, dtype=dtype, device=device)[:, None, None]
    originals = [(int(img.shape[1]), int(img.shape[2])) for img in images]
    sizes = [resized_size(h, w, cfg.min_size_test, cfg.max_size_test, cfg.resize_rounding) if resize else (h, w)
             for h, w in originals]
    d = max(cfg.size_divisibility, 1)
    max_h = -(-max(h for h, _ in sizes) // d) * d
    max_w = -(-max(w for _, w in sizes) // d) * d
    batch = torch.empty((len(images), c, max_h, max_w), dtype=dtype, device=device,
                        memory_format=torch.channels_last)
    for i, (img, (h, w)) in enumerate(zip(images, sizes)):
        x = img.to(dtype)
        integral = not img.is_floating_point()
        if cfg.normalize_before_resize:
            x = _resize((x - mean) * inv_std, (h, w), cfg.resize_interpolation, False)
            batch[i, :, :h, :w].copy_(x)
        else:
            x = _resize(x, (h, w), cfg.resize_interpolation, integral)
            batch[i, :, :h, :w].copy_((x - mean) * inv_std)
        batch[i, :, :h, w:].fill_(cfg.pad_value)
        batch[i, :, h:, :].fill_(cfg.pad_value)
    return batch, sizes, originals


def scale_boxes(boxes: Tensor, from_size: tuple[int, int], to_size: tuple[int, int]) -> Tensor:
    """Boxes [G, 4] at from_size (h, w) -> at to_size."""
    sx = to_size[1] / from_size[1]
    sy = to_size[0] / from_size[0]
    return boxes * torch.tensor([sx, sy, sx, sy], dtype=boxes.dtype, device=boxes.device)
