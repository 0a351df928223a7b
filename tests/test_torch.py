"""safetensors_c.torch: the PyTorch drop-in, checked against safetensors.torch."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import safetensors_c  # noqa: E402
import safetensors_c.torch as ct  # noqa: E402
from safetensors_c import SafetensorError, safe_open  # noqa: E402

from conftest import ROOT  # noqa: E402

try:
    import safetensors
    import safetensors.torch as rt
except ImportError:  # pragma: no cover - the reference is a test dependency
    safetensors = rt = None

needs_reference = pytest.mark.skipif(rt is None, reason="reference safetensors not installed")

# format code -> torch dtype name (FORMAT.md)
TORCH_NAMES = {
    "BOOL": "bool", "F4": "float4_e2m1fn_x2", "U8": "uint8", "I8": "int8",
    "F8_E5M2": "float8_e5m2", "F8_E4M3": "float8_e4m3fn", "F8_E8M0": "float8_e8m0fnu",
    "F8_E4M3FNUZ": "float8_e4m3fnuz", "F8_E5M2FNUZ": "float8_e5m2fnuz", "I16": "int16",
    "U16": "uint16", "F16": "float16", "BF16": "bfloat16", "I32": "int32", "U32": "uint32",
    "F32": "float32", "C64": "complex64", "F64": "float64", "I64": "int64", "U64": "uint64",
}


def sample(code: str, shape=(2, 3, 4)) -> "torch.Tensor":
    """A tensor of ``code`` whose bytes are all different (seeded)."""
    dtype = getattr(torch, TORCH_NAMES[code])
    size = dtype.itemsize
    count = int(np.prod(shape))
    raw = np.random.default_rng(len(code) * 7 + count).integers(0, 256, count * size, np.uint8)
    if code == "BOOL":
        raw = raw % 2
    if code in ("F16", "BF16", "F32", "F64", "C64"):
        # keep floats finite and NaN-free so torch.equal is meaningful
        return (torch.arange(count, dtype=torch.float64) / 3 - 5).to(dtype).reshape(shape)
    return torch.from_numpy(raw).view(dtype).reshape(shape)


def same(a, b) -> bool:
    """Same dtype, shape and bytes (so NaNs and float8 patterns compare exactly)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == torch.bool or a.nelement() == 0:
        return torch.equal(a, b)
    return torch.equal(
        a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8)
    )


def file_mapping(ptr: int, path) -> bool:
    """True when address ``ptr`` lies in a mapping of ``path`` (/proc/self/maps)."""
    real = os.path.realpath(path)
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].strip() == real:
                lo, hi = (int(x, 16) for x in fields[0].split("-"))
                if lo <= ptr < hi:
                    return True
    return False


# ---------------------------------------------------------------------------
# torch stays optional

def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def test_import_safetensors_c_does_not_import_torch():
    result = run_python(
        "import sys, safetensors_c, safetensors_c.numpy, safetensors_c.sharded\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\nprint('ok')"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_import_without_torch_names_the_extra():
    result = run_python(
        "import sys\nsys.modules['torch'] = None\n"
        "try:\n    import safetensors_c.torch\nexcept ImportError as e:\n    print(e)\n"
        "else:\n    print('imported')"
    )
    assert result.returncode == 0, result.stderr
    assert "pip install safetensors_c[torch]" in result.stdout


def test_safe_open_pt_without_torch_is_an_import_error():
    result = run_python(
        "import sys\nsys.modules['torch'] = None\nimport safetensors_c as s\n"
        "try:\n    s.safe_open('missing.safetensors', 'pt')\n"
        "except ImportError as e:\n    print('IE', e)"
    )
    assert "IE" in result.stdout and "safetensors_c[torch]" in result.stdout, result


# ---------------------------------------------------------------------------
# dtypes

ALL_CODES = sorted(TORCH_NAMES)


@pytest.mark.parametrize("code", ALL_CODES)
def test_every_dtype_round_trips(tmp_path, code):
    tensor = sample(code)
    path = tmp_path / "t.safetensors"
    ct.save_file({"x": tensor}, path)
    loaded = ct.load_file(path)["x"]
    assert loaded.dtype == getattr(torch, TORCH_NAMES[code])
    assert same(loaded, tensor)
    with safe_open(path, "np") as f:
        assert f.get_slice("x").get_dtype() == code
        logical = list(tensor.shape[:-1]) + [tensor.shape[-1] * (2 if code == "F4" else 1)]
        assert f.get_slice("x").get_shape() == logical
    assert same(ct.load(ct.save({"x": tensor}))["x"], tensor)


@needs_reference
@pytest.mark.parametrize("code", ALL_CODES)
def test_every_dtype_same_bytes_as_reference(tmp_path, code):
    tensors = {"x": sample(code), "y": sample(code, (5,)), "s": sample(code, (1,))}
    ours, theirs = tmp_path / "ours.st", tmp_path / "theirs.st"
    ct.save_file(tensors, ours, metadata={"format": "pt"})
    rt.save_file(tensors, theirs, metadata={"format": "pt"})
    assert ours.read_bytes() == theirs.read_bytes()
    assert ct.save(tensors) == rt.save(tensors)
    for name, tensor in rt.load_file(ours).items():
        assert same(tensor, tensors[name])
    for name, tensor in ct.load_file(theirs).items():
        assert same(tensor, tensors[name])


def test_f4_last_dimension_counts_pairs(tmp_path):
    raw = torch.arange(6, dtype=torch.uint8)
    tensor = raw.view(torch.float4_e2m1fn_x2).reshape(2, 3)
    path = tmp_path / "f4.st"
    ct.save_file({"a": tensor}, path)
    with safe_open(path, "np") as f:
        assert f.get_slice("a").get_shape() == [2, 6]
        assert f.get_tensor("a").tobytes() == raw.numpy().tobytes()
    with safe_open(path, "pt") as f:
        assert f.get_tensor("a").shape == (2, 3)
        part = f.get_slice("a")[1, 1:]
        assert part.dtype == torch.float4_e2m1fn_x2
        assert part.view(torch.uint8).tolist() == [4, 5]


def test_f4_with_odd_last_dimension_is_refused(tmp_path):
    path = tmp_path / "odd.st"
    safetensors_c.save_file(
        {"a": safetensors_c.packed(np.arange(3, dtype=np.uint8), "F4", (2, 3))}, path
    )
    with pytest.raises(SafetensorError, match="tensor 'a'.*last dimension"):
        ct.load_file(path)


def test_zero_d_f4_cannot_be_saved():
    with pytest.raises(SafetensorError, match="0-d float4"):
        ct.save({"a": torch.zeros((), dtype=torch.float4_e2m1fn_x2)})


@pytest.mark.parametrize("code", ["F6_E2M3", "F6_E3M2"])
def test_dtypes_torch_lacks_give_a_clear_error(tmp_path, code):
    path = tmp_path / "f6.st"
    safetensors_c.save_file(
        {"a": safetensors_c.packed(np.zeros((2, 3), np.uint8), code), "b": np.ones(2)}, path
    )
    with pytest.raises(SafetensorError, match=f"tensor 'a': dtype {code} has no torch"):
        ct.load_file(path)
    with safe_open(path, "pt") as f:
        assert f.get_tensor("b").tolist() == [1.0, 1.0]
        with pytest.raises(SafetensorError, match="no torch"):
            f.get_tensor("a")
        with pytest.raises(SafetensorError, match="no torch"):
            f.get_slice("a")


def unsupported(kind):
    if kind == "complex128":
        return torch.zeros(2, dtype=torch.complex128)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.quantize_per_tensor(torch.zeros(2), 0.1, 0, torch.qint8)


@pytest.mark.parametrize("kind", ["complex128", "qint8"])
def test_unsupported_torch_dtype_is_named(tmp_path, kind):
    tensor = unsupported(kind)
    with pytest.raises(SafetensorError, match=f"tensor 'a': dtype torch.{kind} cannot be stored"):
        ct.save({"a": tensor})
    with pytest.raises(SafetensorError):
        ct.save_file({"a": tensor}, tmp_path / "x.st")
    assert not (tmp_path / "x.st").exists()


def test_empty_and_scalar_tensors(tmp_path):
    tensors = {"e": torch.zeros(0, 3), "s": torch.tensor(2.5), "b": torch.zeros(0, dtype=torch.bool)}
    path = tmp_path / "e.st"
    ct.save_file(tensors, path)
    loaded = ct.load_file(path)
    for name, tensor in tensors.items():
        assert same(loaded[name], tensor)
    if rt is not None:
        assert path.read_bytes() == rt.save(tensors)


# ---------------------------------------------------------------------------
# zero copy

def test_load_file_is_zero_copy_and_copy_on_write(tmp_path):
    path = tmp_path / "z.st"
    original = {"w": torch.arange(4096, dtype=torch.float32), "b": torch.ones(3, dtype=torch.int64)}
    ct.save_file(original, path)
    before = path.read_bytes()
    loaded = ct.load_file(path)
    for tensor in loaded.values():
        assert file_mapping(tensor.data_ptr(), path)
    loaded["w"][0] = 1234.0
    loaded["w"].mul_(2)
    loaded["b"].zero_()
    assert path.read_bytes() == before
    again = ct.load_file(path)
    assert same(again["w"], original["w"]) and same(again["b"], original["b"])
    with safe_open(path, "pt") as f:
        t = f.get_tensor("w")
        s = f.get_slice("w")[10:20]
        first = f.get_slice("b")[1:]
    # The first access of a tensor is a view of the mapping; a later one is
    # memory of its own (tests/test_independent_arrays.py).
    assert file_mapping(t.data_ptr(), path) and file_mapping(first.data_ptr(), path)
    assert not file_mapping(s.data_ptr(), path)
    t[10] = -1.0
    assert s[0].item() == 10.0
    assert t[12].item() == 12.0  # tensors outlive the handle


def test_pread_backend_is_not_mapped(tmp_path):
    path = tmp_path / "p.st"
    ct.save_file({"w": torch.arange(8.0)}, path)
    t = ct.load_file(path, backend="pread")["w"]
    assert not file_mapping(t.data_ptr(), path)
    assert t.tolist() == list(range(8))


def test_read_only_memory_gives_private_tensors(tmp_path):
    # Read-only arrays (an immutable image here; a read-only mapping under
    # strict overcommit) must not be shared: torch cannot mark a tensor
    # read-only, and a write through it would kill the process.
    data = ct.save({"w": torch.arange(6.0).reshape(2, 3)})
    owner = safetensors_c._core.open_buffer(data)  # bytes: read-only arrays
    array = owner.tensor("w")
    assert not array.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tensor = safetensors_c._adapters.torch.to_array("w", "F32", array, None)
    assert tensor.data_ptr() != array.ctypes.data
    tensor[0, 0] = 42.0
    assert array[0, 0] == 0.0
    assert tensor.tolist() == [[42.0, 1.0, 2.0], [3.0, 4.0, 5.0]]


def test_load_bytes_copies_immutable_bytes_once(tmp_path):
    data = ct.save({"w": torch.arange(3.0)})
    loaded = ct.load(data)["w"]
    loaded[0] = 7.0
    assert ct.load(data)["w"].tolist() == [0.0, 1.0, 2.0]
    buffer = bytearray(data)
    in_place = ct.load(buffer)["w"]
    in_place[0] = 9.0
    assert ct.load(bytes(buffer))["w"][0].item() == 9.0


def test_save_writes_from_the_tensor_memory(monkeypatch):
    tensor = torch.arange(16, dtype=torch.int32)
    seen = []
    real_save = safetensors_c._core.save

    def spy(names, codes, shapes, arrays, metadata, path):
        seen.extend(arrays)
        return real_save(names, codes, shapes, arrays, metadata, path)

    monkeypatch.setattr(safetensors_c._core, "save", spy)
    ct.save({"t": tensor})
    assert seen[0].ctypes.data == tensor.data_ptr() and seen[0].dtype == np.uint8


# ---------------------------------------------------------------------------
# safe_open(framework="pt")

@pytest.mark.parametrize("framework", ["pt", "torch"])
def test_safe_open_framework_pt(tmp_path, framework):
    path = tmp_path / "s.st"
    tensors = {"a": torch.arange(12.0).reshape(3, 4), "i": torch.arange(5), "s": torch.tensor(1.5)}
    ct.save_file(tensors, path, metadata={"k": "v"})
    with safe_open(path, framework=framework, device="cpu") as f:
        assert isinstance(f, safe_open)
        assert f.keys() == ["a", "i", "s"] and f.metadata() == {"k": "v"}
        assert same(f.get_tensor("a"), tensors["a"])
        got = f.get_tensors()
        assert list(got) == f.offset_keys()
        assert all(same(got[k], tensors[k]) for k in tensors)
        sl = f.get_slice("a")
        assert sl.get_shape() == [3, 4] and sl.get_dtype() == "F32"
        for index in [0, (slice(1, 3), slice(None, None, 2)), (Ellipsis, -1), (None, 1),
                      [0, 2], (slice(None), torch.tensor([3, 1])), slice(None, None, -1)]:
            expected = tensors["a"].numpy()[index if not isinstance(index, tuple) else tuple(
                i.numpy() if isinstance(i, torch.Tensor) else i for i in index)]
            result = sl[index]
            assert isinstance(result, torch.Tensor)
            assert result.numpy().tolist() == expected.tolist()
        assert f.get_slice("s")[()].item() == 1.5
    with pytest.raises(SafetensorError, match="closed"):
        f.get_tensor("a")


@needs_reference
def test_safe_open_pt_matches_reference(tmp_path):
    path = tmp_path / "r.st"
    rt.save_file({"a": torch.arange(24.0).reshape(4, 6), "b": torch.ones(2, dtype=torch.bfloat16)}, path)
    with safe_open(path, "pt") as ours, safetensors.safe_open(path, "pt") as theirs:
        assert ours.keys() == theirs.keys() and ours.metadata() == theirs.metadata()
        for name in ours.keys():
            assert same(ours.get_tensor(name), theirs.get_tensor(name))
            assert ours.get_slice(name).get_shape() == theirs.get_slice(name).get_shape()
        assert same(ours.get_slice("a")[1:3, 2:5].contiguous(), theirs.get_slice("a")[1:3, 2:5])


def test_numpy_handles_are_unchanged(tmp_path):
    path = tmp_path / "n.st"
    ct.save_file({"a": torch.arange(3.0)}, path)
    with safe_open(path, "np") as f:
        assert type(f) is safe_open
        assert isinstance(f.get_tensor("a"), np.ndarray)
        assert type(f.get_slice("a")) is safetensors_c.TensorSlice


# ---------------------------------------------------------------------------
# devices

def test_devices(tmp_path):
    path = tmp_path / "d.st"
    ct.save_file({"a": torch.arange(3.0)}, path)
    assert ct.load_file(path, device=torch.device("cpu"))["a"].device.type == "cpu"
    assert ct.load_file(path, device=None)["a"].device.type == "cpu"  # as the reference
    for bad in ["bogus", "meta", "cuda:x", 1.5, -1]:
        with pytest.raises(SafetensorError, match="is invalid"):
            ct.load_file(path, device=bad)
    if not torch.cuda.is_available():
        for missing in ["cuda", "cuda:0", "cuda:3"]:
            with pytest.raises(RuntimeError, match=f"device '{missing}' is not available") as info:
                ct.load_file(path, device=missing)
            assert not isinstance(info.value, SafetensorError)
            # opening succeeds, as in the reference; the first tensor fails
            with safe_open(path, "pt", device=missing) as f:
                with pytest.raises(RuntimeError, match="not available"):
                    f.get_tensor("a")
    else:  # pragma: no cover - no GPU in CI
        assert ct.load_file(path, device="cuda")["a"].device.type == "cuda"
    if not (torch.backends.mps.is_available()):
        with pytest.raises(RuntimeError, match="'mps' is not available"):
            ct.load_file(path, device="mps")
    # NumPy handles keep their CPU-only rule
    with pytest.raises(SafetensorError, match="cpu"):
        safe_open(path, "np", device="cuda")


# ---------------------------------------------------------------------------
# bad input: the reference's exceptions and messages

def bad_inputs():
    t = torch.zeros(4, 4)
    base = torch.arange(10.0)
    return {
        "not a dict": [1],
        "not a tensor": {"a": torch.zeros(2), "b": 3},
        "sparse": {"a": torch.zeros(2, 2).to_sparse()},
        "sparse then non-tensor": {"a": torch.zeros(2, 2).to_sparse(), "b": "x"},
        "transposed": {"a": t.t()},
        "strided slice": {"a": t[:, :2]},
        "same tensor twice": {"a": t, "b": t},
        "a view of another": {"a": t, "b": t[1]},
        "overlapping views": {"a": base[:6], "b": base[4:]},
        "disjoint but non-contiguous": {"a": t[0], "b": t[:, 1]},
        "shared and non-contiguous": {"a": t, "b": t.t()},
        "three shared": {"a": t, "b": t.view(16), "c": t[2:]},
        "non-str name": {1: torch.zeros(2)},
        "bad metadata value": ({"a": torch.zeros(2)}, {"k": 1}),
        "bad metadata type": ({"a": torch.zeros(2)}, ["k"]),
        "meta device": {"a": torch.zeros(2, device="meta")},
    }


# Our messages are our own words; each names the problem.
BAD_INPUT_WORDS = {
    "not a dict": "must be a dict",
    "not a tensor": "expected a torch.Tensor",
    "sparse": "sparse",
    "same tensor twice": "share memory",
    "a view of another": "share memory",
    "overlapping views": "share memory",
    "three shared": "share memory",
}


@needs_reference
@pytest.mark.parametrize("case", list(bad_inputs()))
def test_bad_input_same_exception_as_reference(tmp_path, case):
    value = bad_inputs()[case]
    tensors, metadata = value if isinstance(value, tuple) else (value, None)
    for fn in ("save", "save_file"):
        args = (tensors,) if fn == "save" else (tensors, tmp_path / "out.st")
        with pytest.raises(Exception) as theirs:
            getattr(rt, fn)(*args, metadata=metadata)
        with pytest.raises(Exception) as ours:
            getattr(ct, fn)(*args, metadata=metadata)
        assert type(ours.value) is type(theirs.value), (ours.value, theirs.value)
        assert BAD_INPUT_WORDS.get(case, "") in str(ours.value)
    assert not (tmp_path / "out.st").exists()


def test_shared_error_names_the_tensors():
    t = torch.zeros(3)
    with pytest.raises(RuntimeError, match=r"share memory.*save_model"):
        ct.save({"a": t, "b": t})


@needs_reference
def test_disjoint_slices_of_one_storage_save_like_reference():
    t = torch.arange(8.0).reshape(2, 4)
    tensors = {"a": t[0], "b": t[1]}
    assert ct.save(tensors) == rt.save(tensors)


@needs_reference
def test_requires_grad_and_parameters_save_like_reference():
    p = torch.nn.Parameter(torch.arange(4.0))
    tensors = {"p": p, "g": torch.ones(2, requires_grad=True)}
    assert ct.save(tensors) == rt.save(tensors)


def test_conjugate_views_are_saved_resolved():
    z = torch.tensor([1 + 2j, 3 - 4j], dtype=torch.complex64)
    loaded = ct.load(ct.save({"z": z.conj()}))["z"]
    assert loaded.tolist() == [1 - 2j, 3 + 4j]


def test_metadata_name_is_reserved():
    with pytest.raises(ValueError, match="reserved"):
        ct.save({"__metadata__": torch.zeros(1)})


# ---------------------------------------------------------------------------
# save_model / load_model

class Tied(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)
        self.head = torch.nn.Linear(4, 10, bias=True)
        self.head.weight = self.embed.weight  # tied
        self.norm = torch.nn.LayerNorm(4)


def fresh(seed):
    torch.manual_seed(seed)
    return Tied()


@needs_reference
def test_save_model_drops_tied_names_like_reference(tmp_path):
    model = fresh(0)
    ours, theirs = tmp_path / "ours.st", tmp_path / "theirs.st"
    ct.save_model(model, ours, metadata={"format": "pt"})
    rt.save_model(model, theirs, metadata={"format": "pt"})
    with safe_open(ours, "pt") as f:
        assert "embed.weight" in f.keys() and "head.weight" not in f.keys()
    with safe_open(ours, "np") as f, safetensors.safe_open(theirs, "np") as g:
        assert f.metadata() == g.metadata() == {"format": "pt", "head.weight": "embed.weight"}
        assert f.keys() == g.keys()
        for name in f.keys():
            assert f.get_tensor(name).tobytes() == g.get_tensor(name).tobytes()


@needs_reference
@pytest.mark.parametrize("saver", ["ours", "theirs"])
@pytest.mark.parametrize("loader", ["ours", "theirs"])
def test_load_model_restores_tied_weights(tmp_path, saver, loader):
    model = fresh(1)
    path = tmp_path / "m.st"
    (ct if saver == "ours" else rt).save_model(model, path)
    target = fresh(2)
    missing, unexpected = (ct if loader == "ours" else rt).load_model(target, path)
    assert (missing, unexpected) == (set(), [])
    assert target.head.weight is target.embed.weight
    for name, tensor in model.state_dict().items():
        assert torch.equal(target.state_dict()[name], tensor)


def test_save_model_keeps_user_metadata_and_caller_dict(tmp_path):
    meta = {"head.weight": "mine"}
    ct.save_model(fresh(0), tmp_path / "m.st", metadata=meta)
    assert meta == {"head.weight": "mine"}
    with safe_open(tmp_path / "m.st", "np") as f:
        assert f.metadata() == {"head.weight": "mine"}


@needs_reference
def test_load_model_strict_errors_like_reference(tmp_path):
    path = tmp_path / "m.st"
    ct.save_file({"embed.weight": torch.zeros(10, 4), "extra": torch.zeros(1)}, path)
    with pytest.raises(RuntimeError) as ours:
        ct.load_model(fresh(0), path)
    with pytest.raises(RuntimeError) as theirs:
        rt.load_model(fresh(0), path)
    # torch's own wording (what load_state_dict says), which users search for
    assert 'Missing key(s) in state_dict: "head.bias", "norm.bias", "norm.weight".' in str(
        ours.value
    )
    assert 'Unexpected key(s) in state_dict: "extra".' in str(ours.value)
    assert "Error(s) in loading state_dict for Tied" in str(ours.value)
    assert "extra" in str(theirs.value) and "norm.weight" in str(theirs.value)
    assert ct.load_model(fresh(0), path, strict=False) == rt.load_model(fresh(0), path, strict=False)


@needs_reference
def test_save_model_non_contiguous_without_force(tmp_path):
    class T(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("w", torch.zeros(3, 4).t())

    with pytest.raises(ValueError) as ours:
        ct.save_model(T(), tmp_path / "a.st", force_contiguous=False)
    with pytest.raises(ValueError) as theirs:
        rt.save_model(T(), tmp_path / "b.st", force_contiguous=False)
    assert "force_contiguous=True" in str(ours.value)
    assert "'w'" in str(ours.value) or "contiguous" in str(ours.value)
    ct.save_model(T(), tmp_path / "c.st")
    assert ct.load_file(tmp_path / "c.st")["w"].shape == (4, 3)
