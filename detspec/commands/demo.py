"""``detspec demo [--iters N] [--out DIR] [--impl fast|reference] [--seed S] [--device cpu|cuda] [--threads N]``:
train the reduced Faster R-CNN on the synthetic shapes and show COCO AP before and after (detspec.demo.run).

``python -m detspec.demo ARGS`` is ``main(ARGS)``; ``torchrun --nproc_per_node N -m detspec.demo ARGS`` runs it
on N processes with DDP.
"""

from __future__ import annotations

import argparse
import sys

import torch

from detspec.demo import DEMO_SCHEDULE, run_demo


def run(args: argparse.Namespace) -> int:
    run_demo(iters=args.iters, out=args.out, impl=args.impl, seed=args.seed, device=args.device,
             threads=args.threads)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``detspec demo``."""
    p = subparsers.add_parser(
        "demo", help="train a small Faster R-CNN on synthetic shapes (CPU, minutes) and show that it learns",
        description="Train the reduced Faster R-CNN of detspec/demo/config.py from scratch on the synthetic "
                    "shapes stream; evaluate COCO AP on a held-out synthetic val set before and after; write "
                    "the checkpoint, results JSON, metrics and drawn val images under --out. Runs under "
                    "torchrun (DDP) as well: torchrun --nproc_per_node 2 -m detspec.demo ...")
    p.add_argument("--iters", type=int, default=DEMO_SCHEDULE.iterations,
                   help=f"training iterations (default {DEMO_SCHEDULE.iterations})")
    p.add_argument("--out", default="demo_out", metavar="DIR", help="output directory (default ./demo_out)")
    p.add_argument("--impl", choices=("fast", "reference"), default="fast",
                   help="implementation (default fast; reference is ~50x slower)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the training stream (default 0)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="device (default cpu)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch threads per process (default: OMP_NUM_THREADS, else 1; for more cores run "
                        "several processes with torchrun)")
    p.set_defaults(func=run)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="detspec")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["demo", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)
