"""Builds the C extension: the core (csrc/core) plus the binding (csrc/python)."""

import os
from glob import glob

import numpy
from setuptools import Extension, setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

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

# --- compatibility switch: start-up hook (owner: safetensors_c.compat) -------------------------
# SAFETENSORS_C_COMPAT=1 needs a .pth file, and the small top-level module it imports, at the top
# of site-packages. A wheel installs whatever lies at the root of build_lib there, so build_py
# copies both files to that root; an editable wheel carries only what its strategy writes, so
# editable_wheel adds the same two files to it (they are copies: the logic lives in
# safetensors_c/compat.py, which stays editable).
STARTUP_FILES = tuple(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "startup", name)
    for name in ("safetensors_c_compat.pth", "_safetensors_c_startup.py")
)


class build_py_with_startup(build_py):
    def run(self):
        super().run()
        for source in STARTUP_FILES:
            self.copy_file(source, os.path.join(self.build_lib, os.path.basename(source)))

    def get_outputs(self, include_bytecode=True):
        return super().get_outputs(include_bytecode) + [
            os.path.join(self.build_lib, os.path.basename(s)) for s in STARTUP_FILES
        ]


class _StrategyWithStartup:
    """Wraps setuptools' editable strategy: writes the start-up files into the wheel too."""

    def __init__(self, strategy):
        self.strategy = strategy

    def __enter__(self):
        self.strategy.__enter__()
        return self

    def __exit__(self, *exc_info):
        return self.strategy.__exit__(*exc_info)

    def __call__(self, wheel, files, mapping):
        self.strategy(wheel, files, mapping)
        for source in STARTUP_FILES:
            with open(source, "rb") as f:
                wheel.writestr(os.path.basename(source), f.read())


class editable_wheel_with_startup(editable_wheel):
    def _select_strategy(self, name, tag, build_lib):
        return _StrategyWithStartup(super()._select_strategy(name, tag, build_lib))


STARTUP_CMDCLASS = {"build_py": build_py_with_startup, "editable_wheel": editable_wheel_with_startup}
# --- end of the compatibility switch's section ----------------------------------------------

setup(ext_modules=[core], cmdclass=STARTUP_CMDCLASS)
