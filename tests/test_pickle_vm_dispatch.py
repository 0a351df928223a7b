"""The pickle machine as a table of opcode handlers: what the table holds, and what it refuses.

The adversary writes the opcodes. The table must know every opcode pickle
defines (a refused one is refused by the table, not by luck), every refused
opcode must stop a conversion before its argument is read, a byte that is
no opcode must stop it too, and no handler may leave its result on the
stack that MARK put aside.
"""

from __future__ import annotations

import inspect
import pickle
import pickletools

import numpy as np
import pytest

from safetensors_c._pickle_vm import (
    REFUSED_OPCODES,
    ConversionError,
    Machine,
    UnsafePickleError,
)
from safetensors_c.convert import convert, scan

OPCODES = {ord(op.code.encode("latin-1")): op.name for op in pickletools.opcodes}
REFUSED = {code[0]: name for code, (name, _why) in REFUSED_OPCODES.items()}


def _is_refusal(handler) -> bool:
    return handler.__qualname__.startswith("_refused.")


def _body_lines(function) -> int:
    lines = inspect.getsource(function).splitlines()
    return len([line for line in lines if line.strip() and not line.strip().startswith("#")])


# MARK: the shape of the table ------------------------------------------------------


def test_the_table_knows_every_pickle_opcode_and_nothing_else():
    assert set(Machine._DISPATCH) == set(OPCODES)


def test_exactly_the_refused_opcodes_run_behind_the_refusal():
    refused = {code for code, handler in Machine._DISPATCH.items() if _is_refusal(handler)}
    assert refused == set(REFUSED)
    assert {OPCODES[code] for code in refused} == set(REFUSED.values())


def test_the_loop_and_every_handler_are_small():
    assert _body_lines(Machine.run) <= 25
    for handler in set(Machine._DISPATCH.values()):
        if _is_refusal(handler):
            handler = inspect.getclosurevars(handler).nonlocals["interpret"]
        assert _body_lines(handler) <= 20, handler.__qualname__


# MARK: what the table refuses --------------------------------------------------------


@pytest.mark.parametrize("code", sorted(REFUSED), ids=lambda c: REFUSED[c])
def test_a_refused_opcode_stops_conversion_before_its_argument_is_read(code):
    # What follows the opcode could never be read: truncated, not a line, no MARK.
    body = b"\x80\x02" + bytes([code])
    with pytest.raises(UnsafePickleError, match=f"opcode {REFUSED[code]} ") as info:
        Machine(body).run()
    assert info.value.found == f"opcode {REFUSED[code]}"
    assert "at byte 2" in str(info.value)


@pytest.mark.parametrize("code", sorted(REFUSED), ids=lambda c: REFUSED[c])
def test_scan_mode_records_a_refused_opcode_first(code):
    machine = Machine(b"\x80\x02" + bytes([code]) + b"\n\n.", scan=True)
    try:
        machine.run()
    except ConversionError:  # what follows is garbage for most: the finding is kept
        pass
    first = machine.findings[0]
    assert (first.kind, first.name, first.offset, first.safe) == ("opcode", REFUSED[code], 2, False)


@pytest.mark.parametrize("code", sorted(set(range(256)) - set(OPCODES)))
def test_a_byte_that_is_no_opcode_is_refused(code):
    with pytest.raises(UnsafePickleError, match=f"unknown opcode 0x{code:02x}") as info:
        Machine(b"\x80\x02" + bytes([code]) + b".").run()
    assert info.value.found == f"0x{code:02x}"
    machine = Machine(b"\x80\x02" + bytes([code]) + b".", scan=True)
    with pytest.raises(ConversionError, match=f"unknown opcode 0x{code:02x} at byte 2"):
        machine.run()
    assert [(f.kind, f.name, f.note) for f in machine.findings] == [
        ("opcode", f"0x{code:02x}", "unknown opcode")]


# MARK: results land on the right stack -------------------------------------------------


def test_a_frozenset_inside_a_dict_stays_in_the_dict(tmp_path):
    # FROZENSET pops the items since MARK: its result once went to the stack
    # MARK had put aside, so the dict around it lost a value and the scan
    # called a harmless file unknown.
    src = tmp_path / "tags.pkl"
    src.write_bytes(pickle.dumps({"w": np.arange(3), "tags": frozenset({1, 2})}, protocol=4))
    assert Machine(src.read_bytes()).run()["tags"] == frozenset({1, 2})
    assert scan(src).verdict == "safe"
    report = convert(src, tmp_path / "tags.safetensors")
    assert report.tensors == ["w"] and report.skipped == ["tags"]


def test_a_frozenset_as_a_dict_key_and_in_a_tuple():
    value = {frozenset({"a"}): (frozenset(), frozenset({(1, 2)})), "n": 1}
    for protocol in (4, 5):
        assert Machine(pickle.dumps(value, protocol=protocol)).run() == value


def test_a_frozenset_of_an_unhashable_item_is_refused():
    body = b"\x80\x04(]\x91."  # FROZENSET over [ [] ]
    with pytest.raises(ConversionError, match="unhashable set item at byte 4"):
        Machine(body).run()


def test_a_frozenset_nested_too_deep_to_hash_is_refused():
    body = b"\x80\x04" + b"(" * 200 + b"\x91" * 200 + b"."
    with pytest.raises(ConversionError, match="nested too deep or too large to hash"):
        Machine(body).run()


def test_a_tuple_after_a_mark_lands_where_the_mark_was():
    # ( ( K1 t t  ->  ((1,),), and nothing left over on the outer stack
    assert Machine(b"\x80\x02((K\x01tt.").run() == ((1,),)
    with pytest.raises(ConversionError, match="MARK expected at byte 4"):
        Machine(b"\x80\x02(t\x91.").run()
