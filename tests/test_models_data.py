"""unlearning.data, unlearning.models, unlearning.training."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from deltastore.errors import DeviceError, InvalidArgumentError
from unlearning.data import Dataset, load_digits_split, synthetic_images
from unlearning.models import MODEL_NAMES, build_model, count_parameters
from unlearning.training import REGIMES, make_batches, predict, train


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_digits_split()


# --- data ---------------------------------------------------------------------------


def test_digits_shapes_and_values(digits):
    assert digits.x_train.shape == (1347, 1, 8, 8)
    assert digits.x_test.shape == (450, 1, 8, 8)
    assert digits.x_train.dtype == torch.float32 and digits.y_train.dtype == torch.int64
    assert float(digits.x_train.min()) >= 0.0 and float(digits.x_train.max()) <= 1.0
    assert float(digits.x_train.max()) == 1.0  # 16 / 16: the scale is pixel / 16
    assert torch.equal(digits.ids_train, torch.arange(1347))
    assert digits.num_classes == 10
    assert digits.in_shape == (1, 8, 8)


def test_digits_split_is_stratified(digits):
    tr = torch.bincount(digits.y_train, minlength=10).double()
    te = torch.bincount(digits.y_test, minlength=10).double()
    # Each class keeps (within one sample) its share of the whole in both parts.
    share = (tr + te) / (tr + te).sum()
    assert torch.all((tr - share * tr.sum()).abs() <= 1.0)
    assert torch.all((te - share * te.sum()).abs() <= 1.0)


def test_digits_split_deterministic_per_seed(digits):
    again = load_digits_split(seed=0)
    assert torch.equal(again.x_train, digits.x_train) and torch.equal(again.y_test, digits.y_test)
    other = load_digits_split(seed=1)
    assert not torch.equal(other.y_train, digits.y_train)
    # Same multiset of images overall, only the split moves.
    assert torch.isclose(
        other.x_train.sum() + other.x_test.sum(), digits.x_train.sum() + digits.x_test.sum()
    )


def test_digits_bad_test_size():
    with pytest.raises(InvalidArgumentError, match="test_size"):
        load_digits_split(test_size=1.5)


def test_synthetic_shapes_determinism_balance():
    a = synthetic_images(200, 50, shape=(3, 16, 16), num_classes=10, seed=3)
    b = synthetic_images(200, 50, shape=(3, 16, 16), num_classes=10, seed=3)
    c = synthetic_images(200, 50, shape=(3, 16, 16), num_classes=10, seed=4)
    assert a.x_train.shape == (200, 3, 16, 16) and a.x_test.shape == (50, 3, 16, 16)
    assert a.x_train.dtype == torch.float32 and a.y_train.dtype == torch.int64
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, c.x_train)
    assert torch.equal(torch.bincount(a.y_train, minlength=10), torch.full((10,), 20))
    assert torch.equal(a.ids_train, torch.arange(200))


def test_synthetic_is_learnable():
    data = synthetic_images(600, 300, shape=(3, 8, 8), num_classes=10, seed=0)
    model = build_model("mlp", in_shape=data.in_shape, num_classes=10, seed=0)
    train(model, data, epochs=3, batch_size=32, seed=0)
    acc = float((predict(model, data.x_test).argmax(1) == data.y_test).float().mean())
    assert acc > 0.6  # chance is 0.1


def test_synthetic_rejects_bad_arguments():
    with pytest.raises(InvalidArgumentError):
        synthetic_images(0, 10)
    with pytest.raises(InvalidArgumentError):
        synthetic_images(10, 10, num_classes=1)
    with pytest.raises(InvalidArgumentError):
        synthetic_images(10, 10, shape=(8, 8))


# --- models -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mlp", "lenet", "resnet9"])
@pytest.mark.parametrize("in_shape", [(1, 8, 8), (3, 32, 32)])
def test_small_models_forward(name, in_shape):
    model = build_model(name, in_shape=in_shape, num_classes=7, seed=0)
    out = model(torch.randn(3, *in_shape))
    assert out.shape == (3, 7)
    assert count_parameters(model) > 0


def test_mlp_is_the_papers():
    model = build_model("mlp", in_shape=(1, 8, 8), num_classes=10, seed=0)
    assert count_parameters(model) == 64 * 500 + 500 + 500 * 10 + 10


def test_lenet_and_resnet9_have_batchnorm_buffers():
    for name in ("lenet", "resnet9"):
        model = build_model(name, in_shape=(1, 8, 8), num_classes=10, seed=0)
        assert any(n.endswith("running_mean") for n, _ in model.named_buffers())


def test_resnet18_size_and_forward():
    model = build_model("resnet18", in_shape=(3, 32, 32), num_classes=10, seed=0)
    assert 10_500_000 <= count_parameters(model) <= 11_500_000
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_init_deterministic_and_global_rng_untouched(name):
    in_shape = (3, 32, 32) if name == "resnet18" else (1, 8, 8)
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    a = build_model(name, in_shape=in_shape, num_classes=10, seed=5)
    assert torch.equal(torch.get_rng_state(), before)
    b = build_model(name, in_shape=in_shape, num_classes=10, seed=5)
    c = build_model(name, in_shape=in_shape, num_classes=10, seed=6)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point())


def test_build_model_rejects_unknown_and_tiny():
    with pytest.raises(InvalidArgumentError, match="resnet18"):
        build_model("vgg", in_shape=(1, 8, 8), num_classes=10, seed=0)
    with pytest.raises(InvalidArgumentError):
        build_model("lenet", in_shape=(1, 2, 2), num_classes=10, seed=0)


# --- batches ------------------------------------------------------------------------


@given(
    labels=st.lists(st.integers(0, 9), min_size=1, max_size=300),
    batch_size=st.integers(1, 64),
    epochs=st.integers(1, 3),
    seed=st.integers(0, 2**31),
    regime=st.sampled_from(REGIMES),
)
def test_make_batches_partitions_each_epoch(labels, batch_size, epochs, seed, regime):
    y = torch.tensor(labels, dtype=torch.int64)
    out = make_batches(y, batch_size=batch_size, epochs=epochs, seed=seed, regime=regime)
    assert len(out) == epochs
    for ep in out:
        assert all(0 < b.numel() <= batch_size and b.dtype == torch.int64 for b in ep)
        assert torch.equal(torch.sort(torch.cat(ep)).values, torch.arange(len(labels)))
        if regime == "class-sorted":
            # single-class batches, and no more of them than the classes need
            assert all(torch.unique(y[b]).numel() == 1 for b in ep)
            counts = torch.bincount(y)
            assert len(ep) == int(((counts + batch_size - 1) // batch_size).sum())
    again = make_batches(y, batch_size=batch_size, epochs=epochs, seed=seed, regime=regime)
    assert all(torch.equal(a, b) for ea, eb in zip(out, again) for a, b in zip(ea, eb))


def test_make_batches_epochs_differ_and_class_sorted_on_digits(digits):
    shuffled = make_batches(digits.y_train, batch_size=32, epochs=2, seed=0)
    assert not torch.equal(shuffled[0][0], shuffled[1][0])
    # Shuffled batches mix classes; class-sorted ones never do.
    assert sum(torch.unique(digits.y_train[b]).numel() > 1 for b in shuffled[0]) > 30
    sorted_ = make_batches(digits.y_train, batch_size=32, epochs=1, seed=0, regime="class-sorted")
    assert all(torch.unique(digits.y_train[b]).numel() == 1 for b in sorted_[0])
    # A class request touches ceil(n_c / 32) batches instead of nearly all.
    touched = sum(bool((digits.y_train[b] == 3).any()) for b in sorted_[0])
    assert touched == -(-int((digits.y_train == 3).sum()) // 32)


def test_make_batches_rejects_bad_arguments(digits):
    with pytest.raises(InvalidArgumentError, match="regime"):
        make_batches(digits.y_train, batch_size=8, epochs=1, seed=0, regime="sorted")
    with pytest.raises(InvalidArgumentError):
        make_batches(digits.y_train, batch_size=0, epochs=1, seed=0)


# --- training -----------------------------------------------------------------------


class FakeRecorder:
    """Stands in for deltastore's recorder: logs ids and checks call order."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.calls: list[tuple[torch.Tensor, int, int]] = []
        self.steps = 0
        optimizer.register_step_pre_hook(self._pre_step)

    def samples(self, ids, *, epoch):
        self.calls.append((ids.clone(), epoch, self.steps))

    def _pre_step(self, optimizer, args, kwargs):
        # samples() must have been called for this step, and only once.
        assert len(self.calls) == self.steps + 1
        self.steps += 1


def test_train_mlp_on_digits_records_every_step(digits):
    model = build_model("mlp", in_shape=digits.in_shape, num_classes=10, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rec = FakeRecorder(opt)
    batches = make_batches(digits.y_train, batch_size=32, epochs=2, seed=0)
    seen_epochs = []
    result = train(
        model, digits, epochs=2, batch_size=32, optimizer=opt, recorder=rec, batches=batches,
        on_epoch_end=lambda e, m: seen_epochs.append(e),
    )
    flat = [(b, e) for e, ep in enumerate(batches) for b in ep]
    assert result["steps"] == rec.steps == len(rec.calls) == len(flat)
    for (ids, epoch, steps_before), (b, e) in zip(rec.calls, flat):
        assert torch.equal(ids, digits.ids_train[b]) and epoch == e
    assert [c[2] for c in rec.calls] == list(range(len(flat)))
    assert seen_epochs == [0, 1] and len(result["losses"]) == 2
    assert result["losses"][1] < result["losses"][0] and result["seconds"] > 0
    acc = float((predict(model, digits.x_test).argmax(1) == digits.y_test).float().mean())
    assert acc > 0.8


def test_train_is_deterministic_and_default_optimizer(digits):
    states = []
    for _ in range(2):
        model = build_model("lenet", in_shape=digits.in_shape, num_classes=10, seed=1)
        train(model, digits, epochs=1, batch_size=64, seed=3, regime="class-sorted")
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_train_indices_with_and_without_batches(digits):
    keep = torch.nonzero(digits.y_train != 3).flatten()
    rec_ids = []

    class Rec:
        def samples(self, ids, *, epoch):
            rec_ids.append((epoch, ids))

    model = build_model("mlp", in_shape=digits.in_shape, num_classes=10, seed=0)
    out = train(model, digits, epochs=1, batch_size=50, train_indices=keep, recorder=Rec())
    assert torch.equal(torch.sort(torch.cat([i for _, i in rec_ids])).values, digits.ids_train[keep])
    assert out["steps"] == -(-keep.numel() // 50)

    # Precomputed full-set batches + train_indices: same order minus removed samples.
    rec_ids.clear()
    full = make_batches(digits.y_train, batch_size=50, epochs=1, seed=0, regime="class-sorted")
    train(model, digits, epochs=1, batch_size=50, train_indices=keep, batches=full, recorder=Rec())
    expected = [b for b in full[0] if not bool((digits.y_train[b] == 3).all())]
    assert len(rec_ids) == len(expected)
    assert all(torch.equal(ids, digits.ids_train[b]) for (_, ids), b in zip(rec_ids, expected))

    with pytest.raises(InvalidArgumentError, match="epochs"):
        train(model, digits, epochs=2, batch_size=50, batches=full)
    with pytest.raises(InvalidArgumentError):
        train(model, digits, epochs=1, batch_size=50, train_indices=torch.tensor([5000]))


def test_predict_restores_mode_and_batches(digits):
    model = build_model("lenet", in_shape=digits.in_shape, num_classes=10, seed=0)
    model.train()
    a = predict(model, digits.x_test, batch_size=7)
    assert model.training
    model.eval()
    b = predict(model, digits.x_test)
    assert not model.training
    assert a.shape == (450, 10) and torch.allclose(a, b, atol=1e-5)
    assert predict(model, digits.x_test[:0]).shape == (0, 10)


def test_bad_device_is_refused(digits):
    model = build_model("mlp", in_shape=digits.in_shape, num_classes=10, seed=0)
    with pytest.raises(DeviceError):
        predict(model, digits.x_test, device="nonsense")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA"):
            train(model, digits, epochs=1, batch_size=32, device="cuda")
