"""Multi-view video inference: N uniform temporal clips x M spatial crops, class probabilities averaged.

The seed's accuracy/complexity trade-off: MViT-B 16x4 is evaluated on Kinetics-400 with 5 clips x 1 crop
(``spec.mvit`` holds the numbers). Cost is reported as GFLOPs x views.

Shape legend: T frames, H x W frame size, C channels (3), V = N x M views, K classes.
A video is a tensor [T, H, W, C] (the layout of decoded frames and of .npy files), T, H, W >= 1, C = 3, holding
either uint8 pixels 0-255 (divided by 255) or floating-point values in [0, 1] (used as they are, as float32).
Anything else is refused by :func:`video_to_unit` with a one-line ValueError naming the dtype or the value range:
other integer dtypes (uint16 included: convert it to uint8, or to float / 65535, yourself), bool, complex, float
values outside [0, 1] (e.g. 0-255 pixels stored as float: divide by 255), and NaN / infinite values.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class ViewSpec:
    """How views are cut from a video. Defaults come from the caller's config (spec.mvit)."""

    num_clips: int
    num_crops: int
    clip_len: int
    frame_stride: int
    crop_size: int
    short_side: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self) -> None:
        for name in ("num_clips", "num_crops", "clip_len", "frame_stride", "crop_size", "short_side"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_crops not in (1, 3):
            raise ValueError(f"num_crops must be 1 (centre) or 3 (both ends and centre), got {self.num_crops}")
        if self.short_side < self.crop_size:
            raise ValueError(f"short_side {self.short_side} is smaller than crop_size {self.crop_size}")


def parse_views(text: str) -> tuple[int, int]:
    """'5x1' -> (5, 1): clips x crops."""
    try:
        clips, crops = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"views must look like CLIPSxCROPS, e.g. 5x1, got {text!r}") from None
    if clips < 1 or crops < 1:
        raise ValueError(f"views must be positive, got {text!r}")
    return clips, crops


def clip_indices(num_frames: int, num_clips: int, clip_len: int, frame_stride: int) -> Tensor:
    """[num_clips, clip_len] frame indices of uniformly spaced clips.

    A clip spans (clip_len - 1) * frame_stride + 1 frames. Clip starts are spread evenly over
    [0, T - span] (rounded down); in a video shorter than one span every clip starts at 0 and indices past
    the end repeat the last frame.
    """
    if num_frames < 1:
        raise ValueError("the video has no frames")
    span = (clip_len - 1) * frame_stride + 1
    last_start = max(num_frames - span, 0)
    if num_clips == 1:
        starts = torch.tensor([last_start // 2])
    else:
        starts = torch.floor(torch.linspace(0, last_start, num_clips, dtype=torch.float64)).long()
    idx = starts[:, None] + torch.arange(clip_len)[None, :] * frame_stride
    return idx.clamp_(max=num_frames - 1)


def _resize_short_side(frames: Tensor, short_side: int) -> Tensor:
    """[T, C, H, W] float -> [T, C, H', W'] with min(H', W') = short_side (bilinear, aspect kept)."""
    h, w = frames.shape[-2:]
    scale = short_side / min(h, w)
    size = (max(short_side, round(h * scale)), max(short_side, round(w * scale)))
    return F.interpolate(frames, size=size, mode="bilinear", align_corners=False, antialias=True)


def crop_offsets(length: int, crop: int, num_crops: int) -> list[int]:
    """Offsets along one axis: the centre for 1 crop; start, centre and end for 3."""
    centre = (length - crop) // 2
    return [centre] if num_crops == 1 else [0, centre, length - crop]


_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def video_to_unit(video: Tensor, channels: int = 3, name: str = "video") -> Tensor:
    """Check a [T, H, W, C] video and return it as float32 in [0, 1] (see the module docstring for the rules).

    Raises ValueError starting with ``name`` (e.g. the file) for a wrong rank / channel count, an empty axis, a
    dtype other than uint8 or floating point, NaN / infinite values, or float values outside [0, 1].
    """
    if not isinstance(video, Tensor) or video.dim() != 4 or video.shape[-1] != channels:
        shape = list(video.shape) if isinstance(video, Tensor) else type(video).__name__
        raise ValueError(f"{name}: a video must be a [T, H, W, {channels}] array (frames, height, width, RGB), "
                         f"got {shape}")
    if 0 in video.shape[:3]:
        raise ValueError(f"{name}: the video is empty: [T, H, W, C] = {list(video.shape)} (every axis needs >= 1)")
    if video.dtype == torch.uint8:
        return video.float() / 255.0
    if video.dtype not in _FLOATS:
        hint = " (convert it to uint8, or to float divided by 65535)" if video.dtype == torch.uint16 else ""
        raise ValueError(f"{name}: a video must be uint8 (0-255) or floating point in [0, 1], got dtype "
                         f"{str(video.dtype).removeprefix('torch.')}{hint}")
    finite = torch.isfinite(video)
    if not bool(finite.all()):
        nan = int(torch.isnan(video).sum())
        raise ValueError(f"{name}: the video holds {nan} NaN and {video.numel() - int(finite.sum()) - nan} infinite "
                         "values")
    low, high = float(video.min()), float(video.max())
    if low < 0.0 or high > 1.0:
        hint = " (0-255 pixels stored as float: divide by 255, or store uint8)" if high <= 255.0 else ""
        raise ValueError(f"{name}: a float video must hold values in [0, 1], got values in [{low:g}, {high:g}]{hint}")
    return video.float()


def make_views(video: Tensor, spec: ViewSpec, *, name: str = "video") -> Tensor:
    """[T, H, W, C] video -> [V, C, clip_len, crop, crop] normalized clips, clip-major then crop.

    The video must be uint8 (0-255) or float in [0, 1] (:func:`video_to_unit`; ``name`` starts its errors).
    """
    frames = video_to_unit(video, len(spec.mean), name).permute(0, 3, 1, 2)  # [T, C, H, W] float32 in [0, 1]
    frames = _resize_short_side(frames, spec.short_side)
    h, w = frames.shape[-2:]
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    views = []
    along_w = w >= h  # crops slide along the long side
    for idx in clip_indices(video.shape[0], spec.num_clips, spec.clip_len, spec.frame_stride):
        clip = (frames[idx] - mean) / std  # [clip_len, C, H, W]
        for off in crop_offsets(w if along_w else h, spec.crop_size, spec.num_crops):
            y = off if not along_w else (h - spec.crop_size) // 2
            x = off if along_w else (w - spec.crop_size) // 2
            crop = clip[:, :, y : y + spec.crop_size, x : x + spec.crop_size]
            views.append(crop.permute(1, 0, 2, 3))  # [C, clip_len, crop, crop]
    return torch.stack(views)


@torch.no_grad()
def classify_views(model: Callable[[Tensor], Tensor], views: Tensor, batch_size: int = 1,
                   progress: Callable[[int, int], None] | None = None) -> tuple[Tensor, Tensor]:
    """Run the model on every view: (logits [V, K], probabilities [K] = mean over views of softmax)."""
    logits = []
    for start in range(0, views.shape[0], batch_size):
        logits.append(model(views[start : start + batch_size]).float())
        if progress is not None:
            progress(min(start + batch_size, views.shape[0]), views.shape[0])
    out = torch.cat(logits)
    return out, out.softmax(dim=1).mean(dim=0)


def top_k(probabilities: Tensor, k: int = 5, names: Sequence[str] | None = None) -> list[tuple[int, str, float]]:
    """The k most probable classes as (index, name, probability)."""
    values, indices = probabilities.topk(min(k, probabilities.numel()))
    return [(int(i), names[int(i)] if names else str(int(i)), float(p)) for p, i in zip(values, indices)]


def cost_gflops(gmacs_per_view: float, num_views: int) -> str:
    """'70.5 GFLOPs x 5 views = 352.5' (GFLOPs counted as multiply-adds, the literature's convention)."""
    return f"{gmacs_per_view:.1f} GFLOPs x {num_views} views = {gmacs_per_view * num_views:.1f}"
