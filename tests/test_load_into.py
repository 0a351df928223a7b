"""Reading tensors straight into caller memory: the core's _File.read_into,
the neutral safetensors_c._into.load_into, and torch's load_into/load_model.

Every destination is checked before any byte is written; ranges are bounded
by their tensor; parallel and chunked fills give the same bytes as a plain
load, for both backends, with and without O_DIRECT.
"""

from __future__ import annotations

import os
import threading

import ml_dtypes
import numpy as np
import pytest

import safetensors_c.numpy as snp
from safetensors_c import _core, _into
from safetensors_c._core import SafetensorError
from safetensors_c._reader import open_source
from conftest import BACKENDS


@pytest.fixture
def tensors():
    rng = np.random.default_rng(7)
    return {
        "big": rng.standard_normal((300, 1000)).astype(np.float32),  # 1.2 MB
        "ints": np.arange(12345, dtype=np.int64).reshape(5, 2469),
        "half": rng.standard_normal((17, 33)).astype(np.float16),
        "bf16": rng.standard_normal((40, 7)).astype(ml_dtypes.bfloat16),
        "flags": rng.integers(0, 2, size=(9,)).astype(np.bool_),
        "scalar": np.array(3.5, dtype=np.float64),
        "empty": np.zeros((0, 4), dtype=np.int32),
        "u8": rng.integers(0, 255, size=(7, 3)).astype(np.uint8),
    }


@pytest.fixture
def path(tmp_path, tensors):
    p = str(tmp_path / "model.safetensors")
    snp.save_file(tensors, p)
    return p


def empty_like(tensors):
    return {k: np.full_like(v, 0) for k, v in tensors.items()}


def assert_same(got, want):
    assert set(got) == set(want)
    for k in want:
        assert got[k].dtype == want[k].dtype, k
        assert got[k].shape == want[k].shape, k
        assert got[k].tobytes() == want[k].tobytes(), k


# MARK: the core method ---------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_read_into_whole_and_ranges(path, tensors, backend):
    f = _core.open(path, backend, 0)
    raw = tensors["big"].tobytes()
    out = bytearray(len(raw))
    assert f.read_into("big", out) == 0
    assert bytes(out) == raw
    part = np.zeros(1000, dtype=np.uint8)
    f.read_into("big", part, 4097)
    assert part.tobytes() == raw[4097:5097]
    tail = np.zeros(10, dtype=np.uint8)
    f.read_into("big", tail, len(raw) - 10)
    assert tail.tobytes() == raw[-10:]
    f.read_into("big", bytearray(0), len(raw))  # nothing, at the very end


@pytest.mark.parametrize("backend", BACKENDS)
def test_read_into_never_reaches_a_neighbour(path, tensors, backend):
    f = _core.open(path, backend, 0)
    n = tensors["half"].nbytes
    for offset, length in [(0, n + 1), (1, n), (n, 1), (n + 1, 0), (2**63, 1)]:
        out = np.full(length, 0xA5, dtype=np.uint8)
        with pytest.raises(SafetensorError,
                           match=r"tensor 'half' holds \d+ bytes: .* reach past its end"):
            f.read_into("half", out, offset)
        assert (out == 0xA5).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_read_into_bad_buffers(path, backend):
    f = _core.open(path, backend, 0)
    with pytest.raises(BufferError):
        f.read_into("u8", b"x" * 21)  # read-only
    with pytest.raises(ValueError, match="not C-contiguous"):
        f.read_into("u8", np.zeros(42, dtype=np.uint8)[::2])
    with pytest.raises(SafetensorError, match="no tensor named 'nope'"):
        f.read_into("nope", bytearray(1))
    with pytest.raises(TypeError):
        f.read_into(3, bytearray(1))
    with pytest.raises(ValueError, match="align must be a power of two, not 1000"):
        f.read_into("u8", bytearray(21), direct_fd=0, align=1000)


def test_read_into_after_the_file_shrank(tmp_path, tensors):
    p = str(tmp_path / "shrinks.safetensors")
    snp.save_file(tensors, p)
    f = _core.open(p, "mmap", 0)
    os.truncate(p, 100)
    out = bytearray(tensors["big"].nbytes)
    with pytest.raises(SafetensorError, match="truncated") as info:
        f.read_into("big", out)
    assert info.value.code == "STC_ERR_FILE_CHANGED"
    with pytest.raises(SafetensorError, match="truncated"):
        f.prefetch("big")


def test_read_into_pread_file_shrank(tmp_path, tensors):
    p = str(tmp_path / "shrinks.safetensors")
    snp.save_file(tensors, p)
    f = _core.open(p, "pread", 0)
    os.truncate(p, 100)
    with pytest.raises(SafetensorError, match="shorter than when it was opened"):
        f.read_into("big", bytearray(tensors["big"].nbytes))


@pytest.mark.parametrize("backend", BACKENDS)
def test_prefetch_bounds(path, tensors, backend):
    f = _core.open(path, backend, 0)
    n = tensors["big"].nbytes
    assert f.prefetch("big") is None
    f.prefetch("big", 4096, 8192, populate=False)
    f.prefetch("big", n)  # an empty range at the end
    with pytest.raises(SafetensorError, match="reach past its end"):
        f.prefetch("big", 1, n)
    with pytest.raises(SafetensorError, match="reach past its end"):
        f.prefetch("big", n + 1)
    assert f.tensor("big").tobytes() == tensors["big"].tobytes()


def test_direct_reads_bypass_the_page_cache_where_aligned(path, tensors):
    f = _core.open(path, "pread", 0)
    fd = _into.open_direct(path, f)
    if fd is None:
        pytest.skip("no O_DIRECT on this file system")
    try:
        code, shape, _, begin, end = f.info("big")
        n = end - begin
        block = np.zeros(n + 3 * 4096, dtype=np.uint8)
        # Place the buffer so that its address agrees with the file offset
        # modulo 4096: the aligned middle can then be read directly.
        file_offset = f.data_start + begin
        shift = (file_offset - block.ctypes.data) % 4096
        out = block[shift:shift + n]
        direct = f.read_into("big", out, direct_fd=fd)
        assert direct > 0 and direct % 4096 == 0 and direct <= n
        assert out.tobytes() == tensors["big"].tobytes()
        # Off by 8 bytes: everything through the page cache, same bytes.
        out = block[shift + 8:shift + 8 + n]
        assert f.read_into("big", out, direct_fd=fd) == 0
        assert out.tobytes() == tensors["big"].tobytes()
        # load_into with the descriptor gives the same tensors.
        dest = empty_like(tensors)
        _into.load_into(f, dest, direct_fd=fd, chunk_size=4096 * 8)
        assert_same(dest, tensors)
    finally:
        os.close(fd)


def test_direct_descriptor_of_another_file_is_refused(tmp_path, path, tensors):
    f = _core.open(path, "pread", 0)
    other = tmp_path / "other.bin"
    other.write_bytes(b"x" * 10)
    fd = os.open(other, os.O_RDONLY)
    try:
        out = np.full(tensors["big"].nbytes, 7, dtype=np.uint8)
        with pytest.raises(SafetensorError, match="not a file of the opened file's size"):
            f.read_into("big", out, direct_fd=fd)
        assert (out == 7).all()
    finally:
        os.close(fd)


def test_open_direct_is_none_for_mapped_readers(path):
    assert _into.open_direct(path, _core.open(path, "mmap", 0)) is None


# MARK: load_into ---------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("workers", [1, 2, 4])
@pytest.mark.parametrize("chunk", [None, 4096, 3 * 4096 + 5])
def test_load_into_matches_a_plain_load(path, tensors, backend, workers, chunk):
    reader = open_source(path, backend=backend)
    dest = empty_like(tensors)
    assert _into.load_into(reader, dest, max_workers=workers, chunk_size=chunk) is None
    assert_same(dest, tensors)


def test_load_into_chunks_cover_every_byte_once(path):
    reader = open_source(path)
    targets = _into.check_destinations(reader, {"big": np.zeros((300, 1000), np.float32)})
    pieces = _into._chunks(targets, reader.data_start, 2, 8192)
    assert len(pieces) > 100
    covered = 0
    for target, offset, length in pieces:
        assert offset == covered and length > 0
        covered += length
        if offset:  # every cut but the first falls on a block of the file
            assert (reader.data_start + target.begin + offset) % 4096 == 0
    assert covered == targets[0].nbytes


def test_load_into_subset_and_raw_destinations(path, tensors):
    reader = open_source(path)
    raw = bytearray(tensors["ints"].nbytes)
    half = np.zeros((17, 33), np.float16)
    _into.load_into(reader, {
        "ints": _into.Destination(raw, "I64", (5, 2469)),
        "half": half,
        "big": _into.Destination(memoryview(bytearray(tensors["big"].nbytes))),
    })
    assert bytes(raw) == tensors["ints"].tobytes()
    assert half.tobytes() == tensors["half"].tobytes()


def test_load_into_byte_source(path, tensors):
    class Source:
        def __init__(self, data):
            self.data = data
            self.name = "memory"
            self.size = len(data)

        def read_at(self, offset, length):
            return self.data[offset:offset + length]

    with open(path, "rb") as fh:
        reader = open_source(Source(fh.read()))
    dest = empty_like(tensors)
    _into.load_into(reader, dest, max_workers=3)
    assert_same(dest, tensors)


def _untouched(dest):
    return all((v == 0).all() for v in dest.values())


@pytest.mark.parametrize("backend", BACKENDS)
def test_mismatches_raise_before_any_write(path, tensors, backend):
    reader = open_source(path, backend=backend)

    def with_bad(name, value):
        # The bad destination comes last: nothing before it may be written.
        dest = empty_like(tensors)
        dest.pop(name, None)
        dest[name] = value
        return dest

    cases = [
        ("big", np.zeros((300, 1000), np.float64), SafetensorError,
         "tensor 'big': the file holds F32, the destination expects F64"),
        ("big", np.zeros((1000, 300), np.float32), SafetensorError,
         r"tensor 'big': the file's shape is \[300, 1000\], the destination's is \[1000, 300\]"),
        ("missing", np.zeros(3), SafetensorError, "no tensor named 'missing' in this file"),
        ("big", np.zeros((300, 1000), np.float32)[:, ::-1], ValueError,
         "the destination for 'big' is not C-contiguous"),
        ("ints", _into.Destination(bytearray(8), "I64"), SafetensorError,
         r"tensor 'ints' holds 98760 bytes; its destination has 8"),
        ("ints", _into.Destination(bytes(98760), "I64"), ValueError,
         "the destination for 'ints' is read-only"),
        ("ints", "not a buffer", TypeError, "must be a NumPy array or a Destination"),
        ("big", np.zeros((300, 1000), "V4"), TypeError, "which no safetensors dtype matches"),
    ]
    for name, bad, exc, message in cases:
        dest = with_bad(name, bad)
        with pytest.raises(exc, match=message):
            _into.load_into(reader, dest, max_workers=2)
        assert _untouched({k: v for k, v in dest.items() if isinstance(v, np.ndarray)
                           and v.dtype.kind != "V"}), name

    frozen = np.zeros((300, 1000), np.float32)
    frozen.flags.writeable = False
    dest = with_bad("big", frozen)
    with pytest.raises(ValueError, match="the destination for 'big' is read-only"):
        _into.load_into(reader, dest)
    assert _untouched(dest)


def test_shared_destinations_are_refused(path):
    reader = open_source(path)
    block = np.zeros(2 * 98760, np.uint8)
    dest = {
        "ints": _into.Destination(block[:98760]),
        "u8": _into.Destination(block[98750:98771]),
    }
    with pytest.raises(ValueError, match="share memory"):
        _into.load_into(reader, dest)
    assert (block == 0).all()


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_max_workers_must_be_positive(path, tensors, bad):
    with pytest.raises(ValueError, match="max_workers must be a positive int"):
        _into.load_into(open_source(path), empty_like(tensors), max_workers=bad)


def test_a_failing_read_is_raised(tmp_path, tensors):
    p = str(tmp_path / "m.safetensors")
    snp.save_file(tensors, p)
    reader = open_source(p, backend="pread")
    os.truncate(p, 200)
    dest = empty_like(tensors)
    with pytest.raises(SafetensorError, match="shorter than when it was opened"):
        _into.load_into(reader, dest, max_workers=2, chunk_size=4096)


def test_many_threads_share_one_reader(path, tensors):
    reader = open_source(path)
    errors = []

    def work():
        try:
            for _ in range(5):
                dest = empty_like(tensors)
                _into.load_into(reader, dest, max_workers=2, chunk_size=8192)
                assert_same(dest, tensors)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_run_parallel_keeps_order_and_raises():
    assert _into.run_parallel(lambda x: x * x, list(range(20)), 3) == [x * x for x in range(20)]

    def boom(x):
        if x == 5:
            raise KeyError("five")
        return x

    with pytest.raises(KeyError, match="five"):
        _into.run_parallel(boom, list(range(20)), 2)


# MARK: torch ---------------------------------------------------------------

torch = pytest.importorskip("torch")
import safetensors.torch as reference  # noqa: E402

import safetensors_c.torch as ct  # noqa: E402
from safetensors_c import sharded  # noqa: E402


class Net(torch.nn.Module):
    def __init__(self, tie: bool = True) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(300, 64)
        self.blocks = torch.nn.ModuleList(torch.nn.Linear(64, 64) for _ in range(3))
        self.norm = torch.nn.LayerNorm(64)
        self.head = torch.nn.Linear(64, 300, bias=False)
        if tie:
            self.head.weight = self.embed.weight
        self.register_buffer("steps", torch.tensor(7, dtype=torch.int64))
        self.register_buffer("mask", torch.rand(5) > 0.5)


def filled(seed: int, **kw) -> Net:
    torch.manual_seed(seed)
    net = Net(**kw)
    with torch.no_grad():
        for t in net.state_dict().values():
            if t.dtype.is_floating_point:
                t.normal_()
    return net


def same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def unchanged(model, before) -> bool:
    return all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.fixture
def saved(tmp_path):
    src = filled(1)
    p = str(tmp_path / "net.safetensors")
    ct.save_model(src, p)
    return src, p


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("workers", [1, 2])
def test_load_model_matches_the_reference(saved, backend, workers):
    src, p = saved
    ours, theirs = filled(2), filled(2)
    assert ct.load_model(ours, p, backend=backend, max_workers=workers) == (set(), [])
    assert reference.load_model(theirs, p) == (set(), [])
    assert same_state(ours, src) and same_state(ours, theirs)
    # In place: the parameters are the model's own, still tied.
    assert ours.head.weight is ours.embed.weight


def test_load_model_writes_into_the_existing_parameters(saved):
    src, p = saved
    net = filled(3)
    assert not torch.equal(net.blocks[0].weight, src.blocks[0].weight)  # something to write
    pointers = {k: v.data_ptr() for k, v in net.state_dict().items()}
    ct.load_model(net, p)
    # The same memory, now holding the saved values (a load that writes nothing fails here).
    assert {k: v.data_ptr() for k, v in net.state_dict().items()} == pointers
    assert same_state(net, src)


def test_load_model_strict_errors_before_any_write(saved, tmp_path):
    _, p = saved
    net = torch.nn.Sequential(torch.nn.Linear(64, 64))
    before = snapshot(net)
    with pytest.raises(RuntimeError, match=r"Missing key\(s\) in state_dict: \"0.bias\", "
                                           r"\"0.weight\"") as info:
        ct.load_model(net, p)
    assert "Unexpected key(s) in state_dict: " in str(info.value)
    assert unchanged(net, before)
    missing, unexpected = ct.load_model(net, p, strict=False)
    ref_missing, ref_unexpected = reference.load_model(torch.nn.Sequential(torch.nn.Linear(64, 64)),
                                                       p, strict=False)
    assert missing == set(ref_missing) and sorted(unexpected) == sorted(ref_unexpected)


def test_load_model_partial_is_loaded_without_strict(saved):
    src, p = saved
    net = filled(4)
    net.extra = torch.nn.Linear(2, 2)
    missing, unexpected = ct.load_model(net, p, strict=False)
    assert missing == {"extra.weight", "extra.bias"} and unexpected == []
    assert torch.equal(net.blocks[1].weight, src.blocks[1].weight)


def test_load_model_size_mismatch_before_any_write(tmp_path):
    p = str(tmp_path / "lin.safetensors")
    ct.save_model(torch.nn.Linear(3, 4), p)
    net = torch.nn.Linear(3, 5)
    before = snapshot(net)
    with pytest.raises(RuntimeError, match=r"size mismatch for weight: the file holds shape "
                                           r"\[4, 3\], the model's tensor has shape \[5, 3\]"):
        ct.load_model(net, p, strict=False)
    assert unchanged(net, before)
    with pytest.raises(RuntimeError, match="size mismatch for weight"):
        reference.load_model(torch.nn.Linear(3, 5), p, strict=False)


def test_load_model_casts_like_load_state_dict(saved):
    src, p = saved
    ours, theirs = filled(5).half(), filled(5).half()
    ct.load_model(ours, p)
    reference.load_model(theirs, p)
    assert ours.blocks[0].weight.dtype == torch.float16
    assert same_state(ours, theirs)


def _mapped_ranges(path):
    real = os.path.realpath(path)
    ranges = []
    with open("/proc/self/maps") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) >= 6 and parts[5] == real:
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                ranges.append((lo, hi))
    return ranges


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs /proc/self/maps")
def test_load_model_assign_adopts_the_mapping(saved):
    src, p = saved
    with torch.device("meta"):
        net = Net()
    assert ct.load_model(net, p, assign=True) == (set(), [])
    assert same_state(net, src)
    ranges = _mapped_ranges(p)
    assert ranges
    for name, t in net.state_dict().items():
        if t.numel():
            assert any(lo <= t.data_ptr() < hi for lo, hi in ranges), name
    assert net.head.weight is net.embed.weight  # tied again
    assert isinstance(net.blocks[0].weight, torch.nn.Parameter)
    assert net.blocks[0].weight.requires_grad


def test_load_model_with_loading_hooks_goes_through_load_state_dict(saved):
    src, p = saved

    class Renamed(Net):
        def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
            key = prefix + "steps"
            if key in state_dict:
                state_dict[key] = state_dict[key] + 1
            super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    net = Renamed()
    ct.load_model(net, p)
    assert int(net.steps) == int(src.steps) + 1


def test_load_model_sharded_directory(tmp_path):
    src = filled(6, tie=False)
    d = str(tmp_path / "ckpt")
    ct.save_sharded(src.state_dict(), d, max_shard_size="40KB", progress=False)
    assert len([f for f in os.listdir(d) if f.endswith(".safetensors")]) >= 3
    net = filled(7, tie=False)
    assert ct.load_model(net, d, max_workers=2) == (set(), [])
    assert same_state(net, src)


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_load_into(saved, backend):
    src, p = saved
    want = reference.load_file(p)  # the reference's reading, not our own
    assert all(torch.equal(v, src.state_dict()[k]) for k, v in want.items())
    dest = {k: torch.zeros_like(v) for k, v in want.items()}
    dest["embed.weight"].requires_grad_(True)
    assert ct.load_into(dest, p, backend=backend, max_workers=2) is None
    for k, v in want.items():
        assert torch.equal(dest[k], v), k


def test_torch_load_into_every_dtype(tmp_path):
    tensors = {
        "f32": torch.randn(3, 4), "bf16": torch.randn(5).to(torch.bfloat16),
        "f16": torch.randn(2, 2).half(), "i8": torch.tensor([-1, 2], dtype=torch.int8),
        "u8": torch.tensor([1, 255], dtype=torch.uint8), "b": torch.tensor([True, False]),
        "scalar": torch.tensor(2.5, dtype=torch.float64), "empty": torch.zeros(0, 3),
        "c64": torch.randn(3, dtype=torch.complex64), "f8": torch.randn(4).to(torch.float8_e4m3fn),
    }
    p = str(tmp_path / "all.safetensors")
    ct.save_file(tensors, p)
    dest = {k: torch.empty_like(v) for k, v in tensors.items()}
    ct.load_into(dest, p)
    for k, v in tensors.items():
        assert dest[k].view(-1).view(torch.uint8).tolist() == v.view(-1).view(torch.uint8).tolist()


def test_torch_load_into_checks_first(saved):
    _, p = saved
    want = reference.load_file(p)

    def dest_with(name, value):
        d = {k: torch.zeros_like(v) for k, v in want.items() if k != name}
        d[name] = value
        return d

    cases = [
        ("norm.weight", torch.zeros(64, dtype=torch.float64), SafetensorError,
         "tensor 'norm.weight': the file holds F32, the destination expects F64"),
        ("norm.weight", torch.zeros(65), SafetensorError,
         r"the file's shape is \[64\], the destination's is \[65\]"),
        ("nope", torch.zeros(1), SafetensorError, "no tensor named 'nope'"),
        ("blocks.0.weight", torch.zeros(64, 64).t(), ValueError, "is not contiguous"),
        ("blocks.0.weight", [0.0], TypeError, "must be a torch.Tensor"),
    ]
    for name, value, exc, message in cases:
        d = dest_with(name, value)
        with pytest.raises(exc, match=message):
            ct.load_into(d, p)
        assert all(not v.any() for v in d.values() if isinstance(v, torch.Tensor)), name


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("workers", [1, 3])
def test_load_sharded_in_parallel(tmp_path, backend, workers):
    src = filled(8, tie=False).state_dict()
    d = str(tmp_path / "ckpt")
    ct.save_sharded(src, d, max_shard_size="40KB", progress=False)
    got = ct.load_sharded(d, backend=backend, max_workers=workers, progress=False)
    assert list(got) == [n for s in sorted(os.listdir(d)) if s.endswith(".safetensors")
                         for n in open_source(os.path.join(d, s)).offset_keys()]
    for k, v in src.items():
        assert torch.equal(got[k], v), k
    np_got = sharded.load_sharded(d, backend=backend, max_workers=workers, progress=False)
    assert np_got.keys() == got.keys()
    for k, v in src.items():
        assert isinstance(np_got[k], np.ndarray), k
        assert np_got[k].shape == tuple(v.shape), k
        assert np_got[k].tobytes() == v.contiguous().view(-1).view(torch.uint8).numpy().tobytes(), k


def test_plan_needs_a_process_group(saved, tmp_path):
    _, p = saved
    with pytest.raises(ValueError, match="plan= splits tensors between ranks: it needs "
                                         "process_group="):
        ct.load_file(p, plan={"norm.weight": 0})
    with pytest.raises(ValueError, match="needs process_group="):
        ct.load_sharded(p, plan={"norm.weight": 0}, progress=False)
