"""Print markdown ratio tables from pytest-benchmark's ``--benchmark-json`` output.

    python benchmarks/report.py out/bench.json

The tables are detspec.bench.report's (installed with detspec, so that ``detspec bench`` needs no source checkout);
this script is kept for the command line above (tox -e bench, BENCHMARKS.md).
"""

import sys

from detspec.bench.report import main

if __name__ == "__main__":
    sys.exit(main())
