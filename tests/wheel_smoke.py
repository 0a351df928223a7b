"""Checks an installed safetensors_c from outside the source tree.

    python tests/wheel_smoke.py

Run by tests/wheel_check.sh in each fresh environment it installs the package into (from the
sdist, and from the wheel with no compiler) and by cibuildwheel as each release wheel's
test-command. Needs only the package and its dependencies (NumPy, ml_dtypes). Checks that:

- ``import safetensors_c`` finds the installed package, not a source checkout;
- its ``__version__`` is the installed distribution's version;
- a small file with several dtypes saves and loads back exactly;
- the compatibility switch's start-up files are installed and work: with
  SAFETENSORS_C_COMPAT=1 a new interpreter's ``import safetensors`` is safetensors_c;
- the ``safetensors-c`` command is installed.

Prints one line per check and exits non-zero at the first that fails.
"""

import importlib.metadata
import os
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import ml_dtypes
import numpy as np

import safetensors_c

STARTUP_FILES = ("safetensors_c_compat.pth", "_safetensors_c_startup.py")


def check(condition, what):
    if not condition:
        sys.exit(f"wheel_smoke: FAILED: {what}")
    print(f"wheel_smoke: ok: {what}")


def main():
    package_dir = Path(safetensors_c.__file__).resolve().parent
    site_dirs = {Path(sysconfig.get_paths()[key]).resolve() for key in ("purelib", "platlib")}
    check(package_dir.parent in site_dirs,
          f"safetensors_c is imported from site-packages ({package_dir})")
    check(not (package_dir.parent / "setup.py").exists(), "no source checkout beside the package")

    installed = importlib.metadata.version("safetensors_c")
    check(safetensors_c.__version__ == installed,
          f"__version__ {safetensors_c.__version__!r} == installed version {installed!r}")

    tensors = {
        "weight": np.arange(24, dtype=np.float32).reshape(2, 3, 4),
        "bias": np.array([-1.5, 0.0, 2.25], dtype=ml_dtypes.bfloat16),
        "steps": np.array([1, 2, 3], dtype=np.int64),
        "mask": np.array([True, False], dtype=np.bool_),
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "smoke.safetensors")
        safetensors_c.save_file(tensors, path, metadata={"format": "np"})
        loaded = safetensors_c.load_file(path)
        with safetensors_c.safe_open(path, framework="np") as f:
            metadata = f.metadata()
    check(sorted(loaded) == sorted(tensors), "the saved names load back")
    for name, array in tensors.items():
        check(loaded[name].dtype == array.dtype and loaded[name].shape == array.shape
              and loaded[name].tobytes() == array.tobytes(), f"tensor {name!r} round-trips")
    check(metadata == {"format": "np"}, "the metadata round-trips")

    for name in STARTUP_FILES:
        check(any((d / name).is_file() for d in site_dirs), f"start-up file {name} installed")
    probe = ("import safetensors, safetensors_c; "
             "assert safetensors.safe_open is safetensors_c.safe_open, 'not the alias'; "
             "print(safetensors.__safetensors_c_version__)")
    env = dict(os.environ, SAFETENSORS_C_COMPAT="1")
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                            text=True, timeout=120, cwd=tempfile.gettempdir())
    check(result.returncode == 0 and result.stdout.strip() == installed,
          f"SAFETENSORS_C_COMPAT=1 makes `import safetensors` safetensors_c "
          f"(rc={result.returncode}, out={result.stdout.strip()!r}, err={result.stderr[-300:]!r})")

    script = Path(sysconfig.get_paths()["scripts"]) / "safetensors-c"
    check(script.is_file(), f"the safetensors-c command is installed ({script})")
    print("wheel_smoke: all checks passed")


if __name__ == "__main__":
    main()
