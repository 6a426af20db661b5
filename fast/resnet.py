"""ResNet-50 body, fast: channels-last convs, FrozenBN folded into the convs at inference, in-place ReLU.

Same contract, constructor and state_dict keys as reference/resnet.py (d2-spec §2.1, §5.1): ``stem.conv1.weight``,
``stem.conv1.norm.*``, ``res{2..5}.{i}.{conv1,conv2,conv3,shortcut}.weight`` and ``.norm.*``.

Differences from the reference (none changes the result beyond float rounding):

- Activations and conv weights are channels-last (NHWC), the layout the CPU (oneDNN) and GPU (cuDNN) conv
  kernels prefer; outputs are channels-last tensors of the usual [N, C, H, W] shape.
- Eval mode (``not self.training``): each conv + FrozenBN runs as one conv with folded weights,
  W' = W * s and b' = shift with s = w / sqrt(var + eps), shift = b - mean * s (per output channel).
  The folded tensors are cached per conv and recomputed when any source tensor changes: the cache key holds each
  source's identity, storage pointer, version counter, dtype and device, so ``load_state_dict``, optimizer
  steps, in-place edits under ``torch.no_grad()`` and ``.to(...)`` all invalidate it. Writes through ``.data``
  bypass version counters; call ``ResNet.clear_folded()`` after those.
  With grad enabled and parameters that require grad, the fold is recomputed differentiably (never cached),
  so gradients still reach the conv weights.
- Training mode: conv, then FrozenBN as a separate (still frozen) affine, so gradients flow as in the reference.
- ReLU and the residual add run in place on freshly computed conv outputs.

Shape legend: N images, C channels, H, W the input size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fast.batch_norm import FrozenBatchNorm2d
from spec import validate as v
from spec.config import BASE_RCNN_FPN, ResNetConfig

STEM_KERNEL, STEM_STRIDE, STEM_PADDING = BASE_RCNN_FPN.resnet.stem_conv  # RESNET.STEM: 7x7/2, padding 3
POOL_KERNEL, POOL_STRIDE, POOL_PADDING = BASE_RCNN_FPN.resnet.stem_pool  # RESNET.STEM: 3x3/2 max-pool, pad 1
FIRST_STAGE = 2  # res2, res3, ...
DOWNSAMPLE = BASE_RCNN_FPN.resnet.stage_downsample  # the first block of res3, res4, res5 halves the size
_CL = torch.channels_last


def _channels_last(t: Tensor) -> Tensor:
    return t if t.is_contiguous(memory_format=_CL) else t.contiguous(memory_format=_CL)


class Conv2d(nn.Conv2d):
    """Bias-free conv + FrozenBN held as ``.norm``; ``forward(x, relu=False)`` optionally applies ReLU in place."""

    def __init__(self, *args, norm: FrozenBatchNorm2d | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.norm = norm
        self._folded: tuple[tuple, Tensor, Tensor] | None = None  # (key, weight, bias); not in the state_dict

    def _sources(self) -> tuple[Tensor, ...]:
        n = self.norm
        return (self.weight, n.weight, n.bias, n.running_mean, n.running_var)

    def folded(self) -> tuple[Tensor, Tensor]:
        """(channels-last folded weight, bias) of conv + norm, from the cache when no source changed."""
        sources = self._sources()
        if torch.is_grad_enabled() and any(t.requires_grad for t in sources):
            w, b = self.norm.fold(self.weight)  # differentiable; not cached
            return _channels_last(w), b
        try:
            key = tuple((id(t), t.data_ptr(), t._version, t.dtype, t.device) for t in sources)
            key += (self.norm.eps,)
        except RuntimeError:  # inference tensors carry no version counter: fold without caching
            with torch.no_grad():
                w, b = self.norm.fold(self.weight)
            return _channels_last(w), b
        cached = self._folded
        if cached is None or cached[0] != key:
            # normal (not inference) tensors even under torch.inference_mode, so a cache filled there can
            # still be used by a later forward that records autograd for the input
            # inference_mode(False) re-enables grad mode, so no_grad must come after it
            with torch.inference_mode(False), torch.no_grad():
                w, b = self.norm.fold(self.weight)
                w = w.contiguous(memory_format=_CL)
            self._folded = cached = (key, w, b)
        return cached[1], cached[2]

    def clear_folded(self) -> None:
        self._folded = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_folded"] = None  # deepcopy / pickle never carry the cache (a copy refolds on first use)
        return state

    def forward(self, x: Tensor, relu: bool = False) -> Tensor:
        if self.norm is None:
            y = F.conv2d(x, _channels_last(self.weight), self.bias, self.stride, self.padding, self.dilation,
                         self.groups)
        elif self.training:
            y = F.conv2d(x, _channels_last(self.weight), None, self.stride, self.padding, self.dilation,
                         self.groups)
            y = self.norm(y)
        else:
            w, b = self.folded()
            y = F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)
        return torch.relu_(y) if relu else y  # y is a fresh tensor that nothing saved: safe in place


def _conv_norm(in_ch: int, out_ch: int, kernel: int, stride: int, eps: float, padding: int = 0,
               dilation: int = 1, groups: int = 1) -> Conv2d:
    conv = Conv2d(in_ch, out_ch, kernel, stride=stride, padding=padding, dilation=dilation, groups=groups,
                  bias=False, norm=FrozenBatchNorm2d(out_ch, eps=eps))
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # c2_msra_fill
    return conv


class BasicStem(nn.Module):
    """[N, C_in, H, W] -> [N, stem_out, ~H/4, ~W/4]."""

    def __init__(self, in_channels: int, out_channels: int, eps: float):
        super().__init__()
        self.conv1 = _conv_norm(in_channels, out_channels, STEM_KERNEL, STEM_STRIDE, eps, padding=STEM_PADDING)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(_channels_last(x), relu=True)
        return F.max_pool2d(x, kernel_size=POOL_KERNEL, stride=POOL_STRIDE, padding=POOL_PADDING)


class BottleneckBlock(nn.Module):
    """[N, in, H, W] -> [N, out, H/stride, W/stride]."""

    def __init__(self, in_channels: int, bottleneck_channels: int, out_channels: int, stride: int,
                 stride_in_1x1: bool, num_groups: int, dilation: int, eps: float):
        super().__init__()
        self.shortcut = _conv_norm(in_channels, out_channels, 1, stride, eps) if in_channels != out_channels \
            else None
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = _conv_norm(in_channels, bottleneck_channels, 1, stride_1x1, eps)
        self.conv2 = _conv_norm(bottleneck_channels, bottleneck_channels, 3, stride_3x3, eps, padding=dilation,
                                dilation=dilation, groups=num_groups)
        self.conv3 = _conv_norm(bottleneck_channels, out_channels, 1, 1, eps)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(x, relu=True)
        out = self.conv2(out, relu=True)
        out = self.conv3(out)
        out += x if self.shortcut is None else self.shortcut(x)  # conv3's output is fresh: add in place
        return out.relu_()


class ResNet(nn.Module):
    """ResNet body: [N, C_in, H, W] -> {"res2": ..., "res5": ...}, channels-last outputs."""

    def __init__(self, cfg: ResNetConfig = BASE_RCNN_FPN.resnet,
                 in_channels: int = len(BASE_RCNN_FPN.input.pixel_mean)):
        super().__init__()
        v.check_resnet_config(cfg)
        self.cfg = cfg
        self.in_channels = in_channels
        eps = cfg.frozen_bn_eps
        self.stem = BasicStem(in_channels, cfg.stem_out_channels, eps)
        stride = STEM_STRIDE * POOL_STRIDE
        channels = cfg.stem_out_channels
        self.stage_names: list[str] = []
        self.out_feature_strides: dict[str, int] = {}
        self.out_feature_channels: dict[str, int] = {}
        last = len(cfg.blocks_per_stage) - 1
        for i, num_blocks in enumerate(cfg.blocks_per_stage):
            name = f"res{FIRST_STAGE + i}"
            dilation = cfg.res5_dilation if i == last else 1
            first_stride = 1 if i == 0 or dilation > 1 else DOWNSAMPLE
            bottleneck = cfg.num_groups * cfg.width_per_group * 2**i
            out_channels = cfg.res2_out_channels * 2**i
            blocks = [BottleneckBlock(channels if b == 0 else out_channels, bottleneck, out_channels,
                                      first_stride if b == 0 else 1, cfg.stride_in_1x1, cfg.num_groups,
                                      dilation, eps) for b in range(num_blocks)]
            channels = out_channels
            self.add_module(name, nn.Sequential(*blocks))
            stride *= first_stride
            self.stage_names.append(name)
            self.out_feature_strides[name] = stride
            self.out_feature_channels[name] = out_channels
        unknown = [f for f in cfg.out_features if f not in self.stage_names]
        if unknown:
            raise ValueError(f"cfg.out_features names unknown stages {unknown}; stages are {self.stage_names}")
        self._last_needed = max(self.stage_names.index(f) for f in cfg.out_features)
        self.to(memory_format=_CL)
        if cfg.freeze_at >= 1:
            self.stem.requires_grad_(False)
        for i, name in enumerate(self.stage_names):
            if FIRST_STAGE + i <= cfg.freeze_at:
                getattr(self, name).requires_grad_(False)

    def clear_folded(self) -> None:
        """Drop every cached folded conv (needed only after writes through ``.data``)."""
        for m in self.modules():
            if isinstance(m, Conv2d):
                m.clear_folded()

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"x must have a floating dtype, got {x.dtype}")
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape [N, {self.in_channels}, H, W], got {list(x.shape)}")
        outputs: dict[str, Tensor] = {}
        x = self.stem(x)
        for name in self.stage_names[:self._last_needed + 1]:  # stages after the last output are skipped
            for block in getattr(self, name):
                x = block(x)
            outputs[name] = x
        return {name: outputs[name] for name in self.cfg.out_features}


