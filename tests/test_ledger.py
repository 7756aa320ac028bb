"""The ledger (unlearning/ledger.py): append-only entries through the store's I/O seam,
corruption named, the lock, and the questions forget/restore ask of the entries."""

from __future__ import annotations

import contextlib
import json
import tempfile
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deltastore.errors import CorruptStoreError, InvalidArgumentError, LedgerError, StoreLockedError
from deltastore.storage import LocalStoreIO, StoreIO
from deltastore.format import with_checksum
from unlearning.ledger import LEDGER_DIR, Ledger, Receipt, entry_key


class MemoryStoreIO(StoreIO):
    """A dict of keys -> bytes: shows the ledger needs nothing but the StoreIO interface."""

    def __init__(self):
        super().__init__()
        self.objects: dict[str, bytes] = {}
        self._locks: dict[str, threading.Lock] = {}

    url = "memory://store"

    def read(self, key):
        try:
            return self.objects[key]
        except KeyError:
            raise FileNotFoundError(self.where(key)) from None

    def open_range(self, key):
        raise NotImplementedError

    def map(self, key):
        return self.read(key)

    def exists(self, key):
        return key in self.objects

    def is_empty(self):
        return not self.objects

    def size(self, key):
        return len(self.read(key))

    def list_dir(self, prefix=""):
        head = f"{prefix}/" if prefix else ""
        return sorted({k[len(head):].split("/")[0] for k in self.objects if k.startswith(head)})

    def list_prefix(self, prefix=""):
        return sorted(k for k in self.objects if k.startswith(prefix))

    @contextlib.contextmanager
    def writer(self, key, *, fsync=False):
        import io

        buf = io.BytesIO()
        yield buf
        self.objects[key] = buf.getvalue()

    def create(self, key, data, *, fsync=False):
        if key in self.objects:
            return False
        self.objects[key] = bytes(data)
        return True

    def delete(self, key):
        self.objects.pop(key, None)

    def delete_prefix(self, prefix):
        for k in self.list_prefix(prefix):
            del self.objects[k]

    def sync(self, keys):
        pass

    @contextlib.contextmanager
    def lock(self, key, timeout):
        lk = self._locks.setdefault(key, threading.Lock())
        if not lk.acquire(timeout=timeout):
            raise StoreLockedError(f"{self.where(key)}: expected to take the lock within {timeout} s, another holder still has it")
        try:
            yield
        finally:
            lk.release()

    def acquire(self, key, holder):
        raise NotImplementedError("the ledger takes no writer lease")


def _receipt(request_id, kind="forget", steps=(), **kw):
    return Receipt(request_id=request_id, kind=kind, steps=list(steps), **kw)


# ---- append-only ---------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["local", "memory"])
def test_append_numbers_entries_and_reads_them_back(tmp_path, backend):
    io = LocalStoreIO(tmp_path) if backend == "local" else MemoryStoreIO()
    ledger = Ledger(io)
    assert ledger.entries() == []
    with ledger.locked(1.0):
        k0 = ledger.append(_receipt("a", steps=[3, 1], fingerprint_after="sha256:1"))
        k1 = ledger.append(_receipt("b", kind="restore", steps=[3, 1], restores="a"))
    assert (k0, k1) == (entry_key(0, "a"), entry_key(1, "b")) == ("ledger/00000000-a.json", "ledger/00000001-b.json")
    got = ledger.entries()
    assert [(r.sequence, r.request_id, r.kind, r.steps) for r in got] == [(0, "a", "forget", [3, 1]), (1, "b", "restore", [3, 1])]
    assert json.loads(io.read(k0)) == got[0].to_json()
    assert ledger.dir == io.where(LEDGER_DIR)


def test_a_path_opens_the_local_backend(tmp_path):
    Ledger(tmp_path).append(_receipt("x"))
    assert (tmp_path / "ledger" / "00000000-x.json").is_file()
    assert [r.request_id for r in Ledger(str(tmp_path)).entries()] == ["x"]


def test_a_used_request_id_is_refused_and_nothing_changes(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.append(_receipt("a", steps=[1]))
    before = sorted(p.name for p in (tmp_path / "ledger").iterdir())
    with pytest.raises(LedgerError, match="'a': already in the ledger"):
        ledger.append(_receipt("a", steps=[2]))
    assert sorted(p.name for p in (tmp_path / "ledger").iterdir()) == before
    assert [r.steps for r in ledger.entries()] == [[1]]


class _RacingIO(LocalStoreIO):
    """Another writer creates the entry between our listing and our create."""

    def create(self, key, data, *, fsync=False):
        assert super().create(key, b'{"the other writer": 1}')
        return super().create(key, data, fsync=fsync)


def test_create_if_absent_never_overwrites_an_entry(tmp_path):
    io = _RacingIO(tmp_path)
    with pytest.raises(LedgerError, match="00000000-a.json: expected a new ledger entry, the entry already exists"):
        Ledger(io).append(_receipt("a"))
    assert json.loads((tmp_path / "ledger" / "00000000-a.json").read_bytes()) == {"the other writer": 1}


# ---- corruption is an error naming the file ---------------------------------------------
def _write(tmp_path, name, obj):
    d = tmp_path / "ledger"
    d.mkdir(exist_ok=True)
    (d / name).write_bytes(obj if isinstance(obj, bytes) else json.dumps(obj).encode())
    return d / name


def _signed(obj: dict) -> dict:
    """An entry with a valid checksum, so the check under test is the one that fails."""
    return with_checksum(obj)


CORRUPT = {
    "name disagrees with the request id": ("00000000-a.json", _signed(_receipt("b", sequence=0).to_json()), "file name disagrees"),
    "name disagrees with the sequence": ("00000000-a.json", _signed(_receipt("a", sequence=4).to_json()), "file name disagrees"),
    "not JSON": ("00000000-a.json", b"{not json", "expected a ledger entry"),
    "a JSON list": ("00000000-a.json", [1, 2], "expected a ledger entry"),
    "no kind": ("00000000-a.json", {"request_id": "a", "sequence": 0}, "expected a ledger entry"),
    "unknown kind": ("00000000-a.json", _signed(_receipt("a", kind="undo", sequence=0).to_json()), "expected kind one of"),
    "steps not integers": ("00000000-a.json", _signed({**_receipt("a", sequence=0).to_json(), "steps": ["1"]}), "expected steps as a list"),
    "first entry missing": ("00000001-a.json", _signed(_receipt("a", sequence=1).to_json()), "expected ledger entry number 0 next, got 1"),
    "content edited": ("00000000-a.json", {**_signed(_receipt("a", sequence=0).to_json()), "steps": [1, 2]}, "match its checksum"),
    "checksum removed": ("00000000-a.json", _receipt("a", sequence=0).to_json(), "match its checksum"),
    "not the first entry's predecessor": ("00000000-a.json", _signed({**_receipt("a", sequence=0).to_json(), "previous": "sha256:00"}),
                                          "expected it to follow"),
}


@pytest.mark.parametrize("name, content, match", CORRUPT.values(), ids=CORRUPT.keys())
def test_a_bad_entry_is_corrupt_store_naming_it(tmp_path, name, content, match):
    path = _write(tmp_path, name, content)
    with pytest.raises(CorruptStoreError, match=match) as info:
        Ledger(tmp_path).entries()
    assert str(path) in str(info.value)
    with pytest.raises(CorruptStoreError):  # and nothing is appended on top of it
        Ledger(tmp_path).append(_receipt("z"))


def test_a_repeated_sequence_number_is_corrupt(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.append(_receipt("a"))
    _write(tmp_path, "00000000-b.json", _signed(_receipt("b", sequence=0).to_json()))
    with pytest.raises(CorruptStoreError, match="00000000-b.json: expected ledger entry number 1 next, got 0"):
        ledger.entries()


def test_entries_are_chained_and_a_removed_middle_entry_is_caught(tmp_path):
    ledger = Ledger(tmp_path)
    for rid in "abc":
        ledger.append(_receipt(rid))
    a, b, c = ledger.entries()
    assert a.previous is None and b.previous == a.checksum and c.previous == b.checksum
    # Renumber c into b's place: names and sequence agree, only the chain can tell.
    (tmp_path / "ledger" / "00000001-b.json").unlink()
    moved = {**json.loads((tmp_path / "ledger" / "00000002-c.json").read_bytes()), "sequence": 1}
    (tmp_path / "ledger" / "00000002-c.json").unlink()
    _write(tmp_path, "00000001-c.json", _signed({k: v for k, v in moved.items() if k != "checksum"}))
    with pytest.raises(CorruptStoreError, match="expected it to follow the entry with checksum"):
        ledger.entries()


def test_version_1_entries_without_checksums_still_read(tmp_path):
    old = {k: v for k, v in _receipt("a", sequence=0).to_json().items() if k not in ("previous", "checksum")}
    _write(tmp_path, "00000000-a.json", {**old, "ledger_version": 1})
    ledger = Ledger(tmp_path)
    assert [r.request_id for r in ledger.entries()] == ["a"]
    ledger.append(_receipt("b"))  # a new entry chains onto an old one (whose checksum is None)
    assert [r.request_id for r in ledger.entries()] == ["a", "b"]


def test_other_names_in_the_folder_are_not_entries(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.append(_receipt("a"))
    _write(tmp_path, ".00000001-b.json.1234.partial", b"half")  # an interrupted write of the backend
    _write(tmp_path, "README", b"notes")
    with ledger.locked(1.0):  # leaves ledger/.lock behind
        pass
    assert [r.request_id for r in ledger.entries()] == ["a"]


# ---- the lock ------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["local", "memory"])
def test_a_second_holder_times_out_with_store_locked_error(tmp_path, backend):
    io = LocalStoreIO(tmp_path) if backend == "local" else MemoryStoreIO()
    other = LocalStoreIO(tmp_path) if backend == "local" else io  # local: a second open file, as another process has
    with Ledger(io).locked(1.0):
        with pytest.raises(StoreLockedError, match="expected to take the lock within 0.05 s") as info:
            with Ledger(other).locked(0.05):
                pytest.fail("the lock was taken twice")
        assert io.where("ledger/.lock") in str(info.value)
    with Ledger(other).locked(0.05) as held:  # released: the next holder gets it
        assert held.io is other


@pytest.mark.parametrize("timeout", [-1, float("nan"), "1", True])
def test_a_bad_lock_timeout_is_refused(tmp_path, timeout):
    with pytest.raises(InvalidArgumentError, match="lock timeout: expected a number of seconds >= 0"):
        with Ledger(tmp_path).locked(timeout):
            pass


# ---- questions about entries (properties) ---------------------------------------------------
@st.composite
def histories(draw):
    """Entries as forget/restore write them, with the live requests of a plain model beside them.

    A forget lists the requested steps not already subtracted; a restore lists its forget's steps.
    """
    entries, live = [], {}
    for i in range(draw(st.integers(0, 12))):
        restorable = sorted(live)
        if restorable and draw(st.booleans()):
            rid = draw(st.sampled_from(restorable))
            entries.append(_receipt(f"r{i}", kind="restore", steps=live.pop(rid), restores=rid, fingerprint_after=f"f{i}"))
        else:
            taken = set().union(set(), *live.values())
            wanted = draw(st.lists(st.integers(0, 30), max_size=8, unique=True))
            live[f"q{i}"] = [s for s in wanted if s not in taken]
            entries.append(_receipt(f"q{i}", steps=live[f"q{i}"], fingerprint_after=f"f{i}"))
    return entries, live


@given(history=histories())
def test_subtracted_steps_are_the_live_requests_steps(history):
    entries, live = history
    assert Ledger.subtracted_steps(entries) == set().union(set(), *live.values())
    # a step is subtracted by at most one live request
    listed = [s for steps in live.values() for s in steps]
    assert len(listed) == len(set(listed))


@given(history=histories())
def test_restored_and_forget_entry(history):
    entries, live = history
    for r in entries:
        if r.kind != "forget":
            continue
        assert Ledger.forget_entry(entries, r.request_id) is r
        assert Ledger.restored(entries, r.request_id) == (r.request_id not in live)
    with pytest.raises(LedgerError, match="expected a forget request 'nope' in the ledger, found none"):
        Ledger.forget_entry(entries, "nope")
    for r in entries:  # a restore's own id is not a forget request
        if r.kind == "restore":
            with pytest.raises(LedgerError, match="in STORE/ledger, found none"):
                Ledger.forget_entry(entries, r.request_id, where="STORE/ledger")


@given(history=histories(), trained=st.one_of(st.none(), st.text(min_size=1, max_size=8)))
def test_expected_fingerprint_is_the_last_entrys_or_the_trained_models(history, trained):
    entries, _ = history
    want = entries[-1].fingerprint_after if entries else trained
    assert Ledger.expected_fingerprint(entries, trained) == want


@given(history=histories())
def test_the_ledger_on_disk_returns_what_was_appended(history):
    entries, _ = history
    with tempfile.TemporaryDirectory() as d:
        ledger = Ledger(d)
        for r in entries:
            ledger.append(r)
        assert ledger.entries() == entries
        assert [r.sequence for r in entries] == list(range(len(entries)))
        assert Ledger.subtracted_steps(Ledger(d).entries()) == Ledger.subtracted_steps(entries)
