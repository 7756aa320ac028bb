"""The whole cycle on object storage (moto): record, read, verify, info, forget, restore, audit, every CLI command."""

from __future__ import annotations

import json

import numpy as np
import torch

from deltastore.cli import build_parser, main
from deltastore.read import StoreReader
from deltastore.verify import verify_store
from unlearning.forget import audit, forget, restore
from tests.helpers import TinyNet


def test_s3_store_reads_bit_for_bit_like_the_local_one(recorded):
    url, local, _, _ = recorded
    r, l = StoreReader(url), StoreReader(local)
    assert r.committed_steps == l.committed_steps == 12
    assert r.model_fingerprint == l.model_fingerprint is not None
    steps = [0, 3, 4, 11]
    for g in r.manifest.groups:
        va, ia = r.read_rows(g.id, steps)
        vb, ib = l.read_rows(g.id, steps)
        assert torch.equal(va, vb) and (ia is None and ib is None or torch.equal(ia, ib)), g.path
    sa, sb = r.sum_updates(steps), l.sum_updates(steps)
    for k in sb.updates:
        assert torch.equal(sa.updates[k], sb.updates[k]), k
    for ids in ([0, 1, 2], [95, 40], [7]):
        sa, ua = r.index.lookup(ids)
        sb, ub = l.index.lookup(ids)
        assert np.array_equal(sa, sb) and ua == ub
    assert r.io.requests.total > 0 and r.bytes_read > 0


def test_storage_options_reach_the_client(recorded, s3_endpoint, monkeypatch):
    url, _, _, _ = recorded
    monkeypatch.delenv("AWS_ENDPOINT_URL")  # only the option says where the server is
    r = StoreReader(url, storage_options={"endpoint": s3_endpoint})
    assert r.committed_steps == 12


def test_a_shard_read_fetches_its_index_then_only_the_chunks_needed(recorded):
    url, _, _, _ = recorded
    r = StoreReader(url)
    g = max(r.manifest.groups, key=lambda g: g.k)
    before_req, before_bytes = dict(r.io.requests.by_kind), r.bytes_read
    r.read_rows(g.id, [5])
    after = r.io.requests.by_kind
    tails = after.get("GET tail", 0) - before_req.get("GET tail", 0)
    ranges = after.get("GET range", 0) - before_req.get("GET range", 0)
    arrays = len(r.manifest.arrays(g))
    assert r.io.requests.by_kind.get("HEAD", 0) == before_req.get("HEAD", 0)  # the suffix GET tells the size
    assert tails == ranges == arrays  # per array: the shard index, then the one inner chunk of step 5
    assert after.get("GET", 0) == before_req.get("GET", 0)  # nothing read whole
    shard_bytes = sum(r.io.size(f"{g.path}/{n}/c/1/0") for n in r.manifest.arrays(g))
    assert r.bytes_read - before_bytes < shard_bytes  # not the whole shard


def test_verify_info_and_cli_accept_the_url(recorded, capsys):
    url, _, _, _ = recorded
    rep = verify_store(url)
    assert rep.ok and rep.committed_steps == 12
    assert main(["info", url, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["committed_steps"] == 12 and info["bytes"]["total"] > 0
    assert main(["verify", url]) == 0


def test_forget_restore_audit_on_s3_match_local(recorded, tmp_path):
    url, local, model, _ = recorded
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    m_s3, m_local = TinyNet(0), TinyNet(0)
    m_s3.load_state_dict(trained)
    m_local.load_state_dict(trained)
    ids = [3, 17, 60]
    r1 = forget(m_s3, url, ids, request_id="req-s3")
    r2 = forget(m_local, local, ids, request_id="req-s3")
    assert r1.steps == r2.steps and r1.fingerprint_after == r2.fingerprint_after
    for k, v in m_s3.state_dict().items():
        assert torch.equal(v, m_local.state_dict()[k]), k
    assert r1.bytes_read > 0
    entries = audit(url)
    assert [e.request_id for e in entries] == ["req-s3"]
    restore(m_s3, url, "req-s3")
    for k, v in m_s3.state_dict().items():
        assert torch.equal(v, trained[k]), k
    assert [e.kind for e in audit(url)] == ["forget", "restore"]
    assert verify_store(url).ok  # the ledger entries and id files sit beside a store that still verifies


def test_every_cli_command_takes_the_url(recorded, tmp_path, capsys):
    """Every subcommand that takes a STORE argument runs against the s3:// URL."""
    from safetensors.torch import save_file

    url, _, model, _ = recorded
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    commands = set(sub.choices)
    weights = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    ids = tmp_path / "ids.txt"
    ids.write_text("5\n9\n")
    runs = {
        "info": ["info", url],
        "verify": ["verify", url],
        "forget": ["forget", url, "--model", str(weights), "--samples", str(ids), "--out", str(tmp_path / "f.safetensors"),
                   "--request-id", "cli-req", "--force", "test: the model is the trained one, other tests changed the ledger"],
        "restore": ["restore", url, "--model", str(tmp_path / "f.safetensors"), "--request", "cli-req",
                    "--out", str(tmp_path / "r.safetensors")],
        "audit": ["audit", url],
        "lookup": ["lookup", url, "--samples", str(ids)],
        # last: a purge erases for good (the ids leave this module's store; no later test uses it)
        "purge": ["purge", url, "--request", "cli-purge", "--model", str(tmp_path / "p.safetensors"),
                  "--out", str(tmp_path / "after-purge.safetensors")],
    }
    ran = []
    for name in ["info", "verify", "forget", "restore", "audit", "lookup", "purge"]:
        if name not in commands:
            continue
        if name == "purge":  # a live request to make final
            assert main(["forget", url, "--model", str(tmp_path / "r.safetensors"), "--samples", str(ids),
                         "--out", str(tmp_path / "p.safetensors"), "--request-id", "cli-purge"]) == 0, capsys.readouterr().err
        assert main(runs[name]) == 0, (name, capsys.readouterr().err)
        ran.append(name)
    assert main(["verify", url]) == 0, capsys.readouterr().err
    # demo: tests/s3/test_s3_demo.py; keygen takes no store (tests/test_crypto.py)
    untested = commands - set(runs) - {"demo", "keygen"}
    assert not untested, f"add the new subcommands {sorted(untested)} to this test"
    assert {"info", "verify", "forget", "restore", "purge"} <= set(ran)
