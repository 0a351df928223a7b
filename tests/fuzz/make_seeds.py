#!/usr/bin/env python3
"""Writes the fuzzers' seed corpora into tests/fuzz/build/corpus/<target>/.

    python3 tests/fuzz/make_seeds.py [--out DIR]

Seeds for fuzz_open are the crafted vectors of tests/vectors/ plus valid
files written by safetensors_c.save (every dtype, metadata, scalars, empty
tensors) when the extension is built; without it, equivalent files are made
by tests/vectors/make_vectors.py's pure-Python builder. fuzz_slice gets the
same valid files framed the way it reads them (mode byte 1, 16-bit length,
file, view parameters), and fuzz_write a few byte strings that describe
tables. Deterministic; the output directory is a build product (git-ignored).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
VECTORS = ROOT / "tests" / "vectors"
MAX_LEN = 65536  # run.sh's -max_len


def load_make_vectors():
    spec = importlib.util.spec_from_file_location("make_vectors", VECTORS / "make_vectors.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_vectors"] = module
    spec.loader.exec_module(module)
    return module


def saved_files(mv) -> list[bytes]:
    """Valid files from the writer (safetensors_c.save) or, failing that, mv."""
    codes = list(mv.BITS)
    tables = [
        [],
        [("w", "F32", [2, 3])],
        [("scalar", "F64", [])],
        [("empty", "U8", [0, 4]), ("x", "I16", [3])],
        [(f"t_{c.lower()}", c, [2, 4]) for c in codes],
        [("a", "BF16", [4]), ("b", "F8_E4M3", [8]), ("c", "BOOL", [5]), ("d", "C64", [1, 2])],
        [("packed4", "F4", [2, 2]), ("packed6", "F6_E2M3", [4]), ("q", "F6_E3M2", [1, 4])],
        [("n\u00e9\u20ac\U0001F600", "U64", [1]), ('q"\\\n\t\x01', "I8", [2])],
    ]
    metadata = [None, {}, {"format": "np"}, {"k": "v\u00e9\n\"x\"", "z": ""}]
    files = []
    try:
        sys.path.insert(0, str(ROOT))
        import numpy as np

        import safetensors_c
        from safetensors_c import packed
    except Exception as exc:  # not built: fall back to the pure-Python builder
        print(f"make_seeds: safetensors_c unavailable ({exc}); using make_vectors' builder")
        for i, table in enumerate(tables):
            meta = metadata[i % len(metadata)]
            files.append(mv.packed_file(table, metadata=meta))
        return files
    rng = np.random.default_rng(0)
    for i, table in enumerate(tables):
        tensors = {}
        for name, code, shape in table:
            if code in ("F4", "F6_E2M3", "F6_E3M2"):
                nbytes = int(np.prod(shape)) * mv.BITS[code] // 8
                raw = rng.integers(0, 256, nbytes, dtype=np.uint8)
                tensors[name] = packed(raw, code, shape)
            else:
                raw = rng.integers(0, 256, int(np.prod(shape)) * mv.BITS[code] // 8,
                                   dtype=np.uint8)
                if code == "BOOL":
                    raw &= 1
                dtype = safetensors_c._dtypes.numpy_dtype(code)
                tensors[name] = raw.view(dtype).reshape(shape)
        files.append(safetensors_c.save(tensors, metadata=metadata[i % len(metadata)]))
    return files


def write_corpus(directory: Path, seeds: list[bytes]) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.iterdir():
        old.unlink()
    count = 0
    for seed in seeds:
        if len(seed) > MAX_LEN:
            continue
        (directory / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
        count += 1
    return count


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "build" / "corpus")
    args = parser.parse_args(argv)
    mv = load_make_vectors()
    vectors = [p.read_bytes() for p in sorted(VECTORS.iterdir())
               if p.is_file() and p.suffix not in (".py", ".md") and p.name != "expected.json"]
    valid = saved_files(mv)

    # fuzz_slice: [1][len16][file][view parameters], and [0][table][view].
    views = [bytes([1, 0, 0x81, 2, 3, 0x84, 0, 0]), bytes([3, 1, 4, 2, 0x83, 5, 0x7c, 1, 2]),
             bytes([2, 0, 3, 5, 0xF0, 2, 0xF1, 0xF0, 7]), bytes(range(1, 40))]
    slice_seeds = []
    for f in valid + [v for v in vectors if len(v) < 4096]:
        for view in views:
            slice_seeds.append(bytes([1]) + struct.pack("<H", len(f)) + f + view)
    slice_seeds += [bytes([0]) + bytes((i + k) % 256 for k in range(48)) for i in range(0, 200, 25)]

    # fuzz_write: [count][has_metadata][metadata count][seed x8][per tensor ...].
    write_seeds = [bytes((n + i) % 256 for i in range(96)) for n in range(0, 256, 16)]
    write_seeds += [bytes([3, 1, 2]) + bytes(8) + bytes([2, 0, 1, 17, 2, 2, 3]) * 8,
                    bytes([1, 0, 0]) + bytes(8) + bytes([1, 22, 1, 1, 2]),
                    bytes([2, 1, 1]) + bytes(8) + bytes([1, 0xF0, 1, 3, 0xF0]) * 4]

    out = args.out
    counts = {
        "fuzz_open": write_corpus(out / "fuzz_open", vectors + valid),
        "fuzz_slice": write_corpus(out / "fuzz_slice", slice_seeds),
        "fuzz_write": write_corpus(out / "fuzz_write", write_seeds),
    }
    for target, n in counts.items():
        print(f"make_seeds: {n} seeds in {out / target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
