"""Remote reading over loopback HTTP, served by a real nginx.

A checkpoint of about ``--size-mib`` MiB (one F32 tensor ``w`` of rows of
32 KiB, plus a small one) is served by nginx on 127.0.0.1 (started here
with a temporary configuration, as the tests do). For each operation the
time (median of ``--repeat`` runs, alternating) and the bytes nginx sent
(its access log, ``$body_bytes_sent``) are compared:

- the whole file: ``safetensors_c.load_file(URL)`` against one plain range
  GET of the same bytes (``http.client``, read straight into one buffer),
  and against the reference ``safetensors`` reading the file through
  fsspec's file object (``safetensors.numpy.load(fsspec.open(URL).read())``;
  the reference's ``_safe_open_handle`` opens ``file.name`` from the local
  disk, so it cannot read a remote file object);
- 1/8 of the rows (``w[:R // 8]``, contiguous): ``get_slice`` against a
  plain range GET of those bytes; the reference has to read the whole file;
- 1/8 of every row (``w[:, :1024]``, strided): ``get_slice`` against a plain
  range GET of the whole tensor followed by NumPy slicing.

    python benchmarks/remote.py [--size-mib 1024] [--repeat 3]
"""

import argparse
import http.client
import json
import os
import shutil
import statistics
import struct
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import numpy as np

import _paths  # noqa: F401  (the in-tree package when it is built in place)
import safetensors_c

sys.path.insert(0, os.path.join(_paths.ROOT, "tests"))
from remote_servers.nginx import Nginx, nginx_binary  # noqa: E402


def plain_range_get(url: str, start: int, end: int) -> bytearray:
    """One GET of bytes [start, end) into one buffer: the floor to beat."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        conn.request("GET", parts.path, headers={"Range": f"bytes={start}-{end - 1}"})
        response = conn.getresponse()
        assert response.status == 206, response.status
        out = bytearray(end - start)
        view = memoryview(out)
        got = 0
        while got < len(out):
            n = response.readinto(view[got:])
            if not n:
                raise OSError("short body")
            got += n
        return out
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    binary = nginx_binary()
    if binary is None:
        sys.exit("nginx is not installed (apt-get install -y nginx-light)")
    import fsspec
    import safetensors.numpy as reference

    rows = max(64, args.size_mib * 32)  # rows of 8192 float32 = 32 KiB
    base = Path(tempfile.mkdtemp(dir=os.environ.get("TMPDIR", "/tmp")))
    server = Nginx(binary, base).start()
    try:
        rng = np.random.default_rng(0)
        w = rng.random((rows, 8192), dtype=np.float32)
        path = server.root / "model.safetensors"
        safetensors_c.save_file({"w": w, "b": np.arange(1000, dtype=np.float32)}, str(path))
        size = path.stat().st_size
        url = server.url_of("model.safetensors")
        with open(path, "rb") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            w_offsets = json.loads(fh.read(n))["w"]["data_offsets"]
        data_start = 8 + n
        w_start, w_end = data_start + w_offsets[0], data_start + w_offsets[1]
        eighth = rows // 8
        row_bytes = 8192 * 4
        server.log()

        def ours_file():
            got = safetensors_c.load_file(url)
            assert got["w"].shape == w.shape

        def plain_file():
            plain_range_get(url, 0, size)

        def reference_file():
            with fsspec.open(url, "rb") as fh:
                got = reference.load(fh.read())
            assert got["w"].shape == w.shape

        def ours_rows():
            with safetensors_c.safe_open(url, framework="np") as f:
                got = f.get_slice("w")[:eighth]
            assert got.shape == (eighth, 8192)

        def plain_rows():
            buf = plain_range_get(url, w_start, w_start + eighth * row_bytes)
            np.frombuffer(buf, np.float32).reshape(eighth, 8192)

        def ours_cols():
            with safetensors_c.safe_open(url, framework="np") as f:
                got = f.get_slice("w")[:, :1024]
            assert got.shape == (rows, 1024)

        def plain_cols():
            buf = plain_range_get(url, w_start, w_end)
            np.ascontiguousarray(np.frombuffer(buf, np.float32).reshape(rows, 8192)[:, :1024])

        cases = [
            ("whole file", [("safetensors_c load_file", ours_file),
                            ("plain range GET", plain_file),
                            ("reference via fsspec file", reference_file)]),
            ("1/8 of the rows", [("safetensors_c get_slice", ours_rows),
                                 ("plain range GET", plain_rows)]),
            ("1/8 of every row", [("safetensors_c get_slice", ours_cols),
                                  ("plain range GET of the tensor", plain_cols)]),
        ]
        # One check that the results are right before timing anything.
        with safetensors_c.safe_open(url, framework="np") as f:
            np.testing.assert_array_equal(f.get_slice("w")[:eighth], w[:eighth])
            np.testing.assert_array_equal(f.get_slice("w")[:, :1024], w[:, :1024])
        server.log()
        print(f"file: {size / 2**20:.0f} MiB; tensor w {rows} x 8192 F32; "
              f"{args.repeat} runs each, medians; loopback nginx {server.url}")
        for title, contenders in cases:
            times = {name: [] for name, _ in contenders}
            moved = {}
            requests = {}
            for _ in range(args.repeat):
                for name, fn in contenders:
                    t0 = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t0)
                    log = server.log()
                    moved[name] = sum(e.sent for e in log)
                    requests[name] = len(log)
            print(f"\n{title}")
            floor = statistics.median(times[contenders[1][0]])
            for name, _ in contenders:
                t = statistics.median(times[name])
                print(f"  {name:32s} {t * 1000:9.1f} ms  {moved[name] / 2**20:9.1f} MiB "
                      f"in {requests[name]:5d} requests  ({moved[name] / (t * 2**30):5.2f} GiB/s, "
                      f"{t / floor:4.2f}x the plain GET)")
        print("\nThe reference has no ranged read over a file object (its _safe_open_handle "
              "opens file.name from the local disk), so any slice costs it the whole file, "
              "as in the first table.")
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
