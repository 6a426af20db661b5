"""Video files: a [T, H, W, 3] ``.npy`` array or a video file decoded with PyAV (the ``video`` extra).

``load_video`` returns the frames as a [T, H, W, C] tensor without judging their values:
:func:`detspec.video.video_to_unit` checks the dtype and range (uint8 0-255 or floating point in [0, 1]). It
refuses, with one :class:`~detspec.io.fileio.UserError` line naming the file: a missing file, a directory, an
unreadable or truncated ``.npy`` (read with ``allow_pickle=False``), an ``.npz`` archive, a dtype that is not
bool / integer / float / complex of at most 8 bytes, and a video file PyAV cannot decode or that has no video
stream or no frames.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from detspec.io.fileio import UserError


def _load_npy(path: Path):
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:  # truncated, not an .npy, object arrays, a directory ...
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, IsADirectoryError) or path.is_dir():
            detail = "it is a directory"
        raise UserError(f"{path}: not a readable .npy array ({detail})") from None
    if not isinstance(array, np.ndarray):  # an .npz archive
        raise UserError(f"{path}: expected one [T, H, W, 3] array (.npy), got a {type(array).__name__}")
    if array.dtype.kind not in "biufc" or array.dtype.itemsize > 8:
        raise UserError(f"{path}: a video must be uint8 (0-255) or floating point in [0, 1], got dtype {array.dtype}")
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return torch.from_numpy(np.ascontiguousarray(array))


def _decode(path: Path):
    try:
        import av  # PyAV, the `video` extra: optional, imported when a video file is decoded
    except ImportError:
        raise UserError(f"reading {path} needs PyAV (pip install 'detspec[video]'), or pass frames as a "
                        "[T, H, W, 3] .npy file") from None
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise UserError(f"{path}: the file has no video stream")
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    except UserError:
        raise
    except Exception as exc:  # av.error.* (InvalidDataError for a truncated file), OSError ...
        reason = getattr(exc, "strerror", None) or f"{type(exc).__name__}: {exc}"
        raise UserError(f"{path}: cannot decode the video ({reason}; a truncated or corrupt file?)") from None
    if not frames:
        raise UserError(f"{path}: the video has no frames")
    return torch.from_numpy(np.stack(frames))  # [T, H, W, 3] uint8


def load_video(path: str):
    """The video file as a [T, H, W, C] tensor (not yet checked: :func:`detspec.video.video_to_unit` does that)."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{p}: is a directory, not a video file")
    if not p.exists():
        raise UserError(f"{p}: no such video file")
    return _load_npy(p) if p.suffix.lower() == ".npy" else _decode(p)
