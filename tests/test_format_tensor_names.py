"""A Zarr user can tell which tensor an array holds (issue 10): array attributes name them."""

from __future__ import annotations

import warnings

import zarr

from deltastore.plan import PruningPlan

from .helpers import record


def test_arrays_name_their_tensors_and_reading_by_the_manifest_warns_nothing(tmp_path):
    record(tmp_path / "s", steps=3, plan=PruningPlan.layerwise(0.8, 0.4, mode="magnitude"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a ZarrUserWarning would fail the test
        g = zarr.open_group(str(tmp_path / "s"), mode="r")
        seen = {}
        for grp in g.attrs["deltastore"]["groups"]:
            for name in ("values", "scales", "indices"):
                if name in grp_arrays(g, grp["path"]):
                    arr = g[f"{grp['path']}/{name}"]
                    assert arr.attrs["tensors"] == grp["tensors"] and arr.shape[0] == 3
                    seen[grp["path"]] = grp["tensors"]
    assert {t for ts in seen.values() for t in ts} >= {"conv.weight", "fc1.weight", "bn.running_mean"}


def grp_arrays(g, path: str) -> set[str]:
    """The arrays of one group, from its folder (no listing of the store's root)."""
    return {name for name in ("values", "scales", "indices") if f"{path}/{name}" in g}
