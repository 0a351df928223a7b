"""Builds the C extension: the core (csrc/core) plus the binding (csrc/python)."""

import os
from glob import glob

import numpy
from setuptools import Extension, setup

# Strict warnings for the core and the binding. (-Wundef and -Wconversion are
# left to the core's own build in tests/c: NumPy's and CPython's headers trip them.)
STRICT_WARNINGS = [
    "-std=c11",
    "-Wall",
    "-Wextra",
    "-Wshadow",
    "-Wstrict-prototypes",
    "-Wmissing-prototypes",
    "-Wpointer-arith",
    "-Wvla",
    "-Wformat=2",
]

extra_compile_args = STRICT_WARNINGS + ["-D_POSIX_C_SOURCE=200809L", "-O2"]
extra_link_args = []
# STC_SANITIZE=address,undefined builds the extension for the sanitized test run.
sanitize = os.environ.get("STC_SANITIZE")
if sanitize:
    extra_compile_args += [f"-fsanitize={sanitize}", "-fno-omit-frame-pointer", "-g", "-O1"]
    extra_link_args += [f"-fsanitize={sanitize}"]
if os.environ.get("STC_WERROR"):
    extra_compile_args.append("-Werror")

core = Extension(
    "safetensors_c._core",
    sources=sorted(glob("csrc/core/*.c")) + sorted(glob("csrc/python/*.c")),
    depends=sorted(glob("csrc/core/*.h")) + sorted(glob("csrc/python/*.h")),
    include_dirs=[numpy.get_include()],
    extra_compile_args=extra_compile_args,
    extra_link_args=extra_link_args,
)

setup(ext_modules=[core])
