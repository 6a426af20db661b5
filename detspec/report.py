"""The clause table: one row per clause, one column per implementation."""

from __future__ import annotations

from typing import Any

STATUSES = ("pass", "fail", "partial", "not implemented", "skip")


def format_table(report: dict[str, Any]) -> str:
    impls: list[str] = report["impls"]
    clauses: dict[str, Any] = report["clauses"]
    tested = {cid: c for cid, c in clauses.items()
              if any(r["status"] != "untested" for r in c["results"].values())}
    untested = [cid for cid in clauses if cid not in tested]
    id_width = max([len("clause")] + [len(cid) for cid in tested])
    col = max([len("not implemented")] + [len(n) for n in impls]) + 2
    lines = [f"detspec conformance: spec {report['spec_version']}, device {report['device']}", ""]
    lines.append("clause".ljust(id_width + 2) + "".join(n.ljust(col) for n in impls) + "statement")
    lines.append("-" * (id_width + 2 + col * len(impls) + 9))
    for cid, c in tested.items():
        cells = "".join(c["results"].get(n, {"status": "untested"})["status"].ljust(col) for n in impls)
        lines.append(cid.ljust(id_width + 2) + cells + c["text"])
    lines.append("")
    for n in impls:
        counts = {s: 0 for s in STATUSES}
        for c in tested.values():
            status = c["results"].get(n, {"status": "untested"})["status"]
            if status in counts:
                counts[status] += 1
        lines.append(f"{n}: " + ", ".join(f"{counts[s]} {s}" for s in STATUSES))
    failures = [(cid, n, t) for cid, c in tested.items() for n in impls
                for t in c["results"].get(n, {"tests": []})["tests"] if t[1] == "failed"]
    if failures:
        lines.append("")
        lines.append("failing tests:")
        lines.extend(f"  {cid} [{n}]: {t[0]}" for cid, n, t in failures)
    if untested:
        lines.append("")
        lines.append(f"{len(untested)} clauses were not checked (no test of them ran): " + ", ".join(untested))
    return "\n".join(lines)


def any_failed(report: dict[str, Any]) -> bool:
    return any(r["status"] == "fail" for c in report["clauses"].values() for r in c["results"].values())
