"""``detspec classify``: multi-view MViT video classification.

Inputs are checked before the model runs, each failure one line naming the file (exit 2):

- VIDEO: a [T, H, W, 3] ``.npy`` array (read with ``allow_pickle=False``) or a video file decoded with PyAV
  (:mod:`detspec.io.videos`).
  Values follow :func:`detspec.video.video_to_unit`: uint8 0-255 (divided by 255) or floating point in [0, 1];
  other integer dtypes (uint16 included), bool, float outside [0, 1], NaN / infinite values, an empty axis or a
  wrong rank / channel count are refused. A truncated or undecodable file is refused.
- ``--weights``: an MViT state dict for ``--model`` (:func:`detspec.mvit_checkpoints.load_mvit_state`: untrusted-input
  reading, float weights only, exact layout).
- ``--labels``: UTF-8 text, one class name per line, as many names as the model has classes.
- ``--json OUT``: its directory must exist, it must not be a directory or one of the inputs; written atomically.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from detspec import video as V
from detspec.io.fileio import UserError, atomic_write_json, check_output
from detspec.io.videos import load_video
from detspec.mvit_checkpoints import load_mvit_state, mvit_model, mvit_names
from layout.precision import DTYPE_CHOICES
from spec.mvit import K400_EVAL, MVIT_CONFIGS


def _read_labels(path: str, num_classes: int) -> list[str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: the labels file is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read the labels file ({exc.strerror or exc})") from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if len(names) != num_classes:
        raise UserError(f"{path}: {len(names)} class names for a model with {num_classes} classes (one name per "
                        "line)")
    return names


def run(args: argparse.Namespace) -> int:
    inputs = [p for p in (args.video, args.weights, args.labels) if p]
    if args.json:
        check_output(args.json, inputs=inputs, what="--json output")  # before any work
    clips, crops = V.parse_views(args.views)
    cfg = MVIT_CONFIGS[args.model]
    spec = V.ViewSpec(num_clips=clips, num_crops=crops, clip_len=cfg.temporal_size,
                      frame_stride=K400_EVAL.frame_stride, crop_size=K400_EVAL.crop_size,
                      short_side=K400_EVAL.short_side, mean=K400_EVAL.mean, std=K400_EVAL.std)
    names = _read_labels(args.labels, cfg.num_classes) if args.labels else None
    video = V.video_to_unit(load_video(args.video), len(spec.mean), args.video)  # cheap checks before the model
    if args.dtype != "fp32" and args.impl != "fast":
        raise UserError(f"--dtype {args.dtype} is the fast path's option (autocast); use --impl fast")
    state = load_mvit_state(args.weights, args.model)
    model = mvit_model(args.model, args.impl)
    if args.impl == "fast":
        model.autocast_dtype = DTYPE_CHOICES[args.dtype]
    model.load_state_dict(state, strict=True)  # load_mvit_state checked keys and shapes
    model.eval()
    views = V.make_views(video, spec, name=args.video)
    print(f"{args.video}: {views.shape[0]} views of {list(views.shape[1:])}", flush=True)
    with FlopCounterMode(display=False) as counter, torch.device("meta"):
        mvit_model(args.model, args.impl)(torch.empty(1, *views.shape[1:]))
    gmacs = counter.get_total_flops() / 2e9

    def progress(done: int, total: int) -> None:
        print(f"  view {done}/{total}", flush=True)

    logits, probs = V.classify_views(model, views, progress=progress)
    if not bool(torch.isfinite(logits).all()):  # finite inputs and weights, yet an overflow: no made-up ranking
        raise UserError(f"{args.weights}: the model produced non-finite logits for {args.video} (overflow in the "
                        "weights?)")
    for rank, (index, name, p) in enumerate(V.top_k(probs, 5, names), 1):
        print(f"{rank}. {name} ({index}): {p:.4f}")
    print(f"cost: {V.cost_gflops(gmacs, views.shape[0])}")
    if args.json:
        out = {"video": args.video, "model": args.model, "views": args.views, "gmacs_per_view": gmacs,
               "view_logits": logits.tolist(), "probabilities": probs.tolist()}
        atomic_write_json(args.json, out)
        print(f"wrote {args.json}")
    return 0


def add_parser(sub) -> argparse.ArgumentParser:
    classify = sub.add_parser("classify", help="multi-view MViT video classification")
    classify.add_argument("video", help="a [T, H, W, 3] .npy array (uint8 0-255 or float 0-1) or an .mp4")
    classify.add_argument("--weights", required=True, help="a detspec (= torchvision) MViT state dict")
    classify.add_argument("--model", default="mvit_b_16x4", choices=mvit_names())
    classify.add_argument("--views", default="5x1", help="CLIPSxCROPS (default 5x1, the K400 protocol)")
    classify.add_argument("--impl", default="fast", choices=("fast", "reference"))
    classify.add_argument("--labels", help="a text file with one class name per line")
    classify.add_argument("--dtype", choices=tuple(DTYPE_CHOICES), default="fp32",
                          help="compute dtype (default fp32; bf16 / fp16 run the fast MViT under autocast, logits "
                               "in float32)")
    classify.add_argument("--json", metavar="OUT", help="write every view's logits and the averaged probabilities")
    classify.set_defaults(func=run)

    return classify
