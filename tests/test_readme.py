"""Every command in README.md is a valid invocation, and each subcommand has a test that runs it.

The README's shell blocks are read line by line; each `detspec ...` line (and the `torchrun ... -m detspec.demo`
line) is parsed by the real argument parser, so a renamed option or subcommand fails here. The commands
themselves run in the tests named in RUN_BY (or in CI: the two quick-start lines are .ci/run).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from detspec.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()

# subcommand -> the test file that runs it (the string must occur there)
RUN_BY = {
    "check": ("tests/test_example_port.py", '"check"'),
    "convert": ("tests/test_cli_detect.py", '"convert"'),
    "detect": ("tests/test_cli_detect.py", '"detect"'),
    "evaluate": ("tests/test_coco_eval.py", "evaluate"),
    "synth": ("tests/test_synthetic.py", "synth"),
    "demo": ("tests/test_demo.py", '"-m", "detspec.demo"'),
    "bench": ("tests/test_bench_cli.py", "bench.main"),
    "vectors": ("tests/test_vectors.py", '"vectors"'),
    "classify": ("tests/test_cli_mvit.py", "classify"),
    "export": ("tests/test_onnx_end_to_end.py", '"export"'),
    "repro": ("tests/test_repro.py", '"repro"'),
}


def _shell_lines() -> list[str]:
    blocks = re.findall(r"```(?:sh|console)\n(.*?)```", README, flags=re.S)
    lines = []
    for block in blocks:
        for line in block.splitlines():
            line = line.strip().removeprefix("$ ")
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def _commands() -> list[list[str]]:
    out = []
    for line in _shell_lines():
        for part in re.split(r"&&", line):
            words = shlex.split(part, comments=True)
            if not words:
                continue
            if Path(words[0]).name == "detspec":
                out.append(words[1:])
            elif words[0] == "torchrun" and "-m" in words:
                module_args = words[words.index("-m") + 1:]
                if module_args[0] == "detspec.demo":
                    out.append(["demo", *module_args[1:]])
    return out


COMMANDS = _commands()


def test_readme_has_the_commands():
    used = {c[0] for c in COMMANDS}
    assert {"check", "convert", "detect", "evaluate", "synth", "demo", "bench", "vectors"} <= used, used


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(c)[:60] for c in COMMANDS])
def test_readme_command_parses(argv):
    args = build_parser().parse_args(argv)
    assert args.command == argv[0]


def test_every_readme_subcommand_is_run_by_a_test():
    for sub in {c[0] for c in COMMANDS}:
        path, needle = RUN_BY[sub]
        assert needle in (ROOT / path).read_text(), f"{path} should run `detspec {sub}`"


def test_readme_adapter_passes_the_iou_clauses(tmp_path):
    """The worked adapter in the README, run through `detspec check`: its IoU clauses pass."""
    import json
    import os
    import subprocess
    import sys

    block = re.search(r"```python\n(# my_port\.py\n.*?)```", README, flags=re.S)
    assert block, "the README's worked adapter (a python block starting with '# my_port.py') is missing"
    (tmp_path / "my_port.py").write_text(block.group(1))
    report = tmp_path / "report.json"
    env = dict(os.environ, HYPOTHESIS_PROFILE="ci", HYPOTHESIS_STORAGE_DIRECTORY=str(tmp_path / ".hypothesis"))
    proc = subprocess.run([sys.executable, "-m", "detspec.cli", "check", "--impl", "my_port", "--report", str(report),
                           "-k", "test_boxes"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    clauses = json.loads(report.read_text())["clauses"]
    for cid in ("BOX.IOU_NO_PLUS_ONE", "BOX.IOU_ZERO_NO_OVERLAP", "BOX.IOU_RANGE"):
        assert clauses[cid]["results"]["my_port"]["status"] == "pass", (cid, clauses[cid]["results"]["my_port"])


def _guarantee_tests() -> list[tuple[str, str | None]]:
    """(test file, test name or None for a whole file) for every test the README's Guarantees table names."""
    section = README.split("## Guarantees", 1)[1].split("\n## ", 1)[0]
    named: list[tuple[str, str | None]] = []
    for row in (line for line in section.splitlines() if line.startswith("| ") and "test_" in line):
        current = None
        for ref in re.findall(r"`([^`]+)`", row.rsplit("|", 2)[-2]):
            m = re.fullmatch(r"(test_\w+\.py)?(?:::(test_\w+))?", ref)
            if not m or not (m.group(1) or m.group(2)):
                continue
            current = m.group(1) or current
            named.append((current, m.group(2)))
    return named


def test_every_guarantee_names_existing_tests():
    named = _guarantee_tests()
    assert len(named) >= 20, named  # the table was parsed (a broken parse would make this test vacuous)
    for path, name in named:
        assert path is not None, f"a guarantee names ::{name} without a file"
        text = (ROOT / "tests" / path).read_text()
        if name is not None:
            assert re.search(rf"^def {name}\(", text, flags=re.M), f"README Guarantees: tests/{path}::{name} is gone"
