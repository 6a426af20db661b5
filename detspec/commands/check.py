"""``detspec check``: run the conformance suite against implementations and print the clause table.

  detspec check [--impl NAME ...] [--device cpu|cuda] [--dtype fp32|bf16|fp16] [--report PATH] [--repro DIR]
                [-k EXPR] [--workers N] [--timeout SECONDS] [-- PYTEST_ARGS...]

--repro DIR (issue 13): each failing test writes its failing input, hypothesis-shrunk for a property test, as
DIR/<test>.npz plus DIR/<test>.json (detspec/conformance/cases.py: the format; ``detspec repro`` replays it).

--dtype (issue 16): fp32, the default, runs the ordinary suite. bf16 or fp16 runs only the low-precision tests
(detspec/conformance/test_precision.py): continuous outputs against the float64 reference by the ratio rule,
discrete ones (kept indices, labels, levels, classes, ranks) by the discrete-margin rule of spec/tolerances.py; a
test whose differences that rule accepts is "pass (within precision)", a passing status. The table's header line
and the report name the dtype; the table holds only the clauses of that run.

Clause statuses (see detspec.plugin): pass, partial, not implemented, skip, untested; and the failing ones:
fail (a test failed), error (a setup/teardown failed or an xdist worker crashed, e.g. the port called os._exit),
timeout (a test ran past --timeout), interrupted (a test started and did not finish), incomplete (a test never
ran because the run stopped early). A failing status is never printed or written as a pass. A run that did not
finish prints its partial table under an ``INCOMPLETE RUN (...)`` banner and writes ``"complete": false`` (with
``interrupted``, ``stop_reason`` and ``problems``) into the report.

Exit codes:
  0    complete run, no failing status ("not implemented" clauses of a partial port do not fail the run).
  1    a clause is fail, error, timeout, interrupted or incomplete (including a run stopped by ``-- -x``).
  2    usage error: an --impl that does not resolve, no test matched -k, an unwritable --report, a pytest usage or
       internal error, or a run that stopped early (collection errors) with nothing failed.
  130  interrupted by SIGINT (Ctrl-C); 143 by SIGTERM (128 + the signal number, as shells report them). Both
       signals become KeyboardInterrupt, so pytest finishes the session: the partial table is printed and the
       report written with "complete": false; the test that was running is "interrupted", never "pass".

Timeout: ``--timeout SECONDS`` (default 300 s per test, setup + call + teardown; 0 disables) uses pytest-timeout's
signal method (SIGALRM in the main thread, which is where pytest and xdist workers run tests). detspec's plugin
raises ``ClauseTimeout`` from the alarm, so the timed-out test is reported "timeout" ("error (timeout)" in the
list of failing tests), hypothesis does not re-run the hung example, and the run goes on with the next test. A
port stuck inside native code that never returns to Python cannot be interrupted this way; run with
``--workers N`` and ``-- --timeout-method thread`` to have pytest-timeout end the worker (reported as "error").

Hermetic run: pytest starts from the installed suite only. The suite directory is the only path argument and the
rootdir; the ini file is a temporary one written here (so pytest.ini / tox.ini / setup.cfg / pyproject.toml of
the current directory are not read); conftest.py files are not loaded (``--noconftest``; the suite has none of its
own; with one, ``--confcutdir`` at the suite still keeps conftest files above it out); the cache provider is
off; PYTEST_ADDOPTS and PYTEST_PLUGINS are ignored (pass pytest options after ``--``). The current directory is
still put on sys.path when an --impl names a module (detspec.impls), so a port is run from its own folder.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import signal
import sys
import tempfile
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path

import pytest

import detspec.conformance
from detspec.io.fileio import UserError, atomic_write, check_output
from detspec.report import any_failed, format_table, is_complete
from spec.tolerances import PRECISION_DTYPES

DEFAULT_TIMEOUT = 300.0  # seconds per test; 0 disables
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_IGNORED_ENV = ("PYTEST_ADDOPTS", "PYTEST_PLUGINS")
_INI = """\
# written by `detspec check`: the conformance run reads no ini file of the current directory
[pytest]
python_files = test_*.py
xfail_strict = true
"""


def suite_dir() -> Path:
    """The installed conformance suite (the detspec.conformance package directory)."""
    return Path(detspec.conformance.__file__).resolve().parent


class _Signals:
    """SIGINT and SIGTERM raise KeyboardInterrupt("SIGTERM received") etc., so pytest ends the session cleanly."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handler(self, signum: int, frame: object) -> None:
        if self.received is None:
            self.received = signum
        raise KeyboardInterrupt(f"{signal.Signals(signum).name} received")

    def __enter__(self) -> _Signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread (e.g. called from a test harness): leave signals alone
                pass
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


@contextlib.contextmanager
def _without_env(names: tuple[str, ...]) -> Iterator[None]:
    saved = {n: os.environ.pop(n) for n in names if n in os.environ}
    for n in saved:
        print(f"detspec check: ignoring ${n} (pass pytest options after --)", file=sys.stderr)
    try:
        yield
    finally:
        os.environ.update(saved)


def _entry_point_plugins() -> set[str]:
    """The module names of the installed pytest11 entry points (the plugins pytest autoloads)."""
    return {ep.value for ep in entry_points(group="pytest11")}


def pytest_argv(args: argparse.Namespace, report_path: Path, ini_path: Path) -> list[str]:
    """pytest's command line for a hermetic conformance run (see the module docstring)."""
    suite = suite_dir()
    argv = [str(suite), "-c", str(ini_path), "--rootdir", str(suite), "--confcutdir", str(suite),
            "-p", "no:cacheprovider", "-p", "no:benchmark", "-q", "--no-header", "-rfE",
            f"--clause-report={report_path}", f"--device={args.device}", f"--dtype={getattr(args, 'dtype', 'fp32')}"]
    if getattr(args, "repro", None):
        argv.append(f"--repro={args.repro}")
    if not (suite / "conftest.py").exists():
        argv.append("--noconftest")
    autoload_off = bool(os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"))
    if autoload_off:
        argv[0:0] = ["-p", "detspec.plugin", "-p", "hypothesis"]
    elif "detspec.plugin" not in _entry_point_plugins():
        # detspec importable but its pytest11 entry point not registered (seen with a `pip install -e .
        # --no-build-isolation` whose metadata pip did not record): name the plugin explicitly
        argv[0:0] = ["-p", "detspec.plugin"]
    if importlib.util.find_spec("pytest_timeout") is None:  # (not imported here: pytest rewrites its plugins)
        if args.timeout:
            raise UserError("--timeout needs pytest-timeout (pip install 'pytest-timeout>=2.3'), "
                            "or pass --timeout 0")
    else:
        if autoload_off:
            argv[0:0] = ["-p", "pytest_timeout"]
        argv.append(f"--timeout={args.timeout:g}")  # explicit, so $PYTEST_TIMEOUT does not apply either
    for name in args.impl or []:
        argv.append(f"--impl={name}")
    if args.k:
        argv += ["-k", args.k]
    if args.workers:
        if autoload_off:
            argv[0:0] = ["-p", "xdist.plugin"]
        argv += ["-n", str(args.workers)]
    return argv + list(args.pytest_args)


def repro_dir(path: str) -> Path:
    """--repro DIR: created if its parent exists; a one-line UserError otherwise (or if DIR is a file)."""
    directory = Path(path)
    if str(path) == "":
        raise UserError("the --repro directory is empty")
    if directory.exists() and not directory.is_dir():
        raise UserError(f"{directory}: the --repro directory is a file")
    parent = directory.resolve().parent
    if not directory.exists():
        if not parent.is_dir():
            raise UserError(f"{directory}: the --repro directory's parent {parent} does not exist")
        directory.mkdir()
    return directory


def run(args: argparse.Namespace) -> int:
    if args.report:
        check_output(args.report, what="report")
    if getattr(args, "repro", None):
        repro_dir(args.repro)
    # conformance runs are reproducible: derandomized examples and no example database in the cwd
    os.environ.setdefault("HYPOTHESIS_PROFILE", "ci")
    with tempfile.TemporaryDirectory(prefix="detspec-check-") as tmp:
        # pytest writes into the temporary directory; --report gets a copy of a report of this run only
        report_path = Path(tmp) / "clauses.json"
        ini_path = Path(tmp) / "pytest.ini"
        ini_path.write_text(_INI)
        argv = pytest_argv(args, report_path, ini_path)
        print(f"detspec check: running the conformance suite ({' '.join(argv)})", flush=True)
        with _Signals() as signals, _without_env(_IGNORED_ENV):
            try:
                code = pytest.main(argv)
            except KeyboardInterrupt:  # before or after pytest's session (it handles the ones inside)
                code = pytest.ExitCode.INTERRUPTED
        sys.stdout.flush()
        interrupted_by = signals.received
        if code in (pytest.ExitCode.USAGE_ERROR, pytest.ExitCode.INTERNAL_ERROR) and interrupted_by is None:
            return EXIT_USAGE
        if code == pytest.ExitCode.NO_TESTS_COLLECTED:
            print("detspec check: no conformance test matched (check -k)", file=sys.stderr)
            return EXIT_USAGE
        if not report_path.exists():
            print("detspec check: no report was written (the run stopped before the suite ran)", file=sys.stderr)
            return 128 + interrupted_by if interrupted_by else EXIT_USAGE
        text = report_path.read_text()
        report = json.loads(text)
        if args.report:
            atomic_write(args.report, text)
    print()
    print(format_table(report))
    if interrupted_by is not None:
        name = signal.Signals(interrupted_by).name
        print(f"\ndetspec check: interrupted by {name}; the table is partial (exit {128 + interrupted_by})",
              file=sys.stderr)
        return 128 + interrupted_by
    if any_failed(report) or code == pytest.ExitCode.TESTS_FAILED:
        return EXIT_FAILED
    if not is_complete(report) or code != pytest.ExitCode.OK:
        print("detspec check: the run did not complete; see INCOMPLETE RUN above", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def _timeout(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {value!r}") from None
    if not seconds >= 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"expected seconds >= 0 (0 disables the timeout), got {value!r}")
    return seconds


def add_parser(sub) -> argparse.ArgumentParser:
    check = sub.add_parser("check", help="run the conformance suite and print the clause table")
    check.add_argument("--impl", action="append", metavar="NAME",
                       help="reference, fast, torchvision or module[:attribute] (repeatable; "
                            "default reference and fast)")
    check.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    check.add_argument("--dtype", choices=tuple(PRECISION_DTYPES), default="fp32",
                       help="fp32 (default): the ordinary suite; bf16 or fp16: the low-precision conformance tests "
                            "(ratio rule and discrete-margin rule of spec/tolerances.py)")
    check.add_argument("--report", metavar="PATH", help="also write the clause results as JSON")
    check.add_argument("--repro", metavar="DIR",
                       help="write each failing test's input (hypothesis: the shrunk example) as DIR/<test>.npz and "
                            "DIR/<test>.json; replay with `detspec repro FILE --impl NAME` (DIR is created if its "
                            "parent exists; existing cases are kept, new ones numbered)")
    check.add_argument("-k", metavar="EXPR", help="only tests matching this pytest -k expression")
    check.add_argument("--workers", type=int, metavar="N", help="run with pytest-xdist on N processes")
    check.add_argument("--timeout", type=_timeout, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                       help=f"per-test timeout (default {DEFAULT_TIMEOUT:g} s; 0 disables); a test that runs "
                            "longer is reported 'timeout' and the run goes on")
    check.add_argument("pytest_args", nargs="*", help="extra arguments for pytest (after --)")
    check.set_defaults(func=run)

    return check
