"""Proposal selection, batched over images and levels, plus a static-shape, sync-free variant.

Same contract as reference/proposals.py (d2-spec §2.9, detectron2 find_top_rpn_proposals).

``select_proposals``: one top-k per level over all images at once; decode-free filtering (finite, clip,
non-empty) on the whole [N, K] candidate batch; ONE ``fast.batched_nms`` call whose group id is
image * L + level (so NMS runs per image and per level); then the first post_nms_topk of each image.

``decode_and_select``: the RPN's path. Top-k comes first and only the Σ k_i winners are decoded, which gives
the same boxes as decoding all R anchors and selecting afterwards (decoding is per row).

``rank_by="sigmoid"`` (the torchvision profile, clause PROPOSAL.TORCHVISION_RANKING): NMS and the kept order use
sigmoid(logit) in the logits' dtype, and tied probabilities are ordered as torchvision's CPU batched_nms orders
them: by (level, rank) up to TV_BATCHED_NMS_LOOP_ABOVE candidates in an image, above it by
torch.sort(descending=True, stable=False) on CPU over the kept candidates in (level, rank) order. That sort is
one CPU call per such image (a host round trip, on CUDA too, so that every device gives the same order).

``select_proposals_static``: the same result (rank_by="logit" only) with static shapes and no host
synchronisation (for CUDA graphs and torch.compile). Non-finite and empty candidates are masked instead of
removed. NMS is exact greedy NMS with fixed shapes per (image, level): ``fast.nms.static_nms_per_level`` (a
dense [k, k] "IoU > thr and i ranks before j" mask resolved by the fixed-count block sweep
``fast.nms.greedy_sweep``). Every loop count depends on k only.

Shape legend: N images; L levels; P_i candidates (anchors) of level i; k_i = min(P_i, pre_nms_topk);
K = Σ k_i candidates per image; T = post_nms_topk.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from fast.boxes import decode_boxes
from fast.image_list import size_bounds
from fast.nms import batched_nms, static_nms_per_level
from spec import validate as v
from spec.config import BASE_RCNN_FPN, SCALE_CLAMP, TV_BATCHED_NMS_LOOP_ABOVE

_RPN = BASE_RCNN_FPN.rpn

DIVERGED = "Predicted boxes or scores contain Inf/NaN. Training has diverged."
RANK_BY = ("logit", "sigmoid")


# ------------------------------------------------------------------------------------------------ shared steps


def _topk_per_level(logits: Sequence[Tensor], pre_nms_topk: int) -> tuple[Tensor, list[Tensor], list[int]]:
    """One top-k per level over all images: (scores [N, K], indices L x [N, k_i], [k_i])."""
    scores, indices, ks = [], [], []
    for level_logits in logits:  # a loop over levels; each top-k covers every image
        k = min(level_logits.shape[1], pre_nms_topk)
        top, idx = level_logits.topk(k, dim=1)  # sorted descending; NaN ranks as the largest
        scores.append(top)
        indices.append(idx)
        ks.append(k)
    return torch.cat(scores, dim=1), indices, ks


def _gather_rows(per_level: Sequence[Tensor], indices: Sequence[Tensor]) -> Tensor:
    """L x [N, P_i, C] gathered at L x [N, k_i] -> [N, K, C]."""
    return torch.cat([t.gather(1, idx[:, :, None].expand(-1, -1, t.shape[2])) for t, idx in zip(per_level, indices)],
                     dim=1)


def _clip_and_mask(boxes: Tensor, scores: Tensor, image_sizes, min_box_size: float) -> tuple[Tensor, Tensor, Tensor]:
    """(clipped boxes [N, K, 4], finite [N, K], keep [N, K]): keep = finite, and non-empty after clipping."""
    finite = torch.isfinite(boxes).all(dim=2) & torch.isfinite(scores)
    upper = size_bounds(image_sizes, boxes)[:, None, :]  # [N, 1, 4] (w, h, w, h)
    clipped = torch.minimum(boxes.clamp(min=0), upper)  # x in [0, w], y in [0, h]
    wh = clipped[:, :, 2:] - clipped[:, :, :2]
    keep = finite & (wh > min_box_size).all(dim=2)  # strict: width and height > min_box_size
    return clipped, finite, keep


def _check_rank(rank_by: str) -> None:
    if rank_by not in RANK_BY:
        raise ValueError(f"rank_by must be one of {RANK_BY}, got {rank_by!r}")


def _torchvision_merge(kept: Tensor, counts: Tensor, image: Tensor, rank: Tensor, n: int) -> Tensor:
    """Reorder each image's kept candidates (a contiguous run of `kept`) as torchvision's CPU batched_nms does.

    An image with more than TV_BATCHED_NMS_LOOP_ABOVE candidates entering NMS gets its kept candidates in
    index order, then sorted by rank with torch.sort(descending=True, stable=False) on CPU: the same call on
    the same array as torchvision's, so the same order of ties. Other images keep the stable order.
    """
    candidates = torch.bincount(image, minlength=n).tolist()  # per image, entering NMS
    pieces = list(kept.split(counts.tolist()))
    for i, m in enumerate(candidates):
        if m > TV_BATCHED_NMS_LOOP_ABOVE:
            by_index = torch.sort(pieces[i]).values
            order = torch.sort(rank[by_index].cpu(), descending=True, stable=False).indices
            pieces[i] = by_index[order.to(by_index.device)]
    return torch.cat(pieces) if pieces else kept


def _select(boxes: Tensor, scores: Tensor, ks: list[int], image_sizes, nms_thresh: float, post_nms_topk: int,
            min_box_size: float, training: bool, rank_by: str = "logit",
            score_thresh: float | None = None) -> list[tuple[Tensor, Tensor]]:
    """Filter, NMS (one batched call) and per-image top post_nms_topk of [N, K] candidates."""
    n, k_total = scores.shape
    clipped, finite, keep = _clip_and_mask(boxes, scores, image_sizes, min_box_size)
    if training and not bool(finite.all()):
        raise FloatingPointError(DIVERGED)
    ranking = torch.sigmoid(scores) if rank_by == "sigmoid" else scores  # [N, K], in the logits' dtype
    if score_thresh is not None:
        keep = keep & (ranking >= score_thresh)  # torchvision keeps scores >= score_thresh
    level = torch.repeat_interleave(torch.arange(len(ks), device=boxes.device),
                                    torch.tensor(ks, device=boxes.device), output_size=k_total)  # [K]
    flat = keep.reshape(-1).nonzero().squeeze(1)  # [M] survivors, in (image, level, rank) order
    image = torch.div(flat, k_total, rounding_mode="floor") if k_total else flat
    groups = image * len(ks) + level[flat - image * k_total]  # image * L + level
    cand_boxes = clipped.reshape(-1, 4)[flat]
    cand_scores = scores.reshape(-1)[flat]
    cand_rank = ranking.reshape(-1)[flat] if rank_by == "sigmoid" else cand_scores
    kept = batched_nms(cand_boxes, cand_rank, groups, nms_thresh)  # descending rank, ties by index, all images
    # regroup by image, keeping the rank order inside each image (a stable sort by image id)
    kept = kept[torch.sort(image[kept], stable=True).indices]
    kept_image = image[kept]
    counts = torch.bincount(kept_image, minlength=n)
    if rank_by == "sigmoid":
        kept = _torchvision_merge(kept, counts, image, cand_rank, n)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(kept.numel(), device=kept.device) - starts[kept_image]
    kept = kept[rank < post_nms_topk]
    out_boxes, out_scores = cand_boxes[kept], cand_scores[kept]
    sizes = counts.clamp(max=post_nms_topk).tolist()
    return list(zip(out_boxes.split(sizes), out_scores.split(sizes)))


# ------------------------------------------------------------------------------------------------ public
def select_proposals(proposals: Sequence[Tensor], logits: Sequence[Tensor], image_sizes: Sequence[tuple[int, int]],
                     nms_thresh: float = _RPN.nms_thresh, pre_nms_topk: int = _RPN.pre_nms_topk_test,
                     post_nms_topk: int = _RPN.post_nms_topk_test, min_box_size: float = _RPN.min_box_size,
                     training: bool = False, *, rank_by: str = _RPN.rank_by,
                     score_thresh: float | None = _RPN.score_thresh) -> list[tuple[Tensor, Tensor]]:
    """proposals L x [N, P_i, 4], logits L x [N, P_i] -> N x (boxes [K, 4], raw logits [K]), K <= T."""
    num_images = v.check_select_args(proposals, logits, image_sizes, nms_thresh, pre_nms_topk, post_nms_topk)
    _check_rank(rank_by)
    if num_images == 0:
        return []
    scores, indices, ks = _topk_per_level(logits, pre_nms_topk)
    boxes = _gather_rows(proposals, indices)
    return _select(boxes, scores, ks, image_sizes, nms_thresh, post_nms_topk, min_box_size, training, rank_by,
                   score_thresh)


def decode_and_select(anchors: Sequence[Tensor], deltas: Sequence[Tensor], logits: Sequence[Tensor],
                      image_sizes: Sequence[tuple[int, int]], *, weights: Sequence[float] = _RPN.box_coder.weights,
                      scale_clamp: float = SCALE_CLAMP, nms_thresh: float = _RPN.nms_thresh,
                      pre_nms_topk: int = _RPN.pre_nms_topk_test, post_nms_topk: int = _RPN.post_nms_topk_test,
                      min_box_size: float = _RPN.min_box_size, training: bool = False, rank_by: str = _RPN.rank_by,
                      score_thresh: float | None = _RPN.score_thresh) -> list[tuple[Tensor, Tensor]]:
    """select_proposals(decode(deltas, anchors), logits, ...) decoding only the top-k winners.

    anchors L x [P_i, 4]; deltas L x [N, P_i, 4]; logits L x [N, P_i].
    """
    num_images = v.check_select_args(deltas, logits, image_sizes, nms_thresh, pre_nms_topk, post_nms_topk)
    _check_rank(rank_by)
    if len(anchors) != len(deltas):
        raise ValueError(f"anchors has {len(anchors)} levels but deltas has {len(deltas)}")
    if num_images == 0:
        return []
    scores, indices, ks = _topk_per_level(logits, pre_nms_topk)
    cand_deltas = _gather_rows(deltas, indices)  # [N, K, 4]
    cand_anchors = torch.cat([a[idx] for a, idx in zip(anchors, indices)], dim=1)  # [N, K, 4]
    boxes = decode_boxes(cand_deltas.reshape(-1, 4), cand_anchors.reshape(-1, 4), weights, scale_clamp)
    return _select(boxes.reshape(num_images, -1, 4), scores, ks, image_sizes, nms_thresh, post_nms_topk,
                   min_box_size, training, rank_by, score_thresh)


def select_proposals_static(proposals: Sequence[Tensor], logits: Sequence[Tensor],
                            image_sizes: Sequence[tuple[int, int]] | Tensor, nms_thresh: float = _RPN.nms_thresh,
                            pre_nms_topk: int = _RPN.pre_nms_topk_test, post_nms_topk: int = _RPN.post_nms_topk_test,
                            min_box_size: float = _RPN.min_box_size,
                            training: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """select_proposals with static shapes: (boxes [N, T, 4], logits [N, T], count [N]).

    Image n's proposals are boxes[n, :count[n]] and logits[n, :count[n]], exactly as select_proposals returns
    them; the remaining slots hold zero boxes and -inf logits. No host synchronisation: no .item(), no
    nonzero, no boolean-mask indexing, no data-dependent shapes. Consequently non-finite candidates are
    masked (never returned) in training too: this function cannot raise FloatingPointError, and `training`
    is accepted only for signature compatibility; check torch.isfinite on the inputs where divergence matters.
    image_sizes may be a [N, 2] (h, w) tensor on the device, which keeps CUDA-graph capture free of
    host-to-device copies; a list is copied asynchronously through pinned memory on CUDA.
    """
    del training  # see the docstring: masking replaces the divergence check
    num_images = v.check_select_args(proposals, logits, image_sizes, nms_thresh, pre_nms_topk, post_nms_topk)
    ref = proposals[0]
    if num_images == 0:
        return (ref.new_zeros(0, post_nms_topk, 4), logits[0].new_zeros(0, post_nms_topk),
                torch.zeros(0, dtype=torch.int64, device=ref.device))
    scores, indices, ks = _topk_per_level(logits, pre_nms_topk)
    boxes = _gather_rows(proposals, indices)  # [N, K, 4]
    clipped, _, keep = _clip_and_mask(boxes, scores, image_sizes, min_box_size)
    clipped = torch.where(keep[:, :, None], clipped, torch.zeros((), dtype=clipped.dtype, device=clipped.device))
    keep = static_nms_per_level(clipped, keep, ks, nms_thresh)  # [N, K]

    neg_inf = torch.full((), float("-inf"), dtype=scores.dtype, device=scores.device)
    masked = torch.where(keep, scores, neg_inf)
    k_total = masked.shape[1]
    top = min(post_nms_topk, k_total)
    # stable: ties keep (level, rank) order, as batched_nms' stable score sort does in select_proposals
    sorted_scores, order = torch.sort(masked, dim=1, descending=True, stable=True)
    sorted_scores, order = sorted_scores[:, :top], order[:, :top]
    out_boxes = clipped.gather(1, order[:, :, None].expand(-1, -1, 4))
    count = keep.sum(dim=1).clamp(max=post_nms_topk)
    filled = torch.arange(top, device=masked.device)[None, :] < count[:, None]  # [N, top]
    out_boxes = torch.where(filled[:, :, None], out_boxes, torch.zeros((), dtype=out_boxes.dtype,
                                                                         device=out_boxes.device))
    out_scores = torch.where(filled, sorted_scores, neg_inf)
    if top < post_nms_topk:  # fewer candidates than slots: pad to the static size
        pad = post_nms_topk - top
        out_boxes = torch.cat([out_boxes, out_boxes.new_zeros(num_images, pad, 4)], dim=1)
        out_scores = torch.cat([out_scores, neg_inf.expand(num_images, pad)], dim=1)
    return out_boxes, out_scores, count
