"""verify_store (deltastore.verify): names every damaged step, never raises for damage."""

from __future__ import annotations


from deltastore.read import StoreReader
from deltastore.verify import verify_store

from .helpers import record


def test_a_sound_store_verifies(tmp_path):
    record(tmp_path / "s", steps=5, steps_per_shard=2)
    rep = verify_store(tmp_path / "s")
    assert rep.ok and rep.committed_steps == 5 and rep.index_rows == 40
    assert rep.chunks_checked == 3 * len(StoreReader(tmp_path / "s").manifest.groups)  # 3 shards per group


def test_every_damaged_step_is_named(tmp_path):
    record(tmp_path / "s", steps=4, steps_per_shard=4, value_dtype="float32")
    shard = tmp_path / "s" / "g0002" / "values" / "c" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0xFF
    shard.write_bytes(bytes(data))
    rep = verify_store(tmp_path / "s")
    assert not rep.ok
    assert {p.step for p in rep.problems} <= {0, 1, 2, 3} and all(p.tensor for p in rep.problems)


def test_a_missing_store_is_a_problem_not_an_exception(tmp_path):
    rep = verify_store(tmp_path / "nothing")
    assert not rep.ok and "expected a deltastore store" in str(rep.problems[0])


def test_a_missing_index_part_is_named(tmp_path):
    record(tmp_path / "s", steps=3)
    (part,) = (tmp_path / "s" / "index").glob("part-*.parquet")
    part.unlink()
    rep = verify_store(tmp_path / "s")
    assert not rep.ok and any(part.name in str(p) for p in rep.problems)
