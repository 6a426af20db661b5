"""Fast MViTv2 detection backbone (detectron2's ``MViT``, d2-spec §4): same contract and keys as
``reference.mvit_det``; never imports it.

- pooling of Q, K and V for all heads in one grouped, channels-last conv each;
- windows as a batch dimension, attention in ``scaled_dot_product_attention`` with the decomposed relative
  positions as an additive mask;
- ``autocast_dtype`` (e.g. torch.bfloat16) runs the backbone under autocast (layout/precision.py), outputs float32.
"""

from fast.mvit_det.attention import PoolingAttention
from fast.mvit_det.backbone import MultiScaleBlock, MViTDetBackbone
from layout.mvit_det import num_parameters

__all__ = ["MViTDetBackbone", "MultiScaleBlock", "PoolingAttention", "num_parameters"]
