"""Compute precision: where a model may run in bf16 / fp16 and where it must not.

Clauses (spec/clauses.py):
- PRECISION.AUTOCAST: with ``autocast_dtype`` set, the parameterised compute (the ResNet + FPN backbone, the RPN
  head's convs, the box head and predictor, MViT's blocks) runs under ``torch.autocast`` in that dtype:
  convolutions and matrix products in the low dtype, normalisation statistics and softmax in float32 (autocast's
  own op lists).
- PRECISION.GEOMETRY_FP32: everything that decides a discrete outcome runs with autocast switched off, on float32
  (float64 stays float64): anchors, box decoding and encoding, IoU, matching, NMS, proposal ranking, FPN level
  assignment, ROIAlign's sampling coordinates and bilinear weights, detection scores. A head's low-precision
  output is widened to float32 (``widen``) before any of these reads it.
- PRECISION.OUTPUT_FP32: detections (boxes, scores) and MViT logits come back in float32.

``autocast_dtype`` None (the default) changes nothing: the model runs in its parameters' dtype.
Shape legend: none (dtype bookkeeping only).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor

LOW_PRECISION = (torch.bfloat16, torch.float16)
AUTOCAST_DEVICES = ("cpu", "cuda")
# the command line's --dtype names -> autocast_dtype (fp32: no autocast, the model's own float32)
DTYPE_CHOICES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_autocast_dtype(dtype: object) -> torch.dtype | None:
    """None, torch.bfloat16 or torch.float16; anything else is a ValueError naming the choices."""
    if dtype is None or dtype in LOW_PRECISION:
        return dtype  # type: ignore[return-value]
    raise ValueError(f"autocast_dtype must be None, torch.bfloat16 or torch.float16, got {dtype!r}")


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """PRECISION.AUTOCAST: torch.autocast(device, dtype) for a low dtype on CPU / CUDA, else a no-op."""
    if dtype is None or device.type not in AUTOCAST_DEVICES:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def active_autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The low dtype autocast runs matmuls / convs in on this device right now, or None (autocast off, or a device
    without autocast such as meta)."""
    if device.type not in AUTOCAST_DEVICES or not torch.is_autocast_enabled(device.type):
        return None
    return torch.get_autocast_dtype(device.type)


@contextlib.contextmanager
def full_precision(device: torch.device) -> Iterator[None]:
    """PRECISION.GEOMETRY_FP32: autocast switched off (inside an autocast region or not)."""
    if active_autocast_dtype(device) is not None:
        with torch.autocast(device.type, enabled=False):
            yield
    else:
        yield


def widen(t: Tensor) -> Tensor:
    """A bf16 / fp16 tensor as float32; float32 and float64 unchanged (PRECISION.GEOMETRY_FP32)."""
    return t.float() if t.dtype in LOW_PRECISION else t


def geometry_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype geometry runs in next to features of ``dtype``: float64 for float64, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32
