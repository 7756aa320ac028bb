"""What the paper reproduction runs: one frozen configuration, full or quick.

Every choice that is ours rather than the paper's carries a comment saying why.
Nothing here is tuned toward the paper's figures: the values were fixed before
the full run and are the same for every model, seed, batch size and regime.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from deltastore.plan import PruningPlan


@dataclass(frozen=True)
class PaperConfig:
    """Configuration of one reproduction run (see :func:`full` and :func:`quick`)."""

    quick: bool
    # (batch size, models trained at that batch size); resnet9 at batch 32
    # (344 steps/run) costs ~4x its batch-128 run on 2 shared cores, so the
    # smaller batch size is run for the two cheaper models only.
    plan_by_batch_size: tuple[tuple[int, tuple[str, ...]], ...]
    seeds: tuple[int, ...]
    regimes: tuple[str, ...] = ("shuffled", "class-sorted")
    epochs: int = 8  # paper §5.4.2
    lr: float = 1e-3  # paper §5.4.2, "shallow networks"; Adam (the paper names no optimizer)
    target_class: int = 3  # paper §5.4.1 (MNIST)
    focus_classes: tuple[int, ...] = (2, 7, 9)  # paper Table 2 (MNIST)
    data_seed: int = 0  # fixed stratified split of load_digits (75 / 25)
    # The paper's layer-wise schedule: 90 % pruned in the first weight tensor,
    # linearly down to 50 % in the last ("50 % to 40 %": we take 50 %).
    paper_first: float = 0.9
    paper_last: float = 0.5
    # "Zero" targeted accuracy: the paper reports exact zeros; with 46 test
    # images of class 3, one image is 2.2 %, so <= 1 % means none correct.
    zero_threshold: float = 0.01
    # "Comparable" retained accuracy: within 2 percentage points.
    comparable: float = 0.02
    # Figure 2: uniform random pruning rates of the weight updates (biases,
    # norms and buffers stay dense, paper §5.4.3). 0 = conventional amnesiac.
    sparsity_rates: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)
    # Figure 4: sizes of nested random-sample requests; each sample sits in one
    # batch per epoch, so n samples touch up to 8n steps.
    affected_sizes: tuple[int, ...] = (1, 2, 4, 8, 32)
    affected_modes: tuple[str, ...] = ("dense", "random", "magnitude", "global")
    affected_batch_sizes: tuple[int, ...] = (128,)
    # Sample-level requests (fractions of the training set, random samples),
    # each against a model retrained without them.
    sample_fractions: tuple[float, ...] = (0.01, 0.05, 0.10)
    # Retraining per request: for the two cheaper models only (resnet9 would
    # add ~18 retrainings of ~45 s each on this machine).
    sample_models: tuple[str, ...] = ("mlp", "lenet")
    sample_batch_sizes: tuple[int, ...] = (128,)
    sisa_shards: int = 8  # paper §5.4.1
    sisa_slices: int = 4  # paper §5.4.1
    sisa_batch_sizes: tuple[int, ...] = (128,)
    # Tables 3/4: lr and epochs are chosen ONCE per model and algorithm on a
    # pilot seed that is not reported (see updates.calibrate), for the naive
    # method, as the paper did ("tuned the naive ... to achieve zero").
    calibration_seed: int = 99
    label_flip_lrs: tuple[float, ...] = (0.003, 0.01, 0.03, 0.1)
    gradient_ascent_lrs: tuple[float, ...] = (0.001, 0.003, 0.01, 0.03)
    calibration_epochs: tuple[int, ...] = (1, 2, 4, 8, 16)
    # Matched forgetting: partial updates rerun with E times these factors
    # until the targeted accuracy is "zero" too.
    matched_factors: tuple[int, ...] = (1, 2, 4, 8)
    # Also record stores with the paper's plan (float32 and the default int8)
    # and a dense int8 store for these seeds: storage sizes and invariant 5.
    extra_store_seeds: tuple[int, ...] = (0,)
    # One torch thread: on this shared 2-core machine two threads ran these small
    # models 5-20x slower (measured: resnet9, 2 epochs, 1.5-2 s vs 6-43 s).
    threads: int = 1
    notes: tuple[str, ...] = field(default_factory=tuple)

    # ---- derived ----------------------------------------------------------
    @property
    def batch_sizes(self) -> tuple[int, ...]:
        return tuple(bs for bs, _ in self.plan_by_batch_size)

    @property
    def models(self) -> tuple[str, ...]:
        out: list[str] = []
        for _, models in self.plan_by_batch_size:
            out += [m for m in models if m not in out]
        return tuple(out)

    def models_at(self, batch_size: int) -> tuple[str, ...]:
        return dict(self.plan_by_batch_size)[batch_size]

    def paper_plan(self, mode: str = "random") -> PruningPlan:
        return PruningPlan.layerwise(self.paper_first, self.paper_last, mode=mode)

    def to_json(self) -> dict:
        out = asdict(self)
        out["plan_by_batch_size"] = {str(bs): list(m) for bs, m in self.plan_by_batch_size}
        return out

    @classmethod
    def from_json(cls, obj: dict) -> "PaperConfig":
        """Inverse of :meth:`to_json` (lists back to tuples)."""
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in obj.items() if k in cls.__dataclass_fields__}
        kw["plan_by_batch_size"] = tuple((int(bs), tuple(m)) for bs, m in obj["plan_by_batch_size"].items())
        return cls(**kw)


def full() -> PaperConfig:
    """The reproduction that the committed REPORT.md comes from."""
    return PaperConfig(
        quick=False,
        plan_by_batch_size=((128, ("mlp", "lenet", "resnet9")), (32, ("mlp", "lenet"))),
        seeds=(0, 1, 2),
    )


def quick() -> PaperConfig:
    """Every code path, smallest sizes: the MLP, two seeds, few sweep points (CI smoke test)."""
    return PaperConfig(
        quick=True,
        plan_by_batch_size=((128, ("mlp",)),),
        seeds=(0, 1),
        sparsity_rates=(0.0, 0.5, 0.9),
        affected_sizes=(1, 8),
        sample_fractions=(0.05,),
        label_flip_lrs=(0.01, 0.1),
        gradient_ascent_lrs=(0.003, 0.03),
        calibration_epochs=(1, 4),
        matched_factors=(1, 4),
    )
