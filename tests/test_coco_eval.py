"""COCO evaluation (detspec.evaluation, detspec.io): category mapping, results conversion, pycocotools AP by hand,
the CLI.

How COCO AP works (pycocotools cocoeval.py), used in the derivations below:
- per category, detections of all images are ranked by score; a detection matches the unmatched ground-truth
  box with which it has the highest IoU, if that IoU >= t (ties at exactly t match);
- precision is interpolated (max precision at any recall >= r) and read at the 101 recall points
  0, 0.01, ..., 1; a recall point beyond the highest recall reached gets precision 0;
- AP averages over the 10 IoU thresholds 0.50:0.05:0.95 and over categories; AP50 / AP75 take one threshold;
- area ranges: small < 32^2 <= medium < 96^2 <= large; a range without ground truth reports -1.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

pytest.importorskip("pycocotools")

from detspec import evaluation as E  # noqa: E402
from detspec.commands import evaluate as evaluate_command  # noqa: E402
from detspec.commands import synth as synth_command  # noqa: E402
from detspec.data import synthetic as S  # noqa: E402
from detspec.io import coco as C  # noqa: E402
from detspec.io.categories import CategoryMap  # noqa: E402

# ----------------------------------------------------------------------------------------------- fixtures


def _write_gt(path, boxes_per_image, categories=((3, "thing"),), image_size=(200, 200)):
    """boxes_per_image: list (one per image) of lists of (category_id, [x, y, w, h])."""
    images, anns = [], []
    for i, boxes in enumerate(boxes_per_image, start=1):
        images.append({"id": i, "file_name": f"{i}.png", "height": image_size[0], "width": image_size[1]})
        for cat, bbox in boxes:
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cat, "bbox": list(map(float, bbox)),
                         "area": float(bbox[2] * bbox[3]), "iscrowd": 0})
    data = {"images": images, "annotations": anns,
            "categories": [{"id": cid, "name": name} for cid, name in categories]}
    path.write_text(json.dumps(data))
    return path


# four non-overlapping 40x40 boxes (area 1600: COCO "medium", since 32^2 = 1024 <= 1600 < 96^2 = 9216)
FOUR = [[10, 10, 40, 40], [60, 10, 40, 40], [10, 60, 40, 40], [60, 60, 40, 40]]


@pytest.fixture
def one_class(tmp_path):
    return _write_gt(tmp_path / "gt.json", [[(3, b) for b in FOUR]])


def _dets(boxes, cat=3, score=1.0, image_id=1):
    return [{"image_id": image_id, "category_id": cat, "bbox": list(map(float, b)), "score": score} for b in boxes]


# ----------------------------------------------------------------------------------------------- CategoryMap


def test_category_map_ascending_id_order_and_round_trip():
    cmap = CategoryMap([8, 1, 5, 2], {1: "a", 2: "b", 5: "c", 8: "d"})
    assert cmap.ids == (1, 2, 5, 8) and cmap.names == ("a", "b", "c", "d") and cmap.num_classes == 4
    assert [cmap.to_contiguous(c) for c in (1, 2, 5, 8)] == [0, 1, 2, 3]
    assert [cmap.to_coco_id(i) for i in range(4)] == [1, 2, 5, 8]
    np.testing.assert_array_equal(cmap.to_coco_id(cmap.to_contiguous([8, 5, 1])), [8, 5, 1])
    assert cmap.to_contiguous(np.array([5, 5], dtype=np.int32)).dtype == np.int64


def test_category_map_from_synthetic_categories():
    cmap = CategoryMap.from_coco([{"id": cid, "name": n} for cid, n in S.CATEGORIES])
    assert cmap.ids == S.CATEGORY_IDS and cmap.names == S.CLASS_NAMES


def test_category_map_errors():
    cmap = CategoryMap([1, 3])
    with pytest.raises(ValueError, match="unknown category id"):
        cmap.to_contiguous(2)
    with pytest.raises(ValueError, match="unknown category ids"):
        cmap.to_contiguous([1, 2])
    with pytest.raises(ValueError, match="out of range"):
        cmap.to_coco_id(2)
    with pytest.raises(ValueError, match="out of range"):
        cmap.to_coco_id([0, -1])
    with pytest.raises(ValueError, match="unique"):
        CategoryMap([1, 1])
    with pytest.raises(ValueError, match="empty"):
        CategoryMap([])
    with pytest.raises(TypeError, match="ints"):
        CategoryMap([1.5])


# ----------------------------------------------------------------------------------------------- results


def test_detections_to_coco_results_converts_boxes_and_classes():
    torch = pytest.importorskip("torch")
    cmap = CategoryMap([2, 7, 9])
    boxes = torch.tensor([[10.0, 20.0, 30.0, 60.0], [0.5, 1.5, 2.5, 4.0]])
    res = C.detections_to_coco_results(4, boxes, torch.tensor([0.9, 0.25]), torch.tensor([2, 0]), cmap)
    assert res == [
        {"image_id": 4, "category_id": 9, "bbox": [10.0, 20.0, 20.0, 40.0], "score": pytest.approx(0.9)},
        {"image_id": 4, "category_id": 2, "bbox": [0.5, 1.5, 2.0, 2.5], "score": 0.25},
    ]
    assert all(type(v) is float for r in res for v in r["bbox"])
    assert C.detections_to_coco_results(1, np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64), cmap) == []


@pytest.mark.parametrize("boxes, scores, classes, exc, match", [
    (np.zeros((2, 3)), np.zeros(2), np.zeros(2, np.int64), ValueError, "boxes_xyxy"),
    (np.zeros((2, 4)), np.zeros(3), np.zeros(2, np.int64), ValueError, "scores"),
    (np.zeros((2, 4)), np.zeros(2), np.zeros(1, np.int64), ValueError, "classes"),
    (np.zeros((1, 4)), np.zeros(1), np.array([3]), ValueError, "out of range"),
    (np.array([[0, 0, np.nan, 1.0]]), np.zeros(1), np.zeros(1, np.int64), ValueError, "finite"),
    (np.array([[5.0, 0, 1.0, 1.0]]), np.zeros(1), np.zeros(1, np.int64), ValueError, "x1 >= x0"),
    (np.zeros((1, 4)), np.zeros(1), np.zeros(1), TypeError, "integers"),
])
def test_detections_to_coco_results_bad_input(boxes, scores, classes, exc, match):
    with pytest.raises(exc, match=match):
        C.detections_to_coco_results(1, boxes, scores, classes, CategoryMap([1, 2, 3]))


def test_write_results_round_trips(tmp_path):
    res = _dets(FOUR[:2], score=0.5)
    path = C.write_results(tmp_path / "sub" / "res.json", res)
    assert json.loads(path.read_text()) == res


# ----------------------------------------------------------------------------------------------- AP by hand


def test_perfect_detections_give_ap_one(one_class):
    out = E.evaluate(one_class, _dets(FOUR))
    # every detection matches its own box with IoU 1 >= every threshold: precision 1 at every recall
    for name in ("AP", "AP50", "AP75", "APm", "AR10", "AR100", "ARm"):
        assert out[name] == pytest.approx(1.0), name
    # AR1 keeps the top detection per image and category: 1 of the 4 boxes is recalled
    assert out["AR1"] == pytest.approx(1 / 4)
    # no small or large ground truth: pycocotools reports -1 there
    for name in ("APs", "APl", "ARs", "ARl"):
        assert out[name] == -1.0, name
    assert set(E.STAT_NAMES) <= set(out) and len(E.STAT_NAMES) == 12
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 1.000" in out["summary"]
    assert out["notes"] == [] and out["num_detections"] == 4 and out["num_images"] == 1


def test_half_of_the_detections(one_class):
    out = E.evaluate(one_class, _dets(FOUR[:2]))
    # 2 TPs of 4 GT: precision 1 up to recall 0.5, nothing beyond. Of the 101 recall points 0, 0.01, ..., 0.50
    # (51 points) get precision 1, the other 50 get 0, at every IoU threshold: AP = AP50 = AP75 = 51/101.
    for name in ("AP", "AP50", "AP75", "APm"):
        assert out[name] == pytest.approx(51 / 101), name
    assert out["AR100"] == pytest.approx(0.5)


def test_one_wrong_class(tmp_path):
    # class 1 (id 2): boxes 0, 1; class 2 (id 5): boxes 2, 3. Every box is detected, but box 1 is labelled 5,
    # with the highest score.
    gt = _write_gt(tmp_path / "gt.json", [[(2, FOUR[0]), (2, FOUR[1]), (5, FOUR[2]), (5, FOUR[3])]],
                   categories=((2, "a"), (5, "b")))
    dets = _dets([FOUR[0]], cat=2, score=0.9) + _dets([FOUR[1]], cat=5, score=0.95) + \
        _dets(FOUR[2:], cat=5, score=0.9)
    out = E.evaluate(gt, dets)
    # id 2: 1 TP of 2 GT -> precision 1 up to recall 0.5: AP = 51/101 (as above).
    # id 5: ranked FP (IoU 0 with both id-5 boxes), TP, TP -> (recall, precision) = (0, 0), (0.5, 1/2),
    #       (1, 2/3); interpolated precision is 2/3 at every recall point: AP = 2/3.
    # AP averages over categories; all IoUs are 0 or 1, so every threshold gives the same numbers.
    expected = (51 / 101 + 2 / 3) / 2
    for name in ("AP", "AP50", "AP75"):
        assert out[name] == pytest.approx(expected), name
    assert out["AR100"] == pytest.approx((0.5 + 1.0) / 2)


def _shifted(width, dx):
    """One width x width ground-truth box and one detection shifted right by dx:
    IoU = (width - dx) * width / ((width + dx) * width) = (width - dx) / (width + dx)."""
    return [[10, 10, width, width]], [[10 + dx, 10, width, width]]


@pytest.mark.parametrize("width, dx, n_matched", [
    (40, 8, 4),    # IoU 32/48 = 0.667: matches at 0.50, 0.55, 0.60, 0.65
    (30, 10, 1),   # IoU 20/40 = 0.5 exactly: matches at 0.50 only (IoU >= t)
    (30, 11, 0),   # IoU 19/41 = 0.463: no threshold
    (40, 5, 6),    # IoU 35/45 = 0.778: 0.50 ... 0.75
    (35, 5, 6),    # IoU 30/40 = 0.75 exactly: 0.50 ... 0.75
    (40, 6, 5),    # IoU 34/46 = 0.739: 0.50 ... 0.70
])
def test_shifted_boxes_cross_iou_thresholds(tmp_path, width, dx, n_matched):
    gt_boxes, det_boxes = _shifted(width, dx)
    gt = _write_gt(tmp_path / "gt.json", [[(3, b) for b in gt_boxes]])
    out = E.evaluate(gt, _dets(det_boxes))
    # one GT, one detection: AP is 1 at each threshold where it matches and 0 elsewhere, so
    # AP = n_matched / 10, AP50 = 1 iff n_matched >= 1, AP75 = 1 iff n_matched >= 6 (0.75 is the 6th).
    assert out["AP"] == pytest.approx(n_matched / 10)
    assert out["AP50"] == pytest.approx(1.0 if n_matched >= 1 else 0.0)
    assert out["AP75"] == pytest.approx(1.0 if n_matched >= 6 else 0.0)


def test_empty_results(one_class, tmp_path):
    out = E.evaluate(one_class, [])
    # no detections: recall 0 and precision 0 wherever there is ground truth, -1 where there is none
    for name in ("AP", "AP50", "AP75", "APm", "AR1", "AR10", "AR100", "ARm"):
        assert out[name] == 0.0, name
    assert out["APs"] == -1.0 and out["APl"] == -1.0
    assert out["num_detections"] == 0 and any("no detections" in n for n in out["notes"])
    assert out["summary"].count("Average") == 12
    empty_file = C.write_results(tmp_path / "empty.json", [])
    assert E.evaluate(one_class, empty_file)["AP"] == 0.0


def test_results_list_is_not_modified(one_class):
    dets = _dets(FOUR)
    before = json.dumps(dets)
    E.evaluate(one_class, dets)
    assert json.dumps(dets) == before  # pycocotools' loadRes writes id/area into the dicts it gets


# ----------------------------------------------------------------------------------------------- errors


def test_evaluate_errors(one_class, tmp_path):
    with pytest.raises(FileNotFoundError, match="annotations"):
        E.evaluate(tmp_path / "missing.json", [])
    with pytest.raises(FileNotFoundError, match="results"):
        E.evaluate(one_class, tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("[{")
    with pytest.raises(ValueError, match="not valid JSON"):
        E.evaluate(bad, [])
    with pytest.raises(ValueError, match="not valid JSON"):
        E.evaluate(one_class, bad)
    with pytest.raises(ValueError, match="image id"):
        E.evaluate(one_class, _dets(FOUR[:1], image_id=99))
    with pytest.raises(ValueError, match=r"category id\(s\) not in the annotations: \[4\]"):
        E.evaluate(one_class, _dets(FOUR[:1], cat=4))
    with pytest.raises(ValueError, match="lacks"):
        E.evaluate(one_class, [{"image_id": 1, "category_id": 3, "bbox": [0, 0, 1, 1]}])
    with pytest.raises(ValueError, match="bbox"):
        E.evaluate(one_class, [{"image_id": 1, "category_id": 3, "bbox": [0, 0, 1], "score": 1.0}])
    with pytest.raises(ValueError, match="iou_type"):
        E.evaluate(one_class, [], iou_type="segm")
    not_coco = tmp_path / "list.json"
    not_coco.write_text("[]")
    with pytest.raises(ValueError, match="COCO dict"):
        E.evaluate(not_coco, [])
    obj = tmp_path / "obj.json"
    obj.write_text("{}")
    with pytest.raises(ValueError, match="JSON list"):
        E.evaluate(one_class, obj)


# ----------------------------------------------------------------------------------------------- CLI


def _parser():
    parser = argparse.ArgumentParser(prog="detspec")
    sub = parser.add_subparsers(dest="command", required=True)
    evaluate_command.add_parser(sub)
    synth_command.add_parser(sub)
    return parser


def test_cli_synth_then_evaluate_ground_truth_as_detections(tmp_path, capsys):
    parser = _parser()
    out_dir = tmp_path / "synth"
    args = parser.parse_args(["synth", str(out_dir), "--images", "3", "--seed", "1", "--size", "64", "96"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "3/3" in printed and "annotations.json" in printed
    ann = out_dir / "annotations.json"
    data = json.loads(ann.read_text())
    assert all((img["height"], img["width"]) == (64, 96) for img in data["images"])

    # ground truth as detections, through the contiguous-class path
    cmap = CategoryMap.from_coco(data["categories"])
    results = []
    for img in data["images"]:
        anns = [a for a in data["annotations"] if a["image_id"] == img["id"]]
        xywh = np.asarray([a["bbox"] for a in anns]).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        classes = cmap.to_contiguous([a["category_id"] for a in anns])
        results += C.detections_to_coco_results(img["id"], boxes, np.ones(len(anns)), classes, cmap)
    res_path = C.write_results(tmp_path / "res.json", results)
    json_out = tmp_path / "stats.json"
    args = parser.parse_args(["evaluate", "--annotations", str(ann), "--results", str(res_path),
                              "--json", str(json_out)])
    assert args.func(args) == evaluate_command.run(args) == 0
    printed = capsys.readouterr().out
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 1.000" in printed
    assert printed.count("Average Precision") == 2 * 6 and printed.count("Average Recall") == 2 * 6
    stats = json.loads(json_out.read_text())
    assert stats["AP"] == pytest.approx(1.0) and stats["AR100"] == pytest.approx(1.0)

    # AR1 keeps one detection per image and category (all scores tie, each matches its own box), so for
    # category c it is (#images containing c) / (#boxes of c); AR1 is the mean over categories present.
    per_cat = {}
    for a in data["annotations"]:
        per_cat.setdefault(a["category_id"], []).append(a["image_id"])
    expected_ar1 = np.mean([len(set(ims)) / len(ims) for ims in per_cat.values()])
    assert stats["AR1"] == pytest.approx(expected_ar1)


def test_cli_evaluate_reports_bad_results(tmp_path, one_class):
    res = C.write_results(tmp_path / "res.json", _dets(FOUR, cat=99))
    args = _parser().parse_args(["evaluate", "--annotations", str(one_class), "--results", str(res)])
    with pytest.raises(ValueError, match="category id"):
        evaluate_command.run(args)  # detspec.cli.main turns ValueError into exit code 2
