"""``python -m detspec.bench ARGS``: the same as ``detspec bench ARGS``."""

import sys

from detspec.commands.bench import main

sys.exit(main())
