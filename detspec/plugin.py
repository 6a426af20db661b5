"""The detspec pytest plugin (entry point ``pytest11: detspec``): run the conformance suite against any port.

Options (group "detspec"):
  --impl NAME          reference | fast | torchvision | module[:attribute]; repeatable, comma lists allowed.
                       Default: $DETSPEC_IMPL or "reference,fast".
  --device DEV         cpu | cuda (default cpu). cuda without a GPU is a usage error.
  --clause-report PATH write the clause x implementation results as JSON (atomically: an interrupted write
                       leaves the earlier file or none, never half a file).
  --clause-table       print the clause table at the end of the run.
  --repro DIR          write each failing test's failing input as DIR/<test>.npz + DIR/<test>.json (issue 13;
                       detspec/conformance/cases.py has the format): the contract call of the implementation under test
                       whose output failed a comparison helper of detspec/conformance/_util.py (for a hypothesis
                       property test, the shrunk example), the expected and actual outputs and the tolerance rule.
                       DIR is created if its parent exists; an existing case is never overwritten (the new one is
                       numbered <test>-2, -3, ...). Replay one with ``detspec repro FILE --impl NAME``.
  --dtype DTYPE        fp32 (default) | bf16 | fp16. fp32 runs the ordinary suite. bf16 / fp16 run only the
                       low-precision tests (marker ``low_precision``, detspec/conformance/test_precision.py; issue 16),
                       and the report covers only the clauses they check (spec.clauses.LOW_PRECISION_CLAUSES); the
                       other run's clauses are listed by name, never mixed into the table.

Markers: ``clause(*ids)`` ties a test to spec clauses (unknown IDs are a usage error); ``gpu`` (skipped
without CUDA); ``triton`` (skipped without triton); ``slow``; ``low_precision`` (collected only under
``--dtype bf16|fp16``; every other test only under fp32).

Fixtures: ``impl`` (parametrized over the selected implementations), ``reference_impl``, ``device`` and
``precision`` (the run's dtype; ``precision.accept(what, details)`` records that a low-precision test passed only
by the discrete-margin rule of spec/tolerances.py, which makes the test "passed within precision").
Before a test runs, the plugin checks that ``impl`` provides every contract name the test calls as
``impl.NAME``; if not, the test is reported "not implemented" instead of running. A ``NotImplementedComponent``
raised during the test (a name reached another way) is reported the same way.

Test outcomes in the report (``tests: [[nodeid, outcome, reason], ...]``). A test is "passed" only when its
call phase passed, nothing else of it failed and it ran to the end:
  passed            the call passed (setup and teardown did not fail).
  failed            the call failed (an assertion, or an exception from the port).
  error             setup or teardown failed, or the xdist worker running the test crashed (e.g. the port
                    called os._exit or segfaulted).
  timeout           the per-test timeout of pytest-timeout (``--timeout S``, ``detspec check --timeout``) fired.
  interrupted       the test started and did not finish: Ctrl-C, SIGTERM (``detspec check`` turns it into
                    KeyboardInterrupt), ``-x``/``--maxfail``, or the run died.
  not run           collected but never started because the run stopped early.
  skipped / not implemented.
  within precision  the call passed, with differences from the float64 reference that the discrete-margin rule
                    accepts (``precision.accept``); a passing outcome.

Clause statuses, per implementation, strongest first: fail, error, timeout, interrupted, incomplete (a test of the
clause did not run), partial (some tests passed, others could not run for a missing name), not implemented,
pass (within precision) (tests passed, at least one within precision), pass, skip, untested (no test of the clause
was selected). The first five are failing statuses; "pass (within precision)" is a passing one.

The report's top level says whether the run is whole: ``complete`` (false when the session was interrupted,
a test did not finish or did not run, a test errored outside any clause, or collection failed), ``interrupted``
with ``stop_reason``, and ``problems`` (one line each, printed as the table's INCOMPLETE RUN banner).

Per-test timeout: with pytest-timeout's signal method (the default on Linux, in the main thread, also in xdist
workers), the timeout of a clause-marked test raises :class:`ClauseTimeout`, a BaseException, instead of
pytest-timeout's ``pytest.fail``: hypothesis catches ``Failed`` and would re-run the hung example to shrink it,
after the one-shot alarm, and hang forever. The test is reported "timeout" and the run goes on with the next
test. With the thread method (``--timeout-method thread``), pytest-timeout ends the process: under xdist the
worker is replaced and the test is reported "error" (worker crashed); without xdist the run dies unreported.
"""

from __future__ import annotations

import inspect
import os
import re
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from detspec import impls as _impls
from detspec.io.fileio import atomic_write_json
from detspec.report import (
    FAILING_STATUSES,  # noqa: F401  (re-exported: the statuses that fail a run)
    WITHIN_PRECISION,
    format_table,
)
from spec import SPEC_VERSION
from spec.clauses import CLAUSES, LOW_PRECISION_CLAUSES
from spec.contract import CONTRACT, PLANNED
from spec.tolerances import LOW_PRECISION_DTYPES, PRECISION_DTYPES

STATUS_ORDER = ("fail", "error", "timeout", "interrupted", "incomplete", "partial", "not implemented",
                WITHIN_PRECISION, "pass", "skip", "untested")
# test outcome -> the clause status it forces (in this order of precedence)
_FAILING_OUTCOMES = (("failed", "fail"), ("error", "error"), ("timeout", "timeout"), ("interrupted", "interrupted"),
                     ("not run", "incomplete"))
_SPEC_COLUMN = "(spec)"
_WITHIN_KEY = "detspec.within_precision"  # user property: why a low-precision test passed only within precision
_CONFIG: dict[str, pytest.Config] = {}  # the session's config, for hooks that do not receive it


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("detspec", "detspec conformance suite")
    group.addoption("--impl", action="append", default=None, dest="detspec_impls",
                    help="implementation under test: reference, fast, torchvision or module[:attribute] "
                         "(repeatable; default $DETSPEC_IMPL or reference,fast)")
    group.addoption("--device", default=None, dest="detspec_device", choices=("cpu", "cuda"),
                    help="device for the conformance tests (default cpu)")
    group.addoption("--clause-report", default=None, dest="detspec_report", metavar="PATH",
                    help="write clause x implementation results as JSON to PATH")
    group.addoption("--clause-table", action="store_true", default=False, dest="detspec_table",
                    help="print the clause table at the end of the run")
    group.addoption("--repro", default=None, dest="detspec_repro", metavar="DIR",
                    help="write each failing test's input (hypothesis: the shrunk example) as DIR/<test>.npz plus "
                         "a JSON sidecar; replay one with `detspec repro FILE --impl NAME`")
    group.addoption("--dtype", default="fp32", dest="detspec_dtype", choices=tuple(PRECISION_DTYPES),
                    help="fp32 (default): the ordinary suite; bf16 / fp16: only the low-precision tests "
                         "(ratio rule and discrete-margin rule of spec/tolerances.py)")


def _impl_names(config: pytest.Config) -> list[str]:
    raw = config.getoption("detspec_impls") or [os.environ.get("DETSPEC_IMPL") or ",".join(_impls.DEFAULT_IMPLS)]
    names: list[str] = []
    for value in raw:
        for name in value.split(","):
            name = name.strip()
            if name and name not in names:
                names.append(name)
    return names


def pytest_configure(config: pytest.Config) -> None:
    for line in (
        "clause(*ids): the spec clauses this test checks (IDs from spec.clauses)",
        "gpu: needs a CUDA device; skipped without one",
        "triton: exercises a Triton kernel; skipped without triton",
        "slow: a long-running test",
        "low_precision: a low-precision test, collected only under --dtype bf16|fp16 (issue 16)",
    ):
        config.addinivalue_line("markers", line)
    _CONFIG["config"] = config
    try:
        from spec import strategies  # needs hypothesis, an optional dependency (the test extra)
    except ImportError:  # hypothesis missing: only non-property tests can run
        pass
    else:  # an explicit --hypothesis-profile wins over HYPOTHESIS_PROFILE / CI
        strategies.register_profiles(load=not config.getoption("hypothesis_profile", None))
    workers = getattr(config, "workerinput", {}).get("workercount")
    if workers:  # an xdist worker: share the cores instead of oversubscribing them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(workers)))
    threads = os.environ.get("DETSPEC_TORCH_THREADS", "").strip()
    if threads:  # the determinism sweep (scripts/determinism_sweep.sh) pins the intra-op thread count
        if not threads.isdigit() or int(threads) < 1:
            raise pytest.UsageError(f"DETSPEC_TORCH_THREADS must be a positive integer, got {threads!r}")
        torch.set_num_threads(int(threads))
    device = config.getoption("detspec_device") or "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise pytest.UsageError("--device cuda was given but torch.cuda.is_available() is False")
        # float32 tolerances assume IEEE float32 arithmetic: no TF32 in convolutions or matmuls
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    repro = config.getoption("detspec_repro")
    if repro:
        _prepare_repro_dir(repro)
    resolved: dict[str, _impls.Impl] = {}
    for name in _impl_names(config):
        try:
            resolved[name] = _impls.resolve(name)
        except _impls.ImplResolutionError as exc:
            raise pytest.UsageError(str(exc)) from exc
    config._detspec = _State(resolved, device, config.getoption("detspec_dtype") or "fp32")  # type: ignore[attr-defined]


def _prepare_repro_dir(path: str) -> Path:
    """--repro DIR: DIR is created if its parent exists (a usage error otherwise, or if DIR is a file)."""
    directory = Path(path)
    if directory.exists() and not directory.is_dir():
        raise pytest.UsageError(f"--repro {path}: not a directory")
    parent = directory.resolve().parent
    if not directory.exists():
        if not parent.is_dir():
            raise pytest.UsageError(f"--repro {path}: the parent directory {parent} does not exist")
        directory.mkdir(exist_ok=True)
    return directory


class _State:
    def __init__(self, impls: dict[str, _impls.Impl], device: str, dtype: str = "fp32"):
        self.repro: list[str] = []  # one line per repro case written (or not written) by a failing test
        self.impls = impls
        self.device = device
        self.dtype = dtype  # "fp32", "bf16" or "fp16" (--dtype)
        # nodeid -> {impl, clauses, phases: {when: [outcome, reason, timed_out]}, crash: str}, for clause tests
        self.results: dict[str, dict[str, Any]] = {}
        self.started: set[str] = set()  # pytest_runtest_logstart seen (any test)
        self.finished: set[str] = set()  # pytest_runtest_logfinish seen
        self.expected: set[str] = set()  # collected by the xdist workers (the controller collects nothing)
        self.unattributed: dict[str, str] = {}  # nodeid -> error of a test with no clause information
        self.problems: list[str] = []  # collection errors
        self.interrupted = False  # KeyboardInterrupt (Ctrl-C, SIGTERM in detspec check, collection errors)
        self.stop_reason = ""  # why the session stopped early ("SIGTERM received", "stopping after 1 failures")
        self.exitstatus: int | None = None


def _state(config: pytest.Config) -> _State:
    return config._detspec  # type: ignore[attr-defined]


def _current() -> _State | None:
    """The session's state, for hooks that do not receive the config (None before pytest_configure finished)."""
    config = _CONFIG.get("config")
    return getattr(config, "_detspec", None)


def pytest_report_header(config: pytest.Config) -> list[str]:
    st = _state(config)
    return [f"detspec: spec {SPEC_VERSION}; implementations under test: {', '.join(st.impls)}; "
            f"device: {st.device}; dtype: {st.dtype}"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "impl" in metafunc.fixturenames:
        names = list(_state(metafunc.config).impls)
        metafunc.parametrize("impl", names, ids=names, indirect=True, scope="session")


@pytest.fixture(scope="session")
def impl(request: pytest.FixtureRequest) -> _impls.Impl:
    """The implementation under test (parametrized over --impl)."""
    return _state(request.config).impls[request.param]


@pytest.fixture(scope="session")
def reference_impl() -> _impls.Impl:
    """detspec's reference, the oracle of differential tests (run it in float64)."""
    return _impls.resolve("reference")


@pytest.fixture(scope="session")
def device(request: pytest.FixtureRequest):
    return torch.device(_state(request.config).device)


class Precision:
    """The run's dtype for a low-precision test, and the record of differences it accepted.

    ``name`` is "fp32", "bf16" or "fp16", ``dtype`` the torch dtype. ``accept(what, details)`` notes that the
    implementation differs from the float64 reference in discrete outputs the discrete-margin rule accepts
    (spec.tolerances.within_discrete_margin): the test, if it passes, is reported "within precision".
    """

    def __init__(self, name: str, node: pytest.Item):
        self.name = name
        self.dtype = PRECISION_DTYPES[name]
        self.is_low = name in LOW_PRECISION_DTYPES
        self._node = node

    def accept(self, what: str, details: list[str] | tuple[str, ...] = ()) -> None:
        shown = "; ".join(details[:3]) + (f"; ... ({len(details)} in all)" if len(details) > 3 else "")
        self._node.user_properties.append((_WITHIN_KEY, f"{what}: {shown}" if shown else what))


@pytest.fixture
def precision(request: pytest.FixtureRequest) -> Precision:
    """The run's dtype (--dtype) and the within-precision record of the running test."""
    return Precision(_state(request.config).dtype, request.node)


def _clause_ids(item: pytest.Item) -> list[str]:
    ids: list[str] = []
    for mark in item.iter_markers("clause"):
        ids.extend(mark.args)
    return ids


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    unknown = sorted({(cid, item.nodeid) for item in items for cid in _clause_ids(item) if cid not in CLAUSES})
    if unknown:
        lines = "\n".join(f"  {cid} in {nodeid}" for cid, nodeid in unknown)
        raise pytest.UsageError(f"tests reference clauses that spec/clauses.py does not register:\n{lines}")
    low = _state(config).dtype in LOW_PRECISION_DTYPES
    selected = [item for item in items if (item.get_closest_marker("low_precision") is not None) == low]
    if len(selected) != len(items):  # fp32 runs the ordinary suite, bf16/fp16 only the low-precision tests
        config.hook.pytest_deselected(items=[item for item in items if item not in selected])
        items[:] = selected
    cuda = None
    for item in items:
        if item.get_closest_marker("gpu"):
            if cuda is None:
                cuda = torch.cuda.is_available()
            if not cuda:
                item.add_marker(pytest.mark.skip(reason="needs CUDA (torch.cuda.is_available() is False)"))
        if item.get_closest_marker("triton"):
            try:
                import triton  # noqa: F401  (optional: checked only when a test is marked triton)
            except ImportError:
                item.add_marker(pytest.mark.skip(reason="needs triton"))
        clauses = _clause_ids(item)
        callspec = getattr(item, "callspec", None)
        impl_name = callspec.params.get("impl") if callspec is not None else None
        if clauses:
            item.user_properties.append(("detspec.clauses", clauses))
            item.user_properties.append(("detspec.impl", impl_name or _SPEC_COLUMN))


def pytest_runtest_setup(item: pytest.Item) -> None:
    callspec = getattr(item, "callspec", None)
    if callspec is None or "impl" not in callspec.params:
        return
    impl = _state(item.config).impls[callspec.params["impl"]]
    missing = [n for n in _names_used(item) if not impl.has(n)]
    if missing:
        pytest.skip(_impls.NOT_IMPLEMENTED_PREFIX + ", ".join(missing))


_USED = re.compile(r"\bimpl\.(\w+)")


def _names_used(item: pytest.Item) -> list[str]:
    """Contract names the test function calls as ``impl.NAME`` (read from its source, once per function).

    Checking them before the test runs reports a partial port's gaps as "not implemented" without running
    (and shrinking) a property test. Names reached any other way still raise NotImplementedComponent.
    """
    fn = getattr(item, "function", None)
    if fn is None:
        return []
    key = getattr(fn, "__qualname__", ""), getattr(fn, "__module__", "")
    if key not in _NAMES_CACHE:
        try:
            source = inspect.getsource(fn)
        except (OSError, TypeError):
            source = ""
        _NAMES_CACHE[key] = sorted({n for n in _USED.findall(source) if n in CONTRACT or n in PLANNED})
    return _NAMES_CACHE[key]


_NAMES_CACHE: dict[tuple[str, str], list[str]] = {}


class ClauseTimeout(BaseException):
    """The per-test timeout fired in a clause test (raised from SIGALRM in the main thread).

    A BaseException, like KeyboardInterrupt, so that hypothesis lets it through instead of re-running the hung
    example to shrink it; pytest records it as the failure of the phase that was running.
    """


def _debugging() -> bool:
    try:  # imported late: pytest registers pytest_timeout as a plugin (and rewrites it) after this module loads
        from pytest_timeout import is_debugging
    except ImportError:  # pragma: no cover - the hook only runs with pytest-timeout
        return False
    return is_debugging()


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> bool | None:
    """pytest-timeout's signal method for clause tests, raising ClauseTimeout (see the module docstring)."""
    if (settings.method != "signal" or threading.current_thread() is not threading.main_thread()
            or not _clause_ids(item)):
        return None  # pytest-timeout's own implementation
    limit = settings.timeout

    def on_alarm(signum: int, frame: Any) -> None:
        if not settings.disable_debugger_detection and _debugging():
            return
        raise ClauseTimeout(f"Timeout (>{limit:g}s) from pytest-timeout: the test ran longer than the per-test "
                            "limit (detspec check --timeout)")

    previous = signal.signal(signal.SIGALRM, on_alarm)

    def cancel() -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous if previous is not None else signal.SIG_DFL)

    item.cancel_timeout = cancel  # type: ignore[attr-defined]  # what pytest-timeout's cancel hook calls
    signal.setitimer(signal.ITIMER_REAL, limit)
    return True


_REPRO_KEY = "detspec.repro"  # user property of a failing test's call report: the repro case written (or why not)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item):
    """Under --repro, record the contract calls and failing comparisons of the test's implementation."""
    callspec = getattr(item, "callspec", None)
    target = None
    if item.config.getoption("detspec_repro") and callspec is not None and "impl" in callspec.params:
        target = getattr(item, "funcargs", {}).get("impl")
    if not isinstance(target, _impls.Impl):
        yield
        return
    item._detspec_recorder = _impls.start_recording(target)  # type: ignore[attr-defined]
    try:
        yield
    finally:
        _impls.stop_recording()


def _exceptions(exc: BaseException | None) -> list[BaseException]:
    """The exception, its causes and contexts, and the members of exception groups (hypothesis raises one when
    a property test fails in several distinct ways)."""
    seen: list[BaseException] = []
    todo = [exc]
    while todo:
        e = todo.pop()
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        todo.extend([e.__cause__, e.__context__, *getattr(e, "exceptions", ())])
    return seen


def _write_repro(item: pytest.Item, call: pytest.CallInfo, report: pytest.TestReport) -> str:
    """Write the failing test's case under --repro DIR; returns the line the run prints about it."""
    # imported here, not at the top: detspec.conformance's modules must be first imported by pytest's
    # assertion-rewriting import hook (the suite's own imports), not by the plugin while pytest starts
    from detspec.conformance.cases import write_case

    recorder = getattr(item, "_detspec_recorder", None)
    item._detspec_recorder = None  # type: ignore[attr-defined]
    if recorder is None:
        return ""
    raised = _exceptions(call.excinfo.value if call.excinfo is not None else None)
    # the comparison whose AssertionError failed the test: hypothesis re-runs the shrunk example last and raises
    # the exception of that run, so this is the minimal case, not an earlier (larger) failing example
    failure = next((f for f in reversed(recorder.failures) if any(f["exc"] is e for e in raised)), None)
    call_record = failure["call"] if failure is not None else (recorder.calls[-1] if recorder.calls else None)
    if call_record is None:
        return f"{item.nodeid}: no repro case (the test failed before calling {recorder.target.name})"
    message = failure["message"] if failure is not None else _failure_line(report)
    try:
        path = write_case(item.config.getoption("detspec_repro"), nodeid=item.nodeid, clauses=_clause_ids(item),
                          impl_name=recorder.target.name, device=_state(item.config).device,
                          property_test=hasattr(getattr(item, "obj", None), "hypothesis"), failure=message,
                          call=call_record, comparison=failure)
    except (OSError, ValueError) as exc:
        return f"{item.nodeid}: no repro case ({exc})"
    note = "" if failure is not None and failure.get("selectors") else " (no replayable comparison recorded)"
    return f"{path}{note}  <- {item.nodeid}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if call.excinfo is not None and call.excinfo.errisinstance(_impls.NotImplementedComponent):
        report.outcome = "skipped"
        path, lineno, _ = item.reportinfo()
        report.longrepr = (str(path), (lineno or 0) + 1, _impls.NOT_IMPLEMENTED_PREFIX + str(call.excinfo.value))
    if call.when == "call" and getattr(item, "_detspec_recorder", None) is not None:
        line = _write_repro(item, call, report) if report.failed else ""
        item._detspec_recorder = None  # type: ignore[attr-defined]
        if line:
            report.user_properties.append((_REPRO_KEY, line))


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr or "")


_TIMEOUT = re.compile(r"Timeout \(>[0-9.e+-]+s\) from pytest-timeout[^\n]*")


def _failure_line(report: pytest.TestReport) -> str:
    """One line saying why a phase failed: the exception's message, else the last line of the report."""
    crash = getattr(report.longrepr, "reprcrash", None)
    message = getattr(crash, "message", None) or ""
    if not message:
        lines = [line for line in (report.longreprtext or "").strip().splitlines() if line.strip()]
        message = lines[-1] if lines else ""
    message = message.strip().splitlines()[0] if message.strip() else ""
    return message[:300]


def _new_entry(props: dict[str, Any]) -> dict[str, Any]:
    return {"impl": props["detspec.impl"], "clauses": list(props["detspec.clauses"]), "phases": {}, "crash": ""}


def pytest_collection_finish(session: pytest.Session) -> None:
    """Every selected clause test gets an entry, so one the run never reaches is reported "not run"."""
    st = _state(session.config)
    for item in session.items:
        props = dict(item.user_properties)
        if "detspec.clauses" in props:
            st.results.setdefault(item.nodeid, _new_entry(props))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node: Any, ids: list[str]) -> None:
    st = _current()
    if st is not None:
        st.expected.update(ids)


def pytest_runtest_logstart(nodeid: str, location: Any) -> None:
    st = _current()
    if st is not None:
        st.started.add(nodeid)


def pytest_runtest_logfinish(nodeid: str, location: Any) -> None:
    st = _current()
    if st is not None:
        st.finished.add(nodeid)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    st = _current()
    if st is None:
        return
    entry = st.results.get(report.nodeid)
    if entry is None:
        props = dict(report.user_properties)
        if "detspec.clauses" in props:
            entry = st.results[report.nodeid] = _new_entry(props)
        elif report.failed and report.when not in ("setup", "call", "teardown"):
            # xdist's report for a worker that crashed before the test's first report: no clause is known
            st.unattributed[report.nodeid] = str(report.longrepr or "the xdist worker crashed")
            return
        else:
            return
    if report.when == "call":
        st.repro.extend(str(v) for k, v in report.user_properties if k == _REPRO_KEY)
    if report.when not in ("setup", "call", "teardown"):  # xdist: "worker 'gw0' crashed while running ..."
        entry["crash"] = str(report.longrepr or "the xdist worker crashed")
        return
    if report.failed:
        timeout = _TIMEOUT.search(report.longreprtext or "")
        reason = timeout.group(0).strip()[:300] if timeout else _failure_line(report)
        entry["phases"][report.when] = ["failed", reason, timeout is not None]
    elif report.skipped:
        entry["phases"][report.when] = ["skipped", _skip_reason(report), False]
    else:
        within = [str(v) for k, v in report.user_properties if k == _WITHIN_KEY] if report.when == "call" else []
        entry["phases"][report.when] = ["passed", "", False]
        if within:
            entry["within"] = within


def pytest_collectreport(report: pytest.CollectReport) -> None:
    st = _current()
    if report.failed and st is not None:
        st.problems.append(f"collection error in {report.nodeid or 'the session'}")


def pytest_keyboard_interrupt(excinfo: pytest.ExceptionInfo) -> None:
    st = _current()
    if st is not None:
        st.interrupted = True
        st.stop_reason = str(excinfo.value) or excinfo.typename


def _test_outcome(st: _State, nodeid: str, entry: dict[str, Any]) -> tuple[str, str]:
    """(outcome, reason) of one clause test; see the module docstring for the outcomes."""
    if entry["crash"]:
        return "error", entry["crash"]
    phases = entry["phases"]
    for when in ("setup", "call", "teardown"):
        outcome, reason, timed_out = phases.get(when, (None, "", False))
        if outcome == "failed":
            if timed_out:
                return "timeout", f"{when}: {reason}"
            return ("failed" if when == "call" else "error"), f"{when} failed" + (f": {reason}" if reason else "")
    if nodeid not in st.finished:
        if phases or nodeid in st.started:
            running = "teardown" if "call" in phases else "call" if "setup" in phases else "setup"
            return "interrupted", f"started but did not finish (the run stopped during {running})"
        return "not run", "the run stopped before this test started"
    for when in ("setup", "call"):
        outcome, reason, _ = phases.get(when, (None, "", False))
        if outcome == "skipped":
            if _impls.NOT_IMPLEMENTED_PREFIX in reason:
                return "not implemented", reason.split(_impls.NOT_IMPLEMENTED_PREFIX, 1)[-1]
            return "skipped", reason
    if phases.get("call", (None,))[0] == "passed":
        if entry.get("within"):
            return "within precision", "; ".join(entry["within"])[:600]
        return "passed", ""
    return "error", "no report of the test's call phase"


def build_report(config: pytest.Config) -> dict[str, Any]:
    """The clause report.

    ``{spec_version, device, dtype, impls, timeout, complete, interrupted, stop_reason, problems, unattributed,
    clauses: {clause id: {text, source, results: {impl: {status, tests: [[nodeid, outcome, reason], ...]}}}},
    other_dtype_clauses}``

    ``clauses`` holds the clauses of this run's dtype: under bf16/fp16 the low-precision clauses
    (spec.clauses.LOW_PRECISION_CLAUSES), under fp32 all the others; a clause of the other kind that a test of this
    run checked is included too. ``other_dtype_clauses`` names the rest (checked by a run with another --dtype).
    """
    st = _state(config)
    columns = list(st.impls)
    by_clause: dict[str, dict[str, list]] = {}
    counts: dict[str, int] = {}
    for nodeid, r in sorted(st.results.items()):
        if r["impl"] not in columns:
            columns.append(r["impl"])
        outcome, reason = _test_outcome(st, nodeid, r)
        counts[outcome] = counts.get(outcome, 0) + 1
        for cid in r["clauses"]:
            by_clause.setdefault(cid, {}).setdefault(r["impl"], []).append([nodeid, outcome, reason])
    low = st.dtype in LOW_PRECISION_DTYPES
    clauses = {}
    other_dtype: list[str] = []
    for cid, clause in CLAUSES.items():
        if (cid in LOW_PRECISION_CLAUSES) != low and cid not in by_clause:
            other_dtype.append(cid)
            continue
        results = {}
        for name in columns:
            tests = by_clause.get(cid, {}).get(name, [])
            results[name] = {"status": aggregate([t[1] for t in tests]), "tests": tests}
        clauses[cid] = {"text": clause.text, "source": clause.source, "results": results}

    interrupted = st.interrupted or st.exitstatus == pytest.ExitCode.INTERRUPTED
    problems: list[str] = []
    if interrupted or st.stop_reason:
        problems.append(f"the run stopped early: {st.stop_reason or 'interrupted'}")
    for outcome, what in (("interrupted", "did not finish"), ("not run", "did not run")):
        if counts.get(outcome):
            n = counts[outcome]
            problems.append(f"{n} clause test{'s' if n != 1 else ''} {what}")
    known = set(st.results) | set(st.unattributed)
    never_started = sorted(st.expected - st.started - known)  # xdist: collected by a worker, never started
    if never_started:
        problems.append(f"{len(never_started)} collected test{'s' if len(never_started) != 1 else ''} did not run")
    unattributed = [[nodeid, "error", msg] for nodeid, msg in sorted(st.unattributed.items())]
    problems.extend(f"{nodeid}: {msg}" for nodeid, _, msg in unattributed)
    problems.extend(st.problems)
    timeout = config.getoption("timeout", None)
    return {"spec_version": SPEC_VERSION, "device": st.device, "dtype": st.dtype, "impls": columns,
            "timeout": float(timeout) if timeout else None, "complete": not problems, "interrupted": interrupted,
            "stop_reason": st.stop_reason, "problems": problems, "unattributed": unattributed, "clauses": clauses,
            "other_dtype_clauses": other_dtype}


def aggregate(outcomes: list[str]) -> str:
    """One status per clause and implementation.

    fail: a test failed. error: a test's setup or teardown failed, or its xdist worker crashed. timeout: a test
    ran past the per-test timeout. interrupted: a test started and did not finish. incomplete: a test did not run
    because the run stopped early. (These five are failing statuses, in this order of precedence.)
    partial: some tests passed, others could not run for a missing name. not implemented: no test could run for
    a missing name. pass (within precision): tests passed, at least one only by the discrete-margin rule (a
    passing status). pass: tests passed (others may be skipped, e.g. GPU tests without CUDA). skip: everything
    skipped. untested: no test of the clause was selected.
    """
    if not outcomes:
        return "untested"
    for outcome, status in _FAILING_OUTCOMES:
        if outcome in outcomes:
            return status
    passed = "passed" in outcomes or "within precision" in outcomes
    if "not implemented" in outcomes:
        return "partial" if passed else "not implemented"
    if "within precision" in outcomes:
        return WITHIN_PRECISION
    if "passed" in outcomes:
        return "pass"
    return "skip"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if hasattr(config, "workerinput"):  # an xdist worker: the controller writes the report
        return
    st = _current()
    if st is None:
        return
    st.exitstatus = int(exitstatus)
    if not st.stop_reason and (session.shouldfail or session.shouldstop):  # -x / --maxfail
        st.stop_reason = str(session.shouldfail or session.shouldstop)
    path = config.getoption("detspec_report")
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, build_report(config), indent=1)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):
        return
    st = _current()
    if config.getoption("detspec_repro") and st is not None and st.repro:
        terminalreporter.write_line("")
        terminalreporter.write_line(f"detspec repro cases ({len(st.repro)}; replay one with "
                                    "`detspec repro FILE --impl NAME`):")
        for line in st.repro:
            terminalreporter.write_line(f"  {line}")
    if not config.getoption("detspec_table"):
        return
    terminalreporter.write_line("")
    for line in format_table(build_report(config)).splitlines():
        terminalreporter.write_line(line)
