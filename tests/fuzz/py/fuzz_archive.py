"""atheris target: format sniffing and archive handling (scan_buffer, the zip and tar
readers, the .npy header parser, convert's source dispatch).

Documented outcomes: scan_buffer always returns a report (every problem is a
finding); the readers raise only ConversionError (ArchiveError is one); convert's
reading raises only ConversionError. Anything else stops the fuzzer.
"""

import sys

import atheris
import numpy  # noqa: F401 - imported before instrumentation: its code is not ours

with atheris.instrument_imports(include=["safetensors_c"]):
    from safetensors_c import convert as _convert
    from safetensors_c._archive import TarArchive, ZipArchive, is_tar, npy_header
    from safetensors_c._pickle_vm import ConversionError
    from safetensors_c.scan import scan_buffer

_VERDICTS = ("safe", "unsafe", "unknown")


def TestOneInput(data: bytes) -> None:
    report = scan_buffer(data, "fuzz.bin")
    assert report.verdict in _VERDICTS
    str(report)
    report.to_dict()
    for reader in (ZipArchive, TarArchive):
        try:
            archive = reader(data, "fuzz.bin")
        except ConversionError:
            continue
        for member in archive.members:
            try:
                if reader is ZipArchive:
                    archive.read(member, 1 << 20, keep=False)
                    archive.head(member, 64)
                else:
                    archive.data(member)
            except ConversionError:
                pass
    is_tar(data)
    try:
        npy_header(data, "fuzz.npy")
    except ConversionError:
        pass
    try:
        _convert._read_source("fuzz.bin", data, None, None)
    except ConversionError:
        pass


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
