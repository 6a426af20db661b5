"""``detspec bench``: run the pytest-benchmark suites, print ratio tables, plot them, and gate regressions.

  detspec bench [--device cpu|cuda] [--suite NAME ...] [-k EXPR] [--out DIR] [--save NAME]
                [--compare NAME [--fail-above PCT] [--gate-all]] [--markdown] [--details] [--from-json FILE]

- Runs ``benchmarks/test_bench_<suite>.py`` (all suites by default) in a subprocess of
  ``python -m pytest --benchmark-enable --benchmark-only --benchmark-json=...``, so that the numbers come from
  a fresh process (the benchmarks' conftest warms the allocator and records contention and machine info).
- Prints one row per group / workload: the median of every implementation and the speed-up of ``fast`` over
  each baseline (baseline median / fast median, > 1 = fast is faster; all from the same run).
- Writes ``DIR/<timestamp or NAME>.json`` (the pytest-benchmark JSON plus a ``"detspec"`` block with the
  ratio table and a machine summary: CPU model, GPU name, torch version, thread count) and next to it a PNG
  (horizontal bars of the median times per group / workload, log scale, one colour per implementation).
- ``--save NAME`` also stores the run as the baseline ``DIR/baselines/NAME.json``. ``--compare NAME``
  matches benchmarks by full name against that baseline (or a JSON file path) and prints the change of each
  median; with ``--fail-above PCT`` the exit code is 1 if a ``fast`` benchmark (any, with ``--gate-all``)
  got slower by more than PCT percent. Contended runs (other processes kept more than
  detspec.bench.CONTENTION_WARN = 0.2 cores busy) and
  different machines (CPU model, torch version, ...) only warn.
- ``--from-json FILE`` does all of the above from an existing pytest-benchmark JSON, without running anything
  (and without a source checkout: the tables are detspec.bench's).

Exit codes: 0 ok; 1 a gated regression or a failing benchmark (e.g. an agreement check); 2 a usage error
(unknown suite or baseline, --fail-above without --compare, --device cuda without a GPU, no benchmark matched).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from detspec.bench.comparison import compare, format_comparison
from detspec.bench.files import UsageError, check_name, load_results, resolve_baseline, unique_path
from detspec.bench.report import CONTENTION_WARN, machine_line, render
from detspec.bench.suites import find_benchmarks_dir, run_suites
from detspec.bench.tables import format_ratio_table, machine_summary, ratio_table, write_plot
from detspec.io.fileio import atomic_write


def run(args: argparse.Namespace) -> int:
    try:
        return _bench(args)
    except UsageError as exc:
        print(f"detspec bench: {exc}", file=sys.stderr)
        return 2


def _bench(args: argparse.Namespace) -> int:
    if args.fail_above is not None and not args.compare:
        raise UsageError("--fail-above needs --compare NAME")
    if args.gate_all and args.fail_above is None:
        raise UsageError("--gate-all needs --compare NAME --fail-above PCT")
    if args.fail_above is not None and args.fail_above < 0:
        raise UsageError(f"--fail-above must be >= 0, got {args.fail_above}")
    if args.save:
        check_name(args.save, "--save")
    out_dir = Path(args.out)
    baseline_path = resolve_baseline(args.compare, out_dir) if args.compare else None  # before a long run
    baseline = load_results(baseline_path, "baseline") if baseline_path else None

    run_code = 0
    if args.from_json:
        source = Path(args.from_json)
        data = load_results(source, "--from-json file")
        stem = args.save or source.stem
        origin = {"from_json": str(source)}
    else:
        bench_dir = find_benchmarks_dir(args.bench_dir)
        data, run_code = run_suites(bench_dir, out_dir, args.suite, args.device, args.k, args.pytest_args)
        stem = args.save or time.strftime("%Y%m%d-%H%M%S")
        origin = {"suites": args.suite or "all", "k": args.k, "device": args.device}
    if not data["benchmarks"]:
        raise UsageError("no benchmark results" + (f" in {args.from_json}" if args.from_json else ""))

    rows = ratio_table(data)
    data["detspec"] = {"ratios": rows, "machine": machine_summary(data), "command": shlex.join(sys.argv),
                       **origin}
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{stem}.json"
    if not args.from_json and not args.save:
        json_path = unique_path(json_path)
    atomic_write(json_path, json.dumps(data, indent=1))
    png_path = write_plot(data, json_path.with_suffix(".png"))

    m = data["detspec"]["machine"]
    print()
    print(f"Machine: {machine_line(data)}")
    print()
    if args.details:
        print(render(data))
    print(format_ratio_table(rows, markdown=args.markdown))
    print()
    print("Speed-ups are baseline median / fast median from the same run (> 1 = fast is faster).")
    contended = [r["key"] for r in rows if (r["other_cpu_cores"] or 0) > CONTENTION_WARN]
    if contended:
        print(f"warning: other processes kept more than {CONTENTION_WARN} cores busy during {', '.join(contended)}; "
              "rerun those on an idle machine")
    missing = [k for k in ("cpu_model", "torch_version", "torch_num_threads") if m.get(k) is None]
    if missing:
        print(f"warning: the results do not record {', '.join(missing)} (not written by detspec's benchmarks?)")
    print(f"wrote {json_path} and {png_path}")
    if args.save:
        saved = out_dir / "baselines" / f"{args.save}.json"
        saved.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(saved, json.dumps(data, indent=1))
        print(f"saved baseline {args.save!r} as {saved}")

    code = run_code
    if run_code:
        print("detspec bench: some benchmarks failed (see pytest's output above)", file=sys.stderr)
    if baseline is not None:
        comp = compare(data, baseline, args.fail_above, args.gate_all)
        print()
        print(f"Compared with {baseline_path} (change of the median, + = slower):")
        print(format_comparison(comp, markdown=args.markdown))
        if comp.regressions:
            scope = "benchmark" if args.gate_all else "fast benchmark"
            print(f"detspec bench: {len(comp.regressions)} {scope}(s) slower than the baseline by more than "
                  f"{args.fail_above}%: " + ", ".join(r["name"] for r in comp.regressions), file=sys.stderr)
            code = 1
    return code


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("bench", help="run the benchmarks; print ratio tables, plot, compare with a baseline",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the workloads run (default cpu)")
    p.add_argument("--suite", action="append", metavar="NAME",
                   help="run benchmarks/test_bench_NAME.py only (repeatable; e.g. geometry, rpn, roi, mvit; "
                        "default all)")
    p.add_argument("-k", metavar="EXPR", help="only benchmarks matching this pytest -k expression")
    p.add_argument("--out", default="bench-results", metavar="DIR",
                   help="results directory (default ./bench-results)")
    p.add_argument("--save", metavar="NAME", help="name the run and store it as the baseline DIR/baselines/NAME.json")
    p.add_argument("--compare", metavar="NAME",
                   help="compare with the baseline DIR/baselines/NAME.json (or a pytest-benchmark JSON path)")
    p.add_argument("--fail-above", type=float, metavar="PCT",
                   help="with --compare: exit 1 if a fast benchmark's median grew by more than PCT percent")
    p.add_argument("--gate-all", action="store_true",
                   help="with --fail-above: gate every implementation, not only fast")
    p.add_argument("--from-json", metavar="FILE",
                   help="use an existing pytest-benchmark JSON instead of running the benchmarks")
    p.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    p.add_argument("--details", action="store_true",
                   help="also print benchmarks/report.py's per-group tables (min, IQR, rounds)")
    p.add_argument("--bench-dir", metavar="DIR", help="the benchmarks directory (default: the source checkout's)")
    p.add_argument("pytest_args", nargs="*", help="extra arguments for pytest (after --)")
    p.set_defaults(func=run)
    return p


def main(argv: list[str] | None = None) -> int:
    """``detspec bench ARGS`` without the cli: main(ARGS) (also ``python -m detspec.bench ARGS``)."""
    parser = argparse.ArgumentParser(prog="detspec")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)
