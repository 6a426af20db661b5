"""``detspec detect IMAGE... --weights W [--profile detectron2|torchvision] [--resize default|none] [--out DIR]``.

Runs the Faster R-CNN on image files and writes, under --out (default ./detections):
  detections.json   COCO results ([{"image_id", "category_id", "bbox": [x, y, w, h], "score"}, ...]) in
                    original-image pixels; the image id is the file name's number (000000397133.jpg -> 397133),
                    or, when a name has no number, the image's position in the command line (1, 2, ...)
  <name>.png        the image with the boxes whose score >= --draw-thresh and their class names drawn on it
--resize default applies the profile's test transform (detectron2: short side 800, long side <= 1333;
torchvision: GeneralizedRCNNTransform); --resize none feeds each image at its own size, padded to /32.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import torch

from detspec.coco_categories import category_table


def load_image(path: str | Path) -> torch.Tensor:
    """An image file -> RGB uint8 [3, H, W]."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous()


def to_profile_format(rgb: torch.Tensor, input_cfg) -> torch.Tensor:
    """RGB uint8 [3, H, W] -> float [3, H, W] in the profile's channel order and pixel scale."""
    x = rgb.to(torch.float32) * (input_cfg.pixel_scale / 255.0)
    if input_cfg.format == "BGR":
        x = x.flip(0)
    elif input_cfg.format != "RGB":
        raise ValueError(f"unsupported input format {input_cfg.format!r}")
    return x


def image_ids(paths: list[str]) -> list[int]:
    """Numeric file names give their number; otherwise every image gets its 1-based position."""
    numbers = [re.findall(r"\d+", Path(p).stem) for p in paths]
    ids = [int(n[-1]) for n in numbers if n]
    if len(ids) == len(paths) and len(set(ids)) == len(ids):
        return ids
    return list(range(1, len(paths) + 1))


def draw(rgb: torch.Tensor, boxes, scores, classes, names: list[tuple[int, str]], path: Path,
         threshold: float) -> int:
    """Draw the detections with score >= threshold onto the image; returns how many were drawn."""
    import numpy as np
    from PIL import Image, ImageDraw

    image = Image.fromarray(rgb.permute(1, 2, 0).numpy().astype(np.uint8))
    canvas = ImageDraw.Draw(image)
    drawn = 0
    for box, score, cls in zip(boxes.tolist(), scores.tolist(), classes.tolist()):
        if score < threshold:
            continue
        hue = (cls * 67) % 255
        colour = (255 - hue, hue, (hue * 3) % 255)
        canvas.rectangle(box, outline=colour, width=2)
        canvas.text((box[0] + 2, box[1] + 1), f"{names[cls][1]} {score:.2f}", fill=colour)
        drawn += 1
    image.save(path)
    return drawn


def run(args: argparse.Namespace) -> int:
    from detspec.checkpoints import load_checkpoint
    from detspec.coco import CategoryMap, detections_to_coco_results
    from spec.config import get_profile

    cfg = get_profile(args.profile)
    state_dict = load_checkpoint(args.weights)
    key = "roi_heads.box_predictor.cls_score.weight"
    num_classes = int(state_dict[key].shape[0]) - 1
    impl = __import__(args.impl)
    model = impl.FasterRCNN(cfg, num_classes=num_classes, resize=args.resize == "default").eval()
    model.load_state_dict(state_dict)
    names = category_table(num_classes, "torchvision" if args.profile == "torchvision" else "detectron2")
    category_map = CategoryMap([cid for cid, _ in names], dict(names))  # ascending ids: index c = class c

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ids = image_ids(args.images)
    results = []
    for n, (path, image_id) in enumerate(zip(args.images, ids), start=1):
        rgb = load_image(path)
        start = time.perf_counter()
        with torch.no_grad():
            (det,) = model([to_profile_format(rgb, cfg.input)])
        seconds = time.perf_counter() - start
        boxes, scores, classes = det["boxes"], det["scores"], det["classes"]
        results += detections_to_coco_results(image_id, boxes, scores, classes, category_map)
        png = out / f"{Path(path).stem}.png"
        drawn = draw(rgb, boxes, scores, classes, names, png, args.draw_thresh)
        print(f"[{n}/{len(args.images)}] {path}: {len(scores)} detections ({drawn} drawn, score >= "
              f"{args.draw_thresh}) in {seconds:.2f} s -> {png}", flush=True)
    results_path = out / "detections.json"
    results_path.write_text(json.dumps(results))
    print(f"wrote {results_path} ({len(results)} detections, COCO results format)")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("detect", help="run the Faster R-CNN on images; write COCO results JSON and drawn PNGs")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--weights", required=True,
                   help="a detectron2 .pkl/.pth, a torchvision state dict or a `detspec convert` output")
    p.add_argument("--profile", choices=("detectron2", "torchvision"), default="detectron2")
    p.add_argument("--resize", choices=("default", "none"), default="default")
    p.add_argument("--out", default="detections", help="output directory (default ./detections)")
    p.add_argument("--impl", choices=("fast", "reference"), default="fast")
    p.add_argument("--draw-thresh", type=float, default=0.5, help="draw boxes with at least this score")
    p.set_defaults(func=run)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="detspec")
    add_parser(parser.add_subparsers(dest="command", required=True))
    a = parser.parse_args()
    sys.exit(a.func(a))
