"""The spec as data: profiles, sources, clause registry and the conformance suite's clause coverage."""

from __future__ import annotations

import ast
import dataclasses
import functools
import math
from pathlib import Path

import pytest

from spec import clauses, config
from spec.contract import CONTRACT, PLANNED, missing_names

CONFORMANCE = Path(__file__).resolve().parents[1] / "detspec" / "conformance"
FOUNDATION_AREAS = ("BOX", "ANCHOR", "MATCH", "SAMPLE", "NMS", "ROI", "RCNN")


def _leaf_fields(cfg, prefix=""):
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            yield from _leaf_fields(value, f"{prefix}{f.name}.")
        elif f.name != "name":
            yield f"{prefix}{f.name}", f


def _get(cfg, dotted: str):
    return functools.reduce(getattr, dotted.split("."), cfg)


def test_every_config_number_cites_a_source():
    uncited = [name for name, f in _leaf_fields(config.BASE_RCNN_FPN) if "source" not in f.metadata]
    assert uncited == []
    cited = config.sources(config.BASE_RCNN_FPN)
    assert cited["rpn.iou_thresholds"].startswith("defaults.py")
    assert "Base-RCNN-FPN.yaml" in cited["box_head.pooler_resolution"]


def test_detectron2_profile_numbers():
    # d2-spec §1: the numbers of the seed and the design card
    c = config.BASE_RCNN_FPN
    assert c.anchors.num_cell_anchors == 15 and c.anchors.anchors_per_location == 3
    assert c.anchors.offset == 0.0 and not c.anchors.round_cell_anchors
    assert (c.rpn.iou_thresholds, c.rpn.iou_labels) == ((0.3, 0.7), (0, -1, 1))
    assert (c.rpn.pre_nms_topk_test, c.rpn.post_nms_topk_test, c.rpn.nms_thresh) == (1000, 1000, 0.7)
    assert c.roi_heads.in_features == ("p2", "p3", "p4", "p5")
    assert c.roi_heads.background_index == 80
    assert math.isclose(c.rpn.box_coder.scale_clamp, 4.135166556742356, rel_tol=0, abs_tol=1e-15)


def test_torchvision_profile_differs_only_where_torchvision_does():
    d2, tv = config.BASE_RCNN_FPN, config.TORCHVISION
    differing = {name for name, _ in _leaf_fields(d2) if _get(d2, name) != _get(tv, name)}
    assert differing == {
        "input.format", "input.pixel_mean", "input.pixel_std", "input.pixel_scale", "input.min_size_train",
        "resnet.stride_in_1x1", "anchors.round_cell_anchors", "rpn.post_nms_topk_train", "rpn.min_box_size",
        "rpn.score_thresh", "rpn.rank_by", "roi_heads.source_background_label", "roi_heads.num_classes",
        "roi_heads.level_eps",
        "roi_heads.level_eps_in_log", "box_head.pooler_sampling_ratio", "box_head.aligned", "box_head.pooler_type",
        "box_head.smooth_l1_beta", "inference.min_box_size", "inference.drop_nonfinite",
        "input.resize_rounding", "input.resize_interpolation", "input.normalize_before_resize",
    }
    # detspec's layout puts background last in both profiles; torchvision's row 0 is moved there on conversion
    assert tv.roi_heads.background_index == 90 and tv.roi_heads.source_background_label == "first"


def test_get_profile():
    assert config.get_profile("torchvision") is config.TORCHVISION
    with pytest.raises(ValueError, match="detectron2"):
        config.get_profile("mmdet")


def test_clause_registry_rejects_duplicates_and_bad_ids():
    with pytest.raises(ValueError, match="twice"):
        clauses.register("BOX.AREA", "again", "here")
    with pytest.raises(ValueError, match="upper case"):
        clauses.register("box.lower", "x", "here")
    with pytest.raises(KeyError, match="unknown clause"):
        clauses.get_clause("NOPE.NOPE")


def test_clause_components_are_contract_names():
    for c in clauses.CLAUSES.values():
        for name in c.components:
            assert name in CONTRACT or name in PLANNED, (c.id, name)


def test_reference_and_fast_implement_the_whole_contract():
    import fast
    import reference

    assert missing_names(reference) == []
    assert missing_names(fast) == []


def _marked_clauses() -> set[str]:
    found = set()
    for path in CONFORMANCE.glob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "clause":
                found.update(a.value for a in node.args if isinstance(a, ast.Constant))
    return found


def test_every_foundation_clause_has_a_conformance_test():
    marked = _marked_clauses()
    foundation = {cid for cid, c in clauses.CLAUSES.items() if c.area in FOUNDATION_AREAS}
    assert foundation - marked == set()
    assert marked - set(clauses.CLAUSES) == set()  # and no test cites an unregistered clause


@pytest.mark.parametrize("size, half_up, floor", [
    # d2-spec §3 resize examples (half up); torchvision floors the same products: 1066.67 -> 1066, 666.5 -> 666
    ((427, 640), (800, 1199), (800, 1199)),
    ((480, 640), (800, 1067), (800, 1066)),
    ((500, 1000), (667, 1333), (666, 1333)),
    ((640, 480), (1067, 800), (1066, 800)),
])
def test_resized_size_known_values(size, half_up, floor):
    from spec.sizes import resized_size

    assert resized_size(*size) == half_up
    assert resized_size(*size, rounding="floor") == floor
    with pytest.raises(ValueError, match="rounding"):
        resized_size(*size, rounding="nearest")
