"""Internals of the MViTv2 detection backbone that the conformance suite reaches only through the module: the 2-D
relative-position row index (d2-spec §4.5) and the window partition (d2-spec §4.4 items 3 and 5), reference and
fast, against hand derivations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fast.mvit_det import attention as fast_attention
from reference.mvit_det import rel_pos as ref_rel_pos
from reference.mvit_det.window import partition, unpartition

SIZES = [(q, k) for q in (1, 2, 3, 7, 13, 14, 25, 28, 38, 56) for k in (1, 2, 4, 7, 10, 14, 19, 28)]


def d2_index(q: int, k: int) -> np.ndarray:
    """d2-spec §4.5 in float32, in detectron2's order: (i max(k/q, 1)) - (j max(q/k, 1)) + (k - 1) max(q/k, 1)."""
    qr, kr = np.float32(max(k / q, 1.0)), np.float32(max(q / k, 1.0))
    i = np.arange(q, dtype=np.float32)[:, None] * qr
    j = np.arange(k, dtype=np.float32)[None, :] * kr
    return ((i - j) + np.float32((k - 1) * max(q / k, 1.0))).astype(np.int64)  # astype truncates toward zero


@pytest.mark.parametrize("index", [ref_rel_pos.rel_pos_index, fast_attention.rel_pos_index], ids=["reference", "fast"])
def test_rel_pos_index_is_detectron2s_rule(index):
    for q, k in SIZES:
        got = index(q, k, torch.device("cpu")).numpy()
        np.testing.assert_array_equal(got, d2_index(q, k), err_msg=f"q={q} k={k}")
        assert got.min() >= 0 and got.max() <= 2 * max(q, k) - 2  # inside a 2 max(q, k) - 1 row table


def test_rel_pos_index_worked_example():
    """q = 2 queries, k = 4 keys: q_ratio 2, k_ratio 1, offset 3 -> rows [[3, 2, 1, 0], [5, 4, 3, 2]]."""
    assert ref_rel_pos.rel_pos_index(2, 4).tolist() == [[3, 2, 1, 0], [5, 4, 3, 2]]


def test_window_partition_round_trip_and_zero_padding():
    x = torch.arange(1 * 5 * 7 * 2, dtype=torch.float32).reshape(1, 5, 7, 2) + 1.0  # no zeros in the map
    windows, padded = partition(x, 3)
    assert padded == (6, 9) and windows.shape == (2 * 3, 3, 3, 2)
    # row-major tiles: tile 1 is rows 0-2, columns 3-5; the last tile holds row 5 and column 7-8 padding
    assert torch.equal(windows[1], x[0, 0:3, 3:6])
    assert torch.equal(windows[5][:2, :1], x[0, 3:5, 6:7]) and not windows[5][2].any() and not windows[5][:, 1:].any()
    assert torch.equal(unpartition(windows, 3, padded, (5, 7)), x)
    fast_windows, nh, nw = fast_attention.to_windows(x.reshape(1, 5, 7, 1, 2), 3)
    assert (nh, nw) == (2, 3)
    assert torch.equal(fast_windows.reshape(6, 3, 3, 2), windows)
    back = fast_attention.from_windows(fast_windows, 3, 1, nh, nw, (5, 7))
    assert torch.equal(back.reshape(1, 5, 7, 2), x)
