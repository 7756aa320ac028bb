"""The sample index: which training samples were in which optimizer step.

Rows ``(sample_id, step, epoch)`` live in append-only Parquet parts under
``<store>/index/``, each with a small sidecar of its ids sorted for lookups.
:class:`IndexWriter` writes, truncates and compacts them; :class:`SampleIndex`
reads them at a committed step count. Layout, rules and measurements:
docs/INDEX.md; byte format: docs/FORMAT.md.
"""

from __future__ import annotations

from .ids import ID_TYPES, SampleIds, hash_strings, parse_sample_ids
from .lookup import SampleIndex
from .parts import INDEX_VERSION, PartRef, index_schema, list_index, parse_part_name, part_name
from .writer import STORE_SIDECAR_MIN_ROWS, IndexWriter

__all__ = [
    "ID_TYPES",
    "INDEX_VERSION",
    "IndexWriter",
    "PartRef",
    "STORE_SIDECAR_MIN_ROWS",
    "SampleIds",
    "SampleIndex",
    "hash_strings",
    "index_schema",
    "list_index",
    "parse_part_name",
    "parse_sample_ids",
    "part_name",
]
