"""Sample ids: the two id types, parsing user input once at the edge, hashing string ids."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import InvalidArgumentError, SampleIdTypeError

__all__ = ["ID_TYPES", "SampleIds", "check_id_type", "hash_strings", "parse_sample_ids", "unique_int"]

ID_TYPES = ("int64", "string")


def check_id_type(id_type: str) -> str:
    """``id_type`` if it is one of :data:`ID_TYPES`, else InvalidArgumentError."""
    if id_type not in ID_TYPES:
        raise InvalidArgumentError(f"Expected an id type in {ID_TYPES}. Got {id_type!r} instead.")
    return id_type


@dataclass(frozen=True, eq=False)
class SampleIds:
    """Sample ids already checked for one id type: what :func:`parse_sample_ids` returns.

    The index takes a ``SampleIds`` as it is (no second parse); raw user input
    is parsed first. Build one with :func:`parse_sample_ids` (or
    :meth:`concat`), not directly: the constructor checks only the container.

    Attributes
    ----------
    id_type
        ``"int64"`` or ``"string"``.
    values
        A read-only 1-D ``int64`` array owned by this object, or a tuple of
        ``str``. Order and duplicates are the caller's.
    """

    id_type: str
    values: np.ndarray | tuple[str, ...]
    _cache: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        check_id_type(self.id_type)
        if self.id_type == "int64":
            v = self.values
            if not (isinstance(v, np.ndarray) and v.dtype == np.int64 and v.ndim == 1 and not v.flags.writeable):
                raise SampleIdTypeError("Expected a read-only 1-D int64 array in SampleIds; build it with parse_sample_ids.")
        elif not isinstance(self.values, tuple):
            raise SampleIdTypeError("Expected a tuple of str in SampleIds; build it with parse_sample_ids.")

    def __len__(self) -> int:
        return len(self.values)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.values)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        # np.concatenate(list_of_ids) keeps working for callers that merge batches.
        out = self.values if isinstance(self.values, np.ndarray) else np.array(self.values, dtype=object)
        return out.astype(dtype) if dtype is not None else (out.copy() if copy else out)

    def __repr__(self) -> str:
        shown = self.tolist()
        more = f", ... {len(shown) - 6} more" if len(shown) > 6 else ""
        return f"SampleIds({self.id_type!r}, [{', '.join(map(repr, shown[:6]))}{more}])"

    def tolist(self) -> list:
        """The ids as Python ints or str, in the caller's order."""
        return self.values.tolist() if isinstance(self.values, np.ndarray) else list(self.values)

    def unique(self) -> np.ndarray | tuple[str, ...]:
        """Sorted distinct ids (int64 array, or tuple of str in code-point order); computed once."""
        out = self._cache.get("unique")
        if out is None:
            out = unique_int(self.values) if isinstance(self.values, np.ndarray) else tuple(sorted(set(self.values)))
            self._cache["unique"] = out
        return out

    @classmethod
    def concat(cls, parts: Sequence[SampleIds]) -> SampleIds:
        """The ids of several batches of one id type, in order (no re-parse)."""
        if not parts:
            raise InvalidArgumentError("Expected at least one SampleIds to concatenate. Got none.")
        id_type = parts[0].id_type
        if any(p.id_type != id_type for p in parts):
            raise SampleIdTypeError(f"Expected SampleIds of one id type. Got {sorted({p.id_type for p in parts})}.")
        if id_type == "int64":
            return _int_ids(np.concatenate([p.values for p in parts]))
        return cls(id_type, tuple(s for p in parts for s in p.values))


def _int_ids(arr: np.ndarray) -> SampleIds:
    arr = np.array(arr, dtype=np.int64, copy=True)  # owned: the caller may reuse its buffer
    arr.setflags(write=False)
    return SampleIds("int64", arr)


def _type_names(types: Iterable[type]) -> str:
    names = sorted({t.__name__ for t in types})
    if len(names) == 1:
        return names[0]
    return "a mix of " + ", ".join(names[:-1]) + " and " + names[-1]


def _is_int_type(t: type) -> bool:
    # bool is an int subclass in Python: a bool id is almost surely a mask passed by mistake.
    return (t is int or issubclass(t, np.integer)) and not issubclass(t, (bool, np.bool_))


def _torch_tensor(ids: Any):
    torch = sys.modules.get("torch")  # no import: ids can only be a tensor if torch is loaded
    if torch is not None and isinstance(ids, torch.Tensor):
        return torch
    return None


def parse_sample_ids(ids: Any, id_type: str) -> SampleIds:
    """Check and normalise a sequence of sample ids for a store of ``id_type``.

    Parameters
    ----------
    ids
        For ``"int64"``: a list/tuple/range/iterable of Python or NumPy
        integers, a 1-D integer NumPy array, torch tensor (any device) or
        pyarrow array. For ``"string"``: a sequence of ``str``, a 1-D NumPy
        str/object array or a pyarrow string array. A :class:`SampleIds` of
        the same type is returned as it is.
    id_type
        ``"int64"`` or ``"string"``.

    Returns
    -------
    SampleIds
        The ids (a read-only int64 copy, or a tuple of ``str``); order and
        duplicates are kept; an empty input is allowed.

    Raises
    ------
    SampleIdTypeError
        Ids of the wrong type (floats, bools, mixed types, strings for an
        integer store, integers for a string store, values outside int64).

    Examples
    --------
    >>> parse_sample_ids([3, 1, 2], "int64").tolist()
    [3, 1, 2]
    >>> parse_sample_ids(("a", "b"), "string").values
    ('a', 'b')
    """
    check_id_type(id_type)
    if isinstance(ids, SampleIds):
        if ids.id_type != id_type:
            raise SampleIdTypeError(f"Expected {id_type} sample ids. Got SampleIds of {ids.id_type}.")
        return ids
    if isinstance(ids, (str, bytes)) or not isinstance(ids, (Iterable, pa.Array, pa.ChunkedArray)):
        expected = "a sequence of int64 integers" if id_type == "int64" else "a sequence of str"
        raise SampleIdTypeError(
            f"Expected {expected} as sample ids. Got a single {type(ids).__name__} "
            f"({ids!r:.40}); wrap it in a list."
        )
    if id_type == "int64":
        return _int_ids(_parse_int_ids(ids))
    return SampleIds("string", _parse_str_ids(ids))


def _parse_int_ids(ids: Any) -> np.ndarray:
    expected = "int64 sample ids (integers)"
    torch = _torch_tensor(ids)
    if torch is not None:
        if ids.dtype == torch.bool or ids.is_floating_point() or ids.is_complex():
            raise SampleIdTypeError(f"Expected {expected}. Got a torch tensor of {ids.dtype}.")
        ids = ids.detach().to("cpu").numpy()
    elif isinstance(ids, (pa.Array, pa.ChunkedArray)):
        if not pa.types.is_integer(ids.type):
            raise SampleIdTypeError(f"Expected {expected}. Got a pyarrow array of {ids.type}.")
        if ids.null_count:
            raise SampleIdTypeError(f"Expected {expected}. Got a pyarrow array with {ids.null_count} nulls.")
        ids = ids.to_numpy()
    elif isinstance(ids, range):
        return np.arange(ids.start, ids.stop, ids.step, dtype=np.int64)
    elif not isinstance(ids, np.ndarray):
        seq = ids if isinstance(ids, (list, tuple)) else list(ids)
        types = set(map(type, seq))
        if not all(_is_int_type(t) for t in types):
            raise SampleIdTypeError(f"Expected {expected}. Got {_type_names(types)}.")
        try:
            return np.array(seq, dtype=np.int64).reshape(-1)
        except OverflowError:
            raise SampleIdTypeError(f"Expected {expected}. Got an integer outside the int64 range.") from None
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise SampleIdTypeError(f"Expected a 1-D array of {expected}. Got an array of shape {arr.shape}.")
    if arr.dtype.kind == "O":
        return _parse_int_ids(arr.tolist())
    if arr.dtype.kind not in "iu":
        raise SampleIdTypeError(f"Expected {expected}. Got an array of {arr.dtype}.")
    if arr.dtype == np.uint64 and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
        raise SampleIdTypeError(f"Expected {expected}. Got a uint64 value above the int64 range.")
    return arr


def _parse_str_ids(ids: Any) -> tuple[str, ...]:
    expected = "string sample ids (str)"
    if _torch_tensor(ids) is not None:
        raise SampleIdTypeError(f"Expected {expected}. Got a torch tensor of {ids.dtype}.")
    if isinstance(ids, (pa.Array, pa.ChunkedArray)):
        if not (pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type)):
            raise SampleIdTypeError(f"Expected {expected}. Got a pyarrow array of {ids.type}.")
        if ids.null_count:
            raise SampleIdTypeError(f"Expected {expected}. Got a pyarrow array with {ids.null_count} nulls.")
        return tuple(ids.to_pylist())
    if isinstance(ids, np.ndarray):
        if ids.ndim != 1:
            raise SampleIdTypeError(f"Expected a 1-D array of {expected}. Got an array of shape {ids.shape}.")
        if ids.dtype.kind not in "UOT":
            raise SampleIdTypeError(f"Expected {expected}. Got an array of {ids.dtype}.")
        ids = ids.tolist()
    seq = ids if isinstance(ids, (list, tuple)) else list(ids)
    types = set(map(type, seq))
    if not all(issubclass(t, str) for t in types):
        raise SampleIdTypeError(f"Expected {expected}. Got {_type_names(types)}.")
    out = tuple(str(s) for s in seq) if types - {str} else tuple(seq)  # np.str_ -> str
    try:
        "".join(out).encode("utf-8")  # Parquet strings are UTF-8: a lone surrogate cannot be stored
    except UnicodeEncodeError as exc:
        raise SampleIdTypeError(f"Expected {expected} that are valid Unicode. Got {exc.reason}.") from None
    return out


def unique_int(a: np.ndarray) -> np.ndarray:
    """Sorted distinct values (numpy 2's hash-based ``np.unique`` is ~10x slower on this)."""
    a = np.sort(a)
    if len(a) > 1:
        a = a[np.r_[True, a[1:] != a[:-1]]]
    return a


def hash_strings(strings: Iterable[str]) -> np.ndarray:
    """The 64-bit key of each string id: BLAKE2b with an 8-byte digest of its UTF-8 bytes.

    The digest is read as a little-endian ``uint64``. BLAKE2b's parameter
    block carries the digest length, so this is *not* a truncated
    BLAKE2b-512; any BLAKE2b implementation with ``outlen = 8`` gives the
    same keys (the format depends on it: docs/FORMAT.md, sample index).

    Examples
    --------
    >>> hex(int(hash_strings(["a"])[0]))
    '0x2f42665b399ef840'
    """
    blake = hashlib.blake2b
    digests = b"".join([blake(s.encode("utf-8"), digest_size=8).digest() for s in strings])
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64, copy=False)
