"""detspec's spec: what "correct" means, as data.

- ``spec.config``      every Base-RCNN-FPN number, each field citing its source; the two profiles
- ``spec.clauses``     the clause registry (stable IDs for each statement of the spec)
- ``spec.contract``    the names and Protocols every implementation exposes
- ``spec.tolerances``  per-dtype tolerances, per-component overrides and the ratio rule
- ``spec.validate``    which inputs are errors, with which messages
- ``spec.strategies``  hypothesis strategies and profiles (imports hypothesis; tests only)

Depends on torch only (strategies also on hypothesis).
"""

SPEC_VERSION = "2026.11.0"
