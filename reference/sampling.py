"""Label subsampling: pick a fixed-size, class-balanced random subset of labelled predictions.

Spec: d2-spec §2.6; detectron2 modeling/sampling.py. RPN: 256 per image, at most half positive, bg label 0.
ROI heads: 512 per image, at most 25% foreground, bg label K (the last class).

Shape legend: P labelled predictions. Labels: -1 ignored, bg_label background, anything else positive.
"""

from __future__ import annotations

import torch
from torch import Tensor

from spec import validate as v
from spec.config import BASE_RCNN_FPN

_RPN = BASE_RCNN_FPN.rpn


def subsample_labels(labels: Tensor, num_samples: int = _RPN.batch_size_per_image,
                     positive_fraction: float = _RPN.positive_fraction, bg_label: int = _RPN.bg_label,
                     generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """labels [P] -> (positive indices, negative indices), int64, each a uniform random subset.

    positives: label not in {-1, bg_label}; negatives: label == bg_label.                 # SAMPLE.POOLS
    num_pos = min(#positives, int(num_samples * positive_fraction))
    num_neg = min(#negatives, num_samples - num_pos)                                       # SAMPLE.COUNTS
    Each pool is shuffled with torch.randperm(generator=generator), positives first, and the prefix kept,
    so one generator state gives one sample.                                              # SAMPLE.GENERATOR
    """
    v.check_sampling_args(labels, num_samples, positive_fraction, generator)

    positive = ((labels != -1) & (labels != bg_label)).nonzero().flatten()
    negative = (labels == bg_label).nonzero().flatten()

    num_pos = min(positive.numel(), int(num_samples * positive_fraction))
    num_neg = min(negative.numel(), num_samples - num_pos)

    gen_device = generator.device if generator is not None else labels.device
    perm_pos = torch.randperm(positive.numel(), generator=generator, device=gen_device)[:num_pos]
    perm_neg = torch.randperm(negative.numel(), generator=generator, device=gen_device)[:num_neg]
    return positive[perm_pos.to(labels.device)], negative[perm_neg.to(labels.device)]
