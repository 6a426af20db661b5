"""``detspec synth OUT_DIR [--images N] [--seed S] [--size H W] [--min-objects N] [--max-objects N]``: write the
procedural synthetic shapes dataset (detspec.data.synthetic) as COCO files.

OUT_DIR is created only when its parent exists; an OUT_DIR that is a file is refused. Every file written (the
images and annotations.json) is written atomically.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from detspec.data import synthetic as S
from detspec.io.fileio import UserError, check_output


def add_parser(subparsers) -> argparse.ArgumentParser:
    """``detspec synth OUT_DIR --images N --seed S [--size H W]``."""
    p = subparsers.add_parser("synth", help="write a procedural synthetic COCO-format shapes dataset",
                              description="Write OUT_DIR/images/*.png and OUT_DIR/annotations.json: coloured "
                                          "shapes (8 classes, non-contiguous category ids) on textured "
                                          "backgrounds. Same arguments, same bytes.")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--images", type=int, default=16, metavar="N", help="number of images (default 16)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=list(S.DEFAULT_IMAGE_SIZE),
                   help=f"image height and width (default {S.DEFAULT_IMAGE_SIZE[0]} {S.DEFAULT_IMAGE_SIZE[1]})")
    p.add_argument("--min-objects", type=int, default=1, help="fewest shapes drawn per image (default 1)")
    p.add_argument("--max-objects", type=int, default=8, help="most shapes drawn per image (default 8)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    out = Path(args.out_dir)
    if str(args.out_dir) == "":
        raise UserError("OUT_DIR is empty; give a directory")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file, not a directory")
    if not out.exists() and not out.parent.is_dir():
        raise UserError(f"{out}: its parent directory {out.parent} does not exist (only the last component of "
                        "OUT_DIR is created)")
    if (out / "images").exists() and not (out / "images").is_dir():
        raise UserError(f"{out / 'images'} is a file; synth writes its images into that directory")
    if out.is_dir():
        check_output(out / "annotations.json", what="annotations file")

    print(f"detspec synth: {args.images} images of {args.size[0]}x{args.size[1]}, seed {args.seed} -> "
          f"{args.out_dir}", flush=True)
    path = S.make_synthetic_coco(args.out_dir, num_images=args.images, image_size=tuple(args.size), seed=args.seed,
                                 min_objects=args.min_objects, max_objects=args.max_objects,
                                 progress=S.progress_printer("  image "))
    data = json.loads(path.read_text())
    print(f"wrote {path}: {len(data['images'])} images, {len(data['annotations'])} annotations, "
          f"{len(data['categories'])} categories")
    return 0
