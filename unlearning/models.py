"""The networks of the experiments, built deterministically from a seed.

``build_model(name, in_shape=..., num_classes=..., seed=...)`` returns

* ``"mlp"``: the paper's 2-layer MLP -- Flatten, Linear(in, 500), ReLU,
  Linear(500, classes).
* ``"lenet"``: a LeNet-style CNN (three convolutions, two max-pools, two
  fully connected layers) with one BatchNorm2d, so that buffers
  (running mean/var, num_batches_tracked) are exercised. Works on any input
  of at least 4x4 (8x8 digits, 32x32 images).
* ``"resnet9"``: the DAWNBench-style ResNet-9 (prep conv, three stages, two
  residual blocks) with BatchNorm, at small widths 16-32-64-128 that suit
  8x8 digits; also works on 32x32.
* ``"resnet18"``: CIFAR-style ResNet-18 (3x3 stem, no stem pooling,
  BasicBlocks [2, 2, 2, 2], widths 64..512), about 11.2 M parameters.

Weights are initialised with PyTorch's default initialisers, drawn inside a
forked RNG seeded with ``seed``: the same seed gives the same weights and the
caller's global RNG state is left as it was.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from deltastore.errors import InvalidArgumentError

__all__ = ["MODEL_NAMES", "build_model", "count_parameters"]

MODEL_NAMES: tuple[str, ...] = ("mlp", "lenet", "resnet9", "resnet18")


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of scalar parameters (buffers excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def build_model(name: str, *, in_shape: tuple, num_classes: int, seed: int) -> nn.Module:
    """Build network ``name`` for inputs of ``in_shape`` = ``(C, H, W)``.

    Parameters
    ----------
    name : str
        One of :data:`MODEL_NAMES`.
    in_shape : tuple of int
        Shape of one input, without the batch dimension.
    num_classes : int
        Output size (logits).
    seed : int
        Seed of the weight initialisation (global RNG untouched).

    Returns
    -------
    torch.nn.Module
        On CPU, in training mode.
    """
    if name not in MODEL_NAMES:
        raise InvalidArgumentError(f"model name must be one of {MODEL_NAMES}; got {name!r}")
    in_shape = tuple(int(s) for s in in_shape)
    if int(num_classes) < 1:
        raise InvalidArgumentError(f"num_classes must be >= 1; got {num_classes}")
    if name != "mlp":
        if len(in_shape) != 3 or min(in_shape) < 1:
            raise InvalidArgumentError(f"{name} needs in_shape (C, H, W); got {in_shape}")
        if min(in_shape[1:]) < 4:
            raise InvalidArgumentError(f"{name} needs images of at least 4x4; got {in_shape}")
    # fork_rng(devices=[]) saves/restores only the CPU generator, which is the
    # one the default initialisers draw from when the model is built on CPU.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        if name == "mlp":
            return MLP(math.prod(in_shape), int(num_classes))
        if name == "lenet":
            return LeNet(in_shape[0], int(num_classes))
        if name == "resnet9":
            return ResNet9(in_shape[0], int(num_classes))
        return ResNet18(in_shape[0], int(num_classes))


class MLP(nn.Sequential):
    """Flatten, Linear(in, hidden), ReLU, Linear(hidden, classes)."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 500):
        super().__init__(
            nn.Flatten(),
            nn.Linear(in_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )


class LeNet(nn.Module):
    """LeNet-style CNN: conv-BN-pool, conv-pool, conv, two linear layers.

    Convolutions are 'same'-padded and the last feature map is pooled
    adaptively to 2x2, so one definition serves 8x8 and 32x32 inputs.
    """

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2),
            nn.BatchNorm2d(6),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 120, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(120 * 4, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _conv_bn(c_in: int, c_out: int, pool: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    ]
    if pool:
        # ceil_mode so that odd sizes (e.g. 5x5) never shrink to zero.
        layers.append(nn.MaxPool2d(2, ceil_mode=True))
    return nn.Sequential(*layers)


class _Residual(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(_conv_bn(channels, channels), _conv_bn(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResNet9(nn.Module):
    """ResNet-9 (Page's DAWNBench net): prep, [conv-pool, res], conv-pool, [conv-pool, res].

    Widths default to 16-32-64-128 (a quarter of the original 64..512),
    enough for 8x8 digits; the head is a global max-pool and one linear layer.
    """

    def __init__(self, in_channels: int, num_classes: int, widths: tuple = (16, 32, 64, 128)):
        super().__init__()
        w0, w1, w2, w3 = widths
        self.net = nn.Sequential(
            _conv_bn(in_channels, w0),
            _conv_bn(w0, w1, pool=True),
            _Residual(w1),
            _conv_bn(w1, w2, pool=True),
            _conv_bn(w2, w3, pool=True),
            _Residual(w3),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
            nn.Linear(w3, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR-style ResNet-18: 3x3 stem, BasicBlocks [2, 2, 2, 2], widths 64..512."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU()
        )
        stages = []
        c_in = 64
        for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages.append(nn.Sequential(_BasicBlock(c_in, c_out, stride), _BasicBlock(c_out, c_out, 1)))
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))
