"""Reference MViTv2 detection backbone (detectron2's ``MViT``, d2-spec §4): plain, readable, one concept per file.

- ``window.py``     window partition / un-partition with zero padding (d2-spec §4.4 items 3 and 5)
- ``rel_pos.py``    decomposed relative positions on 2-D grids, detectron2's index rule (d2-spec §4.5)
- ``attention.py``  pooling attention with windows and residual pooling (``PoolingAttention``, d2-spec §4.4)
- ``backbone.py``   the block and the backbone (``MultiScaleBlock``, ``MViTDetBackbone``; flow in layout)

Configs live in ``spec.mvit_det`` (MVITV2_T_DET, MVITV2_S_DET, MVITV2_B_DET). Every parameter-bearing class
subclasses its skeleton in ``layout.mvit_det`` (constructor, initialisation, detectron2's state_dict keys, the
block's and the backbone's control flow); this package writes the attention's forward.
"""

from layout.mvit_det import num_parameters
from reference.mvit_det.attention import PoolingAttention
from reference.mvit_det.backbone import MultiScaleBlock, MViTDetBackbone

__all__ = ["MViTDetBackbone", "MultiScaleBlock", "PoolingAttention", "num_parameters"]
