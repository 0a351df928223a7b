"""The extension exports only prefixed names: the core's ``stc_``, the
binding's ``stcpy_``, and the module's init function. An unprefixed extern
(the binding once had an ``open_header`` beside the core's static one) could
collide with another library linked into the same process."""

import glob
import os
import re
import shutil
import subprocess

import pytest

import safetensors_c._core

ALLOWED_PREFIXES = ("stc_", "stcpy_")
# What a sanitizer build adds of its own: its runtime's hooks and sections, and
# an ODR indicator "__odr_asan.<global>" beside each of our globals (whose own
# name must still carry a prefix).
INSTRUMENTATION_PREFIXES = ("__asan", "__ubsan", "__sanitizer", "__sancov", "__start_",
                            "__stop_")
ODR_INDICATOR = "__odr_asan."


@pytest.mark.skipif(shutil.which("nm") is None, reason="nm (binutils) is not installed")
def test_every_exported_symbol_is_prefixed():
    library = safetensors_c._core.__file__
    out = subprocess.run(["nm", "-g", "--defined-only", library], check=True,
                         capture_output=True, text=True).stdout
    names = [line.split()[-1] for line in out.splitlines() if line.strip()]
    names = [n[len(ODR_INDICATOR):] if n.startswith(ODR_INDICATOR) else n for n in names
             if not n.startswith(INSTRUMENTATION_PREFIXES)]
    assert "PyInit__core" in names
    stray = sorted(n for n in names
                   if n != "PyInit__core" and not n.startswith(ALLOWED_PREFIXES))
    assert not stray, f"unprefixed exported symbols: {stray}"


@pytest.mark.source_tree  # reads csrc/python/*.h
def test_the_binding_header_declares_only_prefixed_functions():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    declared = []
    for header in glob.glob(os.path.join(root, "csrc", "python", "*.h")):
        with open(header) as f:
            text = f.read()
        declared += re.findall(r"^[A-Za-z_][\w \*]*?\b(\w+)\(", text, re.M)
    assert declared
    stray = sorted(d for d in declared if not d.startswith(ALLOWED_PREFIXES))
    assert not stray, f"unprefixed binding functions: {stray}"
