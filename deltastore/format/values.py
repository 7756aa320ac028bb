"""Value formats: one codec object per format (FORMAT.md §3).

A codec owns the arrays a group's values need per step (``values``, plus
``scales`` for int8 and int4), encodes a float update into buffer rows and decodes stored
rows back to float32. Nothing else in the engine branches on the value format.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import numpy as np
import torch

from ..errors import InvalidArgumentError

VALUE_DTYPES = ("float32", "float16", "bfloat16", "int8", "int4")
# int8 with one float32 scale per 256 values: a quarter of float32's bytes, and
# on digits (MLP, class request, 2 seeds, shuffled and class-sorted batches) the
# same retained/targeted accuracy as float32 to three decimals (README).
DEFAULT_VALUE_DTYPE = "int8"
DEFAULT_INT8_BLOCK = 256
# int4: one float32 scale per 64 values (0.3-0.4 stored bits per value on top of the code).
# Measured on MLP, LeNet and ResNet-18 updates (benchmarks.values.block_sweep): error x
# bits is flat within 1.2 % from 64 to 256 and worse below; 64 has the lowest error on
# that plateau (-3 to -9 % against 256, for +0.23 bits). RESULTS.md, "Value formats".
DEFAULT_INT4_BLOCK = 64
DEFAULT_BLOCK = {"int8": DEFAULT_INT8_BLOCK, "int4": DEFAULT_INT4_BLOCK}


def parse_value_dtype(value_dtype: str) -> str:
    if value_dtype not in VALUE_DTYPES:
        raise InvalidArgumentError(f"value_dtype: expected one of {VALUE_DTYPES}, got {value_dtype!r}")
    return value_dtype


class ValueCodec(ABC):
    """How one value format lays a group's k kept values out, per step."""

    name: str
    # Whether encode_into rounds stochastically, and so needs a rounding_key (int4).
    stochastic: bool = False

    @abstractmethod
    def arrays(self, k: int) -> dict[str, tuple[int, np.dtype, dict]]:
        """Array name -> (columns, storage dtype, Zarr attributes), ``values`` first."""

    def bytes_per_step(self, k: int) -> int:
        return sum(cols * dtype.itemsize for cols, dtype, _ in self.arrays(k).values())

    def torch_dtype(self, name: str) -> torch.dtype:
        """Buffer dtype of one of this codec's arrays."""
        return _TORCH_OF[self.arrays(1)[name][1].str]

    @abstractmethod
    def encode_into(self, values: torch.Tensor, rows: dict[str, torch.Tensor], *, rounding_key: int | None = None) -> None:
        """Encode one step's values (float, any device) into one buffer row per array.

        ``rounding_key`` seeds stochastic rounding (int4): the writer derives it from
        (mask seed, step, group), so re-recording the same run writes the same bytes.
        Deterministic formats ignore it.
        """

    @abstractmethod
    def decode(self, raw: dict[str, np.ndarray], k: int | None = None) -> torch.Tensor:
        """Stored rows (numpy, storage dtypes, shape (r, cols)) -> float32 torch (r, k).

        ``k`` (values per row) is needed where the columns do not say it (int4 packs
        two values per byte); the other formats check it when given.
        """

    @staticmethod
    def as_numpy(rows: torch.Tensor) -> np.ndarray:
        """A buffer's rows as the numpy array Zarr stores (bfloat16 as its uint16 bits)."""
        return rows.view(torch.int16).numpy().view(np.uint16) if rows.dtype == torch.bfloat16 else rows.numpy()


_TORCH_OF = {np.dtype("float32").str: torch.float32, np.dtype("float16").str: torch.float16,
             np.dtype("int8").str: torch.int8, np.dtype("uint8").str: torch.uint8}


class FloatCodec(ValueCodec):
    """float32 (lossless), float16 or bfloat16 (rounded once, when recorded)."""

    def __init__(self, name: str):
        self.name = name
        # bfloat16 has no numpy dtype: stored as its 16 bits (uint16), little-endian.
        self._numpy = np.dtype({"float32": "float32", "float16": "float16", "bfloat16": "uint16"}[name])
        self._torch = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]

    def arrays(self, k: int) -> dict:
        return {"values": (k, self._numpy, {"value_dtype": self.name})}

    def torch_dtype(self, name: str) -> torch.dtype:
        return self._torch

    def encode_into(self, values: torch.Tensor, rows: dict[str, torch.Tensor], *, rounding_key: int | None = None) -> None:
        rows["values"].copy_(values, non_blocking=True)

    def decode(self, raw: dict[str, np.ndarray], k: int | None = None) -> torch.Tensor:
        _check_width(raw["values"], k)
        t = torch.from_numpy(np.ascontiguousarray(raw["values"]))
        if self.name == "bfloat16":
            return t.view(torch.int16).view(torch.bfloat16).to(torch.float32)
        return t if self.name == "float32" else t.to(torch.float32)


class BlockScaledCodec(ValueCodec):
    """Integer codes with one float32 scale per ``block`` values (int8, int4)."""

    def __init__(self, block: int):
        if isinstance(block, bool) or not isinstance(block, int) or block < 1:
            raise InvalidArgumentError(f"int8_block: expected an integer >= 1, got {block!r}")
        self.block = block

    def num_blocks(self, k: int) -> int:
        return max(1, math.ceil(k / self.block))


class Int8Codec(BlockScaledCodec):
    """Symmetric int8 with one float32 scale per block of ``block`` values.

    scale = max|v| / 127 over the block; q = round(v / scale), clamped to ±127.
    A zero block has scale 0. Decoded value = q * scale (float32).
    """

    name = "int8"

    def __init__(self, block: int = DEFAULT_INT8_BLOCK):
        super().__init__(block)

    def arrays(self, k: int) -> dict:
        return {"values": (k, np.dtype("int8"), {"value_dtype": "int8"}),
                "scales": (self.num_blocks(k), np.dtype("float32"), {"int8_block": self.block})}

    # ---- the reference quantiser (any device) ------------------------------------
    def quantize(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(int8 codes (k,), float32 scales (num_blocks,)) of a float vector."""
        k, block = values.numel(), self.block
        nb = self.num_blocks(k)
        padded = torch.zeros(nb * block, dtype=torch.float32, device=values.device)
        padded[:k] = values
        blocks = padded.view(nb, block)
        scales = blocks.abs().amax(dim=1) / 127.0
        safe = torch.where(scales > 0, scales, torch.ones_like(scales))
        q = torch.round(blocks / safe[:, None]).clamp_(-127, 127).to(torch.int8)
        return q.view(-1)[:k], scales

    def dequantize(self, q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`quantize` for rows: q (..., k), scales (..., num_blocks)."""
        k = q.shape[-1]
        return q.to(torch.float32) * scales.repeat_interleave(self.block, dim=-1)[..., :k]

    # ---- the recorder's path --------------------------------------------------------
    def encode_into(self, values: torch.Tensor, rows: dict[str, torch.Tensor], *, rounding_key: int | None = None) -> None:
        if values.device.type == "cpu":
            values = values.float()
            if values.numel() <= SMALL_VALUES and _quantize_small_np(values, rows["values"], rows["scales"], self.block, 127):
                return
            self._quantize_cpu_into(values, rows["values"], rows["scales"])
        else:  # quantise on the device, copy a quarter of the bytes to the host
            q, s = self.quantize(values.float())
            rows["values"].copy_(q, non_blocking=True)
            rows["scales"].copy_(s, non_blocking=True)

    def _quantize_cpu_into(self, values: torch.Tensor, q_out: torch.Tensor, s_out: torch.Tensor) -> None:
        """:meth:`quantize` of a CPU float32 vector, bit-identical, in fewer memory passes.

        The whole blocks are viewed in place (no zero-padded copy), the per-block
        max |v| is max(-min, max) (no ``abs`` copy), and the codes go straight into
        the int8 row buffer; only a ragged last block takes the reference path.
        ``amax`` and ``amin`` are separate reductions on purpose: ``torch.aminmax(dim=1)``
        over 256-wide rows took 7.0 ms for 2.4 M values on the 2-core dev CPU against
        0.42 ms for the pair (torch 2.13, one thread).
        """
        k, block = values.numel(), self.block
        full = k // block
        if full:
            head = values[: full * block].reshape(full, block)
            lo, hi = head.amin(dim=1), head.amax(dim=1)
            scales = s_out[:full]
            torch.maximum(lo.neg_(), hi, out=scales)  # max |v| per block (NaN propagates, as in amax)
            scales.div_(127.0)
            safe = torch.where(scales > 0, scales, 1.0)
            q = torch.div(head, safe[:, None])
            q.round_().clamp_(-127, 127)
            q_out[: full * block].view(full, block).copy_(q)
        if full * block < k:
            tq, ts = self.quantize(values[full * block :])
            q_out[full * block :].copy_(tq)
            s_out[full:].copy_(ts)

    # ---- the reader's path ------------------------------------------------------------
    def decode(self, raw: dict[str, np.ndarray], k: int | None = None) -> torch.Tensor:
        """q * scale in one numpy pass per row block: bit-identical to :meth:`dequantize`.

        numpy, not torch, because this runs on reader threads, where torch's OpenMP
        teams would oversubscribe the cores; no repeated scale per value is built.
        """
        _check_width(raw["values"], k)
        return torch.from_numpy(_scale_blocks(raw["values"], np.asarray(raw["scales"], dtype=np.float32), self.block))


# Rows up to this many values are quantised in numpy: a torch op costs ~5-10 us of dispatch
# here, a numpy op on a small array ~1 us, and a model's biases, norms and buffers are many
# small groups (a 1.56 M-parameter CNN: 19 of its 22 groups; their torch path cost 4.4 ms of
# 7.6 ms of encoding per step). Bit-identical to the torch path (IEEE float32 division,
# round half to even); rows with a non-finite value take the torch path.
SMALL_VALUES = 8192


def _small_blocks(values: torch.Tensor, block: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(zero-padded blocks (nb, block), max|v| per block) of a small CPU float32 row; None if not finite."""
    a = values.detach().reshape(-1).numpy()
    k = a.size
    nb = max(1, -(-k // block))
    if nb * block != k:
        padded = np.zeros(nb * block, dtype=np.float32)
        padded[:k] = a
        a = padded
    b = a.reshape(nb, block)
    m = np.maximum(-b.min(axis=1), b.max(axis=1))
    if not np.isfinite(m).all():
        return None
    return b, m


def _quantize_small_np(values: torch.Tensor, q_out: torch.Tensor, s_out: torch.Tensor, block: int, qmax: int) -> bool:
    """Int8Codec's quantiser for a small CPU row in numpy; False (nothing written) if it holds NaN/inf."""
    got = _small_blocks(values, block)
    if got is None:
        return False
    b, m = got
    scales = m / np.float32(qmax)
    safe = np.where(scales > 0, scales, np.float32(1.0))
    q = np.rint(b / safe[:, None])  # rint: round half to even, as torch.round
    np.clip(q, -qmax, qmax, out=q)
    k = values.numel()
    q_out.numpy()[:] = q.reshape(-1)[:k]
    s_out.numpy()[:] = scales
    return True


def _check_width(values: np.ndarray, k: int | None) -> None:
    if k is not None and values.shape[-1] != k:
        raise ValueError(f"values: expected {k} columns, got {values.shape[-1]}")


def _scale_blocks(q: np.ndarray, scales: np.ndarray, block: int) -> np.ndarray:
    """float32 q (rows, k) times one scale per block of ``block`` columns (rows, ceil(k / block))."""
    rows, k = q.shape
    out = np.empty((rows, k), dtype=np.float32)
    full = k // block
    with np.errstate(invalid="ignore"):  # 0 * inf: a block recorded with a non-finite value decodes to NaN, on purpose
        if full * block == k:
            np.multiply(q.reshape(rows, full, block), scales[:, :full, None], out=out.reshape(rows, full, block))
        else:
            for r in range(rows):  # a row prefix of whole blocks is a view; a 2-D one would be a copy
                if full:
                    np.multiply(q[r, : full * block].reshape(full, block), scales[r, :full, None], out=out[r, : full * block].reshape(full, block))
                np.multiply(q[r, full * block :], scales[r, full], out=out[r, full * block :])
    return out


def value_codec(value_dtype: str, int8_block: int | None = None) -> ValueCodec:
    """The codec object of a value format; ``int8_block`` is the scale block of int8 and int4 (None: the format's default)."""
    value_dtype = parse_value_dtype(value_dtype)
    if value_dtype in DEFAULT_BLOCK:
        from .int4 import Int4Codec

        block = DEFAULT_BLOCK[value_dtype] if int8_block is None else int8_block
        return Int8Codec(block) if value_dtype == "int8" else Int4Codec(block)
    return FloatCodec(value_dtype)
