"""The benchmark suites: finding ``benchmarks/`` and running ``test_bench_<suite>.py`` in a fresh pytest process.

The suites are files of the source checkout (``benchmarks/``, found via --bench-dir, the checkout this package
was imported from, or ./benchmarks); the code that reads their results is this package, so ``--from-json`` needs
no checkout.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from detspec.bench.files import UsageError, load_results


def find_benchmarks_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The ``benchmarks/`` directory: --bench-dir, else the source checkout's, else ./benchmarks."""
    candidates = [Path(explicit)] if explicit else [Path(__file__).resolve().parents[2] / "benchmarks",
                                                    Path.cwd() / "benchmarks"]
    for path in candidates:
        if (path / "conftest.py").is_file():
            return path
    raise UsageError(f"no benchmarks directory with a conftest.py at {', '.join(map(str, candidates))} "
                     "(run from a detspec source checkout or pass --bench-dir)")


def available_suites(bench_dir: Path) -> list[str]:
    """Suite names: ``test_bench_<name>.py`` files in bench_dir."""
    return sorted(p.stem.removeprefix("test_bench_") for p in bench_dir.glob("test_bench_*.py"))


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


def run_suites(bench_dir: Path, out_dir: Path, suites: Sequence[str] | None, device: str, k: str | None,
               pytest_args: Sequence[str]) -> tuple[dict[str, Any], int]:
    """Run the suites (all when ``suites`` is empty) in a pytest subprocess; (its benchmark JSON, 0 when pytest
    passed else 1). UsageError for --device cuda without a GPU, an unknown suite, or nothing run."""
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda, but torch.cuda.is_available() is False")
    suites = list(dict.fromkeys(suites or []))
    known = available_suites(bench_dir)
    unknown = [s for s in suites if s not in known]
    if unknown:
        raise UsageError(f"unknown suite(s) {', '.join(unknown)}; available: {', '.join(known)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = out_dir / f".pytest-benchmark-{os.getpid()}.json"
    cmd = pytest_command(bench_dir, suites, device, raw, k, list(pytest_args))
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
        data = load_results(raw, "pytest-benchmark output")
    finally:
        raw.unlink(missing_ok=True)
    return data, (0 if code == 0 else 1)
