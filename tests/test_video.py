"""Multi-view video inference helpers (detspec/video.py)."""

from __future__ import annotations

import pytest
import torch

from detspec import video as V
from spec.tolerances import DTYPE_TOLERANCES

SPEC = V.ViewSpec(num_clips=5, num_crops=1, clip_len=4, frame_stride=2, crop_size=8, short_side=8,
                  mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def test_parse_views():
    assert V.parse_views("5x1") == (5, 1)
    assert V.parse_views("10X3") == (10, 3)
    for bad in ("5", "x1", "0x1", "axb"):
        with pytest.raises(ValueError, match="views"):
            V.parse_views(bad)


def test_clip_indices_are_uniform():
    # 40 frames, clips of 4 frames every 2 -> span 7; starts spread over [0, 33]: 0, 8.25, 16.5, 24.75, 33
    idx = V.clip_indices(40, 5, 4, 2)
    assert idx[:, 0].tolist() == [0, 8, 16, 24, 33]
    assert idx[0].tolist() == [0, 2, 4, 6]
    assert idx[-1].tolist() == [33, 35, 37, 39]
    # a 3-frame video: every clip starts at 0, indices past the end repeat the last frame
    assert V.clip_indices(3, 2, 4, 2).tolist() == [[0, 2, 2, 2], [0, 2, 2, 2]]
    assert V.clip_indices(40, 1, 4, 2)[0, 0].item() == 16  # a single clip is centred: (40 - 7) // 2


def test_crop_offsets():
    assert V.crop_offsets(20, 8, 1) == [6]
    assert V.crop_offsets(20, 8, 3) == [0, 6, 12]


def test_make_views_shapes_and_normalization():
    video = torch.full((40, 8, 12, 3), 191, dtype=torch.uint8)  # 191/255 = 0.749
    views = V.make_views(video, SPEC)
    assert views.shape == (5, 3, 4, 8, 8)  # [V, C, T, crop, crop]
    torch.testing.assert_close(views, torch.full_like(views, (191 / 255 - 0.5) / 0.25), rtol=1e-5, atol=1e-5)
    three = V.make_views(video, V.ViewSpec(**{**SPEC.__dict__, "num_clips": 2, "num_crops": 3}))
    assert three.shape == (6, 3, 4, 8, 8)


def test_make_views_takes_the_right_frames():
    # frame t holds t / 64 (exact in float32, inside [0, 1]); an 8x8 frame is already at short_side 8 (no resize)
    frames = (torch.arange(40, dtype=torch.float32) / 64)[:, None, None, None].expand(40, 8, 8, 3).contiguous()
    spec = V.ViewSpec(**{**SPEC.__dict__, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)})
    views = V.make_views(frames, spec)  # float input in [0, 1]: values are used as they are
    assert views[:, 0, :, 0, 0].tolist() == (V.clip_indices(40, 5, 4, 2).float() / 64).tolist()


def test_classify_views_averages_probabilities():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    seen = []

    def model(x):  # view i gets logits[i]
        start = len(seen)
        seen.extend(range(x.shape[0]))
        return logits[start : start + x.shape[0]]

    out, probs = V.classify_views(model, torch.zeros(2, 3, 4, 8, 8))
    assert torch.equal(out, logits)
    # the mean of per-view softmax: (e^2/(e^2+2) for class 0 in view 0, 1/(e^2+2) in view 1) / 2, and so on
    e2 = torch.exp(torch.tensor(2.0))
    p_hi, p_lo = e2 / (e2 + 2), 1 / (e2 + 2)
    torch.testing.assert_close(probs, torch.stack([(p_hi + p_lo) / 2, (p_lo + p_hi) / 2, p_lo]))
    top = V.top_k(probs, 2, names=["a", "b", "c"])
    assert {name for _, name, _ in top} == {"a", "b"}


def test_bad_input():
    with pytest.raises(ValueError, match="video"):
        V.make_views(torch.zeros(4, 8, 8), SPEC)
    with pytest.raises(ValueError, match="num_crops"):
        V.ViewSpec(**{**SPEC.__dict__, "num_crops": 2})
    with pytest.raises(ValueError, match="no frames"):
        V.clip_indices(0, 1, 4, 2)


def test_video_to_unit_scales_uint8_and_keeps_unit_floats():
    rng = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (3, 4, 5, 3), dtype=torch.uint8, generator=rng)
    # uint8 -> / 255, compared with numpy's float64 division (float32 default tolerances: one rounding apart)
    expected = torch.from_numpy(pixels.numpy() / 255.0).float()
    torch.testing.assert_close(V.video_to_unit(pixels), expected, rtol=DTYPE_TOLERANCES[torch.float32][0],
                               atol=DTYPE_TOLERANCES[torch.float32][1])
    for dtype in (torch.float16, torch.float32, torch.float64):
        unit = torch.tensor([0.0, 0.25, 1.0], dtype=dtype).view(1, 1, 1, 3)  # both ends of [0, 1] are inside
        out = V.video_to_unit(unit)
        assert out.dtype == torch.float32 and out.flatten().tolist() == [0.0, 0.25, 1.0]
    # the same picture as uint8 or as float / 255 gives the same views
    frames = pixels.repeat(14, 1, 1, 1)[:40]  # 40 frames: enough for SPEC's clips
    rtol, atol = DTYPE_TOLERANCES[torch.float32]
    torch.testing.assert_close(V.make_views(frames, SPEC), V.make_views(frames.double() / 255, SPEC),
                               rtol=rtol, atol=atol)


@pytest.mark.parametrize("video, message", [
    (torch.zeros(2, 4, 4, 3, dtype=torch.uint16), r"got dtype uint16 \(convert it to uint8"),
    (torch.zeros(2, 4, 4, 3, dtype=torch.int32), "got dtype int32"),
    (torch.zeros(2, 4, 4, 3, dtype=torch.bool), "got dtype bool"),
    (torch.full((2, 4, 4, 3), 255.0), r"values in \[255, 255\] \(0-255 pixels stored as float: divide by 255"),
    (torch.full((2, 4, 4, 3), 1.0 + 2**-23), r"values in \[1, 1\]"),  # just above 1 (printed rounded)
    (torch.full((2, 4, 4, 3), -1e-3), r"values in \[-0.001, -0.001\]"),
    (torch.tensor([float("nan"), 0.5, float("inf")]).view(1, 1, 1, 3), "1 NaN and 1 infinite"),
    (torch.zeros(0, 4, 4, 3), "empty"),
    (torch.zeros(2, 4, 0, 3), "empty"),
    (torch.zeros(2, 4, 4, 1), r"\[T, H, W, 3\]"),
])
def test_video_to_unit_refuses(video, message):
    with pytest.raises(ValueError, match=rf"^clip\.npy: .*{message}"):
        V.video_to_unit(video, name="clip.npy")
    with pytest.raises(ValueError, match=message):
        V.make_views(video, SPEC)
