"""A run against a baseline: the change of each benchmark's median, and the regression gate."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from detspec.bench.report import CONTENTION_WARN, impl_name
from detspec.bench.tables import format_ms, grid, machine_summary, median, other_cores

COMPARED_MACHINE_KEYS = ("cpu_model", "gpu_name", "torch_version", "torchvision_version", "torch_num_threads",
                         "bench_device")


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
            gate_all: bool = False) -> Comparison:
    """Change of each benchmark's median, current vs baseline, in percent (+ = slower).

    A row is "REGRESSED" when it is gated (implementation ``fast``, or any with gate_all) and slower than
    fail_above percent; "slower" when only the threshold is exceeded; otherwise "ok". No fail_above: all "ok"
    or "slower"/"faster" for information only.
    """
    cur, base = _by_name(current), _by_name(baseline)
    out = Comparison(only_in_baseline=sorted(set(base) - set(cur)), only_in_run=sorted(set(cur) - set(base)))
    contended = []
    for name in sorted(set(cur) & set(base)):
        b, c = base[name], cur[name]
        change = (median(c) / median(b) - 1.0) * 100.0
        impl = impl_name(c)
        gated = gate_all or impl == "fast"
        if fail_above is not None and change > fail_above:
            status = "REGRESSED" if gated else "slower (not gated)"
        else:
            status = "ok"
        out.rows.append({"name": name, "implementation": impl, "baseline": median(b), "current": median(c),
                         "change_pct": change, "gated": gated, "status": status})
        worst = max((other_cores(x) or 0.0) for x in (b, c))
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
    body = [[r["name"], r["implementation"], format_ms(r["baseline"]), format_ms(r["current"]),
             f"{r['change_pct']:+.1f}%", r["status"]] for r in comp.rows]
    lines = [grid(header, body, markdown, left=(0, 1, 5))]
    if comp.only_in_baseline:
        lines.append(f"only in the baseline ({len(comp.only_in_baseline)}, not compared): "
                     + ", ".join(comp.only_in_baseline))
    if comp.only_in_run:
        lines.append(f"only in this run ({len(comp.only_in_run)}, not compared): " + ", ".join(comp.only_in_run))
    lines += [f"warning: {w}" for w in comp.warnings]
    return "\n".join(lines)
