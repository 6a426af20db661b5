"""The ``detspec`` command.

  detspec check [--impl NAME ...] [--device cpu|cuda] [--report PATH] [-k EXPR] [--workers N]
      Run the conformance suite against the implementations (default: reference and fast) and print the
      clause table. Exits 1 if any clause fails, 2 on a usage error, 0 otherwise ("not implemented"
      clauses of a partial port do not fail the run).
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
