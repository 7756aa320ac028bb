"""int4 values: two 4-bit codes per byte, one float32 scale per block, unbiased stochastic rounding.

Layout (FORMAT.md §3): ``values`` is uint8, ceil(k / 2) columns; byte ``j`` holds
value ``2j`` in its low nibble and value ``2j + 1`` in its high nibble (the high
nibble of the last byte is 0 when k is odd), each a two's-complement code
q in [-7, 7] (-8 is never written). ``scales`` holds one float32 per block of B
values. Decoded value = q * scale.

Rounding (the writer's rule; readers only need the decoding): per block,
``scale = max|v| / 7`` (0 for a block of zeros), ``x = v / scale``, and
``q = floor(x + 8 + u) - 8`` with a dither u uniform on {(r + 1/2) / 2^16 : r = 0 .. 2^16 - 1}.
E[q] = x up to float32 rounding and the dither's 2^-17 resolution: the sum of many
steps' decoded updates carries no systematic error, where rounding to nearest would
(the error of each value is then a fixed function of x, and Adam's updates of one
weight have similar x step after step; RESULTS.md "int4" measures both).

The dither of (mask seed, step, group) comes from numpy's SFC64 generator seeded
with ``derive_key(seed, ROUNDING_DOMAIN, step, group)`` on CPU (0.5 ns per value,
against 7.5 ns for torch.rand here), and from torch's Philox on a CUDA device with
the same key: re-recording a run on the same kind of device writes the same bytes.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InvalidArgumentError
from ..masks.feistel import derive_key, splitmix64
from .values import DEFAULT_INT4_BLOCK, SMALL_VALUES, BlockScaledCodec, _check_width, _scale_blocks, _small_blocks

QMAX = 7
# derive_key word that keeps the rounding streams apart from the mask streams ("int4").
ROUNDING_DOMAIN = 0x696E7434
_DITHER_OFFSET = 8 * 65536 + 32768.5  # int16 s -> (s + 32768 + 1/2) + 8 * 2^16, exact in float32

# Decoding table: byte -> (low code, high code) as two int8, read as one little-endian int16.
_PAIRS = np.array([[(b & 15) - 16 * ((b >> 3) & 1), (b >> 4) - 16 * (b >> 7)] for b in range(256)], dtype=np.int8)
_PAIRS16 = _PAIRS.reshape(-1).view("<i2")


def rounding_key(seed: int, step: int, group: int) -> int:
    """The 64-bit key of the dither of one group at one step."""
    return derive_key(seed, ROUNDING_DOMAIN, step, group)


def step_rounding_key(seed: int, step: int) -> int:
    """The chain up to the step: ``group_rounding_key(step_rounding_key(seed, s), g) == rounding_key(seed, s, g)``."""
    return derive_key(seed, ROUNDING_DOMAIN, step)


def group_rounding_key(step_key: int, group: int) -> int:
    return splitmix64(step_key ^ group)


def dither_int16(n: int, key: int, device=None) -> torch.Tensor:
    """n int16 dither words s (u = (s + 2^15 + 1/2) / 2^16) of ``key``, on ``device``."""
    device = torch.device("cpu") if device is None else torch.device(device)
    if device.type == "cpu":
        raw = np.random.SFC64(key).random_raw(-(-n // 4))  # four 16-bit words per 64-bit draw
        return torch.from_numpy(raw.view(np.int16)[:n])
    gen = torch.Generator(device=device)
    gen.manual_seed(key & ((1 << 63) - 1))
    return torch.randint(-32768, 32768, (n,), generator=gen, device=device, dtype=torch.int16)


class Int4Codec(BlockScaledCodec):
    """Symmetric int4 codes, two per byte, with one float32 scale per ``block`` values."""

    name = "int4"
    stochastic = True

    def __init__(self, block: int = DEFAULT_INT4_BLOCK):
        super().__init__(block)

    def arrays(self, k: int) -> dict:
        return {"values": ((k + 1) // 2, np.dtype("uint8"), {"value_dtype": "int4"}),
                "scales": (self.num_blocks(k), np.dtype("float32"), {"int8_block": self.block})}

    # ---- encoding -----------------------------------------------------------------
    def quantize(self, values: torch.Tensor, key: int, *, nearest: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes int8 (k,) in [-7, 7], float32 scales (num_blocks,)) of a float vector, any device.

        ``nearest``: round half to even instead of stochastically (for measuring its
        bias only; stores never use it).
        """
        codes, scales = self._offset_codes(values, key, nearest)
        return codes.to(torch.int8) - 8, scales

    def _offset_codes(self, values: torch.Tensor, key: int, nearest: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(q + 8 as uint8 (k,), scales). Whole blocks are viewed in place; a ragged last block is padded."""
        v = values.reshape(-1)
        if v.dtype != torch.float32:
            v = v.float()
        k, block = v.numel(), self.block
        nb = self.num_blocks(k)
        if nb * block != k:
            padded = torch.zeros(nb * block, dtype=torch.float32, device=v.device)
            padded[:k] = v
            v = padded
        blocks = v.view(nb, block)
        # max|v| as max(-min, max): no abs copy (NaN propagates into the scale, as in Int8Codec).
        scales = torch.maximum(blocks.amin(dim=1).neg_(), blocks.amax(dim=1)).div_(QMAX)
        safe = torch.where(scales > 0, scales, 1.0)
        x = torch.div(blocks, safe[:, None]).view(-1)
        if nearest:
            x.round_().add_(8.0)
        else:
            # x + 8 + u in one rounding: alpha * (s + offset) = 8 + u exactly (a power-of-two scaling).
            d = torch.add(dither_int16(nb * block, key, v.device), _DITHER_OFFSET)
            x.add_(d, alpha=2.0**-16)
        # x + 8 + u >= 1 > 0, so the truncating conversion is the floor. NaN converts to an
        # arbitrary byte: the clamp keeps it inside its nibble (its block decodes to NaN anyway).
        codes = x.to(torch.uint8).clamp_(max=2 * QMAX + 1)[:k]
        return codes, scales

    def pack(self, offset_codes: torch.Tensor) -> torch.Tensor:
        """uint8 q + 8 codes (k,) -> packed two's-complement bytes (ceil(k / 2),)."""
        k = offset_codes.numel()
        if k % 2:
            offset_codes = torch.cat([offset_codes, offset_codes.new_full((1,), 8)])
        pairs = offset_codes.view(-1, 2)
        # low + 16 * high, then flip bit 3 of each nibble: offset binary -> two's complement.
        return torch.add(pairs[:, 0], pairs[:, 1], alpha=16).bitwise_xor_(0x88)

    def encode_into(self, values: torch.Tensor, rows: dict[str, torch.Tensor], *, rounding_key: int | None = None) -> None:
        if rounding_key is None:
            raise InvalidArgumentError("int4 encoding: expected a rounding_key (derived from mask seed, step and group), got None")
        if values.device.type == "cpu" and values.numel() <= SMALL_VALUES and self._encode_small_np(values.float(), rows, rounding_key):
            return
        codes, scales = self._offset_codes(values, rounding_key)
        rows["values"].copy_(self.pack(codes), non_blocking=True)
        rows["scales"].copy_(scales, non_blocking=True)

    def _encode_small_np(self, values: torch.Tensor, rows: dict[str, torch.Tensor], key: int) -> bool:
        """:meth:`encode_into` of a small CPU row in numpy, bit-identical (values.SMALL_VALUES says why);
        False (nothing written) for a row with NaN/inf."""
        got = _small_blocks(values, self.block)
        if got is None:
            return False
        b, m = got
        scales = m / np.float32(QMAX)
        safe = np.where(scales > 0, scales, np.float32(1.0))
        x = (b / safe[:, None]).reshape(-1)
        d = dither_int16(x.size, key).numpy()
        x += (d.astype(np.float32) + np.float32(_DITHER_OFFSET)) * np.float32(2.0**-16)  # exact 8 + u, one rounding
        k = values.numel()
        codes = np.minimum(x.astype(np.uint8), 2 * QMAX + 1)[:k]
        if k % 2:
            codes = np.append(codes, np.uint8(8))
        rows["values"].numpy()[:] = (codes[0::2] + (codes[1::2] << 4)) ^ 0x88
        rows["scales"].numpy()[:] = scales
        return True

    # ---- decoding -----------------------------------------------------------------
    @staticmethod
    def unpack(packed: np.ndarray, k: int) -> np.ndarray:
        """Packed bytes (rows, ceil(k / 2)) -> int8 codes (rows, k); one table lookup per byte."""
        rows, cols = packed.shape
        if cols != (k + 1) // 2:
            raise ValueError(f"int4 values: expected {(k + 1) // 2} columns for {k} values, got {cols}")
        pairs = _PAIRS16[packed].view(np.int8).reshape(rows, 2 * cols)
        return pairs if 2 * cols == k else pairs[:, :k]

    def dequantize(self, codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        """codes (..., k) * their block's scale (..., num_blocks) -> float32."""
        k = codes.shape[-1]
        return codes.to(torch.float32) * scales.repeat_interleave(self.block, dim=-1)[..., :k]

    def decode(self, raw: dict[str, np.ndarray], k: int | None = None) -> torch.Tensor:
        packed = raw["values"]
        if k is None:
            raise ValueError("int4 values: decoding needs k, the number of values per row")
        _check_width(packed, (k + 1) // 2)
        q = self.unpack(packed, k)
        return torch.from_numpy(_scale_blocks(np.ascontiguousarray(q), np.asarray(raw["scales"], dtype=np.float32), self.block))
