"""What the efficacy testbed runs: one frozen configuration, full or quick.

Choices are ours; each carries its reason. None was tuned toward a method's
result: the training settings were chosen (on seed 0, before any method ran)
so that the premise holds -- the trained model fits its wrong labels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ModelSetup:
    name: str
    batch_size: int
    epochs: int
    lr: float


@dataclass(frozen=True)
class EfficacyConfig:
    quick: bool
    models: tuple[ModelSetup, ...]
    seeds: tuple[int, ...]
    # 10 % wrong labels: ~135 of digits' 1347 training images; enough for a 3 % request
    # drawn from them with ~95 left untouched to measure collateral forgetting on.
    noise_fraction: float = 0.10
    # Requests (a) and (b): 3 % of the training set (~40 samples). (c): every sample whose
    # training label is this class.
    request_fraction: float = 0.03
    target_class: int = 3
    # Shadow models for the per-example attack, each trained on a random half of the
    # training set with the target's recipe (so each sample is OUT in about half of them).
    shadows: int = 4
    # Periodic full checkpoints (weights + Adam state) per run: what sample-precise
    # removal needs; their bytes are reported beside the stores'.
    checkpoints_per_run: int = 10
    # Repair lengths as fractions of the training steps (<= 1/10: the cost ceiling of the issue).
    repair_fractions: tuple[float, ...] = (0.02, 0.05, 0.10)
    # The paper's Algorithms 2-3 as baselines, with fixed, untuned settings (full-batch
    # gradient steps on the forget set, paper-recommended layer-wise densities).
    label_flip: tuple[float, int] = (0.03, 5)  # (lr, epochs)
    gradient_ascent: tuple[float, int] = (0.01, 5)
    data_seed: int = 0
    # Verdict thresholds: "indistinguishable" needs the KS p-value >= 0.05 on average and the
    # LiRA AUC within 0.05 of the retrained model's; "partly" = at least half of the way
    # from the trained to the retrained model on the LiRA AUC.
    ks_alpha: float = 0.05
    auc_tolerance: float = 0.05
    broken_drop: float = 0.10  # test accuracy this far below the retrained model's: "breaks the model"
    # Methods left out (quick: the slowest rows whose code paths other rows already run).
    skip_methods: tuple[str, ...] = ()
    threads: int = 1  # small models on 2 shared cores: one thread is fastest (paper config measured it)

    def to_json(self) -> dict:
        return asdict(self)


MLP = ModelSetup("mlp", batch_size=32, epochs=60, lr=3e-3)  # fits 97 % of wrong labels (seed 0 probe)
LENET = ModelSetup("lenet", batch_size=128, epochs=70, lr=3e-3)  # fits ~95 % (seed 0 probe)


def full() -> EfficacyConfig:
    return EfficacyConfig(quick=False, models=(MLP, LENET), seeds=(0, 1, 2))


def quick() -> EfficacyConfig:
    """Every code path once: the MLP, one seed, two shadows, one repair length."""
    return EfficacyConfig(quick=True, models=(MLP,), seeds=(0,), shadows=2, repair_fractions=(0.05,),
                          skip_methods=("amnesiac-partial", "precise[default]", "precise+repair0.05"))
