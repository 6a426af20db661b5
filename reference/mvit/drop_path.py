"""Stochastic depth ("drop path"): drop a whole residual branch per sample while training (P1 App. D.1).

Shapes: x [B, ...]. In eval mode, or with p = 0, it is the identity. In training each sample's branch is kept with
probability 1 - p and then scaled by 1 / (1 - p), so its expectation is unchanged (torchvision StochasticDepth
"row" mode). The probability p (in [0, 1), checked by ``layout.mvit.MultiScaleBlock``) is the block's
``drop_path``, linear in depth (``spec.mvit.MViTConfig.drop_path``).
"""

from __future__ import annotations

from torch import Tensor


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """x with each sample's branch zeroed (probability p) or scaled by 1 / (1 - p), in training only."""
    if not training or p == 0.0:
        return x
    keep = 1.0 - p
    per_sample = (x.shape[0],) + (1,) * (x.dim() - 1)  # one draw per sample, broadcast over the rest
    return x * x.new_empty(per_sample).bernoulli_(keep) / keep
