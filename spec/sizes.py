"""Sizes the spec defines by formula: the test-time resize (RCNN.RESIZE).

Kept here, not in reference/ and fast/, because it is arithmetic on Python numbers that both implementations
(and every port) must reproduce exactly, rounding included.
"""

from __future__ import annotations

import math

from spec.config import BASE_RCNN_FPN

_INPUT = BASE_RCNN_FPN.input


def resized_size(height: int, width: int, short_edge: int = _INPUT.min_size_test,
                 max_size: int = _INPUT.max_size_test, rounding: str = _INPUT.resize_rounding) -> tuple[int, int]:
    """(h, w) -> the test-time size.                                                       # RCNN.RESIZE

    "half_up" (detectron2 ResizeShortestEdge.get_output_shape): scale = S / min(h, w); if the long side would
    exceed M, shrink both sides by M / long side; then int(x + 0.5), in exactly this order of float operations
    (427x640 -> 800x1199, 500x1000 -> 667x1333: 666.5 rounds up).
    "floor" (torchvision GeneralizedRCNNTransform): one scale min(S / short, M / long), size floor(x * scale).
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {(height, width)}")
    if short_edge <= 0 or max_size <= 0:
        raise ValueError(f"short_edge and max_size must be positive, got {short_edge} and {max_size}")
    if rounding == "half_up":
        scale = short_edge / min(height, width)
        newh, neww = height * scale, width * scale
        if max(newh, neww) > max_size:
            shrink = max_size / max(newh, neww)
            newh, neww = newh * shrink, neww * shrink
        return int(newh + 0.5), int(neww + 0.5)
    if rounding == "floor":
        scale = min(short_edge / min(height, width), max_size / max(height, width))
        return math.floor(height * scale), math.floor(width * scale)
    raise ValueError(f"rounding must be 'half_up' or 'floor', got {rounding!r}")
