"""``detspec export WEIGHTS OUT.onnx [--profile PROFILE]``: the whole fast detector as ONNX (the ResNet-50
profiles detectron2 and torchvision, and detectron2-mvitv2-t/s/b, whose profile is read off the keys);
``detspec export --component NAME OUT.onnx [--dtype float32|float64]``: one contract function as ONNX.

The detector (detspec/onnx/detector.py) takes one normalized, padded image [1, 3, H, W] (H, W multiples of 32)
and the unpadded size, and returns boxes, scores and classes (at most 100); the profile's resize, normalization
and padding run at the boundary (``detspec.onnx.detector.run_onnx_detector``). Its metadata records the detspec
version, the spec version and config hash, the profile and the class-to-category map.

The component is exported with torch.onnx's dynamo exporter (detspec/onnx/components.py: opset 18, dynamic
axes, NMS as NonMaxSuppression, ROIAlign as RoiAlign) and written atomically; OUT is checked before the work
(its directory exists, it is not a directory, it is not WEIGHTS). ``--list`` prints the components and their
static arguments. Needs the optional extra: ``pip install -e '.[onnx]'``.
"""

from __future__ import annotations

import argparse

from detspec.io.fileio import UserError, check_output
from spec.config import PROFILES, get_profile


def _components():
    try:
        from detspec.onnx import components
    except ImportError as exc:
        raise UserError(f"ONNX export needs the onnx extra (pip install -e '.[onnx]'): {exc}") from None
    return components


def _parse_static(components, name: str, pairs: list[str]) -> dict:
    """--arg KEY=VALUE pairs -> the component's static arguments, typed like their defaults."""
    import ast

    defaults = components.COMPONENTS[name]
    static = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or key not in defaults:
            raise UserError(f"--arg {pair!r}: expected KEY=VALUE with KEY one of "
                            f"{', '.join(defaults) or '(none: this component has no static arguments)'}")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text  # a bare word, e.g. rank_by=sigmoid
        static[key] = value
    return static


def _export_detector(args: argparse.Namespace) -> int:
    if len(args.paths) != 2:
        raise UserError(f"expected WEIGHTS OUT.onnx (or --component NAME OUT.onnx), got {len(args.paths)} path(s)")
    weights, out = args.paths
    check_output(out, inputs=[weights], what="ONNX model")  # before reading the checkpoint
    _components()  # the onnx extra, with its one-line error
    from detspec.checkpoints import layout_config, load_checkpoint
    from detspec.io.categories import category_table
    from detspec.onnx.detector import export_detector
    from fast.rcnn import FasterRCNN

    state_dict = load_checkpoint(weights)
    key = "roi_heads.box_predictor.cls_score.weight"
    if key not in state_dict:
        raise UserError(f"{weights}: not a Faster R-CNN checkpoint (no {key})")
    body = layout_config(state_dict)  # the ResNet-50 or an MViTv2 body (issue 14), by the keys
    profile = args.profile or body.name
    cfg = get_profile(profile)
    if cfg.mvit != body.mvit:
        raise UserError(f"--profile {profile} has the {cfg.body} body, but {weights} holds a {body.body} detector; "
                        f"leave --profile out or give --profile {body.name}")
    num_classes = int(state_dict[key].shape[0]) - 1
    model = FasterRCNN(cfg, num_classes=num_classes).eval()
    model.load_state_dict(state_dict)
    categories = category_table(num_classes, "torchvision" if profile == "torchvision" else "detectron2")
    try:
        export_detector(model, out, profile, categories)
    except OSError as exc:
        raise UserError(f"{out}: cannot write the model ({exc.strerror or exc}); nothing was changed") from None
    print(f"wrote {out}: Faster R-CNN, profile {profile}, {num_classes} classes (inputs batch [1, 3, H, W] "
          f"with H, W multiples of 32 and upper [4]; outputs boxes, scores, classes)")
    return 0


def run(args: argparse.Namespace) -> int:
    components = _components()
    if args.list:
        for name, defaults in components.COMPONENTS.items():
            extra = ", ".join(f"{k}={v!r}" for k, v in defaults.items())
            print(f"{name}" + (f"  ({extra})" if extra else ""))
        return 0
    if args.component is None:
        return _export_detector(args)
    if len(args.paths) != 1:
        raise UserError(f"--component {args.component} takes one output path, got {len(args.paths)}: "
                        f"{' '.join(args.paths)}")
    if args.component not in components.COMPONENTS:
        raise UserError(f"unknown component {args.component!r}; one of {', '.join(components.COMPONENTS)}")
    out = args.paths[0]
    check_output(out, what="ONNX model")  # before the export: fail fast on a bad destination
    static = _parse_static(components, args.component, args.arg)
    try:
        components.export_component(args.component, out, args.dtype, **static)
    except OSError as exc:
        raise UserError(f"{out}: cannot write the model ({exc.strerror or exc}); nothing was changed") from None
    except (TypeError, KeyError) as exc:
        raise UserError(f"--component {args.component}: {exc}") from None
    model = components.component_model(args.component, components.DTYPES[args.dtype], **static)
    ins = ", ".join(i.name for i in model.graph.input)
    outs = ", ".join(o.name for o in model.graph.output)
    print(f"wrote {out}: {args.component} ({args.dtype}, opset {components.OPSET}; inputs {ins}; outputs {outs})")
    return 0


def add_parser(sub) -> argparse.ArgumentParser:
    export = sub.add_parser("export", help="export a contract function as an ONNX model")
    export.add_argument("paths", nargs="*", metavar="[WEIGHTS] OUT.onnx",
                        help="a detspec .pth / converted checkpoint and the output model; with --component, the "
                             "output model only")
    export.add_argument("--profile", default=None, choices=tuple(PROFILES),
                        help="the detector's profile (default: detectron2, or detectron2-mvitv2-t/s/b for weights "
                             "with an MViTv2 body, read off the keys)")
    export.add_argument("--component", metavar="NAME",
                        help="the contract function to export (pairwise_iou, nms, roi_align, ...; see --list)")
    export.add_argument("--dtype", default="float32", choices=("float32", "float64"),
                        help="the floating dtype of the graph's inputs (default float32)")
    export.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE",
                        help="a static argument of the component (e.g. output_size=7, aligned=False); repeatable")
    export.add_argument("--list", action="store_true", help="list the exportable components and exit")
    export.set_defaults(func=run)
    return export
