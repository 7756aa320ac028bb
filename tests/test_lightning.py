"""The Lightning callback records the same steps a plain loop would."""

from __future__ import annotations

import pytest
import torch

lightning = pytest.importorskip("lightning")

from deltastore.lightning import DeltaStoreCallback  # noqa: E402
from deltastore.plan import PruningPlan  # noqa: E402
from deltastore.read import StoreReader  # noqa: E402


class Module(lightning.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))

    def training_step(self, batch, batch_idx):
        x, y, _ids = batch
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 4, generator=g), torch.randint(0, 2, (40,), generator=g)
    ds = torch.utils.data.TensorDataset(x, y, torch.arange(40))
    return torch.utils.data.DataLoader(ds, batch_size=10, shuffle=False)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # Lightning's own deprecations, not ours
@pytest.mark.filterwarnings("ignore::UserWarning:lightning.*")
@pytest.mark.parametrize("accumulate", [1, 2])
def test_callback_records_every_real_step_with_its_ids(tmp_path, accumulate):
    module = Module()
    initial = {k: v.clone() for k, v in module.state_dict().items()}
    trainer = lightning.Trainer(
        max_epochs=2, accumulate_grad_batches=accumulate, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
        callbacks=[DeltaStoreCallback(tmp_path / "s", plan=PruningPlan.dense(), value_dtype="float32")],
    )
    trainer.fit(module, _loader())
    r = StoreReader(tmp_path / "s")
    assert r.committed_steps == 8 // accumulate
    assert r.index.samples_for(0).tolist() == list(range(10 * accumulate))
    total = r.sum_updates(range(r.committed_steps)).updates
    for name, upd in total.items():
        assert torch.allclose(module.state_dict()[name] - upd, initial[name], atol=1e-5), name
