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

Shape legend: N boxes, E candidate pairs.
"""

from __future__ import annotations

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


def _threshold_in(dtype: torch.dtype, thr: float) -> Tensor:
    """The largest value of `dtype` that is <= thr, as a 0-d tensor.

    For a value x of that dtype, x > thr (as real numbers) iff x > this bound: either thr is representable,
    or no value of the dtype lies between the bound and thr. Comparing in the boxes' dtype this way gives
    the float64 comparison the spec asks for without converting every IoU to float64.
    """
    t = torch.tensor(thr, dtype=dtype)
    if float(t) > thr:
        t = torch.nextafter(t, torch.tensor(float("-inf"), dtype=dtype))
    return t


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
    exact = planes.dtype in (torch.float32, torch.float64)
    bound = _threshold_in(planes.dtype, thr) if exact else None
    srcs, dsts = [], []
    for p0, p1, second in pair_chunks(count):
        cnt = count[p0:p1]
        a = torch.repeat_interleave(planes[:, p0:p1], cnt, dim=1)  # [5, E']: the first box of each pair
        b = planes.index_select(1, second)  # [5, E']: its partner
        iou = iou_planes(*a, *b, zero_nan=False)
        over = iou > bound if exact else iou.double() > thr
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
