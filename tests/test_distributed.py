"""The scale-out recipe (docs/distributed.md): tensor-parallel loading with torch.distributed.

Two CPU processes (gloo) open one sharded checkpoint lazily; each takes its
slice of every tensor with get_slice (rows of column-parallel weights,
columns of row-parallel ones); the gathered slices equal the full load.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():  # pragma: no cover
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

import safetensors_c.torch as ct  # noqa: E402
from safetensors_c.sharded import safe_open_sharded  # noqa: E402

from rank_processes import free_port, process_group, spawn_ranks  # noqa: E402

WORLD = 2
TIMEOUT = 20  # seconds a collective may wait; the whole spawn gets 10 more


def shard_dim(name: str) -> int:
    """Column-parallel weights split rows (dim 0), row-parallel ones columns."""
    return 1 if name.endswith("o_proj.weight") else 0


def worker(rank: int, port: int, checkpoint: str, out: str) -> None:
    with process_group(rank, WORLD, port, TIMEOUT):
        mine = {}
        with safe_open_sharded(checkpoint, framework="pt") as f:
            for name in f.keys():
                sl = f.get_slice(name)
                dim = shard_dim(name)
                size = sl.get_shape()[dim]
                step = size // WORLD
                index = [slice(None)] * len(sl.get_shape())
                index[dim] = slice(rank * step, (rank + 1) * step)
                mine[name] = sl[tuple(index)]
        gathered = {}
        for name in sorted(mine):
            part = mine[name].contiguous()
            parts = [torch.empty_like(part) for _ in range(WORLD)]
            dist.all_gather(parts, part)
            gathered[name] = torch.cat(parts, dim=shard_dim(name))
        if rank == 0:
            ct.save_file(gathered, out)
        dist.barrier()


def test_tensor_parallel_load_equals_full_load(tmp_path):
    torch.manual_seed(0)
    tensors = {}
    for layer in range(3):
        tensors[f"layers.{layer}.q_proj.weight"] = torch.randn(8, 6)
        tensors[f"layers.{layer}.o_proj.weight"] = torch.randn(6, 8).to(torch.bfloat16)
    tensors["embed.weight"] = torch.randn(10, 6)
    checkpoint = tmp_path / "ckpt"
    ct.save_sharded(tensors, checkpoint, max_shard_size=400, progress=False)
    assert len(list(checkpoint.glob("model-*.safetensors"))) > 1

    out = tmp_path / "gathered.safetensors"
    spawn_ranks(worker, (free_port(), str(checkpoint), str(out)), WORLD, deadline=TIMEOUT + 10)

    gathered = ct.load_file(out)
    full = ct.load_sharded(checkpoint, progress=False)
    assert sorted(gathered) == sorted(full) == sorted(tensors)
    for name, tensor in full.items():
        assert gathered[name].dtype == tensor.dtype
        assert torch.equal(gathered[name], tensor), name
        assert torch.equal(tensor, tensors[name])
