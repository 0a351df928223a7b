"""Which safetensors_c the benchmarks measure.

The in-tree package when it is built in place (``python setup.py build_ext
--inplace`` or an editable install); otherwise the installed one (``pip
install .``). Importing this module puts the right one first on sys.path;
``ROOT_FOR_WORKERS`` is what worker processes need on PYTHONPATH (or None).
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
_PACKAGE = os.path.join(ROOT, "safetensors_c")
BUILT_IN_PLACE = os.path.isdir(_PACKAGE) and any(
    name.startswith("_core") and name.endswith(".so") for name in os.listdir(_PACKAGE)
)
ROOT_FOR_WORKERS = ROOT if BUILT_IN_PLACE else None
if BUILT_IN_PLACE and ROOT not in sys.path:
    sys.path.insert(0, ROOT)
