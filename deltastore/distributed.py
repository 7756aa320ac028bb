"""Recording under torch.distributed and through training wrappers.

What the :class:`~deltastore.Recorder` needs to record the same store whatever
wraps the model and the optimizer, and however many ranks train:

- :func:`unwrap_model` / :func:`unwrap_optimizer`: the module whose tensor names
  the store uses (DDP's ``module.`` prefix and ``torch.compile``'s ``_orig_mod.``
  dropped) and the torch optimizer whose step hooks fire on real steps only
  (accelerate's ``AcceleratedOptimizer`` skips the inner step while it
  accumulates, and a ``GradScaler`` skips it on inf/NaN gradients).
- :class:`RankGroup`: the few collectives of a multi-rank recording, with tensors
  only (no pickle, no ``all_gather_object``): every rank's sample ids reach rank 0
  each step (string ids as UTF-8 bytes plus lengths), rank 0 tells the other
  ranks what it opened, and every rank checks it was given the same arguments.
- :class:`CommitGroup`: FSDP2 recordings write per rank (:mod:`deltastore.record.ranked`);
  their writer threads agree on each flush in a gloo group of the recording's own
  before rank 0 commits. (How each group's whole update reaches the rank that writes
  it: :mod:`deltastore.record.exchange`.)

Collectives run on the CPU for gloo and on the current CUDA device for NCCL
(:attr:`RankGroup.device`); the commit agreement always on CPU tensors in a gloo
group; every other line is device-generic.
"""

from __future__ import annotations

import hashlib
import json
import sys

import numpy as np
import torch

from .errors import InvalidArgumentError, RecordingFailedError
from .index import SampleIds, parse_sample_ids

def _dtensor_type():
    """DTensor's class if torch.distributed.tensor is loaded (no DTensor can exist otherwise).

    Looked up, not imported: importing it costs ~0.5-1.7 s, on every ``import deltastore``.
    """
    mod = sys.modules.get("torch.distributed.tensor")
    return getattr(mod, "DTensor", None)


def _wrapper_types() -> tuple[type, ...]:
    types: list[type] = [torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel]
    try:
        from torch._dynamo.eval_frame import OptimizedModule

        types.append(OptimizedModule)
    except ImportError:  # pragma: no cover - torch without dynamo
        pass
    return tuple(types)


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module whose parameter names a store uses: DDP, DataParallel and torch.compile wrappers removed.

    Only these known wrappers are removed (a user module may well have its own
    ``.module`` attribute); FSDP2's ``fully_shard`` changes no names.
    """
    wrappers = _wrapper_types()
    while isinstance(model, wrappers):
        model = model._orig_mod if hasattr(model, "_orig_mod") else model.module
    return model


def unwrap_optimizer(optimizer) -> torch.optim.Optimizer:
    """The torch optimizer inside ``optimizer`` (accelerate, Lightning and similar wrappers).

    A wrapper is anything exposing the real optimizer as ``.optimizer`` or
    ``._optimizer``; accelerate's ``AcceleratedOptimizer`` even subclasses
    ``torch.optim.Optimizer`` without its hook tables, so the test is the
    attribute, not the type. Hooks go on the innermost optimizer: it steps only
    on real steps (after accumulation, and not when a GradScaler skips).
    """
    seen = 0
    opt = optimizer
    while True:
        inner = getattr(opt, "optimizer", None)
        if inner is None or inner is opt:
            inner = getattr(opt, "_optimizer", None)
        if inner is None or inner is opt:
            break
        opt = inner
        seen += 1
        if seen > 16:
            raise InvalidArgumentError(f"optimizer: expected a torch optimizer inside at most 16 wrappers, got a deeper chain ({type(optimizer).__name__})")
    if not isinstance(opt, torch.optim.Optimizer) or not hasattr(opt, "_optimizer_step_pre_hooks"):
        raise InvalidArgumentError(
            f"optimizer: expected a torch.optim.Optimizer or a wrapper exposing one as .optimizer, got {type(optimizer).__name__}"
        )
    return opt


def is_dtensor(t: torch.Tensor) -> bool:
    cls = _dtensor_type()
    return cls is not None and isinstance(t, cls)


def local_part(t: torch.Tensor) -> torch.Tensor:
    """The tensor this rank holds: a DTensor's local shard, any other tensor itself."""
    return t.to_local() if is_dtensor(t) else t


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor (a collective for DTensors)."""
    return t.detach().full_tensor() if is_dtensor(t) else t.detach()


class RankGroup:
    """The collectives a multi-rank recording uses; tensors only, never pickle.

    Every rank must make the same calls in the same order (the Recorder's hooks
    do: each real optimizer step runs on every rank).
    """

    def __init__(self, group=None):
        import torch.distributed as dist

        self.dist = dist
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        backend = str(dist.get_backend(group)).lower()
        # gloo reduces CPU tensors; NCCL only device tensors (the rank's current device).
        if "nccl" in backend and torch.cuda.is_available():
            self.device = torch.device("cuda", torch.cuda.current_device())
        elif backend not in ("gloo", "mpi") and hasattr(torch, "accelerator") and torch.accelerator.is_available():
            self.device = torch.accelerator.current_accelerator()
        else:
            self.device = torch.device("cpu")

    @classmethod
    def current(cls) -> "RankGroup | None":
        """The default process group when one with more than one rank is initialized, else None."""
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() < 2:
            return None
        return cls()

    # ---- primitives -----------------------------------------------------------
    def _all_gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        t = t.to(self.device)
        out = [torch.empty_like(t) for _ in range(self.world_size)]
        self.dist.all_gather(out, t, group=self.group)
        return [o.cpu() for o in out]

    def _gather_ragged(self, t: torch.Tensor) -> list[torch.Tensor]:
        """All-gather 1-D tensors of different lengths (padded to the longest)."""
        n = torch.tensor([t.numel()], dtype=torch.int64)
        sizes = [int(s) for s in torch.cat(self._all_gather(n))]
        padded = torch.zeros(max(sizes), dtype=t.dtype)
        padded[: t.numel()] = t
        return [part[:s] for part, s in zip(self._all_gather(padded), sizes)]

    def broadcast_bytes(self, data: bytes | None, src: int = 0) -> bytes:
        """``data`` from rank ``src`` on every rank."""
        n = torch.tensor([len(data) if self.rank == src else 0], dtype=torch.int64, device=self.device)
        self.dist.broadcast(n, src, group=self.group)
        buf = torch.zeros(int(n.item()), dtype=torch.uint8, device=self.device)
        if self.rank == src and len(data):
            buf.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        self.dist.broadcast(buf, src, group=self.group)
        return buf.cpu().numpy().tobytes()

    def all_min(self, values: list[int]) -> list[int]:
        """Element-wise minimum over the ranks (a collective): every rank's flags agree."""
        t = torch.tensor(values, dtype=torch.int64, device=self.device)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MIN, group=self.group)
        return t.cpu().tolist()

    # ---- what the recorder needs ----------------------------------------------
    def require_same(self, what: str, description: str) -> None:
        """Raise on every rank unless every rank passed the same ``description`` (compared by sha256)."""
        digest = torch.frombuffer(bytearray(hashlib.sha256(description.encode()).digest()), dtype=torch.uint8)
        digests = self._all_gather(digest)
        differ = [r for r, d in enumerate(digests) if not torch.equal(d, digests[0])]
        if differ:
            raise InvalidArgumentError(
                f"{what}: expected every rank to construct the Recorder with the same model, optimizer and options, "
                f"got ranks {differ} differing from rank 0"
            )

    def share_opened(self, opened: dict | None, error: BaseException | None) -> dict:
        """Rank 0 tells every rank what it opened (a JSON object), or that it failed."""
        payload = json.dumps({"ok": True, **opened} if error is None and opened is not None else
                             {"ok": False, "error": f"{type(error).__name__}: {error}"}).encode() if self.rank == 0 else None
        got = json.loads(self.broadcast_bytes(payload).decode())
        if not got["ok"] and self.rank != 0:
            raise RecordingFailedError(f"rank {self.rank}: rank 0 could not open the store ({got['error']})", committed_steps=0)
        return got

    def gather_ids(self, ids: SampleIds) -> SampleIds:
        """Every rank's ids of this step, rank 0's first (on every rank: an all-gather)."""
        if ids.id_type == "int64":
            parts = self._gather_ragged(torch.from_numpy(np.array(ids.values, dtype=np.int64)))
            return parse_sample_ids(torch.cat(parts).numpy(), "int64")
        lengths, blob = encode_strings(ids.values)
        parts = zip(self._gather_ragged(lengths), self._gather_ragged(blob))
        return parse_sample_ids([s for lens, raw in parts for s in decode_strings(lens, raw)], "string")


def _timeout_of(group):
    """The timeout the training process group was created with (best effort; None: torch's default)."""
    import torch.distributed as dist

    try:
        pg = group if group is not None else dist.distributed_c10d._get_default_group()
        for device in (torch.device("cpu"), torch.device("cuda")):
            try:
                return pg._get_backend(device).options._timeout
            except (RuntimeError, AttributeError, ValueError):
                continue
    except (RuntimeError, AttributeError, ValueError):
        pass
    return None


class CommitGroup:
    """A gloo process group of one recording's own, for its commit agreement (per-rank writes).

    The writer thread agrees on each flush while the training thread runs the step's
    collectives (ids, updates) on the training group: two threads issuing collectives
    on one group could interleave them differently on different ranks. On a group of
    its own, used by one thread at a time, each rank issues them in flush order, which
    is the same on every rank. CPU tensors (gloo) whatever backend the training uses
    (NCCL included), so the writer thread never touches a device stream. Its timeout is
    the training group's: a rank that died is noticed as soon as training would notice.
    """

    def __init__(self, ranks: RankGroup):
        import torch.distributed as dist

        if not dist.is_gloo_available():  # pragma: no cover - every torch build ships gloo
            raise InvalidArgumentError("per-rank writes: expected torch.distributed with the gloo backend, got a build without it")
        timeout = _timeout_of(ranks.group)
        group = dist.new_group(backend="gloo", **({"timeout": timeout} if timeout is not None else {}))  # a collective
        self.ranks = RankGroup(group)
        self.rank, self.world_size = self.ranks.rank, self.ranks.world_size

    def agree(self, error: BaseException | None) -> dict[int, str]:
        """Every rank's outcome (a collective): {rank: its error} of the ranks that failed; empty if none did."""
        msg = b"\x00" if error is None else b"\x01" + f"{type(error).__name__}: {error}".encode()[:4000]
        parts = self.ranks._gather_ragged(torch.frombuffer(bytearray(msg), dtype=torch.uint8))
        return {r: p.numpy().tobytes()[1:].decode("utf-8", "replace") for r, p in enumerate(parts) if int(p[0])}

    def share(self, error: BaseException | None) -> str | None:
        """Rank 0's outcome on every rank (a collective): None, or its error."""
        payload = None
        if self.rank == 0:
            payload = b"\x00" if error is None else b"\x01" + f"{type(error).__name__}: {error}".encode()[:4000]
        got = self.ranks.broadcast_bytes(payload)
        return got[1:].decode("utf-8", "replace") if got[:1] == b"\x01" else None

    def destroy(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group(self.ranks.group)


def encode_strings(values) -> tuple[torch.Tensor, torch.Tensor]:
    """String ids as tensors for a collective: (int64 byte lengths, uint8 UTF-8 bytes, concatenated)."""
    encoded = [s.encode("utf-8") for s in values]
    blob = b"".join(encoded)
    data = torch.frombuffer(bytearray(blob), dtype=torch.uint8) if blob else torch.zeros(0, dtype=torch.uint8)
    return torch.tensor([len(e) for e in encoded], dtype=torch.int64), data


def decode_strings(lengths: torch.Tensor, data: torch.Tensor) -> list[str]:
    """Inverse of :func:`encode_strings`."""
    raw, pos, out = data.numpy().tobytes(), 0, []
    for n in lengths.tolist():
        out.append(raw[pos : pos + n].decode("utf-8"))
        pos += n
    if pos != len(raw):
        raise ValueError(f"string ids: expected {pos} bytes for {len(out)} ids, got {len(raw)}")
    return out
