"""RecordOptions: every setting of a recording, declared once (Recorder and StoreWriter both take it)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from ..errors import InvalidArgumentError
from ..format import DEFAULT_BLOCK, DEFAULT_CODEC_LEVEL, DEFAULT_INT8_BLOCK, DEFAULT_VALUE_DTYPE, default_codec, parse_codec, parse_value_dtype
from ..index import ID_TYPES
from ..plan import PruningPlan


@dataclass(frozen=True)
class RecordOptions:
    """How a recording prunes, encodes, buffers and commits.

    Settings stored in the manifest (``plan`` .. ``steps_per_shard``) apply when a
    store is created; reopening with ``mode="a"`` keeps the store's own.
    """

    # The paper's schedule: 90 % pruned in the first weight tensor, linearly to 50 % in the last.
    plan: PruningPlan | None = None
    # int8 with a float32 scale per block: a quarter of float32's bytes, same unlearning accuracy (README).
    # "int4": two codes per byte, stochastically rounded (an eighth, plus scales; RESULTS.md "int4").
    value_dtype: str = DEFAULT_VALUE_DTYPE
    # None: blosc-lz4 for int8 values, blosc-zstd for floats (format.default_codec says why).
    codec: str | None = None
    codec_level: int | None = None
    # Values per float32 scale of int8 and int4; None: the format's measured default (256 for int8, 64 for int4).
    int8_block: int | None = None
    # Random masks are regenerated from (seed, step, group): no indices stored.
    mask_seed: int = 0
    mask_pool: int = 4  # base sets per group: 4 x 8k bytes cached; more pools, more mask variety
    sample_id_type: str = "int64"
    # Rows per shard file; lowered to what half of buffer_bytes holds so every flush writes whole shards.
    steps_per_shard: int = 64
    buffer_bytes: int = 256 * 2**20  # host memory for both halves of the double buffer
    # fsync every committed file: survive power loss, not only a killed process.
    fsync: bool = False
    # Accepted for compatibility; no effect: ids given since the last real step always belong to the next one.
    grad_accumulation: bool = False
    record_buffers: bool = True  # BatchNorm running statistics change too: record them
    # Under torch.distributed: "spread": each rank records and writes the groups the plan gives it,
    # rank 0 commits; "coordinator": rank 0 writes every group (same stored bytes). "auto": spread
    # under FSDP2 (no rank then holds every whole update), coordinator under DDP (spreading its
    # replicas' groups showed no gain on the 2-core benchmark: RESULTS.md, "Per-rank writes").
    rank_writes: str = "auto"

    @classmethod
    def from_kwargs(cls, options: "RecordOptions | None" = None, **overrides) -> "RecordOptions":
        """``options`` (or the defaults) with keyword overrides; unknown names are an error."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise InvalidArgumentError(f"recording options: expected names from {sorted(names)}, got unknown {unknown}")
        if options is not None and not isinstance(options, cls):
            raise InvalidArgumentError(f"options: expected a RecordOptions, got {type(options).__name__}")
        return replace(options or cls(), **overrides).validated()

    def validated(self) -> "RecordOptions":
        """Check every field; fill in the plan and codec defaults."""
        value_dtype = parse_value_dtype(self.value_dtype)
        codec = parse_codec(default_codec(value_dtype) if self.codec is None else self.codec)
        if self.rank_writes not in ("auto", "spread", "coordinator"):
            raise InvalidArgumentError(f"rank_writes: expected 'auto', 'spread' or 'coordinator', got {self.rank_writes!r}")
        if self.sample_id_type not in ID_TYPES:
            raise InvalidArgumentError(f"sample_id_type: expected one of {ID_TYPES}, got {self.sample_id_type!r}")
        block = DEFAULT_BLOCK.get(value_dtype, DEFAULT_INT8_BLOCK) if self.int8_block is None else self.int8_block
        for name in ("steps_per_shard", "int8_block", "mask_pool", "buffer_bytes"):
            v = block if name == "int8_block" else getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InvalidArgumentError(f"{name}: expected an integer >= 1, got {v!r}")
        seed = self.mask_seed
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise InvalidArgumentError(f"mask_seed: expected an integer in [0, 2**63), got {seed!r}")
        if self.plan is not None and not isinstance(self.plan, PruningPlan):
            raise InvalidArgumentError(f"plan: expected a PruningPlan, got {type(self.plan).__name__}")
        level = DEFAULT_CODEC_LEVEL[codec] if self.codec_level is None else int(self.codec_level)
        return replace(self, plan=self.plan if self.plan is not None else PruningPlan.layerwise(),
                       value_dtype=value_dtype, codec=codec, codec_level=level, int8_block=block)
