"""The ``detspec`` command.

  detspec check [--impl NAME ...] [--device cpu|cuda] [--report PATH] [-k EXPR] [--workers N]
      Run the conformance suite against the implementations (default: reference and fast) and print the
      clause table. Exits 1 if any clause fails, 2 on a usage error, 0 otherwise ("not implemented"
      clauses of a partial port do not fail the run).

  detspec convert SRC DST --from torchvision-mvit [--model mvit_b_16x4|mvit_v2_s|mvit_b_16]
      Check a torchvision MViT state dict (a .pth file, read with weights_only=True) against detspec's
      layout, which is the same, and save it as DST. Unexpected or missing keys and shape mismatches are
      errors that name the keys.

  detspec convert SRC DST --from detectron2|torchvision|auto
      Faster R-CNN R50-FPN: read a detectron2 model-zoo file (model_final_*.pkl, through a restricted unpickler
      that admits numpy arrays only, or a .pth) or a torchvision fasterrcnn_resnet50_fpn state dict (.pth,
      weights_only=True; renamed, background row moved last), check it against detspec's layout (= detectron2's,
      d2-spec 5.1) and save DST as a detspec file (detspec.checkpoints.save_detspec).

  detspec classify VIDEO.npy|.mp4 --weights W [--model ...] [--views 5x1] [--impl fast|reference] [--json OUT]
      Multi-view video classification: N uniform clips x M crops, class probabilities averaged (K400 protocol
      for MViT-B 16x4: 5x1). Prints the top-5 classes and the cost as GFLOPs x views; --json also writes the
      logits of every view and the averaged probabilities over all classes.

  detspec detect IMAGE... --weights W [--profile detectron2|torchvision] [--resize default|none] [--out DIR]
      Run the Faster R-CNN; write DIR/detections.json (COCO results, original-image pixels) and one PNG per
      image with the boxes and class names drawn (see detspec/detect.py).

  detspec evaluate --annotations A --results R [--json OUT]
      COCO box evaluation with pycocotools; prints the standard 12-number summary.

  detspec bench [--suite NAME ...] [--device cpu|cuda] [--save NAME] [--compare NAME --fail-above PCT]
      Run the pytest-benchmark suites; print the ratio table, write JSON and a PNG plot, gate regressions
      against a saved baseline (see detspec/bench.py).

  detspec vectors export DIR | detspec vectors check DIR --impl X
      Golden vectors for ports outside Python: .npz cases plus a JSON manifest (seed, spec version, tolerances);
      check an implementation against them (see detspec/vectors.py; the committed set is vectors/v1/).

  detspec demo [--iters N] [--out DIR] [--impl fast|reference] [--seed S] [--device cpu|cuda]
      Train a small Faster R-CNN on the synthetic shapes and report COCO AP before and after (detspec/demo.py);
      `torchrun --nproc_per_node 2 -m detspec.demo ...` runs the same loop with DDP.

  detspec synth OUT_DIR [--images N] [--seed S] [--size H W]
      Write the procedural synthetic shapes dataset (images/*.png + annotations.json, COCO format).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path


def _cmd_check(args: argparse.Namespace) -> int:
    import pytest

    from detspec.report import any_failed, format_table

    with tempfile.TemporaryDirectory(prefix="detspec-check-") as tmp:
        report_path = Path(args.report) if args.report else Path(tmp) / "clauses.json"
        argv = ["--pyargs", "detspec.conformance", "-p", "no:cacheprovider", "-p", "no:benchmark", "-q",
                "--no-header", "-rfE", f"--clause-report={report_path}", f"--device={args.device}", "-o", "addopts="]
        # conformance runs are reproducible: derandomized examples and no example database in the cwd
        os.environ.setdefault("HYPOTHESIS_PROFILE", "ci")
        if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
            argv[0:0] = ["-p", "detspec.plugin", "-p", "hypothesis"]
        for name in args.impl or []:
            argv.append(f"--impl={name}")
        if args.k:
            argv += ["-k", args.k]
        if args.workers:
            argv += ["-n", str(args.workers)]
        argv += args.pytest_args
        print(f"detspec check: running the conformance suite ({' '.join(argv)})", flush=True)
        code = pytest.main(argv)
        if code in (pytest.ExitCode.USAGE_ERROR, pytest.ExitCode.INTERNAL_ERROR, pytest.ExitCode.INTERRUPTED):
            return 2
        if code == pytest.ExitCode.NO_TESTS_COLLECTED:
            print("detspec check: no conformance test matched (check -k)", file=sys.stderr)
            return 2
        if not report_path.exists():
            print("detspec check: no report was written (no tests collected?)", file=sys.stderr)
            return 2
        report = json.loads(report_path.read_text())
    print()
    print(format_table(report))
    if any_failed(report) or code == pytest.ExitCode.TESTS_FAILED:
        return 1
    return 0


def _load_state_dict(path: str) -> dict:
    import torch

    obj = torch.load(path, map_location="cpu", weights_only=True)  # checkpoints are untrusted input
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    return obj


def _mvit_model(name: str, impl: str = "fast"):
    from spec.mvit import MVIT_CONFIGS

    if name not in MVIT_CONFIGS:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(MVIT_CONFIGS)}")
    module = __import__(impl).MViT
    return module(MVIT_CONFIGS[name])


def _cmd_convert(args: argparse.Namespace) -> int:
    if args.source != "torchvision-mvit":  # Faster R-CNN checkpoints
        from detspec.checkpoints import convert_main

        convert_main(args.src, args.dst, args.source)
        return 0

    import torch

    state = _load_state_dict(args.src)
    model = _mvit_model(args.model)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        lines = [f"{args.src} does not match {args.model}'s layout:"]
        lines += [f"  missing: {k}" for k in missing[:20]] + [f"  unexpected: {k}" for k in unexpected[:20]]
        lines += [f"  shape {k}: {list(state[k].shape)} != {list(expected[k].shape)}" for k in wrong[:20]]
        print("\n".join(lines), file=sys.stderr)
        return 2
    model.load_state_dict(state, strict=True)
    torch.save(model.state_dict(), args.dst)
    print(f"wrote {args.dst}: {len(state)} tensors, {sum(t.numel() for t in state.values()):,} values")
    return 0


def _load_video(path: str):
    import numpy as np
    import torch

    if path.endswith(".npy"):
        array = np.load(path, allow_pickle=False)
        return torch.from_numpy(np.ascontiguousarray(array))
    try:
        import av  # PyAV: the `video` extra
    except ImportError as exc:
        raise ValueError(f"reading {path} needs PyAV (pip install 'detspec[video]'), or pass frames as a "
                         "[T, H, W, 3] .npy file") from exc
    with av.open(path) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    if not frames:
        raise ValueError(f"{path} has no video frames")
    return torch.from_numpy(np.stack(frames))  # [T, H, W, 3] uint8


def _cmd_classify(args: argparse.Namespace) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from detspec import video as V
    from spec.mvit import K400_EVAL, MVIT_CONFIGS

    clips, crops = V.parse_views(args.views)
    cfg = MVIT_CONFIGS[args.model]
    spec = V.ViewSpec(num_clips=clips, num_crops=crops, clip_len=cfg.temporal_size,
                      frame_stride=K400_EVAL.frame_stride, crop_size=K400_EVAL.crop_size,
                      short_side=K400_EVAL.short_side, mean=K400_EVAL.mean, std=K400_EVAL.std)
    model = _mvit_model(args.model, args.impl)
    model.load_state_dict(_load_state_dict(args.weights), strict=True)
    model.eval()
    views = V.make_views(_load_video(args.video), spec)
    print(f"{args.video}: {views.shape[0]} views of {list(views.shape[1:])}", flush=True)
    with FlopCounterMode(display=False) as counter, torch.device("meta"):
        _mvit_model(args.model, args.impl)(torch.empty(1, *views.shape[1:]))
    gmacs = counter.get_total_flops() / 2e9

    def progress(done: int, total: int) -> None:
        print(f"  view {done}/{total}", flush=True)

    logits, probs = V.classify_views(model, views, progress=progress)
    names = None
    if args.labels:
        names = [line.strip() for line in open(args.labels, encoding="utf-8") if line.strip()]
    for rank, (index, name, p) in enumerate(V.top_k(probs, 5, names), 1):
        print(f"{rank}. {name} ({index}): {p:.4f}")
    print(f"cost: {V.cost_gflops(gmacs, views.shape[0])}")
    if args.json:
        out = {"video": args.video, "model": args.model, "views": args.views, "gmacs_per_view": gmacs,
               "view_logits": logits.tolist(), "probabilities": probs.tolist()}
        Path(args.json).write_text(json.dumps(out))
        print(f"wrote {args.json}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detspec", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="run the conformance suite and print the clause table")
    check.add_argument("--impl", action="append", metavar="NAME",
                       help="reference, fast, torchvision or module[:attribute] (repeatable; "
                            "default reference and fast)")
    check.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    check.add_argument("--report", metavar="PATH", help="also write the clause results as JSON")
    check.add_argument("-k", metavar="EXPR", help="only tests matching this pytest -k expression")
    check.add_argument("--workers", type=int, metavar="N", help="run with pytest-xdist on N processes")
    check.add_argument("pytest_args", nargs="*", help="extra arguments for pytest (after --)")
    check.set_defaults(func=_cmd_check)

    convert = sub.add_parser("convert", help="convert a checkpoint into detspec's layout")
    convert.add_argument("src")
    convert.add_argument("dst")
    convert.add_argument("--from", dest="source", required=True,
                         choices=("torchvision-mvit", "detectron2", "torchvision", "auto"),
                         help="the checkpoint's origin: detectron2 (model_final_*.pkl or .pth) or torchvision "
                              "(fasterrcnn_resnet50_fpn .pth) Faster R-CNN, auto to recognise those, or "
                              "torchvision-mvit")
    convert.add_argument("--model", default="mvit_b_16x4",
                         help="torchvision-mvit only: mvit_b_16x4 (mvit_v1_b), mvit_v2_s or mvit_b_16")
    convert.set_defaults(func=_cmd_convert)

    classify = sub.add_parser("classify", help="multi-view MViT video classification")
    classify.add_argument("video", help="a [T, H, W, 3] .npy array (uint8 0-255 or float 0-1) or an .mp4")
    classify.add_argument("--weights", required=True, help="a detspec (= torchvision) MViT state dict")
    classify.add_argument("--model", default="mvit_b_16x4")
    classify.add_argument("--views", default="5x1", help="CLIPSxCROPS (default 5x1, the K400 protocol)")
    classify.add_argument("--impl", default="fast", choices=("fast", "reference"))
    classify.add_argument("--labels", help="a text file with one class name per line")
    classify.add_argument("--json", metavar="OUT", help="write every view's logits and the averaged probabilities")
    classify.set_defaults(func=_cmd_classify)

    from detspec import bench, coco, demo, detect, vectors

    bench.add_parser(sub)
    demo.add_parser(sub)
    vectors.add_parser(sub)
    detect.add_parser(sub)
    coco.add_evaluate_parser(sub)
    coco.add_synth_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"detspec {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
