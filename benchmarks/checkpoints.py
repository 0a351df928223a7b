"""Deterministic synthetic checkpoints, generated in memory.

Each checkpoint is a function of its kind and size only, so the parent
process (which writes every competitor's file) and each worker (which
times a writer, or reads the arrays already in memory) rebuild the very
same tensors. Nothing large is ever committed.

Kinds:
  llm       a transformer-like state dict (embedding, 16 layers of attention
            and MLP matrices with norms, final norm, lm_head): 147 tensors,
            F32; ``size`` is the target size in bytes.
  llm_bf16  the same layout in bfloat16 (ml_dtypes), half the bytes.
  small     a LoRA-like dict of ``size`` tensors of 32x32 F32.
  wide      ``size`` tensors, most tiny or empty: a header-parsing workload.
  big       one 2-D F32 tensor of ``size`` bytes (for get_slice and np.save).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

KINDS = ("llm", "llm_bf16", "small", "wide", "big")

_LAYERS = 16
_POOL_BYTES = 8 << 20
_SEED = 20240611


@dataclass(frozen=True)
class Spec:
    """What a checkpoint holds, without the data."""

    kind: str
    size: int  # bytes for llm/llm_bf16/big, tensor count for small/wide
    shapes: dict  # name -> (dtype name, shape), in insertion order

    @property
    def n_tensors(self) -> int:
        return len(self.shapes)

    @property
    def nbytes(self) -> int:
        return sum(np.dtype(_np_dtype(d)).itemsize * math.prod(s) for d, s in self.shapes.values())

    @property
    def largest(self) -> tuple[str, tuple]:
        """Name and shape of the largest 2-D tensor (the get_slice target)."""
        name, (_, shape) = max(
            ((n, v) for n, v in self.shapes.items() if len(v[1]) == 2),
            key=lambda item: math.prod(item[1][1]),
        )
        return name, shape

    def describe(self) -> str:
        dtypes = sorted({d for d, _ in self.shapes.values()})
        return f"{format_bytes(self.nbytes)}, {self.n_tensors:,} tensors, {'/'.join(dtypes)}"


# -- sizes -------------------------------------------------------------------

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20,
          "g": 1 << 30, "gib": 1 << 30}


def parse_size(text: str) -> int:
    """'1GiB' -> 1073741824, '64MiB', '512k', '10000' (a plain count)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"bad size {text!r}: use a number with an optional KiB/MiB/GiB suffix")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def format_bytes(n: float) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}" if abs(n) < 10 * scale else f"{n / scale:.0f} {unit}"
    return f"{n:.0f} B"


# -- layouts -----------------------------------------------------------------

def _np_dtype(name: str):
    if name == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return np.dtype(name)


def _llm_shapes(size: int, dtype: str) -> dict:
    # params ~= 16 * (4 d^2 + 3 * 2.75 d^2) + 2 * 31.25 d^2 = 258.5 d^2
    # (size is the F32 byte budget; the bf16 variant keeps the layout.)
    d = math.sqrt(size / 4 / 258.5)
    d = max(16, int(round(d / 16)) * 16)
    ffn, vocab = int(round(2.75 * d / 16)) * 16, int(round(31.25 * d))
    shapes = {"model.embed_tokens.weight": (dtype, (vocab, d))}
    for i in range(_LAYERS):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (dtype, (d,))
        for proj in ("q", "k", "v", "o"):
            shapes[p + f"self_attn.{proj}_proj.weight"] = (dtype, (d, d))
        shapes[p + "post_attention_layernorm.weight"] = (dtype, (d,))
        shapes[p + "mlp.gate_proj.weight"] = (dtype, (ffn, d))
        shapes[p + "mlp.up_proj.weight"] = (dtype, (ffn, d))
        shapes[p + "mlp.down_proj.weight"] = (dtype, (d, ffn))
    shapes["model.norm.weight"] = (dtype, (d,))
    shapes["lm_head.weight"] = (dtype, (vocab, d))
    return shapes


_LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _small_shapes(count: int) -> dict:
    shapes = {}
    for i in range(count):
        layer, rest = divmod(i, 2 * len(_LORA_MODULES))
        module, ab = divmod(rest, 2)
        name = f"base_model.model.layers.{layer}.{_LORA_MODULES[module]}.lora_{'AB'[ab]}.weight"
        shapes[name] = ("float32", (32, 32))
    return shapes


# index % 10 -> (dtype, shape): 40% empty, most of the rest a few elements.
_WIDE_CYCLE = (
    ("float32", (0,)), ("float32", (0, 8)), ("int64", (0,)), ("uint8", (0,)),
    ("float32", (1,)), ("int64", (1,)), ("bool", (4,)),
    ("float16", (2, 3)), ("float32", (4,)), ("float32", (16,)),
)


def _wide_shapes(count: int) -> dict:
    return {f"blocks.{i // 100}.buffers.b{i % 100}": _WIDE_CYCLE[i % 10] for i in range(count)}


def _big_shapes(size: int) -> dict:
    cols = 4096 if size >= (64 << 20) else 256
    rows = max(8, size // (4 * cols))
    return {"weight": ("float32", (rows, cols))}


def spec(kind: str, size: int) -> Spec:
    if kind == "llm":
        shapes = _llm_shapes(size, "float32")
    elif kind == "llm_bf16":
        shapes = _llm_shapes(size, "bfloat16")
    elif kind == "small":
        shapes = _small_shapes(size)
    elif kind == "wide":
        shapes = _wide_shapes(size)
    elif kind == "big":
        shapes = _big_shapes(size)
    else:
        raise ValueError(f"unknown checkpoint kind {kind!r}; use one of {', '.join(KINDS)}")
    return Spec(kind, size, shapes)


# -- data --------------------------------------------------------------------

def _fill(pool: np.ndarray, start: int, n: int) -> np.ndarray:
    """``n`` values read cyclically from ``pool`` from ``start``: fresh memory."""
    if start + n <= pool.size:
        return pool[start:start + n].copy()
    out = np.empty(n, np.float32)
    done = 0
    while done < n:
        chunk = pool[start:start + n - done]
        out[done:done + chunk.size] = chunk
        done += chunk.size
        start = 0
    return out


def build(s: Spec) -> dict:
    """The tensors of ``s``: deterministic values, fresh memory."""
    # One pool of random normals, reused at a different offset per tensor:
    # generating 1 GiB of fresh normals would take seconds in every worker.
    rng = np.random.default_rng(_SEED)
    pool = (rng.standard_normal(_POOL_BYTES // 4, dtype=np.float32) * 0.02).astype(np.float32)
    tensors = {}
    for index, (name, (dtype, shape)) in enumerate(s.shapes.items()):
        n = math.prod(shape)
        if name.endswith("norm.weight"):
            values = np.ones(n, np.float32)
        else:
            values = _fill(pool, (index * 7919) % pool.size, n)
        if dtype == "bfloat16":
            array = (values.view(np.uint32) >> 16).astype(np.uint16).view(_np_dtype(dtype))
        elif dtype == "bool":
            array = values > 0
        elif dtype in ("int64", "uint8"):
            array = (values.view(np.uint32) & 0x7F).astype(dtype)
        else:
            array = values.astype(dtype, copy=False)
        tensors[name] = array.reshape(shape)
    return tensors
