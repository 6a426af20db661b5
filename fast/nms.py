"""NMS and batched NMS without a Python loop over boxes and without an N x N matrix.

Same contract as reference/nms.py (d2-spec §2.14): greedy in descending score order, suppress when
IoU > threshold (IoU in the boxes' dtype, compared with the threshold in float64), kept indices returned
in descending score order, groups independent in ``batched_nms``.

Algorithm (device-agnostic torch):
1. Candidate pairs by sort-and-sweep. IoU(i, j) > t needs an x-overlap ix > t * w_i, because
   inter <= ix * h_i and union >= w_i * h_i. With boxes sorted by (group, x1), every partner j of i
   therefore lies in the window x1_i <= x1_j < x1_i + (1 - t) * w_i (widened by a rounding margin), found
   with one ``searchsorted``. Pairs are expanded with ``repeat_interleave``, and only they get an IoU.
2. Exact IoU on the candidates with the spec's operation order; edges are the pairs with IoU > t, oriented
   from the higher-scored box to the lower.
3. The greedy result is the unique fixed point of keep[v] = not any(keep[u] for edges u -> v); iterating
   from "all kept" reaches it after at most (longest suppression chain + 1) rounds (Cluster-NMS).
On CUDA with float32 boxes, plain ``nms`` uses the bitmask Triton kernels in fast/kernels/nms_triton.py.

Static NMS (``static_nms_per_level``, ``static_class_nms``; used by fast.proposals.select_proposals_static and
fast.roi_heads.fast_rcnn_inference_static): the same greedy result with fixed shapes and no host
synchronisation (CUDA graphs, torch.compile). The candidates come already ranked (position i before j), a
dense [k, k] "IoU > thr and i before j" mask is built, and ``greedy_sweep`` resolves it over ceil(k / B) row
blocks; each block is settled by B - 1 fixed-point rounds (after round t the first t + 1 rows of the block are
final), then its kept rows suppress all later rows. Every loop count depends on k only.

Shape legend: N boxes, E candidate pairs; in the static functions M independent problems (images, or
image x level), k ranked candidates each, B the sweep's block size (STATIC_BLOCK = 64).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fast.boxes import iou_planes
from fast.kernels import nms_triton
from spec import validate as v

# Widening of the candidate window, relative to the box width and coordinate magnitude, in units of the
# dtype's epsilon: the window test is exact math, the IoU is rounded; the margin keeps every pair whose
# rounded IoU could exceed the threshold.
_MARGIN_EPS = 64.0
CHUNK_PAIRS = 1 << 17  # candidate pairs per chunk: ~5 MB of gathered coordinates; memory stays bounded
STATIC_BLOCK = 64  # rows settled together by the static sweep (greedy_sweep)
# Binary float formats whose IoU is compared with the threshold exactly in its own dtype:
# dtype -> (significand bits, smallest exponent) for largest_float_at_most.
FLOAT_FORMATS = {torch.float32: (24, -149), torch.float64: (53, -1074)}


def _check(boxes: Tensor, scores: Tensor, iou_threshold: float) -> float:
    v.check_boxes(boxes, "boxes")
    v.check_vector(scores, "scores", boxes.shape[0], floating=True, finite=True)
    v.check_same_device("boxes", boxes, "scores", scores)
    return v.check_threshold(iou_threshold, "iou_threshold")


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """[N, 4], [N] -> kept indices int64, descending score."""
    thr = _check(boxes, scores, iou_threshold)
    if boxes.is_cuda and boxes.dtype == torch.float32 and nms_triton.TRITON_AVAILABLE:
        order = torch.sort(scores, descending=True, stable=True).indices
        return order[nms_triton.nms_sorted_mask(boxes[order].contiguous(), thr)]
    return _sweep_nms(boxes, scores, None, thr)


def batched_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float) -> Tensor:
    """NMS within each group id; [N, 4], [N], [N] -> kept indices int64, descending score."""
    thr = _check(boxes, scores, iou_threshold)
    v.check_vector(groups, "groups", boxes.shape[0], floating=False)
    v.check_same_device("boxes", boxes, "groups", groups)
    return _sweep_nms(boxes, scores, groups, thr)


def candidate_windows(boxes: Tensor, groups: Tensor | None, thr: float) -> tuple[Tensor, Tensor]:
    """Sort-and-sweep windows: (by_x [N], count [N]).

    by_x maps positions in (group, x1) order to box indices; position p pairs with positions
    p+1 .. p+count[p]. These pairs contain every same-group pair with IoU > thr.
    """
    n = boxes.shape[0]
    x1, x2 = boxes[:, 0].double(), boxes[:, 2].double()
    width = x2 - x1
    key = x1
    if groups is not None and n:  # dense group ids, spaced wider than any window: windows never cross groups
        dense = torch.unique(groups, return_inverse=True)[1]
        span = (x2.max() - x1.min()) + 1.0  # a 0-d tensor: no host sync
        key = x1 + dense.double() * (2.0 * span)
    by_x = torch.sort(key, stable=True).indices  # position -> box
    ks = key[by_x]
    eps = torch.finfo(boxes.dtype).eps * _MARGIN_EPS
    margin = eps * (width + x1.abs() + x2.abs()) + 1e-12
    limit = ks + ((1.0 - thr) * width + margin)[by_x]
    end = torch.searchsorted(ks, limit, right=True)  # first position past each window
    count = (end - torch.arange(1, n + 1, device=boxes.device)).clamp_(min=0)  # partners after position p
    return by_x, count


def pair_chunks(count: Tensor, chunk_pairs: int = CHUNK_PAIRS):
    """Yield (p0, p1, second): the pairs of positions p0..p1-1, about chunk_pairs at a time.

    `second` [E'] lists each position's partners run by run; runs are never split, so a chunk holds at
    least one whole run. Chunking bounds memory (E can approach N^2 / 2 when every box overlaps in x).
    """
    n = count.shape[0]
    cum = torch.cumsum(count, 0)
    total = int(cum[-1]) if n else 0
    if total == 0:
        return
    bounds = [0, n]
    if total > chunk_pairs:
        marks = torch.arange(chunk_pairs, total, chunk_pairs, device=count.device)
        cuts = (torch.searchsorted(cum, marks, right=True) + 1).clamp_(max=n)
        bounds = [0, *torch.unique(cuts).tolist(), n]
    for p0, p1 in zip(bounds[:-1], bounds[1:]):  # a loop over chunks of pairs, not over boxes
        if p1 <= p0:
            continue
        cnt = count[p0:p1]
        run_start = torch.cumsum(cnt, 0) - cnt  # where each position's run starts in this chunk
        pos = torch.arange(p0, p1, device=count.device)
        # partner of pair e in the run of position p: p + 1 + (e - run_start[p])
        second = torch.arange(int(cum[p1 - 1] - (cum[p0 - 1] if p0 else 0)), device=count.device)
        second += torch.repeat_interleave(pos + 1 - run_start, cnt)
        yield p0, p1, second


def largest_float_at_most(thr: float, bits: int, min_exp: int) -> float:
    """The largest value of a binary float format <= thr (thr >= 0), as a Python float, without tensors.

    The format has `bits` significand bits and smallest exponent `min_exp` (FLOAT_FORMATS[dtype]). For a value
    x of that format, x > thr (as real numbers) iff x > this bound: either thr is representable, or no value of
    the format lies between the bound and thr. Comparing in the IoU's dtype this way gives the float64
    comparison the spec asks for without converting every IoU to float64. Pure Python arithmetic, so
    torch.compile folds it to a constant and no tensor is read on the host.
    """
    if thr <= 0.0:
        return thr
    _, e = math.frexp(thr)  # thr = m * 2^e with m in [0.5, 1)
    ulp = math.ldexp(1.0, max(e - bits, min_exp))
    return math.floor(thr / ulp) * ulp  # exact: thr / ulp and the product are powers-of-two scalings


def _above(iou: Tensor, thr: float) -> Tensor:
    """iou > thr as real numbers (the spec's float64 comparison), in iou's dtype where that is exact."""
    if iou.dtype in FLOAT_FORMATS:
        return iou > largest_float_at_most(thr, *FLOAT_FORMATS[iou.dtype])
    return iou.double() > thr


def _sweep_nms(boxes: Tensor, scores: Tensor, groups: Tensor | None, thr: float) -> Tensor:
    n = boxes.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices  # rank -> box
    rank = torch.empty_like(order)
    rank[order] = torch.arange(n, device=boxes.device)
    by_x, count = candidate_windows(boxes, groups, thr)
    c = boxes[by_x].t()  # [4, N] planes in position order
    planes = torch.cat([c, ((c[2] - c[0]) * (c[3] - c[1]))[None]]).contiguous()  # [5, N]: x1 y1 x2 y2 area
    rank_by_x = rank[by_x]
    srcs, dsts = [], []
    for p0, p1, second in pair_chunks(count):
        cnt = count[p0:p1]
        a = torch.repeat_interleave(planes[:, p0:p1], cnt, dim=1)  # [5, E']: the first box of each pair
        b = planes.index_select(1, second)  # [5, E']: its partner
        iou = iou_planes(*a, *b, zero_nan=False)
        over = _above(iou, thr)
        ri = torch.repeat_interleave(rank_by_x[p0:p1], cnt)[over]
        rj = rank_by_x[second[over]]
        srcs.append(torch.minimum(ri, rj))  # the higher-scored box suppresses the lower
        dsts.append(torch.maximum(ri, rj))
    src = torch.cat(srcs) if srcs else rank[:0]
    dst = torch.cat(dsts) if dsts else rank[:0]
    keep = torch.ones(n, dtype=torch.bool, device=boxes.device)  # indexed by rank
    while True:  # fixed-point rounds, each vectorized over all edges
        suppressed = torch.zeros_like(keep)
        suppressed[dst[keep[src]]] = True
        new_keep = ~suppressed
        if torch.equal(new_keep, keep):
            break
        keep = new_keep
    return order[keep]


# ------------------------------------------------------------------------------------------------ static NMS
def _dense_above(boxes: Tensor, thr: float) -> Tensor:
    """boxes [M, k, 4] -> bool [M, k, k]: IoU(i, j) > thr as real numbers.

    The spec's operation order (as batched_nms), symmetric bit for bit; 0/0 (two empty boxes) is NaN, never
    above the threshold.
    """
    x1, y1, x2, y2 = boxes.unbind(2)
    area = (x2 - x1) * (y2 - y1)
    iou = iou_planes(x1[:, :, None], y1[:, :, None], x2[:, :, None], y2[:, :, None], area[:, :, None],
                     x1[:, None, :], y1[:, None, :], x2[:, None, :], y2[:, None, :], area[:, None, :],
                     zero_nan=False)  # [M, k, k]
    return _above(iou, thr)


def static_nms_per_level(boxes: Tensor, valid: Tensor, ks: list[int], nms_thresh: float,
                         block: int = STATIC_BLOCK) -> Tensor:
    """Greedy NMS per (image, level) with fixed shapes: boxes [N, K, 4], valid [N, K] -> keep [N, K].

    K = sum(ks): level l holds ks[l] consecutive candidates of each image, already in descending score order
    (top-k), so "i before j" is i < j. Levels are padded to a common size and swept together.
    """
    n, num_levels = boxes.shape[0], len(ks)
    k_max = max(ks)
    if k_max == 0:
        return valid.clone()
    kp = math.ceil(k_max / block) * block
    over = torch.zeros(n, num_levels, kp, kp, dtype=torch.bool, device=boxes.device)  # i suppresses j
    alive = torch.zeros(n, num_levels, kp, dtype=torch.bool, device=boxes.device)
    before = torch.ones(kp, kp, dtype=torch.bool, device=boxes.device).triu_(diagonal=1)  # i < j
    start = 0
    for level, k in enumerate(ks):  # a loop over levels: one dense [N, k, k] IoU each
        ok = valid[:, start : start + k]  # [N, k]
        above = _dense_above(boxes[:, start : start + k], nms_thresh)  # [N, k, k]
        over[:, level, :k, :k] = above & ok[:, :, None] & ok[:, None, :]
        alive[:, level, :k] = ok
        start += k
    over &= before
    keep = greedy_sweep(over.reshape(n * num_levels, kp, kp), alive.reshape(n * num_levels, kp), block)
    keep = keep.reshape(n, num_levels, kp)
    return torch.cat([keep[:, level, :k] for level, k in enumerate(ks)], dim=1)


def static_class_nms(boxes: Tensor, classes: Tensor, valid: Tensor, nms_thresh: float,
                     block: int = STATIC_BLOCK) -> Tensor:
    """Greedy same-class NMS of score-ranked candidates: boxes [N, M, 4], classes / valid [N, M] -> keep [N, M].

    Candidate i suppresses a later j (i < j) of its class when IoU > nms_thresh (as real numbers), both valid;
    resolved by greedy_sweep.
    """
    n, m = valid.shape
    if m == 0:
        return valid.clone()
    over = _dense_above(boxes, nms_thresh)  # [N, M, M]
    over &= classes[:, :, None] == classes[:, None, :]
    over &= valid[:, :, None] & valid[:, None, :]
    over &= torch.ones(m, m, dtype=torch.bool, device=boxes.device).triu_(diagonal=1)
    return greedy_sweep(over, valid, block)


def greedy_sweep(over: Tensor, alive: Tensor, block: int = STATIC_BLOCK) -> Tensor:
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
