"""The sample index: which training samples were in which optimizer step.

Rows ``(sample_id, step, epoch)`` live in append-only Parquet parts under
``<store>/index/``, each with a small sidecar of its ids sorted for lookups.
:class:`IndexWriter` writes, truncates and compacts them; :class:`SampleIndex`
reads them at a committed step count. Every object's :class:`Digest`
(size and CRC-32C) goes into the store's commit record and is checked before
a reader uses the object; the parts must cover every committed step. Layout,
rules and measurements: docs/INDEX.md; byte format: docs/FORMAT.md §6.
"""

from __future__ import annotations

from .coverage import MissingIndexObjectError
from .digests import Digest, DigestMap, digest_of, digests_from_json, digests_to_json
from .ids import ID_TYPES, SampleIds, hash_strings, parse_sample_ids
from .lookup import SampleIndex
from .parts import INDEX_VERSION, PartRef, index_schema, list_index, parse_part_name, part_name
from .writer import STORE_SIDECAR_MIN_ROWS, IndexWriter

__all__ = [
    "Digest",
    "DigestMap",
    "ID_TYPES",
    "INDEX_VERSION",
    "IndexWriter",
    "MissingIndexObjectError",
    "PartRef",
    "STORE_SIDECAR_MIN_ROWS",
    "SampleIds",
    "SampleIndex",
    "digest_of",
    "digests_from_json",
    "digests_to_json",
    "hash_strings",
    "index_schema",
    "list_index",
    "parse_part_name",
    "parse_sample_ids",
    "part_name",
]
