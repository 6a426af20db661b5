"""Benchmark results: the tables, plots, baselines and suites behind ``detspec bench``.

- ``report``: naming (implementation, group / workload, order), the contention threshold ``CONTENTION_WARN``
  and the per-group Markdown tables (``python benchmarks/report.py`` and ``detspec bench --details``);
- ``tables``: the ratio table (medians and fast's speed-ups), the machine summary and the PNG plot;
- ``comparison``: a run against a baseline and the regression gate;
- ``files``: pytest-benchmark JSON, saved baselines and run names (``UsageError``);
- ``suites``: finding ``benchmarks/`` and running its suites in a pytest subprocess.

Everything here is importable from an installed detspec: only running the suites needs the ``benchmarks/``
folder of a source checkout. The command is detspec/commands/bench.py (also ``python -m detspec.bench``).
"""

from detspec.bench.comparison import Comparison, compare, format_comparison
from detspec.bench.files import UsageError, check_name, load_results, resolve_baseline
from detspec.bench.report import BASELINES, CONTENTION_WARN, IMPL_ORDER, machine_line, render
from detspec.bench.suites import available_suites, find_benchmarks_dir, pytest_command, run_suites
from detspec.bench.tables import format_ratio_table, machine_summary, ratio_table, write_plot

__all__ = [
    "BASELINES", "CONTENTION_WARN", "Comparison", "IMPL_ORDER", "UsageError", "available_suites", "check_name",
    "compare", "find_benchmarks_dir", "format_comparison", "format_ratio_table", "load_results", "machine_line",
    "machine_summary", "pytest_command", "ratio_table", "render", "resolve_baseline", "run_suites", "write_plot",
]
