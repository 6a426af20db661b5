"""ONNX export of detspec's contract functions and an ONNX Runtime port of the contract.

- ``detspec.onnx.components``: each contract function ONNX can express as an exported ONNX graph
  (``export_component(name, path)``; ``component_model(name, dtype, **static)``).
- ``detspec.onnx.runtime``: ``namespace()``, the port ``detspec check --impl onnxruntime`` runs: every name
  it has converts torch tensors to numpy, runs the exported graph on ONNX Runtime (CPU) and converts back.
- ``detspec.onnx.detector``: the whole fast detector as one model (``export_detector``) and
  ``run_onnx_detector(path, images)``, which returns fast.FasterRCNN's eval output.

Needs the optional extra: ``pip install -e '.[onnx]'`` (onnx, onnxruntime, onnxscript). See SEMANTICS.md for
the clauses where ONNX's operators differ from the spec and how the export bridges them.
"""
