"""Recorder: attach to any torch optimizer and record what each step changed.

Three lines in a training loop::

    rec = Recorder("run.ds", model, optimizer)      # 1: create the store, attach hooks
    ...
        rec.samples(batch_ids, epoch=epoch)         # 2: before optimizer.step()
        optimizer.step()
    ...
    rec.close()                                     # 3: or use `with Recorder(...) as rec:`

It records the *actual* change w_after - w_before of every parameter the
optimizer owns (so SGD, momentum, Adam, AdamW with weight decay all work), and
the change of every floating-point buffer (BatchNorm running statistics, which
change in the forward pass: each step is charged with the change since the
previous step, so the changes still sum to final - initial).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import weakref
from typing import Any

import numpy as np
import torch

from ..errors import (
    InvalidArgumentError,
    MissingSampleIdsError,
    ModelMismatchError,
    RecorderClosedError,
)
from ..format import Group, Manifest, load_manifest, model_fingerprint
from ..distributed import RankGroup, full_tensor, is_dtensor, local_part, unwrap_model, unwrap_optimizer
from ..index import SampleIds, parse_sample_ids
from ..masks import MaskGenerator
from ..plan import TensorSpec
from ..storage import open_io
from .exchange import ShardExchange
from .options import RecordOptions
from .ranked import open_ranked_writer
from .writer import StoreWriter


_MASK_GENERATORS: "weakref.WeakValueDictionary[tuple[int, int], MaskGenerator]" = weakref.WeakValueDictionary()
_MASK_GENERATORS_LOCK = threading.Lock()


def shared_mask_generator(seed: int, pool: int) -> MaskGenerator:
    """The process's MaskGenerator for (seed, pool), shared by every recorder alive with that seed.

    Its cached base sets depend only on (seed, group, pool index, n, k), so recorders
    of one run (a pruned store beside a dense one, a sweep of value formats) build
    each base set once instead of once per recorder (~2 s per ResNet-18-sized
    recorder on the 2-core dev CPU). MaskGenerator is thread-safe.
    """
    with _MASK_GENERATORS_LOCK:
        gen = _MASK_GENERATORS.get((seed, pool))
        if gen is None:
            gen = MaskGenerator(seed, pool)
            _MASK_GENERATORS[(seed, pool)] = gen
        return gen


def recorded_tensors(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(parameters the optimizer updates, floating-point buffers) by name.

    Frozen parameters (not in the optimizer, or requires_grad=False) never change,
    so they are not recorded; tied parameters appear once, under their first name.
    Floating-point buffers are recorded when persistent (in the state dict).
    """
    owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
    params: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if id(p) in owned and p.requires_grad:
            params[name] = p
            seen.add(id(p))
    unknown = owned - seen - {id(p) for _, p in model.named_parameters() if not p.requires_grad}
    if unknown:
        raise ModelMismatchError(
            f"optimizer: expected every optimized parameter to belong to the model, found {len(unknown)} that do not"
        )
    if not params:
        raise ModelMismatchError("model: expected at least one trainable parameter owned by the optimizer, found none")
    # Non-persistent buffers (rotary frequencies, causal masks) are not model state: derived
    # constants that a state dict leaves out and training never changes.
    derived = {f"{m}.{b}" if m else b for m, mod in model.named_modules() for b in getattr(mod, "_non_persistent_buffers_set", ())}
    buffers = {name: b for name, b in model.named_buffers() if b is not None and b.is_floating_point() and name not in derived}
    return params, buffers


def specs_of(params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor]) -> list[TensorSpec]:
    out = [TensorSpec(n, tuple(t.shape), str(t.dtype).replace("torch.", ""), "parameter") for n, t in params.items()]
    out += [TensorSpec(n, tuple(t.shape), str(t.dtype).replace("torch.", ""), "buffer") for n, t in buffers.items()]
    return out


def _check_same_tensors(expected: list[TensorSpec], got: list[TensorSpec], where: str) -> None:
    exp = {s.name: s for s in expected}
    have = {s.name: s for s in got}
    problems = []
    for name in sorted(set(exp) - set(have)):
        problems.append(f"missing {name}")
    for name in sorted(set(have) - set(exp)):
        problems.append(f"unknown {name}")
    for name in sorted(set(exp) & set(have)):
        a, b = exp[name], have[name]
        if (a.shape, a.dtype, a.kind) != (b.shape, b.dtype, b.kind):
            problems.append(f"{name}: expected {a.kind} {a.dtype}{list(a.shape)}, got {b.kind} {b.dtype}{list(b.shape)}")
    if problems:
        shown = "; ".join(problems[:10]) + (f"; ... ({len(problems)} in all)" if len(problems) > 10 else "")
        raise ModelMismatchError(f"{where}: model does not match the store: {shown}")


class Recorder:
    """Record the pruned update of every optimizer step into a deltastore store.

    Parameters
    ----------
    store : path of the store directory; ``mode="w"`` creates it (refuses to
        overwrite anything), ``mode="a"`` reopens it, drops an uncommitted tail
        left by a crash and resumes at the next step.
    model, optimizer : what to record. Hooks are registered on the optimizer
        and removed by :meth:`close`. Wrappers are looked through: the optimizer
        inside accelerate's ``AcceleratedOptimizer`` (or anything exposing it as
        ``.optimizer``) gets the hooks, so only real steps are recorded; DDP and
        ``torch.compile`` wrappers are removed so the store uses the module's own
        names. Under ``torch.distributed`` every rank constructs the Recorder with the
        same arguments and calls :meth:`samples` with its own ids, which are gathered each
        step. Each group has an owner rank (a plan, the same on every rank) that records and
        writes it; rank 0 commits once every rank's writes are durable
        (:mod:`deltastore.record.ranked`). FSDP2 (DTensor parameters): groups are spread
        over the ranks, and a group's whole update is first assembled on its owner
        (:mod:`deltastore.record.exchange`). DDP: rank 0 owns every group, unless
        ``rank_writes="spread"`` (then each owner records from its own replica);
        ``rank_writes="coordinator"``: rank 0 records and writes every group.
    options : :class:`RecordOptions` (how to prune, encode, buffer and commit);
        keyword arguments override single fields, e.g. ``plan=PruningPlan.uniform(0.8)``,
        ``value_dtype="float32"``. Each field's default and the reason for it are in
        :class:`RecordOptions`. ``grad_accumulation=`` is still accepted and no longer needed:
        ids given by several :meth:`samples` calls before one step all belong to that step.
    encryption_key : 32 bytes, 64 hex characters or a key file ``pathlib.Path``
        (``deltastore.crypto.generate_key_file``): record an encrypted store (the ``crypto``
        extra). Readers then need the same key (``deltastore.crypto.open_encrypted``).
    """

    def __init__(
        self,
        store,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        options: RecordOptions | None = None,
        *,
        mode: str = "w",
        storage_options: dict | None = None,
        encryption_key=None,
        **overrides,
    ):
        opts = RecordOptions.from_kwargs(options, **overrides)
        # s3://bucket/prefix with obstore S3Store options (else the AWS environment variables).
        store = open_io(store, storage_options) if storage_options else store
        if encryption_key is not None:  # an encrypted store (FORMAT.md §12): only its key id reaches the manifest
            from ..crypto.io import EncryptedStoreIO

            store = store if isinstance(store, EncryptedStoreIO) else EncryptedStoreIO(open_io(store), encryption_key)
        if not isinstance(model, torch.nn.Module):
            raise InvalidArgumentError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        if mode not in ("w", "a"):
            raise InvalidArgumentError(f"mode: expected 'w' (create) or 'a' (append), got {mode!r}")
        # Names of the unwrapped module (no DDP "module." prefix); hooks on the real optimizer,
        # which steps only on real steps (accelerate's accumulation, GradScaler skips).
        model = unwrap_model(model)
        optimizer = unwrap_optimizer(optimizer)
        self.model = model
        self.optimizer = optimizer
        params, buffers = recorded_tensors(model, optimizer)
        if not opts.record_buffers:
            buffers = {}
        specs = specs_of(params, buffers)
        # Under torch.distributed every rank builds a Recorder with the same arguments and sends
        # its sample ids; each rank records and writes the groups it owns (rank_writes: FSDP2
        # spreads them by default; under DDP rank 0 owns all of them, and a peer holds a _PeerWriter).
        self._ranks = RankGroup.current()
        self._sharded = any(is_dtensor(p) for p in params.values())  # on one rank too: a 1-rank mesh
        self._writes = self._ranks is None or self._ranks.rank == 0  # the coordinator: commits, writes buffers and the index
        if self._ranks is not None:
            self._ranks.require_same("Recorder", json.dumps([mode, repr(opts), [repr(s) for s in specs]]))
        pin = any(local_part(t).is_cuda for t in list(params.values()) + list(buffers.values()))
        self._tensors = {**params, **buffers}
        if self._ranks is None:
            self.writer = self._open_writer(store, specs, opts, mode, pin)
        elif self._sharded or opts.rank_writes == "spread":
            # Groups that may leave rank 0: DTensor parameters (FSDP2), or every parameter of a DDP
            # replica (identical on every rank: the owner records it from its own copy, no exchange).
            spread = opts.rank_writes == "spread" or (opts.rank_writes == "auto" and self._sharded)
            movable = {n for n, t in params.items() if is_dtensor(t) or not self._sharded} if spread else set()
            self.writer = open_ranked_writer(self._ranks, store, specs, opts, mode, pin, movable, _check_same_tensors)
        else:
            self.writer = self._open_writer_ranked(store, specs, opts, mode, pin)
        self.manifest = self.writer.manifest
        self._masks = shared_mask_generator(self.manifest.mask_seed, self.manifest.mask_pool)
        self._exchange = None
        if self._sharded and self._ranks is not None:  # a collective: the ranks agree on how each tensor's shards travel
            owners = dict(zip((g.id for g in self.manifest.groups), self.writer.owners))
            recorded = [(g, [self._tensors[n] for n in g.tensors]) for g in self.manifest.groups
                        if self.manifest.tensor(g.tensors[0]).kind == "parameter"]
            try:
                self._exchange = ShardExchange(self._ranks, recorded, owners)
            except BaseException:
                self.writer.abort()
                raise
        self._pending_ids: list = []
        self._pending_epoch = 0
        self._before: dict[int, Any] = {}
        self._snapshots: dict[int, torch.Tensor] = {}  # random groups on CPU: reused full copies
        # Buffers change in forward passes: remember what they were after the last step.
        self._buffer_last = {n: b.detach().float().reshape(-1).clone() for n, b in buffers.items()}
        self.skipped_steps = 0
        self.hook_seconds = 0.0  # training-thread time in the optimizer hooks (see `timings`)
        self._closed = False
        self._pre = optimizer.register_step_pre_hook(self._pre_step)
        self._post = optimizer.register_step_post_hook(self._post_step)

    @staticmethod
    def _open_writer(store, specs, opts: RecordOptions, mode: str, pin: bool) -> StoreWriter:
        io = open_io(store)
        if mode == "w":
            return StoreWriter.create(io, specs, opts, pin_memory=pin)
        _check_same_tensors(list(load_manifest(io).tensors), specs, io.url)
        return StoreWriter.open_append(io, opts, pin_memory=pin)

    def _open_writer_ranked(self, store, specs, opts: RecordOptions, mode: str, pin: bool):
        """Rank 0 opens the store and tells the others its manifest and next step (or its failure)."""
        writer, error, opened = None, None, None
        if self._writes:
            try:
                writer = self._open_writer(store, specs, opts, mode, pin)
                opened = {"manifest": writer.manifest.to_json(), "next_step": writer.next_step}
            except BaseException as exc:  # every rank must hear of it, or they wait in the next collective
                error = exc
        got = self._ranks.share_opened(opened, error)
        if error is not None:
            raise error
        if writer is not None:
            return writer
        return _PeerWriter(Manifest.from_json(got["manifest"]), int(got["next_step"]))

    # ---- the user-facing line -------------------------------------------------
    def samples(self, sample_ids, epoch: int = 0) -> None:
        """Declare the ids of the samples in the batch that the next optimizer step uses.

        ``epoch`` (0-based) is kept in the index for audits; it does not affect forgetting.
        A failure to commit earlier steps (disk full, ...) is raised here, as
        RecordingFailedError, and at every later call.
        """
        self._check_open()
        self.writer.check()
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or not 0 <= int(epoch) < 2**31:
            raise InvalidArgumentError(f"epoch: expected an integer in [0, 2**31), got {epoch!r}")
        ids = parse_sample_ids(sample_ids, self.manifest.sample_id_type)
        if len(ids) == 0:
            raise MissingSampleIdsError("samples(): expected at least one sample id for the step, got an empty batch")
        # Never drop an id: every id given since the last real step belongs to the next real
        # step (micro-batches of gradient accumulation, a step a GradScaler skipped). Listing
        # an id with a step it did not shape is safe for forgetting; leaving one out is not.
        # Only skip_step() discards ids, when the caller knows no step used them.
        self._pending_ids.append(ids)
        self._pending_epoch = int(epoch)

    def skip_step(self) -> None:
        """Declare that the optimizer step for the ids given since the last real step did not run.

        E.g. an fp16 ``GradScaler`` found inf/NaN gradients and skipped ``optimizer.step()``
        (``scaler.get_scale()`` went down). Those ids are then not charged to the next real
        step. Without this call they are (over-inclusion is safe; omission is not).
        """
        self._check_open()
        if self._pending_ids:
            self.skipped_steps += 1
        self._pending_ids = []

    @property
    def timings(self) -> dict:
        """What recording has cost so far, in seconds of wall time.

        ``hook_seconds``: on the training thread, inside the optimizer hooks (snapshot,
        deltas, encoding into the buffer; includes ``writer_wait_seconds``).
        ``writer_wait_seconds``: the training thread waiting for the writer thread.
        ``writer_seconds``: the writer thread committing buffered steps (compression,
        files, index, commit), overlapped with training except for those waits.
        """
        return {"steps": self.step, "hook_seconds": self.hook_seconds, "writer_wait_seconds": self.writer.wait_seconds,
                "writer_seconds": self.writer.write_seconds}

    @property
    def step(self) -> int:
        """Index of the next step to be recorded (= steps recorded so far)."""
        return self.writer.next_step

    # ---- hooks ---------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise RecorderClosedError("recorder is closed: create a new Recorder(mode='a') to record more steps")

    @contextlib.contextmanager
    def _in_hook(self):
        """Charge the wall time of the block to ``hook_seconds`` (see :attr:`timings`)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.hook_seconds += time.perf_counter() - t0

    def _pre_step(self, optimizer, args, kwargs) -> None:
        with self._in_hook():
            self._snapshot()

    def _snapshot(self) -> None:
        self._check_open()
        if not self._pending_ids:
            raise MissingSampleIdsError(
                f"step {self.step}: expected recorder.samples(ids) before optimizer.step(), got no sample ids"
            )
        self.writer.begin()
        step = self._step_in_flight = self.writer.next_step
        self._before.clear()
        for g in self.manifest.groups:
            tensors = [self._tensors[n] for n in g.tensors]
            if self.manifest.tensor(g.tensors[0]).kind == "buffer":
                continue
            if not self._sharded and not self._owns(g):
                continue  # a DDP rank: another rank records this group from its identical replica
            if self._sharded:  # FSDP2: each rank keeps its own shard; the owner assembles the whole update after the step
                if self._owns(g) or self._exchange is None or g.id in self._exchange.involves:
                    self._before[g.id] = [local_part(t.detach()).float().clone() for t in tensors]
            elif g.selection.positions_before_step and tensors[0].device.type == "cpu":
                # A plain copy of the whole tensor, gathered once after the step: on the dev
                # CPU copying all of ResNet-18 takes 2.7 ms, gathering its kept values 24 ms.
                flat = tensors[0].detach().reshape(-1)
                snap = self._snapshots.get(g.id)
                if snap is None:
                    snap = self._snapshots[g.id] = torch.empty(flat.numel(), dtype=torch.float32)
                self._before[g.id] = snap.copy_(flat)
            elif g.selection.positions_before_step:
                # On an accelerator only the k kept values are copied: the mask is known before the step.
                self._before[g.id] = g.selection.select(tensors[0].detach().reshape(-1), step, g, self._masks)[0].float()
            else:
                self._before[g.id] = [t.detach().float().reshape(-1).clone() for t in tensors]

    @torch.no_grad()
    def _post_step(self, optimizer, args, kwargs) -> None:
        with self._in_hook():
            self._record_step()

    def _record_step(self) -> None:
        step_ids = self._merge_ids()
        if self._sharded:
            self._record_sharded()
        else:
            for g in self.manifest.groups:
                self._record_group(g)
        self.writer.end_step(step_ids, self._pending_epoch)
        self._pending_ids = []
        self._before.clear()

    def _merge_ids(self):
        ids = self._pending_ids[0] if len(self._pending_ids) == 1 else SampleIds.concat(self._pending_ids)
        # Every rank's ids of the step reach rank 0 (a collective: all ranks step together).
        return ids if self._ranks is None else self._ranks.gather_ids(ids)

    def _record_sharded(self) -> None:
        """FSDP2: every rank sends its shards' updates to their owners; each owner prunes and buffers its groups."""
        groups = self.manifest.groups  # ids are positions (the manifest checks it)
        local = {gid: [(local_part(self._tensors[n].detach()).float() - b).reshape(-1) for n, b in zip(groups[gid].tensors, before)]
                 for gid, before in self._before.items()}
        if self._exchange is None:  # one rank: its local shards are the whole tensors
            whole = {gid: torch.cat(parts) if len(parts) > 1 else parts[0] for gid, parts in local.items()}
        else:
            whole = self._exchange.assemble(local)  # a collective: all_to_all per bucket of groups
        step = self._step_in_flight
        for g in self.manifest.groups:
            if not self._owns(g):
                continue
            if self.manifest.tensor(g.tensors[0]).kind == "buffer":
                self._record_group(g)  # the coordinator's buffers, as in one process
            else:
                self.writer.put(g, *g.selection.select(whole[g.id], step, g, self._masks))

    def _owns(self, g: Group) -> bool:
        """Whether this rank writes group ``g`` (every group in one process, none on a DDP peer of rank 0)."""
        owned = self.writer.owned
        return owned is None or g.id in owned

    def _record_group(self, g: Group) -> None:
        if not self._owns(g):
            return  # another rank records it
        tensors = [self._tensors[n] for n in g.tensors]
        if self.manifest.tensor(g.tensors[0]).kind == "buffer":
            if not self._writes:
                return  # buffers are not sharded: rank 0's are the model's
            name = g.tensors[0]
            now = tensors[0].detach().float().reshape(-1)
            delta = now - self._buffer_last[name]
            self._buffer_last[name].copy_(now)
            self.writer.put(g, delta)
            return
        before = self._before[g.id]
        step = self._step_in_flight
        if g.selection.positions_before_step:
            flat = tensors[0].detach().reshape(-1)
            if before is self._snapshots.get(g.id):  # CPU: the whole delta in the snapshot's memory, then one gather
                vals = g.selection.select(torch.sub(flat, before, out=before), step, g, self._masks)[0]
            else:
                vals = g.selection.select(flat, step, g, self._masks)[0].float().sub_(before)
            self.writer.put(g, vals)
            return
        delta = torch.cat([t.detach().float().reshape(-1) - b for t, b in zip(tensors, before)]) if len(tensors) > 1 else tensors[0].detach().float().reshape(-1) - before[0]
        self.writer.put(g, *g.selection.select(delta, step, g, self._masks))

    # ---- lifecycle ------------------------------------------------------------
    def flush(self) -> None:
        """Commit all recorded steps now (they are durable when this returns)."""
        self._check_open()
        self.writer.flush()

    def close(self, *, fingerprint: bool = True) -> None:
        """Remove the hooks, commit every recorded step, record the model's fingerprint."""
        if self._closed:
            return
        self._closed = True
        self._pre.remove()
        self._post.remove()
        tensors = self._tensors
        if self._sharded and fingerprint:  # the whole tensors, gathered from every rank's shard (a collective)
            tensors = {n: full_tensor(t) for n, t in tensors.items()}
        fp = model_fingerprint(tensors) if fingerprint and self._writes else None
        # The trained weights stay in the store (FORMAT.md §5.1): forget/restore derive every
        # model from them, exactly. Plain tensors only (a sharded DTensor has no local whole).
        plain = all(type(t) in (torch.Tensor, torch.nn.Parameter) for t in tensors.values())
        self.writer.close(fp, trained=tensors if fp is not None and plain else None)

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # On error the model may be mid-step: commit the whole steps, but claim no fingerprint.
        self.close(fingerprint=exc_type is None)

    @property
    def closed(self) -> bool:
        return self._closed


class _PeerWriter:
    """What a DDP rank other than 0 holds instead of a StoreWriter: the manifest and a step count.

    Rank 0 writes every byte (DDP's default); peers take part in the collectives of each step only.
    """

    wait_seconds = 0.0
    write_seconds = 0.0
    owned: frozenset = frozenset()  # no group

    def __init__(self, manifest: Manifest, next_step: int):
        self.manifest = manifest
        self.next_step = next_step
        self.closed = False

    def check(self) -> None:
        pass

    def begin(self) -> None:
        pass

    def put(self, group, values, indices=None) -> None:
        pass

    def end_step(self, sample_ids, epoch: int) -> int:
        self.next_step += 1
        return self.next_step - 1

    def flush(self) -> None:
        pass

    def close(self, fingerprint=None, trained=None) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True
