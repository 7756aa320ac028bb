"""purge: a forget made final (FORMAT.md §5.2, §7.2).

After a purge the request's stored updates and sample ids are nowhere in the store (a
byte scan of every file, with a positive control before), restore is refused naming the
tombstone, other requests keep working, and the model is still a function of the live
set (hypothesis) with the new base in place of the trained weights.
"""

from __future__ import annotations

import os
import shutil
import struct

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deltastore.cli import main
from deltastore.errors import CorruptStoreError, InvalidArgumentError, LedgerError
from deltastore.format import model_fingerprint, read_commit
from deltastore.format.trained import read_trained
from deltastore.read import StoreReader
from deltastore.record import Recorder
from deltastore.verify import verify_store
from unlearning.forget import audit, forget, purge, restore

from .helpers import TinyNet, data, make_optimizer, record

STEPS = 12  # helpers.record: step s uses ids [8s, 8s+8) mod 96


@pytest.fixture(scope="module")
def base_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("purge") / "s"
    model, _, _ = record(path, steps=STEPS, steps_per_shard=5)
    return path, {k: v.detach().clone() for k, v in model.state_dict().items()}


def _copy(base_store, tmp_path):
    src, trained = base_store
    dst = tmp_path / "s"
    shutil.copytree(src, dst)
    return dst, {k: v.clone() for k, v in trained.items()}


def _fp(state) -> str:
    return model_fingerprint({k: v for k, v in state.items() if v.is_floating_point()})


def _base(path):
    r = StoreReader(path)
    return read_trained(r.io, r.commit, r.manifest)


def test_purge_erases_rows_ids_and_old_base_and_refuses_restore(base_store, tmp_path):
    path, state = _copy(base_store, tmp_path)
    old_trained = read_commit(StoreReader(path).io)["trained"]["key"]
    p = forget(state, path, [0, 1, 9], request_id="P")  # steps 0 and 1
    q = forget(state, path, [10, 20], request_id="Q")  # step 1 (shared with P) and step 2
    assert p.steps == [0, 1] and q.steps_already_subtracted == [1]
    res = purge(path, "P", state, purge_id="T")
    t = res.receipt
    assert (t.kind, t.purges, t.erased_steps, t.sample_count) == ("purge", "P", [0, 1], 3)
    assert t.fingerprint_after == _fp(state) == _fp(res.state)  # the new state is loaded into the model
    assert res.max_change < 1e-6  # parameters move by float rounding only
    reader = StoreReader(path)
    for g in reader.manifest.groups:  # the rows of every erased step decode to zeros
        vals, _ = reader.read_rows(g.id, [0, 1])
        assert not vals.any()
    steps, unknown = reader.index.lookup([0, 1, 9])
    assert len(steps) == 0 and sorted(unknown) == [0, 1, 9]  # the ids left the index
    assert not reader.io.exists("ledger/ids/P.parquet") and not reader.io.exists(old_trained)
    rep = verify_store(path)
    assert rep.ok and rep.erased_steps == 2 and rep.notes == []
    with pytest.raises(LedgerError, match=r"'P' was purged for good \(tombstone: ledger entry 2, purge 'T'\)"):
        restore(state, path, "P")
    with pytest.raises(LedgerError, match="already purged"):
        purge(path, "P")
    # Another request touching an erased step: already subtracted; Q's restore gives back only step 2.
    r = forget(state, path, [2, 30], request_id="R")  # step 0 (erased), step 3
    assert r.steps == [3] and r.steps_already_subtracted == [0]
    back = restore(state, path, "Q")
    assert back.steps == [2]
    restore(state, path, "R")
    assert _fp(state) == _fp(_base(path))  # every restorable request undone: the new base, bit for bit
    assert [e.kind for e in audit(path)] == ["forget", "forget", "purge", "forget", "restore", "restore"]


def test_purge_needs_trained_weights(tmp_path):
    src = os.path.join(os.path.dirname(__file__), "fixtures", "v1", "f32-global")
    shutil.copytree(src, tmp_path / "s")
    with pytest.raises((InvalidArgumentError, LedgerError)):
        purge(tmp_path / "s", "nothing")
    rec = record(tmp_path / "t", steps=3)[0]
    state = {k: v.clone() for k, v in rec.state_dict().items()}
    commit = read_commit(StoreReader(tmp_path / "t").io)
    assert commit.get("trained")  # positive control: a current store purges
    forget(state, tmp_path / "t", [0], request_id="A")
    # A store closed without trained weights (written before they were kept): refused clearly.
    from deltastore.format.commit import update_commit
    from deltastore.storage import open_io

    io = open_io(tmp_path / "t")
    update_commit(io, read_commit(io), {"trained": None}, fsync=False)
    with pytest.raises(InvalidArgumentError, match="purge needs the trained weights"):
        purge(tmp_path / "t", "A")


def test_cli_purge_writes_out_and_audit_info_show_it(base_store, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    path, state = _copy(base_store, tmp_path)
    forget(state, path, [5], request_id="P")
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "m.safetensors")
    assert main(["purge", str(path), "--request", "P", "--model", str(tmp_path / "m.safetensors")]) == 1
    assert "--model and --out" in capsys.readouterr().err
    assert main(["purge", str(path), "--request", "P", "--model", str(tmp_path / "m.safetensors"),
                 "--out", str(tmp_path / "new.safetensors"), "--purge-id", "T1", "--receipt", str(tmp_path / "t.json"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "purged request P: 1 steps erased" in out and "largest change" in out
    new = load_file(tmp_path / "new.safetensors")
    assert _fp(new) == audit(path)[-1].fingerprint_after
    assert main(["audit", str(path)]) == 0
    assert "tombstone: P erased for good" in capsys.readouterr().out
    assert main(["info", str(path)]) == 0
    assert "1 steps purged for good" in capsys.readouterr().out
    assert main(["verify", str(path), "--quiet"]) == 0
    assert main(["restore", str(path), "--request", "P", "--model", str(tmp_path / "new.safetensors"),
                 "--out", str(tmp_path / "r.safetensors")]) == 1
    assert "purged for good" in capsys.readouterr().err


ops = st.lists(st.tuples(st.sampled_from(["forget", "restore", "purge"]), st.integers(0, 4)), min_size=1, max_size=5)
id_sets = st.lists(st.lists(st.integers(0, 95), min_size=1, max_size=5, unique=True), min_size=5, max_size=5)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=st.lists(st.integers(0, 4), min_size=2, max_size=4, unique=True), ops=ops, ids=id_sets)
def test_state_is_a_function_of_the_live_set_after_the_same_purges(base_store, tmp_path_factory, first, ops, ids):
    """Sequence A: random forgets, restores and purges. Sequence B on a fresh copy: the same
    purges first (each forget-then-purge, in order), then the final live requests forgotten in
    reverse order. Same bits; restoring every live request gives the new base bit for bit."""
    src, trained = base_store
    a_path = tmp_path_factory.mktemp("a") / "s"
    b_path = tmp_path_factory.mktemp("b") / "s"
    shutil.copytree(src, a_path)
    shutil.copytree(src, b_path)
    a = {k: v.clone() for k, v in trained.items()}
    live, purged, used = [], [], set()
    for op, j in [("forget", j) for j in first] + ops:  # a few live requests first, then anything
        rid = f"r{j}"
        if op == "forget" and j not in used:
            used.add(j)
            forget(a, a_path, ids[j], request_id=rid, allow_unknown=True)
            live.append(j)
        elif op == "restore" and j in live:
            restore(a, a_path, rid)
            live.remove(j)
        elif op == "purge" and j in live:
            purge(a_path, rid, a)
            live.remove(j)
            purged.append(j)
    if not purged and live:  # every example purges at least once
        purge(a_path, f"r{live[0]}", a)
        purged.append(live.pop(0))
    b = {k: v.clone() for k, v in trained.items()}
    for j in purged:
        forget(b, b_path, ids[j], request_id=f"r{j}", allow_unknown=True)
        purge(b_path, f"r{j}", b)
    assert _fp(_base(a_path)) == _fp(_base(b_path))
    for j in reversed(live):
        forget(b, b_path, ids[j], request_id=f"r{j}", allow_unknown=True)
    assert _fp(a) == _fp(b)
    for j in live:
        restore(a, a_path, f"r{j}")
    assert _fp(a) == _fp(_base(a_path))
    assert verify_store(a_path).ok
    _SEEN["purges"] += len(purged)
    _SEEN["examples"] += 1


_SEEN = {"purges": 0, "examples": 0}


def test_the_property_examples_purged_something():
    """Runs after the property test (file order): its examples did exercise purges."""
    assert _SEEN["examples"] == 0 or _SEEN["purges"] >= _SEEN["examples"], _SEEN


# ---- the byte scan (the Done-when) ----------------------------------------------------
# Two ids: the index is delta-encoded (DELTA_BINARY_PACKED / DELTA_BYTE_ARRAY), so raw id bytes are
# visible only where Parquet keeps them plain: the first value of a page and the min/max statistics.
# With two extreme ids each shows up raw somewhere (the positive control checks it); the
# decode-based check below reads every Parquet file whatever its encoding.
PURGED_INT = [7_777_777_777, 7_777_777_778]
PURGED_STR = ["erase-me-0000", "erase-me-0001"]


def _record_custom(path, id_type: str):
    """TinyNet, codec none, float32 values: stored rows are raw bytes. The purged samples are
    in steps 2 and 5 and carry recognisable ids (the largest ints, the smallest strings, so the
    Parquet footer statistics hold their raw bytes)."""
    model = TinyNet(1)
    opt = make_optimizer("adam", model.parameters())
    x, y = data()
    rec = Recorder(path, model, opt, plan=None, value_dtype="float32", codec="none", sample_id_type=id_type, steps_per_shard=4)
    purged = PURGED_INT if id_type == "int64" else PURGED_STR
    for s in range(8):
        idx = list(range(8 * s, 8 * s + 8))
        ids = [i if id_type == "int64" else f"sample-{i:06d}" for i in idx]
        if s in (2, 5):
            ids[:2] = purged if s == 2 else purged[::-1]
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        rec.samples(ids)
        opt.step()
    rec.close()
    return model, purged


def _needles(path, purged, steps) -> dict[bytes, str]:
    out = {}
    for i in purged:
        if isinstance(i, int):
            out[struct.pack("<q", i)] = f"id {i} (int64)"
            out[str(i).encode()] = f"id {i} (decimal)"
        else:
            out[i.encode()] = f"id {i!r}"
    reader = StoreReader(path)
    for g in reader.manifest.groups:
        rows = reader._decoders[g.id]["values"].read(np.asarray(steps, dtype=np.int64))
        for s, row in zip(steps, rows):
            raw = row.tobytes()
            nz = np.flatnonzero(row)
            if nz.size >= 8:  # a run of 8 stored float32 values starting at a non-zero one
                start = int(nz[0]) * 4
                out[raw[start : start + 32]] = f"row bytes of step {s}, {g.label}"
    return out


def _scan(path, needles) -> set[str]:
    found = set()
    for root, _, files in os.walk(path):  # every file, hidden and ledger ones included
        for f in files:
            with open(os.path.join(root, f), "rb") as fh:
                data = fh.read()
            for needle, what in needles.items():
                if needle in data:
                    found.add(what)
    return found


def _parquet_ids(path) -> set:
    out = set()
    for root, _, files in os.walk(path):
        for f in files:
            if f.endswith(".parquet"):
                t = pq.read_table(os.path.join(root, f))
                if "sample_id" in t.column_names:
                    out.update(t.column("sample_id").to_pylist())
    return out


@pytest.mark.parametrize("id_type", ["int64", "string"])
def test_byte_scan_finds_nothing_of_the_purged_request(tmp_path, id_type):
    path = tmp_path / "s"
    model, purged = _record_custom(path, id_type)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    p = forget(state, path, purged + (["aaa-never-seen"] if id_type == "string" else [9_999_999_999]), request_id="P",
               allow_unknown=True)
    assert p.steps == [2, 5] and p.unknown_count == 1
    needles = _needles(path, purged, p.steps)
    before = _scan(path, needles)
    # Positive control: every id and every row pattern is found before the purge.
    assert before == set(needles.values()) - {w for w in needles.values() if "(decimal)" in w}, sorted(set(needles.values()) - before)
    assert set(purged) <= _parquet_ids(path)
    purge(path, "P", state)
    assert _scan(path, needles) == set()
    assert not set(purged) & _parquet_ids(path)
    unknown = "aaa-never-seen" if id_type == "string" else 9_999_999_999
    assert unknown not in _parquet_ids(path)
    assert verify_store(path).ok


@pytest.mark.parametrize("id_type", ["int64", "string"])
def test_other_requests_ids_files_are_redacted_not_left_holding_the_purged_ids(tmp_path, id_type, capsys):
    """A restored request R and a live request Q also named a purged id: their ids files are
    rewritten without it (the tombstone names the copies and their digests); the byte scan of
    the whole store finds no purged id, and R's and Q's other ids still read back."""
    from unlearning.ledger import Ledger

    path = tmp_path / "s"
    model, purged = _record_custom(path, id_type)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    other = [8, 9] if id_type == "int64" else ["sample-000008", "sample-000009"]
    forget(state, path, [purged[0], other[0]], request_id="R")
    restore(state, path, "R")
    forget(state, path, [other[1], purged[1]], request_id="Q")
    forget(state, path, purged, request_id="P")
    needles = {k: v for k, v in _needles(path, purged, [2, 5]).items() if v.startswith("id") and "(decimal)" not in v}
    assert _scan(path / "ledger", needles) == set(needles.values())  # positive control: R's, Q's and P's ids files hold them
    t = purge(path, "P", state).receipt
    assert sorted(t.redacted) == ["Q", "R"] and t.unredacted == []
    assert _scan(path, needles) == set() and not set(purged) & _parquet_ids(path)
    ledger = Ledger(StoreReader(path).io)
    entries = ledger.entries()
    assert ledger.read_ids(Ledger.forget_entry(entries, "R")) == [other[0]]
    assert ledger.read_ids(Ledger.forget_entry(entries, "Q")) == [other[1]]
    assert sorted(os.listdir(path / "ledger" / "ids")) == [f"Q.redacted-{t.request_id}.parquet", f"R.redacted-{t.request_id}.parquet"]
    assert main(["audit", str(path), "--ids", "R"]) == 0 and str(other[0]) in capsys.readouterr().out
    # A damaged copy is named as such (its digest is the tombstone's, which the chain covers).
    copy = path / "ledger" / "ids" / f"R.redacted-{t.request_id}.parquet"
    good = copy.read_bytes()
    copy.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(CorruptStoreError, match="purge tombstone"):
        ledger.read_ids(Ledger.forget_entry(entries, "R"))
    copy.write_bytes(good)
    # Q stays live and purgeable through its redacted copy: its remaining id leaves the index in turn.
    purge(path, "Q", state)
    assert other[1] not in _parquet_ids(path) and other[0] in _parquet_ids(path)
    assert sorted(os.listdir(path / "ledger" / "ids")) == [f"R.redacted-{t.request_id}.parquet"]
    assert verify_store(path).ok


def test_buffers_keep_leaves_the_base_statistics_and_fold_moves_them(base_store, tmp_path):
    kept = {}
    for mode in ("keep", "fold"):
        path, state = _copy(base_store, tmp_path / mode)
        forget(state, path, [0, 50], request_id="P")  # buffers="keep" (the default)
        old_base = _base(path)
        res = purge(path, "P", state, buffers=mode)
        new_base = _base(path)
        assert res.max_change < 1e-6
        same = all(torch.equal(old_base[n], new_base[n]) for n in ("bn.running_mean", "bn.running_var"))
        kept[mode] = (same, res.max_buffer_change, res.receipt.buffers)
    assert kept["keep"] == (True, 0.0, "keep")
    assert kept["fold"][0] is False and kept["fold"][1] > 0 and kept["fold"][2] == "subtract"
    with pytest.raises(InvalidArgumentError, match="buffers"):
        purge(tmp_path / "fold" / "s", "P", buffers="drop")


@pytest.mark.parametrize("forgot_buffers", ["keep", "subtract"])
def test_buffers_default_follows_the_request(base_store, tmp_path, forgot_buffers):
    path, state = _copy(base_store, tmp_path / forgot_buffers)
    forget(state, path, [0, 50], request_id="P", buffers=forgot_buffers)
    old_base = _base(path)
    res = purge(path, "P", state)
    new_base = _base(path)
    same = all(torch.equal(old_base[n], new_base[n]) for n in ("bn.running_mean", "bn.running_var"))
    assert res.receipt.buffers == forgot_buffers
    assert same == (forgot_buffers == "keep")
    # either way the model's buffers do not jump at the purge: only float rounding
    assert res.max_buffer_change < 1e-5


@pytest.mark.parametrize("value_dtype,mode", [("int8", "magnitude"), ("int4", "random")])
def test_quantised_and_pruned_stores_erase_every_array(tmp_path, value_dtype, mode):
    from deltastore.plan import PruningPlan

    path = tmp_path / "s"
    model, _, _ = record(path, steps=6, steps_per_shard=4, value_dtype=value_dtype, plan=PruningPlan.uniform(0.5, mode=mode))
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    forget(state, path, [9, 40], request_id="P")  # steps 1 and 5
    forget(state, path, [17], request_id="Q")  # step 2
    reader = StoreReader(path)
    arrays = {name for g in reader.manifest.groups for name in reader._decoders[g.id]}
    assert {"values", "scales"} <= arrays and (("indices" in arrays) == (mode == "magnitude"))
    assert any(dec.read(np.array([1, 5])).any() for g in reader.manifest.groups for dec in reader._decoders[g.id].values())
    purge(path, "P", state)
    reader = StoreReader(path)
    for g in reader.manifest.groups:
        for name, dec in reader._decoders[g.id].items():  # values, scales and indices: only the fill value
            assert not dec.read(np.array([1, 5])).any(), (g.label, name)
    assert verify_store(path).ok
    restore(state, path, "Q")
    assert _fp(state) == _fp(_base(path))


def test_verify_reports_data_left_in_a_purged_step(base_store, tmp_path):
    path, state = _copy(base_store, tmp_path)
    forget(state, path, [0], request_id="P")  # step 0
    shard = path / "g0000" / "values" / "c" / "0" / "0"
    old = shard.read_bytes()  # a valid shard (its checksums hold) with step 0's row in it
    purge(path, "P", state)
    assert verify_store(path).ok
    shard.write_bytes(old)  # an old shard version brought back
    rep = verify_store(path)
    assert not rep.ok and any(p.step == 0 and "purged step's row holds data" in p.message for p in rep.problems)


def test_recording_more_steps_after_a_purge_keeps_the_erased_record(base_store, tmp_path):
    from .helpers import train_steps

    path, state = _copy(base_store, tmp_path)
    forget(state, path, [0], request_id="P")
    purge(path, "P", state)
    model = TinyNet()
    model.load_state_dict(state)
    opt = make_optimizer("adam", model.parameters())
    rec = Recorder(path, model, opt, mode="a")
    train_steps(rec, model, opt, STEPS, 3)
    rec.close()
    commit = read_commit(StoreReader(path).io)
    assert commit["committed_steps"] == STEPS + 3 and commit["erased"] == [{"request": "P", "purge": audit(path)[-1].request_id,
                                                                             "state": "done", "steps": [0]}]
    rep = verify_store(path)
    assert rep.ok and rep.erased_steps == 1


def test_a_purge_of_a_version_2_store_upgrades_its_record_so_older_readers_refuse_it(tmp_path):
    """A reader from before purges would ignore ``erased`` and count the erased steps again on
    the new base; such readers refuse commit records of version 3, which a purge writes."""
    import json
    from pathlib import Path

    fixtures = Path(__file__).parent / "fixtures" / "v2"
    path = tmp_path / "s"
    shutil.copytree(fixtures / "f32-global", path)
    meta = json.loads((fixtures / "f32-global.json").read_text())
    trained = read_trained(StoreReader(path).io, read_commit(StoreReader(path).io), StoreReader(path).manifest)
    assert read_commit(StoreReader(path).io)["commit_version"] == 2
    state = {k: v.clone() for k, v in trained.items()}
    forget(state, path, meta["ids"][:1], request_id="P")
    purge(path, "P", state)
    commit = read_commit(StoreReader(path).io)
    assert commit["commit_version"] == 3 and [r["request"] for r in commit["erased"]] == ["P"]
    assert verify_store(path).ok
