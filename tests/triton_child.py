"""Shared harness of the Triton kernel tests: run named cases in a child process with TRITON_INTERPRET=1.

TRITON_INTERPRET must be set before triton is imported, so the interpreted cases run in a fresh interpreter and
the setting never leaks into other tests. The child prints one "RESULTS:{json}" line: case name -> None (passed)
or the formatted traceback.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# Appended to each child source: runs every case named in argv[1] through the child's `case(name)`.
CHILD_FOOTER = '''
results = {}
for name in json.loads(sys.argv[1]):
    try:
        case(name)
        results[name] = None
    except Exception:
        results[name] = traceback.format_exc(limit=4)
print("RESULTS:" + json.dumps(results))
'''


def child_env(**extra: str) -> dict:
    """os.environ with the repository root on PYTHONPATH, plus `extra`."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
    env.update(extra)
    return env


def import_module(name: str) -> ModuleType:
    """Import `name` in this process (the repository root may not be on sys.path)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError:
        if str(REPO_ROOT) not in sys.path:
            sys.path.insert(0, str(REPO_ROOT))
        return importlib.import_module(name)


def run_interpreted(child_source: str, cases: list[str], timeout: int = 300) -> dict:
    """Run `cases` through the child's `case(name)` under TRITON_INTERPRET=1; fail the test if the child dies."""
    proc = subprocess.run([sys.executable, "-c", child_source + CHILD_FOOTER, json.dumps(cases)],
                          env=child_env(TRITON_INTERPRET="1"), cwd=str(REPO_ROOT), capture_output=True, text=True,
                          timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS:")]
    if proc.returncode != 0 or not lines:
        pytest.fail(f"interpreter child failed (rc={proc.returncode})\n"
                    f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULTS:"):])


def run_without_triton(module: str, body: str, timeout: int = 120) -> None:
    """Import `module` as K in a child where triton cannot be imported, check K.TRITON_AVAILABLE is False, then
    run `body` (Python source using torch and K); fail the test unless the child completes."""
    code = ("import sys\n"
            "sys.modules['triton'] = None\n"
            "sys.modules['triton.language'] = None\n"
            "import torch\n"
            f"import {module} as K\n"
            "assert K.TRITON_AVAILABLE is False\n"
            f"{body}\n"
            "print('OK')\n")
    proc = subprocess.run([sys.executable, "-c", code], env=child_env(), cwd=str(REPO_ROOT), capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-4000:]
