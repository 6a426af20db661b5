"""detspec, the application: the conformance runner and report, the pytest plugin and the CLI.

Floors (imports only point down; nothing imports a floor above its own):

- ``commands/`` + ``cli.py``: one module per ``detspec`` subcommand (``add_parser`` + ``run``), registered in
  one list by cli.py; ``bench/__main__``, ``demo/__main__`` and ``vectors/__main__`` run the same commands.
- domain tools: ``bench/`` (benchmark tables, baselines, suites), ``demo/`` (reduced model, training loop,
  the demo), ``vectors/`` (golden vectors), ``evaluation`` (COCOeval), ``data/`` (synthetic dataset),
  ``video`` (multi-view classification), ``checkpoints`` and ``mvit_checkpoints`` (weights into detspec's
  layout), ``impls`` + ``report`` + ``plugin`` + ``conformance/`` (the conformance suite and its clause table).
- ``io/``: every file read or written: atomic writes, images, videos, COCO files, the category map.

Below detspec: ``reference``, ``fast`` and ``spec``.
"""

__version__ = "0.1.0"
