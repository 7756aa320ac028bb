"""The on-disk format: manifest, pruning groups, value encodings, codecs, commit file.

``docs/FORMAT.md`` is the normative description; this module is its reference
implementation. Layout of one store (one training run)::

    STORE/zarr.json          Zarr v3 group; attributes["deltastore"] = manifest
    STORE/commit.json        {"committed_steps": N, "model_fingerprint": ...}  (atomic replace)
    STORE/gNNNN/values       (steps, k) pruned update values, one row per step
    STORE/gNNNN/scales       (steps, ceil(k / block)) float32, int8 values only
    STORE/gNNNN/indices      (steps, k) int32/int64 kept positions, magnitude/global only
    STORE/index/part-*.parquet   the sample index (deltastore.index)
"""

from __future__ import annotations

import json
import math
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .errors import CorruptStoreError, FormatVersionError, InvalidArgumentError, StoreNotFoundError
from .masks import MASK_ALGORITHM, kept_count
from .plan import PruningPlan, TensorSpec

FORMAT_NAME = "deltastore"
FORMAT_VERSION = 1
MANIFEST_KEY = "deltastore"
COMMIT_FILE = "commit.json"
INDEX_DIR = "index"

VALUE_DTYPES = ("float32", "float16", "bfloat16", "int8")
# int8 with one float32 scale per 256 values: a quarter of float32's bytes, and
# on digits (MLP, class request, 2 seeds, shuffled and class-sorted batches) the
# same retained/targeted accuracy as float32 to three decimals (README).
DEFAULT_VALUE_DTYPE = "int8"
DEFAULT_INT8_BLOCK = 256
CODECS = ("blosc-zstd", "blosc-lz4", "zstd", "none")
DEFAULT_CODEC = "blosc-zstd"  # for float values; int8 values default to blosc-lz4 (see default_codec)
DEFAULT_CODEC_LEVEL = {"blosc-zstd": 3, "blosc-lz4": 5, "zstd": 3, "none": 0}
# Inner chunks: one step of one group is read alone (a one-sample request reads
# one row per epoch, not a block of neighbours), except rows under 4 KiB (biases),
# which pack several steps so per-chunk headers stay negligible. Measured on the
# digits MLP: 2 KiB to 64 KiB targets change int8 store size by < 1 %.
INNER_CHUNK_TARGET_BYTES = 4 * 1024
MAX_INNER_CHUNK_COLS = 1 << 22

SELECTIONS = ("all", "random", "magnitude")
_STORAGE_NUMPY = {"float32": "float32", "float16": "float16", "bfloat16": "uint16", "int8": "int8"}
_STORAGE_TORCH = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int8": torch.int8}


def parse_value_dtype(value_dtype: str) -> str:
    if value_dtype not in VALUE_DTYPES:
        raise InvalidArgumentError(f"value_dtype: expected one of {VALUE_DTYPES}, got {value_dtype!r}")
    return value_dtype


def default_codec(value_dtype: str) -> str:
    """The codec a store gets when none is named.

    int8 codes of Adam/SGD updates hold ~7.2 bits of entropy per value, so no
    codec saves much: on ResNet-18 deltas (bit shuffle, 4 KiB chunks) Blosc-lz4
    keeps 0.862 of the bytes against 0.857 for Blosc-zstd level 3, at a fifth of the
    encoding CPU (9.6 vs 50.8 ms per 4.6 M values) and 0.6x the decoding time: the
    recorder's writer cost and the forgetting read path both shrink. Float values
    compress better with zstd.
    """
    return "blosc-lz4" if parse_value_dtype(value_dtype) == "int8" else DEFAULT_CODEC


def parse_codec(codec: str) -> str:
    if codec not in CODECS:
        raise InvalidArgumentError(f"codec: expected one of {CODECS}, got {codec!r}")
    return codec


@dataclass(frozen=True)
class Group:
    """A set of tensors pruned together; one row of ``k`` values per step.

    ``selection`` is ``all`` (dense: every position, in order), ``random``
    (seeded mask, no indices stored) or ``magnitude`` (top-|Δw|, indices stored;
    a multi-tensor magnitude group is global pruning).
    """

    id: int
    tensors: tuple[str, ...]
    offsets: tuple[int, ...]  # start of each tensor in the group's flat space
    numels: tuple[int, ...]
    k: int
    selection: str

    @property
    def path(self) -> str:
        return f"g{self.id:04d}"

    @property
    def n(self) -> int:
        return sum(self.numels)

    @property
    def stores_indices(self) -> bool:
        return self.selection == "magnitude"

    @property
    def index_dtype(self) -> str:
        return "int32" if self.n < 2**31 else "int64"

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "path": self.path,
            "tensors": list(self.tensors),
            "offsets": list(self.offsets),
            "numels": list(self.numels),
            "n": self.n,
            "k": self.k,
            "selection": self.selection,
        }

    @classmethod
    def from_json(cls, obj: Mapping) -> "Group":
        if obj["selection"] not in SELECTIONS:
            raise FormatVersionError(f"group {obj.get('id')}: unknown selection {obj['selection']!r}, expected one of {SELECTIONS}")
        return cls(
            id=int(obj["id"]),
            tensors=tuple(obj["tensors"]),
            offsets=tuple(int(x) for x in obj["offsets"]),
            numels=tuple(int(x) for x in obj["numels"]),
            k=int(obj["k"]),
            selection=str(obj["selection"]),
        )


def build_groups(specs: Sequence[TensorSpec], plan: PruningPlan) -> list[Group]:
    """Resolve a plan into groups (one per tensor, or one global group)."""
    rates = plan.rates(specs)
    groups: list[Group] = []
    if plan.mode == "global":
        pruned = [s for s in specs if rates[s.name] > 0.0]
        k_total = sum(kept_count(s.numel, rates[s.name]) for s in pruned)
        global_added = False
        for s in specs:
            if rates[s.name] > 0.0:
                if not global_added:
                    offsets = tuple(int(x) for x in np.cumsum([0] + [p.numel for p in pruned[:-1]]))
                    groups.append(Group(len(groups), tuple(p.name for p in pruned), offsets, tuple(p.numel for p in pruned), k_total, "magnitude"))
                    global_added = True
                continue
            groups.append(Group(len(groups), (s.name,), (0,), (s.numel,), s.numel, "all"))
        return groups
    for s in specs:
        k = kept_count(s.numel, rates[s.name])
        selection = "all" if k == s.numel else plan.mode
        groups.append(Group(len(groups), (s.name,), (0,), (s.numel,), k, selection))
    return groups


@dataclass(frozen=True)
class Manifest:
    """Everything a reader needs, written once when the store is created."""

    tensors: tuple[TensorSpec, ...]
    groups: tuple[Group, ...]
    plan: PruningPlan
    mask_seed: int
    mask_pool: int
    value_dtype: str
    int8_block: int
    codec: str
    codec_level: int
    steps_per_shard: int
    sample_id_type: str
    format_version: int = FORMAT_VERSION
    created: str = ""
    writer: str = ""

    def tensor(self, name: str) -> TensorSpec:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)

    def group_of(self, tensor_name: str) -> Group:
        for g in self.groups:
            if tensor_name in g.tensors:
                return g
        raise KeyError(tensor_name)

    @property
    def num_params(self) -> int:
        return sum(t.numel for t in self.tensors)

    @property
    def kept_per_step(self) -> int:
        return sum(g.k for g in self.groups)

    def to_json(self) -> dict:
        return {
            "format": FORMAT_NAME,
            "format_version": self.format_version,
            "tensors": [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype, "kind": t.kind, "numel": t.numel} for t in self.tensors],
            "groups": [g.to_json() for g in self.groups],
            "plan": self.plan.to_json(),
            "mask": {"algorithm": MASK_ALGORITHM, "seed": self.mask_seed, "pool": self.mask_pool},
            "values": {"dtype": self.value_dtype, "int8_block": self.int8_block},
            "codec": {"name": self.codec, "level": self.codec_level, "checksum": "crc32c"},
            "steps_per_shard": self.steps_per_shard,
            "sample_id_type": self.sample_id_type,
            "created": self.created,
            "writer": self.writer,
        }

    @classmethod
    def from_json(cls, obj: Any, where: str = "manifest") -> "Manifest":
        if not isinstance(obj, Mapping) or obj.get("format") != FORMAT_NAME:
            raise CorruptStoreError(f"{where}: expected a deltastore manifest (format={FORMAT_NAME!r}), got {str(obj)[:200]!r}")
        version = obj.get("format_version")
        if not isinstance(version, int) or version < 1:
            raise CorruptStoreError(f"{where}: expected an integer format_version >= 1, got {version!r}")
        if version > FORMAT_VERSION:
            raise FormatVersionError(
                f"{where}: store has format version {version}, this deltastore reads up to {FORMAT_VERSION}; upgrade deltastore"
            )
        try:
            mask = obj["mask"]
            if mask["algorithm"] != MASK_ALGORITHM:
                raise FormatVersionError(f"{where}: unknown mask algorithm {mask['algorithm']!r}, expected {MASK_ALGORITHM!r}")
            return cls(
                tensors=tuple(TensorSpec(t["name"], tuple(t["shape"]), t["dtype"], t["kind"]) for t in obj["tensors"]),
                groups=tuple(Group.from_json(g) for g in obj["groups"]),
                plan=PruningPlan.from_json(obj["plan"]),
                mask_seed=int(mask["seed"]),
                mask_pool=int(mask["pool"]),
                value_dtype=parse_value_dtype(obj["values"]["dtype"]),
                int8_block=int(obj["values"]["int8_block"]),
                codec=parse_codec(obj["codec"]["name"]),
                codec_level=int(obj["codec"]["level"]),
                steps_per_shard=int(obj["steps_per_shard"]),
                sample_id_type=str(obj["sample_id_type"]),
                format_version=version,
                created=str(obj.get("created", "")),
                writer=str(obj.get("writer", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, FormatVersionError):
                raise
            raise CorruptStoreError(f"{where}: malformed manifest ({exc!r})") from exc


# ---- value encodings ---------------------------------------------------------
def storage_numpy_dtype(value_dtype: str) -> np.dtype:
    return np.dtype(_STORAGE_NUMPY[value_dtype])


def storage_torch_dtype(value_dtype: str) -> torch.dtype:
    return _STORAGE_TORCH[value_dtype]


def num_blocks(k: int, block: int) -> int:
    return max(1, math.ceil(k / block))


def quantize_int8(values: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 with one float32 scale per block of ``block`` values.

    scale = max|v| / 127 over the block; q = round(v / scale). A zero block has scale 0.
    """
    k = values.numel()
    nb = num_blocks(k, block)
    padded = torch.zeros(nb * block, dtype=torch.float32, device=values.device)
    padded[:k] = values
    blocks = padded.view(nb, block)
    scales = blocks.abs().amax(dim=1) / 127.0
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    q = torch.round(blocks / safe[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.view(-1)[:k], scales


def dequantize_int8(q: torch.Tensor, scales: torch.Tensor, block: int) -> torch.Tensor:
    """Inverse of :func:`quantize_int8` for rows: q (..., k), scales (..., nb)."""
    k = q.shape[-1]
    rep = scales.repeat_interleave(block, dim=-1)[..., :k]
    return q.to(torch.float32) * rep


def decode_values(raw: np.ndarray, value_dtype: str, scales: np.ndarray | None, block: int) -> torch.Tensor:
    """Stored rows (numpy, storage dtype) → float32 torch tensor of the same shape."""
    t = torch.from_numpy(np.ascontiguousarray(raw))
    if value_dtype == "float32":
        return t
    if value_dtype == "float16":
        return t.to(torch.float32)
    if value_dtype == "bfloat16":
        return t.view(torch.int16).view(torch.bfloat16).to(torch.float32)
    assert scales is not None
    return dequantize_int8(t, torch.from_numpy(np.ascontiguousarray(scales)), block)


# ---- codecs and array layout ---------------------------------------------------
def compressors_for(codec: str, level: int, itemsize: int) -> list:
    from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

    if codec == "blosc-zstd":
        comp = [BloscCodec(cname="zstd", clevel=level, shuffle="shuffle" if itemsize > 1 else "bitshuffle", typesize=itemsize)]
    elif codec == "blosc-lz4":
        comp = [BloscCodec(cname="lz4", clevel=level, shuffle="shuffle" if itemsize > 1 else "bitshuffle", typesize=itemsize)]
    elif codec == "zstd":
        comp = [ZstdCodec(level=level)]
    else:
        comp = []
    # Every inner chunk carries a crc32c: a flipped bit is an error, never a wrong subtraction.
    return comp + [Crc32cCodec()]


def chunk_layout(k: int, itemsize: int, steps_per_shard: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(inner chunk shape, shard shape) for a (steps, k) array."""
    cols = max(1, min(k, MAX_INNER_CHUNK_COLS))
    # Rows per inner chunk: the largest divisor of the shard's rows that stays under the target
    # (Zarr requires inner chunks to tile the shard exactly).
    rows = 1
    for r in range(1, steps_per_shard + 1):
        if steps_per_shard % r == 0 and r * cols * itemsize <= INNER_CHUNK_TARGET_BYTES:
            rows = r
    shard_cols = math.ceil(max(k, 1) / cols) * cols
    return (rows, cols), (steps_per_shard, shard_cols)


# ---- commit file ---------------------------------------------------------------
def write_json_atomic(path: Path, obj: Any, *, fsync: bool) -> None:
    """Write JSON so that readers see the old or the new file, never a torn one."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    data = json.dumps(obj, indent=1, sort_keys=True).encode()
    with open(tmp, "wb") as f:
        f.write(data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if fsync:
        fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_commit(root: Path) -> dict:
    path = root / COMMIT_FILE
    if not path.exists():
        raise StoreNotFoundError(f"{root}: expected a deltastore store with {COMMIT_FILE}, found none")
    try:
        obj = json.loads(path.read_bytes())
        n = obj["committed_steps"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"committed_steps={n!r}")
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptStoreError(f"{path}: expected JSON with a non-negative integer committed_steps, got {exc!r}") from exc
    return obj


def model_fingerprint(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes, in name order ("sha256:<hex>")."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        flat = t.contiguous().reshape(-1).cpu()
        h.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return "sha256:" + h.hexdigest()
