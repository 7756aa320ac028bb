"""The CLI's files: sample-id files and weight files in, weights and receipts out.

Models travel as safetensors files (or PyTorch files read with
``torch.load(weights_only=True)``): never pickle. Every input is checked before any
work (``load_weights``, ``load_sample_ids``, ``check_output_path``) and the error
names the flag, the file and what was expected. Outputs are written atomically
(temporary file, fsync, rename) and never overwrite anything.
"""

from __future__ import annotations

import json
import os
import re
import stat
import uuid
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from deltastore.errors import InvalidArgumentError, ModelMismatchError, SampleIdTypeError, StoreExistsError
from deltastore.storage.local import fsync_path
# An id file larger than this is refused before it is read: ids are parsed in memory
# (1 GiB of text is ~100 M ids, ten times the index size the project is sized for).
MAX_ID_FILE_BYTES = 1 << 30
SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pt", ".pth", ".bin")
WEIGHT_SUFFIXES = SAFETENSORS_SUFFIXES + TORCH_SUFFIXES
_INT64 = np.iinfo(np.int64)
_INT_TEXT = re.compile(r"[+-]?[0-9]+")  # ASCII digits only: int() would also take '١٢' or '1_000'



# ---- input files -------------------------------------------------------------------------
def _input_file(path: str | Path, flag: str, what: str, *, pipes: bool = False) -> tuple[Path, int | None]:
    """``path`` and its size (None for a pipe) if it is a readable file; else InvalidArgumentError."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise InvalidArgumentError(f"{flag}: expected {what}, {path} does not exist") from None
    except OSError as exc:
        raise InvalidArgumentError(f"{flag}: expected {what}, could not open {path} ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise InvalidArgumentError(f"{flag}: expected {what}, {path} is a directory")
    if stat.S_ISREG(st.st_mode):
        return path, st.st_size
    if pipes and stat.S_ISFIFO(st.st_mode):
        return path, None
    raise InvalidArgumentError(f"{flag}: expected {what}, {path} is not a regular file")


def _read_limited(path: Path, flag: str, limit: int) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)  # pipes have no size to check up front
    except OSError as exc:
        raise InvalidArgumentError(f"{flag}: could not read {path} ({exc.strerror or exc})") from None
    if len(data) > limit:
        raise InvalidArgumentError(f"{flag}: expected an id file of at most {limit:,} bytes, {path} is larger; split the request")
    return data


def _decode_utf8(data: bytes, path: Path, flag: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1)
        bad = data[exc.start:exc.end].hex(" ")
        raise InvalidArgumentError(
            f"{flag}: expected UTF-8 text in {path}, got byte(s) {bad} at line {line}, byte {col} of the line "
            f"(byte offset {exc.start} of the file) that are not UTF-8"
        ) from None
    return text[1:] if text.startswith("\ufeff") else text  # a byte-order mark from Windows editors


def _int_id(value: str, where: str, path: Path, flag: str) -> int:
    if not _INT_TEXT.fullmatch(value):
        raise SampleIdTypeError(f"{flag}: this store has integer sample ids, {path} {where} holds {value[:60]!r}")
    # Length first: int() refuses numbers of more than 4300 digits with a ValueError of its own.
    n = int(value) if len(value.lstrip("+-")) <= 20 else None
    if n is None or not _INT64.min <= n <= _INT64.max:
        shown = value if len(value) <= 40 else f"{value[:40]}... ({len(value)} digits)"
        raise SampleIdTypeError(f"{flag}: expected integer sample ids within int64, {path} {where} holds {shown}")
    return n


def _ids_from_text(data: bytes, path: Path, id_type: str, flag: str) -> list:
    text = _decode_utf8(data, path, flag)
    out = []
    for lineno, line in enumerate(text.split("\n"), 1):  # only \n ends a line (not \x0c, \u2028, ...)
        value = line.strip()
        if not value:
            continue
        out.append(_int_id(value, f"line {lineno}", path, flag) if id_type == "int64" else value)
    return out


def _ids_from_json(data: bytes, path: Path, id_type: str, flag: str) -> list:
    text = _decode_utf8(data, path, flag)
    try:
        values = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArgumentError(f"{flag}: expected a JSON list of ids in {path}, it is not JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    except ValueError:  # Python refuses integers of more than 4300 digits (sys.int_info.default_max_str_digits)
        raise SampleIdTypeError(f"{flag}: expected integers within int64 in the JSON list in {path}, got an integer of thousands of digits") from None
    except RecursionError:
        raise InvalidArgumentError(f"{flag}: expected a JSON list of ids in {path}, got lists nested too deeply to read") from None
    if not isinstance(values, list):
        raise InvalidArgumentError(f"{flag}: expected a JSON list of ids in {path}, got a JSON {_json_kind(values)}")
    for i, v in enumerate(values):
        if id_type == "int64":
            ok = isinstance(v, int) and not isinstance(v, bool) and _INT64.min <= v <= _INT64.max
            expected = "integers within int64"
        else:
            ok = isinstance(v, str)
            expected = "strings"
        if not ok:
            raise SampleIdTypeError(f"{flag}: this store has {id_type} sample ids, expected {expected} in the JSON list in {path}, "
                                    f"element {i} is a JSON {_json_kind(v)} ({json.dumps(v)[:60]})")
    return values


def _json_kind(v) -> str:
    if isinstance(v, bool) or v is None:
        return json.dumps(v)
    return {int: "integer", float: "number", str: "string", list: "list", dict: "object"}.get(type(v), type(v).__name__)


def _ids_from_npy(data: bytes, path: Path, id_type: str, flag: str) -> list:
    import io

    fmt = np.lib.format
    expected = "a 1-D .npy array of integers" if id_type == "int64" else "a 1-D .npy array of str (dtype <U)"
    buf = io.BytesIO(data)
    # Read the header ourselves and check it against the bytes that follow before making an
    # array: a header that lies about its shape must not become a huge allocation.
    try:
        version = fmt.read_magic(buf)
        if version == (1, 0):
            shape, _, dtype = fmt.read_array_header_1_0(buf)
        elif version == (2, 0):
            shape, _, dtype = fmt.read_array_header_2_0(buf)
        else:  # 3.0 exists only for structured dtypes with non-Latin-1 field names: never ids
            raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
    except Exception as exc:  # untrusted bytes: numpy raises ValueError, EOFError, SyntaxError... name the file either way
        raise InvalidArgumentError(f"{flag}: expected {expected}, {path} is not a readable .npy file ({_first_line(exc)})") from None
    if dtype.hasobject or dtype.kind not in ("iu" if id_type == "int64" else "U") or dtype.itemsize == 0:
        raise SampleIdTypeError(f"{flag}: this store has {id_type} sample ids, expected {expected}, {path} holds dtype {dtype}")
    if len(shape) != 1:
        raise InvalidArgumentError(f"{flag}: expected {expected}, {path} holds an array of shape {shape}")
    body = memoryview(data)[buf.tell():]
    need = shape[0] * dtype.itemsize
    if len(body) != need:
        raise InvalidArgumentError(f"{flag}: expected {need:,} bytes of data after the header of {path} ({shape[0]} x {dtype}), got {len(body):,}")
    arr = np.frombuffer(body, dtype=dtype, count=shape[0])
    if id_type == "int64":
        if arr.dtype.kind == "u" and arr.size and int(arr.max()) > _INT64.max:
            raise SampleIdTypeError(f"{flag}: expected integer sample ids within int64, {path} holds {int(arr.max())}")
        return arr.astype(np.int64).tolist()
    return arr.tolist()


def _first_line(exc: BaseException, limit: int = 200) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[:limit] + "..."


def load_sample_ids(path: str | Path, id_type: str, *, flag: str = "--samples"):
    """The ids in ``path`` for a store of ``id_type``, parsed and checked.

    Text (one id per line, UTF-8), ``.json`` (a list of ints or strings) or
    ``.npy`` (a 1-D integer or unicode array, read without pickle). Files over
    :data:`MAX_ID_FILE_BYTES` are refused. Returns a
    :class:`deltastore.index.SampleIds`; every error names ``flag`` and ``path``.
    """
    from deltastore.index import parse_sample_ids

    path, size = _input_file(path, flag, "a file of sample ids", pipes=True)
    if size is not None and size > MAX_ID_FILE_BYTES:
        raise InvalidArgumentError(f"{flag}: expected an id file of at most {MAX_ID_FILE_BYTES:,} bytes, {path} has {size:,}; split the request")
    data = _read_limited(path, flag, MAX_ID_FILE_BYTES)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        values = _ids_from_npy(data, path, id_type, flag)
    elif suffix == ".json":
        values = _ids_from_json(data, path, id_type, flag)
    else:
        values = _ids_from_text(data, path, id_type, flag)
    if not values:
        raise InvalidArgumentError(f"{flag}: expected at least one sample id, {path} holds none")
    try:
        return parse_sample_ids(values, id_type)
    except SampleIdTypeError as exc:
        raise SampleIdTypeError(f"{flag}: {path}: {exc}") from None


# ---- weights -------------------------------------------------------------------------------
def _torch_reason(exc: BaseException) -> str:
    """The useful part of torch.load's error: without its advice to retry with weights_only=False."""
    text = str(exc)
    if "Weights only load failed" in text:
        paras = [p.strip() for p in re.split(r"\n\s*\n", text)]
        keep = [p for p in paras if p and not p.startswith(("Weights only load failed", "Check the documentation", "Please file an issue"))]
        return " ".join(" ".join(keep).split())[:300] or "it holds objects other than tensors"
    return _first_line(exc)


def _load_safetensors(path: Path, flag: str) -> dict:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # SafetensorError for a bad header; others for dtypes torch lacks: name the file either way
        raise InvalidArgumentError(f"{flag}: expected a safetensors file, {path} could not be read: {_first_line(exc)}") from None


def _load_torch(path: Path, flag: str):
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)  # never anything that runs code
    except Exception as exc:  # UnpicklingError, RuntimeError, EOFError, KeyError, ... on untrusted bytes
        if "Weights only load failed" in str(exc):  # the file asks for more than tensors
            raise InvalidArgumentError(
                f"{flag}: expected a PyTorch weights file (a dict of tensors), {path} was refused by torch.load(weights_only=True): "
                f"{_torch_reason(exc).rstrip('.')}; it is never loaded any other way"
            ) from None
        reason = _torch_reason(exc) if str(exc).strip() else "the file ends too early"
        raise InvalidArgumentError(
            f"{flag}: expected a PyTorch weights file (a dict of tensors), {path} could not be read "
            f"({type(exc).__name__}: {reason}); is it damaged, or not a torch.save file?"
        ) from None


def load_weights(path: str | Path, *, flag: str = "--model") -> dict[str, torch.Tensor]:
    """A flat ``dict[str, Tensor]`` (dense CPU tensors) from a safetensors or PyTorch file.

    ``.pt``/``.pth``/``.bin`` files are read with ``torch.load(weights_only=True)``
    only. Anything else -- a missing file, a directory, a damaged file, a state
    dict holding a list, a nested checkpoint -- is an InvalidArgumentError naming
    ``flag``, the file and (where one is at fault) the key.
    """
    path, size = _input_file(path, flag, "a weights file (.safetensors, .pt, .pth or .bin)")
    suffix = path.suffix.lower()
    if suffix not in WEIGHT_SUFFIXES:
        raise InvalidArgumentError(f"{flag}: expected a weights file ending {', '.join(WEIGHT_SUFFIXES)}, got {path}")
    if size == 0:
        raise InvalidArgumentError(f"{flag}: expected a weights file, {path} is empty")
    obj = _load_safetensors(path, flag) if suffix in SAFETENSORS_SUFFIXES else _load_torch(path, flag)
    return _check_state_dict(obj, path, flag)


def _check_state_dict(obj, path: Path, flag: str) -> dict[str, torch.Tensor]:
    if not isinstance(obj, dict):
        raise InvalidArgumentError(f"{flag}: expected a flat dict of name -> tensor in {path}, got a {type(obj).__name__}")
    if not obj:
        raise InvalidArgumentError(f"{flag}: expected a dict of name -> tensor in {path}, it holds no tensors")
    for k, v in obj.items():
        if not isinstance(k, str):
            raise InvalidArgumentError(f"{flag}: expected tensor names (str) as keys in {path}, got the {type(k).__name__} key {k!r:.60}")
        if not isinstance(v, torch.Tensor):
            hint = " (a nested checkpoint? save its state_dict alone)" if isinstance(v, dict) else ""
            raise InvalidArgumentError(f"{flag}: expected a tensor under every key of {path}, key {k!r} holds a {type(v).__name__}{hint}")
        if v.layout != torch.strided or v.is_quantized:
            raise InvalidArgumentError(f"{flag}: expected dense tensors in {path}, key {k!r} is {v.layout}"
                                       f"{' quantized' if v.is_quantized else ''}; make it dense (.to_dense() / .dequantize()) before saving")
    return obj


def check_model(weights: dict[str, torch.Tensor], manifest, path: str | Path, *, flag: str = "--model") -> None:
    """ModelMismatchError naming each recorded tensor that is missing, not floating-point or of
    the wrong shape (checked before any store data is read)."""
    problems = []
    for t in manifest.tensors:
        v = weights.get(t.name)
        if v is None:
            problems.append(f"{t.name} is missing (expected {t.dtype} of shape {list(t.shape)})")
        elif not v.is_floating_point():
            problems.append(f"{t.name}: expected a floating-point tensor ({t.dtype} recorded), got {v.dtype}")
        elif tuple(v.shape) != tuple(t.shape):
            problems.append(f"{t.name}: expected shape {list(t.shape)}, got {list(v.shape)}")
    if problems:
        more = f"; and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise ModelMismatchError(f"{flag}: {path} does not match the store: " + "; ".join(problems[:10]) + more)


# ---- outputs ---------------------------------------------------------------------------------
def check_output_path(path: str | Path, flag: str, suffixes: tuple[str, ...] | None = None) -> Path:
    """``path`` if a new file can be created there: it does not exist, its directory does,
    and (with ``suffixes``) it has one of them. Checked before any work."""
    path = Path(path)
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise InvalidArgumentError(f"{flag}: expected a path ending {', '.join(suffixes)}, got {path}")
    if path.is_dir():
        raise StoreExistsError(f"{flag}: expected a new file path, {path} is a directory")
    if path.exists() or path.is_symlink():
        raise StoreExistsError(f"{flag}: {path} already exists; choose a new path (outputs are never overwritten)")
    parent = path.parent
    if not parent.exists():
        raise InvalidArgumentError(f"{flag}: expected an existing directory for {path}, {parent} does not exist")
    if not parent.is_dir():
        raise InvalidArgumentError(f"{flag}: expected an existing directory for {path}, {parent} is not a directory")
    return path


def _write_atomic(path: Path, write: Callable[[Path], None], flag: str) -> None:
    """Write through ``write(tmp)`` to a temporary file beside ``path``, fsync it, rename it into
    place and fsync the directory: a reader (or a crash) sees no file or the whole file."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    try:
        write(tmp)
        fsync_path(tmp)
        if path.exists() or path.is_symlink():  # appeared while we worked: still never overwritten
            raise StoreExistsError(f"{flag}: {path} appeared while the command ran; not overwritten")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, StoreExistsError):
            raise
        raise OSError(exc.errno, f"{flag}: could not write {path}: {exc.strerror or exc}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        fsync_path(path.parent)
    except OSError:  # some filesystems refuse to fsync a directory; the file itself is durable
        pass


def _cpu_tensors(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in weights.items()}
    # safetensors refuses tensors that share memory (tied weights): give each its own copy.
    owners: dict[int, int] = {}
    for v in cpu.values():
        if v.numel():
            ptr = v.untyped_storage().data_ptr()
            owners[ptr] = owners.get(ptr, 0) + 1
    return {k: v.clone() if v.numel() and owners[v.untyped_storage().data_ptr()] > 1 else v for k, v in cpu.items()}


def save_weights(weights: dict[str, torch.Tensor], path: str | Path, *, flag: str = "--out") -> None:
    """Write ``weights`` to a new file, atomically: safetensors for ``.safetensors``, else
    ``torch.save`` of a flat dict of tensors (readable with ``weights_only=True``).

    Raises StoreExistsError if ``path`` exists (never overwritten), InvalidArgumentError for a
    missing directory or an unknown suffix, OSError (naming ``flag``) when writing fails; a
    failed write leaves no file at ``path``.
    """
    path = check_output_path(path, flag, WEIGHT_SUFFIXES)
    cpu = _cpu_tensors(weights)
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        from safetensors.torch import save_file

        def write(tmp: Path) -> None:
            try:
                save_file(cpu, str(tmp))
            except OSError:
                raise
            except Exception as exc:  # safetensors reports I/O failures as SafetensorError
                raise OSError(None, _first_line(exc)) from exc
    else:

        def write(tmp: Path) -> None:
            with open(tmp, "xb") as f:
                torch.save(cpu, f)
                f.flush()

    _write_atomic(path, write, flag)


def write_receipt(receipt, path: str | Path, *, flag: str = "--receipt") -> None:
    """The receipt as JSON in a new file, written atomically."""
    data = (json.dumps(receipt.to_json(), indent=1) + "\n").encode()

    def write(tmp: Path) -> None:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()

    _write_atomic(check_output_path(path, flag), write, flag)
