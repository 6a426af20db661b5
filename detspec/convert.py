"""``detspec convert``: checkpoints into detspec's layout (Faster R-CNN through detspec.checkpoints; MViT here).

MViT (``--from torchvision-mvit``): detspec's MViT has torchvision's state-dict layout, so conversion is a check
and a copy. The file is read as untrusted input (:func:`detspec.checkpoints.read_checkpoint`: ``weights_only=True``
or the restricted unpickler), then checked in this order, each failure one :class:`CheckpointError` naming SRC:

1. it is a state dict (bare, or under "model" / "state_dict") of this MViT: a Faster R-CNN or other foreign
   checkpoint is "not an MViT checkpoint", another MViT config's weights name the right ``--model``;
2. its values are float weights (:func:`detspec.checkpoints.float32_weights`: float16 / bfloat16 / float64
   converted to float32 with a note, integer / bool / complex / NaN / infinite refused naming the keys; MViT has
   no integer buffers);
3. its keys and shapes are exactly the model's (missing, unexpected and misshaped keys listed).

DST is checked before SRC is read (its directory exists, it is not a directory, it is not SRC under any name) and
written atomically, as float32 in the model's key order.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from detspec.checkpoints import CheckpointError

_LIST = 8  # keys listed per kind in a layout error


def _mvit_names() -> list[str]:
    from spec.mvit import MVIT_CONFIGS

    return sorted(MVIT_CONFIGS)


def mvit_model(name: str, impl: str = "fast"):
    from spec.mvit import MVIT_CONFIGS

    if name not in MVIT_CONFIGS:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(MVIT_CONFIGS)}")
    module = __import__(impl).MViT
    return module(MVIT_CONFIGS[name])


def mvit_layout(name: str) -> dict[str, tuple[int, ...]]:
    """An MViT config's state-dict layout (key -> shape, module order), built on the meta device: no memory."""
    import torch

    with torch.device("meta"):
        model = mvit_model(name)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _state_dict_of(obj: object, origin: str) -> Mapping[str, object]:
    if isinstance(obj, Mapping):
        for wrapper in ("model", "state_dict"):
            if isinstance(obj.get(wrapper), Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping) or not obj:
        what = "an empty mapping" if isinstance(obj, Mapping) else f"a {type(obj).__name__}"
        raise CheckpointError(f"{origin}: the file holds {what}; expected an MViT state dict (name -> tensor)")
    bad = [k for k in obj if not isinstance(k, str)]
    if bad:
        raise CheckpointError(f"{origin}: state-dict keys must be strings, got {bad[:_LIST]!r}")
    return obj


def _check_family(keys: list[str], name: str, expected: Mapping[str, tuple[int, ...]], origin: str) -> None:
    """Refuse a file that is not an MViT state dict at all (a detector, a classifier of another family)."""
    from detspec.checkpoints import guess_family

    if sum(k in expected for k in keys) * 2 >= len(expected):
        return
    family = guess_family(keys)
    sample = ", ".join(keys[:3])
    if family in ("torchvision", "detectron2"):
        raise CheckpointError(f"{origin}: not an MViT checkpoint: its keys ({sample}, ...) are a {family} Faster "
                              f"R-CNN's; convert it with --from {family}")
    raise CheckpointError(f"{origin}: not an MViT checkpoint: {len(keys)} keys such as {sample}; expected {name}'s "
                          f"{len(expected)} keys such as {', '.join(list(expected)[:3])}")


def _check_layout(state: Mapping[str, object], name: str, expected: Mapping[str, tuple[int, ...]],
                  origin: str) -> None:
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != expected[k]]
    if not (missing or unexpected or wrong):
        return
    hint = ""
    for other in _mvit_names():  # another config's weights: name the right --model
        if other != name:
            layout = mvit_layout(other)
            if layout.keys() == state.keys() and all(tuple(state[k].shape) == s for k, s in layout.items()):
                hint = f" (it matches {other}: pass --model {other})"
    lines = [f"{origin} does not match {name}'s layout ({len(missing)} missing, {len(unexpected)} unexpected, "
             f"{len(wrong)} misshaped keys){hint}:"]
    lines += [f"  missing: {k}" for k in missing[:_LIST]] + [f"  unexpected: {k}" for k in unexpected[:_LIST]]
    lines += [f"  shape {k}: {list(state[k].shape)} != {list(expected[k])}" for k in wrong[:_LIST]]
    raise CheckpointError("\n".join(lines))


def load_mvit_state(path: str, name: str, notes: list[str] | None = None) -> dict:
    """Read and check an MViT checkpoint for config ``name``: float32 tensors in the model's key order.

    Raises CheckpointError (or OSError) with a message naming ``path``; conversion notes go into ``notes``.
    """
    from detspec.checkpoints import _to_tensor, float32_weights, read_checkpoint

    origin = str(path)
    expected = mvit_layout(name)
    state = _state_dict_of(read_checkpoint(path), origin)
    _check_family(list(state), name, expected, origin)
    tensors = float32_weights({k: _to_tensor(k, v, origin) for k, v in state.items()}, origin, notes)
    _check_layout(tensors, name, expected, origin)
    return {k: tensors[k] for k in expected}


def cmd_convert(args: argparse.Namespace) -> int:
    from detspec.fileio import check_output

    if args.source != "torchvision-mvit":  # Faster R-CNN checkpoints (check_output and atomic write in there)
        from detspec.checkpoints import convert_main

        convert_main(args.src, args.dst, args.source)
        return 0

    import torch

    from detspec.checkpoints import _compact
    from detspec.fileio import UserError, atomic_save

    check_output(args.dst, inputs=[args.src])  # before reading: never overwrite SRC, fail before the work
    notes: list[str] = []
    state = {k: _compact(v) for k, v in load_mvit_state(args.src, args.model, notes).items()}
    try:
        atomic_save(args.dst, lambda f: torch.save(state, f))
    except OSError as exc:  # a full disk, a read-only directory: the earlier DST (if any) is still there
        raise UserError(f"{args.dst}: cannot write the output ({exc.strerror or exc}); nothing was changed") from None
    for note in notes:
        print(f"note: {args.src}: {note}")
    print(f"wrote {args.dst}: {len(state)} tensors, {sum(t.numel() for t in state.values()):,} values")
    return 0


def add_parser(sub) -> argparse.ArgumentParser:
    convert = sub.add_parser("convert", help="convert a checkpoint into detspec's layout")
    convert.add_argument("src")
    convert.add_argument("dst")
    convert.add_argument("--from", dest="source", required=True,
                         choices=("torchvision-mvit", "detectron2", "torchvision", "auto"),
                         help="the checkpoint's origin: detectron2 (model_final_*.pkl or .pth) or torchvision "
                              "(fasterrcnn_resnet50_fpn .pth) Faster R-CNN, auto to recognise those, or "
                              "torchvision-mvit")
    convert.add_argument("--model", default="mvit_b_16x4", choices=_mvit_names(),
                         help="torchvision-mvit only: mvit_b_16x4 (mvit_v1_b), mvit_v2_s or mvit_b_16")
    convert.set_defaults(func=cmd_convert)

    return convert
