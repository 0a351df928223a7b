"""What every framework module does alike, with the framework as the ``fw``
parameter (its table: tests/frameworks/framework_tables.py).

Runs once per framework, each time in a pytest process of its own with
``STC_FRAMEWORK`` naming it (tests/test_frameworks.py). What only one
framework does is tested in tests/frameworks/test_<framework>.py.
"""

from __future__ import annotations

import gc
import inspect
import io
import os
import pydoc
import subprocess
import sys

import numpy as np
import pytest

import safetensors
import safetensors_c
from safetensors_c import SafetensorError, SliceIndexError, safe_open, sharded


def neutral_parameters(function):
    return [p for p in inspect.signature(function).parameters.values() if p.name != "framework"]


# ---------------------------------------------------------------------------
# MARK: round trips and the reference


@pytest.mark.from_table("code", "codes")
def test_every_dtype_round_trips(tmp_path, fw, code):
    expected = fw.random_array(code, (4, 3))
    array = fw.to_fw(expected, code)
    fw.assert_same(array, expected)  # the dtype really is the framework's
    path = tmp_path / "x.safetensors"
    fw.stc.save_file({"x": array}, path)
    assert safetensors_c.safe_open(path).get_slice("x").get_dtype() == code
    fw.assert_same(fw.stc.load_file(path)["x"], expected)
    fw.assert_same(fw.stc.load(fw.stc.save({"x": array}))["x"], expected)
    with safe_open(path, framework=fw.aliases[0]) as f:
        fw.assert_same(f.get_tensor("x"), expected)
        fw.assert_same(f.get_slice("x")[1:3], expected[1:3])


def test_metadata_round_trips(tmp_path, fw):
    path = tmp_path / "m.safetensors"
    metadata = {"format": fw.metadata_format, "é": "ü"}
    fw.stc.save_file({"a": fw.small()}, path, metadata=metadata)
    for framework in fw.aliases:
        with safe_open(path, framework=framework) as f:
            assert f.metadata() == metadata
    with safetensors.safe_open(path, framework=fw.ref_open_framework) as f:
        assert f.metadata() == metadata


def test_saved_bytes_match_the_reference(tmp_path, fw):
    # Every dtype byte for byte as the reference's NumPy writer; and, for the
    # dtypes its own writer for this framework takes (fw.ref_save_codes), as
    # that writer, in memory and on disk.
    tensors = fw.every_dtype()
    metadata = {"format": fw.metadata_format}
    ours = fw.stc.save(fw.as_fw(tensors), metadata=metadata)
    assert ours == fw.ref_numpy.save(dict(tensors), metadata=metadata)
    assert set(fw.ref_save_codes) <= set(fw.codes), set(fw.ref_save_codes) - set(fw.codes)
    taken = {k: v for k, v in tensors.items() if k.upper() in fw.ref_save_codes}
    # (the reference replaces the values of a dict it is given: a fresh one each time)
    assert fw.stc.save(fw.as_fw(taken), metadata=metadata) == \
        fw.ref.save(fw.as_fw(taken), metadata=metadata)
    ours_file, ref_file = tmp_path / "ours.safetensors", tmp_path / "ref.safetensors"
    fw.stc.save_file(fw.as_fw(taken), ours_file, metadata=metadata)
    fw.ref.save_file(fw.as_fw(taken), ref_file, metadata=metadata)
    assert ours_file.read_bytes() == ref_file.read_bytes()


def test_reference_files_load_identically(tmp_path, fw):
    tensors = {k: v for k, v in fw.every_dtype().items() if k.upper() in fw.ref_file_codes}
    path = tmp_path / "ref.safetensors"
    if fw.ref_file_numpy:  # the reference's writer for this framework cannot take them all
        fw.ref_numpy.save_file(dict(tensors), path, metadata={"k": "v"})
    else:
        fw.ref.save_file(fw.as_fw(tensors), path, metadata={"k": "v"})
    loaded = fw.stc.load_file(path)
    with safe_open(path) as f:
        assert list(loaded) == f.offset_keys()  # file order
    with safe_open(path, framework=fw.aliases[0]) as f:
        assert f.metadata() == {"k": "v"}
    assert set(loaded) == set(tensors)
    for name, expected in tensors.items():
        fw.assert_same(loaded[name], expected)


def test_saving_does_not_change_the_callers_dict(fw):
    tensors = fw.as_fw(fw.every_dtype())
    before = dict(tensors)
    fw.stc.save(tensors)
    assert tensors.keys() == before.keys()
    assert all(tensors[name] is before[name] for name in before)


@pytest.mark.parametrize("backend", ["mmap", "pread"])
def test_backends_give_the_same_arrays(tmp_path, fw, backend):
    tensors = fw.every_dtype((5, 7))
    path = tmp_path / "all.safetensors"
    safetensors_c.save_file(tensors, path)
    loaded = fw.stc.load_file(path, backend=backend)
    for name, expected in tensors.items():
        fw.assert_same(loaded[name], expected)


# ---------------------------------------------------------------------------
# MARK: empty and zero-sized


@pytest.mark.from_table("shape", "zero_shapes")
def test_zero_sized_and_scalar_tensors(tmp_path, fw, shape):
    tensors = {code.lower(): fw.random_array(code, shape, seed=i)
               for i, code in enumerate(fw.zero_codes)}
    data = fw.stc.save(fw.as_fw(tensors))
    assert data == fw.ref_numpy.save(dict(tensors))
    path = tmp_path / "z.safetensors"
    fw.stc.save_file(fw.as_fw(tensors), path)
    assert path.read_bytes() == data
    for loaded in (fw.stc.load_file(path), fw.stc.load(data)):
        assert set(loaded) == set(tensors)
        for name, expected in tensors.items():
            fw.assert_same(loaded[name], expected)
    theirs = {k: v for k, v in tensors.items() if k.upper() in fw.ref_writer_codes(shape)}
    if theirs:  # the reference's own writer for this framework, where it can
        assert fw.ref.save(fw.as_fw(theirs)) == fw.stc.save(fw.as_fw(theirs))


def test_no_tensors(tmp_path, fw):
    data = fw.stc.save({})
    assert data == fw.ref.save({}) and len(data) == 16
    assert fw.stc.load(data) == {}
    path = tmp_path / "e.safetensors"
    fw.stc.save_file({}, path)
    assert path.read_bytes() == data
    assert fw.stc.load_file(path) == {}


# ---------------------------------------------------------------------------
# MARK: bad input


@pytest.mark.from_table("tensors", "bad_dicts")
def test_tensors_must_be_a_dict(fw, tensors):
    kind, message = fw.dict_error
    with pytest.raises(kind, match=message):
        fw.stc.save(tensors)


@pytest.mark.from_table("value", "bad_values")
def test_values_must_be_arrays(tmp_path, fw, value):
    kind, message = fw.value_error
    with pytest.raises(kind, match=message):
        fw.stc.save({"a": value})
    with pytest.raises(kind, match=message):
        fw.stc.save_file({"a": value}, tmp_path / "x.safetensors")
    assert not os.listdir(tmp_path)


def test_arrays_of_other_frameworks_are_refused(fw):
    torch = pytest.importorskip("torch")
    kind, message = fw.other_error
    with pytest.raises(kind, match=message):
        fw.stc.save({"a": torch.ones(2)})


def test_names_must_be_str(tmp_path, fw):
    with pytest.raises(TypeError, match="tensor names must be str"):
        fw.stc.save({1: fw.small()})
    with pytest.raises(ValueError, match='"__metadata__" is reserved for metadata'):
        fw.stc.save_file({"__metadata__": fw.small()}, tmp_path / "x.safetensors")
    assert not os.listdir(tmp_path)


# ---------------------------------------------------------------------------
# MARK: safe_open, slices and file objects


@pytest.mark.from_table("framework", "aliases")
@pytest.mark.parametrize("backend", ["mmap", "pread"])
def test_out_of_bounds_slices_raise_slice_index_error(tmp_path, fw, framework, backend):
    path = tmp_path / "s.safetensors"
    safetensors_c.save_file({"x": np.zeros((4, 5), np.float32)}, path)
    with safe_open(path, framework=framework, backend=backend) as f:
        sliced = f.get_slice("x")
        for index in (np.s_[4], np.s_[0, 5], np.s_[-5], np.s_[[0, 9]], np.s_[0, 0, 0]):
            with pytest.raises(SliceIndexError, match="'x'"):
                sliced[index]
        with pytest.raises(IndexError):
            sliced[7]
        with pytest.raises(SafetensorError):
            sliced[7]


INDICES = [
    np.s_[:],
    np.s_[1:3],
    np.s_[:, ::2],
    np.s_[..., 1],
    np.s_[-1],
    np.s_[::-1, 2:],
    np.s_[1, 2, 3],
    np.s_[None, 0],
    np.s_[[0, 2]],
    np.s_[np.array([True, False, True, False])],
    np.s_[5:],
]


@pytest.mark.from_table("framework", "aliases")
@pytest.mark.parametrize("backend", ["mmap", "pread"])
def test_get_slice_equals_numpy_indexing(tmp_path, fw, framework, backend):
    codes = [c for c in ("F32", "BF16", "I64", "F64", "C64", "F8_E4M3", "F8_E5M2")
             if c in fw.dtypes]
    tensors = {code.lower(): fw.random_array(code, (4, 5, 6), seed=i)
               for i, code in enumerate(codes)}
    path = tmp_path / "s.safetensors"
    safetensors_c.save_file(tensors, path)
    with safe_open(path, framework=framework, backend=backend) as f:
        assert f.keys() == sorted(tensors)
        for name, expected in tensors.items():
            fw.assert_same(f.get_tensor(name), expected)
            fw.assert_same(f[name], expected)
            sliced = f.get_slice(name)
            assert sliced.get_shape() == [4, 5, 6]
            for index in INDICES:
                fw.assert_same(sliced[index], np.asarray(expected[index]))
            # an index holding the framework's arrays
            fw.assert_same(sliced[fw.index_array([3, 1])], expected[np.array([3, 1])])
            fw.assert_same(sliced[fw.index_array(2), 1:], expected[2, 1:])
        assert set(f.get_tensors()) == set(tensors)


def test_safe_open_handle_over_a_file_object(tmp_path, fw):
    tensors = fw.every_dtype((2, 3))
    path = tmp_path / "h.safetensors"
    safetensors_c.save_file(tensors, path)
    for file in (open(path, "rb"), io.BytesIO(path.read_bytes())):
        with file, safetensors_c._safe_open_handle(file, framework=fw.aliases[0]) as f:
            for name, expected in tensors.items():
                fw.assert_same(f.get_tensor(name), expected)
                fw.assert_same(f.get_slice(name)[1:], expected[1:])
    with open(path, "rb") as file:
        loaded = fw.stc.load_file(file)
    for name, expected in tensors.items():
        fw.assert_same(loaded[name], expected)


# ---------------------------------------------------------------------------
# MARK: sharded checkpoints


def test_sharded_round_trip(tmp_path, fw):
    tensors = {f"layer{i}.w": fw.random_array("F32", (64, 16), seed=i) for i in range(6)}
    tensors["emb"] = fw.random_array("BF16", (32, 32))
    if "F8_E4M3" in fw.dtypes:
        tensors["scale"] = fw.random_array("F8_E4M3", (16,))
    first = fw.stc.save_sharded(fw.as_fw(tensors), tmp_path / "ckpt", max_shard_size=10_000,
                                progress=False)
    assert len(list((tmp_path / "ckpt").glob("*.safetensors"))) > 1
    ckpt = tmp_path / "ckpt"
    for loaded in (
        fw.stc.load_sharded(ckpt, progress=False),
        fw.stc.load_sharded(ckpt, "cpu", progress=False, max_workers=4),
        *(safetensors_c.load_sharded(ckpt, framework=name, progress=False)
          for name in fw.aliases),
        safetensors_c.load_sharded(ckpt, framework=fw.aliases[0], progress=False, max_workers=4),
    ):
        assert set(loaded) == set(tensors)
        for name, expected in tensors.items():
            fw.assert_same(loaded[name], expected)
            fw.after_load(loaded[name], expected)
    # the generic entry with the framework named writes the same files
    again = safetensors_c.save_sharded(fw.as_fw(tensors), tmp_path / "again",
                                       max_shard_size=10_000, framework=fw.aliases[0],
                                       progress=False)
    ids = [index["metadata"]["safetensors_c.save_id"].encode() for index in (first, again)]
    for shard in ckpt.iterdir():  # the same bytes but for each save's own id
        assert (tmp_path / "again" / shard.name).read_bytes() == shard.read_bytes().replace(*ids)


@pytest.mark.parametrize("name", ["save_sharded", "load_sharded"])
def test_sharded_functions_take_every_neutral_parameter(fw, name):
    """Every framework's sharded functions are the neutral ones with the
    framework bound: the same parameters (max_workers=, digests=, ...) and
    defaults, and help() shows them and the neutral docstring."""
    ours, neutral = getattr(fw.stc, name), getattr(sharded, name)
    assert list(inspect.signature(ours).parameters.values()) == neutral_parameters(neutral)
    shown = pydoc.render_doc(ours, renderer=pydoc.plaintext)
    title = next(line for line in shown.splitlines() if line.startswith(name + "("))
    assert "framework" not in title and "prefix" in title
    assert fw.label in ours.__doc__ and inspect.getdoc(neutral) in ours.__doc__


def test_sharded_options_reach_the_neutral_functions(tmp_path, fw):
    """max_workers=, digests= and verify_digests= work from every framework
    module (two of them had no max_workers= and none had digests=)."""
    tensors = {f"t{i}": fw.random_array("F32", (64,), seed=i) for i in range(4)}
    index = fw.stc.save_sharded(fw.as_fw(tensors), tmp_path / "ckpt", 300, "w", {"k": "v"},
                                progress=False, digests=True)
    assert len(set(index["weight_map"].values())) == 4
    loaded = fw.stc.load_sharded(tmp_path / "ckpt", "cpu", prefix="w", max_workers=1,
                                 verify_digests=True, progress=False)
    assert list(loaded) == list(tensors)
    for name, expected in tensors.items():
        fw.assert_same(loaded[name], expected)
    shard = sorted((tmp_path / "ckpt").glob("w-*.safetensors"))[1]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF  # a shard rewritten under the index: its digest no longer matches
    shard.write_bytes(bytes(data))
    with pytest.raises(SafetensorError, match="digest") as info:
        fw.stc.load_sharded(tmp_path / "ckpt", prefix="w", max_workers=2, verify_digests=True,
                            progress=False)
    assert info.value.code == "STC_ERR_DIGEST_MISMATCH"
    with pytest.raises(TypeError, match="framework"):
        fw.stc.load_sharded(tmp_path / "ckpt", prefix="w", framework="np")


# ---------------------------------------------------------------------------
# MARK: a framework that is not installed


def test_a_missing_framework_is_named_with_its_pip_package(tmp_path, fw):
    path = tmp_path / "a.safetensors"
    safetensors_c.save_file({"a": np.ones(2, np.float32)}, path)
    code = (
        "import sys\n"
        f"for name in {fw.blocked!r}: sys.modules[name] = None\n"
        "import safetensors_c\n"
        f"for attempt in (lambda: safetensors_c.safe_open(sys.argv[1], framework={fw.aliases[0]!r}),\n"
        f"                lambda: __import__('safetensors_c.{fw.name}')):\n"
        "    try:\n"
        "        attempt()\n"
        "    except ImportError as exc:\n"
        "        print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 2
    assert all(fw.missing in line for line in lines)


# ---------------------------------------------------------------------------
# MARK: zero copy: the reader's memory adopted where the framework can


def aligned_tensors(fw):
    """Tensors whose sizes are multiples of 64 bytes: each starts 64-byte
    aligned when the data section does."""
    specs = {"a": ("F32", (16, 16)), "b": ("BF16", (8, 32)), "c": ("I64", (4, 8)),
             "d": ("U8", (64,)), "e": ("BOOL", (2, 64))}
    specs.update((code.lower(), (code, shape)) for code, shape in fw.adopt_extra)
    return {name: fw.random_array(code, shape, seed=i)
            for i, (name, (code, shape)) in enumerate(specs.items())}


def skip_unless_it_adopts(fw):
    if fw.address is None:
        pytest.skip(f"{fw.label} cannot adopt host memory: every tensor is copied "
                    f"(tests/frameworks/test_{fw.name}.py)")


def assert_kernels_run_on(fw, loaded, tensors):
    expected = float(tensors["c"].astype(np.float64).sum())
    assert fw.total(loaded["c"]) == pytest.approx(expected)


def test_aligned_tensors_are_adopted_from_the_mapping(tmp_path, fw, helpers):
    skip_unless_it_adopts(fw)
    tensors = aligned_tensors(fw)
    path = helpers.save_aligned(tensors, tmp_path / "aligned.safetensors")
    loaded = fw.stc.load_file(path)
    for name, expected in tensors.items():
        fw.assert_same(loaded[name], expected)
        assert helpers.in_mapping_of(path, fw.address(loaded[name])), name
    assert_kernels_run_on(fw, loaded, tensors)
    for framework in fw.aliases:
        with safe_open(path, framework=framework) as f:
            a = f.get_tensor("a")
        # A second handle: on one handle a slice after get_tensor is read
        # afresh (arrays of one handle never alias, tests/test_independent_arrays.py).
        with safe_open(path, framework=framework) as f:
            rows = f.get_slice("a")[2:5]  # whole rows of 64 bytes: still aligned
        assert helpers.in_mapping_of(path, fw.address(a))
        assert helpers.in_mapping_of(path, fw.address(rows))
        fw.assert_same(rows, tensors["a"][2:5])


def test_misaligned_tensors_are_adopted_or_copied_once_into_aligned_memory(tmp_path, fw,
                                                                           helpers):
    skip_unless_it_adopts(fw)
    tensors = aligned_tensors(fw)
    # the same tensors after an 8-byte U64 (written first): none is aligned
    shifted = helpers.save_aligned({"pad": np.zeros(1, np.uint64), **tensors},
                                   tmp_path / "shifted.safetensors")
    header = helpers.header_of(shifted)[1]
    loaded = fw.stc.load_file(shifted)
    mapping_start = min(start for start, _ in helpers.file_mappings(shifted))
    for name, expected in tensors.items():
        offset = helpers.data_start(shifted) + header[name]["data_offsets"][0]
        assert offset % 64 != 0
        pointer = fw.address(loaded[name])
        if fw.adopt_alignment == 1:  # adopted where it lies
            assert pointer == mapping_start + offset, name
        else:  # copied once, into memory aligned for the framework's kernels
            assert not helpers.in_mapping_of(shifted, pointer), name
            assert pointer % fw.adopt_alignment == 0, name
        fw.assert_same(loaded[name], expected)
    # the kernels run on them (TF's would abort the process on misaligned data)
    assert_kernels_run_on(fw, loaded, tensors)


def test_an_aligned_writable_image_is_adopted(fw, helpers):
    skip_unless_it_adopts(fw)
    tensors = aligned_tensors(fw)
    image = safetensors_c.numpy.save(tensors)
    # placed so that its data section is 64-byte aligned
    start = helpers.data_start(image)
    raw = np.empty(len(image) + 128, np.uint8)
    offset = (-(helpers.numpy_address(raw) + start)) % 64
    buffer = raw[offset:offset + len(image)]
    buffer[:] = np.frombuffer(image, np.uint8)
    images = [(memoryview(buffer), helpers.numpy_address(buffer))]
    if fw.adopt_alignment == 1:  # and a bytearray wherever it lies
        anywhere = bytearray(image)
        images.append((anywhere, helpers.numpy_address(np.frombuffer(anywhere, np.uint8))))
    header = helpers.header_of(image)[1]
    for writable, base in images:
        loaded = fw.stc.load(writable)
        for name, expected in tensors.items():
            begin = header[name]["data_offsets"][0]
            assert fw.address(loaded[name]) == base + start + begin, name
            fw.assert_same(loaded[name], expected)


def test_adopted_tensors_outlive_the_handle_and_the_file(tmp_path, fw, helpers):
    skip_unless_it_adopts(fw)
    tensors = aligned_tensors(fw)
    path = helpers.save_aligned(tensors, tmp_path / "aligned.safetensors")
    with safe_open(path, framework=fw.aliases[0]) as f:
        c = f.get_tensor("c")
        b = f.get_tensor("b")  # bfloat16, which some frameworks adopt through a bitcast
        assert helpers.in_mapping_of(path, fw.address(b))
    del f
    os.remove(path)
    gc.collect()
    fw.assert_same(c, tensors["c"])
    fw.assert_same(b, tensors["b"])
    assert_kernels_run_on(fw, {"c": c}, tensors)


def test_bytes_are_copied_once_per_tensor(fw, helpers):
    skip_unless_it_adopts(fw)
    tensors = aligned_tensors(fw)
    image = safetensors_c.numpy.save(tensors)
    start = helpers.numpy_address(np.frombuffer(image, np.uint8))
    loaded = fw.stc.load(image)  # immutable bytes: each tensor is copied by the adapter
    for name, expected in tensors.items():
        pointer = fw.address(loaded[name])
        assert not start <= pointer < start + len(image), name
        if fw.adopt_alignment > 1:
            assert pointer % fw.adopt_alignment == 0, name
        fw.assert_same(loaded[name], expected)
    assert_kernels_run_on(fw, loaded, tensors)
    assert image == safetensors_c.numpy.save(tensors)  # the bytes object is untouched


# ---------------------------------------------------------------------------
# MARK: devices


def saved_for_devices(tmp_path):
    path = tmp_path / "d.safetensors"
    safetensors_c.save_file({"x": np.arange(3, dtype=np.float32)}, path)
    return path


def loads_with_a_device(fw, path):
    """(loader, its source) for each of the module's own loaders that take a
    device, as the table names them."""
    sources = {"load_file": path, "load": path.read_bytes()}
    return [(getattr(fw.stc, name), sources[name]) for name in fw.device_loaders]


@pytest.mark.from_table("device", "cpu_devices")
def test_cpu_device_names_are_accepted(tmp_path, fw, device):
    path = saved_for_devices(tmp_path)
    expected = np.arange(3, dtype=np.float32)
    for framework in fw.aliases:
        with safe_open(path, framework=framework, device=device) as f:
            fw.assert_same(f.get_tensor("x"), expected)
    for load, source in loads_with_a_device(fw, path):
        fw.assert_same(load(source, device=device)["x"], expected)
        fw.assert_same(load(source, device)["x"], expected)


def test_no_device_means_the_cpu(tmp_path, fw):
    path = saved_for_devices(tmp_path)
    expected = np.arange(3, dtype=np.float32)
    with safe_open(path, framework=fw.aliases[0], device=None) as f:
        fw.assert_same(f.get_tensor("x"), expected)  # (assert_same checks the device)
    for load, source in loads_with_a_device(fw, path):
        fw.assert_same(load(source, device=None)["x"], expected)


@pytest.mark.from_table("device", "other_devices")
def test_devices_other_than_the_cpu_are_refused(tmp_path, fw, device):
    path = saved_for_devices(tmp_path)
    error, pattern = fw.other_device_error
    if fw.device_refused_at_open:
        with pytest.raises(error, match=pattern):
            safe_open(path, framework=fw.aliases[0], device=device)
    else:  # the handle opens, reads its keys, and refuses the first tensor
        with safe_open(path, framework=fw.aliases[0], device=device) as f:
            assert f.keys() == ["x"]
            with pytest.raises(error, match=pattern):
                f.get_tensor("x")
    for load, source in loads_with_a_device(fw, path):
        with pytest.raises(error, match=pattern):
            load(source, device=device)


@pytest.mark.from_table("device", "invalid_devices")
def test_names_that_are_no_device_are_invalid(tmp_path, fw, device):
    path = saved_for_devices(tmp_path)
    with pytest.raises(SafetensorError, match=fw.invalid_device_error):
        safe_open(path, framework=fw.aliases[0], device=device)
    for load, source in loads_with_a_device(fw, path):
        with pytest.raises(SafetensorError, match=fw.invalid_device_error):
            load(source, device=device)
