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
  got slower by more than PCT percent. Contended runs (other processes kept more than 0.5 cores busy) and
  different machines (CPU model, torch version, ...) only warn.
- ``--from-json FILE`` does all of the above from an existing pytest-benchmark JSON, without running anything.

Exit codes: 0 ok; 1 a gated regression or a failing benchmark (e.g. an agreement check); 2 a usage error
(unknown suite or baseline, --fail-above without --compare, --device cuda without a GPU, no benchmark matched).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from detspec.fileio import atomic_save, atomic_write

CONTENTION_WARN = 0.5  # other_cpu_cores above which a timing is called contended (brief of issue 7)
MACHINE_KEYS = ("cpu_model", "cpu_count", "gpu_name", "torch_version", "torchvision_version", "torch_num_threads",
                "bench_device")
COMPARED_MACHINE_KEYS = ("cpu_model", "gpu_name", "torch_version", "torchvision_version", "torch_num_threads",
                         "bench_device")
IMPL_COLOURS = {"reference": "#1f77b4", "reference-f64": "#9ecae1", "fast": "#2ca02c", "torchvision": "#ff7f0e"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class UsageError(Exception):
    """A bad command line or missing input: exit code 2."""


# ------------------------------------------------------------------------------------------ locating the suites
def find_benchmarks_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The ``benchmarks/`` directory: --bench-dir, else the source checkout's, else ./benchmarks."""
    candidates = [Path(explicit)] if explicit else [Path(__file__).resolve().parents[1] / "benchmarks",
                                                    Path.cwd() / "benchmarks"]
    for path in candidates:
        if (path / "conftest.py").is_file():
            return path
    raise UsageError(f"no benchmarks directory with a conftest.py at {', '.join(map(str, candidates))} "
                     "(run from a detspec source checkout or pass --bench-dir)")


def available_suites(bench_dir: Path) -> list[str]:
    """Suite names: ``test_bench_<name>.py`` files in bench_dir."""
    return sorted(p.stem.removeprefix("test_bench_") for p in bench_dir.glob("test_bench_*.py"))


_REPORT: dict[Path, ModuleType] = {}


def report_module(bench_dir: Path | None = None) -> ModuleType:
    """benchmarks/report.py (its grouping, implementation order and per-group Markdown tables are reused)."""
    bench_dir = bench_dir or find_benchmarks_dir()
    path = (bench_dir / "report.py").resolve()
    if path not in _REPORT:
        if not path.is_file():
            raise UsageError(f"{path} not found")
        spec = importlib.util.spec_from_file_location("_detspec_benchmarks_report", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _REPORT[path] = module
    return _REPORT[path]


# ------------------------------------------------------------------------------------------------ ratio table
def _median(bench: dict[str, Any]) -> float:
    return float(bench["stats"]["median"])


def _other_cores(bench: dict[str, Any]) -> float | None:
    value = (bench.get("extra_info") or {}).get("other_cpu_cores")
    return None if value is None else float(value)


def _impl_sort_key(report: ModuleType, name: str) -> tuple[int, str]:
    order = tuple(report.IMPL_ORDER)
    return (order.index(name) if name in order else len(order), name)


def ratio_table(data: dict[str, Any], report: ModuleType | None = None) -> list[dict[str, Any]]:
    """One row per group / workload: medians (seconds) per implementation and fast's speed-ups.

    Row: {"key": "group / workload" or "group", "group", "workload" (or None), "medians": {impl: s},
    "ratios": {"fast vs torchvision": baseline median / fast median, ...} (only baselines present, and only when
    the row has a fast result), "other_cpu_cores": the largest contention recorded in the row (or None),
    "peak_rss_mib": {impl: MiB} where a benchmark recorded extra_info["peak_rss_mib"]}.
    """
    report = report or report_module()
    rows: dict[str, dict[str, Any]] = {}
    for bench in data.get("benchmarks", []):
        key = report._table_key(bench)
        params = bench.get("params") or {}
        row = rows.setdefault(key, {"key": key, "group": bench.get("group") or bench["name"].split("[")[0],
                                    "workload": params.get("workload"), "medians": {}, "ratios": {},
                                    "other_cpu_cores": None, "peak_rss_mib": {}})
        row["medians"][report._impl(bench)] = _median(bench)
        peak = (bench.get("extra_info") or {}).get("peak_rss_mib")
        if peak is not None:  # recorded by benchmarks that measure memory (test_bench_rcnn.py)
            row["peak_rss_mib"][report._impl(bench)] = float(peak)
        other = _other_cores(bench)
        if other is not None:
            row["other_cpu_cores"] = max(other, row["other_cpu_cores"] or 0.0)
    for row in rows.values():
        row["medians"] = dict(sorted(row["medians"].items(), key=lambda kv: _impl_sort_key(report, kv[0])))
        fast = row["medians"].get("fast")
        if fast:
            row["ratios"] = {f"fast vs {b}": row["medians"][b] / fast for b in report.BASELINES if b in row["medians"]}
    return [rows[k] for k in sorted(rows)]


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    ms = seconds * 1e3
    return f"{ms:.1f}" if ms >= 10 else f"{ms:.3g}" if ms < 0.1 else f"{ms:.2f}"


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def _grid(header: list[str], body: list[list[str]], markdown: bool, left: tuple[int, ...] = (0,)) -> str:
    """A table with the columns in ``left`` left-aligned and the others right-aligned."""
    if markdown:
        align = ["---" if i in left else "---:" for i in range(len(header))]
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in body]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(header)]
    fmt = lambda r: "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in body])


def format_ratio_table(rows: list[dict[str, Any]], markdown: bool = False,
                       report: ModuleType | None = None) -> str:
    """The ratio table as aligned text or Markdown: medians in ms, then fast's speed-ups."""
    report = report or report_module()
    impls = sorted({i for r in rows for i in r["medians"]}, key=lambda n: _impl_sort_key(report, n))
    ratios = [f"fast vs {b}" for b in report.BASELINES if any(f"fast vs {b}" in r["ratios"] for r in rows)]
    peaks = [i for i in impls if any(i in r.get("peak_rss_mib", {}) for r in rows)]
    header = (["group / workload"] + [f"{i} (ms)" for i in impls] + ratios
              + [f"{i} peak RSS (MiB)" for i in peaks] + ["other CPU (cores)"])
    body = []
    for r in rows:
        other = r["other_cpu_cores"]
        flag = "" if other is None else f"{other:.2f}" + (" !" if other > CONTENTION_WARN else "")
        rss = [f"{r['peak_rss_mib'][i]:,.0f}" if i in r.get("peak_rss_mib", {}) else "—" for i in peaks]
        body.append([f"`{r['key']}`" if markdown else r["key"]] + [_ms(r["medians"].get(i)) for i in impls]
                    + [_ratio(r["ratios"].get(c)) for c in ratios] + rss + [flag])
    return _grid(header, body, markdown)


def machine_summary(data: dict[str, Any]) -> dict[str, Any]:
    """CPU model, GPU name, torch version, thread count, ... as the benchmarks' conftest recorded them."""
    m = data.get("machine_info") or {}
    summary = {k: m.get(k) for k in MACHINE_KEYS}
    if summary["cpu_model"] is None:  # a JSON written without detspec's conftest: fall back on py-cpuinfo's
        summary["cpu_model"] = (m.get("cpu") or {}).get("brand_raw")
    summary["python_version"] = m.get("python_version")
    return summary


# ---------------------------------------------------------------------------------------------------- plot
def write_plot(data: dict[str, Any], path: Path, report: ModuleType | None = None) -> Path:
    """Horizontal bars of each implementation's median per group / workload (log scale) as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    report = report or report_module()
    rows = ratio_table(data, report)
    impls = sorted({i for r in rows for i in r["medians"]}, key=lambda n: _impl_sort_key(report, n))
    height = 0.8 / max(len(impls), 1)
    fig = Figure(figsize=(9, 1.2 + 0.35 * len(impls) * max(len(rows), 1)))
    FigureCanvasAgg(fig)  # the Agg canvas: no display, no global backend state
    ax = fig.add_subplot()
    fallback = iter(["#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"] * 10)
    for j, impl in enumerate(impls):
        ys = [len(rows) - 1 - i + (len(impls) / 2 - 0.5 - j) * height
              for i, r in enumerate(rows) if impl in r["medians"]]
        ms = [r["medians"][impl] * 1e3 for r in rows if impl in r["medians"]]
        ax.barh(ys, ms, height=height, label=impl, color=IMPL_COLOURS.get(impl) or next(fallback))
    ax.set_yticks(range(len(rows)), [r["key"] for r in reversed(rows)])
    ax.set_xscale("log")
    ax.set_xlabel("median time (ms, log scale)")
    m = machine_summary(data)
    device = m.get("bench_device") or "?"
    hardware = m.get("gpu_name") if device == "cuda" else m.get("cpu_model")
    ax.set_title(f"detspec benchmarks on {device} ({hardware or 'unknown'}), torch {m.get('torch_version') or '?'}",
                 fontsize=9)
    ax.grid(axis="x", which="both", alpha=0.3)
    if impls:
        ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_save(path, lambda fh: fig.savefig(fh, format="png", dpi=100))
    return path


# ---------------------------------------------------------------------------------------------- comparison
@dataclass
class Comparison:
    """Per-benchmark median changes of a run against a baseline (matched by full name)."""

    rows: list[dict[str, Any]] = field(default_factory=list)  # name, impl, baseline, current, change_pct, status
    only_in_baseline: list[str] = field(default_factory=list)
    only_in_run: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["status"] == "REGRESSED"]


def _by_name(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {b.get("fullname") or b["name"]: b for b in data.get("benchmarks", [])}


def compare(current: dict[str, Any], baseline: dict[str, Any], fail_above: float | None = None,
            gate_all: bool = False, report: ModuleType | None = None) -> Comparison:
    """Change of each benchmark's median, current vs baseline, in percent (+ = slower).

    A row is "REGRESSED" when it is gated (implementation ``fast``, or any with gate_all) and slower than
    fail_above percent; "slower" when only the threshold is exceeded; otherwise "ok". No fail_above: all "ok"
    or "slower"/"faster" for information only.
    """
    report = report or report_module()
    cur, base = _by_name(current), _by_name(baseline)
    out = Comparison(only_in_baseline=sorted(set(base) - set(cur)), only_in_run=sorted(set(cur) - set(base)))
    contended = []
    for name in sorted(set(cur) & set(base)):
        b, c = base[name], cur[name]
        change = (_median(c) / _median(b) - 1.0) * 100.0
        impl = report._impl(c)
        gated = gate_all or impl == "fast"
        if fail_above is not None and change > fail_above:
            status = "REGRESSED" if gated else "slower (not gated)"
        else:
            status = "ok"
        out.rows.append({"name": name, "implementation": impl, "baseline": _median(b), "current": _median(c),
                         "change_pct": change, "gated": gated, "status": status})
        worst = max((_other_cores(x) or 0.0) for x in (b, c))
        if worst > CONTENTION_WARN:
            contended.append(f"{name} ({worst:.2f} cores)")
    if contended:
        out.warnings.append(f"other processes kept more than {CONTENTION_WARN} cores busy during "
                            f"{len(contended)} compared benchmark(s), in this run or the baseline; their changes "
                            "are not trustworthy: " + ", ".join(contended))
    m_cur, m_base = machine_summary(current), machine_summary(baseline)
    differs = [f"{k}: baseline {m_base.get(k)!r}, this run {m_cur.get(k)!r}" for k in COMPARED_MACHINE_KEYS
               if m_cur.get(k) != m_base.get(k)]
    if differs:
        out.warnings.append("the machine differs from the baseline's (" + "; ".join(differs) + "); "
                            "changes may reflect the machine, not the code")
    return out


def format_comparison(comp: Comparison, markdown: bool = False) -> str:
    header = ["benchmark", "impl", "baseline (ms)", "this run (ms)", "change", "status"]
    body = [[r["name"], r["implementation"], _ms(r["baseline"]), _ms(r["current"]), f"{r['change_pct']:+.1f}%",
             r["status"]] for r in comp.rows]
    lines = [_grid(header, body, markdown, left=(0, 1, 5))]
    if comp.only_in_baseline:
        lines.append(f"only in the baseline ({len(comp.only_in_baseline)}, not compared): "
                     + ", ".join(comp.only_in_baseline))
    if comp.only_in_run:
        lines.append(f"only in this run ({len(comp.only_in_run)}, not compared): " + ", ".join(comp.only_in_run))
    lines += [f"warning: {w}" for w in comp.warnings]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- the command
def _check_name(name: str, what: str) -> str:
    if not _NAME.match(name):
        raise UsageError(f"{what} {name!r}: use letters, digits, '.', '_' and '-' only")
    return name


def resolve_baseline(name: str, out_dir: Path) -> Path:
    """--compare NAME: DIR/baselines/NAME.json, or NAME itself when it is an existing JSON file."""
    direct = Path(name)
    if name.endswith(".json") and direct.is_file():
        return direct
    path = out_dir / "baselines" / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in (out_dir / "baselines").glob("*.json"))
        raise UsageError(f"unknown baseline {name!r}: {path} does not exist "
                         f"(saved baselines: {', '.join(known) or 'none'}; create one with --save NAME)")
    return path


def _load_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise UsageError(f"{what} {path} not found") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{what} {path} is not JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise UsageError(f"{what} {path} is not pytest-benchmark JSON (no 'benchmarks' list)")
    return data


def pytest_command(bench_dir: Path, suites: list[str], device: str, json_path: Path, k: str | None,
                   extra: list[str]) -> list[str]:
    files = [str(bench_dir / f"test_bench_{s}.py") for s in suites] if suites else [str(bench_dir)]
    cmd = [sys.executable, "-m", "pytest", *files, "--benchmark-enable", "--benchmark-only",
           f"--benchmark-json={json_path}", f"--bench-device={device}", "-p", "no:cacheprovider", "-q"]
    if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
        cmd += ["-p", "pytest_benchmark.plugin"]
    if k:
        cmd += ["-k", k]
    return cmd + list(extra)


def _run_suites(args: argparse.Namespace, bench_dir: Path, out_dir: Path) -> tuple[dict[str, Any], int]:
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--device cuda, but torch.cuda.is_available() is False")
    suites = list(dict.fromkeys(args.suite or []))
    known = available_suites(bench_dir)
    unknown = [s for s in suites if s not in known]
    if unknown:
        raise UsageError(f"unknown suite(s) {', '.join(unknown)}; available: {', '.join(known)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = out_dir / f".pytest-benchmark-{os.getpid()}.json"
    cmd = pytest_command(bench_dir, suites, args.device, raw, args.k, args.pytest_args)
    print("detspec bench: " + shlex.join(cmd), flush=True)
    try:
        # A run started from inside pytest-xdist (e.g. the test suite) must not look like an xdist worker to the
        # child: pytest-benchmark disables itself when it sees PYTEST_XDIST_* variables.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_XDIST", "PYTEST_CURRENT_TEST"))}
        code = subprocess.call(cmd, cwd=bench_dir.parent, env=env)
        if code in (4, 5):  # pytest: usage error / no tests collected
            raise UsageError(f"pytest exited with {code}" + (": no benchmark matched (check --suite and -k)"
                                                              if code == 5 else " (usage error)"))
        if not raw.is_file():
            raise UsageError(f"pytest exited with {code} and wrote no benchmark JSON")
        data = _load_json(raw, "pytest-benchmark output")
    finally:
        raw.unlink(missing_ok=True)
    return data, (0 if code == 0 else 1)


def _unique(path: Path) -> Path:
    n, candidate = 2, path
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        n += 1
    return candidate


def cmd_bench(args: argparse.Namespace) -> int:
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
        _check_name(args.save, "--save")
    out_dir = Path(args.out)
    baseline_path = resolve_baseline(args.compare, out_dir) if args.compare else None  # before a long run
    baseline = _load_json(baseline_path, "baseline") if baseline_path else None

    run_code = 0
    if args.from_json:
        source = Path(args.from_json)
        data = _load_json(source, "--from-json file")
        report = report_module(find_benchmarks_dir(args.bench_dir))
        stem = args.save or source.stem
        origin = {"from_json": str(source)}
    else:
        bench_dir = find_benchmarks_dir(args.bench_dir)
        report = report_module(bench_dir)
        data, run_code = _run_suites(args, bench_dir, out_dir)
        stem = args.save or time.strftime("%Y%m%d-%H%M%S")
        origin = {"suites": args.suite or "all", "k": args.k, "device": args.device}
    if not data["benchmarks"]:
        raise UsageError("no benchmark results" + (f" in {args.from_json}" if args.from_json else ""))

    rows = ratio_table(data, report)
    data["detspec"] = {"ratios": rows, "machine": machine_summary(data), "command": shlex.join(sys.argv),
                       **origin}
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{stem}.json"
    if not args.from_json and not args.save:
        json_path = _unique(json_path)
    atomic_write(json_path, json.dumps(data, indent=1))
    png_path = write_plot(data, json_path.with_suffix(".png"), report)

    m = data["detspec"]["machine"]
    print()
    print(f"Machine: {report.machine_line(data)}")
    print()
    if args.details:
        print(report.render(data))
    print(format_ratio_table(rows, markdown=args.markdown, report=report))
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
        comp = compare(data, baseline, args.fail_above, args.gate_all, report)
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
    p.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    """``detspec bench ARGS`` without the cli: main(ARGS) (also ``python -m detspec.bench ARGS``)."""
    parser = argparse.ArgumentParser(prog="detspec")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
