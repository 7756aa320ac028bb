"""The manifest (FORMAT.md §2): written once, in the root group's attributes, when a store is created.

Also the pruning groups it lists, ``load_manifest`` (the read path's way in) and
the model fingerprint that the commit record and the ledger carry.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..errors import CorruptStoreError, FormatVersionError, StoreNotFoundError
from ..masks import MASK_ALGORITHM, kept_count
from ..plan import PruningPlan, TensorSpec
from ..selection import ALL, MAGNITUDE, Selection, parse_selection
from .commit import sha256_of
from .consolidated import CONSOLIDATED_KEY, manifest_digest
from .layout import group_metadata, parse_codec
from .values import ValueCodec, parse_value_dtype, value_codec

FORMAT_NAME = "deltastore"
FORMAT_VERSION = 1
# Encrypted stores (FORMAT.md §12) are version 2, so readers from before encryption refuse
# them with a version error instead of failing on their array metadata.
ENCRYPTED_FORMAT_VERSION = 2
MANIFEST_KEY = "deltastore"
GROUP_METADATA = "zarr.json"


@dataclass(frozen=True)
class Group:
    """A set of tensors pruned together; one row of ``k`` values per step."""

    id: int
    tensors: tuple[str, ...]
    offsets: tuple[int, ...]  # start of each tensor in the group's flat space
    numels: tuple[int, ...]
    k: int
    selection: Selection

    @property
    def path(self) -> str:
        return f"g{self.id:04d}"

    @property
    def n(self) -> int:
        return sum(self.numels)

    @property
    def index_dtype(self) -> str:
        return "int32" if self.n < 2**31 else "int64"

    @property
    def label(self) -> str:
        """The group's tensors, for messages."""
        return ",".join(self.tensors)

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "path": self.path,
            "tensors": list(self.tensors),
            "offsets": list(self.offsets),
            "numels": list(self.numels),
            "n": self.n,
            "k": self.k,
            "selection": self.selection.name,
        }

    @classmethod
    def from_json(cls, obj: Mapping) -> "Group":
        return cls(
            id=int(obj["id"]),
            tensors=tuple(obj["tensors"]),
            offsets=tuple(int(x) for x in obj["offsets"]),
            numels=tuple(int(x) for x in obj["numels"]),
            k=int(obj["k"]),
            selection=parse_selection(obj["selection"], where=f"group {obj.get('id')}"),
        )


def build_groups(specs: Sequence[TensorSpec], plan: PruningPlan) -> list[Group]:
    """Resolve a plan into groups (one per tensor, or one global group)."""
    rates = plan.rates(specs)
    groups: list[Group] = []
    if plan.mode == "global":
        pruned = [s for s in specs if rates[s.name] > 0.0]
        k_total = sum(kept_count(s.numel, rates[s.name]) for s in pruned)
        global_added = False
        for s in specs:
            if rates[s.name] > 0.0:
                if not global_added:
                    offsets = tuple(int(x) for x in np.cumsum([0] + [p.numel for p in pruned[:-1]]))
                    groups.append(Group(len(groups), tuple(p.name for p in pruned), offsets, tuple(p.numel for p in pruned), k_total, MAGNITUDE))
                    global_added = True
                continue
            groups.append(Group(len(groups), (s.name,), (0,), (s.numel,), s.numel, ALL))
        return groups
    for s in specs:
        k = kept_count(s.numel, rates[s.name])
        selection = ALL if k == s.numel else parse_selection(plan.mode)
        groups.append(Group(len(groups), (s.name,), (0,), (s.numel,), k, selection))
    return groups


def group_arrays(g: Group, values: ValueCodec) -> dict[str, tuple[int, np.dtype, dict]]:
    """The rows arrays of a group: the value codec's, then ``indices`` if its selection stores them.

    Every array's attributes name the group's tensors (``tensors``), so a Zarr user can tell
    which tensor ``g0003/values`` holds. Stores written before carry the attributes without
    it (:func:`legacy_attributes`).
    """
    names = {"tensors": list(g.tensors)}
    out = {name: (cols, dt, {**attrs, **names}) for name, (cols, dt, attrs) in values.arrays(g.k).items()}
    if g.selection.stores_indices:
        out["indices"] = (g.k, np.dtype(g.index_dtype), {"order": "ascending", **names})
    return out


def legacy_attributes(attrs: dict) -> dict:
    """A rows array's attributes as stores written before arrays named their tensors have them."""
    return {k: v for k, v in attrs.items() if k != "tensors"}


@dataclass(frozen=True)
class Manifest:
    """Everything a reader needs, written once when the store is created."""

    tensors: tuple[TensorSpec, ...]
    groups: tuple[Group, ...]
    plan: PruningPlan
    mask_seed: int
    mask_pool: int
    value_dtype: str
    int8_block: int
    codec: str
    codec_level: int
    steps_per_shard: int
    sample_id_type: str
    format_version: int = FORMAT_VERSION
    created: str = ""
    writer: str = ""
    # {algorithm, scheme_version, key_id, store_id} of an encrypted store (deltastore.crypto); None: plain
    encryption: dict | None = None

    @property
    def key_id(self) -> str | None:
        """The id of the key an encrypted store needs (None for a plain store)."""
        return self.encryption["key_id"] if self.encryption else None

    @property
    def values(self) -> ValueCodec:
        """The value format's codec object."""
        return value_codec(self.value_dtype, self.int8_block)

    def arrays(self, g: Group) -> dict[str, tuple[int, np.dtype, dict]]:
        """Every rows array of group ``g``: name -> (columns, storage dtype, attributes)."""
        return group_arrays(g, self.values)

    def tensor(self, name: str) -> TensorSpec:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)

    def group_of(self, tensor_name: str) -> Group:
        for g in self.groups:
            if tensor_name in g.tensors:
                return g
        raise KeyError(tensor_name)

    @property
    def num_params(self) -> int:
        return sum(t.numel for t in self.tensors)

    @property
    def kept_per_step(self) -> int:
        return sum(g.k for g in self.groups)

    def to_json(self) -> dict:
        return {
            "format": FORMAT_NAME,
            "format_version": self.format_version,
            "tensors": [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype, "kind": t.kind, "numel": t.numel} for t in self.tensors],
            "groups": [g.to_json() for g in self.groups],
            "plan": self.plan.to_json(),
            "mask": {"algorithm": MASK_ALGORITHM, "seed": self.mask_seed, "pool": self.mask_pool},
            "values": {"dtype": self.value_dtype, "int8_block": self.int8_block},
            "codec": {"name": self.codec, "level": self.codec_level, "checksum": "crc32c"},
            "steps_per_shard": self.steps_per_shard,
            "sample_id_type": self.sample_id_type,
            "created": self.created,
            "writer": self.writer,
            **({"encryption": dict(self.encryption)} if self.encryption else {}),
        }

    @classmethod
    def from_json(cls, obj: Any, where: str = "manifest") -> "Manifest":
        if not isinstance(obj, Mapping) or obj.get("format") != FORMAT_NAME:
            raise CorruptStoreError(f"{where}: expected a deltastore manifest (format={FORMAT_NAME!r}), got {str(obj)[:200]!r}")
        version = obj.get("format_version")
        if not isinstance(version, int) or version < 1:
            raise CorruptStoreError(f"{where}: expected an integer format_version >= 1, got {version!r}")
        if version > ENCRYPTED_FORMAT_VERSION:
            raise FormatVersionError(
                f"{where}: store has format version {version}, this deltastore reads up to {FORMAT_VERSION}; upgrade deltastore"
            )
        try:
            mask = obj["mask"]
            if mask["algorithm"] != MASK_ALGORITHM:
                raise FormatVersionError(f"{where}: unknown mask algorithm {mask['algorithm']!r}, expected {MASK_ALGORITHM!r}")
            return cls(
                tensors=tuple(TensorSpec(t["name"], tuple(t["shape"]), t["dtype"], t["kind"]) for t in obj["tensors"]),
                groups=tuple(Group.from_json(g) for g in obj["groups"]),
                plan=PruningPlan.from_json(obj["plan"]),
                mask_seed=int(mask["seed"]),
                mask_pool=int(mask["pool"]),
                value_dtype=parse_value_dtype(obj["values"]["dtype"]),
                int8_block=int(obj["values"]["int8_block"]),
                codec=parse_codec(obj["codec"]["name"]),
                codec_level=int(obj["codec"]["level"]),
                steps_per_shard=int(obj["steps_per_shard"]),
                sample_id_type=str(obj["sample_id_type"]),
                format_version=version,
                created=str(obj.get("created", "")),
                writer=str(obj.get("writer", "")),
                encryption=_encryption(obj, version, where),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, FormatVersionError):
                raise
            raise CorruptStoreError(f"{where}: malformed manifest ({exc!r})") from exc

    def validate(self, where: str = "manifest") -> "Manifest":
        """Check every size and reference before anything is allocated from it.

        A manifest is untrusted input: crafted sizes must give an error, not a
        ZeroDivisionError, a MemoryError or a wrong subtraction.
        """
        def bad(msg: str):
            raise CorruptStoreError(f"{where}: {msg}")

        def count(value, what: str, lo: int, hi: int) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                bad(f"expected {what} in [{lo}, {hi}], got {value!r}")

        count(self.steps_per_shard, "steps_per_shard", 1, 2**20)
        count(self.mask_pool, "mask pool", 1, 2**16)
        count(self.int8_block, "int8_block", 1, 2**24)
        count(self.codec_level, "codec level", 0, 22)
        count(self.mask_seed, "mask seed", 0, 2**64 - 1)
        if self.sample_id_type not in ("int64", "string"):
            bad(f"expected sample_id_type 'int64' or 'string', got {self.sample_id_type!r}")
        specs = {}
        for t in self.tensors:
            if not isinstance(t.name, str) or not t.name or t.name in specs:
                bad(f"expected unique, non-empty tensor names, got {t.name!r}")
            if not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= 2**40 for d in t.shape) or len(t.shape) > 8:
                bad(f"tensor {t.name}: expected a shape of at most 8 sizes in [0, 2**40], got {list(t.shape)}")
            if t.kind not in ("parameter", "buffer"):
                bad(f"tensor {t.name}: expected kind 'parameter' or 'buffer', got {t.kind!r}")
            specs[t.name] = t
        seen: set[str] = set()
        for i, g in enumerate(self.groups):
            if g.id != i:
                bad(f"group {i}: expected id {i}, got {g.id}")
            if not g.tensors or len(g.offsets) != len(g.tensors) or len(g.numels) != len(g.tensors):
                bad(f"group {i}: expected as many offsets and numels as tensors")
            offset = 0
            for name, off, n in zip(g.tensors, g.offsets, g.numels):
                if name not in specs or name in seen:
                    bad(f"group {i}: expected tensors named once in the manifest's tensors, got {name!r}")
                if off != offset or n != specs[name].numel:
                    bad(f"group {i}, tensor {name}: expected offset {offset} and {specs[name].numel} elements, got {off} and {n}")
                offset += n
                seen.add(name)
            count(g.k, f"group {i} k", 0, g.n)
            if g.selection.name == "all" and g.k != g.n:
                bad(f"group {i}: a group that keeps every value has k = n = {g.n}, got k = {g.k}")
            if g.selection.name == "random" and len(g.tensors) != 1:
                bad(f"group {i}: a random group holds one tensor, got {len(g.tensors)}")
        if seen != set(specs):
            bad(f"expected every tensor in exactly one group; not grouped: {sorted(set(specs) - seen)[:5]}")
        return self


@dataclass(frozen=True)
class RootDigests:
    """What a commit record may pin of the root ``zarr.json`` (FORMAT.md §5).

    ``file_sha256``: of its bytes (commit version 2). ``manifest_sha256``: of the canonical
    JSON of ``attributes.deltastore`` (version 3, so the root may gain or lose its
    consolidated metadata, §2.1, without touching a digest). ``exact``: apart from
    ``consolidated_metadata`` the root is exactly the group with that one attribute
    (version 3 requires it: nothing else in the file is covered by a digest).
    """

    file_sha256: str
    manifest_sha256: str
    exact: bool


def _encryption(obj: Mapping, version: int, where: str) -> dict | None:
    """The manifest's ``encryption`` (checked), required exactly in version 2 stores."""
    enc = obj.get("encryption")
    if enc is None and version == ENCRYPTED_FORMAT_VERSION:  # a later format's version 2 stores, not ours
        raise FormatVersionError(f"{where}: store has format version {version} without encryption; this deltastore reads "
                                 f"version {ENCRYPTED_FORMAT_VERSION} only for encrypted stores; upgrade deltastore")
    if (enc is not None) != (version == ENCRYPTED_FORMAT_VERSION):
        raise CorruptStoreError(f"{where}: expected encryption exactly in format version {ENCRYPTED_FORMAT_VERSION} stores, "
                                f"got version {version} {'with' if enc is not None else 'without'} it")
    if enc is None:
        return None
    from ..crypto.io import parse_encryption  # no cryptography import: only the JSON is checked

    return parse_encryption(enc, where)


def read_manifest(io) -> tuple[Manifest, str]:
    """The manifest of the store behind ``io`` and its version-3 digest (what new commit records pin)."""
    manifest, digests = read_root(io)
    return manifest, digests.manifest_sha256


def read_root(io) -> tuple[Manifest, RootDigests]:
    """The manifest of the store behind ``io`` and the digests a commit record may pin (checked by
    :func:`~deltastore.format.commit.check_manifest_digest`). Consolidated metadata is not read."""
    where = io.where(GROUP_METADATA)
    expected = "Zarr v3 group metadata"
    try:
        raw = io.read(GROUP_METADATA)
    except FileNotFoundError:
        raise StoreNotFoundError(f"{io.url}: expected a deltastore store (zarr.json), found none") from None
    try:
        meta = json.loads(raw)
    except ValueError as exc:
        raise CorruptStoreError(f"{where}: expected {expected}, could not parse it ({exc})") from exc
    attrs = meta.get("attributes") if isinstance(meta, dict) and meta.get("node_type") == "group" and meta.get("zarr_format") == 3 else None
    if not isinstance(attrs, dict):
        raise CorruptStoreError(f"{where}: expected {expected} with attributes, got {str(meta)[:200]!r}")
    if MANIFEST_KEY not in attrs:
        raise CorruptStoreError(f"{io.url}: Zarr group without a {MANIFEST_KEY!r} manifest attribute; not a deltastore store")
    manifest = Manifest.from_json(attrs[MANIFEST_KEY], where=where).validate(where)
    rest = {k: v for k, v in meta.items() if k != CONSOLIDATED_KEY}
    exact = rest == group_metadata({MANIFEST_KEY: attrs[MANIFEST_KEY]})
    return manifest, RootDigests(sha256_of(raw), manifest_digest(attrs[MANIFEST_KEY]), exact)


def load_manifest(io) -> Manifest:
    """The manifest of the store behind ``io`` (a :class:`~deltastore.storage.StoreIO`)."""
    return read_manifest(io)[0]


def model_fingerprint(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes, in name order ("sha256:<hex>")."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        flat = t.contiguous().reshape(-1).cpu()
        h.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return "sha256:" + h.hexdigest()
