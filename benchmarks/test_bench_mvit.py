"""MViT benchmarks: MViT-B 16x4 forward on 1x3x16x224x224 and the image variant MViT-B-16 on 1x3x224x224,
reference vs fast vs torchvision (``mvit_v1_b``; torchvision has no image MViT-B-16).

Run:

    .venv/bin/python -m pytest benchmarks/test_bench_mvit.py --benchmark-enable --benchmark-only \
        --benchmark-json=out/bench_mvit.json -p no:cacheprovider
    python benchmarks/report.py out/bench_mvit.json

All implementations share one seeded set of weights (torchvision's layout is detspec's), run in eval mode
under torch.inference_mode, and agree on the logits (checked once, outside the timed region).
"""

from __future__ import annotations

import functools

import pytest
import torch

import fast
import reference
from spec.mvit import MVIT_B_16, MVIT_B_16X4

tv_video = pytest.importorskip("torchvision.models.video")

ROUNDS = {"reference": 2, "fast": 3, "fast-bf16": 3, "torchvision": 3}
SEED = 0


@functools.cache
def models(variant: str, device: str) -> dict[str, torch.nn.Module]:
    torch.manual_seed(SEED)
    cfg = {"video": MVIT_B_16X4, "image": MVIT_B_16}[variant]
    ref = reference.MViT(cfg).eval()
    out = {"reference": ref, "fast": fast.MViT(cfg).eval()}
    out["fast"].load_state_dict(ref.state_dict())
    out["fast-bf16"] = fast.MViT(cfg, autocast_dtype=torch.bfloat16).eval()  # PRECISION.AUTOCAST
    out["fast-bf16"].load_state_dict(ref.state_dict())
    if variant == "video":
        tv = tv_video.mvit_v1_b(weights=None).eval()
        tv.load_state_dict(ref.state_dict())  # the same layout: a strict load
        out["torchvision"] = tv
    return {k: m.to(device) for k, m in out.items()}


@functools.cache
def clip(variant: str, device: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(SEED)
    shape = (1, 3, 16, 224, 224) if variant == "video" else (1, 3, 224, 224)
    return torch.randn(shape, generator=g).to(device)


@functools.cache
def check(variant: str, device: str) -> float:
    """Every implementation gives the same logits (max abs difference to the reference, float32)."""
    x = clip(variant, device)
    with torch.inference_mode():
        outs = {k: m(x) for k, m in models(variant, device).items()}
    # float32 implementations agree to 1e-3; bf16's error is judged by the ratio rule in the tests
    # (tests/test_mvit_internals.py, `detspec check --dtype bf16`), here only recorded
    worst = max(float((o - outs["reference"]).abs().max()) for k, o in outs.items() if k != "fast-bf16")
    assert worst < 1e-3, f"{variant}: implementations disagree by {worst}"
    return worst, float((outs["fast-bf16"] - outs["reference"]).abs().max())


CASES = [("video", "reference"), ("video", "fast"), ("video", "fast-bf16"), ("video", "torchvision"),
         ("image", "reference"), ("image", "fast"), ("image", "fast-bf16")]


@pytest.mark.benchmark(group="mvit")
@pytest.mark.parametrize("workload, implementation", CASES, ids=[f"{v}-{i}" for v, i in CASES])
def test_mvit_forward(benchmark, bench_device, timed, workload, implementation):
    variant = workload  # "video" (MViT-B 16x4) or "image" (MViT-B-16)
    device = str(bench_device)
    worst, worst_bf16 = check(variant, device)
    model, x = models(variant, device)[implementation], clip(variant, device)
    benchmark.extra_info.update(variant=variant, input_shape=list(x.shape), max_abs_logit_diff=worst,
                                max_abs_logit_diff_bf16=worst_bf16)

    def run():
        with torch.inference_mode():
            return model(x)

    benchmark.pedantic(timed(run), rounds=ROUNDS[implementation], warmup_rounds=1)
