"""Which parts a reader uses at a commit counter, and the rule that they cover every committed step.

Two cases (FORMAT.md §6.2):

* **with digests** (the commit record lists every index object): the parts
  read are exactly those the record lists; each must be present, and those
  holding committed steps must tile ``[0, committed)``: contiguous, no gap,
  no overlap. A listed part the record does not name is ignored only when
  a crash can have left it (its range contains, or lies inside, a recorded
  part's range, or it starts at or after the counter); anything else is an
  error naming it.
* **without digests** (stores written before): the live parts of the
  listing (liveness rules of :func:`~deltastore.index.parts.list_index`)
  must leave no committed step uncovered; overlaps are tolerated (rows are a
  set, and no writer leaves them).

A gap is the one damage no checksum can see: a deleted part takes its
checksums with it. Absence is never data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import CorruptStoreError
from .digests import Digest
from .parts import Listing, PartRef, join_key, parse_part_name, parse_sidecar_name

__all__ = ["MissingIndexObjectError", "PlannedPart", "check_coverage", "plan_parts"]


class MissingIndexObjectError(CorruptStoreError):
    """An object the commit record lists is not in the store (a reader may re-read the record once)."""


@dataclass(frozen=True)
class PlannedPart:
    """One part a reader uses: its reference, digests (None without a commit record) and whether it has a sidecar."""

    ref: PartRef
    digest: Digest | None
    has_sidecar: bool
    sidecar_digest: Digest | None


def check_coverage(refs: list[PartRef], committed: int, where: str, *, exact: bool, orphans: list[str] = ()) -> None:
    """CorruptStoreError naming the first committed step range no part in ``refs`` covers.

    ``refs`` are the parts with ``first < committed``, sorted by ``first``.
    ``exact`` also refuses overlapping ranges. ``orphans`` (sidecars without
    their part) are named in the message when they cover the gap: they say
    which part went missing.
    """
    covered = 0
    for ref in refs:
        if ref.first > covered:
            _gap(covered, ref.first, committed, where, orphans)
        if exact and ref.first < covered:
            raise CorruptStoreError(
                f"Index at {where}: part {ref.name} overlaps the steps before {covered}; the parts of a "
                "commit record must not overlap.", step=ref.first,
            )
        covered = max(covered, ref.end)
    if covered < committed:
        _gap(covered, committed, committed, where, orphans)


def _gap(lo: int, hi: int, committed: int, where: str, orphans: list[str]) -> None:
    hints = []
    for name in orphans:
        part = parse_sidecar_name(name)
        rng = parse_part_name(part) if part else None
        if rng is not None and rng[0] < hi and lo < rng[1]:
            hints.append(f"{part} (its sidecar {name} is still there)")
    hint = f"; missing: {', '.join(hints)}" if hints else ""
    raise CorruptStoreError(
        f"Index at {where}: committed steps [{lo}, {hi}) are in no index part (expected parts covering "
        f"[0, {committed})){hint}.",
        step=lo,
    )


def plan_parts(
    listing: Listing, committed: int, prefix: str, where: str, digests: Mapping[str, Digest] | None
) -> list[PlannedPart]:
    """The parts holding committed steps that a reader must use, sorted by step, checked for coverage.

    ``digests`` maps store keys to digests (keys outside ``prefix`` are
    ignored); None reads a store written before digests.

    Raises
    ------
    CorruptStoreError
        A committed step range no part covers; with digests also a listed
        object missing (:class:`MissingIndexObjectError`), a record naming
        something that is not an index part or sidecar, overlapping recorded
        parts, or a part outside the record that no crash leaves.
    """
    if digests is None:
        refs = [r for r in listing.live if r.first < committed]
        check_coverage(refs, committed, where, exact=False, orphans=listing.orphans)
        return [PlannedPart(r, None, r.name in listing.sidecars, None) for r in refs]

    folder = prefix.strip("/")
    parts: dict[str, tuple[PartRef, Digest]] = {}
    sidecars: dict[str, Digest] = {}  # part name -> digest of its sidecar
    for key, digest in digests.items():
        head, _, name = key.rpartition("/")
        if head != folder:
            continue  # another folder's object: not the index's business
        rng = parse_part_name(name)
        if rng is not None:
            parts[name] = (PartRef(rng[0], rng[1], name, key), digest)
            continue
        part = parse_sidecar_name(name)
        if part is None:
            raise CorruptStoreError(f"Index at {where}: the commit record lists {name!r}, which is not an index part or sidecar name.")
        sidecars[part] = digest
    for part in sidecars:
        if part not in parts:
            raise CorruptStoreError(f"Index at {where}: the commit record lists a sidecar of {part} but not the part itself.")

    present = {r.name for r in listing.live + listing.dead}
    present_sidecars = set(listing.sidecars) | {parse_sidecar_name(n) for n in listing.orphans}
    missing = sorted(n for n in parts if n not in present)
    missing += sorted("_" + n[: -len(".parquet")] + ".ids" for n in sidecars if n not in present_sidecars)
    if missing:
        shown = ", ".join(join_key(prefix, n) for n in missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise MissingIndexObjectError(
            f"Index at {where}: {len(missing)} object(s) the commit record lists are missing: {shown}."
        )

    refs = sorted(ref for ref, _ in parts.values())
    visible = [r for r in refs if r.first < committed]
    check_coverage(visible, committed, where, exact=True)
    for extra in listing.live + listing.dead:
        if extra.name in parts or extra.first >= committed:
            continue  # recorded, or an uncommitted tail (a crash before the commit record)
        if not any(r.contains(extra) or extra.contains(r) for r in visible):
            raise CorruptStoreError(
                f"Index at {where}: part {extra.name} holds committed steps [{extra.first}, {min(extra.end, committed)}) "
                "but is not in the commit record, and no crash leaves such a part (its range neither contains nor "
                "lies inside a recorded part's).", step=extra.first,
            )
    return [PlannedPart(r, parts[r.name][1], r.name in sidecars, sidecars.get(r.name)) for r in visible]
