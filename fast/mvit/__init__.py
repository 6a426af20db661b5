"""Fast Multiscale Vision Transformers (MViT v1 and v2): channels-last pooling for all heads at once, SDPA,
token-major layouts without head permutes, an optional bf16 autocast path on CUDA.

Same contract as ``reference.mvit``; never imports it. Every parameter-bearing class subclasses its skeleton in
``layout.mvit`` (constructor, initialisation, config checks, torchvision's state_dict keys) and writes only the
forward pass.
"""

from fast.mvit.attention import PoolingAttention
from fast.mvit.block import MultiScaleBlock
from fast.mvit.model import MViT
from fast.mvit.pooling import Pool
from fast.mvit.pos_embed import PositionalEncoding
from layout.mvit import num_parameters

__all__ = ["MViT", "MultiScaleBlock", "Pool", "PoolingAttention", "PositionalEncoding", "num_parameters"]
