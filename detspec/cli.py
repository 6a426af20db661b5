"""The ``detspec`` command.

  detspec check [--impl NAME ...] [--device cpu|cuda] [--dtype fp32|bf16|fp16] [--repro DIR] [--report PATH]
                [-k EXPR] [--workers N] [--timeout S]
      Run the conformance suite against the implementations (default: reference and fast; ``onnxruntime`` is the
      ONNX Runtime port) and print the
      clause table (detspec/commands/check.py). Exits 1 if any clause fails, errs, times out (--timeout, default 300 s
      per test) or was interrupted, 2 on a usage error, 130/143 on SIGINT/SIGTERM (the partial table is still
      printed, marked INCOMPLETE), 0 otherwise ("not implemented" clauses of a partial port do not fail the run).
      --dtype bf16|fp16 runs the low-precision suite instead; --repro DIR writes each failing test's case.

  detspec repro CASE.json [--impl NAME] [--device cpu|cuda]
      Replay one case written by check --repro: expected and actual side by side, the first difference marked;
      exit 0 when the implementation passes it, 1 when not, 2 on a bad file (detspec/commands/repro.py).

  detspec export WEIGHTS OUT.onnx [--profile ...] | detspec export --component NAME OUT.onnx | detspec export --list
      The fast detector, or one contract function, as an ONNX model (detspec/onnx/; the `onnx` extra).

  detspec convert SRC DST --from torchvision-mvit [--model mvit_b_16x4|mvit_v2_s|mvit_b_16]
      Check a torchvision MViT state dict (a torch.save file, read with weights_only=True) against detspec's
      layout, which is the same, and save it as DST. Unexpected or missing keys and shape mismatches are
      errors that name the keys.

  detspec convert SRC DST --from detectron2|torchvision|auto
      Faster R-CNN R50-FPN: read a detectron2 model-zoo file (model_final_*.pkl, through a restricted unpickler
      that admits numpy arrays only, or a .pth) or a torchvision fasterrcnn_resnet50_fpn state dict (.pth,
      weights_only=True; renamed, background row moved last), check it against detspec's layout (= detectron2's,
      d2-spec §5.1) and save DST as a detspec file (detspec.checkpoints.save_detspec). Every checkpoint is
      untrusted input; only finite floating-point weights are accepted (detspec/checkpoints.py says how float16
      and float64 are converted). DST is written atomically and may not be SRC.

  detspec classify VIDEO.npy|.mp4 --weights W [--model ...] [--views 5x1] [--impl fast|reference] [--json OUT]
                   [--dtype fp32|bf16|fp16]
      Multi-view video classification: N uniform clips x M crops, class probabilities averaged (K400 protocol
      for MViT-B 16x4: 5x1). Prints the top-5 classes and the cost as GFLOPs x views; --json also writes the
      logits of every view and the averaged probabilities over all classes.

  detspec detect IMAGE... --weights W|MODEL.onnx [--profile detectron2|torchvision] [--resize default|none]
                 [--out DIR] [--dtype fp32|bf16|fp16]
      Run the Faster R-CNN (an .onnx model on ONNX Runtime); write DIR/detections.json (COCO results,
      original-image pixels) and one PNG per image with the boxes and class names drawn (detspec/commands/detect.py).

  detspec evaluate --annotations A --results R [--json OUT]
      COCO box evaluation with pycocotools; prints the standard 12-number summary.

  detspec bench [--suite NAME ...] [--device cpu|cuda] [--save NAME] [--compare NAME --fail-above PCT]
      Run the pytest-benchmark suites; print the ratio table, write JSON and a PNG plot, gate regressions
      against a saved baseline (see detspec/commands/bench.py).

  detspec vectors export DIR | detspec vectors check DIR --impl X
      Golden vectors for ports outside Python: .npz cases plus a JSON manifest (seed, spec version, tolerances);
      check an implementation against them (see detspec/vectors/; the committed set is vectors/v1/).

  detspec demo [--iters N] [--out DIR] [--impl fast|reference] [--seed S] [--device cpu|cuda]
      Train a small Faster R-CNN on the synthetic shapes and report COCO AP before and after (detspec/demo/);
      `torchrun --nproc_per_node 2 -m detspec.demo ...` runs the same loop with DDP.

  detspec synth OUT_DIR [--images N] [--seed S] [--size H W]
      Write the procedural synthetic shapes dataset (images/*.png + annotations.json, COCO format).

Each subcommand is one module of detspec/commands/ with ``add_parser(subparsers)``; ``COMMANDS`` lists them in
the order ``detspec --help`` shows them.
"""

from __future__ import annotations

import argparse
import sys

from detspec.commands import bench, check, classify, convert, demo, detect, evaluate, export, repro, synth, vectors

COMMANDS = (check, convert, classify, bench, demo, vectors, detect, evaluate, synth, export, repro)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detspec", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError) as exc:  # UserError, bad input files, unwritable outputs: one line, exit 2
        print(f"detspec {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # outputs are written atomically, so an interrupt leaves no half-written file
        print(f"detspec {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
