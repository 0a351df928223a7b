"""What every client flow shares: run it, prove which safetensors served it, hand back tensors.

A flow is an ordinary program using a client library (transformers, diffusers, ...) exactly as
its users do; it knows nothing of safetensors_c. tests/test_clients.py runs each flow twice, in
processes of their own: once with SAFETENSORS_C_COMPAT=1 (``--expect safetensors_c``) and once
with SAFETENSORS_C_COMPAT=0 (``--expect reference``), and compares what they hand back.

While the flow runs, a profile hook (on every thread) records each call into a function of the
safetensors_c package and of the reference package. Afterwards the harness checks that the
package it was told to expect served the flow, that the other one was never called, and that
the flow's own expected entry points were among the calls (e.g. ``save_file``, ``safe_open``).

The result file (torch.save, no safetensors involved) holds the flow's tensors, the calls seen,
and a SHA-256 of every file the flow wrote under its work directory (see file_digest).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import threading
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import importlib.util  # noqa: E402


def _package_dir(name: str) -> str | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.realpath(list(spec.submodule_search_locations)[0]) + os.sep


def _reference_dir() -> str | None:
    # Where the real package lives on disk, found without importing it (so the switch is not
    # triggered): the distribution's files.
    from importlib import metadata

    try:
        dist = metadata.distribution("safetensors")
    except metadata.PackageNotFoundError:
        return None
    for file in dist.files or ():
        if file.name == "__init__.py" and file.parts[0] == "safetensors":
            return os.path.realpath(os.path.dirname(dist.locate_file(file))) + os.sep
    return None


class CallTrace:
    """Records calls into the two safetensors packages, on every thread, while active."""

    def __init__(self) -> None:
        self.ours = _package_dir("safetensors_c")
        self.reference = _reference_dir()
        self.calls: dict[str, set[str]] = {"safetensors_c": set(), "reference": set()}
        self._seen_codes: dict[object, tuple[str, str] | None] = {}
        self._lock = threading.Lock()

    def _classify_code(self, code) -> tuple[str, str] | None:
        hit = self._seen_codes.get(code, False)
        if hit is not False:
            return hit
        path = os.path.realpath(code.co_filename)
        result = None
        for package, root in (("safetensors_c", self.ours), ("reference", self.reference)):
            if root and path.startswith(root):
                where = path[len(root):]
                result = (package, f"{where}:{code.co_qualname}")
        self._seen_codes[code] = result
        return result

    def _profile(self, frame, event, arg):
        if event == "call":
            hit = self._classify_code(frame.f_code)
        elif event == "c_call":
            hit = self._classify_builtin(arg)
        else:
            return
        if hit is not None:
            with self._lock:
                self.calls[hit[0]].add(hit[1])

    @staticmethod
    def _classify_builtin(func) -> tuple[str, str] | None:
        module = getattr(func, "__module__", None) or ""
        owner = getattr(func, "__self__", None)
        if module.startswith("safetensors_c"):
            return ("safetensors_c", f"{module}.{func.__qualname__}")
        if module.startswith("safetensors._safetensors_rust"):
            return ("reference", f"{module}.{func.__qualname__}")
        owner_type = type(owner)
        owner_module = getattr(owner_type, "__module__", "") or ""
        if owner_module.startswith("safetensors_c"):
            return ("safetensors_c", f"{owner_module}.{owner_type.__qualname__}.{func.__name__}")
        # The reference's compiled classes (safe_open, its slices) report the module "builtins".
        if owner_module == "builtins" and owner_type.__qualname__ in ("safe_open", "PySafeSlice"):
            return ("reference", f"_safetensors_rust.{owner_type.__qualname__}.{func.__name__}")
        return None

    def __enter__(self) -> "CallTrace":
        threading.setprofile(self._profile)
        sys.setprofile(self._profile)
        return self

    def __exit__(self, *exc_info) -> None:
        sys.setprofile(None)
        threading.setprofile(None)


def check_switch(expect: str) -> None:
    """Fails unless ``import safetensors`` gives what ``expect`` names."""
    import safetensors
    import safetensors.torch

    import safetensors_c
    import safetensors_c.compat
    import safetensors_c.torch

    aliased = safetensors_c.compat.is_alias(safetensors)
    if expect == "safetensors_c":
        assert aliased, f"the switch is off: {safetensors!r}"
        assert safetensors.torch is safetensors_c.torch, safetensors.torch
        assert safetensors.safe_open is safetensors_c.safe_open
        assert safetensors.__safetensors_c_version__ == safetensors_c.__version__
    else:
        assert not aliased, f"the switch is on: {safetensors!r}"
        assert not hasattr(safetensors, "__safetensors_c_version__")
        assert safetensors.torch is not safetensors_c.torch


def file_digest(path: Path) -> str:
    """SHA-256 of a file; of a .safetensors file with two or more metadata keys, of its
    header with the metadata in sorted order plus its data.

    The reference keeps metadata in a hash map, so with several keys its order changes from
    run to run: only those files are compared modulo that order.
    """
    raw = path.read_bytes()
    if path.suffix == ".safetensors" and len(raw) >= 8:
        n = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8:8 + n])
        metadata = header.get("__metadata__") or {}
        if len(metadata) > 1:
            header["__metadata__"] = dict(sorted(metadata.items()))
            canonical = json.dumps(header).encode() + raw[8 + n:]
            return "metadata-sorted:" + hashlib.sha256(canonical).hexdigest()
    return hashlib.sha256(raw).hexdigest()


def hash_files(workdir: Path) -> dict[str, str]:
    return {
        str(path.relative_to(workdir)): file_digest(path)
        for path in sorted(workdir.rglob("*")) if path.is_file()
    }


def run(flow, entry_points: dict[str, list[str]] | None = None) -> None:
    """Runs ``flow(workdir) -> dict[str, torch.Tensor]`` as the command line says.

    ``entry_points``: for each package ("safetensors_c", "reference"), substrings of which each
    must match at least one recorded call (e.g. "torch.py:save_file").
    """
    parser = argparse.ArgumentParser()
    parser.add_argument("--expect", choices=("safetensors_c", "reference"), required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    import random

    import numpy
    import torch

    random.seed(0)
    numpy.random.seed(0)
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    check_switch(args.expect)
    args.workdir.mkdir(parents=True, exist_ok=True)
    trace = CallTrace()
    with trace:
        tensors = flow(args.workdir)
    other = "reference" if args.expect == "safetensors_c" else "safetensors_c"
    calls = {k: sorted(v) for k, v in trace.calls.items()}
    assert calls[args.expect], f"no call reached {args.expect}"
    assert not calls[other], f"{other} was called: {calls[other][:10]}"
    for needle in (entry_points or {}).get(args.expect, []):
        assert any(needle in c for c in calls[args.expect]), (
            f"{needle!r} not among the calls into {args.expect}: {calls[args.expect]}"
        )
    tensors = {k: v.detach().to("cpu") for k, v in tensors.items()}
    torch.save(
        {"tensors": tensors, "calls": calls, "files": hash_files(args.workdir)},
        args.out,
    )
    print(json.dumps({"expect": args.expect, "tensors": len(tensors), "calls": len(calls[args.expect])}))
