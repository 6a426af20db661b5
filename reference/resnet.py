"""ResNet-50 body (stem + res2..res5) with FrozenBN, as detectron2 builds it for Base-RCNN-FPN: the forward passes.

Spec: d2-spec §1.2, §2.1, §3, §5.1; detectron2 modeling/backbone/resnet.py, layers/wrappers.py.

The modules, their widths, strides, initialisation, freezing and state_dict keys (``stem.conv1.weight``,
``stem.conv1.norm.*``, ``res2.0.conv1.weight``, ``res2.0.shortcut.weight``, ...) are layout/resnet.py's, built
from the ResNetConfig passed in. Here:

- Stem (RESNET.STEM): conv1 (7x7/2, padding 3) -> FrozenBN -> ReLU -> max-pool (3x3/2, padding 1), the numbers of
  cfg.stem_conv / cfg.stem_pool. Output stride 4.
- Bottleneck block (RESNET.STAGES): conv1 -> FBN -> ReLU -> conv2 -> FBN -> ReLU -> conv3 -> FBN; add the
  shortcut (projection conv + FBN, or the identity); ReLU.
- Outputs (RESNET.OUTPUTS): {"res2": [N, 256, H/4, W/4], "res3": [N, 512, H/8, W/8],
  "res4": [N, 1024, H/16, W/16], "res5": [N, 2048, H/32, W/32]} for a 32-divisible input.

Shape legend: N images, C channels, H, W the input size.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from layout import resnet as layout
from reference.batch_norm import FrozenBatchNorm2d


class Conv2d(layout.Conv2d):
    """Bias-free conv, then its FrozenBN ``.norm``."""

    norm_type = FrozenBatchNorm2d

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(super().forward(x))


class BasicStem(layout.BasicStem):
    """[N, C_in, H, W] -> [N, stem_out, ~H/4, ~W/4].  # RESNET.STEM"""

    conv_type = Conv2d

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.conv1(x))
        return F.max_pool2d(x, kernel_size=self.pool_kernel, stride=self.pool_stride, padding=self.pool_padding)


class BottleneckBlock(layout.BottleneckBlock):
    """[N, in, H, W] -> [N, out, H/stride, W/stride].  # RESNET.STAGES"""

    conv_type = Conv2d

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.conv1(x))
        out = F.relu(self.conv2(out))
        out = self.conv3(out)
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + shortcut)


class ResNet(layout.ResNet):
    """ResNet body: [N, C_in, H, W] -> {"res2": ..., "res5": ...} (the names in cfg.out_features).

    ResNet(cfg=BASE_RCNN_FPN.resnet, in_channels=3): widths, strides, freezing and the stride convention all come
    from cfg (BASE_RCNN_FPN.resnet or TORCHVISION.resnet).
    """

    stem_type = BasicStem
    block_type = BottleneckBlock

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        self.check_input(x)
        outputs: dict[str, Tensor] = {}
        x = self.stem(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
            if name in self.cfg.out_features:
                outputs[name] = x
        return {name: outputs[name] for name in self.cfg.out_features}
