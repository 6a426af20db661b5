"""The detspec pytest plugin (entry point ``pytest11: detspec``): run the conformance suite against any port.

Options (group "detspec"):
  --impl NAME          reference | fast | torchvision | module[:attribute]; repeatable, comma lists allowed.
                       Default: $DETSPEC_IMPL or "reference,fast".
  --device DEV         cpu | cuda (default cpu). cuda without a GPU is a usage error.
  --clause-report PATH write the clause x implementation results as JSON.
  --clause-table       print the clause table at the end of the run.

Markers: ``clause(*ids)`` ties a test to spec clauses (unknown IDs are a usage error); ``gpu`` (skipped
without CUDA); ``triton`` (skipped without triton); ``slow``.

Fixtures: ``impl`` (parametrized over the selected implementations), ``reference_impl`` and ``device``.
Before a test runs, the plugin checks that ``impl`` provides every contract name the test calls as
``impl.NAME``; if not, the test is reported "not implemented" instead of running. A ``NotImplementedComponent``
raised during the test (a name reached another way) is reported the same way. A clause whose tests partly
passed and partly could not run is "partial".
"""

from __future__ import annotations

import inspect
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from detspec import impls as _impls

STATUS_ORDER = ("fail", "partial", "not implemented", "pass", "skip", "untested")
_SPEC_COLUMN = "(spec)"
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
    ):
        config.addinivalue_line("markers", line)
    _CONFIG["config"] = config
    try:
        from spec import strategies
    except ImportError:  # hypothesis missing: only non-property tests can run
        pass
    else:  # an explicit --hypothesis-profile wins over HYPOTHESIS_PROFILE / CI
        strategies.register_profiles(load=not config.getoption("hypothesis_profile", None))
    workers = getattr(config, "workerinput", {}).get("workercount")
    if workers:  # an xdist worker: share the cores instead of oversubscribing them
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(workers)))
    device = config.getoption("detspec_device") or "cpu"
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise pytest.UsageError("--device cuda was given but torch.cuda.is_available() is False")
        # float32 tolerances assume IEEE float32 arithmetic: no TF32 in convolutions or matmuls
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    resolved: dict[str, _impls.Impl] = {}
    for name in _impl_names(config):
        try:
            resolved[name] = _impls.resolve(name)
        except _impls.ImplResolutionError as exc:
            raise pytest.UsageError(str(exc)) from exc
    config._detspec = _State(resolved, device)  # type: ignore[attr-defined]


class _State:
    def __init__(self, impls: dict[str, _impls.Impl], device: str):
        self.impls = impls
        self.device = device
        self.results: dict[str, dict[str, Any]] = {}  # nodeid -> {impl, clauses, outcome, reason}


def _state(config: pytest.Config) -> _State:
    return config._detspec  # type: ignore[attr-defined]


def pytest_report_header(config: pytest.Config) -> list[str]:
    from spec import SPEC_VERSION

    st = _state(config)
    return [f"detspec: spec {SPEC_VERSION}; implementations under test: {', '.join(st.impls)}; "
            f"device: {st.device}"]


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
    import torch

    return torch.device(_state(request.config).device)


def _clause_ids(item: pytest.Item) -> list[str]:
    ids: list[str] = []
    for mark in item.iter_markers("clause"):
        ids.extend(mark.args)
    return ids


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from spec.clauses import CLAUSES

    unknown = sorted({(cid, item.nodeid) for item in items for cid in _clause_ids(item) if cid not in CLAUSES})
    if unknown:
        lines = "\n".join(f"  {cid} in {nodeid}" for cid, nodeid in unknown)
        raise pytest.UsageError(f"tests reference clauses that spec/clauses.py does not register:\n{lines}")
    cuda = None
    for item in items:
        if item.get_closest_marker("gpu"):
            if cuda is None:
                import torch

                cuda = torch.cuda.is_available()
            if not cuda:
                item.add_marker(pytest.mark.skip(reason="needs CUDA (torch.cuda.is_available() is False)"))
        if item.get_closest_marker("triton"):
            try:
                import triton  # noqa: F401
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
    from spec.contract import CONTRACT, PLANNED

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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if call.excinfo is not None and call.excinfo.errisinstance(_impls.NotImplementedComponent):
        report.outcome = "skipped"
        path, lineno, _ = item.reportinfo()
        report.longrepr = (str(path), (lineno or 0) + 1, _impls.NOT_IMPLEMENTED_PREFIX + str(call.excinfo.value))


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr or "")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    props = dict(report.user_properties)
    if "detspec.clauses" not in props:
        return
    config = _CONFIG.get("config")
    if config is None:
        return
    entry = _state(config).results.setdefault(report.nodeid, {
        "impl": props["detspec.impl"], "clauses": list(props["detspec.clauses"]), "outcome": "passed",
        "reason": ""})
    if report.failed:
        entry["outcome"], entry["reason"] = "failed", f"{report.when} failed"
    elif report.skipped and entry["outcome"] != "failed":
        reason = _skip_reason(report)
        not_impl = _impls.NOT_IMPLEMENTED_PREFIX in reason
        entry["outcome"] = "not implemented" if not_impl else "skipped"
        entry["reason"] = reason.split(_impls.NOT_IMPLEMENTED_PREFIX, 1)[-1] if not_impl else reason


def build_report(config: pytest.Config) -> dict[str, Any]:
    """{clause id: {text, source, results: {impl: {status, tests: [[nodeid, outcome, reason], ...]}}}}."""
    from spec import SPEC_VERSION
    from spec.clauses import CLAUSES

    st = _state(config)
    columns = list(st.impls)
    by_clause: dict[str, dict[str, list]] = {}
    for nodeid, r in sorted(st.results.items()):
        if r["impl"] not in columns:
            columns.append(r["impl"])
        for cid in r["clauses"]:
            by_clause.setdefault(cid, {}).setdefault(r["impl"], []).append([nodeid, r["outcome"], r["reason"]])
    clauses = {}
    for cid, clause in CLAUSES.items():
        results = {}
        for name in columns:
            tests = by_clause.get(cid, {}).get(name, [])
            results[name] = {"status": aggregate([t[1] for t in tests]), "tests": tests}
        clauses[cid] = {"text": clause.text, "source": clause.source, "results": results}
    return {"spec_version": SPEC_VERSION, "device": st.device, "impls": columns, "clauses": clauses}


def aggregate(outcomes: list[str]) -> str:
    """One status per clause and implementation.

    fail: any test failed. partial: some tests passed, others could not run for a missing name.
    not implemented: no test could run for a missing name. pass: tests passed (others may be skipped, e.g.
    GPU tests without CUDA). skip: everything skipped. untested: no test of the clause ran.
    """
    if not outcomes:
        return "untested"
    if "failed" in outcomes:
        return "fail"
    if "not implemented" in outcomes:
        return "partial" if "passed" in outcomes else "not implemented"
    if "passed" in outcomes:
        return "pass"
    return "skip"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if hasattr(config, "workerinput"):  # an xdist worker: the controller writes the report
        return
    path = config.getoption("detspec_report")
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(build_report(config), indent=1))


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if hasattr(config, "workerinput") or not config.getoption("detspec_table"):
        return
    from detspec.report import format_table

    terminalreporter.write_line("")
    for line in format_table(build_report(config)).splitlines():
        terminalreporter.write_line(line)
