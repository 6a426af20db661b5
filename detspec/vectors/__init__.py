"""Golden vectors: the contract's inputs and expected outputs as plain numpy files, for ports outside Python.

  detspec vectors export DIR [--seed N] [--force]
      Write DIR/manifest.json and one DIR/<component>__<case>.npz per case, each file atomically. Deterministic:
      the same seed, detspec and torch give byte-identical files (the .npz members carry a fixed timestamp).
      DIR may be missing, empty, or hold an earlier set of this format version with the same seed (re-exporting
      it, e.g. after a spec change, replaces its files and removes its .npz files the new set does not write;
      other files such as a README are left alone). Any other non-empty DIR (unrelated files, a set with
      another seed or format version, an unreadable manifest) is refused unless --force is given.

  detspec vectors check DIR --impl NAME [--device cpu|cuda]
      Run every case against an implementation (reference, fast, torchvision, module[:attribute] or
      file.py, as in ``detspec check``) and print one row per component: pass, FAIL with the largest
      error, or not implemented. Exits 1 if any case fails, 2 on a usage error (no such directory, an
      --impl that does not resolve) or a malformed set (see "A set is data" in format.py); never 0 unless every
      case was checked.

The set (``vectors/v1`` in the repository) and its format are described in detspec/vectors/format.py.

The package, one module per job (imports point down the list):

- ``format``: the file format (constants, COMPONENTS, the manifest and .npz rules) and reading and validating a
  set: "A set is data, never code" (``load_set``, ``load_case``);
- ``case``: the ``Case`` record and the input-array helpers cases are written with;
- ``spec_cases``: the hand-derived cases (expected values from the spec, derivations in comments);
- ``seeded_cases``: the seeded random cases (expected values from the reference in float64);
- ``exporter``: ``build_cases`` and ``export`` (writing a set);
- ``checker``: ``check``, ``compare`` and the result table.

The commands are detspec/commands/vectors.py; ``python -m detspec.vectors`` runs them too.
"""

from detspec.vectors.case import Case
from detspec.vectors.checker import (
    CaseResult,
    CheckReport,
    ComponentResult,
    check,
    compare,
    current_spec_hash,
    format_table,
)
from detspec.vectors.exporter import build_cases, export
from detspec.vectors.format import (
    COMPONENTS,
    DEFAULT_SEED,
    FORMAT,
    FORMAT_VERSION,
    INPUT_FLOAT,
    MANIFEST,
    MAX_CASE_BYTES,
    SKIPPED,
    VectorsError,
    load_case,
    load_set,
)

__all__ = [
    "COMPONENTS", "DEFAULT_SEED", "FORMAT", "FORMAT_VERSION", "INPUT_FLOAT", "MANIFEST", "MAX_CASE_BYTES", "SKIPPED",
    "Case", "CaseResult", "CheckReport", "ComponentResult", "VectorsError", "build_cases", "check", "compare",
    "current_spec_hash", "export", "format_table", "load_case", "load_set",
]
