"""``python -m safetensors_c``: the safetensors-c command line."""

import sys

from .cli import main

sys.exit(main())
