"""The paper's Table 1 baselines: retraining, SISA and FMUL (UNSIR).

* :func:`retrain` -- train from scratch without the forget set: the reference
  every unlearning method is measured against.
* :class:`SISAEnsemble` -- Sharded, Isolated, Sliced, Aggregated training
  (Bourtoule et al. 2021): disjoint shards, each trained slice by slice with a
  checkpoint after every slice, so forgetting retrains only the affected
  shards from the slice before the first affected one.
* :func:`fmul_unlearn` -- Fast yet effective Machine UnLearning / UNSIR
  (Tarun et al. 2021): learn error-maximising noise for the forget class,
  impair the model on noise + a few retained samples, optionally repair.

Every baseline is deterministic given its seed: weights come from
:func:`unlearning.models.build_model`, batch orders from seeded generators,
and the global RNG is not used.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from deltastore.errors import InvalidArgumentError
from unlearning.data import Dataset
from unlearning.models import build_model
from unlearning.partial_updates import derive_seed
from unlearning.training import predict, train

__all__ = ["retrain", "SISAEnsemble", "SISAUnlearnInfo", "fmul_unlearn"]


def _parse_positions(positions, n: int) -> torch.Tensor:
    """Unique, sorted int64 CPU positions into a train set of size ``n``."""
    try:
        pos = torch.as_tensor(positions)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InvalidArgumentError(f"expected integer train-set positions; got {type(positions).__name__}") from exc
    if pos.numel() == 0:
        return torch.empty(0, dtype=torch.int64)
    if pos.dtype.is_floating_point or pos.dtype.is_complex or pos.dtype == torch.bool:
        raise InvalidArgumentError(f"expected integer train-set positions; got dtype {pos.dtype}")
    pos = torch.unique(pos.flatten().to("cpu", torch.int64))
    if int(pos[0]) < 0 or int(pos[-1]) >= n:
        raise InvalidArgumentError(
            f"positions must lie in [0, {n}); got min {int(pos[0])}, max {int(pos[-1])}"
        )
    return pos


def _positive_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgumentError(f"{what}: expected a positive integer, got {value!r}")
    return int(value)


def _state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    # A CPU copy, so a checkpoint is independent of the live model and of the device.
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _seed32(seed: int, *parts) -> int:
    # training.make_batches uses only the low 32 bits of a seed.
    return derive_seed(seed, *parts) & 0xFFFFFFFF


# ---- retraining ------------------------------------------------------------------
def retrain(
    data: Dataset,
    forget_positions,
    *,
    model_name: str,
    epochs: int,
    batch_size: int,
    lr: float = 1e-3,
    seed: int = 0,
    device="cpu",
    regime: str = "shuffled",
    batches=None,
) -> nn.Module:
    """Train a fresh model on the train set without ``forget_positions``.

    Same initialisation (``build_model(..., seed=seed)``) and batch seed as
    an original run with that seed. Pass the original run's ``batches``
    (from :func:`unlearning.training.make_batches`) to retrain in the same
    order minus the forgotten samples.

    Returns
    -------
    nn.Module
        The retrained model, on ``device``.
    """
    n = data.y_train.numel()
    forget = _parse_positions(forget_positions, n)
    keep_mask = torch.ones(n, dtype=torch.bool)
    keep_mask[forget] = False
    keep = torch.nonzero(keep_mask).flatten()
    model = build_model(model_name, in_shape=data.in_shape, num_classes=data.num_classes, seed=seed)
    train(
        model, data, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
        regime=regime, train_indices=keep, device=device, batches=batches,
    )
    return model


# ---- SISA ------------------------------------------------------------------------
@dataclass(frozen=True)
class SISAUnlearnInfo:
    """What :meth:`SISAEnsemble.unlearn` did.

    Attributes
    ----------
    shards : tuple of int
        Shards that were retrained (ascending); all others are untouched.
    first_slices : dict
        Shard -> first slice retrained (0-based): training restarted from the
        checkpoint after the slice before it (from the initial weights for 0).
    slice_trainings : int
        Number of slice trainings run (the cost in SISA's own unit).
    samples_removed : int
        Forget positions that were still in the ensemble's data.
    seconds : float
        Wall time of the retraining.
    """

    shards: tuple[int, ...]
    first_slices: dict[int, int]
    slice_trainings: int
    samples_removed: int
    seconds: float


class _MeanSoftmax(nn.Module):
    """Shard models as one module: log of the mean of their softmax outputs."""

    def __init__(self, models: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(models)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([F.softmax(m(x).float(), dim=1) for m in self.members]).mean(0)
        return torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))


class SISAEnsemble:
    """SISA training and unlearning (Bourtoule et al. 2021), in memory.

    Training: the train set is split by a seeded permutation into ``shards``
    disjoint shards of near-equal size, each shard into ``slices`` slices.
    Shard ``s`` starts from ``build_model(..., seed=derive_seed(seed, "sisa-model", s))``;
    at slice ``r`` it continues from the model after slice ``r - 1`` and
    trains on the union of slices ``0..r`` (Bourtoule et al.'s incremental
    training; the paper's §3.2.1 wording reads as slice ``r`` alone, but the
    union is what SISA does) for ``max(1, round(2 E / (R + 1)))`` epochs, so
    a shard costs about ``E`` epochs over its data, as without slicing. Each
    slice uses a fresh Adam optimiser (checkpoints hold weights only, like
    SISA's). A CPU ``state_dict`` is kept after every slice.

    Aggregation: :meth:`predict` returns the log of the mean of the shard
    models' softmax outputs. Bourtoule et al. mostly use a majority vote of
    labels; the mean of probabilities gives the same argmax in almost every
    case, breaks ties smoothly and gives probabilities that membership
    inference can use.

    Parameters
    ----------
    device : str or torch.device
        Where shard models train and predict.
    """

    def __init__(self, device="cpu"):
        self.device = device
        self._data: Dataset | None = None
        self._config: dict = {}
        self._slices: list[list[torch.Tensor]] = []
        self._checkpoints: list[list[dict[str, torch.Tensor]]] = []
        self._models: list[nn.Module] = []

    # ---- training ------------------------------------------------------------
    def train(
        self,
        data: Dataset,
        *,
        shards: int = 8,
        slices: int = 4,
        model_name: str,
        epochs: int,
        batch_size: int,
        lr: float = 1e-3,
        seed: int = 0,
    ) -> "SISAEnsemble":
        """Partition ``data``'s train set and train every shard; returns ``self``."""
        shards = _positive_int(shards, "shards")
        slices = _positive_int(slices, "slices")
        epochs = _positive_int(epochs, "epochs")
        n = data.y_train.numel()
        if shards * slices > n:
            raise InvalidArgumentError(
                f"expected at most one slice per sample: {shards} shards x {slices} slices > {n} samples"
            )
        gen = torch.Generator().manual_seed(derive_seed(seed, "sisa-partition"))
        perm = torch.randperm(n, generator=gen)
        self._data = data
        self._config = dict(
            model_name=model_name, batch_size=batch_size, lr=lr, seed=seed,
            slice_epochs=max(1, round(2 * epochs / (slices + 1))),
        )
        self._slices = [
            [sl.sort().values for sl in torch.tensor_split(shard, slices)]
            for shard in torch.tensor_split(perm, shards)
        ]
        self._checkpoints = [[] for _ in range(shards)]
        self._models = [self._fresh_model(s) for s in range(shards)]
        for s in range(shards):
            self._train_from(s, 0)
        return self

    def _fresh_model(self, shard: int) -> nn.Module:
        d = self._data
        return build_model(
            self._config["model_name"], in_shape=d.in_shape, num_classes=d.num_classes,
            seed=derive_seed(self._config["seed"], "sisa-model", shard),
        ).to(self.device)

    def _train_from(self, shard: int, first: int) -> int:
        """Train slices ``first..R-1`` of ``shard`` (model already at checkpoint ``first-1``)."""
        cfg = self._config
        model = self._models[shard]
        del self._checkpoints[shard][first:]
        runs = 0
        for r in range(first, len(self._slices[shard])):
            idx = torch.cat(self._slices[shard][: r + 1])
            if idx.numel():  # a slice union emptied by unlearning trains nothing
                train(
                    model, self._data, epochs=cfg["slice_epochs"], batch_size=cfg["batch_size"],
                    lr=cfg["lr"], seed=_seed32(cfg["seed"], "sisa-train", shard, r),
                    train_indices=idx, device=self.device,
                )
                runs += 1
            self._checkpoints[shard].append(_state_copy(model))
        return runs

    def _require_trained(self) -> None:
        if self._data is None:
            raise InvalidArgumentError("the SISA ensemble is not trained yet: call train() first")

    # ---- inspection ------------------------------------------------------------
    @property
    def num_shards(self) -> int:
        return len(self._slices)

    @property
    def shard_models(self) -> list[nn.Module]:
        """The live shard models (do not train them by hand)."""
        return list(self._models)

    def slice_positions(self, shard: int) -> list[torch.Tensor]:
        """Train-set positions in each slice of ``shard`` (copies)."""
        self._require_trained()
        return [sl.clone() for sl in self._slices[shard]]

    def shard_positions(self, shard: int) -> torch.Tensor:
        """All train-set positions of ``shard``, sorted."""
        return torch.cat(self.slice_positions(shard)).sort().values

    def checkpoint(self, shard: int, slice_: int) -> dict[str, torch.Tensor]:
        """The stored state after ``slice_`` of ``shard`` (a copy)."""
        self._require_trained()
        return {k: v.clone() for k, v in self._checkpoints[shard][slice_].items()}

    def storage_bytes(self) -> int:
        """Bytes of all checkpoints kept (every slice of every shard)."""
        return sum(
            t.numel() * t.element_size() for per_shard in self._checkpoints for ck in per_shard for t in ck.values()
        )

    # ---- inference ---------------------------------------------------------------
    def module(self) -> nn.Module:
        """The ensemble as one module whose outputs are log mean-softmax scores."""
        self._require_trained()
        return _MeanSoftmax(self._models)

    def predict(self, x: torch.Tensor, *, batch_size: int = 1024) -> torch.Tensor:
        """Aggregated scores on ``x``: log of the mean shard softmax, on CPU.

        ``softmax`` of the result is the mean of the shard probabilities;
        ``argmax`` is the ensemble's label.
        """
        return predict(self.module(), x, batch_size=batch_size, device=self.device)

    # ---- unlearning ----------------------------------------------------------------
    def unlearn(self, forget_positions) -> SISAUnlearnInfo:
        """Forget train-set positions by retraining only the shards that hold them.

        For each affected shard, the forget positions are removed from their
        slices for good; training restarts from the checkpoint after the
        slice before the earliest affected one (from the shard's initial
        weights if that is slice 0) and runs the remaining slices again.
        Positions already forgotten are ignored.
        """
        self._require_trained()
        forget = _parse_positions(forget_positions, self._data.y_train.numel())
        start = time.perf_counter()
        first_slices: dict[int, int] = {}
        removed = 0
        for s, shard_slices in enumerate(self._slices):
            for r, sl in enumerate(shard_slices):
                hit = torch.isin(sl, forget)
                if bool(hit.any()):
                    removed += int(hit.sum())
                    shard_slices[r] = sl[~hit]
                    first_slices.setdefault(s, r)
        runs = 0
        for s, r in first_slices.items():
            if r == 0:
                self._models[s] = self._fresh_model(s)
            else:
                self._models[s].load_state_dict(self._checkpoints[s][r - 1])
            runs += self._train_from(s, r)
        return SISAUnlearnInfo(
            shards=tuple(sorted(first_slices)),
            first_slices=dict(sorted(first_slices.items())),
            slice_trainings=runs,
            samples_removed=removed,
            seconds=time.perf_counter() - start,
        )


# ---- FMUL / UNSIR ------------------------------------------------------------------
def _one_epoch(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, lr: float, batch_size: int,
    gen: torch.Generator, device,
) -> None:
    """One shuffled epoch of Adam on (x, y), in train mode (as the original FMUL)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    order = torch.randperm(y.numel(), generator=gen)
    for idx in torch.split(order, batch_size):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x[idx].to(device)), y[idx].to(device))
        loss.backward()
        opt.step()


def fmul_unlearn(
    model: nn.Module,
    data: Dataset,
    forget_class: int,
    *,
    noise_steps: int = 40,
    impair_lr: float = 0.02,
    repair: bool = False,
    repair_lr: float = 0.01,
    seed: int = 0,
    device="cpu",
    noise_batch: int = 64,
    noise_copies: int = 8,
    noise_lr: float = 0.1,
    noise_l2: float = 0.1,
    retain_per_class: int | None = 100,
    batch_size: int = 64,
) -> nn.Module:
    """FMUL / UNSIR (Tarun et al. 2021): forget one class with error-maximising noise.

    1. Noise: a batch of ``noise_batch`` inputs (standard normal start) is
       optimised by Adam (``noise_lr``) for ``noise_steps`` steps to minimise
       ``-CE(model(noise), forget_class) + noise_l2 * mean_i ||noise_i||^2``,
       i.e. to maximise the model's loss on noise labelled as the forget class
       while keeping it bounded. The model is frozen (eval mode) meanwhile.
    2. Impair: one epoch of Adam (``impair_lr``) on ``noise_copies`` copies of
       the noise batch, labelled ``forget_class``, shuffled together with
       ``retain_per_class`` samples of every other class (all if None).
    3. Repair (off by default, as in the paper's Table 1 comparison): one
       epoch of Adam (``repair_lr``) on the retained subset alone.

    The original used batches of 256, 20 copies of the noise and 1000
    retained samples per class on CIFAR-10; the defaults here scale that
    down for small data sets, keeping the noise:retained ratio (~0.57).

    Returns
    -------
    nn.Module
        A new model on ``device`` (``model`` is not modified), in the
        train/eval mode ``model`` had.
    """
    n_cls = data.num_classes
    if isinstance(forget_class, bool) or not isinstance(forget_class, int) or not 0 <= forget_class < n_cls:
        raise InvalidArgumentError(f"forget_class: expected an integer in [0, {n_cls}), got {forget_class!r}")
    noise_steps = int(noise_steps)
    if noise_steps < 0:
        raise InvalidArgumentError(f"noise_steps: expected >= 0, got {noise_steps}")
    for what, value in (("noise_batch", noise_batch), ("noise_copies", noise_copies), ("batch_size", batch_size)):
        _positive_int(value, what)
    if retain_per_class is not None:
        _positive_int(retain_per_class, "retain_per_class")

    gen = torch.Generator().manual_seed(derive_seed(seed, "fmul"))
    was_training = model.training
    new = copy.deepcopy(model).to(device)

    # 1. error-maximising noise (gradients w.r.t. the noise only)
    new.eval()
    noise = torch.randn((noise_batch, *data.in_shape), generator=gen).to(device).requires_grad_(True)
    target = torch.full((noise_batch,), forget_class, dtype=torch.int64, device=device)
    opt = torch.optim.Adam([noise], lr=noise_lr)
    for _ in range(noise_steps):
        loss = -F.cross_entropy(new(noise), target) + noise_l2 * noise.square().flatten(1).sum(1).mean()
        (grad,) = torch.autograd.grad(loss, [noise])
        noise.grad = grad
        opt.step()
    noise = noise.detach().cpu()

    # retained subset: a seeded sample of every other class
    retain = []
    for c in range(n_cls):
        if c == forget_class:
            continue
        members = data.positions_of_class(c)
        members = members[torch.randperm(members.numel(), generator=gen)]
        retain.append(members if retain_per_class is None else members[:retain_per_class])
    retain_pos = torch.cat(retain)
    x_ret, y_ret = data.x_train[retain_pos], data.y_train[retain_pos]

    # 2. impair
    x_imp = torch.cat([noise.repeat(noise_copies, *([1] * (noise.ndim - 1))), x_ret])
    y_imp = torch.cat([torch.full((noise_batch * noise_copies,), forget_class, dtype=torch.int64), y_ret])
    _one_epoch(new, x_imp, y_imp, lr=impair_lr, batch_size=batch_size, gen=gen, device=device)

    # 3. repair
    if repair:
        _one_epoch(new, x_ret, y_ret, lr=repair_lr, batch_size=batch_size, gen=gen, device=device)

    new.train(was_training)
    return new
