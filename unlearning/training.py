"""Minibatch training with an optional recorder, and batched prediction.

The one line a user adds to an ordinary training loop to make it forgettable
is the ``recorder.samples(ids, epoch=epoch)`` call right before
``optimizer.step()``; :func:`train` shows where it goes.

Batch orders come from :func:`make_batches` and are plain lists of position
tensors, so a caller can keep them and replay the same order later (exact
retraining without the forgotten samples, SISA).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from deltastore.devices import parse_device
from deltastore.errors import InvalidArgumentError
from unlearning.data import Dataset

__all__ = ["REGIMES", "make_batches", "train", "predict"]

REGIMES: tuple[str, ...] = ("shuffled", "class-sorted")


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    # SeedSequence mixes (seed, epoch) so that nearby pairs give unrelated streams.
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch)]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 31 ^ int(state[1]))


def make_batches(
    labels: torch.Tensor,
    *,
    batch_size: int,
    epochs: int,
    seed: int,
    regime: str = "shuffled",
) -> list[list[torch.Tensor]]:
    """Batch order of every epoch, as positions into ``labels``.

    Parameters
    ----------
    labels : torch.Tensor
        int64 labels of the ``N`` training samples (only their count matters
        for ``"shuffled"``).
    batch_size : int
        Samples per batch (>= 1).
    epochs : int
        Number of epochs (>= 0).
    seed : int
        Seed; epoch ``e`` draws from a ``torch.Generator`` seeded by
        ``(seed, e)``, so epochs differ and the order is reproducible.
    regime : {"shuffled", "class-sorted"}
        ``"shuffled"``: a uniform random permutation of ``0..N-1`` per epoch,
        cut into consecutive batches of ``batch_size`` (the last one may be
        smaller) -- ordinary SGD. A class then touches almost every batch.

        ``"class-sorted"``: per epoch, the samples of each class are put in
        a random order, each class block is cut into batches of
        ``batch_size`` (its last batch holds the remainder, so it may be
        smaller), and the order of all batches is shuffled. Every batch then
        holds one class only, and a class forget request touches just
        ``ceil(n_class / batch_size)`` batches per epoch, which contain no
        retained sample -- the regime under which subtracting whole batch
        updates (amnesiac unlearning) harms retained classes least; the
        paper's results may depend on it.

    Returns
    -------
    list of list of torch.Tensor
        ``result[e][b]`` is the int64 tensor of positions in batch ``b`` of
        epoch ``e``. Each epoch's batches partition ``0..N-1`` exactly.
    """
    if regime not in REGIMES:
        raise InvalidArgumentError(f"regime must be one of {REGIMES}; got {regime!r}")
    if int(batch_size) < 1:
        raise InvalidArgumentError(f"batch_size must be >= 1; got {batch_size}")
    if int(epochs) < 0:
        raise InvalidArgumentError(f"epochs must be >= 0; got {epochs}")
    labels = torch.as_tensor(labels).flatten().cpu()
    n = labels.numel()
    out: list[list[torch.Tensor]] = []
    for epoch in range(int(epochs)):
        gen = _epoch_generator(seed, epoch)
        if regime == "shuffled":
            order = torch.randperm(n, generator=gen)
            out.append(list(torch.split(order, int(batch_size))))
            continue
        batches: list[torch.Tensor] = []
        for c in torch.unique(labels):
            members = torch.nonzero(labels == c).flatten()
            members = members[torch.randperm(members.numel(), generator=gen)]
            batches.extend(torch.split(members, int(batch_size)))
        perm = torch.randperm(len(batches), generator=gen).tolist()
        out.append([batches[i] for i in perm])
    return out


def _restrict(batches: Sequence[Sequence[torch.Tensor]], keep: torch.Tensor, n: int) -> list[list[torch.Tensor]]:
    """Drop from every batch the positions not in ``keep``; drop emptied batches."""
    mask = torch.zeros(n, dtype=torch.bool)
    mask[keep] = True
    out = []
    for epoch_batches in batches:
        kept = []
        for b in epoch_batches:
            b = torch.as_tensor(b, dtype=torch.int64).cpu()
            b = b[mask[b]]
            if b.numel():
                kept.append(b)
        out.append(kept)
    return out


def train(
    model: nn.Module,
    data: Dataset,
    *,
    epochs: int,
    batch_size: int,
    lr: float = 1e-3,
    seed: int = 0,
    optimizer: torch.optim.Optimizer | None = None,
    regime: str = "shuffled",
    recorder=None,
    train_indices: torch.Tensor | None = None,
    device="cpu",
    on_epoch_end: Callable[[int, nn.Module], None] | None = None,
    batches: Sequence[Sequence[torch.Tensor]] | None = None,
) -> dict:
    """Train ``model`` with cross-entropy on (part of) ``data``'s train set.

    Parameters
    ----------
    model : torch.nn.Module
        Moved to ``device`` (in place: parameters keep their identity, so an
        optimizer and a recorder already attached stay valid).
    data : Dataset
        Source of ``x_train``, ``y_train`` and ``ids_train``.
    epochs, batch_size : int
        Number of epochs and batch size (``batch_size`` is only used when
        ``batches`` is None).
    lr : float
        Learning rate of the default optimizer.
    seed : int
        Seed of :func:`make_batches` (the only randomness of training here).
    optimizer : torch.optim.Optimizer, optional
        Defaults to ``Adam(model.parameters(), lr)``.
    regime : str
        Batch regime for :func:`make_batches`.
    recorder : object, optional
        If given, ``recorder.samples(data.ids_train[positions], epoch=epoch)``
        is called once per batch right before ``optimizer.step()``, with the
        CPU int64 ids of that batch's samples (``epoch`` is 0-based). The
        recorder is expected to be attached to ``optimizer`` already.
    train_indices : torch.Tensor, optional
        Positions into the train set to train on (all when None).
    device : str or torch.device
        Where to train.
    on_epoch_end : callable, optional
        ``on_epoch_end(epoch, model)`` after each epoch (0-based), e.g. to
        record accuracy curves.
    batches : list of list of torch.Tensor, optional
        A precomputed batch order (``make_batches`` output): positions into
        the *full* train set, ``len(batches) == epochs``. If ``train_indices``
        is given too, positions outside it are dropped from each batch and
        emptied batches are skipped -- retraining "in the same order, minus
        the forgotten samples".

    Returns
    -------
    dict
        ``{"steps": optimizer steps taken, "seconds": wall time,
        "losses": per-epoch sample-weighted mean training loss}``.
    """
    dev = parse_device(device)
    n = data.y_train.numel()
    if train_indices is not None:
        train_indices = torch.as_tensor(train_indices, dtype=torch.int64).flatten().cpu()
        if train_indices.numel() and (int(train_indices.min()) < 0 or int(train_indices.max()) >= n):
            raise InvalidArgumentError(f"train_indices must lie in [0, {n}); got values outside")
    if batches is None:
        if train_indices is None:
            batches = make_batches(data.y_train, batch_size=batch_size, epochs=epochs, seed=seed, regime=regime)
        else:
            sub = make_batches(
                data.y_train[train_indices], batch_size=batch_size, epochs=epochs, seed=seed, regime=regime
            )
            batches = [[train_indices[b] for b in ep] for ep in sub]
    else:
        if len(batches) != int(epochs):
            raise InvalidArgumentError(f"expected {epochs} epochs of batches; got {len(batches)}")
        if train_indices is not None:
            batches = _restrict(batches, train_indices, n)
    model.to(dev)
    if optimizer is None:
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    # The whole (small) train set goes to the device once; batches index it there.
    x_all = data.x_train.to(dev)
    y_all = data.y_train.to(dev)
    loss_fn = nn.CrossEntropyLoss()
    was_training = model.training
    model.train()
    steps = 0
    losses: list[float] = []
    start = time.perf_counter()
    for epoch, epoch_batches in enumerate(batches):
        total = torch.zeros((), device=dev)
        count = 0
        for pos in epoch_batches:
            pos = torch.as_tensor(pos, dtype=torch.int64).cpu()
            pos_dev = pos.to(dev)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x_all[pos_dev]), y_all[pos_dev])
            loss.backward()
            if recorder is not None:
                recorder.samples(data.ids_train[pos], epoch=epoch)
            optimizer.step()
            steps += 1
            # Accumulated on the device: no host sync per step.
            total += loss.detach() * pos.numel()
            count += pos.numel()
        losses.append(float(total) / count if count else float("nan"))
        if on_epoch_end is not None:
            on_epoch_end(epoch, model)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - start
    model.train(was_training)
    return {"steps": steps, "seconds": seconds, "losses": losses}


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, *, batch_size: int = 1024, device="cpu") -> torch.Tensor:
    """Logits of ``model`` on ``x``, in eval mode, returned on CPU.

    The model's train/eval mode is restored afterwards. ``model`` must
    already be on ``device``; ``x`` is moved there batch by batch.
    """
    dev = parse_device(device)
    if int(batch_size) < 1:
        raise InvalidArgumentError(f"batch_size must be >= 1; got {batch_size}")
    was_training = model.training
    model.eval()
    try:
        outs = [model(chunk.to(dev)).float().cpu() for chunk in torch.split(x, int(batch_size))]
    finally:
        model.train(was_training)
    if not outs:
        # Empty input: ask the model for its output width with one dummy row.
        with torch.no_grad():
            model.eval()
            try:
                width = model(torch.zeros((1, *x.shape[1:]), dtype=x.dtype, device=dev)).shape[1]
            finally:
                model.train(was_training)
        return torch.empty((0, width), dtype=torch.float32)
    return torch.cat(outs)
