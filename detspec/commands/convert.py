"""``detspec convert SRC DST --from torchvision-mvit|detectron2|torchvision|auto [--model NAME]``.

Faster R-CNN checkpoints go through :func:`detspec.checkpoints.convert_main` (which checks DST and writes it
atomically); MViT checkpoints (``--from torchvision-mvit``) through :mod:`detspec.mvit_checkpoints`: DST is checked
before SRC is read (its directory exists, it is not a directory, it is not SRC under any name) and written
atomically, as float32 in the model's key order.
"""

from __future__ import annotations

import argparse

import torch

from detspec.checkpoints import compact_tensor, convert_main
from detspec.io.fileio import UserError, atomic_save, check_output
from detspec.mvit_checkpoints import load_mvit_state, mvit_names


def run(args: argparse.Namespace) -> int:
    if args.source != "torchvision-mvit":  # Faster R-CNN checkpoints (check_output and atomic write in there)
        convert_main(args.src, args.dst, args.source)
        return 0

    check_output(args.dst, inputs=[args.src])  # before reading: never overwrite SRC, fail before the work
    notes: list[str] = []
    state = {k: compact_tensor(v) for k, v in load_mvit_state(args.src, args.model, notes).items()}
    try:
        atomic_save(args.dst, lambda f: torch.save(state, f))
    except OSError as exc:  # a full disk, a read-only directory: the earlier DST (if any) is still there
        raise UserError(f"{args.dst}: cannot write the output ({exc.strerror or exc}); nothing was changed") from None
    for note in notes:
        print(f"note: {args.src}: {note}")
    print(f"wrote {args.dst}: {len(state)} tensors, {sum(t.numel() for t in state.values()):,} values")
    return 0


def add_parser(sub) -> argparse.ArgumentParser:
    convert = sub.add_parser("convert", help="convert a checkpoint into detspec's layout")
    convert.add_argument("src")
    convert.add_argument("dst")
    convert.add_argument("--from", dest="source", required=True,
                         choices=("torchvision-mvit", "detectron2", "torchvision", "auto"),
                         help="the checkpoint's origin: detectron2 (model_final_*.pkl or .pth) or torchvision "
                              "(fasterrcnn_resnet50_fpn .pth) Faster R-CNN, auto to recognise those, or "
                              "torchvision-mvit")
    convert.add_argument("--model", default="mvit_b_16x4", choices=mvit_names(),
                         help="torchvision-mvit only: mvit_b_16x4 (mvit_v1_b), mvit_v2_s or mvit_b_16")
    convert.set_defaults(func=run)

    return convert
