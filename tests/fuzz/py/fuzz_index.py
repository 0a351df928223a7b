"""atheris target: the sharded checkpoint index reader (safetensors_c.sharded._read_index).

Documented outcomes: (weight_map, metadata), or SafetensorError (a ValueError with
code STC_ERR_INVALID_INDEX). Anything else stops the fuzzer.
"""

import os
import sys
import tempfile

import atheris
import numpy  # noqa: F401 - imported before instrumentation: its code is not ours

with atheris.instrument_imports(include=["safetensors_c"]):
    from safetensors_c import SafetensorError
    from safetensors_c.sharded import _read_index

_DIR = tempfile.mkdtemp(prefix="fuzz_index_", dir="/dev/shm" if os.path.isdir("/dev/shm")
                        else None)
_PATH = os.path.join(_DIR, "model.safetensors.index.json")


def TestOneInput(data: bytes) -> None:
    with open(_PATH, "wb") as f:
        f.write(data)
    try:
        weight_map, metadata = _read_index(_PATH)
    except SafetensorError as exc:
        assert exc.code == "STC_ERR_INVALID_INDEX", exc.code
        return
    assert isinstance(weight_map, dict)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items())
    assert metadata is None or isinstance(metadata, dict)


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
