"""RankedWriter: one rank's part of a multi-rank recording with per-rank writes (FSDP2).

The pattern of torch.distributed.checkpoint -- plan, write, commit -- with the
store's own commit rule (FORMAT.md §5), unchanged on disk:

- *plan*: every rank owns some groups (:func:`~deltastore.record.exchange.plan_owners`,
  the same on every rank); it buffers only their rows.
- *write*: at each flush (the same steps on every rank: one capacity, computed from
  the whole manifest) every rank grows its groups' arrays and writes their shards;
  the coordinator (rank 0) also writes the index part.
- *lease*: before a flush's writes the coordinator checks its writer lease and tells
  every rank (object storage: a peer never writes after the lease that covers it is lost).
- *commit*: the ranks then agree (a collective on a :class:`~deltastore.distributed.CommitGroup`,
  from the writer thread) that all of them succeeded; only then does the coordinator
  replace ``commit.json``, and it tells every rank whether that worked. If any rank
  failed, nobody commits and every rank raises :class:`RecordingFailedError` naming it.

The coordinator holds the writer lock (a lease on object storage) from open to
close; peers write under it and never take it. Recovery of a crash tail on
``mode="a"`` is the coordinator's, done before any peer opens its arrays.

Failures surface on every rank at the same call: the writer thread never sets the
error that :meth:`check` raises; the training thread does, when it waits for a flush's
result, which every rank does at the same step. So no rank stops while another enters
the next step's collectives.
"""

from __future__ import annotations

import time
from typing import Callable

from ..distributed import CommitGroup
from ..errors import RecordingFailedError
from ..format import Manifest, load_manifest
from ..storage import open_io
from .exchange import plan_owners
from .writer import StoreWriter


class RankedWriter(StoreWriter):
    """A :class:`StoreWriter` for the groups one rank owns, committing with the other ranks.

    ``commit``: the recording's :class:`~deltastore.distributed.CommitGroup`;
    ``owners_of(manifest)``: owner rank of each group, in manifest order.
    """

    def __init__(self, io, manifest: Manifest, manifest_sha256: str, committed: int, options, *, pin_memory: bool,
                 commit, owners_of: Callable[[Manifest], list[int]], lease=None, index=None):
        self.commit_group = commit
        self.rank = commit.rank
        self.coordinator = commit.rank == 0
        self.owners = list(owners_of(manifest))
        self._failed: BaseException | None = None  # the writer thread's view: never commit past a failure
        owned = frozenset(g.id for g, o in zip(manifest.groups, self.owners) if o == self.rank)
        super().__init__(io, manifest, manifest_sha256, committed, options, pin_memory=pin_memory, lease=lease, index=index,
                         owned=owned, with_index=self.coordinator)

    def _write(self, buf, start: int, count: int, event) -> None:
        t0 = time.perf_counter()
        end = start + count
        try:
            if self._failed is not None:  # every rank agreed on it: no rank takes part in another agreement
                raise self._failed
            # Peers write only while the coordinator's lease holds (object storage: §11), as one
            # process checks its own before writing: rank 0 checks it and tells every rank.
            lease_error = self._on_coordinator(self._lease.check if self._lease is not None else None)
            message = self._collective(lambda: self.commit_group.share(lease_error), start, end)
            if message is not None:
                raise RecordingFailedError(
                    f"{self.io.url}: recording stopped before writing steps [{start}, {end}): the coordinator's writer lease "
                    f"is lost ({message}); steps [0, {self.committed}) are committed", committed_steps=self.committed) from lease_error
            local = None
            try:
                self._write_rows(buf, start, count, event)
            except BaseException as exc:  # told to the other ranks, then raised on every rank
                local = exc
            failed = self._collective(lambda: self.commit_group.agree(local), start, end)
            if failed:
                who = "; ".join(f"rank {r}: {m}" for r, m in sorted(failed.items()))
                err = RecordingFailedError(
                    f"{self.io.url}: recording stopped: writing steps [{start}, {end}) failed on {who}; nothing of them is "
                    f"committed, steps [0, {self.committed}) are committed and intact; reopen with mode='a' on every rank "
                    f"to resume at step {self.committed}", committed_steps=self.committed)
                raise err from local
            outcome = self._on_coordinator(lambda: self._commit(end, None))
            message = self._collective(lambda: self.commit_group.share(outcome), start, end)
            if message is not None:
                raise RecordingFailedError(
                    f"{self.io.url}: recording stopped: the coordinator (rank 0) could not commit steps [{start}, {end}) "
                    f"({message}); steps [0, {self.committed}) are committed and intact; reopen with mode='a' on every rank",
                    committed_steps=self.committed) from outcome
            with self._lock:
                self.committed = end
        except BaseException as exc:
            if self._failed is None:
                self._failed = self._failure(exc, f"committing steps [{start}, {end})")
            if self._failed is exc:
                raise
            raise self._failed from exc
        finally:
            buf.count = 0
            buf.index_rows = []
            self.write_seconds += time.perf_counter() - t0

    def _on_coordinator(self, fn) -> BaseException | None:
        """Run ``fn`` on the coordinator only; its exception (None: success, a peer, or no ``fn``),
        which the caller then shares with every rank."""
        if not self.coordinator or fn is None:
            return None
        try:
            fn()
        except BaseException as exc:
            return exc
        return None

    def _collective(self, fn, start: int, end: int):
        """Run an agreement; a rank that died or stopped answering is a RecordingFailedError."""
        try:
            return fn()
        except RecordingFailedError:
            raise
        except Exception as exc:  # gloo: connection closed, timeout
            raise RecordingFailedError(
                f"{self.io.url}: recording stopped: rank {self.rank} could not agree with the other ranks on steps "
                f"[{start}, {end}) ({type(exc).__name__}: {exc}); nothing of them is committed; steps [0, {self.committed}) "
                "are committed and intact", committed_steps=self.committed) from exc

    def _wait(self, fut) -> None:
        # The training thread, at the same step on every rank: the one place a flush's failure
        # becomes the sticky error that check() raises.
        try:
            super()._wait(fut)
        except BaseException as exc:
            if self._error is None:
                self._error = exc
            raise

    def close(self, fingerprint: str | None = None, trained=None) -> None:
        """Flush and agree (every rank), then the coordinator's final commit, whose outcome every rank hears."""
        if self._closed:
            return
        try:
            self.flush()  # every flush agreed; no agreement is in flight after this
            error = self._on_coordinator(lambda: self._finish(fingerprint, trained))
            message = self._collective(lambda: self.commit_group.share(error), self.committed, self.committed)
            if error is not None:
                raise error
            if message is not None:
                raise RecordingFailedError(f"{self.io.url}: rank {self.rank}: the coordinator (rank 0) could not close the store "
                                           f"({message}); steps [0, {self.committed}) are committed", committed_steps=self.committed)
        finally:
            self._release()
            self.commit_group.destroy()

    def abort(self) -> None:
        super().abort()
        self.commit_group.destroy()


def open_ranked_writer(ranks, store, specs, opts, mode: str, pin: bool, movable_names: set[str], check_same_tensors) -> RankedWriter:
    """Every rank's RankedWriter (call on every rank): rank 0 opens the store -- creates it, or recovers
    the crash tail -- and only then does each peer open the arrays it writes.

    ``movable_names``: the parameters another rank may record (FSDP2: the DTensor ones; DDP with
    ``rank_writes="spread"``: all; empty: rank 0 writes everything); only groups made of them leave rank 0.
    Any rank's failure is raised on every rank, and rank 0 then releases the lock.
    """
    commit = CommitGroup(ranks)  # a collective: the recording's own group for the writer threads' agreement

    def movable(g) -> bool:  # buffers and plain tensors stay with rank 0, whose copies are the model's
        return all(n in movable_names for n in g.tensors)

    def owners_of(manifest: Manifest) -> list[int]:
        return plan_owners(manifest, ranks.world_size, movable)

    writer, error, opened = None, None, None
    if ranks.rank == 0:
        try:
            io = open_io(store)
            if mode == "w":
                writer = RankedWriter.create(io, specs, opts, pin_memory=pin, commit=commit, owners_of=owners_of)
            else:
                check_same_tensors(list(load_manifest(io).tensors), specs, io.url)
                writer = RankedWriter.open_append(io, opts, pin_memory=pin, commit=commit, owners_of=owners_of)
            opened = {"manifest": writer.manifest.to_json(), "next_step": writer.next_step, "manifest_sha256": writer.manifest_sha256}
        except BaseException as exc:  # every rank must hear of it, or they wait in the next collective
            error = exc
    try:
        got = ranks.share_opened(opened, error)
    except BaseException:
        commit.destroy()
        raise
    if error is not None:
        commit.destroy()
        raise error
    local = None
    if writer is None:  # a peer: its arrays, opened after rank 0 truncated any crash tail
        try:
            writer = RankedWriter(open_io(store), Manifest.from_json(got["manifest"]), got["manifest_sha256"],
                                  int(got["next_step"]), opts, pin_memory=pin, commit=commit, owners_of=owners_of)
        except BaseException as exc:
            local = exc
    failed = commit.agree(local)  # every rank opened, or every rank gives up
    if failed:
        if writer is not None:
            writer.abort()  # rank 0: releases the writer lock
        else:
            commit.destroy()
        if local is not None:
            raise local
        who = "; ".join(f"rank {r}: {m}" for r, m in sorted(failed.items()))
        raise RecordingFailedError(f"rank {ranks.rank}: a rank could not open the store ({who}); nothing was recorded",
                                   committed_steps=int(got["next_step"]))
    return writer
