"""Conformance: class-balanced label subsampling for the RPN and the ROI heads. d2-spec §2.6, §1.4, §1.5.

Samples are random, and implementations may use different random algorithms (the reference keeps randperm
prefixes, fast the top-k of uniform keys), so samples are never compared across implementations: the tests
check counts, pools, determinism per generator and (lightly) uniformity.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from detspec.conformance._util import cpu
from spec.config import BASE_RCNN_FPN

RPN = BASE_RCNN_FPN.rpn
ROI = BASE_RCNN_FPN.roi_heads
ROI_BG = ROI.background_index  # num_classes = 80: the background label is the last class


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def sample(impl, labels, num_samples, fraction, bg_label, generator=None):
    """Call the implementation; return (pos, neg) on the CPU after checking dtype and device."""
    pos, neg = impl.subsample_labels(labels, num_samples, fraction, bg_label, generator)
    assert pos.dtype == torch.int64 and neg.dtype == torch.int64, (pos.dtype, neg.dtype)
    assert pos.dim() == 1 and neg.dim() == 1
    assert pos.device == labels.device and neg.device == labels.device
    return cpu(pos), cpu(neg)


def check_sample(labels, pos, neg, num_samples, fraction, bg_label):
    """SAMPLE.COUNTS and SAMPLE.POOLS for one draw."""
    __tracebackhide__ = True
    labels = cpu(labels).long()
    is_pos = (labels != -1) & (labels != bg_label)
    is_neg = labels == bg_label
    num_pos = min(int(is_pos.sum()), int(num_samples * fraction))
    num_neg = min(int(is_neg.sum()), num_samples - num_pos)
    assert (pos.numel(), neg.numel()) == (num_pos, num_neg), \
        f"counts {(pos.numel(), neg.numel())} != {(num_pos, num_neg)} for {int(is_pos.sum())} pos, " \
        f"{int(is_neg.sum())} neg, num_samples={num_samples}, positive_fraction={fraction}"
    both = torch.cat([pos, neg])
    assert ((both >= 0) & (both < labels.numel())).all(), "index out of range"
    assert torch.unique(both).numel() == both.numel(), "an index was drawn twice"
    assert is_pos[pos].all(), f"positives drawn from outside the pool: labels {labels[pos].tolist()}"
    assert is_neg[neg].all(), f"negatives drawn from outside the pool: labels {labels[neg].tolist()}"


@st.composite
def label_vectors(draw, max_n: int = 300):
    """(labels, bg_label): RPN-style {-1, 0, 1, 2} with bg 0, or ROI-style classes {0..K} and -1 with bg K."""
    roi = draw(st.booleans())
    if roi:
        bg = ROI_BG
        value = st.one_of(st.just(bg), st.just(bg), st.integers(0, bg), st.just(-1))
    else:
        bg = RPN.bg_label
        value = st.sampled_from([-1, -1, 0, 0, 1, 2])  # any label other than -1 and bg is a positive
    values = draw(st.lists(value, max_size=max_n))
    dtype = draw(st.sampled_from([torch.int8, torch.int64]))  # match labels are int8, class labels int64
    return torch.tensor(values, dtype=dtype), bg


# ------------------------------------------------------------------------------------------- counts and pools
@pytest.mark.clause("SAMPLE.COUNTS", "SAMPLE.POOLS")
@given(label_vectors(),
       st.one_of(st.sampled_from([RPN.batch_size_per_image, ROI.batch_size_per_image]), st.integers(0, 400)),
       st.one_of(st.sampled_from([RPN.positive_fraction, ROI.positive_fraction, 0.0, 1.0]),
                 st.floats(0.0, 1.0)),
       st.integers(0, 2**31 - 1))
def test_counts_and_pools(impl, device, labels_bg, num_samples, fraction, seed):
    labels, bg = labels_bg
    labels = labels.to(device)
    pos, neg = sample(impl, labels, num_samples, fraction, bg, gen(seed))
    check_sample(labels, pos, neg, num_samples, fraction, bg)


@pytest.mark.clause("SAMPLE.COUNTS")
def test_counts_known_values(impl, device):
    # 10 positives, 20 negatives, 5 ignored; num_samples 16, fraction 0.5 -> int(8.0) = 8 pos, 16 - 8 = 8 neg
    labels = torch.tensor([1] * 10 + [0] * 20 + [-1] * 5, device=device)
    pos, neg = sample(impl, labels, 16, RPN.positive_fraction, RPN.bg_label, gen(0))
    assert (pos.numel(), neg.numel()) == (8, 8)
    # few positives: 3 pos -> min(3, 8) = 3, negatives fill up the rest: min(20, 16 - 3) = 13
    labels = torch.tensor([1] * 3 + [0] * 20, device=device)
    pos, neg = sample(impl, labels, 16, RPN.positive_fraction, RPN.bg_label, gen(0))
    assert (pos.numel(), neg.numel()) == (3, 13)
    # int() truncates: 10 * 0.25 = 2.5 -> 2 positives
    labels = torch.tensor([1] * 5 + [0] * 20, device=device)
    pos, neg = sample(impl, labels, 10, ROI.positive_fraction, RPN.bg_label, gen(0))
    assert (pos.numel(), neg.numel()) == (2, 8)
    # nothing to draw from, or nothing asked for
    for lab, n in [(torch.zeros(0, dtype=torch.int64, device=device), 16),
                   (torch.full((7,), -1, dtype=torch.int64, device=device), 16),
                   (torch.tensor([1, 0, 1, 0], device=device), 0)]:
        pos, neg = sample(impl, lab, n, RPN.positive_fraction, RPN.bg_label, gen(0))
        assert pos.numel() == neg.numel() == 0


# ------------------------------------------------------------------------------------------- the two callers
@pytest.mark.clause("SAMPLE.RPN", "SAMPLE.COUNTS", "SAMPLE.POOLS")
def test_rpn_numbers(impl, device):
    assert (RPN.batch_size_per_image, RPN.positive_fraction, RPN.bg_label) == (256, 0.5, 0)
    g = gen(1)
    # the 800x1216 anchor set (242,991 anchors): 1000 positives, 500 ignored, the rest background
    labels = torch.zeros(242_991, dtype=torch.int8)
    labels[torch.randperm(labels.numel(), generator=g)[:1500]] = torch.tensor([1] * 1000 + [-1] * 500,
                                                                              dtype=torch.int8)
    labels = labels.to(device)
    pos, neg = sample(impl, labels, RPN.batch_size_per_image, RPN.positive_fraction, RPN.bg_label, g)
    # at most int(256 * 0.5) = 128 positives; there are 1000, so exactly 128, and 256 - 128 = 128 negatives
    assert pos.numel() == 128 and neg.numel() == 128
    check_sample(labels, pos, neg, RPN.batch_size_per_image, RPN.positive_fraction, RPN.bg_label)
    # an image with 20 positive anchors: all 20 are kept, and 236 negatives fill the batch of 256
    labels = torch.zeros(242_991, dtype=torch.int8, device=device)
    labels[:20] = 1
    pos, neg = sample(impl, labels, RPN.batch_size_per_image, RPN.positive_fraction, RPN.bg_label, g)
    assert pos.numel() == 20 and neg.numel() == 236
    assert torch.equal(pos.sort().values, torch.arange(20))


@pytest.mark.clause("SAMPLE.ROI", "SAMPLE.COUNTS", "SAMPLE.POOLS")
def test_roi_numbers(impl, device):
    assert (ROI.batch_size_per_image, ROI.positive_fraction, ROI_BG) == (512, 0.25, 80)
    g = gen(2)
    # 2000 proposals + appended GT: 300 foreground with classes 0..79 (class 0 is foreground here), rest bg 80
    labels = torch.full((2000,), ROI_BG, dtype=torch.int64)
    fg = torch.randperm(2000, generator=g)[:300]
    labels[fg] = torch.arange(300) % ROI.num_classes
    labels = labels.to(device)
    pos, neg = sample(impl, labels, ROI.batch_size_per_image, ROI.positive_fraction, ROI_BG, g)
    # at most int(512 * 0.25) = 128 foreground, and 512 - 128 = 384 background
    assert pos.numel() == 128 and neg.numel() == 384
    check_sample(labels, pos, neg, ROI.batch_size_per_image, ROI.positive_fraction, ROI_BG)
    # class 0 is a positive for the ROI heads: with only class-0 foreground, every one is sampled as positive
    labels = torch.full((600,), ROI_BG, dtype=torch.int64, device=device)
    labels[:50] = 0
    pos, neg = sample(impl, labels, ROI.batch_size_per_image, ROI.positive_fraction, ROI_BG, g)
    assert torch.equal(pos.sort().values, torch.arange(50))
    assert neg.numel() == 512 - 50  # 462 of the 550 background proposals
    # few proposals: fewer than 512 in total are returned (R < 512 per image)
    labels = torch.tensor([3, 80, 80, 7, 80], device=device)
    pos, neg = sample(impl, labels, ROI.batch_size_per_image, ROI.positive_fraction, ROI_BG, g)
    assert sorted(pos.tolist()) == [0, 3] and sorted(neg.tolist()) == [1, 2, 4]


# ------------------------------------------------------------------------------------------- randomness
@pytest.mark.clause("SAMPLE.GENERATOR")
@pytest.mark.parametrize("dtype", [torch.int8, torch.int64])
def test_generator_determinism(impl, device, dtype):
    # 1000 positives and 3000 negatives: 128 of 1000 (and 128 of 3000) can be chosen in C(1000, 128) > 1e150
    # ways, so two different seeds giving the same sample is astronomically unlikely.
    labels = torch.tensor([1, 0, 0, 0, -1] * 1000, dtype=dtype, device=device)
    args = (RPN.batch_size_per_image, RPN.positive_fraction, RPN.bg_label)
    a = sample(impl, labels, *args, gen(123))
    b = sample(impl, labels, *args, gen(123))
    c = sample(impl, labels, *args, gen(124))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), "same seed, different sample"
    assert not torch.equal(a[0].sort().values, c[0].sort().values), "different seeds, same positives"
    assert not torch.equal(a[1].sort().values, c[1].sort().values), "different seeds, same negatives"
    # one generator, consumed twice: the second draw is (almost surely) a different sample
    g = gen(123)
    first, second = sample(impl, labels, *args, g), sample(impl, labels, *args, g)
    assert not torch.equal(first[0].sort().values, second[0].sort().values)


@pytest.mark.clause("SAMPLE.GENERATOR")
def test_generator_is_the_only_randomness(impl, device):
    """With a generator, the global RNG is not advanced and does not matter; generator=None is allowed."""
    labels = torch.tensor([1, 0, 0, -1] * 200, device=device)
    args = (RPN.batch_size_per_image, RPN.positive_fraction, RPN.bg_label)
    cpu_state = torch.get_rng_state()
    cuda_state = torch.cuda.get_rng_state() if device.type == "cuda" else None
    a = sample(impl, labels, *args, gen(5))
    assert torch.equal(torch.get_rng_state(), cpu_state), "the global CPU RNG was used"
    if cuda_state is not None:
        assert torch.equal(torch.cuda.get_rng_state(), cuda_state), "the global CUDA RNG was used"
    torch.manual_seed(999)  # a different global state does not change a seeded sample
    b = sample(impl, labels, *args, gen(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    pos, neg = sample(impl, labels, *args)  # generator=None: the global RNG
    check_sample(labels, pos, neg, *args)
    pos, neg = sample(impl, labels, *args, None)
    check_sample(labels, pos, neg, *args)


@pytest.mark.clause("SAMPLE.GENERATOR", "SAMPLE.POOLS")
def test_uniform_choice(impl, device):
    # 4 positives and 4 negatives, num_samples 2 at fraction 0.5: 1 positive and 1 negative per draw.
    # Over 400 draws each index is chosen Binomial(400, 1/4) times: mean 100, sd sqrt(400 * 1/4 * 3/4) = 8.66.
    # [50, 150] is +-5.77 sd, so a uniform sampler fails with probability about 4 * 8e-9 per pool; the seeds
    # are fixed, so the outcome is deterministic anyway. A sampler that always takes the first (or last)
    # member, or favours half of the pool, fails at once.
    labels = torch.tensor([1, 0, 1, 0, 1, 0, 1, 0], device=device)
    g = gen(2024)
    pos_counts, neg_counts = torch.zeros(8, dtype=torch.int64), torch.zeros(8, dtype=torch.int64)
    for _ in range(400):
        pos, neg = sample(impl, labels, 2, RPN.positive_fraction, RPN.bg_label, g)
        assert pos.numel() == 1 and neg.numel() == 1
        pos_counts[pos] += 1
        neg_counts[neg] += 1
    pools = [("positive", pos_counts, [0, 2, 4, 6]), ("negative", neg_counts, [1, 3, 5, 7])]
    for name, counts, members in pools:
        chosen = counts[members]
        assert counts.sum() == 400 and chosen.sum() == 400, f"{name}: drawn outside the pool {counts.tolist()}"
        assert ((chosen >= 50) & (chosen <= 150)).all(), f"{name} counts {chosen.tolist()} are not uniform"


# ------------------------------------------------------------------------------------------- bad input
@pytest.mark.clause("SAMPLE.ERRORS")
@pytest.mark.parametrize("make, kwargs, arg", [
    (lambda d: torch.tensor([1.0, 0.0], device=d), {}, "labels"),                  # float labels
    (lambda d: torch.tensor([True, False], device=d), {}, "labels"),               # bool labels
    (lambda d: torch.tensor([[1, 0], [0, 1]], device=d), {}, "labels"),            # 2-D labels
    (lambda d: [1, 0, 0], {}, "labels"),                                           # a list
    (lambda d: torch.tensor([1, 0], device=d), {"num_samples": -1}, "num_samples"),
    (lambda d: torch.tensor([1, 0], device=d), {"positive_fraction": 1.5}, "positive_fraction"),
    (lambda d: torch.tensor([1, 0], device=d), {"positive_fraction": -0.1}, "positive_fraction"),
    (lambda d: torch.tensor([1, 0], device=d), {"generator": "seed"}, "generator"),
    (lambda d: torch.tensor([1, 0], device=d), {"generator": 0}, "generator"),
], ids=["float", "bool", "2d", "list", "negative-num-samples", "fraction-1.5", "fraction-negative",
        "generator-str", "generator-int"])
def test_rejects_bad_input(impl, device, make, kwargs, arg):
    call = dict(num_samples=RPN.batch_size_per_image, positive_fraction=RPN.positive_fraction,
                bg_label=RPN.bg_label, generator=None)
    call.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=arg):
        impl.subsample_labels(make(device), call["num_samples"], call["positive_fraction"], call["bg_label"],
                              call["generator"])
