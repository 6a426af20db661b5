"""Hostile input for `detspec detect`, `detspec evaluate` and `detspec synth` (issue 11, sections 4 and 5).

Every user error must give exit code 2 and one line on stderr naming the file and the problem, never a
traceback; no input is overwritten, no file is left half-written (no temporary file stays behind), and files
that were there before a refused command are byte-identical afterwards.

The detector is a seeded, randomly initialised detspec-layout Faster R-CNN (one class; box deltas zeroed and the
classifier biased to the foreground, so that random images give detections), fed tiny images at their own size
(--resize none).
"""

from __future__ import annotations

import errno
import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detspec.cli import main
from detspec.io.fileio import UserError
from detspec.io.images import load_image

# ----------------------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    import fast
    from detspec.checkpoints import save_detspec
    from spec.config import get_profile

    torch.manual_seed(0)
    model = fast.FasterRCNN(get_profile("detectron2"), num_classes=1).eval()
    with torch.no_grad():  # proposals = anchors, boxes = proposals, foreground scores about 0.9
        for layer in (model.proposal_generator.rpn_head.anchor_deltas, model.roi_heads.box_predictor.bbox_pred):
            layer.weight.zero_()
            layer.bias.zero_()
        model.roi_heads.box_predictor.cls_score.weight.mul_(1e-3)
        model.roi_heads.box_predictor.cls_score.bias[0] = 2.0
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    save_detspec(model.state_dict(), path)
    return path


def _png(path: Path, seed: int, size=(32, 40)) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


def _truncated_png(path: Path) -> Path:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(9).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, format="PNG")
    data = buf.getvalue()
    path.write_bytes(data[: len(data) // 2])
    return path


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root (relative path -> bytes)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _no_temporaries(root: Path) -> None:
    left = [str(p) for p in root.rglob("*.tmp")]
    assert not left, f"temporary files left behind: {left}"


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "Traceback" not in out
    return code, out, err


def _one_line_error(code: int, err: str, *needles: str) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {lines}"
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def _detect(images, weights, out, *extra) -> list[str]:
    return ["detect", *images, "--weights", weights, "--resize", "none", "--out", out, *extra]


MISSING_WEIGHTS = "no-such-weights.pth"  # a refusal that comes first proves no checkpoint was read


# ----------------------------------------------------------------------------------------------- detect: images


def test_unreadable_images_are_skipped_and_the_rest_written(weights, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    good = [_png(src / "1.png", 1), _png(src / "5.png", 5)]
    truncated = _truncated_png(src / "2.png")
    not_image = src / "3.png"
    not_image.write_text("this is not an image")
    a_dir = src / "4"
    a_dir.mkdir()
    floats = src / "6.tiff"
    Image.fromarray(np.full((8, 8), 0.5, dtype=np.float32)).save(floats)
    out = tmp_path / "out"
    out.mkdir()
    (out / "detections.json").write_text('[{"stale": true}]')  # an earlier run's results
    before = _snapshot(src)

    code, printed, err = _run(_detect([good[0], truncated, not_image, a_dir, floats, good[1]], weights, out), capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 4, lines  # one line per unreadable image, each naming it
    assert str(truncated) in lines[0] and "truncated" in lines[0]
    assert str(not_image) in lines[1] and "cannot" in lines[1]
    assert str(a_dir) in lines[2] and "directory" in lines[2]
    assert str(floats) in lines[3] and "floating-point" in lines[3]
    assert "2 of 6 images" in printed

    # the new detections.json holds exactly what a run on the good images alone gives
    results = json.loads((out / "detections.json").read_text())
    assert results and {r["image_id"] for r in results} <= {1, 5}
    assert _run(_detect(good, weights, tmp_path / "alone"), capsys)[0] == 0
    assert results == json.loads((tmp_path / "alone" / "detections.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == ["1.png", "5.png", "detections.json"]
    assert _snapshot(src) == before
    _no_temporaries(tmp_path)


def test_no_readable_image_leaves_no_stale_results(weights, tmp_path, capsys):
    bad = tmp_path / "7.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n")  # a PNG signature and nothing else
    out = tmp_path / "new_out"  # only the last component is missing: created
    code, _, err = _run(_detect([bad], weights, out), capsys)
    _one_line_error(code, err, str(bad))
    assert json.loads((out / "detections.json").read_text()) == []
    assert bad.read_bytes() == b"\x89PNG\r\n\x1a\n"
    _no_temporaries(tmp_path)


# ----------------------------------------------------------------------------------------------- detect: outputs


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    image = _png(tmp_path / "1.png", 1)
    out = tmp_path / "out.txt"
    out.write_text("keep me")
    code, _, err = _run(_detect([image], MISSING_WEIGHTS, out), capsys)
    _one_line_error(code, err, str(out), "not a directory")
    assert out.read_text() == "keep me"


def test_out_inside_a_missing_directory_is_refused(tmp_path, capsys):
    image = _png(tmp_path / "1.png", 1)
    out = tmp_path / "missing" / "out"
    code, _, err = _run(_detect([image], MISSING_WEIGHTS, out), capsys)
    _one_line_error(code, err, str(out), "does not exist")
    assert not (tmp_path / "missing").exists()


def test_out_into_the_image_directory_is_refused_before_any_work(tmp_path, capsys):
    # input DIR/7.png with --out DIR would draw DIR/7.png over the input
    image = _png(tmp_path / "7.png", 7)
    other = tmp_path / "8.jpg"
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(other)
    before = _snapshot(tmp_path)
    code, _, err = _run(_detect([other, image], MISSING_WEIGHTS, tmp_path), capsys)
    _one_line_error(code, err, str(image), "also an input")
    assert _snapshot(tmp_path) == before  # nothing written: no detections.json, no 8.png


def test_two_images_drawn_to_the_same_png_are_refused(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = _png(tmp_path / "a" / "x1.png", 1), _png(tmp_path / "b" / "X1.jpg", 2)
    out = tmp_path / "out"
    code, _, err = _run(_detect([first, second], MISSING_WEIGHTS, out), capsys)
    _one_line_error(code, err, str(first), str(second), "drawn to")
    assert not out.exists()


# ----------------------------------------------------------------------------------------------- detect: image ids


@pytest.mark.parametrize("names, needles", [
    (["cat.png", "7.png"], ["cat.png has no number", "--image-ids"]),
    (["img1.png", "x1.png"], ["img1.png and", "x1.png would both get image id 1", "--image-ids"]),
])
def test_image_ids_that_do_not_follow_the_rule_are_refused(tmp_path, capsys, names, needles):
    images = [_png(tmp_path / n, i) for i, n in enumerate(names)]
    out = tmp_path / "out"
    code, _, err = _run(_detect(images, MISSING_WEIGHTS, out), capsys)
    _one_line_error(code, err, *needles)
    assert not out.exists()


def _as_set(results: list[dict]) -> set[tuple]:
    return {(r["image_id"], r["category_id"], tuple(r["bbox"]), r["score"]) for r in results}


def test_explicit_image_ids(weights, tmp_path, capsys):
    cat, dog = _png(tmp_path / "cat.png", 1), _png(tmp_path / "dog.png", 2)
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": [{"id": 30, "file_name": "val/dog.png"}, {"id": 8, "file_name": "cat.png"}],
                               "annotations": [], "categories": []}))
    # a list gives ids by position; the annotations by file name, whatever the order on the command line
    assert _run(_detect([cat, dog], weights, tmp_path / "list", "--image-ids", "8,30"), capsys)[0] == 0
    assert _run(_detect([dog, cat], weights, tmp_path / "ann", "--image-ids", ann), capsys)[0] == 0
    by_list = json.loads((tmp_path / "list" / "detections.json").read_text())
    by_ann = json.loads((tmp_path / "ann" / "detections.json").read_text())
    assert {r["image_id"] for r in by_list} == {8, 30}
    per_image = {i: _as_set([r for r in by_list if r["image_id"] == i]) for i in (8, 30)}
    assert per_image[8] != {(30, *t[1:]) for t in per_image[30]}  # the two images' detections differ
    assert _as_set(by_ann) == _as_set(by_list)

    code, _, err = _run(_detect([cat, _png(tmp_path / "cow.png", 3)], MISSING_WEIGHTS, tmp_path / "o", "--image-ids",
                                ann), capsys)
    _one_line_error(code, err, str(ann), "cow.png")
    code, _, err = _run(_detect([cat, dog], MISSING_WEIGHTS, tmp_path / "o", "--image-ids", "4,4"), capsys)
    _one_line_error(code, err, "would both get image id 4")
    code, _, err = _run(_detect([cat, dog], MISSING_WEIGHTS, tmp_path / "o", "--image-ids", "4"), capsys)
    _one_line_error(code, err, "1 id(s) for 2 image(s)")
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------------------------- detect: writes


def test_a_failed_write_leaves_the_earlier_png(weights, tmp_path, capsys, monkeypatch):
    image = _png(tmp_path / "7.png", 7)
    out = tmp_path / "out"
    out.mkdir()
    (out / "7.png").write_bytes(b"an earlier drawing")

    def failing_fsync(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    code, _, err = _run(_detect([image], weights, out), capsys)
    _one_line_error(code, err, str(out / "7.png"), "Input/output error")
    assert (out / "7.png").read_bytes() == b"an earlier drawing"
    _no_temporaries(tmp_path)


# ----------------------------------------------------------------------------------------------- pixels


def _png16_rgb(path: Path, values: np.ndarray) -> Path:
    """A 48-bit RGB PNG written by hand (Pillow cannot write one): IHDR bit depth 16, colour type 2."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    h, w, _ = values.shape
    raw = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(h))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def test_16_bit_greyscale_png_is_scaled_not_clipped(tmp_path):
    pattern = np.array([[0, 1, 128, 129, 255, 256, 257, 384],
                        [385, 1000, 32767, 32768, 32896, 65278, 65534, 65535]], dtype=np.uint16)
    sixteen = tmp_path / "sixteen.png"
    Image.fromarray(pattern).save(sixteen)
    with Image.open(sixteen) as im:
        assert im.mode.startswith("I")  # the case Pillow's convert("RGB") clips to white
    # hand scaling: v * 255 / 65535 = v / 257, rounded (65535 is odd, so there are no ties)
    expected = np.round(pattern.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert expected[0].tolist() == [0, 0, 0, 1, 1, 1, 1, 1] and expected[1].tolist() == [
        1, 4, 127, 128, 128, 254, 255, 255]
    eight = tmp_path / "eight.png"
    Image.fromarray(expected, mode="L").save(eight)
    got = load_image(sixteen)
    assert got.dtype == torch.uint8 and got.shape == (3, 2, 8)
    assert torch.equal(got, load_image(eight))
    assert torch.equal(got, torch.from_numpy(expected).expand(3, -1, -1))


def test_32_bit_integer_images_within_16_bits_are_scaled_and_others_refused(tmp_path):
    values = np.array([[0, 257, 65535, 1000]], dtype=np.int32)
    ok = tmp_path / "ok.tiff"
    Image.fromarray(values).save(ok)  # mode I
    expected = np.round(values * 255 / 65535).astype(np.uint8)  # 0, 1, 255, 4
    assert torch.equal(load_image(ok), torch.from_numpy(expected).expand(3, -1, -1))
    too_big = tmp_path / "big.tiff"
    Image.fromarray(np.array([[0, 70000]], dtype=np.int32)).save(too_big)
    with pytest.raises(UserError, match=r"big\.tiff: .*outside 16 bits"):
        load_image(too_big)


def test_float_and_16_bit_colour_images_are_refused(tmp_path):
    floats = tmp_path / "f.tiff"
    Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32)).save(floats)
    with pytest.raises(UserError, match=r"f\.tiff: a floating-point image \(mode F\)"):
        load_image(floats)
    colour16 = _png16_rgb(tmp_path / "rgb48.png", np.full((2, 3, 3), 511, dtype=np.uint16))
    with pytest.raises(UserError, match=r"rgb48\.png: a 16-bit-per-channel colour image"):
        load_image(colour16)


# ----------------------------------------------------------------------------------------------- evaluate


def _gt(**changes) -> dict:
    data = {"images": [{"id": 1, "file_name": "1.png", "height": 100, "width": 100},
                       {"id": 2, "file_name": "2.png", "height": 100, "width": 100}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 40, 40], "area": 1600,
                             "iscrowd": 0},
                            {"id": 2, "image_id": 2, "category_id": 3, "bbox": [20, 20, 40, 40], "area": 1600,
                             "iscrowd": 0}],
            "categories": [{"id": 3, "name": "thing"}]}
    data.update(changes)
    return data


RESULTS = [{"image_id": 1, "category_id": 3, "bbox": [10, 10, 40, 40], "score": 0.9}]


@pytest.fixture
def eval_files(tmp_path):
    ann, res = tmp_path / "ann.json", tmp_path / "res.json"
    ann.write_text(json.dumps(_gt()))
    res.write_text(json.dumps(RESULTS))
    return ann, res


def _evaluate(ann, res, *extra) -> list[str]:
    return ["evaluate", "--annotations", ann, "--results", res, *extra]


def test_evaluate_json_over_an_input_is_refused(eval_files, tmp_path, capsys):
    ann, res = eval_files
    before = _snapshot(tmp_path)
    for target in (res, ann):
        code, _, err = _run(_evaluate(ann, res, "--json", target), capsys)
        _one_line_error(code, err, str(target), "also an input")
        assert _snapshot(tmp_path) == before
    code, _, err = _run(_evaluate(ann, res, "--json", tmp_path / "missing" / "stats.json"), capsys)
    _one_line_error(code, err, "does not exist")
    code, _, err = _run(_evaluate(ann, res, "--json", tmp_path), capsys)
    _one_line_error(code, err, "is a directory")
    assert _snapshot(tmp_path) == before
    # and the good case writes it
    assert _run(_evaluate(ann, res, "--json", tmp_path / "stats.json"), capsys)[0] == 0
    # one of two boxes found, at precision 1: the 101-point interpolation reads precision 1 at recall 0..0.50
    # (51 points) and 0 beyond, so AP50 = 51 / 101
    assert json.loads((tmp_path / "stats.json").read_text())["AP50"] == pytest.approx(51 / 101)
    _no_temporaries(tmp_path)


def _bad_annotation(**fields) -> list[dict]:
    anns = _gt()["annotations"]
    anns[1] = {**anns[1], **fields}
    return anns


@pytest.mark.parametrize("data, needles", [
    (_gt(annotations=_bad_annotation(bbox=[20, 20, 40])), ["annotation 2", "bbox must be 4 finite numbers"]),
    (_gt(annotations=_bad_annotation(bbox=[20, "20", 40, 40])), ["annotation 2", "bbox must be 4"]),
    (_gt(annotations=_bad_annotation(bbox=[20, 20, -4, 40])), ["annotation 2", "negative width"]),
    (_gt(annotations=_bad_annotation(area="big")), ["annotation 2", "area"]),
    (_gt(annotations=_bad_annotation(image_id=[2])), ["annotation 2", "image_id [2]", "int"]),
    (_gt(annotations=_bad_annotation(image_id=9)), ["annotation 2", "unknown image id 9"]),
    (_gt(annotations=_bad_annotation(iscrowd=2)), ["annotation 2", "iscrowd"]),
    (_gt(annotations=[{"id": 1, "image_id": 1, "category_id": 3, "area": 4.0}]), ["annotation 1", "lacks ['bbox']"]),
    (_gt(annotations=_bad_annotation(id=1)), ["annotation id 1 appears more than once"]),
    (_gt(images=[{"id": 1}, {"id": 2}, {"id": 2}]), ["image id 2 appears more than once"]),
    (_gt(categories=[{"id": 3}, {"id": 3}]), ["category id 3 appears more than once"]),
    (_gt(images=[{"id": "1"}]), ["images[0] has id '1'", "int"]),
    ({"images": []}, ["'annotations' list"]),
    ("[1, 2", ["not valid JSON"]),
])
def test_malformed_annotations_are_named(tmp_path, capsys, data, needles):
    ann, res = tmp_path / "ann.json", tmp_path / "res.json"
    ann.write_text(data if isinstance(data, str) else json.dumps(data))
    res.write_text(json.dumps(RESULTS))
    before = _snapshot(tmp_path)
    code, _, err = _run(_evaluate(ann, res, "--json", tmp_path / "stats.json"), capsys)
    _one_line_error(code, err, str(ann), *needles)
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("results, needles", [
    ([{"image_id": 1, "category_id": 3, "bbox": [1, 2, 3], "score": 0.5}], ["result 0", "bbox must be 4"]),
    ([{"image_id": [1], "category_id": 3, "bbox": [1, 2, 3, 4], "score": 0.5}], ["result 0", "image_id [1]"]),
    ([{"image_id": 1, "category_id": 3, "bbox": [1, 2, 3, 4]}], ["result 0", "lacks ['score']"]),
    ('[{"image_id": 1, "category_id": 3, "bbox": [1, 2, 3, 4], "score": NaN}]', ["result 0", "score"]),
    ({"annotations": []}, ["expected a JSON list"]),
    ("[{", ["not valid JSON"]),
])
def test_malformed_results_are_named(eval_files, capsys, results, needles):
    ann, res = eval_files
    res.write_text(results if isinstance(results, str) else json.dumps(results))
    code, _, err = _run(_evaluate(ann, res), capsys)
    _one_line_error(code, err, str(res), *needles)


def test_duplicate_annotation_ids_would_change_ap(tmp_path):
    """Why duplicates are refused: pycocotools indexes annotations by id, so a repeated id hides a box."""
    from pycocotools.coco import COCO

    gt = COCO()
    gt.dataset = _gt(annotations=_bad_annotation(id=1))
    with io.StringIO() as sink:
        import contextlib

        with contextlib.redirect_stdout(sink):
            gt.createIndex()
    assert len(gt.anns) == 1  # two annotations in the file, one left in pycocotools' index


def test_evaluate_failed_write_leaves_the_earlier_json(eval_files, tmp_path, capsys, monkeypatch):
    ann, res = eval_files
    stats = tmp_path / "stats.json"
    stats.write_text("earlier")

    def failing_fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    code, _, err = _run(_evaluate(ann, res, "--json", stats), capsys)
    _one_line_error(code, err, str(stats), "No space left")
    assert stats.read_text() == "earlier"
    _no_temporaries(tmp_path)


# ----------------------------------------------------------------------------------------------- synth


def _synth(out, *extra) -> list[str]:
    return ["synth", out, "--images", "2", "--size", "32", "32", "--max-objects", "1", *extra]


def test_synth_out_dir_problems_are_refused(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("keep")
    code, _, err = _run(_synth(a_file), capsys)
    _one_line_error(code, err, str(a_file), "not a directory")
    assert a_file.read_text() == "keep"

    code, _, err = _run(_synth(tmp_path / "missing" / "out"), capsys)
    _one_line_error(code, err, "does not exist")
    assert not (tmp_path / "missing").exists()

    clash = tmp_path / "clash"
    (clash / "annotations.json").mkdir(parents=True)
    code, _, err = _run(_synth(clash), capsys)
    _one_line_error(code, err, str(clash / "annotations.json"), "directory")
    assert not (clash / "images").exists()  # refused before any image was written


def test_synth_writes_atomically(tmp_path, capsys, monkeypatch):
    out = tmp_path / "synth"
    assert _run(_synth(out), capsys)[0] == 0
    before = _snapshot(out)
    assert sorted(before) == ["annotations.json", "images/000000.png", "images/000001.png"]
    _no_temporaries(tmp_path)

    def failing_fsync(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    code, _, err = _run(_synth(out, "--seed", "5"), capsys)
    _one_line_error(code, err, str(out / "images" / "000000.png"), "Input/output error")
    assert _snapshot(out) == before
    _no_temporaries(tmp_path)
