"""Reference Multiscale Vision Transformers (MViT v1 and v2): plain, readable, one concept per file.

- ``patch_embed.py``  the cube patch embedding (conv_proj) applied to a clip
- ``pos_embed.py``    cls token and separable space/time positions, interpolated for other sizes
- ``pooling.py``      the pooling operator: conv / avg / max, LayerNorm on the pooled tensors, cls passed through
- ``rel_pos.py``      MViTv2 decomposed relative positions
- ``attention.py``    multi-head pooling attention (``PoolingAttention``)
- ``drop_path.py``    stochastic depth
- ``block.py``        the multiscale block (``MultiScaleBlock``)
- ``model.py``        the stack and the head (``MViT(cfg)``)

Configs live in ``spec.mvit`` (MVIT_B_16X4, MVIT_B_16, MVIT_V2_S). Every parameter-bearing class here subclasses
its skeleton in ``layout.mvit`` (constructor, initialisation, config checks, torchvision's state_dict keys) and
writes only the forward pass.
"""

from layout.mvit import num_parameters
from reference.mvit.attention import PoolingAttention
from reference.mvit.block import MultiScaleBlock
from reference.mvit.model import MViT
from reference.mvit.pooling import Pool
from reference.mvit.pos_embed import PositionalEncoding

__all__ = ["MViT", "MultiScaleBlock", "Pool", "PoolingAttention", "PositionalEncoding", "num_parameters"]
