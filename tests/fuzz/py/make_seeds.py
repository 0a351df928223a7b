"""Writes the seed corpora of the Python fuzz targets: make_seeds.py OUTDIR.

OUTDIR/pickle_vm, OUTDIR/archive and OUTDIR/index get small, valid and
hostile inputs (the scanner corpus of tests/test_scan_corpus.py where torch
and joblib are installed, plain pickles, .npy/.npz, zips and tars otherwise).
"""

import io
import json
import os
import pickle
import sys
import tarfile
import tempfile
import zipfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))  # tests/: the corpus builders


def _write(directory: str, name: str, data: bytes) -> None:
    with open(os.path.join(directory, name), "wb") as f:
        f.write(data)


def _samples() -> dict[str, bytes]:
    out = {
        "dict.pkl": pickle.dumps({"a": np.arange(3.0), "b": [1, "x", None]}, protocol=4),
        "p2.pkl": pickle.dumps({"a": np.ones(2, np.float32)}, protocol=2),
        "p0.pkl": pickle.dumps({"a": 1, "b": (2.5, "x")}, protocol=0),
        "evil.pkl": b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00true\x85R.",
    }
    buf = io.BytesIO()
    np.save(buf, np.arange(6, dtype=np.int16).reshape(2, 3))
    out["a.npy"] = buf.getvalue()
    buf = io.BytesIO()
    np.savez_compressed(buf, a=np.zeros(100), b=np.arange(3))
    out["a.npz"] = buf.getvalue()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, body in (("storages", pickle.dumps(0, protocol=2) * 2),
                           ("tensors", pickle.dumps(0, protocol=2)),
                           ("pickle", pickle.dumps({"x": 1}, protocol=2))):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    out["legacy.tar"] = buf.getvalue()
    try:
        from test_scan_corpus import build_corpus

        with tempfile.TemporaryDirectory() as tmp:
            for sample in build_corpus(tmp):
                with open(sample.path, "rb") as f:
                    data = f.read()
                if len(data) <= 256 << 10:
                    out[sample.name] = data
    except ImportError:  # no torch or joblib: the seeds above only
        pass
    return out


def main() -> None:
    root = sys.argv[1]
    dirs = {k: os.path.join(root, k) for k in ("pickle_vm", "archive", "index")}
    for d in dirs.values():
        os.makedirs(d, exist_ok=True)
    for name, data in _samples().items():
        _write(dirs["archive"], name, data)
        if not data.startswith((b"PK", b"\x93NUMPY")) and len(data) <= 64 << 10:
            _write(dirs["pickle_vm"], name, data)
        if data.startswith(b"PK"):
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                for i, info in enumerate(z.infolist()):
                    if info.filename.endswith(".pkl") and info.file_size <= 64 << 10:
                        _write(dirs["pickle_vm"], f"{name}.{i}.pkl", z.read(info))
    index = {"metadata": {"total_size": 16},
             "weight_map": {"a": "model-00001-of-00002.safetensors",
                            "b": "model-00002-of-00002.safetensors"}}
    _write(dirs["index"], "ok.json", json.dumps(index).encode())
    _write(dirs["index"], "dup.json", b'{"weight_map": {"a": "x", "a": "y"}}')
    _write(dirs["index"], "bad.json", b'{"weight_map": ["a"], "metadata": NaN}')
    _write(dirs["index"], "path.json", b'{"weight_map": {"a": "../../etc/passwd"}}')


if __name__ == "__main__":
    main()
