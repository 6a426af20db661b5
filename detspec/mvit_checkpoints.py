"""MViT checkpoints: torchvision MViT state dicts checked against detspec's layout (``detspec convert --from
torchvision-mvit`` and ``detspec classify --weights``; Faster R-CNN checkpoints are detspec.checkpoints').

detspec's MViT has torchvision's state-dict layout, so conversion is a check and a copy. The file is read as
untrusted input (:func:`detspec.checkpoints.read_checkpoint`: ``weights_only=True`` or the restricted
unpickler), then checked in this order, each failure one :class:`CheckpointError` naming SRC:

1. it is a state dict (bare, or under "model" / "state_dict") of this MViT: a Faster R-CNN or other foreign
   checkpoint is "not an MViT checkpoint", another MViT config's weights name the right ``--model``;
2. its values are float weights (:func:`detspec.checkpoints.float32_weights`: float16 / bfloat16 / float64
   converted to float32 with a note, integer / bool / complex / NaN / infinite refused naming the keys; MViT has
   no integer buffers);
3. its keys and shapes are exactly the model's (missing, unexpected and misshaped keys listed).

``detspec convert`` checks DST before SRC is read (its directory exists, it is not a directory, it is not SRC under
any name) and writes it atomically, as float32 in the model's key order (detspec/commands/convert.py).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from detspec.checkpoints import CheckpointError, checkpoint_tensor, float32_weights, guess_family, read_checkpoint
from spec.mvit import MVIT_CONFIGS

_LIST = 8  # keys listed per kind in a layout error


def mvit_names() -> list[str]:
    """The MViT configs a checkpoint can be checked against (spec.mvit.MVIT_CONFIGS)."""
    return sorted(MVIT_CONFIGS)


def mvit_model(name: str, impl: str = "fast"):
    """A freshly initialized MViT of config ``name`` from the ``impl`` package ("fast" or "reference")."""
    if name not in MVIT_CONFIGS:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(MVIT_CONFIGS)}")
    module = __import__(impl).MViT
    return module(MVIT_CONFIGS[name])


def mvit_layout(name: str) -> dict[str, tuple[int, ...]]:
    """An MViT config's state-dict layout (key -> shape, module order), built on the meta device: no memory."""
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
    for other in mvit_names():  # another config's weights: name the right --model
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
    origin = str(path)
    expected = mvit_layout(name)
    state = _state_dict_of(read_checkpoint(path), origin)
    _check_family(list(state), name, expected, origin)
    tensors = float32_weights({k: checkpoint_tensor(k, v, origin) for k, v in state.items()}, origin, notes)
    _check_layout(tensors, name, expected, origin)
    return {k: tensors[k] for k in expected}
