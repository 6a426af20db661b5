"""Test-time preprocessing: resize the shortest edge, normalize, pad; and the inverse box rescale.

Spec: d2-spec §1.1 (ResizeShortestEdge, MODEL.PIXEL_MEAN/STD, size divisibility 32); torchvision's
GeneralizedRCNNTransform for the torchvision profile.

detectron2 profile (the spec):
  1. new size: scale = S / min(h, w); if max(h, w) * scale > M, scale = M / max(h, w);       # RCNN.RESIZE
     newh = int(h * scale + 0.5), neww = int(w * scale + 0.5)  (427x640 -> 800x1199, 500x1000 -> 667x1333).
  2. resample with antialiased bilinear (detectron2 uses PIL BILINEAR on uint8 images, which antialiases
     when shrinking; torch's antialiased bilinear follows it, to about one grey level).
  3. normalize (x - mean) / std per channel, in the profile's channel order (BGR, 0-255, std 1).  # RCNN.NORMALIZE
  4. pad bottom/right with 0 to a multiple of 32 (reference.image_list.pad_images).
torchvision profile: normalize first (RGB 0-1, ImageNet mean/std), then resize to floor(h * scale) with plain
bilinear (align_corners False), then pad.

Shape legend: an image is [C, H, W] (C = 3 in the profile's channel order); N images.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from reference.image_list import pad_images
from spec.config import BASE_RCNN_FPN, InputConfig
from spec.sizes import resized_size

_INPUT = BASE_RCNN_FPN.input


def resize_image(image: Tensor, size: tuple[int, int], interpolation: str = _INPUT.resize_interpolation) -> Tensor:
    """[C, H, W] -> [C, h, w] float. uint8 input stays on its scale and is rounded back to integers, as PIL does."""
    if image.dim() != 3:
        raise ValueError(f"image must be [C, H, W], got shape {list(image.shape)}")
    if tuple(image.shape[1:]) == tuple(size):
        return image.to(torch.float32) if not image.is_floating_point() else image
    x = image[None].to(torch.float32) if not image.is_floating_point() else image[None]
    if interpolation == "bilinear_antialias":
        out = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    elif interpolation == "bilinear":
        out = F.interpolate(x, size=size, mode="bilinear", align_corners=False)[0]
    else:
        raise ValueError(f"interpolation must be 'bilinear_antialias' or 'bilinear', got {interpolation!r}")
    if not image.is_floating_point():  # PIL resamples uint8 to uint8
        out = out.round().clamp(0, 255)
    return out


def normalize(image: Tensor, pixel_mean: Sequence[float], pixel_std: Sequence[float]) -> Tensor:
    """(x - mean) / std per channel.  # RCNN.NORMALIZE"""
    if image.shape[0] != len(pixel_mean):
        raise ValueError(f"image has {image.shape[0]} channels; the profile's mean has {len(pixel_mean)}")
    x = image if image.is_floating_point() else image.to(torch.float32)
    mean = torch.tensor(pixel_mean, dtype=x.dtype, device=x.device)[:, None, None]
    std = torch.tensor(pixel_std, dtype=x.dtype, device=x.device)[:, None, None]
    return (x - mean) / std


def preprocess(images: Sequence[Tensor], cfg: InputConfig = _INPUT, resize: bool = True,
               dtype: torch.dtype | None = None) -> tuple[Tensor, list[tuple[int, int]], list[tuple[int, int]]]:
    """N images [3, Hi, Wi] in the profile's format -> (batch [N, 3, H, W], network sizes, original sizes).

    The network size of an image is its resized, unpadded size (boxes are clipped to it); original sizes are
    the inputs' sizes (detections are rescaled to them). dtype: the batch's dtype (None: the images' own).
    """
    if not isinstance(images, (list, tuple)) or not images:
        raise ValueError("images must be a non-empty list of [3, H, W] tensors")
    out = []
    originals = []
    for i, img in enumerate(images):
        if not isinstance(img, Tensor) or img.dim() != 3 or img.shape[0] != len(cfg.pixel_mean):
            shape = list(img.shape) if isinstance(img, Tensor) else type(img).__name__
            raise ValueError(f"images[{i}] must be a [{len(cfg.pixel_mean)}, H, W] tensor, got {shape}")
        h, w = int(img.shape[1]), int(img.shape[2])
        originals.append((h, w))
        size = resized_size(h, w, cfg.min_size_test, cfg.max_size_test, cfg.resize_rounding) if resize else (h, w)
        if cfg.normalize_before_resize:
            x = resize_image(normalize(img, cfg.pixel_mean, cfg.pixel_std), size, cfg.resize_interpolation)
        else:
            x = normalize(resize_image(img, size, cfg.resize_interpolation), cfg.pixel_mean, cfg.pixel_std)
        out.append(x)
    batch, sizes = pad_images(out, cfg.size_divisibility, cfg.pad_value)
    return (batch if dtype is None else batch.to(dtype)), sizes, originals


def scale_boxes(boxes: Tensor, from_size: tuple[int, int], to_size: tuple[int, int]) -> Tensor:
    """Boxes [G, 4] at from_size (h, w) -> at to_size: x * (to_w / from_w), y * (to_h / from_h)."""
    sx = to_size[1] / from_size[1]
    sy = to_size[0] / from_size[0]
    scale = torch.tensor([sx, sy, sx, sy], dtype=boxes.dtype, device=boxes.device)
    return boxes * scale
