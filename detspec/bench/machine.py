"""What the CPU offers the low-precision path (issue 16), recorded in every benchmark's metadata.

bf16 matrix products are fast on a CPU with bf16 dot-product instructions: AVX512-BF16 (``avx512_bf16`` in
/proc/cpuinfo: AMD Zen 4 and later, Intel Cooper Lake / Sapphire Rapids) or AMX tiles (``amx_bf16``: Intel Sapphire
Rapids and later). Without them oneDNN converts bf16 to float32 for the arithmetic, so the bf16 path runs but is
not faster than float32 (often slower: the conversions cost time); ``bf16_support`` says so.
"""

from __future__ import annotations

import torch

BF16_FLAGS = {"avx512_bf16": "AVX512-BF16", "amx_bf16": "AMX-BF16", "amx_tile": "AMX tiles"}


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The first processor's flags from /proc/cpuinfo (empty where it cannot be read)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as f:
                cpuinfo = f.read()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags") and ":" in line:
            return set(line.split(":", 1)[1].split())
    return set()


def bf16_support(flags: set[str] | None = None) -> str:
    """One line: the bf16 instructions present, or why bf16 is not expected to be faster than float32 here."""
    flags = cpu_flags() if flags is None else flags
    present = [name for flag, name in BF16_FLAGS.items() if flag in flags]
    isa = torch.backends.cpu.get_cpu_capability()
    if present:
        return f"{', '.join(present)} (torch CPU capability {isa})"
    return (f"none (torch CPU capability {isa}): no bf16 dot-product instructions, so bf16 matmuls and convs are "
            "converted to float32 and bf16 is not faster than float32 here")
