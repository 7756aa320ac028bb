"""Pruning plans: which fraction of each tensor's update is kept, and how it is chosen.

A :class:`PruningPlan` is a *specification* (uniform rate, the paper's layer-wise
schedule, or rates by name pattern) plus a mode (``random``, ``magnitude``,
``global``). It is resolved against a model's tensors with :meth:`PruningPlan.rates`.
Biases and other 1-D tensors are not pruned by default (paper §5.4.3): they are
tiny, and pruning them hurt retained accuracy in the paper's experiments.
ρ = 0 everywhere is conventional (dense) amnesiac storage.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from .errors import InvalidArgumentError, InvalidPlanError

MODES = ("random", "magnitude", "global")

# The paper prunes ~90 % in the first layer and 40-50 % in the last (§5.4.3);
# 0.5 in the last layer is our reading of "50 % to 40 %".
PAPER_FIRST_RATE = 0.9
PAPER_LAST_RATE = 0.5


@dataclass(frozen=True)
class TensorSpec:
    """One recorded tensor: a trainable parameter or a floating-point buffer."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    kind: str = "parameter"  # or "buffer"

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= int(d)
        return n

    @property
    def prunable_by_default(self) -> bool:
        # Weights (matrices, conv kernels) only: biases, norms and buffers stay dense.
        return self.kind == "parameter" and len(self.shape) >= 2


def layerwise_rates(count: int, first: float, last: float) -> list[float]:
    """The layer-wise schedule: ``first`` for the first of ``count`` tensors, linearly to ``last``.

    Value ``i`` is ``first + (last - first) * (i / (count - 1))`` (``first`` alone when
    ``count == 1``, nothing when ``count == 0``), in that float64 order: pruning plans
    (rates) and unlearning's selection schedules (densities) use this one formula, so
    their figures do not drift apart. Range checks belong to the callers (a rate is in
    [0, 1), a density in (0, 1]); here only the kinds are checked.

    >>> layerwise_rates(3, 0.9, 0.5)
    [0.9, 0.7, 0.5]
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise InvalidArgumentError(f"count: expected a non-negative integer, got {count!r}")
    ends = []
    for what, value in (("first", first), ("last", last)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InvalidArgumentError(f"{what}: expected a finite number, got {value!r}")
        ends.append(float(value))
    first, last = ends
    return [first + (last - first) * (0.0 if count == 1 else i / (count - 1)) for i in range(count)]


def _parse_rate(rate: object, what: str) -> float:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)):
        raise InvalidPlanError(f"{what}: expected a number in [0, 1), got {rate!r}")
    rate = float(rate)
    if not 0.0 <= rate < 1.0:
        raise InvalidPlanError(f"{what}: expected a pruning rate in [0, 1), got {rate}")
    return rate


@dataclass(frozen=True)
class PruningPlan:
    """How much of each tensor's update to keep.

    Use the constructors: :meth:`dense`, :meth:`uniform`, :meth:`layerwise`
    (the paper's schedule), :meth:`by_pattern`.
    """

    kind: str  # "uniform" | "layerwise" | "pattern"
    mode: str = "random"
    rate: float = 0.0
    first: float = PAPER_FIRST_RATE
    last: float = PAPER_LAST_RATE
    patterns: tuple[tuple[str, float], ...] = ()
    default_rate: float = 0.0
    prune_1d: bool = False
    seed: int | None = None  # mask seed for random mode; None = the store's seed
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in ("uniform", "layerwise", "pattern"):
            raise InvalidPlanError(f"plan kind: expected uniform, layerwise or pattern, got {self.kind!r}")
        if self.mode not in MODES:
            raise InvalidPlanError(f"pruning mode: expected one of {MODES}, got {self.mode!r}")
        _parse_rate(self.rate, "uniform rate")
        _parse_rate(self.first, "first-layer rate")
        _parse_rate(self.last, "last-layer rate")
        _parse_rate(self.default_rate, "default rate")
        for pattern, rate in self.patterns:
            if not isinstance(pattern, str) or not pattern:
                raise InvalidPlanError(f"name pattern: expected a non-empty string, got {pattern!r}")
            _parse_rate(rate, f"rate for pattern {pattern!r}")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63
        ):
            raise InvalidPlanError(f"mask seed: expected an integer in [0, 2**63), got {self.seed!r}")

    # ---- constructors -------------------------------------------------
    @classmethod
    def dense(cls) -> "PruningPlan":
        """ρ = 0 everywhere: conventional amnesiac storage."""
        return cls(kind="uniform", rate=0.0)

    @classmethod
    def uniform(cls, rate: float, *, mode: str = "random", prune_1d: bool = False, seed: int | None = None) -> "PruningPlan":
        return cls(kind="uniform", rate=_parse_rate(rate, "uniform rate"), mode=mode, prune_1d=prune_1d, seed=seed)

    @classmethod
    def layerwise(
        cls,
        first: float = PAPER_FIRST_RATE,
        last: float = PAPER_LAST_RATE,
        *,
        mode: str = "random",
        prune_1d: bool = False,
        seed: int | None = None,
    ) -> "PruningPlan":
        """The paper's schedule: ``first`` in the first prunable tensor, linearly down to ``last``."""
        return cls(kind="layerwise", first=first, last=last, mode=mode, prune_1d=prune_1d, seed=seed)

    @classmethod
    def by_pattern(
        cls,
        mapping: Mapping[str, float],
        *,
        default: float = 0.0,
        mode: str = "random",
        prune_1d: bool = False,
        seed: int | None = None,
    ) -> "PruningPlan":
        """Rates by ``fnmatch`` name pattern; the first matching pattern wins."""
        if not isinstance(mapping, Mapping) or not mapping:
            raise InvalidPlanError(f"pattern plan: expected a non-empty mapping of pattern -> rate, got {mapping!r}")
        return cls(kind="pattern", patterns=tuple(mapping.items()), default_rate=default, mode=mode, prune_1d=prune_1d, seed=seed)

    # ---- resolution ---------------------------------------------------
    def is_dense(self) -> bool:
        return self.kind == "uniform" and self.rate == 0.0

    def _prunable(self, spec: TensorSpec) -> bool:
        if spec.kind != "parameter":
            return False
        return spec.prunable_by_default or (self.prune_1d and len(spec.shape) >= 1)

    def rates(self, specs: Sequence[TensorSpec]) -> dict[str, float]:
        """Rate ρ_l for every tensor (0 for tensors that are never pruned)."""
        prunable = [s for s in specs if self._prunable(s)]
        out = {s.name: 0.0 for s in specs}
        if self.kind == "uniform":
            for s in prunable:
                out[s.name] = self.rate
        elif self.kind == "layerwise":
            for s, rate in zip(prunable, layerwise_rates(len(prunable), self.first, self.last)):
                out[s.name] = rate
        else:
            for s in prunable:
                out[s.name] = self.default_rate
                for pattern, rate in self.patterns:
                    if fnmatch.fnmatchcase(s.name, pattern):
                        out[s.name] = float(rate)
                        break
        return out

    # ---- (de)serialisation for the manifest ---------------------------
    def to_json(self) -> dict:
        return {
            "kind": self.kind,
            "mode": self.mode,
            "rate": self.rate,
            "first": self.first,
            "last": self.last,
            "patterns": [[p, r] for p, r in self.patterns],
            "default_rate": self.default_rate,
            "prune_1d": self.prune_1d,
            "seed": self.seed,
        }

    @classmethod
    def from_json(cls, obj: Mapping) -> "PruningPlan":
        try:
            return cls(
                kind=obj["kind"],
                mode=obj["mode"],
                rate=obj["rate"],
                first=obj["first"],
                last=obj["last"],
                patterns=tuple((str(p), float(r)) for p, r in obj.get("patterns", [])),
                default_rate=obj.get("default_rate", 0.0),
                prune_1d=bool(obj.get("prune_1d", False)),
                seed=obj.get("seed"),
            )
        except InvalidPlanError:
            raise  # a field out of range: its own message says which
        except (KeyError, TypeError, ValueError) as exc:  # ValueError: a pattern that is not a [name, rate] pair
            raise InvalidPlanError(f"pruning plan JSON: expected the keys written by to_json(), got {obj!r}") from exc

    def describe(self) -> str:
        if self.is_dense():
            return "dense (rho=0)"
        if self.kind == "uniform":
            return f"uniform {self.rate:.0%} {self.mode}"
        if self.kind == "layerwise":
            return f"layer-wise {self.first:.0%}->{self.last:.0%} {self.mode}"
        return f"by pattern ({len(self.patterns)} patterns) {self.mode}"
