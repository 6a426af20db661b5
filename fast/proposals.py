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
removed. NMS is exact greedy NMS with fixed shapes: per (image, level) a dense [k, k] "IoU > thr and i ranks
before j" mask, resolved by a sweep over ceil(k / 64) row blocks; each block is settled by 63 fixed-point rounds
(after round t the first t + 1 rows of the block are final, so 63 rounds settle 64 rows), then its kept rows
suppress all later rows.
Every loop count depends on k only.

Shape legend: N images; L levels; P_i candidates (anchors) of level i; k_i = min(P_i, pre_nms_topk);
K = Σ k_i candidates per image; T = post_nms_topk; B the sweep's block size (64).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from fast.boxes import decode_boxes, iou_planes
from fast.nms import batched_nms
from spec import validate as v
from spec.config import BASE_RCNN_FPN, SCALE_CLAMP, TV_BATCHED_NMS_LOOP_ABOVE

_RPN = BASE_RCNN_FPN.rpn

DIVERGED = "Predicted boxes or scores contain Inf/NaN. Training has diverged."
BLOCK = 64  # rows settled together by the static sweep
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


def _size_bounds(image_sizes: Sequence[tuple[int, int]] | Tensor, like: Tensor) -> Tensor:
    """[N, 1, 4] = (w, h, w, h) per image in like's dtype and device, with no blocking host-to-device copy."""
    if isinstance(image_sizes, Tensor):
        hw = image_sizes.to(device=like.device, dtype=like.dtype)
    else:
        rows = [[float(h), float(w)] for h, w in image_sizes]
        hw = torch.tensor(rows, dtype=like.dtype).reshape(len(rows), 2)
        if like.device.type == "cuda":  # pinned + non_blocking: an async copy, not a synchronising one
            hw = hw.pin_memory().to(like.device, non_blocking=True)
        else:
            hw = hw.to(like.device)
    return hw.flip(1).repeat(1, 2)[:, None, :]  # (w, h, w, h); a list index would copy host-to-device and sync


def _clip_and_mask(boxes: Tensor, scores: Tensor, image_sizes, min_box_size: float) -> tuple[Tensor, Tensor, Tensor]:
    """(clipped boxes [N, K, 4], finite [N, K], keep [N, K]): keep = finite, and non-empty after clipping."""
    finite = torch.isfinite(boxes).all(dim=2) & torch.isfinite(scores)
    clipped = torch.minimum(boxes.clamp(min=0), _size_bounds(image_sizes, boxes))  # x in [0, w], y in [0, h]
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
    keep = _static_nms_per_level(clipped, keep, ks, nms_thresh)  # [N, K]

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


# ------------------------------------------------------------------------------------------------ static NMS
def _static_nms_per_level(boxes: Tensor, valid: Tensor, ks: list[int], nms_thresh: float,
                          block: int = BLOCK) -> Tensor:
    """Greedy NMS per (image, level) with fixed shapes: boxes [N, K, 4], valid [N, K] -> keep [N, K].

    Within a level the candidates are already in descending logit order (top-k), so "i before j" is i < j.
    Levels are padded to a common size and swept together.
    """
    n, num_levels = boxes.shape[0], len(ks)
    k_max = max(ks)
    if k_max == 0:
        return valid.clone()
    kp = math.ceil(k_max / block) * block
    dtype = boxes.dtype
    over = torch.zeros(n, num_levels, kp, kp, dtype=torch.bool, device=boxes.device)  # i suppresses j
    alive = torch.zeros(n, num_levels, kp, dtype=torch.bool, device=boxes.device)
    before = torch.ones(kp, kp, dtype=torch.bool, device=boxes.device).triu_(diagonal=1)  # i < j
    exact = dtype in _FLOAT_FORMATS
    thr = _largest_at_most(nms_thresh, *_FLOAT_FORMATS[dtype]) if exact else nms_thresh
    start = 0
    for level, k in enumerate(ks):  # a loop over levels: one dense [N, k, k] IoU each
        b = boxes[:, start : start + k]  # [N, k, 4]
        ok = valid[:, start : start + k]  # [N, k]
        x1, y1, x2, y2 = (b[:, :, c] for c in range(4))
        area = (x2 - x1) * (y2 - y1)
        iou = iou_planes(x1[:, :, None], y1[:, :, None], x2[:, :, None], y2[:, :, None], area[:, :, None],
                         x1[:, None, :], y1[:, None, :], x2[:, None, :], y2[:, None, :], area[:, None, :],
                         zero_nan=False)  # [N, k, k], the spec's operation order (symmetric bit for bit)
        above = iou > thr if exact else iou.double() > nms_thresh  # IoU > thr as real numbers
        over[:, level, :k, :k] = above & ok[:, :, None] & ok[:, None, :]
        alive[:, level, :k] = ok
        start += k
    over &= before
    keep = _greedy_sweep(over.reshape(n * num_levels, kp, kp), alive.reshape(n * num_levels, kp), block)
    keep = keep.reshape(n, num_levels, kp)
    return torch.cat([keep[:, level, :k] for level, k in enumerate(ks)], dim=1)


_FLOAT_FORMATS = {torch.float32: (24, -149), torch.float64: (53, -1074)}  # significand bits, smallest exponent


def _largest_at_most(thr: float, bits: int, min_exp: int) -> float:
    """The largest value of a binary float format <= thr (thr >= 0), as a Python float, without tensors.

    Same bound as fast.nms._threshold_in: for x of that format, x > thr (as real numbers) iff x > bound.
    Pure Python arithmetic, so torch.compile folds it to a constant and no tensor is read on the host.
    """
    if thr <= 0.0:
        return thr
    _, e = math.frexp(thr)  # thr = m * 2^e with m in [0.5, 1)
    ulp = math.ldexp(1.0, max(e - bits, min_exp))
    return math.floor(thr / ulp) * ulp  # exact: thr / ulp and the product are powers-of-two scalings


def _greedy_sweep(over: Tensor, alive: Tensor, block: int) -> Tensor:
    """Exact greedy NMS from a suppression mask: over [M, k, k] (i < j only), alive [M, k] -> keep [M, k].

    keep[j] = alive[j] and no kept i < j has over[i, j]. Rows are settled block by block: inside a block,
    kb <- max(0, a - kb @ over_block) starting from kb = a reaches the greedy answer after block - 1 rounds
    (row t is final once rows < t are); the block's kept rows then clear every row they suppress.
    The 0/1 matrix products count suppressors exactly in float32 (at most k < 2^24).
    """
    m, k = alive.shape
    state = alive.to(torch.float32)  # [M, k]: 1 = not (yet) suppressed
    for s in range(0, k, block):  # ceil(k / block) blocks, fixed by k
        e = s + block
        a = state[:, None, s:e].clone()  # [M, 1, B]: rows of the block not suppressed by earlier blocks
        inner = over[:, s:e, s:e].to(torch.float32)  # [M, B, B]
        kb = a
        for _ in range(block - 1):  # fixed count: no data-dependent exit
            kb = torch.baddbmm(a, kb, inner, alpha=-1).clamp_(min=0)
        suppressed = torch.bmm(kb, over[:, s:e, :].to(torch.float32))[:, 0]  # [M, k]
        state = state.masked_fill(suppressed > 0, 0.0)  # block rows become kb; later rows lose suppressed ones
    return state > 0
