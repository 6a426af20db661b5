"""The procedural synthetic COCO dataset: determinism, box/pixel agreement, occlusion rule, categories, reader."""

from __future__ import annotations

import json

import numpy as np
import pytest

from detspec.data import synthetic as S
from detspec.io.categories import CategoryMap

SMALL = dict(image_size=((64, 96), (64, 128)), min_objects=2, max_objects=6)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    return S.make_synthetic_coco(out, num_images=4, seed=3, **SMALL)


# ----------------------------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_files(written, tmp_path):
    again = S.make_synthetic_coco(tmp_path / "again", num_images=4, seed=3, **SMALL)
    assert again.read_bytes() == written.read_bytes()
    names = sorted(p.name for p in (written.parent / "images").iterdir())
    assert names == sorted(p.name for p in (again.parent / "images").iterdir())
    assert len(names) == 4
    for name in names:
        assert (again.parent / "images" / name).read_bytes() == (written.parent / "images" / name).read_bytes()


def test_different_seed_differs(written, tmp_path):
    other = S.make_synthetic_coco(tmp_path / "other", num_images=4, seed=4, **SMALL)
    assert other.read_bytes() != written.read_bytes()
    first = "000000.png"
    assert (other.parent / "images" / first).read_bytes() != (written.parent / "images" / first).read_bytes()


def test_in_memory_stream_matches_files_and_ignores_global_rng(written):
    from PIL import Image

    data = json.loads(written.read_text())
    ds = S.SyntheticCOCO(4, seed=3, **SMALL)
    np.random.seed(123)  # the generator must not use (or disturb) numpy's global RNG
    state = np.random.get_state()[1].copy()
    cmap = CategoryMap.from_coco(data["categories"])
    for i, info in enumerate(data["images"]):
        image, boxes, classes = ds[i]
        assert image.dtype == np.uint8 and image.shape == (info["height"], info["width"], 3)
        assert boxes.dtype == np.float32 and classes.dtype == np.int64
        on_disk = np.asarray(Image.open(written.parent / "images" / info["file_name"]).convert("RGB"))
        np.testing.assert_array_equal(on_disk, image)
        anns = [a for a in data["annotations"] if a["image_id"] == info["id"]]
        xywh = np.asarray([a["bbox"] for a in anns], dtype=np.float32)
        np.testing.assert_array_equal(np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1), boxes)
        np.testing.assert_array_equal(cmap.to_contiguous([a["category_id"] for a in anns]), classes)
    np.testing.assert_array_equal(np.random.get_state()[1], state)


def test_image_i_does_not_depend_on_the_number_of_images():
    a = S.SyntheticCOCO(2, seed=5, **SMALL)[1]
    b = S.SyntheticCOCO(None, seed=5, **SMALL)[1]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


# ----------------------------------------------------------------------------------------------- geometry and pixels


def _details(n=12, seed=0, **kw):
    ds = S.SyntheticCOCO(n, seed=seed, **{**SMALL, **kw})
    return [ds.sample(i, return_details=True) for i in range(n)]


def test_boxes_inside_image_and_sizes_in_range():
    for image, boxes, classes, details in _details():
        h, w = image.shape[:2]
        assert 64 <= h <= 96 and 64 <= w <= 128
        assert len(boxes) >= 1 and len(details) <= SMALL["max_objects"]
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
        assert (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert ((classes >= 0) & (classes < len(S.CATEGORIES))).all()
        limit = min(h, w) // 2  # default max_size: half the shorter side
        for d in details:
            x0, y0, x1, y1 = d["box"]
            # shapes fill their inscribing box, whose sides lie in [MIN_SHAPE_SIZE, limit]
            assert S.MIN_SHAPE_SIZE <= x1 - x0 <= limit and S.MIN_SHAPE_SIZE <= y1 - y0 <= limit


def test_annotated_box_is_the_extent_of_the_full_mask_and_pixels_carry_the_colour():
    for image, boxes, _, details in _details():
        annotated = [d for d in details if d["annotated"]]
        assert len(annotated) == len(boxes)
        for d, box in zip(annotated, boxes):
            ys, xs = np.nonzero(d["mask"])
            assert tuple(box.tolist()) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        for d in details:
            assert (d["visible"] <= d["mask"]).all()
            assert (image[d["visible"]] == d["colour"]).all()


def test_unoccluded_filled_rectangle_box_equals_extent_of_its_colour():
    found = 0
    for image, _, _, details in _details(n=30, seed=1):
        h, w = image.shape[:2]
        for d in details:
            if d["kind"] != "filled_rectangle" or d["visible_fraction"] < 1.0:
                continue
            x0, y0, x1, y1 = d["box"]
            # every pixel of the box has the rectangle's colour ...
            assert (image[y0:y1, x0:x1] == d["colour"]).all()
            # ... and in a 1-pixel margin around it the colour region ends exactly at the box
            wy0, wx0, wy1, wx1 = max(y0 - 1, 0), max(x0 - 1, 0), min(y1 + 1, h), min(x1 + 1, w)
            same = (image[wy0:wy1, wx0:wx1] == d["colour"]).all(axis=-1)
            ys, xs = np.nonzero(same)
            assert (xs.min() + wx0, ys.min() + wy0, xs.max() + wx0 + 1, ys.max() + wy0 + 1) == (x0, y0, x1, y1)
            found += 1
    assert found >= 3


def test_occlusion_rule_drops_objects_below_the_visible_threshold():
    fractions = []
    for _, _, _, details in _details(n=30, seed=2, min_objects=6, max_objects=10, image_size=64):
        for d in details:
            fraction = d["visible"].sum() / d["mask"].sum()  # recomputed from the per-object masks
            assert d["visible_fraction"] == pytest.approx(fraction)
            assert d["annotated"] == (fraction >= S.MIN_VISIBLE_FRACTION)
            fractions.append(fraction)
        assert details[-1]["visible_fraction"] == 1.0  # the topmost shape is never occluded
    fractions = np.asarray(fractions)
    assert ((fractions > 0) & (fractions < 1)).any()  # occlusion happens in crowded 64x64 images


def test_every_class_and_a_range_of_sizes_appear():
    classes, sides = set(), []
    for _, boxes, cls, _ in _details(n=20, seed=4, image_size=128):
        classes |= set(cls.tolist())
        sides += (boxes[:, 2:] - boxes[:, :2]).max(axis=1).tolist()
    assert classes == set(range(len(S.CATEGORIES)))
    assert min(sides) < 20 and max(sides) > 48  # from ~12 px to ~half of 128


@pytest.mark.parametrize("kind", S.CLASS_NAMES)
def test_every_shape_is_non_empty_and_fills_its_box_in_extent(kind):
    rng = np.random.default_rng(0)
    for w, h in [(12, 12), (12, 30), (41, 17), (64, 64)]:
        m = S.render_shape(kind, w, h, rng)
        assert m.shape == (h, w) and m.any()
        rows, cols = np.nonzero(m.any(axis=1))[0], np.nonzero(m.any(axis=0))[0]
        # every shape spans its whole box (the triangle's apex row keeps at least its centre pixel)
        assert (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1) == (0, 0, w, h)


def test_filled_rectangle_and_hollow_shapes():
    assert S.render_shape("filled_rectangle", 13, 12).all()
    outline = S.render_shape("outlined_rectangle", 20, 20)
    # thickness max(2, round(0.15 * 20)) = 3: the 14x14 interior is empty
    assert outline.sum() == 20 * 20 - 14 * 14
    assert not S.render_shape("outlined_ellipse", 30, 30)[15, 15]


# ----------------------------------------------------------------------------------------------- categories


def test_categories_are_non_contiguous_and_round_trip(written):
    data = json.loads(written.read_text())
    ids = [c["id"] for c in data["categories"]]
    assert ids == sorted(ids) == list(S.CATEGORY_IDS)
    assert ids != list(range(1, len(ids) + 1))  # non-contiguous, to exercise the mapping
    assert len(ids) >= 6 and [c["name"] for c in data["categories"]] == list(S.CLASS_NAMES)
    cmap = CategoryMap.from_coco(data["categories"])
    for index, (cid, _) in enumerate(S.CATEGORIES):
        assert cmap.to_contiguous(cid) == index and cmap.to_coco_id(index) == cid
    assert {a["category_id"] for a in data["annotations"]} <= set(ids)


def test_coco_fields(written):
    data = json.loads(written.read_text())
    assert [img["id"] for img in data["images"]] == [1, 2, 3, 4]
    assert [a["id"] for a in data["annotations"]] == list(range(1, len(data["annotations"]) + 1))
    for a in data["annotations"]:
        x, y, w, h = a["bbox"]
        assert a["area"] == w * h and a["iscrowd"] == 0


# ----------------------------------------------------------------------------------------------- reader


@pytest.mark.parametrize("fmt", ["RGB", "BGR"])
def test_coco_detection_dataset_reads_back(written, fmt):
    import torch

    ds = S.CocoDetectionDataset(written, written.parent / "images", format=fmt)
    stream = S.SyntheticCOCO(4, seed=3, **SMALL)
    assert len(ds) == 4
    for i in range(4):
        image, target = ds[i]
        ref_image, ref_boxes, ref_classes = stream[i]
        assert image.dtype == torch.uint8 and image.shape == (3, *ref_image.shape[:2])
        expected = ref_image.transpose(2, 0, 1)
        np.testing.assert_array_equal(image.numpy(), expected if fmt == "RGB" else expected[::-1])
        np.testing.assert_array_equal(target["boxes"].numpy(), ref_boxes)
        assert target["boxes"].dtype == torch.float32 and target["classes"].dtype == torch.int64
        np.testing.assert_array_equal(target["classes"].numpy(), ref_classes)
        assert target["image_id"] == i + 1


def test_coco_detection_dataset_defaults_to_spec_format(written):
    from spec.config import BASE_RCNN_FPN

    assert S.CocoDetectionDataset(written).format == BASE_RCNN_FPN.input.format


def test_progress_is_reported(tmp_path):
    calls = []
    S.make_synthetic_coco(tmp_path, num_images=3, image_size=64, seed=0, max_objects=2,
                          progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]


# ----------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kwargs, match", [
    (dict(image_size=(64,)), "image_size"),
    (dict(image_size=(0, 64)), "image_size"),
    (dict(image_size=((64, 32), (64, 64))), "image_size"),
    (dict(image_size="64"), "image_size"),
    (dict(min_objects=0), "min_objects"),
    (dict(min_objects=3, max_objects=2), "max_objects"),
    (dict(seed=-1), "seed"),
    (dict(num_images=-1), "num_images"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        S.SyntheticCOCO(**{"num_images": 2, **kwargs})


def test_bad_sample_arguments():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="max_size"):
        S.generate_sample(rng, image_size=16)  # half of 16 is below the 12 px minimum shape
    with pytest.raises(ValueError, match="min_visible"):
        S.generate_sample(rng, image_size=64, min_visible=1.5)
    with pytest.raises(TypeError, match="rng"):
        S.generate_sample(0, image_size=64)
    with pytest.raises(ValueError, match="shape kind"):
        S.render_shape("hexagon", 12, 12)
    with pytest.raises(IndexError):
        S.SyntheticCOCO(2, image_size=64)[2]
    with pytest.raises(TypeError, match="length"):
        len(S.SyntheticCOCO(None, image_size=64))


def test_reader_errors(tmp_path, written):
    with pytest.raises(FileNotFoundError, match="annotations"):
        S.CocoDetectionDataset(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        S.CocoDetectionDataset(bad)
    with pytest.raises(ValueError, match="format"):
        S.CocoDetectionDataset(written, format="YUV")
