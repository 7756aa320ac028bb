"""The trained weights (FORMAT.md §5.1): every recorded tensor, in its own dtype, written at close.

Why keep them: forgetting derives every model from them, W(live) = W_trained −
Σ_{s ∈ steps(live requests)} u_s with a fixed summation order, so the model is a
function of the set of live requests, bit for bit, and undoing every request gives
the trained model back exactly (float addition is not invertible: w − u + u ≠ w).

The file is safetensors (no pickle; readable by any safetensors reader) under a fresh
name per close, ``trained/model-<12 hex>.safetensors``; the commit record names it
with its size and sha256, so a crash between writing a new file and committing leaves
the old reference valid, and a flipped byte is an error naming the file.
"""

from __future__ import annotations

import re
import uuid
from typing import Mapping

import torch

from ..errors import CorruptStoreError
from .commit import sha256_of

TRAINED_DIR = "trained"
_KEY = re.compile(r"^trained/model-[0-9a-f]{12}\.safetensors$")


def trained_key() -> str:
    """A fresh key for the trained weights of one close."""
    return f"{TRAINED_DIR}/model-{uuid.uuid4().hex[:12]}.safetensors"


def encode_trained(tensors: Mapping[str, torch.Tensor]) -> bytes:
    """safetensors bytes of ``tensors`` (copied to the CPU, contiguous, no shared storage)."""
    from safetensors.torch import save

    cpu = {name: t.detach().to("cpu", copy=True).contiguous() for name, t in tensors.items()}
    return save(cpu, metadata={"format": "deltastore-trained-weights"})


def write_trained(io, tensors: Mapping[str, torch.Tensor], *, fsync: bool) -> dict:
    """Write the trained weights under a new key; returns the commit record's ``trained`` reference."""
    data = encode_trained(tensors)
    key = trained_key()
    io.write(key, data, fsync=fsync)
    return {"key": key, "size": len(data), "sha256": sha256_of(data)}


def delete_stale_trained(io, keep: str | None) -> None:
    """Remove trained-weight files other than ``keep`` (left by an earlier close or a crash)."""
    for name in io.list_dir(TRAINED_DIR):
        key = f"{TRAINED_DIR}/{name}"
        if key != keep and _KEY.match(key):
            io.delete(key)


def has_trained(commit: dict) -> bool:
    """Whether the commit record references trained weights (stores closed since they were added)."""
    return isinstance(commit, dict) and commit.get("trained") is not None


def read_trained(io, commit: dict, manifest) -> dict[str, torch.Tensor]:
    """The trained weights the commit record references, checked, as CPU tensors by name.

    Raises CorruptStoreError naming the file when the reference is malformed, the file is
    missing, its size or sha256 differ, it does not hold exactly the manifest's tensors
    (names, dtypes, shapes), or their fingerprint is not the record's ``model_fingerprint``.
    """
    from safetensors.torch import load

    from .manifest import model_fingerprint

    ref = commit.get("trained")
    where = io.where("commit.json")
    if not isinstance(ref, dict) or not isinstance(ref.get("key"), str) or not _KEY.match(ref["key"]) \
            or not isinstance(ref.get("size"), int) or isinstance(ref.get("size"), bool) or not isinstance(ref.get("sha256"), str):
        raise CorruptStoreError(f"{where}: expected trained = {{key: 'trained/model-<12 hex>.safetensors', size, sha256}}, got {str(ref)[:200]!r}")
    key = ref["key"]
    try:
        size = io.size(key)
    except FileNotFoundError:
        raise CorruptStoreError(f"{io.where(key)}: expected the trained weights the commit record names, the file is missing") from None
    if size != ref["size"]:
        raise CorruptStoreError(f"{io.where(key)}: expected {ref['size']:,} bytes of trained weights, got {size:,} (truncated or replaced)")
    data = io.read(key)
    if sha256_of(data) != ref["sha256"]:
        raise CorruptStoreError(f"{io.where(key)}: expected bytes hashing to {ref['sha256'][:23]}..., they do not (damaged or edited)")
    try:
        tensors = load(data)
    except Exception as exc:  # checksummed bytes that safetensors refuses: written by something else
        raise CorruptStoreError(f"{io.where(key)}: expected a safetensors file of trained weights, could not read it ({exc})") from None
    expected = {t.name: t for t in manifest.tensors}
    if set(tensors) != set(expected):
        missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        raise CorruptStoreError(f"{io.where(key)}: expected the manifest's tensors, missing {missing[:5]}, unexpected {extra[:5]}")
    for name, spec in expected.items():
        t = tensors[name]
        if str(t.dtype).replace("torch.", "") != spec.dtype or tuple(t.shape) != tuple(spec.shape):
            raise CorruptStoreError(f"{io.where(key)}: tensor {name}: expected {spec.dtype}{list(spec.shape)}, got "
                                    f"{str(t.dtype).replace('torch.', '')}{list(t.shape)}")
    fp = commit.get("model_fingerprint")
    if fp is None or model_fingerprint(tensors) != fp:
        raise CorruptStoreError(f"{io.where(key)}: expected trained weights with the commit record's fingerprint {str(fp)[:23]}..., they differ")
    return tensors
