"""``python -m detspec.vectors export|check ...``: the same commands as ``detspec vectors``."""

import sys

from detspec.commands.vectors import main

sys.exit(main())
