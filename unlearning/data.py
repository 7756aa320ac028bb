"""Small, offline data sets for the unlearning experiments.

Two sources, both returned as a :class:`Dataset` of CPU tensors:

* :func:`load_digits_split` -- scikit-learn's 8x8 handwritten digits (1797
  images, 10 classes), shipped with scikit-learn so no download is needed.
  It stands in for the paper's MNIST.
* :func:`synthetic_images` -- learnable synthetic images (a fixed pattern per
  class plus noise) of any shape, for storage and speed benchmarks where the
  numbers, not the pictures, matter.

``ids_train`` are the stable sample ids ``0..N-1`` that the recorder indexes:
position ``i`` of the train set is sample id ``ids_train[i]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from deltastore.errors import InvalidArgumentError

__all__ = ["Dataset", "load_digits_split", "synthetic_images"]


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test split held as CPU tensors.

    Attributes
    ----------
    x_train, x_test : torch.Tensor
        float32 images, shape ``(N, C, H, W)``.
    y_train, y_test : torch.Tensor
        int64 labels in ``[0, num_classes)``, shape ``(N,)``.
    ids_train : torch.Tensor
        int64 sample ids of the train rows (``0..N-1``); the ids a recorder
        stores and a forget request names.
    num_classes : int
        Number of classes.

    Compared by identity (``eq=False``): tensors have no single truth value.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    ids_train: torch.Tensor
    num_classes: int

    def __repr__(self) -> str:  # the default would print every tensor
        return (
            f"Dataset(train={tuple(self.x_train.shape)}, test={tuple(self.x_test.shape)}, "
            f"num_classes={self.num_classes})"
        )

    @property
    def in_shape(self) -> tuple[int, ...]:
        """Shape of one input, e.g. ``(1, 8, 8)``."""
        return tuple(self.x_train.shape[1:])

    def positions_of_class(self, label: int) -> torch.Tensor:
        """Train-set positions whose label is ``label`` (int64, ascending)."""
        return torch.nonzero(self.y_train == int(label)).flatten()


def load_digits_split(seed: int = 0, test_size: float = 0.25) -> Dataset:
    """scikit-learn's digits, split stratified into train and test.

    Parameters
    ----------
    seed : int
        ``random_state`` of :func:`sklearn.model_selection.train_test_split`;
        the split is fixed for a given seed.
    test_size : float
        Fraction of the 1797 images held out, in ``(0, 1)``.

    Returns
    -------
    Dataset
        Images of shape ``(N, 1, 8, 8)``, float32 pixel values divided by 16
        (so in ``[0, 1]``); 10 classes; ``ids_train = arange(N)``.
    """
    if not 0.0 < float(test_size) < 1.0:
        raise InvalidArgumentError(f"test_size must lie in (0, 1); got {test_size!r}")
    # Imported here: scikit-learn is slow to import and only this loader needs it.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_size, random_state=int(seed), stratify=y
    )
    return Dataset(
        x_train=torch.from_numpy(np.ascontiguousarray(x_tr)),
        y_train=torch.from_numpy(np.ascontiguousarray(y_tr)),
        x_test=torch.from_numpy(np.ascontiguousarray(x_te)),
        y_test=torch.from_numpy(np.ascontiguousarray(y_te)),
        ids_train=torch.arange(len(y_tr), dtype=torch.int64),
        num_classes=10,
    )


def synthetic_images(
    n_train: int,
    n_test: int,
    *,
    shape: tuple[int, ...] = (3, 32, 32),
    num_classes: int = 10,
    seed: int = 0,
) -> Dataset:
    """Learnable synthetic images: one smooth pattern per class plus noise.

    Each class ``c`` gets a prototype: a coarse random grid (a quarter of the
    resolution) upsampled bilinearly, so neighbouring pixels are correlated
    like in natural images and convolutions have something to find. A sample
    of class ``c`` is ``a * prototype[c] + 0.5 * noise`` with a per-sample
    contrast ``a ~ U(0.5, 1.5)`` and standard normal noise, so classes
    overlap a little and a model has to learn rather than look up.

    Labels are balanced (``i % num_classes``, then shuffled). Everything is
    drawn from one ``torch.Generator`` seeded with ``seed``: the same
    arguments give the same tensors, and the global RNG is not touched.

    Parameters
    ----------
    n_train, n_test : int
        Number of train (>= 1) and test (>= 0) images.
    shape : tuple of int
        ``(C, H, W)`` of one image.
    num_classes : int
        Number of classes (>= 2).
    seed : int
        Seed of the generator.
    """
    if int(n_train) < 1 or int(n_test) < 0:
        raise InvalidArgumentError(
            f"expected n_train >= 1 and n_test >= 0; got n_train={n_train}, n_test={n_test}"
        )
    if int(num_classes) < 2:
        raise InvalidArgumentError(f"num_classes must be >= 2; got {num_classes}")
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise InvalidArgumentError(f"shape must be (C, H, W) of positive sizes; got {shape}")
    c, h, w = shape
    gen = torch.Generator().manual_seed(int(seed))
    coarse = torch.randn(num_classes, c, max(1, h // 4), max(1, w // 4), generator=gen)
    protos = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(n, dtype=torch.int64) % num_classes
        labels = labels[torch.randperm(n, generator=gen)]
        contrast = torch.rand(n, 1, 1, 1, generator=gen) + 0.5
        noise = torch.randn(n, c, h, w, generator=gen)
        return (contrast * protos[labels] + 0.5 * noise).float(), labels

    x_tr, y_tr = draw(int(n_train))
    x_te, y_te = draw(int(n_test))
    return Dataset(
        x_train=x_tr,
        y_train=y_tr,
        x_test=x_te,
        y_test=y_te,
        ids_train=torch.arange(int(n_train), dtype=torch.int64),
        num_classes=int(num_classes),
    )
