"""Value formats: one codec object per format (FORMAT.md §3).

A codec owns the arrays a group's values need per step (``values``, plus
``scales`` for int8), encodes a float update into buffer rows and decodes stored
rows back to float32. Nothing else in the engine branches on the value format.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import numpy as np
import torch

from ..errors import InvalidArgumentError

VALUE_DTYPES = ("float32", "float16", "bfloat16", "int8")
# int8 with one float32 scale per 256 values: a quarter of float32's bytes, and
# on digits (MLP, class request, 2 seeds, shuffled and class-sorted batches) the
# same retained/targeted accuracy as float32 to three decimals (README).
DEFAULT_VALUE_DTYPE = "int8"
DEFAULT_INT8_BLOCK = 256


def parse_value_dtype(value_dtype: str) -> str:
    if value_dtype not in VALUE_DTYPES:
        raise InvalidArgumentError(f"value_dtype: expected one of {VALUE_DTYPES}, got {value_dtype!r}")
    return value_dtype


class ValueCodec(ABC):
    """How one value format lays a group's k kept values out, per step."""

    name: str

    @abstractmethod
    def arrays(self, k: int) -> dict[str, tuple[int, np.dtype, dict]]:
        """Array name -> (columns, storage dtype, Zarr attributes), ``values`` first."""

    def bytes_per_step(self, k: int) -> int:
        return sum(cols * dtype.itemsize for cols, dtype, _ in self.arrays(k).values())

    def torch_dtype(self, name: str) -> torch.dtype:
        """Buffer dtype of one of this codec's arrays."""
        return _TORCH_OF[self.arrays(1)[name][1].str]

    @abstractmethod
    def encode_into(self, values: torch.Tensor, rows: dict[str, torch.Tensor]) -> None:
        """Encode one step's values (float, any device) into one buffer row per array."""

    @abstractmethod
    def decode(self, raw: dict[str, np.ndarray]) -> torch.Tensor:
        """Stored rows (numpy, storage dtypes, shape (r, cols)) -> float32 torch (r, k)."""

    @staticmethod
    def as_numpy(rows: torch.Tensor) -> np.ndarray:
        """A buffer's rows as the numpy array Zarr stores (bfloat16 as its uint16 bits)."""
        return rows.view(torch.int16).numpy().view(np.uint16) if rows.dtype == torch.bfloat16 else rows.numpy()


_TORCH_OF = {np.dtype("float32").str: torch.float32, np.dtype("float16").str: torch.float16,
             np.dtype("int8").str: torch.int8}


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

    def encode_into(self, values: torch.Tensor, rows: dict[str, torch.Tensor]) -> None:
        rows["values"].copy_(values, non_blocking=True)

    def decode(self, raw: dict[str, np.ndarray]) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(raw["values"]))
        if self.name == "bfloat16":
            return t.view(torch.int16).view(torch.bfloat16).to(torch.float32)
        return t if self.name == "float32" else t.to(torch.float32)


class Int8Codec(ValueCodec):
    """Symmetric int8 with one float32 scale per block of ``block`` values.

    scale = max|v| / 127 over the block; q = round(v / scale), clamped to ±127.
    A zero block has scale 0. Decoded value = q * scale (float32).
    """

    name = "int8"

    def __init__(self, block: int = DEFAULT_INT8_BLOCK):
        if isinstance(block, bool) or not isinstance(block, int) or block < 1:
            raise InvalidArgumentError(f"int8_block: expected an integer >= 1, got {block!r}")
        self.block = block

    def num_blocks(self, k: int) -> int:
        return max(1, math.ceil(k / self.block))

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
    def encode_into(self, values: torch.Tensor, rows: dict[str, torch.Tensor]) -> None:
        if values.device.type == "cpu":
            self._quantize_cpu_into(values.float(), rows["values"], rows["scales"])
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
    def decode(self, raw: dict[str, np.ndarray]) -> torch.Tensor:
        """q * scale in one numpy pass per row block: bit-identical to :meth:`dequantize`.

        numpy, not torch, because this runs on reader threads, where torch's OpenMP
        teams would oversubscribe the cores; no repeated scale per value is built.
        """
        q, scales = raw["values"], np.asarray(raw["scales"], dtype=np.float32)
        rows, k = q.shape
        block = self.block
        out = np.empty((rows, k), dtype=np.float32)
        full = k // block
        if full * block == k:
            np.multiply(q.reshape(rows, full, block), scales[:, :full, None], out=out.reshape(rows, full, block))
        else:
            for r in range(rows):  # a row prefix of whole blocks is a view; a 2-D one would be a copy
                if full:
                    np.multiply(q[r, : full * block].reshape(full, block), scales[r, :full, None], out=out[r, : full * block].reshape(full, block))
                np.multiply(q[r, full * block :], scales[r, full], out=out[r, full * block :])
        return torch.from_numpy(out)


def value_codec(value_dtype: str, int8_block: int = DEFAULT_INT8_BLOCK) -> ValueCodec:
    """The codec object of a value format."""
    if parse_value_dtype(value_dtype) == "int8":
        return Int8Codec(int8_block)
    return FloatCodec(value_dtype)
