"""The work every loader of benchmarks/peers.py and benchmarks/contention.py does, and the
loaders themselves: a checkpoint's file(s) -> the values in a model's own, preallocated
parameters.

The model is transformer-like (an embedding, then per layer four square projections, an MLP
pair and two norms), float32 or bfloat16, built on the meta device and materialised with
every page touched, so that no loader pays for faulting in the model's own memory. The values
follow a per-tensor pattern; a fingerprint of every tensor checks each load (outside the
timed part), so a loader that writes nothing, or writes in the wrong place, fails its run.

A peer is used the way its documentation shows, with its defaults, and its tensors are copied
into the model's parameters by that peer's own usual path: ``load_model`` /
``load_state_dict`` where the library has one, ``param.copy_(tensor)`` otherwise.
"""

from __future__ import annotations

import importlib.util
import json
import os
import threading
import zlib
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np

GiB, MiB = 1 << 30, 1 << 20
SHARDS = 4
LAYOUTS = ("single", "sharded")
DTYPES = ("float32", "bfloat16")
WARMUP_SIZE = 2 * MiB  # the checkpoint each child loads first, untimed


# -- the model ---------------------------------------------------------------


def geometry(size: int, dtype: str) -> tuple:
    """(width, layers, vocab) of a model of about ``size`` bytes in ``dtype``."""
    element = 4 if dtype == "float32" else 2
    width = 1024 if size >= 256 * MiB else 256
    vocab = 2048
    per_layer = 8 * width * width * element
    layers = max(1, round((size - vocab * width * element) / per_layer))
    return width, layers, vocab


def build_model(size: int, dtype: str):
    """The model loaded into: allocated, every page written (zeros)."""
    import torch

    width, layers, vocab = geometry(size, dtype)

    class Layer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            for name in ("q", "k", "v", "o"):
                setattr(self, name, torch.nn.Linear(width, width, bias=False))
            self.up = torch.nn.Linear(width, 2 * width)
            self.down = torch.nn.Linear(2 * width, width)
            self.norm1 = torch.nn.LayerNorm(width)
            self.norm2 = torch.nn.LayerNorm(width)

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(vocab, width)
            self.layers = torch.nn.ModuleList(Layer() for _ in range(layers))
            self.norm = torch.nn.LayerNorm(width)

    with torch.device("meta"):
        model = Model().to(getattr(torch, dtype))
    model = model.to_empty(device="cpu")
    for tensor in model.state_dict().values():
        # NumPy, one thread: torch's zero_ wakes its thread pool for every tensor, which
        # costs seconds per model on a busy machine.
        _bytes_of(tensor).fill(0)
    return model


def fill_pattern(model) -> None:
    """Deterministic values, different per tensor (exact in bfloat16: small integers)."""
    import torch

    with torch.no_grad():
        for i, tensor in enumerate(model.state_dict().values()):
            flat = tensor.view(-1)
            flat.copy_((torch.arange(flat.numel()) % 251 + (i % 7)).to(flat.dtype))


def _bytes_of(tensor) -> np.ndarray:
    import torch

    return tensor.detach().reshape(-1).view(torch.uint8).numpy()


def fingerprint(model) -> Dict[str, int]:
    """A CRC of every tensor's first and last bytes and of one byte in 4093 between."""
    out = {}
    for name, tensor in model.state_dict().items():
        data = _bytes_of(tensor)
        crc = zlib.crc32(data[:64].tobytes())
        crc = zlib.crc32(data[-64:].tobytes(), crc)
        out[name] = zlib.crc32(data[::4093].tobytes(), crc)
    return out


def check(model, expected: Dict[str, int]) -> Optional[str]:
    """None when every tensor holds the saved values; else what is wrong."""
    got = fingerprint(model)
    wrong = [name for name in expected if got.get(name) != expected[name]]
    if wrong or set(got) != set(expected):
        return f"{len(wrong)} of {len(expected)} tensors do not hold the saved values: {wrong[:3]}"
    return None


# -- the checkpoint files -----------------------------------------------------


@dataclass
class Files:
    """The same values as one safetensors file, 4 safetensors shards (+ index), and the same
    two layouts as torch.save'd .pt files."""

    single: str
    shard_dir: str
    shards: List[str]
    pt_single: str
    pt_shards: List[str]
    nbytes: int
    expected: Dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict:
        return self.__dict__

    @classmethod
    def from_json(cls, data: dict) -> "Files":
        return cls(**data)

    def st(self, layout: str) -> List[str]:
        return [self.single] if layout == "single" else self.shards

    def pt(self, layout: str) -> List[str]:
        return [self.pt_single] if layout == "single" else self.pt_shards


def _shard_count(sizes: List[int], limit: int) -> int:
    # save_sharded's rule: tensors fill shards in order; a shard is closed when the next
    # tensor would take it past the limit.
    count, used = 1, 0
    for size in sizes:
        if used and used + size > limit:
            count, used = count + 1, 0
        used += size
    return count


def shard_limit(sizes: List[int], shards: int) -> int:
    """The smallest max_shard_size that cuts ``sizes`` into at most ``shards`` shards."""
    low, high = max(max(sizes), -(-sum(sizes) // shards)), sum(sizes)
    while low < high:
        middle = (low + high) // 2
        if _shard_count(sizes, middle) <= shards:
            high = middle
        else:
            low = middle + 1
    return low


def write_checkpoints(directory: str, size: int, dtype: str) -> Files:
    import torch

    import safetensors_c.torch as ours

    model = build_model(size, dtype)
    fill_pattern(model)
    state = model.state_dict()
    single = os.path.join(directory, "model.safetensors")
    ours.save_file(state, single)
    nbytes = sum(t.numel() * t.element_size() for t in state.values())
    shard_dir = os.path.join(directory, "sharded")
    sizes = [t.numel() * t.element_size() for t in state.values()]
    index = ours.save_sharded(state, shard_dir, max_shard_size=shard_limit(sizes, SHARDS))
    weight_map = index["weight_map"]
    shards = sorted(set(weight_map.values()))
    pt_single = os.path.join(directory, "model.pt")
    torch.save(state, pt_single)
    pt_shards = []
    for i, shard in enumerate(shards):
        part = {name: state[name] for name, file in weight_map.items() if file == shard}
        pt_shards.append(os.path.join(directory, f"model-{i:05d}.pt"))
        torch.save(part, pt_shards[-1])
    files = Files(single, shard_dir, [os.path.join(shard_dir, s) for s in shards], pt_single,
                  pt_shards, nbytes, fingerprint(model))
    for path in [files.single, *files.shards, files.pt_single, *files.pt_shards]:
        with open(path, "rb+") as f:  # settle the writeback before timing anything
            os.fsync(f.fileno())
    with open(os.path.join(directory, "files.json"), "w") as f:
        json.dump(files.to_json(), f)
    return files


# -- the loaders ----------------------------------------------------------------
# prepare(model, files, layout) -> the zero-argument callable that is timed.


def _ours(model, files, layout, **options):
    import safetensors_c.torch as ours

    target = files.single if layout == "single" else files.shard_dir
    return lambda: ours.load_model(model, target, **options)


def _reference(model, files, layout, backend="mmap"):
    import safetensors.torch as reference

    if layout == "single":
        return lambda: reference.load_model(model, files.single, backend=backend)

    def run():  # the reference has no sharded load_model: one load_file per shard
        for shard in files.shards:
            model.load_state_dict(reference.load_file(shard, backend=backend), strict=False)
    return run


def _torch_mmap(model, files, layout):
    import torch

    paths = files.pt(layout)

    def run():
        for path in paths:
            state = torch.load(path, mmap=True, weights_only=True)
            model.load_state_dict(state, strict=len(paths) == 1)
    return run


def _runai(model, files, layout):
    import torch
    from runai_model_streamer import SafetensorsStreamer

    params = model.state_dict()
    paths = files.st(layout)

    def run():
        # owned=False: views into the streamer's reusable buffers, each copied into its
        # parameter before the next one is asked for (its documented low-memory way).
        with torch.no_grad(), SafetensorsStreamer() as streamer:
            streamer.stream_files(paths, owned=False)
            for name, tensor in streamer.get_tensors():
                params[name].copy_(tensor)
    return run


def _fastsafetensors(model, files, layout):
    import torch
    from fastsafetensors import SafeTensorsFileLoader

    params = model.state_dict()
    paths = files.st(layout)

    def run():
        loader = SafeTensorsFileLoader(None, device="cpu", nogds=True)
        try:
            loader.add_filenames({0: paths})
            buffers = loader.copy_files_to_device()
            try:
                with torch.no_grad():
                    for name in buffers.key_to_rank_lidx:
                        params[name].copy_(buffers.get_tensor(name))
            finally:
                buffers.close()
        finally:
            loader.close()
    return run


def _memcpy_all_cores(model, files, layout):
    """Every byte of the checkpoint's tensors copied once, split over one thread per CPU,
    between two buffers that are already in memory (the warm floor)."""
    src = np.ones(files.nbytes, dtype=np.uint8)
    dst = np.ones(files.nbytes, dtype=np.uint8)
    workers = os.cpu_count() or 1
    step = -(-files.nbytes // workers)

    def part(start):
        np.copyto(dst[start:start + step], src[start:start + step])  # without the GIL

    def run():
        threads = [threading.Thread(target=part, args=(start,))
                   for start in range(0, files.nbytes, step)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return run


def _sequential_read(model, files, layout):
    """One thread reading each (evicted) file front to back in 16 MiB reads into a buffer
    already in memory (the cold floor)."""
    paths = files.st(layout)
    buffer = memoryview(np.ones(max(os.path.getsize(p) for p in paths), dtype=np.uint8))

    def run():
        for path in paths:
            fd = os.open(path, os.O_RDONLY)
            try:
                offset = 0
                while True:
                    got = os.preadv(fd, [buffer[offset:offset + (16 << 20)]], offset)
                    if not got:
                        break
                    offset += got
            finally:
                os.close(fd)
    return run


@dataclass(frozen=True)
class Loader:
    key: str
    label: str
    prepare: Callable
    needs: Optional[str] = None  # a module that must be importable
    pt: bool = False  # reads the .pt files, not the safetensors ones
    floor: Optional[str] = None  # "warm" or "cold": a floor, measured in that cache state
    threads: Optional[int] = None  # torch.set_num_threads in the child first
    ours: bool = False

    def available(self) -> bool:
        return self.needs is None or importlib.util.find_spec(self.needs) is not None

    def paths(self, files: Files, layout: str) -> List[str]:
        return files.pt(layout) if self.pt else files.st(layout)


LOADERS = {
    loader.key: loader
    for loader in (
        Loader("floor.memcpy", "memcpy of every byte, all cores (warm floor)", _memcpy_all_cores,
               floor="warm"),
        Loader("floor.seqread", "sequential read of the file(s) (cold floor)", _sequential_read,
               floor="cold"),
        Loader("ours", "safetensors_c load_model", _ours, ours=True),
        Loader("ours.1worker", "safetensors_c load_model, max_workers=1",
               lambda m, f, l: _ours(m, f, l, max_workers=1), ours=True),
        Loader("reference", "safetensors load_model (reference)", _reference,
               needs="safetensors"),
        Loader("reference.pread", "safetensors load_model, backend=\"pread\"",
               lambda m, f, l: _reference(m, f, l, backend="pread"), needs="safetensors"),
        Loader("reference.1thread", "safetensors load_model, torch.set_num_threads(1)",
               _reference, needs="safetensors", threads=1),
        Loader("runai", "Run:ai Model Streamer (SafetensorsStreamer)", _runai,
               needs="runai_model_streamer"),
        Loader("fastsafetensors", "fastsafetensors (CPU, nogds)", _fastsafetensors,
               needs="fastsafetensors"),
        Loader("torch.mmap", "torch.load(mmap=True) + load_state_dict", _torch_mmap,
               needs="torch", pt=True),
    )
}

PEERS = ("ours", "reference", "runai", "fastsafetensors", "torch.mmap")
