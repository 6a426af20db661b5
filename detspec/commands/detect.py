"""``detspec detect IMAGE... --weights W|MODEL.onnx [--profile PROFILE] [--resize default|none]
[--out DIR] [--image-ids ANNOTATIONS.json|ID,ID,...]``.

PROFILE is detectron2 (the default for a ResNet-50 body), torchvision, or detectron2-mvitv2-t/s/b: weights with an
MViTv2 body (detectron2's projects/MViTv2 detectors, converted with `detspec convert --from detectron2`) pick their
profile from their keys, and a --profile with another body is refused.

Runs the Faster R-CNN on image files and writes, under --out (default ./detections):
  detections.json   COCO results ([{"image_id", "category_id", "bbox": [x, y, w, h], "score"}, ...]) in
                    original-image pixels
  <stem>.png        the image with the boxes whose score >= --draw-thresh and their class names drawn on it
                    (input photos/x.jpg -> DIR/x.png)
--resize default applies the profile's test transform (detectron2: short side 800, long side <= 1333;
torchvision: GeneralizedRCNNTransform); --resize none feeds each image at its own size, padded to /32.

ONNX. With --weights MODEL.onnx (a model written by `detspec export WEIGHTS MODEL.onnx`), the model runs on ONNX
Runtime (CPU) through detspec.onnx.detector.run_onnx_detector: the profile, the pixel format and the
class-to-category map come from the model's metadata (--profile may repeat the exported profile, not contradict
it; --impl and --dtype keep their defaults, the model runs as exported). The outputs and progress lines are those
of a .pth. A missing or unloadable .onnx file, or one without detspec's metadata, is refused before any image is
read; an ONNX Runtime failure on an image stops the run with one line naming the image (no detections.json).

Image ids. By default an image's id is the number in its file name: the last run of digits 0-9 in the name
without its extension (000000397133.jpg -> 397133, frame_12.png -> 12). If an image's name has no number, or two
images would get the same id, nothing is run: the error names the images. Give the ids explicitly instead with
  --image-ids ANNOTATIONS.json  each image's file name is looked up in the COCO file's images[].file_name
                                (compared by the last path component) and takes that entry's id;
  --image-ids 1,2,3             one id per image, in command-line order (a value made of digits and commas is
                                such a list; any other value is an annotations file).
The ids, however given, must be unique.

Pixels: every image becomes RGB uint8 before the model sees it, by the rules of detspec/io/images.py (8-bit
modes converted, 16-bit greyscale scaled, 16-bit colour and floating point refused).

Errors (exit code 2, one line each, never a traceback):
  - refused before any work: --out is an existing file, or its parent directory does not exist (--out itself
    is created when only its last component is missing); two images would be drawn to the same PNG (the same
    file name without extension, compared case-insensitively: a/x.png and b/x.jpg); a drawn PNG or
    detections.json would replace an input (an image, --weights or the --image-ids file), e.g. --out the
    directory of PNG inputs; the image ids, as above.
  - an image that cannot be read (missing, a directory, not an image, truncated, or refused by the pixel rules)
    is skipped and named on stderr; the other images are processed and written, and the exit code is 2.

Files. Every file is written atomically (a temporary file in DIR, then a rename), so none is ever half-written.
An existing DIR/detections.json is removed before the first image is processed, and the new one is written at
the end with the results of exactly the images that were read (an empty list if none was): a detections.json
from an earlier run never stays behind looking current. Drawn PNGs of images that are skipped are neither
written nor removed.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import torch

from detspec.checkpoints import layout_config, load_checkpoint
from detspec.io.categories import CategoryMap, category_table
from detspec.io.coco import detections_to_coco_results
from detspec.io.fileio import UserError, atomic_write_json, check_output, load_json, naming_write_errors
from detspec.io.images import draw, load_image, to_profile_format
from layout.precision import DTYPE_CHOICES
from spec.config import PROFILES, get_profile

_MAX_LISTED = 5  # problems listed in one error message
_ID_LIST = re.compile(r"\s*[0-9]+\s*(,\s*[0-9]+\s*)*")


def _listed(items: list[str]) -> str:
    more = f" and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return "; ".join(items[:_MAX_LISTED]) + more


_HOW = ("give the ids with --image-ids ANNOTATIONS.json (looked up by file name) or --image-ids ID,ID,... "
        "(one per image, in order)")


def _ids_from_names(paths: list[str]) -> list[int]:
    numbers = [re.findall(r"[0-9]+", Path(p).stem) for p in paths]
    problems = [f"{p} has no number in its file name" for p, n in zip(paths, numbers) if not n]
    ids = [int(n[-1]) if n else None for n in numbers]
    problems += _duplicate_ids(paths, ids)
    if problems:
        raise UserError(f"cannot take the image ids from the file names: {_listed(problems)}; {_HOW}")
    return ids  # type: ignore[return-value]


def _duplicate_ids(paths: list[str], ids: list[int | None]) -> list[str]:
    holders: dict[int, list[str]] = {}
    for p, i in zip(paths, ids):
        if i is not None:
            holders.setdefault(i, []).append(str(p))
    return [f"{' and '.join(ps)} would all get image id {i}" if len(ps) > 2 else
            f"{ps[0]} and {ps[1]} would both get image id {i}" for i, ps in holders.items() if len(ps) > 1]


def _ids_from_list(paths: list[str], text: str) -> list[int]:
    ids = [int(v) for v in text.split(",") if v.strip()]
    if len(ids) != len(paths):
        raise UserError(f"--image-ids {text!r} gives {len(ids)} id(s) for {len(paths)} image(s); give one per image, "
                        "in command-line order")
    return ids


def _ids_from_annotations(paths: list[str], source: str) -> list[int]:
    data = load_json(source, "--image-ids annotations")
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise UserError(f"{source}: expected a COCO annotations dict with an 'images' list (for --image-ids)")
    by_name: dict[str, set[int]] = {}
    for i, img in enumerate(images):
        if not (isinstance(img, dict) and isinstance(img.get("file_name"), str) and isinstance(img.get("id"), int)
                and not isinstance(img.get("id"), bool)):
            raise UserError(f"{source}: images[{i}] needs a string 'file_name' and an int 'id', got {img!r:.80}")
        name = img["file_name"].replace("\\", "/").rsplit("/", 1)[-1]
        by_name.setdefault(name, set()).add(img["id"])
    ids, problems = [], []
    for p in paths:
        found = by_name.get(Path(p).name, set())
        if len(found) != 1:
            problems.append(f"{p}: no images[].file_name is {Path(p).name!r}" if not found else
                            f"{p}: images[].file_name {Path(p).name!r} has several ids {sorted(found)}")
        ids.append(next(iter(found)) if len(found) == 1 else None)
    if problems:
        raise UserError(f"{source}: cannot look up the image ids (--image-ids): {_listed(problems)}")
    return ids


def image_ids(paths: list[str], source: str | None = None) -> list[int]:
    """The image id of each path, by the rules in the module docstring; UserError naming the images otherwise.

    source: None (the number in each file name), a COCO annotations file (looked up by file name) or a
    comma-separated list of ids, one per path.
    """
    paths = [str(p) for p in paths]
    if source is None:
        return _ids_from_names(paths)
    ids = _ids_from_list(paths, source) if _ID_LIST.fullmatch(source) else _ids_from_annotations(paths, source)
    duplicates = _duplicate_ids(paths, ids)
    if duplicates:
        raise UserError(f"--image-ids {source}: {_listed(duplicates)}; image ids must be unique")
    return ids


def drawn_paths(paths: list[str], out: Path) -> list[Path]:
    """out/<stem>.png for each image; UserError when two images would be drawn to the same file."""
    seen: dict[str, str] = {}
    clashes = []
    for p in paths:
        key = Path(p).stem.casefold()
        if key in seen and seen[key] == str(p):
            clashes.append(f"{p} is given twice")
        elif key in seen:
            clashes.append(f"{seen[key]} and {p} would both be drawn to {out / (Path(p).stem + '.png')}")
        else:
            seen[key] = str(p)
    if clashes:
        raise UserError(f"{_listed(clashes)}; rename one of them or run them separately")
    return [out / f"{Path(p).stem}.png" for p in paths]


def check_out_dir(out: str | Path) -> Path:
    """--out: an existing directory, or a new one whose parent exists (created later by the caller)."""
    if str(out) == "":
        raise UserError("--out is empty; give a directory")
    d = Path(out)
    if d.exists() and not d.is_dir():
        raise UserError(f"--out {d} is a file, not a directory")
    if not d.exists() and not d.parent.is_dir():
        raise UserError(f"--out {d}: its parent directory {d.parent} does not exist (only the last component of "
                        "--out is created)")
    return d


def is_onnx(weights: str) -> bool:
    """--weights is an exported ONNX model (by its extension, case-insensitively)."""
    return str(weights).lower().endswith(".onnx")


def _torch_model(args: argparse.Namespace):
    """(predict(image, path) -> detections, the input config, the category table) of a .pth/.pkl checkpoint."""
    state_dict = load_checkpoint(args.weights)
    body = layout_config(state_dict)  # the ResNet-50 (detectron2's layout) or an MViTv2 body, by the keys
    profile = args.profile or body.name
    cfg = get_profile(profile)
    if cfg.mvit != body.mvit:
        raise UserError(f"--profile {profile} has the {cfg.body} body, but {args.weights} holds a {body.body} "
                        f"detector; leave --profile out or give --profile {body.name}")
    key = "roi_heads.box_predictor.cls_score.weight"
    num_classes = int(state_dict[key].shape[0]) - 1
    impl = __import__(args.impl)
    model = impl.FasterRCNN(cfg, num_classes=num_classes, resize=args.resize == "default",
                            autocast_dtype=DTYPE_CHOICES[args.dtype]).eval()
    model.load_state_dict(state_dict)
    names = category_table(num_classes, "torchvision" if profile == "torchvision" else "detectron2")

    def predict(image: torch.Tensor, path: str) -> dict:
        with torch.no_grad():
            (det,) = model([image])
        return det

    return predict, cfg.input, names


def _onnx_model(args: argparse.Namespace):
    """The same triple for a model written by `detspec export`, run on ONNX Runtime (CPU): the profile, the
    input config and the categories come from the model's metadata."""
    for flag, value, default in (("--impl", args.impl, "fast"), ("--dtype", args.dtype, "fp32")):
        if value != default:
            raise UserError(f"{flag} {value} does not apply to an ONNX model ({args.weights}): it runs as exported, "
                            f"on ONNX Runtime; leave {flag} out")
    try:
        from detspec.onnx.detector import load_detector, run_onnx_detector
    except ImportError as exc:
        raise UserError(f"{args.weights}: running an ONNX model needs the onnx extra "
                        f"(pip install -e '.[onnx]'): {exc}") from None
    detector = load_detector(args.weights)
    if args.profile is not None and args.profile != detector.profile:
        raise UserError(f"--profile {args.profile} contradicts {args.weights}, which was exported with the "
                        f"{detector.profile} profile; leave --profile out or give --profile {detector.profile}")
    resize = args.resize == "default"

    def predict(image: torch.Tensor, path: str) -> dict:
        try:
            (det,) = run_onnx_detector(detector, [image], resize=resize)
        except Exception as exc:  # onnxruntime's own error classes: one line naming the image and the model
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"{path}: ONNX Runtime failed to run {args.weights} on this image "
                            f"({tuple(image.shape[1:])} pixels): {first[:200]}") from None
        return det

    return predict, detector.input_cfg, list(detector.categories)


def run(args: argparse.Namespace) -> int:
    # everything that can be refused is refused before the checkpoint is read
    images = [str(p) for p in args.images]
    id_source = getattr(args, "image_ids", None)
    out = check_out_dir(args.out)
    pngs = drawn_paths(images, out)
    ids = image_ids(images, id_source)
    results_path = out / "detections.json"
    if out.is_dir():  # a directory that does not exist yet holds no input
        inputs = [*images, args.weights]
        if id_source is not None and not _ID_LIST.fullmatch(id_source):
            inputs.append(id_source)
        check_output(results_path, inputs, what="detections file")
        for png in pngs:
            check_output(png, inputs, what="drawn image")

    if is_onnx(args.weights):
        predict, input_cfg, names = _onnx_model(args)
    else:
        predict, input_cfg, names = _torch_model(args)
    category_map = CategoryMap([cid for cid, _ in names], dict(names))  # ascending ids: index c = class c

    out.mkdir(exist_ok=True)
    results_path.unlink(missing_ok=True)  # an earlier run's results must not outlive this run's PNGs
    results, skipped = [], []
    for n, (path, image_id, png) in enumerate(zip(images, ids, pngs), start=1):
        try:
            rgb = load_image(path)
        except UserError as exc:
            skipped.append(path)
            print(f"detspec detect: skipped {exc}", file=sys.stderr, flush=True)
            continue
        start = time.perf_counter()
        det = predict(to_profile_format(rgb, input_cfg), path)
        seconds = time.perf_counter() - start
        boxes, scores, classes = det["boxes"], det["scores"], det["classes"]
        results += detections_to_coco_results(image_id, boxes, scores, classes, category_map)
        drawn = draw(rgb, boxes, scores, classes, names, png, args.draw_thresh)
        print(f"[{n}/{len(images)}] {path}: {len(scores)} detections ({drawn} drawn, score >= "
              f"{args.draw_thresh}) in {seconds:.2f} s -> {png}", flush=True)
    with naming_write_errors(results_path):
        atomic_write_json(results_path, results)
    read = len(images) - len(skipped)
    print(f"wrote {results_path} ({len(results)} detections from {read} of {len(images)} images, COCO results "
          "format)" + (f"; {len(skipped)} image(s) skipped, named above" if skipped else ""))
    return 2 if skipped else 0


def add_parser(sub) -> None:
    p = sub.add_parser("detect", help="run the Faster R-CNN on images; write COCO results JSON and drawn PNGs")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--weights", required=True,
                   help="a detectron2 .pkl/.pth, a torchvision state dict, a `detspec convert` output, or an .onnx "
                        "model written by `detspec export` (run on ONNX Runtime)")
    p.add_argument("--profile", choices=tuple(PROFILES), default=None,
                   help="the model's profile (default: detectron2, or detectron2-mvitv2-t/s/b for weights with an "
                        "MViTv2 body, read off the keys; for an .onnx model, the profile it was exported with, which "
                        "--profile may repeat but not contradict)")
    p.add_argument("--resize", choices=("default", "none"), default="default")
    p.add_argument("--out", default="detections",
                   help="output directory (default ./detections; created if only its last component is missing)")
    p.add_argument("--impl", choices=("fast", "reference"), default="fast")
    p.add_argument("--draw-thresh", type=float, default=0.5, help="draw boxes with at least this score")
    p.add_argument("--dtype", choices=tuple(DTYPE_CHOICES), default="fp32",
                   help="compute dtype of the backbone and heads (default fp32; bf16 / fp16 run them under "
                        "autocast with the geometry in float32, see README 'Low precision')")
    p.add_argument("--image-ids", metavar="ANNOTATIONS.json|ID,ID,...",
                   help="image ids: looked up by file name in a COCO annotations file's images, or one per image "
                        "in order (default: the number in each file name)")
    p.set_defaults(func=run)
