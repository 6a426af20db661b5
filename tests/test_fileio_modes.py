"""Atomic writes give the file the permissions an ordinary write would (detspec/io/fileio.py): a new file
0o666 & ~umask, a replaced file its own earlier mode, never the temporary file's 0o600.

Expected modes come from the OS itself: a file created with plain open() under the same umask (POSIX's rule
for open(O_CREAT, 0o666)), and os.chmod's mode for the replaced file.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from detspec.io.fileio import atomic_open, atomic_save, atomic_write, atomic_write_json

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")

WRITERS = {
    "atomic_write": lambda p: atomic_write(p, b"data"),
    "atomic_write_json": lambda p: atomic_write_json(p, {"a": 1}),
    "atomic_save": lambda p: atomic_save(p, lambda f: f.write(b"data")),
    "atomic_open_text": lambda p: _write_text(p),
}


def _write_text(p: Path) -> None:
    with atomic_open(p, "w", encoding="utf-8") as f:
        f.write("text")


def _mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


@pytest.fixture
def umask():
    """Run the test under a chosen umask, restoring the process's afterwards."""
    old = os.umask(0o022)
    try:
        yield lambda mask: os.umask(mask)
    finally:
        os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002, 0o027])
@pytest.mark.parametrize("writer", list(WRITERS))
def test_new_file_gets_the_mode_open_would_give(tmp_path, umask, mask, writer):
    umask(mask)
    plain = tmp_path / "plain"
    with open(plain, "wb") as f:  # the OS's own answer for a new file under this umask
        f.write(b"x")
    target = tmp_path / "out.bin"
    WRITERS[writer](target)
    assert _mode(target) == _mode(plain) == 0o666 & ~mask
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("existing", [0o644, 0o600, 0o664, 0o755, 0o640])
@pytest.mark.parametrize("writer", list(WRITERS))
def test_replaced_file_keeps_its_mode(tmp_path, umask, existing, writer):
    umask(0o022)  # a umask that would give another mode, when it differs from the existing file's
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    os.chmod(target, existing)
    WRITERS[writer](target)
    assert _mode(target) == existing
    assert target.read_bytes() != b"old"


def test_a_failed_write_leaves_the_earlier_file_and_its_mode(tmp_path, umask):
    umask(0o077)
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    os.chmod(target, 0o644)
    with pytest.raises(RuntimeError), atomic_open(target, "wb") as f:
        f.write(b"half")
        raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old" and _mode(target) == 0o644
    assert not list(tmp_path.glob(".*.tmp"))
