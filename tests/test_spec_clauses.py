"""Spec-only checks of the MViT configuration and pooling arithmetic (spec/mvit.py), with their clause markers.

Moved here from the port-facing suite (detspec/conformance/test_mvit.py): they use no implementation (no ``impl``
fixture), so no port can fail them and they must not count as a port's result in ``detspec check``. They still
run with ``python -m pytest`` (testpaths includes tests/) and appear in a clause report in the "(spec)" column.
The port-facing counterparts (token counts, pooled lengths and widths of a real model) stay in the suite.
"""

from __future__ import annotations

import math

import pytest

from spec.mvit import MVIT_B_16, MVIT_B_16X4, MVIT_KNOWN, MVIT_V2_S, pooled_grid, pooled_length


def _stage_ends(cfg) -> list[int]:
    """Index of the last block of each stage (as in detspec/conformance/test_mvit.py)."""
    return [s - 1 for s in cfg.stage_starts] + [cfg.depth - 1]


@pytest.mark.clause("MVIT.POOLED_LENGTH")
def test_pooled_length_known_values():
    # patch embedding: T (16 + 2 - 3)//2 + 1 = 8; H (224 + 6 - 7)//4 + 1 = 56
    assert pooled_grid((16, 224, 224), (3, 7, 7), (2, 4, 4), (1, 3, 3)) == (8, 56, 56)
    # Q pooling k=3, s=2, p=1: (56 + 2 - 3)//2 + 1 = 28, then 14, then (14 - 1)//2 + 1 = 7; 7 -> 4 (odd length)
    assert [pooled_length(n, 3, 2, 1) for n in (56, 28, 14, 7)] == [28, 14, 7, 4]
    # K/V pooling k=3, s=8, p=1 on 56: (56 - 1)//8 + 1 = 7; the skip max-pool k=3, s=2, p=1 agrees with Q's
    assert pooled_length(56, 3, 8, 1) == 7 and pooled_length(57, 3, 2, 1) == 29
    assert pooled_length(0, 3, 2, 1) == 0  # an empty axis stays empty: an error for the model


@pytest.mark.clause("MVIT.TOKEN_COUNTS", "MVIT.CHANNELS_GROW")
def test_mvit_b_table():
    c = MVIT_B_16X4
    assert c.token_counts() == MVIT_KNOWN.token_counts_b16x4 == (25089, 6273, 1569, 393)
    assert c.depth == 16 and c.stage_starts == (1, 3, 14)
    assert [b.num_heads for b in c.blocks] == [1, 2, 2] + [4] * 11 + [8, 8]
    # torchvision's layout: the last block of a stage widens (its MLP fc2 and the skip projection)
    assert [b.dim_in for b in c.blocks] == [96, 192, 192] + [384] * 11 + [768, 768]
    assert [b.dim_out for b in c.blocks] == [192, 192, 384] + [384] * 10 + [768, 768, 768]
    assert {b.head_dim for b in c.blocks} == {96}
    assert [b.index for b in c.blocks if b.q_pooled] == [1, 3, 14]
    assert all(b.stride_q == (1, 2, 2) and b.kernel_q == (3, 3, 3) for b in c.blocks if b.q_pooled)
    assert all(b.kernel_q is None for b in c.blocks if not b.q_pooled)
    kv = [b.stride_kv for b in c.blocks]
    assert kv == [(1, 8, 8)] + [(1, 4, 4)] * 2 + [(1, 2, 2)] * 11 + [(1, 1, 1)] * 2  # adaptive from (1, 8, 8)
    assert set(c.kv_grids()) == {(8, 7, 7), (8, 14, 14)}  # K/V keep (about) one resolution throughout
    grids = c.token_grids()
    assert [grids[e + 1] for e in _stage_ends(c)] == [(8, 56, 56), (8, 28, 28), (8, 14, 14), (8, 7, 7)]
    # capacity: a stage's channels x tokens is half the previous stage's (2x channels, 1/4 tokens)
    assert c.stage_dims == (96, 192, 384, 768) and c.stage_heads == (1, 2, 4, 8)
    caps = [dim * math.prod(grids[e + 1]) for dim, e in zip(c.stage_dims, _stage_ends(c))]
    assert all(b * 2 == a for a, b in zip(caps, caps[1:]))
    v2 = MVIT_V2_S  # v2 widens at the first block of the next stage, in attention
    assert [b.dim_in for b in v2.blocks][:4] == [96, 96, 192, 192] and [b.dim_out for b in v2.blocks][:4] == [
        96, 192, 192, 384]
    assert v2.rel_pos_lengths()[0] == (111, 15) and v2.rel_pos_lengths()[-1] == (13, 15)


def test_every_mvit_config_number_cites_a_source():
    from dataclasses import fields

    for cfg in (MVIT_B_16X4, MVIT_B_16, MVIT_V2_S):
        uncited = [f.name for f in fields(cfg) if f.name != "name" and "source" not in f.metadata]
        assert uncited == [], cfg.name
