"""Label subsampling with fixed-size random keys: one uniform draw, two top-k's, no randperm per pool.

Same contract as reference/sampling.py (d2-spec §2.6): positives are labels not in {-1, bg_label}, negatives
equal bg_label, num_pos = min(#pos, int(num_samples * positive_fraction)), num_neg = min(#neg,
num_samples - num_pos), each a uniform random subset. The top-k of i.i.d. uniform keys over a pool is a
uniform random subset of it, so this draws from the same distribution as the reference's randperm
prefixes, though not the same sample for a given seed.

``subsample_masks`` is the static-shape core (bool masks, no data-dependent shapes, CUDA-graph friendly);
``subsample_labels`` turns the masks into index lists, which needs one host sync for their lengths.

Shape legend: P labelled predictions.
"""

from __future__ import annotations

import torch
from torch import Tensor

from spec import validate as v
from spec.config import BASE_RCNN_FPN

_RPN = BASE_RCNN_FPN.rpn


def subsample_masks(labels: Tensor, num_samples: int = _RPN.batch_size_per_image,
                    positive_fraction: float = _RPN.positive_fraction, bg_label: int = _RPN.bg_label,
                    generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """labels [P] -> (positive mask, negative mask), bool [P], with static shapes throughout."""
    v.check_sampling_args(labels, num_samples, positive_fraction, generator)
    n = labels.shape[0]
    pos_pool = (labels != -1) & (labels != bg_label)
    neg_pool = labels == bg_label
    gen_device = generator.device if generator is not None else labels.device
    # float64 keys: 53 random bits, so ties (which topk would break by position) are negligible
    keys = torch.rand(n, generator=generator, device=gen_device, dtype=torch.float64).to(labels.device)  # [P]
    pos = _take_top(keys, pos_pool, min(n, int(num_samples * positive_fraction)))
    neg_cap = num_samples - pos.sum()  # a tensor: no host sync
    neg = _take_top(keys, neg_pool, min(n, num_samples), cap=neg_cap)
    return pos, neg


def _take_top(keys: Tensor, pool: Tensor, k: int, cap: Tensor | None = None) -> Tensor:
    """Mask of the (at most) k pool members with the largest keys, optionally at most `cap` of them."""
    mask = torch.zeros_like(pool)
    if k == 0:
        return mask
    pooled = torch.where(pool, keys, torch.full_like(keys, -1.0))  # non-members sort below every member
    top = pooled.topk(k).indices  # [k] in descending key order
    take = pool[top]
    if cap is not None:
        take &= torch.arange(k, device=keys.device) < cap
    return mask.index_put_((top,), take)


def subsample_labels(labels: Tensor, num_samples: int = _RPN.batch_size_per_image,
                     positive_fraction: float = _RPN.positive_fraction, bg_label: int = _RPN.bg_label,
                     generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """labels [P] -> (positive indices, negative indices), int64, ascending."""
    pos, neg = subsample_masks(labels, num_samples, positive_fraction, bg_label, generator)
    return pos.nonzero().flatten(), neg.nonzero().flatten()
