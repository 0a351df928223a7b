"""A description of the machine and the software under test."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as "0.12 0.34 0.56"."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram() -> str:
    try:
        with open("/proc/meminfo") as meminfo:
            kib = int(meminfo.readline().split()[1])
        return f"{kib / (1 << 20):.1f} GiB"
    except (OSError, ValueError, IndexError):
        return "unknown"


def _version(dist: str, missing: set) -> str:
    if dist.split("-")[0] in missing:
        return "not used (--without)"
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _git(root: str) -> str:
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--", "csrc",
                                "safetensors_c"], capture_output=True, text=True,
                               timeout=5).stdout.strip()
        return f"{head}{' (+ uncommitted changes)' if dirty else ''}" if head else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def describe(root: str, tmpdir: str, missing: set) -> list[tuple[str, str]]:
    """(field, value) rows for the results' machine table."""
    import numpy

    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    try:
        load = load_average().replace(" ", ", ")
    except OSError:
        load = "unknown"
    return [
        ("date (UTC)", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")),
        ("CPU", _cpu_model()),
        ("cores", f"{os.cpu_count()} logical, {affinity} usable"),
        ("RAM", _ram()),
        ("kernel", f"{platform.system()} {platform.release()}"),
        ("load average at start", load),
        ("temp dir", tmpdir),
        ("Python", f"{platform.python_implementation()} {sys.version.split()[0]}"),
        ("numpy", numpy.__version__),
        ("ml_dtypes", _version("ml_dtypes", missing)),
        ("torch", _version("torch", missing)),
        ("safetensors (reference)", _version("safetensors", missing)),
        ("safetensors_c", f"{_version_of_tree(root)} at git {_git(root)}"),
    ]


def _version_of_tree(root: str) -> str:
    # run.py has already put the in-tree package first when it is built in
    # place; otherwise this is the installed package.
    try:
        import safetensors_c

        return safetensors_c.__version__
    except Exception as exc:  # the build may be missing: say so, don't crash
        return f"unimportable ({type(exc).__name__})"
