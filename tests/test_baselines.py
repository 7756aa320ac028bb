"""Table 1 baselines: retraining, SISA, FMUL (UNSIR) on scikit-learn digits."""

from __future__ import annotations

import pytest
import torch

from deltastore.errors import InvalidArgumentError
from unlearning.baselines import SISAEnsemble, fmul_unlearn, retrain
from unlearning.data import load_digits_split
from unlearning.models import build_model
from unlearning.training import predict, train

FORGET = 3


@pytest.fixture(scope="module")
def data():
    return load_digits_split(seed=0)


@pytest.fixture(scope="module")
def trained(data):
    model = build_model("mlp", in_shape=data.in_shape, num_classes=data.num_classes, seed=0)
    train(model, data, epochs=5, batch_size=32, lr=1e-3, seed=0)
    return model


def _accuracies(pred, data):
    target = data.y_test == FORGET
    forget_acc = float((pred[target] == FORGET).float().mean())
    retain_acc = float((pred[~target] == data.y_test[~target]).float().mean())
    return forget_acc, retain_acc


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- retraining ----------------------------------------------------------------------
def test_retrain_without_class_3_never_predicts_it_and_is_deterministic(data):
    forget = data.positions_of_class(FORGET)
    kwargs = dict(model_name="mlp", epochs=3, batch_size=32, lr=1e-3, seed=0)
    model = retrain(data, forget, **kwargs)
    forget_acc, retain_acc = _accuracies(predict(model, data.x_test).argmax(1), data)
    assert forget_acc < 0.1 and retain_acc > 0.85
    assert _same_weights(model.state_dict(), retrain(data, forget, **kwargs).state_dict())


def test_retrain_rejects_bad_positions(data):
    n = data.y_train.numel()
    for bad in ([n], [-1], [0.5]):
        with pytest.raises(InvalidArgumentError):
            retrain(data, bad, model_name="mlp", epochs=1, batch_size=32)


# ---- SISA ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sisa(data):
    # the paper's Table 1 setting: 8 shards of 4 slices
    return SISAEnsemble().train(data, shards=8, slices=4, model_name="mlp", epochs=8, batch_size=32, seed=0)


def test_sisa_shards_and_slices_partition_the_train_set(sisa, data):
    n = data.y_train.numel()
    shards = [sisa.shard_positions(s) for s in range(sisa.num_shards)]
    assert sisa.num_shards == 8
    everything = torch.cat(shards)
    assert torch.equal(everything.sort().values, torch.arange(n))  # disjoint and complete
    for s, shard in enumerate(shards):
        slices = sisa.slice_positions(s)
        assert len(slices) == 4 and min(sl.numel() for sl in slices) > 0
        assert torch.equal(torch.cat(slices).sort().values, shard)
    sizes = [len(sh) for sh in shards]
    assert max(sizes) - min(sizes) <= 1
    # one checkpoint per slice per shard, each one full model
    model_bytes = sum(t.numel() * t.element_size() for t in sisa.shard_models[0].state_dict().values())
    assert sisa.storage_bytes() == 8 * 4 * model_bytes


def test_sisa_aggregate_accuracy_is_reasonable(sisa, data):
    scores = sisa.predict(data.x_test)
    assert scores.shape == (len(data.y_test), data.num_classes)
    # softmax of the scores is the mean of the shard probabilities
    probs = torch.stack([torch.softmax(predict(m, data.x_test), 1) for m in sisa.shard_models]).mean(0)
    assert torch.allclose(torch.softmax(scores, 1), probs, atol=1e-5)
    acc = float((scores.argmax(1) == data.y_test).float().mean())
    assert acc > 0.8


def test_sisa_unlearn_retrains_only_the_affected_shard(data):
    ens = SISAEnsemble().train(data, shards=4, slices=3, model_name="mlp", epochs=3, batch_size=32, seed=1)
    twin = SISAEnsemble().train(data, shards=4, slices=3, model_name="mlp", epochs=3, batch_size=32, seed=1)
    target_shard, target_slice = 2, 1
    forget = ens.slice_positions(target_shard)[target_slice][:5]
    before = [m.state_dict() for m in ens.shard_models]
    before = [{k: v.clone() for k, v in sd.items()} for sd in before]
    ckpts = [[ens.checkpoint(s, r) for r in range(3)] for s in range(4)]

    info = ens.unlearn(forget)

    assert info.shards == (target_shard,)
    assert info.first_slices == {target_shard: target_slice}
    assert info.slice_trainings == 2 and info.samples_removed == 5 and info.seconds >= 0
    after = [m.state_dict() for m in ens.shard_models]
    for s in range(4):
        if s == target_shard:
            assert not _same_weights(before[s], after[s])
        else:
            assert _same_weights(before[s], after[s])
            assert all(_same_weights(ckpts[s][r], ens.checkpoint(s, r)) for r in range(3))
    # slices before the affected one keep their checkpoint; the forgotten samples are gone
    assert _same_weights(ckpts[target_shard][0], ens.checkpoint(target_shard, 0))
    remaining = torch.cat([ens.shard_positions(s) for s in range(4)])
    assert not bool(torch.isin(forget, remaining).any())
    assert remaining.numel() == data.y_train.numel() - 5

    # deterministic: the twin ends in the same state; forgetting again does nothing
    twin.unlearn(forget)
    for a, b in zip(ens.shard_models, twin.shard_models):
        assert _same_weights(a.state_dict(), b.state_dict())
    again = ens.unlearn(forget)
    assert again.shards == () and again.samples_removed == 0


def test_sisa_unlearn_from_first_slice_restarts_from_initial_weights(data):
    ens = SISAEnsemble().train(data, shards=2, slices=2, model_name="mlp", epochs=2, batch_size=64, seed=3)
    forget = torch.cat([ens.slice_positions(0)[0][:3], ens.slice_positions(1)[1][:2]])
    info = ens.unlearn(forget)
    assert info.shards == (0, 1) and info.first_slices == {0: 0, 1: 1}
    assert info.slice_trainings == 3


def test_sisa_rejects_bad_use(data):
    with pytest.raises(InvalidArgumentError):
        SISAEnsemble().predict(data.x_test)
    with pytest.raises(InvalidArgumentError):
        SISAEnsemble().train(data, shards=0, model_name="mlp", epochs=1, batch_size=32)


# ---- FMUL / UNSIR --------------------------------------------------------------------------
def test_fmul_lowers_forget_class_accuracy(trained, data):
    forget_before, retain_before = _accuracies(predict(trained, data.x_test).argmax(1), data)
    assert forget_before > 0.9
    state = {k: v.clone() for k, v in trained.state_dict().items()}
    out = fmul_unlearn(trained, data, FORGET, seed=0)
    forget_after, retain_after = _accuracies(predict(out, data.x_test).argmax(1), data)
    assert forget_after < 0.3
    assert retain_after > 0.7
    assert _same_weights(state, trained.state_dict())  # the input model is not modified
    assert _same_weights(out.state_dict(), fmul_unlearn(trained, data, FORGET, seed=0).state_dict())


def test_fmul_with_repair_and_on_batchnorm_model(data):
    model = build_model("lenet", in_shape=data.in_shape, num_classes=data.num_classes, seed=0)
    train(model, data, epochs=3, batch_size=32, lr=1e-3, seed=0)
    model.eval()
    out = fmul_unlearn(model, data, FORGET, noise_steps=5, repair=True, seed=1, retain_per_class=20)
    assert not out.training  # the input's mode is kept
    assert not _same_weights(out.state_dict(), model.state_dict())
    with pytest.raises(InvalidArgumentError):
        fmul_unlearn(model, data, data.num_classes, seed=0)
