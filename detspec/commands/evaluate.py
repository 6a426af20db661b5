"""``detspec evaluate --annotations A --results R [--json OUT]``: COCO box evaluation (detspec.evaluation).

User errors are ValueError/OSError with one line naming the file (the CLI prints it and exits 2). --json is
refused before any work when it is a directory, its directory is missing, or it is --annotations or --results;
it is written atomically.
"""

from __future__ import annotations

import argparse

from detspec.evaluation import evaluate
from detspec.io.fileio import atomic_write_json, check_output, naming_write_errors


def add_parser(subparsers) -> argparse.ArgumentParser:
    """``detspec evaluate --annotations A --results R [--json OUT]``."""
    p = subparsers.add_parser("evaluate", help="COCO box evaluation (pycocotools) of a results JSON",
                              description="Print pycocotools' 12-number COCO summary (AP, AP50, AP75, APs, APm, "
                                          "APl, AR1, AR10, AR100, ARs, ARm, ARl) of detection results.")
    p.add_argument("--annotations", required=True, metavar="A", help="COCO ground-truth annotations JSON")
    p.add_argument("--results", required=True, metavar="R",
                   help="COCO results JSON: a list of {image_id, category_id, bbox [x, y, w, h], score}")
    p.add_argument("--json", metavar="OUT", help="also write the 12 numbers, notes and summary as JSON")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    if args.json:  # refused before any work: a missing directory, a directory, or one of the two inputs
        check_output(args.json, [args.annotations, args.results], what="--json output")
    stats = evaluate(args.annotations, args.results)
    print(f"detspec evaluate: {stats['num_detections']} detections on {stats['num_images']} images "
          f"({args.results} against {args.annotations})")
    for note in stats["notes"]:
        print(f"note: {note}")
    print(stats["summary"], end="")
    if args.json:
        with naming_write_errors(args.json):
            atomic_write_json(args.json, stats, indent=1)
        print(f"wrote {args.json}")
    return 0
