"""atheris target: the pickle interpreter (convert and scan modes) and the opcode walk.

Documented outcomes: a value, ConversionError (UnsafePickleError is one). Anything
else (IndexError, RecursionError, struct.error, ...) is a bug and stops the fuzzer.
"""

import sys

import atheris
import numpy  # noqa: F401 - imported before instrumentation: its code is not ours

with atheris.instrument_imports(include=["safetensors_c"]):
    from safetensors_c._archive import walk_pickle
    from safetensors_c._pickle_vm import ConversionError, Machine, Opaque


def _persistent(pid):
    return Opaque("storage")


def TestOneInput(data: bytes) -> None:
    for scan in (False, True):
        machine = Machine(data, 0, scan=scan, persistent_load=_persistent, label="fuzz")
        try:
            machine.run()
        except ConversionError:
            pass
    walk = walk_pickle(data, persistent=True)
    assert walk.status in ("stop", "fail") and 0 <= walk.end <= len(data) + 2**64


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
