"""Faults in encrypted stores (FORMAT.md §12): damaged key objects, chunks, sealed index parts and trained
weights are errors naming the file; a failed key-object write while recording stops the recording cleanly."""

from __future__ import annotations

import contextlib
import errno
import shutil
import struct

import google_crc32c
import numpy as np
import pytest

from deltastore.crypto import EncryptedStoreIO, open_encrypted
from deltastore.crypto.stepkeys import key_object
from deltastore.errors import CorruptStoreError, EncryptionKeyError, RecordingFailedError
from deltastore.format.trained import read_trained
from deltastore.plan import PruningPlan
from deltastore.read import StoreReader
from deltastore.record import Recorder
from deltastore.storage import LocalStoreIO
from deltastore.verify import verify_store
from tests.helpers import TinyNet, make_optimizer, train_steps

KEY = bytes(range(100, 132))
STEPS, SPS = 6, 2


def _record(io, model=None, first=0, steps=STEPS, mode="w"):
    model = model or TinyNet(0)
    opt = make_optimizer("sgd-momentum", model.parameters())
    rec = Recorder(io, model, opt, plan=PruningPlan.layerwise(), steps_per_shard=SPS, mode=mode,
                   encryption_key=None if isinstance(io, EncryptedStoreIO) else KEY)
    try:
        train_steps(rec, model, opt, first, steps)
    finally:
        rec.close()
    return model


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    path = tmp_path_factory.mktemp("enc") / "s"
    _record(path)
    return path


def _part(root):
    return sorted(p for p in (root / "index").iterdir() if p.name.endswith(".parquet"))[0]


def _trained(root):
    return next((root / "trained").iterdir())


def _read_everything(path):
    """What forget/verify read: every row of every group, an index lookup, the trained weights."""
    r = StoreReader(open_encrypted(path, KEY))
    for g in r.manifest.groups:
        r.read_rows(g.id, list(range(r.committed_steps)))
    r.index.lookup(list(range(48)))
    read_trained(r.io, r.commit, r.manifest)


FILES = {
    "key object": lambda root: root / key_object(1),
    "shard": lambda root: root / "g0003" / "values" / "c" / "1" / "0",
    "index part": _part,
    "trained weights": _trained,
}


@pytest.mark.parametrize("damage", ["flip-first", "flip-middle", "flip-last", "truncate", "delete"])
@pytest.mark.parametrize("kind", sorted(FILES))
def test_damage_to_an_encrypted_file_is_an_error_naming_it(clean, tmp_path, kind, damage):
    dst = tmp_path / "s"
    shutil.copytree(clean, dst)
    f = FILES[kind](dst)
    blob = bytearray(f.read_bytes())
    if damage == "delete":
        f.unlink()
    elif damage == "truncate":
        f.write_bytes(bytes(blob[: len(blob) // 2]))
    else:
        i = {"flip-first": 0, "flip-middle": len(blob) // 2, "flip-last": len(blob) - 1}[damage]
        blob[i] ^= 0x40
        f.write_bytes(bytes(blob))
    with pytest.raises(CorruptStoreError) as err:
        _read_everything(dst)
    assert f.name in str(err.value) or (kind == "shard" and err.value.step is not None), str(err.value)
    rep = verify_store(open_encrypted(dst, KEY))
    assert not rep.ok


def test_a_chunk_altered_with_a_valid_crc_fails_authentication_naming_the_shard(clean, tmp_path):
    dst = tmp_path / "s"
    shutil.copytree(clean, dst)
    f = dst / "g0003" / "values" / "c" / "0" / "0"
    blob = bytearray(f.read_bytes())
    r = StoreReader(open_encrypted(dst, KEY))
    n = r._decoders[3]["values"].nchunks
    index = np.frombuffer(bytes(blob[-(16 * n + 4):-4]), dtype="<u8").reshape(n, 2)
    off, size = (int(x) for x in index[0])
    blob[off + 20] ^= 1  # inside the ciphertext; then the chunk's crc32c made right again
    blob[off + size - 4 : off + size] = struct.pack("<I", google_crc32c.value(bytes(blob[off : off + size - 4])))
    f.write_bytes(bytes(blob))
    with pytest.raises(CorruptStoreError, match="fails authentication") as err:
        StoreReader(open_encrypted(dst, KEY)).read_rows(3, [0])
    assert "g0003/values/c/0/0" in str(err.value) and err.value.step == 0


class KeysFull(LocalStoreIO):
    """A local store whose ``fail_at``-th write of a key object fails as a full disk would."""

    def __init__(self, root, fail_at):
        super().__init__(root)
        self.fail_at, self.key_writes = fail_at, 0

    @contextlib.contextmanager
    def writer(self, key, *, fsync=False):
        if key.startswith("keys/"):
            self.key_writes += 1
            if self.key_writes == self.fail_at:
                raise OSError(errno.ENOSPC, "No space left on device (injected)")
        with super().writer(key, fsync=fsync) as f:
            yield f


@pytest.mark.parametrize("fail_at", [1, 2])
def test_disk_full_writing_key_objects_stops_the_recording_and_the_store_resumes(tmp_path, fail_at):
    path = tmp_path / "s"
    model = TinyNet(0)
    opt = make_optimizer("sgd-momentum", model.parameters())
    rec = Recorder(EncryptedStoreIO(KeysFull(path, fail_at), KEY), model, opt, plan=PruningPlan.layerwise(), steps_per_shard=SPS)
    with pytest.raises(RecordingFailedError) as err:
        train_steps(rec, model, opt, 0, STEPS)
        rec.close()
    rec.writer.abort()
    committed = err.value.committed_steps
    assert committed == (fail_at - 1) * SPS
    r = StoreReader(open_encrypted(path, KEY))
    assert r.committed_steps == committed
    for g in r.manifest.groups:
        r.read_rows(g.id, list(range(committed)))
    with pytest.raises(EncryptionKeyError):  # appending needs the key too, before anything is written
        Recorder(path, model, make_optimizer("sgd-momentum", model.parameters()), mode="a")
    # Resume with the key: the tail is re-recorded under fresh data keys and the store verifies.
    _record(EncryptedStoreIO(LocalStoreIO(path), KEY), model, first=committed, steps=STEPS - committed, mode="a")
    io = open_encrypted(path, KEY)
    assert StoreReader(io).committed_steps == STEPS
    rep = verify_store(io)
    assert rep.ok, rep.problems
