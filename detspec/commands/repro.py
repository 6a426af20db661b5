"""``detspec repro FILE [--impl NAME] [--device cpu|cuda]``: replay one minimal counterexample written by
``detspec check --repro DIR``; the case format and the replay are detspec/conformance/cases.py (issue 13).

Exit codes: 0 the implementation now passes the case; 1 it fails; 2 a bad file or usage (one line).
"""

from __future__ import annotations

import argparse

import torch

from detspec.conformance.cases import BadCase, replay


def run(args: argparse.Namespace) -> int:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise BadCase("--device cuda was given but torch.cuda.is_available() is False")
    return replay(args.file, args.impl, args.device)


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("repro", help="replay a minimal counterexample written by detspec check --repro")
    p.add_argument("file", metavar="FILE", help="the case: DIR/<slug>.json or .npz (the pair must both exist)")
    p.add_argument("--impl", metavar="NAME", default=None,
                   help="reference, fast, torchvision, onnxruntime or module[:attribute] (default: the "
                        "implementation recorded in the case)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.set_defaults(func=run)
    return p
