"""Layer-wise partial updates for label-flipping and gradient-ascent unlearning.

The paper's Algorithms 2 and 3 (§4.2, §4.3). Both run a few epochs of plain
gradient steps on the forget set D_t, but each parameter tensor ``l`` is only
updated where a 0/1 *selection matrix* ``S_{l,e}`` is one:

* label flipping (Algorithm 2): every forget sample gets a random wrong label,
  then ``w <- w - lr * (S ⊙ ∇L(D'_t, w))`` (descent on the wrong labels);
* gradient ascent (Algorithm 3): ``w <- w + lr * (S ⊙ ∇L(D_t, w))`` (ascent on
  the true labels).

``S_{l,0}`` is a random mask with exactly ``round(d_l * n_l)`` ones, where
``d_l`` is the tensor's *density* (fraction of entries updated) from a
:class:`SelectionSchedule`; ``S_{l,e}`` is ``S_{l,e-1}`` circularly shifted.
With every density 1 (:meth:`SelectionSchedule.dense`) both algorithms are
their naive counterparts (Graves et al. 2020 label flipping; Warnecke et al.
2021 gradient ascent), bit for bit.

Circular shift, and why the default stride is one position
------------------------------------------------------------
The mask is flattened (row-major) and rolled by ``stride`` positions per
epoch, so ``S_{l,e}`` is ``S_{l,0}`` rolled by ``e * stride``. We roll by one
position (the paper's "simple circular shift"), for two reasons:

* A random mask rolled by *any* stride ``s`` (not a multiple of ``n``) is as
  far from the original as a fresh draw: the expected overlap is
  ``k (k - 1) / (n - 1)`` ones whatever ``s`` is. So a larger stride buys no
  extra mixing for a random mask; "a shift by one barely changes the mask" is
  true only of a contiguous block mask, which we never build.
* A mask rolled by one is equal to itself only if it is constant, so with
  ``0 < k < n`` every epoch's mask differs from the last and the period is the
  full ``n``; a stride of ``k`` repeats after ``n / gcd(n, k)`` epochs (two
  epochs at density 0.5), so some entries would never be updated.

``SelectionSchedule(shift="kept")`` rolls by ``k`` instead (successive masks
of a block mask would tile the tensor); any non-negative integer works too,
and ``shift=0`` keeps the mask fixed (an ablation).

Which densities
---------------
The paper recommends dense early / sparse deep layers for label flipping
(§4.2) and the opposite for gradient ascent (§4.3) but gives no numbers. The
defaults of :meth:`SelectionSchedule.for_label_flip` (1.0 -> 0.3) and
:meth:`SelectionSchedule.for_gradient_ascent` (0.3 -> 1.0) are our choice.

BatchNorm and dropout
---------------------
The unlearning steps run with the model in ``eval()`` mode: BatchNorm uses
(and does not update) its running statistics and dropout is off. Train mode
would fold the forget samples into the running statistics -- the opposite of
forgetting them -- and, because a forget set is often one class, normalise
with that class's batch statistics, so the gradients would belong to a
different network than the one that is evaluated. Eval mode also makes the
steps deterministic.
"""

from __future__ import annotations

import copy
import hashlib
import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from deltastore.errors import InvalidArgumentError
from deltastore.plan import layerwise_rates

__all__ = [
    "SelectionSchedule",
    "kept_count",
    "derive_seed",
    "selection_mask",
    "circular_shift",
    "mask_at_epoch",
    "shift_stride",
    "initial_masks",
    "flip_labels",
    "label_flip_unlearn",
    "gradient_ascent_unlearn",
    "naive_label_flip_unlearn",
    "naive_gradient_ascent_unlearn",
]

# Our defaults (the paper gives no numbers): §4.2 wants dense early layers and
# sparse deep layers for label flipping, §4.3 the reverse for gradient ascent.
LABEL_FLIP_FIRST, LABEL_FLIP_LAST = 1.0, 0.3
GRADIENT_ASCENT_FIRST, GRADIENT_ASCENT_LAST = 0.3, 1.0


# ---- validation at the edge ------------------------------------------------
def _parse_density(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgumentError(f"{what}: expected a density in (0, 1], got {value!r}")
    value = float(value)
    if not 0.0 < value <= 1.0:
        raise InvalidArgumentError(f"{what}: expected a density in (0, 1], got {value}")
    return value


def _parse_shift(value: object) -> int | str:
    if value == "kept":
        return "kept"
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgumentError(f"shift: expected a non-negative integer or 'kept', got {value!r}")
    return int(value)


def _parse_nonneg_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgumentError(f"{what}: expected a non-negative integer, got {value!r}")
    return int(value)


def _parse_seed(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgumentError(f"seed: expected a non-negative integer, got {value!r}")
    return int(value)


def _parse_lr(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise InvalidArgumentError(f"lr: expected a finite number >= 0, got {value!r}")
    return float(value)


def _trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


# ---- schedule ----------------------------------------------------------------
@dataclass(frozen=True)
class SelectionSchedule:
    """Density ``d_l`` in (0, 1] for each parameter tensor: the fraction updated.

    Parameters named in ``densities`` get that density, all others
    ``default``. Use the constructors: :meth:`dense`, :meth:`layerwise`,
    :meth:`for_label_flip`, :meth:`for_gradient_ascent`, :meth:`from_mapping`.

    Attributes
    ----------
    densities : Mapping[str, float]
        Parameter name (as in ``model.named_parameters()``) -> density.
    default : float
        Density of parameters not named in ``densities``.
    shift : int or "kept"
        Circular-shift stride per epoch, in flattened positions: an integer
        (default 1, see the module docstring) or ``"kept"`` for
        ``round(d_l * n_l)`` positions.
    """

    densities: Mapping[str, float] = field(default_factory=dict)
    default: float = 1.0
    shift: int | str = 1

    def __post_init__(self) -> None:
        if not isinstance(self.densities, Mapping):
            raise InvalidArgumentError(f"densities: expected a mapping name -> density, got {self.densities!r}")
        parsed = {}
        for name, value in self.densities.items():
            if not isinstance(name, str) or not name:
                raise InvalidArgumentError(f"densities: expected parameter names as keys, got {name!r}")
            parsed[name] = _parse_density(value, f"density of {name!r}")
        # Read-only copy: a frozen schedule must not change under the caller's dict.
        object.__setattr__(self, "densities", MappingProxyType(parsed))
        object.__setattr__(self, "default", _parse_density(self.default, "default density"))
        object.__setattr__(self, "shift", _parse_shift(self.shift))

    __hash__ = None  # type: ignore[assignment]  # holds a mapping

    # ---- constructors ------------------------------------------------------
    @classmethod
    def dense(cls) -> "SelectionSchedule":
        """Every entry of every tensor updated: the naive algorithms."""
        return cls()

    @classmethod
    def from_mapping(
        cls, mapping: Mapping[str, float], *, default: float = 1.0, shift: int | str = 1
    ) -> "SelectionSchedule":
        """Densities by parameter name; unnamed parameters get ``default``."""
        return cls(densities=dict(mapping), default=default, shift=shift)

    @classmethod
    def layerwise(
        cls,
        model: nn.Module,
        first: float,
        last: float,
        *,
        vector_density: float = 1.0,
        shift: int | str = 1,
    ) -> "SelectionSchedule":
        """Densities linear in depth over the model's weight tensors.

        The weight tensors (trainable parameters with ``ndim >= 2``, in
        registration order) get ``first`` for the first, ``last`` for the
        last and linearly interpolated densities between (``first`` if there
        is only one). 1-D tensors (biases, norm scales) get ``vector_density``.
        """
        first = _parse_density(first, "first-layer density")
        last = _parse_density(last, "last-layer density")
        vector_density = _parse_density(vector_density, "vector density")
        params = _trainable(model)
        # the pruning plans' schedule formula, here over densities
        weights = iter(layerwise_rates(sum(1 for _, p in params if p.ndim >= 2), first, last))
        # registration order, so the mapping reads like the model
        out = {name: next(weights) if p.ndim >= 2 else vector_density for name, p in params}
        return cls(densities=out, default=1.0, shift=shift)

    @classmethod
    def for_label_flip(
        cls,
        model: nn.Module,
        first: float = LABEL_FLIP_FIRST,
        last: float = LABEL_FLIP_LAST,
        **kwargs,
    ) -> "SelectionSchedule":
        """Dense early, sparse deep layers (paper §4.2) for Algorithm 2.

        The paper recommends the shape but gives no numbers: 1.0 -> 0.3 is
        our choice.
        """
        return cls.layerwise(model, first, last, **kwargs)

    @classmethod
    def for_gradient_ascent(
        cls,
        model: nn.Module,
        first: float = GRADIENT_ASCENT_FIRST,
        last: float = GRADIENT_ASCENT_LAST,
        **kwargs,
    ) -> "SelectionSchedule":
        """Sparse early, dense deep layers (paper §4.3) for Algorithm 3.

        The paper recommends the shape but gives no numbers: 0.3 -> 1.0 is
        our choice.
        """
        return cls.layerwise(model, first, last, **kwargs)

    # ---- resolution ----------------------------------------------------------
    def density(self, name: str) -> float:
        """Density of parameter ``name``."""
        return self.densities.get(name, self.default)

    def is_dense(self) -> bool:
        """True when every parameter is fully updated."""
        return self.default == 1.0 and all(d == 1.0 for d in self.densities.values())

    def resolve(self, model: nn.Module) -> dict[str, float]:
        """Density of every trainable parameter of ``model``.

        Raises
        ------
        InvalidArgumentError
            If the schedule names parameters the model does not have (most
            likely a schedule built for another model).
        """
        params = _trainable(model)
        known = {name for name, _ in params}
        unknown = sorted(set(self.densities) - known)
        if unknown:
            raise InvalidArgumentError(
                f"schedule names parameters the model does not have (trainable): {unknown[:5]}"
                f"{' ...' if len(unknown) > 5 else ''}; model has {sorted(known)[:5]} ..."
            )
        return {name: self.density(name) for name, _ in params}


# ---- selection masks (pure, device-generic) ------------------------------------
def kept_count(numel: int, density: float) -> int:
    """Number of ones in a selection mask: ``round(density * numel)``.

    Python's ``round`` (half to even). Not the pruning plans' rule
    (``deltastore.masks.kept_count``: ``floor((1 - rate) * n + 0.5)``, halves up):
    at an exact half the two differ by one (``numel=1, density=0.5``: 0 here, 1
    there). Kept as it is so that results recorded with it do not change.
    Can be 0 for a tiny tensor at a low density; that tensor is then frozen.
    """
    return min(int(numel), int(round(float(density) * int(numel))))


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed from ``seed`` and labels, stable across processes.

    (Python's ``hash`` of a string changes per process, so it cannot be used.)
    """
    text = "/".join([str(int(seed)), *map(str, parts)]).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def selection_mask(
    shape: tuple[int, ...] | torch.Size,
    density: float,
    *,
    seed: int,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Random boolean mask ``S_{l,0}`` with exactly ``kept_count(n, density)`` ones.

    The positions are drawn by a CPU ``torch.Generator`` seeded with ``seed``
    (so every device gets the same mask), then moved to ``device``.
    """
    density = _parse_density(density, "density")
    shape = torch.Size(shape)
    n = shape.numel()
    k = kept_count(n, density)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    flat = torch.zeros(n, dtype=torch.bool)
    if k == n:
        flat.fill_(True)
    elif k > 0:
        flat[torch.randperm(n, generator=gen)[:k]] = True
    return flat.view(shape).to(device)


def circular_shift(mask: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """``mask`` flattened (row-major), rolled by ``stride`` positions, reshaped.

    Preserves the number of ones; the paper's ``CircularShift``.
    """
    if mask.numel() == 0:
        return mask.clone()
    return torch.roll(mask.reshape(-1), shifts=int(stride) % mask.numel()).view(mask.shape)


def mask_at_epoch(mask0: torch.Tensor, epoch: int, stride: int = 1) -> torch.Tensor:
    """``S_{l,e}``: ``S_{l,0}`` shifted ``epoch`` times (one roll, not ``epoch``)."""
    return circular_shift(mask0, int(epoch) * int(stride))


def shift_stride(schedule: SelectionSchedule, numel: int, density: float) -> int:
    """Per-epoch stride for a tensor of ``numel`` entries under ``schedule``."""
    if schedule.shift == "kept":
        return kept_count(numel, density)
    return int(schedule.shift)


def initial_masks(
    model: nn.Module,
    schedule: SelectionSchedule,
    *,
    seed: int,
    device: str | torch.device = "cpu",
) -> dict[str, torch.Tensor]:
    """``S_{l,0}`` for every trainable parameter whose density is below 1.

    Parameters at density 1 are absent: they are updated everywhere and need
    no mask (this keeps the dense path exactly the naive algorithm). Each
    tensor's mask depends only on (``seed``, its name, shape, density).
    """
    seed = _parse_seed(seed)
    params = dict(_trainable(model))
    masks = {}
    for name, d in schedule.resolve(model).items():
        if d < 1.0:
            masks[name] = selection_mask(
                params[name].shape, d, seed=derive_seed(seed, "mask", name), device=device
            )
    return masks


# ---- labels ----------------------------------------------------------------------
def flip_labels(y: torch.Tensor, num_classes: int, *, seed: int) -> torch.Tensor:
    """A uniformly random *wrong* label for every sample (never the true one).

    ``(y + r) mod C`` with ``r`` uniform in ``{1, ..., C-1}``: uniform over the
    ``C - 1`` wrong classes. Drawn on CPU from ``seed``; returned on ``y``'s device.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise InvalidArgumentError(f"num_classes: expected an integer >= 2, got {num_classes!r}")
    y_cpu = y.detach().to("cpu", torch.int64)
    if y_cpu.numel() and (int(y_cpu.min()) < 0 or int(y_cpu.max()) >= num_classes):
        raise InvalidArgumentError(
            f"labels must lie in [0, {num_classes}); got min {int(y_cpu.min())}, max {int(y_cpu.max())}"
        )
    gen = torch.Generator(device="cpu").manual_seed(_parse_seed(seed))
    offset = torch.randint(1, num_classes, y_cpu.shape, generator=gen)
    return ((y_cpu + offset) % num_classes).to(y.device)


# ---- the two algorithms ----------------------------------------------------------
def _check_forget_set(x: torch.Tensor, y: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise InvalidArgumentError(f"expected tensors x, y; got {type(x).__name__}, {type(y).__name__}")
    if y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise InvalidArgumentError(
            f"expected x of shape (N, ...) and y of shape (N,); got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if y.shape[0] == 0:
        raise InvalidArgumentError("the forget set is empty: nothing to unlearn")


def _partial_steps(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    ascend: bool,
    epochs: int,
    lr: float,
    schedule: SelectionSchedule,
    seed: int,
    batch_size: int | None,
    device: str | torch.device,
) -> nn.Module:
    """Shared loop of Algorithms 2 and 3 on a copy of ``model``."""
    epochs = _parse_nonneg_int(epochs, "epochs")
    lr = _parse_lr(lr)
    seed = _parse_seed(seed)
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise InvalidArgumentError(f"batch_size: expected a positive integer or None, got {batch_size!r}")
    if not isinstance(schedule, SelectionSchedule):
        raise InvalidArgumentError(f"schedule: expected a SelectionSchedule, got {type(schedule).__name__}")

    was_training = model.training
    new = copy.deepcopy(model).to(device)
    new.eval()  # see module docstring: BN statistics must not see the forget set
    params = _trainable(new)
    if not params:  # nothing trainable: nothing to unlearn with
        new.train(was_training)
        return new
    masks0 = initial_masks(new, schedule, seed=seed, device=device)
    strides = {
        name: shift_stride(schedule, m.numel(), schedule.density(name)) for name, m in masks0.items()
    }
    n = y.shape[0]
    step = n if batch_size is None else batch_size  # None: full-batch gradient descent
    for e in range(epochs):
        # S_{l,e} for this epoch: S_{l,0} rolled e times (Algorithms 2/3, line "CircularShift").
        masks = {name: mask_at_epoch(m0, e, strides[name]) for name, m0 in masks0.items()}
        for start in range(0, n, step):
            xb = x[start : start + step].to(device)
            yb = y[start : start + step].to(device, torch.int64)
            loss = F.cross_entropy(new(xb), yb)
            grads = torch.autograd.grad(loss, [p for _, p in params], allow_unused=True)
            with torch.no_grad():
                for (name, p), g in zip(params, grads):
                    if g is None:  # parameter not on the path to this loss
                        continue
                    mask = masks.get(name)
                    if mask is None:
                        # Dense tensor: exactly the naive update, no mask arithmetic.
                        if ascend:
                            p.add_(lr * g)
                        else:
                            p.sub_(lr * g)
                    else:
                        stepped = p + lr * g if ascend else p - lr * g
                        # where(), not p -= lr * (g * mask): entries outside S stay
                        # bit-identical (no -0.0 + 0.0, no inf * 0 = nan).
                        p.copy_(torch.where(mask, stepped, p))
    new.train(was_training)
    return new


def label_flip_unlearn(
    model: nn.Module,
    x_forget: torch.Tensor,
    y_forget: torch.Tensor,
    *,
    num_classes: int,
    epochs: int,
    lr: float,
    schedule: SelectionSchedule,
    seed: int = 0,
    batch_size: int | None = None,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Algorithm 2: layer-wise partial updates induced label-flipping unlearning.

    Every forget sample gets a random wrong label (once, before the first
    epoch), then ``epochs`` epochs of plain gradient descent on the
    cross-entropy of the relabelled forget set, each tensor masked by its
    selection matrix: ``w <- w - lr * (S_{l,e} ⊙ ∇L)``.

    Parameters
    ----------
    model : nn.Module
        The trained model; not modified.
    x_forget, y_forget : torch.Tensor
        The forget set D_t (inputs, true labels), on any device.
    num_classes : int
        Number of classes (>= 2) to draw wrong labels from.
    epochs : int
        Unlearning epochs E (0 returns an unchanged copy).
    lr : float
        Learning rate α'.
    schedule : SelectionSchedule
        Densities; :meth:`SelectionSchedule.dense` gives the naive algorithm,
        :meth:`SelectionSchedule.for_label_flip` the paper's recommended shape.
    seed : int
        Seeds the wrong labels -- ``flip_labels(y_forget, num_classes,
        seed=derive_seed(seed, "labels"))`` -- and the initial selection
        masks -- ``initial_masks(model, schedule, seed=seed)``.
    batch_size : int or None
        None: one full-batch step per epoch (the paper's batch gradient
        descent). Otherwise mini-batches in the given order, all of an epoch
        under that epoch's mask.
    device : str or torch.device
        Where the copy lives and computes.

    Returns
    -------
    nn.Module
        A new model on ``device``, in the train/eval mode ``model`` had.
    """
    _check_forget_set(x_forget, y_forget)
    y_wrong = flip_labels(y_forget, num_classes, seed=derive_seed(_parse_seed(seed), "labels"))
    return _partial_steps(
        model, x_forget, y_wrong, ascend=False, epochs=epochs, lr=lr, schedule=schedule,
        seed=seed, batch_size=batch_size, device=device,
    )


def gradient_ascent_unlearn(
    model: nn.Module,
    x_forget: torch.Tensor,
    y_forget: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    schedule: SelectionSchedule,
    seed: int = 0,
    batch_size: int | None = None,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Algorithm 3: layer-wise partial updates induced optimization-based unlearning.

    ``epochs`` epochs of gradient *ascent* on the cross-entropy of the forget
    set with its true labels, each tensor masked by its selection matrix:
    ``w <- w + lr * (S_{l,e} ⊙ ∇L)``. Parameters as in
    :func:`label_flip_unlearn` (no ``num_classes``);
    :meth:`SelectionSchedule.for_gradient_ascent` is the paper's recommended
    shape. The loss is unbounded above: few epochs and a small ``lr``.
    """
    _check_forget_set(x_forget, y_forget)
    return _partial_steps(
        model, x_forget, y_forget, ascend=True, epochs=epochs, lr=lr, schedule=schedule,
        seed=seed, batch_size=batch_size, device=device,
    )


def naive_label_flip_unlearn(model: nn.Module, x_forget, y_forget, **kwargs) -> nn.Module:
    """Naive label flipping (Graves et al. 2020): Algorithm 2 with every density 1."""
    return label_flip_unlearn(model, x_forget, y_forget, schedule=SelectionSchedule.dense(), **kwargs)


def naive_gradient_ascent_unlearn(model: nn.Module, x_forget, y_forget, **kwargs) -> nn.Module:
    """Naive gradient ascent (Warnecke et al. 2021): Algorithm 3 with every density 1."""
    return gradient_ascent_unlearn(model, x_forget, y_forget, schedule=SelectionSchedule.dense(), **kwargs)
