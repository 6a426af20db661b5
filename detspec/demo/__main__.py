"""``python -m detspec.demo ARGS`` (and ``torchrun --nproc_per_node N -m detspec.demo ARGS``): ``detspec demo``."""

import sys

from detspec.commands.demo import main

sys.exit(main())
