"""Files the application writes (atomically, never over one of its own inputs, never half-written) and the JSON
files it reads.

Every file a ``detspec`` command writes (checkpoints, results JSON, reports, drawn PNGs, vectors) goes
through :func:`atomic_write`: the bytes go to a temporary file in the destination's directory, are flushed
and fsynced, and only then replace the destination with ``os.replace`` (atomic on POSIX and Windows). An
interrupt, a crash or a full disk leaves the earlier file as it was, or no file, never a truncated one. The
file gets the permissions an ordinary write would give: a replaced file keeps its mode, a new one gets
``0o666 & ~umask`` (not the temporary file's 0o600).

:func:`check_output` turns the usual output mistakes into one-line :class:`UserError` messages before any
work is done: a missing parent directory, an output that is a directory, and an output that is also one of
the command's inputs. :func:`naming_write_errors` makes an OSError met while writing name the file.

:func:`load_json` reads a JSON input file; its errors name the file and what it was for.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any


class UserError(ValueError):
    """A mistake in what the user asked for; the CLI prints it as one line and exits 2."""


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_output(path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), what: str = "output") -> Path:
    """Validate an output file path; returns it as a Path. Raises UserError naming the path and the problem."""
    out = Path(path)
    if str(path) == "":
        raise UserError(f"the {what} path is empty")
    if out.is_dir():
        raise UserError(f"{out}: the {what} is a directory; give a file name")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.exists():
        raise UserError(f"{out}: the {what}'s directory {parent} does not exist")
    if not parent.is_dir():
        raise UserError(f"{out}: {parent} is not a directory")
    for src in inputs:
        src_path = Path(src)
        if src_path.resolve() == out.resolve() or _same_file(src_path, out):
            raise UserError(f"{out}: the {what} is also an input ({src}); choose another path so the input "
                            "is not overwritten")
    return out


def _current_umask() -> int:
    """The process umask: from /proc/self/status on Linux, else by setting it and restoring it at once (there is
    no read-only call; the set-and-restore is not atomic for other threads creating files at that moment)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _final_mode(dest: Path) -> int:
    """The permission bits a replaced file keeps (its own mode), or those of a newly created file (0o666 & ~umask,
    as open() gives): mkstemp creates the temporary file 0o600, which would otherwise become the file's mode."""
    try:
        return os.stat(dest).st_mode & 0o7777
    except OSError:
        return 0o666 & ~_current_umask()


def _chmod_fd(fd: int, mode: int) -> None:
    if hasattr(os, "fchmod"):  # POSIX; on Windows the temporary file's permissions are already the usual ones
        os.fchmod(fd, mode)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on a clean exit it replaces ``path``, otherwise it is removed."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files; mode must be 'w' or 'wb', got {mode!r}")
    dest = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=str(dest.parent) or ".")
    try:
        with os.fdopen(fd, mode, encoding=encoding if "b" not in mode else None) as fh:
            yield fh
            fh.flush()
            _chmod_fd(fh.fileno(), _final_mode(dest))
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write ``data`` (bytes, or str as UTF-8) to ``path`` atomically."""
    with atomic_open(path, "wb") as fh:
        fh.write(data.encode("utf-8") if isinstance(data, str) else data)


def atomic_write_json(path: str | os.PathLike, obj: Any, **dumps_kwargs: Any) -> None:
    atomic_write(path, json.dumps(obj, **dumps_kwargs))


@contextlib.contextmanager
def naming_write_errors(path: str | os.PathLike) -> Iterator[None]:
    """Re-raise an OSError met while writing ``path`` as one line that names ``path`` (an fsync or rename error
    names no file, a mkstemp error names the temporary file)."""
    try:
        yield
    except OSError as exc:
        new = OSError(f"cannot write {path}: {exc.strerror or exc}")
        new.errno = exc.errno
        raise new from None


def load_json(path: str | os.PathLike, what: str = "JSON") -> Any:
    """Read a JSON file; FileNotFoundError / ValueError naming ``what`` and the path."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{what} file {p} is a directory, not a JSON file")
    if not p.is_file():
        raise FileNotFoundError(f"{what} file not found: {p}")
    try:
        with open(p, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} file {p} is not valid JSON: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{what} file {p} is not UTF-8 text: {exc}") from None
    except RecursionError:
        raise ValueError(f"{what} file {p} nests its JSON too deeply to read") from None


def atomic_save(path: str | os.PathLike, writer: Callable[[IO[bytes]], None]) -> None:
    """Atomically write a file produced by ``writer(fileobj)`` (``torch.save``, ``np.savez``, ``PIL`` ...)."""
    with atomic_open(path, "wb") as fh:
        writer(fh)
