"""RPN layout: the shared head's parameters and the RPN module with its control flow.

Spec: d2-spec §1.4 (numbers), §2.3 (head), §2.8 (module); detectron2 modeling/proposal_generator/rpn.py
(StandardRPNHead, RPN.forward).

state_dict keys under ``proposal_generator.`` (d2-spec §5.1), in this order:
    rpn_head.conv.{weight,bias}               [C', C, 3, 3], [C'] (or rpn_head.conv.conv{k}.* for several convs)
    rpn_head.objectness_logits.{weight,bias}  [A, C', 1, 1], [A]
    rpn_head.anchor_deltas.{weight,bias}      [4A, C', 1, 1], [4A] (channel a*4 + j: anchor a, coordinate j)

The layout classes hold the constructors, initialisation and config checks, and RPN.forward's control flow (head,
anchors, training targets and losses, proposal selection without gradient). ``reference.rpn`` and ``fast.rpn``
subclass them: RPNHead gets its forward; RPN points ``rpn_head_type`` at that head and ``rpn_targets`` /
``rpn_losses`` at the implementation's functions, and writes ``anchors`` and ``propose``.

Shape legend: N images; C channels; L levels (P2..P6); Hi, Wi the size of level i; A anchors per location (3);
R = sum_i Hi * Wi * A anchors over all levels, in (level, y, x, anchor) order; G ground-truth boxes of an image.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from layout.precision import full_precision, widen
from spec import validate as v
from spec.config import BASE_RCNN_FPN, AnchorConfig, RPNConfig

_RPN = BASE_RCNN_FPN.rpn
_ANCHORS = BASE_RCNN_FPN.anchors


class RPNHead(nn.Module):
    """The head shared by every level: 3x3 conv + ReLU, then two sibling 1x1 convs.  # RPN.HEAD

    conv               3x3, in_channels -> conv_dims[-1], padding 1, bias, followed by ReLU
    objectness_logits  1x1, -> A          (one logit per anchor)
    anchor_deltas      1x1, -> 4A         (channel a*4 + j = coordinate j of anchor a)   # RPN.OUTPUT_ORDER
    With the spec's 256 channels and A = 3 that is 590,080 + 771 + 3,084 = 593,935 parameters.  # RPN.HEAD_PARAMS
    A conv_dims entry of -1 means "in_channels" (detectron2's RPN.CONV_DIMS [-1]). Several entries give
    a chain of convs named conv.conv0, conv.conv1, ... each followed by ReLU, as in detectron2.
    forward (written by each implementation): L x [N, C, Hi, Wi] -> (L x [N, Hi*Wi*A], L x [N, Hi*Wi*A, 4]),
    flat index (y * Wi + x) * A + a.
    """

    def __init__(self, in_channels: int = BASE_RCNN_FPN.fpn.out_channels,
                 num_anchors: int = _ANCHORS.anchors_per_location, conv_dims: Sequence[int] = _RPN.head_conv_dims):
        super().__init__()
        dims = [in_channels if int(d) == -1 else int(d) for d in conv_dims]
        if in_channels <= 0 or num_anchors <= 0 or not dims or any(d <= 0 for d in dims):
            raise ValueError(f"in_channels, num_anchors and conv_dims must be positive, got {in_channels}, "
                             f"{num_anchors} and {list(conv_dims)}")
        self.in_channels = in_channels
        self.num_anchors = num_anchors
        if len(dims) == 1:
            self.conv = nn.Conv2d(in_channels, dims[0], kernel_size=3, padding=1)
        else:
            self.conv = nn.Sequential()
            for k, (i, o) in enumerate(zip([in_channels, *dims[:-1]], dims)):
                self.conv.add_module(f"conv{k}", nn.Conv2d(i, o, kernel_size=3, padding=1))
        self.objectness_logits = nn.Conv2d(dims[-1], num_anchors, kernel_size=1)
        self.anchor_deltas = nn.Conv2d(dims[-1], num_anchors * 4, kernel_size=1)
        for m in self.modules():  # detectron2 StandardRPNHead: normal(std=0.01) weights, zero biases
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def convs(self) -> list[nn.Conv2d]:
        """The 3x3 convs in order (each followed by ReLU)."""
        return [self.conv] if isinstance(self.conv, nn.Conv2d) else list(self.conv)


class RPN(nn.Module):
    """The RPN: head on every level, anchors, training targets and losses, and proposal selection.

    Child ``rpn_head`` (keys rpn_head.conv.weight, rpn_head.objectness_logits.weight, ...). Anchors are not
    state: an implementation generates (or caches) them from the feature sizes.
    forward(features, image_sizes, gt_boxes=None, generator=None) -> (proposals, losses):
      features: L maps [N, C, Hi, Wi] (P2..P6; a dict is read in cfg.in_features order);
      image_sizes: N unpadded (h, w); gt_boxes: N tensors [G, 4], required in training mode.
      proposals: N pairs (boxes [K, 4], raw logits [K]), computed without gradient (d2-spec §2.8 item 7);
      losses: {"loss_rpn_cls", "loss_rpn_loc"} in training mode, {} otherwise.
    Training uses cfg.pre_nms_topk_train / post_nms_topk_train, test the _test pair.   # PROPOSAL.PRE_NMS_TOPK
    """

    rpn_head_type: type[RPNHead] = RPNHead
    # the implementation's functions (staticmethods in a subclass); see reference/rpn.py for their contracts
    rpn_targets: Callable[..., tuple[Tensor, Tensor]]
    rpn_losses: Callable[..., dict[str, Tensor]]

    def __init__(self, cfg: RPNConfig = _RPN, anchor_cfg: AnchorConfig = _ANCHORS,
                 in_channels: int = BASE_RCNN_FPN.fpn.out_channels):
        super().__init__()
        self.cfg = cfg
        self.anchor_cfg = anchor_cfg
        self.rpn_head = self.rpn_head_type(in_channels, anchor_cfg.anchors_per_location, cfg.head_conv_dims)

    def anchors(self, features: Sequence[Tensor]) -> list[Tensor]:
        """Grid anchors of every level, L x [Hi*Wi*A, 4]: written by each implementation."""
        raise NotImplementedError(f"{type(self).__name__} must implement anchors")

    def propose(self, anchors: list[Tensor], logits: list[Tensor], deltas: list[Tensor],
                image_sizes: Sequence[tuple[int, int]], pre_nms_topk: int,
                post_nms_topk: int) -> list[tuple[Tensor, Tensor]]:
        """Decode and select (PROPOSAL.*) -> N pairs (boxes [K, 4], logits [K]): written by each implementation."""
        raise NotImplementedError(f"{type(self).__name__} must implement propose")

    def forward(self, features: Sequence[Tensor] | Mapping[str, Tensor], image_sizes: Sequence[tuple[int, int]],
                gt_boxes: Sequence[Tensor] | None = None,
                generator: torch.Generator | None = None) -> tuple[list[tuple[Tensor, Tensor]], dict[str, Tensor]]:
        cfg = self.cfg
        features = v.features_in_order(features, cfg.in_features)
        v.check_rpn_features(features, self.rpn_head.in_channels)
        if len(features) != len(self.anchor_cfg.strides):
            raise ValueError(f"features has {len(features)} levels; the anchor config has "
                             f"{len(self.anchor_cfg.strides)} (strides {self.anchor_cfg.strides})")
        n = features[0].shape[0]
        if len(image_sizes) != n:
            raise ValueError(f"image_sizes has {len(image_sizes)} entries for {n} images")

        logits, deltas = self.rpn_head(features)  # L x [N, HiWiA], L x [N, HiWiA, 4]   (PRECISION.AUTOCAST)
        logits, deltas = [widen(x) for x in logits], [widen(d) for d in deltas]  # PRECISION.GEOMETRY_FP32
        with full_precision(features[0].device):
            return self._targets_and_proposals(features, image_sizes, gt_boxes, generator, logits, deltas)

    def _targets_and_proposals(self, features: Sequence[Tensor], image_sizes: Sequence[tuple[int, int]],
                               gt_boxes: Sequence[Tensor] | None, generator: torch.Generator | None,
                               logits: list[Tensor], deltas: list[Tensor],
                               ) -> tuple[list[tuple[Tensor, Tensor]], dict[str, Tensor]]:
        """Anchors, training targets and losses, and proposals, with autocast off (PRECISION.GEOMETRY_FP32)."""
        cfg, n = self.cfg, features[0].shape[0]
        anchors = self.anchors(features)  # L x [HiWiA, 4]

        losses: dict[str, Tensor] = {}
        if self.training:
            if gt_boxes is None:
                raise ValueError("gt_boxes is required in training mode (one [G, 4] tensor per image)")
            if len(gt_boxes) != n:
                raise ValueError(f"gt_boxes has {len(gt_boxes)} entries for {n} images")
            all_anchors = torch.cat(anchors)  # [R, 4]
            with torch.no_grad():  # RPN.MATCHER, RPN.SAMPLING
                gt_labels, matched = self.rpn_targets(
                    all_anchors, gt_boxes, thresholds=cfg.iou_thresholds, labels=cfg.iou_labels,
                    allow_low_quality_matches=cfg.allow_low_quality_matches,
                    batch_size_per_image=cfg.batch_size_per_image, positive_fraction=cfg.positive_fraction,
                    generator=generator)
            raw = self.rpn_losses(all_anchors, torch.cat(logits, dim=1), torch.cat(deltas, dim=1), gt_labels,
                                  matched, batch_size_per_image=cfg.batch_size_per_image,
                                  weights=cfg.box_coder.weights, smooth_l1_beta=cfg.smooth_l1_beta)
            losses = {"loss_rpn_cls": raw["loss_rpn_cls"] * cfg.loss_weight,
                      "loss_rpn_loc": raw["loss_rpn_loc"] * cfg.loss_weight * cfg.bbox_reg_loss_weight}

        if self.training:
            pre, post = cfg.pre_nms_topk_train, cfg.post_nms_topk_train
        else:
            pre, post = cfg.pre_nms_topk_test, cfg.post_nms_topk_test
        with torch.no_grad():  # no gradient flows into proposal coordinates (d2-spec §2.8 item 7)
            proposals = self.propose(anchors, [x.detach() for x in logits], [d.detach() for d in deltas],
                                     image_sizes, pre, post)
        return proposals, losses
