"""Fast Multiscale Vision Transformers (MViT v1 and v2): channels-last pooling for all heads at once, SDPA,
token-major layouts without head permutes, an optional bf16 autocast path on CUDA.

Same contract and state_dict layout as ``reference.mvit`` (torchvision's keys); never imports it.
"""

from fast.mvit.attention import PoolingAttention
from fast.mvit.block import MultiScaleBlock
from fast.mvit.model import MViT
from fast.mvit.pooling import Pool
from fast.mvit.pos_embed import PositionalEncoding


def num_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["MViT", "MultiScaleBlock", "Pool", "PoolingAttention", "PositionalEncoding", "num_parameters"]
