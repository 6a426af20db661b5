"""Image files: reading them under one set of pixel rules, the model's input format, and drawn detections.

Pixels. ``load_image`` turns every image into RGB uint8 [3, H, W]:
  - 8-bit images (modes 1, L, P, LA, PA, RGB, RGBA, CMYK, YCbCr): Pillow's convert("RGB"); alpha is dropped;
  - 16-bit greyscale (modes I;16, I;16B, ...; and mode I when every value lies in 0..65535): each value v
    becomes round(v * 255 / 65535), copied into the three channels (Pillow's own convert would clip it to 255);
  - refused: 16-bit-per-channel colour (48/64-bit PNG or TIFF; Pillow reads them by dropping the low byte),
    mode I with a value outside 0..65535, and floating-point images (mode F): convert them to 8 bits first.
Any file that cannot be read as an image (missing, a directory, not an image, truncated, or refused by these
rules) raises :class:`~detspec.io.fileio.UserError` naming the file and the problem.

``to_profile_format`` turns RGB uint8 into the float input of a profile (channel order and pixel scale).
``draw`` writes an image with detections drawn on it as a PNG, atomically.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from detspec.io.fileio import UserError, atomic_save, naming_write_errors

# Pillow raw modes of 16-bit-per-channel colour data, which it decodes to 8 bits by dropping the low byte
_COLOUR_16 = re.compile(r"(RGB|RGBA|RGBX|RGBa|LA|La|PA|CMYK|YCbCr|LAB|HSV);16[BLN]")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "no detail"
    return f"{type(exc).__name__}: {text}"


def _raw_modes(im) -> list[str]:
    modes = []
    for tile in getattr(im, "tile", None) or ():
        args = tile[3] if len(tile) > 3 else None
        if isinstance(args, (tuple, list)) and args:
            args = args[0]
        if isinstance(args, str):
            modes.append(args)
    return modes


def _to_rgb8(im, path: Path) -> np.ndarray:
    """A loaded PIL image -> [H, W, 3] uint8, by the pixel rules of the module docstring."""
    mode = im.mode
    if mode == "F":
        raise UserError(f"{path}: a floating-point image (mode F); detect reads 8-bit and 16-bit images only, "
                        "convert it to 8 bits first")
    if mode == "I" or mode.startswith("I;16"):
        values = np.asarray(im).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise UserError(f"{path}: a 32-bit integer image (mode {mode}) with values from {values.min()} to "
                            f"{values.max()}, outside 16 bits (0..65535); convert it to 8 bits first")
        # round(v * 255 / 65535) in integers: v * 255 % 65535 is never 65535 / 2 (odd), so no ties
        grey = ((values * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def load_image(path: str | Path) -> torch.Tensor:
    """An image file -> RGB uint8 [3, H, W] (pixel rules in the module docstring).

    Any file that cannot be read as an image (missing, a directory, not an image, truncated, 16-bit colour,
    floating point) raises UserError naming the file and the problem.
    """
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{p} is a directory, not an image file")
    if not p.exists():
        raise UserError(f"{p}: no such file")
    try:
        with Image.open(p) as im:
            sixteen = [m for m in _raw_modes(im) if _COLOUR_16.fullmatch(m)]
            if sixteen:
                raise UserError(f"{p}: a 16-bit-per-channel colour image ({im.format} {sixteen[0]}), which Pillow "
                                "reads by dropping the low byte; convert it to 8 bits (or 16-bit greyscale) first")
            im.load()
            rgb = _to_rgb8(im, p)
    except UserError:
        raise
    except Exception as exc:  # anything Pillow raises while identifying or decoding the file
        raise UserError(f"{p}: cannot read it as an image ({_one_line(exc)})") from None
    return torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).contiguous()  # a writable copy


def to_profile_format(rgb: torch.Tensor, input_cfg) -> torch.Tensor:
    """RGB uint8 [3, H, W] -> float [3, H, W] in the profile's channel order and pixel scale."""
    x = rgb.to(torch.float32) * (input_cfg.pixel_scale / 255.0)
    if input_cfg.format == "BGR":
        x = x.flip(0)
    elif input_cfg.format != "RGB":
        raise ValueError(f"unsupported input format {input_cfg.format!r}")
    return x


def draw(rgb: torch.Tensor, boxes, scores, classes, names: list[tuple[int, str]], path: Path,
         threshold: float) -> int:
    """Draw the detections with score >= threshold onto the image and write it (atomically) as a PNG;
    returns how many were drawn."""
    image = Image.fromarray(rgb.permute(1, 2, 0).numpy().astype(np.uint8))
    canvas = ImageDraw.Draw(image)
    drawn = 0
    for box, score, cls in zip(boxes.tolist(), scores.tolist(), classes.tolist()):
        if score < threshold:
            continue
        hue = (cls * 67) % 255
        colour = (255 - hue, hue, (hue * 3) % 255)
        canvas.rectangle(box, outline=colour, width=2)
        canvas.text((box[0] + 2, box[1] + 1), f"{names[cls][1]} {score:.2f}", fill=colour)
        drawn += 1
    with naming_write_errors(path):
        atomic_save(path, lambda f: image.save(f, format="PNG"))
    return drawn
