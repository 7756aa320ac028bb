"""Consolidated metadata in the root ``zarr.json`` (FORMAT.md §2.1): for plain-Zarr readers only.

A store's root holds files that are not Zarr (``commit.json``, ``index/``, ``ledger/``,
``trained/``...). zarr-python lists the root to answer ``members()``, ``tree()``,
``arrays()`` or ``groups()`` and warns once per such entry, unless the root group carries
*consolidated metadata* (every child group's and array's metadata inline), which it then
uses instead of listing. So at ``close()`` the writer adds exactly what
``zarr.consolidate_metadata`` would write, with every array at ``committed_steps`` rows;
opening for append removes it before any array grows, so plain Zarr never sees stale
shapes. It is built with zarr's own metadata classes, never by hand (a test compares it
with ``zarr.consolidate_metadata``'s output).

deltastore itself never reads it: the reader checks each array's own ``zarr.json`` against
the manifest. The commit record (version 3) pins the manifest, not the root's bytes, so
adding or removing this part never touches what a digest covers; ``verify`` checks that
it is absent or equal to what the manifest and ``committed_steps`` imply.
"""

from __future__ import annotations

import json
from typing import Iterable

from ..errors import CorruptStoreError
from .commit import canonical, read_json, sha256_of
from .jsondiff import first_difference
from .layout import array_metadata, group_metadata

ROOT_METADATA = "zarr.json"
CONSOLIDATED_KEY = "consolidated_metadata"
MANIFEST_ATTRIBUTE = "deltastore"  # = manifest.MANIFEST_KEY (manifest.py imports this module's user, not the reverse)


def manifest_digest(manifest_json) -> str:
    """What a version-3 commit record pins: sha256 of the canonical JSON of ``attributes.deltastore``."""
    return sha256_of(canonical(manifest_json))


def node_metadata(manifest, rows: int, legacy: Iterable[str] = ()) -> dict[str, dict]:
    """Every group's and array's ``zarr.json`` content as the manifest implies it, arrays at ``rows`` rows.

    ``legacy``: paths of arrays written before arrays named their tensors (their
    attributes lack ``tensors``, FORMAT.md §3); they are described as they are.
    """
    legacy = set(legacy)
    out: dict[str, dict] = {}
    for g in manifest.groups:
        out[g.path] = group_metadata({"tensors": list(g.tensors), "selection": g.selection.name, "k": g.k})
        for name, (cols, dtype, attrs) in manifest.arrays(g).items():
            path = f"{g.path}/{name}"
            if path in legacy:
                attrs = {k: v for k, v in attrs.items() if k != "tensors"}
            out[path] = array_metadata(rows, cols, dtype, manifest.codec, manifest.codec_level, manifest.steps_per_shard, attrs)
    return out


def _consolidated(nodes: dict[str, dict]):
    """zarr's ConsolidatedMetadata of ``nodes``, as ``zarr.consolidate_metadata`` builds it.

    (Child groups get an empty ``consolidated_metadata`` of their own, as zarr writes them.)
    """
    from zarr.core.group import ConsolidatedMetadata

    flat = {path: ({**meta, CONSOLIDATED_KEY: {"kind": "inline", "must_understand": False, "metadata": {}}}
                   if meta.get("node_type") == "group" else meta) for path, meta in nodes.items()}
    return ConsolidatedMetadata.from_dict({"kind": "inline", "must_understand": False, "metadata": flat})


def consolidated_json(manifest, rows: int, legacy: Iterable[str] = ()) -> dict:
    """The JSON value of the root's ``consolidated_metadata`` for a store of ``rows`` committed steps (as parsed back)."""
    return json.loads(json.dumps(_consolidated(node_metadata(manifest, rows, legacy)).to_dict(), allow_nan=True))


def root_bytes(attributes: dict, consolidated=None) -> bytes:
    """The root ``zarr.json`` as zarr writes a group with ``attributes`` (and, if given, consolidated metadata)."""
    from zarr.core.buffer.core import default_buffer_prototype
    from zarr.core.group import GroupMetadata

    meta = GroupMetadata(attributes=attributes, consolidated_metadata=consolidated)
    return meta.to_buffer_dict(default_buffer_prototype())[ROOT_METADATA].to_bytes()


def _read_root(io, pin: str) -> dict:
    """The root's JSON, refused unless its manifest is the one the commit record pins (version 3)."""
    root = read_json(io, ROOT_METADATA, "Zarr v3 group metadata")
    attrs = root.get("attributes") if isinstance(root, dict) else None
    if not isinstance(attrs, dict) or MANIFEST_ATTRIBUTE not in attrs or manifest_digest(attrs[MANIFEST_ATTRIBUTE]) != pin:
        raise CorruptStoreError(f"{io.where(ROOT_METADATA)}: expected the manifest the commit record pins ({pin[:23]}...); "
                                "it changed while the store was open for writing")
    return root


def legacy_arrays(io, manifest) -> list[str]:
    """Every array path if the store's arrays predate their ``tensors`` attribute, else none.

    Arrays are all created with the store, by one version: the first one's metadata says.
    """
    paths = [f"{g.path}/{name}" for g in manifest.groups for name in manifest.arrays(g)]
    if not paths:
        return []
    own = read_json(io, f"{paths[0]}/zarr.json", "Zarr v3 array metadata")
    return paths if isinstance(own, dict) and "tensors" not in (own.get("attributes") or {}) else []


def consolidates(manifest) -> bool:
    """Whether close writes consolidated metadata: not for encrypted stores (FORMAT.md §12).

    Their arrays name a codec plain Zarr does not know, on purpose; inlined in the root, it
    would make plain Zarr refuse to open even the root group.
    """
    return not getattr(manifest, "encryption", None)


def write_consolidated(io, manifest, rows: int, pin: str, *, fsync: bool) -> int:
    """Replace the root ``zarr.json`` by the same group plus consolidated metadata (at close). Returns its size
    (0: nothing written, an encrypted store).

    Only the part no digest covers changes: the manifest attribute is kept as stored
    (checked against ``pin``, the record's version-3 manifest digest).
    """
    if not consolidates(manifest):
        return 0
    root = _read_root(io, pin)
    data = root_bytes(root["attributes"], _consolidated(node_metadata(manifest, rows, legacy_arrays(io, manifest))))
    io.write(ROOT_METADATA, data, fsync=fsync)
    return len(data)


def remove_consolidated(io, pin: str, *, fsync: bool) -> bool:
    """Drop the root's consolidated metadata, if any (opening for append, before any array grows)."""
    root = _read_root(io, pin)
    if CONSOLIDATED_KEY not in root:
        return False
    io.write(ROOT_METADATA, root_bytes(root["attributes"]), fsync=fsync)
    return True


def consolidated_problems(io, manifest, committed_steps: int) -> list[str]:
    """What ``verify`` reports about the root's consolidated metadata: nothing when absent or exact.

    Exact means equal to what the manifest implies with every array at ``committed_steps``
    rows (arrays written before arrays named their tensors described without ``tensors``).
    """
    where = io.where(ROOT_METADATA)
    try:
        root = json.loads(io.read(ROOT_METADATA))
    except (OSError, ValueError) as exc:
        return [f"{where}: unreadable ({exc})"]
    if not isinstance(root, dict) or CONSOLIDATED_KEY not in root:
        return []
    if not consolidates(manifest):
        return [f"{where}: expected no consolidated metadata in an encrypted store, found some (plain Zarr would refuse the root)"]
    legacy = []
    for g in manifest.groups:
        for name in manifest.arrays(g):
            path = f"{g.path}/{name}"
            try:
                own = read_json(io, f"{path}/zarr.json", "Zarr v3 array metadata")
            except Exception as exc:  # the reader already reported it; say why this check is incomplete
                return [f"{where}: consolidated metadata not checked: {path}/zarr.json unreadable ({exc})"]
            if isinstance(own, dict) and "tensors" not in (own.get("attributes") or {}):
                legacy.append(path)
    expected = consolidated_json(manifest, committed_steps, legacy)
    got = root[CONSOLIDATED_KEY]
    if got == expected:
        return []
    return [f"{where}: expected consolidated metadata describing {committed_steps} committed steps as the manifest "
            f"implies (or none), got {first_difference(expected, got)} (plain-Zarr readers would see wrong metadata; "
            "deltastore does not use it: reopen with mode='a' and close to rewrite it)"]
