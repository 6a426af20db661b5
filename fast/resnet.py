"""ResNet-50 body, fast: channels-last convs, FrozenBN folded into the convs at inference, in-place ReLU.

Same contract as reference/resnet.py; the modules, constructor and state_dict keys are layout/resnet.py's
(d2-spec §2.1, §5.1): ``stem.conv1.weight``, ``stem.conv1.norm.*``, ``res{2..5}.{i}.{conv1,conv2,conv3,shortcut}
.weight`` and ``.norm.*``.

Differences from the reference (none changes the result beyond float rounding):

- Activations and conv weights are channels-last (NHWC), the layout the CPU (oneDNN) and GPU (cuDNN) conv
  kernels prefer; outputs are channels-last tensors of the usual [N, C, H, W] shape.
- Eval mode (``not self.training``): each conv + FrozenBN runs as one conv with folded weights,
  W' = W * s and b' = shift with s = w / sqrt(var + eps), shift = b - mean * s (per output channel).
  Under autocast (PRECISION.AUTOCAST) the cached fold is stored in the autocast dtype, so no conv weight is cast
  again on later calls. The folded tensors are cached per conv and recomputed when any source tensor changes: the
  cache key (which includes that dtype) holds each
  source's identity, storage pointer, version counter, dtype and device, so ``load_state_dict``, optimizer
  steps, in-place edits under ``torch.no_grad()`` and ``.to(...)`` all invalidate it. Writes through ``.data``
  bypass version counters; call ``ResNet.clear_folded()`` after those.
  With grad enabled and parameters that require grad, the fold is recomputed differentiably (never cached),
  so gradients still reach the conv weights.
- Training mode: conv, then FrozenBN as a separate (still frozen) affine, so gradients flow as in the reference.
- ReLU and the residual add run in place on freshly computed conv outputs.
- Stages after the last one named in cfg.out_features are not run.

Shape legend: N images, C channels, H, W the input size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fast.batch_norm import FrozenBatchNorm2d
from layout import resnet as layout
from layout.precision import active_autocast_dtype

_CL = torch.channels_last


def _channels_last(t: Tensor) -> Tensor:
    return t if t.is_contiguous(memory_format=_CL) else t.contiguous(memory_format=_CL)


class Conv2d(layout.Conv2d):
    """Bias-free conv + FrozenBN held as ``.norm``; ``forward(x, relu=False)`` optionally applies ReLU in place."""

    norm_type = FrozenBatchNorm2d
    _folded: tuple[tuple, Tensor, Tensor] | None = None  # (key, weight, bias); not in the state_dict

    def _sources(self) -> tuple[Tensor, ...]:
        n = self.norm
        return (self.weight, n.weight, n.bias, n.running_mean, n.running_var)

    def folded(self) -> tuple[Tensor, Tensor]:
        """(channels-last folded weight, bias) of conv + norm, from the cache when no source changed."""
        sources = self._sources()
        if torch.is_grad_enabled() and any(t.requires_grad for t in sources):
            w, b = self.norm.fold(self.weight)  # differentiable; not cached
            return _channels_last(w), b
        low = active_autocast_dtype(self.weight.device)  # under autocast: cache the folded conv already cast
        try:
            key = tuple((id(t), t.data_ptr(), t._version, t.dtype, t.device) for t in sources)
            key += (self.norm.eps, low)
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
                if low is not None:  # autocast would cast these on every call (they are not leaf parameters)
                    w, b = w.to(low), b.to(low)
            self._folded = cached = (key, w, b)
        return cached[1], cached[2]

    def clear_folded(self) -> None:
        self._folded = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_folded"] = None  # deepcopy / pickle never carry the cache (a copy refolds on first use)
        return state

    def forward(self, x: Tensor, relu: bool = False) -> Tensor:
        if self.training:
            y = F.conv2d(x, _channels_last(self.weight), None, self.stride, self.padding, self.dilation,
                         self.groups)
            y = self.norm(y)
        else:
            w, b = self.folded()
            y = F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)
        return torch.relu_(y) if relu else y  # y is a fresh tensor that nothing saved: safe in place


class BasicStem(layout.BasicStem):
    """[N, C_in, H, W] -> [N, stem_out, ~H/4, ~W/4]."""

    conv_type = Conv2d

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(_channels_last(x), relu=True)
        return F.max_pool2d(x, kernel_size=self.pool_kernel, stride=self.pool_stride, padding=self.pool_padding)


class BottleneckBlock(layout.BottleneckBlock):
    """[N, in, H, W] -> [N, out, H/stride, W/stride]."""

    conv_type = Conv2d

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(x, relu=True)
        out = self.conv2(out, relu=True)
        out = self.conv3(out)
        out += x if self.shortcut is None else self.shortcut(x)  # conv3's output is fresh: add in place
        return out.relu_()


class ResNet(layout.ResNet):
    """ResNet body: [N, C_in, H, W] -> {"res2": ..., "res5": ...}, channels-last outputs."""

    stem_type = BasicStem
    block_type = BottleneckBlock

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.to(memory_format=_CL)  # conv weights channels-last once, not on every training step

    def clear_folded(self) -> None:
        """Drop every cached folded conv (needed only after writes through ``.data``)."""
        for m in self.modules():
            if isinstance(m, Conv2d):
                m.clear_folded()

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        self.check_input(x)
        out_features = self.cfg.out_features
        last_needed = max(self.stage_names.index(f) for f in out_features)
        outputs: dict[str, Tensor] = {}
        x = self.stem(x)
        for name in self.stage_names[:last_needed + 1]:  # stages after the last output are skipped
            for block in getattr(self, name):
                x = block(x)
            outputs[name] = x
        return {name: outputs[name] for name in out_features}
