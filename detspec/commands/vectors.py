"""``detspec vectors export DIR [--seed N] [--force]`` and ``detspec vectors check DIR --impl NAME [--device D]``:
golden vectors for ports outside Python (detspec.vectors, whose docstring describes both commands).

``python -m detspec.vectors ARGS`` is ``main(ARGS)``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import detspec.vectors
from detspec.impls import ImplResolutionError
from detspec.vectors import DEFAULT_SEED, VectorsError, check, current_spec_hash, export, format_table

_DESCRIPTION = detspec.vectors.__doc__.split("\n\n")[0]


def run_export(args: argparse.Namespace) -> int:
    try:
        manifest = export(args.dir, seed=args.seed, force=args.force)
    except VectorsError as exc:
        print(f"detspec vectors export: {exc}", file=sys.stderr)
        return 2
    total = sum(p.stat().st_size for p in Path(args.dir).iterdir() if p.is_file())
    print(f"wrote {len(manifest['cases'])} cases for {len(manifest['components'])} components to {args.dir} "
          f"({total / 1024:.0f} KiB)")
    return 0


def run_check(args: argparse.Namespace) -> int:
    try:
        report = check(args.dir, args.impl, device=args.device)
    except (VectorsError, ImplResolutionError) as exc:
        print(f"detspec vectors check: {exc}", file=sys.stderr)
        return 2
    print(format_table(report))
    if report.spec.get("config_sha256") not in (None, current_spec_hash()):
        print("note: the set was exported from other spec config values than this detspec's; re-export it "
              "if the spec changed", file=sys.stderr)
    return 1 if report.failed else 0


def _add_commands(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="vectors_command", required=True)
    exp = sub.add_parser("export", help="write manifest.json and one .npz per case to DIR")
    exp.add_argument("dir", metavar="DIR")
    exp.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"random-case seed (default {DEFAULT_SEED})")
    exp.add_argument("--force", action="store_true",
                     help="write into a non-empty DIR that does not hold an earlier set of this format version "
                          "and seed (without it such a DIR is refused, so no other set is silently replaced)")
    exp.set_defaults(func=run_export)
    chk = sub.add_parser("check", help="run an implementation on the vectors in DIR and print a table")
    chk.add_argument("dir", metavar="DIR")
    chk.add_argument("--impl", required=True, metavar="NAME",
                     help="reference, fast, torchvision, module[:attribute] or path/to/port.py")
    chk.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    chk.set_defaults(func=run_check)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``detspec vectors {export,check}`` on an argparse subparsers object."""
    parser = subparsers.add_parser("vectors", help="export or check golden vectors (npz + JSON) for ports",
                                   description=_DESCRIPTION)
    _add_commands(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m detspec.vectors export|check ...``: the same commands as ``detspec vectors``."""
    parser = argparse.ArgumentParser(prog="detspec vectors", description=_DESCRIPTION)
    _add_commands(parser)
    args = parser.parse_args(argv)
    return args.func(args)
