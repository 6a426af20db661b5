"""The files ``detspec bench`` reads and names: pytest-benchmark JSON, saved baselines, run names."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class UsageError(Exception):
    """A bad command line or missing input: exit code 2."""


def check_name(name: str, what: str) -> str:
    """A run / baseline name (--save): letters, digits, '.', '_' and '-' only."""
    if not _NAME.match(name):
        raise UsageError(f"{what} {name!r}: use letters, digits, '.', '_' and '-' only")
    return name


def resolve_baseline(name: str, out_dir: Path) -> Path:
    """--compare NAME: DIR/baselines/NAME.json, or NAME itself when it is an existing JSON file."""
    direct = Path(name)
    if name.endswith(".json") and direct.is_file():
        return direct
    path = out_dir / "baselines" / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in (out_dir / "baselines").glob("*.json"))
        raise UsageError(f"unknown baseline {name!r}: {path} does not exist "
                         f"(saved baselines: {', '.join(known) or 'none'}; create one with --save NAME)")
    return path


def load_results(path: Path, what: str) -> dict[str, Any]:
    """A pytest-benchmark JSON file (a dict with a 'benchmarks' list); UsageError naming ``what`` otherwise."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise UsageError(f"{what} {path} not found") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{what} {path} is not JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise UsageError(f"{what} {path} is not pytest-benchmark JSON (no 'benchmarks' list)")
    return data


def unique_path(path: Path) -> Path:
    """``path``, or ``<stem>-2<suffix>``, ``-3``, ... when it exists."""
    n, candidate = 2, path
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        n += 1
    return candidate
