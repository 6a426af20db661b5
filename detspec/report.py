"""The clause table: one row per clause, one column per implementation.

Statuses (see detspec.plugin): fail, error, timeout, interrupted and incomplete are failing statuses and are
never shown as a pass. A report whose ``complete`` is false (the run was interrupted, a test did not finish or
did not run, a test errored outside any clause, collection failed) is printed under an ``INCOMPLETE RUN (...)``
banner, at the top and again at the bottom of the table.

A low-precision run (``detspec check --dtype bf16|fp16``, issue 16) names its dtype in the header line and shows
"pass (within precision)" as its own, passing, status: the tests passed with discrete differences from the float64
reference that the discrete-margin rule of spec/tolerances.py accepts (listed under "accepted within precision").
"""

from __future__ import annotations

from typing import Any

STATUSES = ("pass", "fail", "partial", "not implemented", "skip")  # always counted in the summary line
FAILING_STATUSES = ("fail", "error", "timeout", "interrupted", "incomplete")
WITHIN_PRECISION = "pass (within precision)"  # a passing status of low-precision runs
_EXTRA_STATUSES = (WITHIN_PRECISION, "error", "timeout", "interrupted", "incomplete")  # counted when present
# how a failing test outcome is named in the list of failing tests
# (tests that did not run at all are counted in the banner, not listed)
_OUTCOME_LABELS = {"failed": "failed", "error": "error", "timeout": "error (timeout)", "interrupted": "interrupted"}


def is_complete(report: dict[str, Any]) -> bool:
    """False for a partial run (reports written before ``complete`` existed count as complete)."""
    return bool(report.get("complete", True))


def incomplete_banner(report: dict[str, Any]) -> str:
    """``INCOMPLETE RUN (reasons): ...`` for a partial run, "" for a complete one."""
    if is_complete(report):
        return ""
    reasons = "; ".join(report.get("problems") or ["the run did not finish"])
    return (f"INCOMPLETE RUN ({reasons}): the statuses cover only what ran; interrupted, incomplete, error and "
            "timeout are not passes")


def format_table(report: dict[str, Any]) -> str:
    impls: list[str] = report["impls"]
    clauses: dict[str, Any] = report["clauses"]
    tested = {cid: c for cid, c in clauses.items()
              if any(r["status"] != "untested" for r in c["results"].values())}
    untested = [cid for cid in clauses if cid not in tested]
    id_width = max([len("clause")] + [len(cid) for cid in tested])
    shown_statuses = {r["status"] for c in tested.values() for r in c["results"].values()}
    col = max([len("not implemented")] + [len(s) for s in shown_statuses] + [len(n) for n in impls]) + 2
    banner = incomplete_banner(report)
    lines = []
    if banner:
        lines += ["!" * 20, banner, "!" * 20, ""]
    header = f"detspec conformance: spec {report['spec_version']}, device {report['device']}"
    if report.get("dtype"):
        header += f", dtype {report['dtype']}"
    if report.get("timeout"):
        header += f", per-test timeout {report['timeout']:g} s"
    lines += [header, ""]
    lines.append("clause".ljust(id_width + 2) + "".join(n.ljust(col) for n in impls) + "statement")
    lines.append("-" * (id_width + 2 + col * len(impls) + 9))
    for cid, c in tested.items():
        cells = "".join(c["results"].get(n, {"status": "untested"})["status"].ljust(col) for n in impls)
        lines.append(cid.ljust(id_width + 2) + cells + c["text"])
    lines.append("")
    for n in impls:
        counts: dict[str, int] = {}
        for c in tested.values():
            status = c["results"].get(n, {"status": "untested"})["status"]
            counts[status] = counts.get(status, 0) + 1
        shown = list(STATUSES) + [s for s in _EXTRA_STATUSES if counts.get(s)]
        if WITHIN_PRECISION in shown:  # next to "pass"
            shown.remove(WITHIN_PRECISION)
            shown.insert(1, WITHIN_PRECISION)
        lines.append(f"{n}: " + ", ".join(f"{counts.get(s, 0)} {s}" for s in shown))
    failures = [(cid, n, t) for cid, c in tested.items() for n in impls
                for t in c["results"].get(n, {"tests": []})["tests"] if t[1] in _OUTCOME_LABELS]
    if failures:
        lines.append("")
        lines.append("failing tests:")
        for cid, n, t in failures:
            reason = f": {t[2]}" if len(t) > 2 and t[2] else ""
            lines.append(f"  {cid} [{n}]: {t[0]} - {_OUTCOME_LABELS[t[1]]}{reason}")
    for nodeid, outcome, reason in report.get("unattributed") or []:
        lines.append(f"  (no clause) {nodeid} - {outcome}: {reason}")
    within = {(n, t[0]): t[2] for c in tested.values() for n in impls
              for t in c["results"].get(n, {"tests": []})["tests"] if t[1] == "within precision"}
    if within:
        lines.append("")
        lines.append("accepted within precision (differences from the float64 reference at margins within the "
                     "low-precision tolerance):")
        for (n, nodeid), reason in within.items():
            lines.append(f"  [{n}] {nodeid}: {reason}")
    if untested:
        lines.append("")
        lines.append(f"{len(untested)} clauses were not checked (no test of them ran): " + ", ".join(untested))
    other = report.get("other_dtype_clauses") or []
    if other:
        dtype = report.get("dtype") or "fp32"
        run = "--dtype bf16 or fp16" if dtype == "fp32" else "--dtype fp32 (the default)"
        lines.append("")
        lines.append(f"{len(other)} clauses belong to runs with {run} and are not shown: "
                     + (", ".join(other) if len(other) <= 20 else ", ".join(other[:20]) + ", ..."))
    if banner:
        lines += ["", banner]
    return "\n".join(lines)


def any_failed(report: dict[str, Any]) -> bool:
    """A failing status anywhere (fail, error, timeout, interrupted, incomplete), or an error outside any clause."""
    return bool(report.get("unattributed")) or any(
        r["status"] in FAILING_STATUSES for c in report["clauses"].values() for r in c["results"].values())
