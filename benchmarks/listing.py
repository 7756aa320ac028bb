"""What plain-Zarr listing costs (issue 10, item 6; FORMAT.md §2.1): the consolidated metadata
``close()`` writes into the root ``zarr.json``, in bytes and seconds.

For the demo's store (digits MLP, default plan: int8 values, layer-wise random pruning)
and a ResNet-18-sized one (same plan), recorded for a few steps (the size does not
depend on the step count beyond its digits): the root's size without and with the
consolidated metadata, the seconds ``write_consolidated`` takes at close (median of
repeats, local disk), and the seconds ``StoreReader`` takes to open the store with it
(the reader reads the root whole, consolidated part included, and ignores that part).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from deltastore.format.consolidated import remove_consolidated, write_consolidated
from deltastore.format.manifest import read_root
from deltastore.read import StoreReader
from deltastore.record import Recorder
from unlearning.models import build_model


def _record(path: Path, name: str, in_shape: tuple, steps: int) -> None:
    model = build_model(name, in_shape=in_shape, num_classes=10, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    with Recorder(path, model, opt) as rec:
        for i in range(steps):
            opt.zero_grad()
            x, y = torch.randn(8, *in_shape, generator=g), torch.randint(0, 10, (8,), generator=g)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            rec.samples(list(range(8 * i, 8 * i + 8)))
            opt.step()


def _measure(name: str, in_shape: tuple, repeats: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "s"
        _record(path, name, in_shape, steps=3)
        reader = StoreReader(path)
        m, rows = reader.manifest, reader.committed_steps
        pin = read_root(reader.io)[1].manifest_sha256
        with_cm = (path / "zarr.json").stat().st_size
        write_s, open_s, open_without_s = [], [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            StoreReader(path)
            open_s.append(time.perf_counter() - t0)
            remove_consolidated(reader.io, pin, fsync=False)
            without = (path / "zarr.json").stat().st_size
            t0 = time.perf_counter()
            StoreReader(path)
            open_without_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            write_consolidated(reader.io, m, rows, pin, fsync=False)
            write_s.append(time.perf_counter() - t0)
        arrays = sum(len(m.arrays(g)) for g in m.groups)
        row = {"model": name, "tensors": len(m.tensors), "groups": len(m.groups), "arrays": arrays,
               "root_bytes_without": without, "root_bytes_with": with_cm, "consolidated_bytes": with_cm - without,
               "bytes_per_array": (with_cm - without) / arrays, "write_seconds": statistics.median(write_s),
               "reader_open_seconds": statistics.median(open_s),
               "reader_open_seconds_without": statistics.median(open_without_s), "repeats": repeats}
        print(f"{name}: {row['groups']} groups, {arrays} arrays; root zarr.json {without:,} B -> {with_cm:,} B "
              f"(+{row['consolidated_bytes']:,} B, {row['bytes_per_array']:.0f} B per array); written at close in "
              f"{row['write_seconds'] * 1e3:.1f} ms; StoreReader opens in {row['reader_open_seconds'] * 1e3:.1f} ms "
              f"({row['reader_open_seconds_without'] * 1e3:.1f} ms without it; median of {repeats})")
        return row


def run(*, quick: bool = False, device: str = "cpu", plots=None, out=None) -> dict:
    repeats = 3 if quick else 9
    rows = [_measure("mlp", (1, 8, 8), repeats), _measure("resnet18", (3, 32, 32), repeats)]
    return {"rows": rows}
