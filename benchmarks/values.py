"""Value formats measured on real updates: int4 against int8, rounding, block size, entropy coding.

``python -m benchmarks values [--quick]``. Each model is trained once with one float32
recorder at the paper's schedule (random masks), so the kept values of every step are
the exact float32 updates; each value format is then applied to those same rows.

* ``sum_error``: ``||Σ_t decode(encode(u_t)) - Σ_t u_t|| / ||Σ_t u_t||`` over the
  recorded tensors (rows scattered to their mask positions), after the first T steps
  for several T, for int8 (round to nearest), int4 with stochastic rounding (the
  store's rule) and int4 rounded to nearest. An unbiased error is a random walk and
  adds up like a random walk, a bias like T: ``coherence`` = ||Σ_t e_t||² / Σ_t ||e_t||²
  is ~1 for errors that are independent with mean zero and up to T for a bias.
* ``blocks``: int4 per-step error and bytes per kept value (codes + scales, Blosc-lz4
  bit shuffle in the store's 4 KiB inner chunks) for several scale blocks.
* ``entropy``: bits per kept value of the int8 and int4 codes under the store's codec and
  alternatives (Blosc-zstd, zstd levels, an order-0 rANS coder from ``constriction`` with
  a per-row frequency table whose cost is counted), their encode/decode time per value,
  and the order-0 entropy of the codes (the bound for any coder that treats values as
  independent). Scales are float32, 32 / B bits per value, and are added to every figure.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from deltastore.format import Int4Codec, Int8Codec, chunk_layout
from deltastore.format.int4 import rounding_key
from deltastore.format.layout import numcodecs_compressor
from deltastore.masks import MaskGenerator
from deltastore.plan import PruningPlan
from deltastore.read import StoreReader
from deltastore.record import Recorder
from unlearning.data import load_digits_split, synthetic_images
from unlearning.models import build_model
from unlearning.training import make_batches, train

from .common import print_table

__all__ = ["run", "record_updates", "sum_error", "block_sweep", "entropy_sweep"]

FULL = {
    # 12 epochs of digits in batches of 128: 132 steps (the issue asks for 100+).
    "mlp": {"data": "digits", "epochs": 12, "batch": 128, "entropy_steps": 32},
    "lenet": {"data": "digits", "epochs": 12, "batch": 128, "entropy_steps": 32},
    "resnet18": {"data": "synthetic", "shape": (3, 16, 16), "n_train": 128, "n_test": 32, "epochs": 1, "batch": 32,
                 "entropy_steps": 4, "sum_error": False},
}
QUICK = {
    "mlp": {"data": "digits", "epochs": 2, "batch": 128, "entropy_steps": 4},
    "lenet": {"data": "digits", "epochs": 1, "batch": 256, "entropy_steps": 2},
}
BLOCKS = (16, 32, 64, 128, 256)


# ---- the updates --------------------------------------------------------------------
def record_updates(name: str, spec: dict, folder: Path, seed: int = 0) -> StoreReader:
    """Train ``name`` with one float32 paper-schedule recorder; the store's reader."""
    if spec["data"] == "digits":
        data = load_digits_split(seed=seed)
    else:
        data = synthetic_images(spec["n_train"], spec["n_test"], shape=tuple(spec["shape"]), seed=seed)
    model = build_model(name, in_shape=data.in_shape, num_classes=data.num_classes, seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = make_batches(data.y_train, batch_size=spec["batch"], epochs=spec["epochs"], seed=seed)
    rec = Recorder(folder, model, opt, plan=PruningPlan.layerwise(mode="random"), value_dtype="float32")
    try:
        train(model, data, epochs=len(batches), batch_size=spec["batch"], optimizer=opt, recorder=rec, batches=batches, seed=seed)
    finally:
        rec.close()
    return StoreReader(folder)


def _rows(reader: StoreReader, steps: int) -> dict[int, np.ndarray]:
    """float32 kept values (steps, k) per group, parameters only (the format applies to them alike)."""
    out = {}
    for g in reader.manifest.groups:
        vals, _ = reader.read_rows(g.id, list(range(steps)))
        out[g.id] = vals.numpy()
    return out


def _formats(block4: int = 64) -> dict:
    i8, i4 = Int8Codec(256), Int4Codec(block4)

    def int8(v, step, gid):
        return i8.dequantize(*i8.quantize(v))

    def int4(v, step, gid):
        return i4.dequantize(*i4.quantize(v, rounding_key(0, step, gid)))

    def int4_nearest(v, step, gid):
        return i4.dequantize(*i4.quantize(v, 0, nearest=True))

    return {"int8": int8, "int4": int4, "int4-nearest": int4_nearest}


# ---- Σ error over many steps ------------------------------------------------------------
def sum_error(reader: StoreReader, checkpoints=(1, 10, 100)) -> list[dict]:
    """Relative error of the summed decoded updates against the summed float32 updates."""
    m = reader.manifest
    total = reader.committed_steps
    marks = sorted({t for t in checkpoints if t <= total} | {total})
    masks = MaskGenerator(m.mask_seed, m.mask_pool)
    formats = _formats()
    ref = {g.id: np.zeros(g.n) for g in m.groups}
    acc = {f: {g.id: np.zeros(g.n) for g in m.groups} for f in formats}
    found: dict[str, dict[int, float]] = {f: {} for f in formats}
    incoherent = dict.fromkeys(formats, 0.0)  # Σ_t ||e_t||^2: what ||Σ_t e_t||^2 is for independent zero-mean errors
    coherence: dict[str, float] = {}
    for step in range(total):
        for g in m.groups:
            v, idx = reader.read_rows(g.id, [step])
            v = v[0]
            if g.selection.name == "random":
                pos = masks.positions_np(step, g.id, g.n, g.k)
            elif idx is not None:
                pos = idx[0].numpy()
            else:
                pos = slice(None)
            # positions within one step are distinct: a fancy-indexed += adds each value once
            ref[g.id][pos] += v.double().numpy()
            for f, fn in formats.items():
                d = fn(v, step, g.id).double().numpy()
                acc[f][g.id][pos] += d
                incoherent[f] += float(((d - v.double().numpy()) ** 2).sum())
        if step + 1 in marks:
            r = np.concatenate(list(ref.values()))
            for f in formats:
                e = np.concatenate(list(acc[f].values())) - r
                found[f][step + 1] = float(np.linalg.norm(e))
                coherence[f] = float(e @ e) / max(incoherent[f], 1e-300)
            found.setdefault("_ref", {})[step + 1] = float(np.linalg.norm(r))
    rows = []
    for f in formats:
        row = {"format": f, "steps": total}
        for t in marks:
            row[f"rel_err_T{t}"] = found[f][t] / max(found["_ref"][t], 1e-30)
            row[f"abs_err_T{t}"] = found[f][t]
        # ||Σ e||^2 / Σ ||e||^2 after all steps: ~1 when the errors of different steps are
        # independent with mean zero (unbiased); up to T when every step errs the same way.
        row["coherence"] = coherence[f]
        rows.append(row)
    return rows


# ---- block size ---------------------------------------------------------------------------
def _chunked_bytes(data: np.ndarray, codec: str, level: int) -> int:
    """Bytes of the (steps, cols) uint8/float32 rows in the store's inner-chunk layout, + crc32c each."""
    item = data.dtype.itemsize
    (r, c), _ = chunk_layout(data.shape[1], item, 64)
    comp = numcodecs_compressor(codec, level, item)
    total = 0
    for i in range(0, data.shape[0], r):
        for j in range(0, data.shape[1], c):
            chunk = np.ascontiguousarray(data[i : i + r, j : j + c])
            total += (len(comp.encode(chunk)) if comp is not None else chunk.nbytes) + 4
    return total


def block_sweep(rows: dict[int, np.ndarray], blocks=BLOCKS) -> list[dict]:
    out = []
    kept = sum(v.size for v in rows.values())
    for b in blocks:
        codec = Int4Codec(b)
        err2 = ref2 = 0.0
        code_bytes = scale_bytes = 0
        for gid, vals in rows.items():
            packed, scales = [], []
            for s in range(vals.shape[0]):
                v = torch.from_numpy(vals[s])
                codes, sc = codec._offset_codes(v, rounding_key(0, s, gid))
                dec = codec.dequantize(codes.to(torch.int8) - 8, sc)
                err2 += float(((dec - v).double() ** 2).sum())
                ref2 += float((v.double() ** 2).sum())
                packed.append(codec.pack(codes).numpy())
                scales.append(sc.numpy())
            code_bytes += _chunked_bytes(np.stack(packed), "blosc-lz4", 5)
            scale_bytes += _chunked_bytes(np.stack(scales), "blosc-lz4", 5)
        out.append({"block": b, "rel_err_per_step": math.sqrt(err2 / max(ref2, 1e-30)),
                    "bits_per_kept_value": 8 * (code_bytes + scale_bytes) / kept, "scale_bits_per_value": 8 * scale_bytes / kept})
    return out


# ---- entropy coding -------------------------------------------------------------------------
def _codes(rows: dict[int, np.ndarray], fmt: str) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """Per group: (stored code bytes (steps, cols), scales (steps, blocks), k) as a recorder writes them."""
    out = []
    for gid, vals in rows.items():
        k = vals.shape[1]
        codes, scales = [], []
        for s in range(vals.shape[0]):
            v = torch.from_numpy(vals[s])
            if fmt == "int8":
                q, sc = Int8Codec(256).quantize(v)
                codes.append(q.numpy().view(np.uint8))
            else:
                c = Int4Codec(64)
                q, sc = c._offset_codes(v, rounding_key(0, s, gid))
                codes.append(c.pack(q).numpy())
            scales.append(sc.numpy())
        out.append((np.stack(codes), np.stack(scales), k))
    return out


def _symbols(codes: np.ndarray, fmt: str, k: int) -> np.ndarray:
    """The code of each value as a symbol in [0, 16) (int4) or [0, 256) (int8)."""
    if fmt == "int8":
        return codes.astype(np.int32)
    return Int4Codec.unpack(codes, k).astype(np.int32) & 15


def _ans_row(sym: np.ndarray, alphabet: int) -> tuple[int, object]:
    """Bits of one row under an order-0 rANS coder (constriction) with its own frequency table,
    counting the table (16 bits per symbol of the alphabet); and the decoder inputs."""
    import constriction

    counts = np.bincount(sym, minlength=alphabet).astype(np.float64)
    model = constriction.stream.model.Categorical(counts / counts.sum(), perfect=False)
    enc = constriction.stream.stack.AnsCoder()
    enc.encode_reverse(sym.astype(np.int32), model)
    comp = enc.get_compressed()
    return 32 * comp.size + 16 * alphabet, (comp, model, sym.size)


def _timed(fn, arg, repeats: int = 3):
    """(fn(arg), fastest of ``repeats`` wall times): the machine is shared, the minimum is the cost."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn(arg)
        best = min(best, time.perf_counter() - t0)
    return out, best


def entropy_sweep(rows: dict[int, np.ndarray], fmt: str) -> list[dict]:
    groups = _codes(rows, fmt)
    kept = sum(c.shape[0] * k for c, _, k in groups)
    scale_bits = 8 * sum(_chunked_bytes(s, "blosc-lz4", 5) for _, s, _ in groups) / kept
    alphabet = 256 if fmt == "int8" else 16
    # order-0 entropy of each row's codes (what an order-0 coder with a free table reaches)
    h = 0.0
    for codes, _, k in groups:
        for r in range(codes.shape[0]):
            sym = _symbols(codes[r : r + 1], fmt, k)[0]
            p = np.bincount(sym, minlength=alphabet) / sym.size
            p = p[p > 0]
            h += -(p * np.log2(p)).sum() * sym.size
    out = [{"format": fmt, "coder": "order-0 entropy (bound)", "code_bits_per_value": h / kept, "scale_bits_per_value": scale_bits,
            "bits_per_kept_value": h / kept + scale_bits, "encode_ns_per_value": None, "decode_ns_per_value": None}]
    variants = [("blosc-lz4 bitshuffle (store default)", "blosc-lz4", 5), ("blosc-zstd bitshuffle", "blosc-zstd", 3),
                ("zstd 1", "zstd", 1), ("zstd 3", "zstd", 3), ("zstd 9", "zstd", 9), ("zstd 19", "zstd", 19), ("none", "none", 0)]
    for label, codec, level in variants:
        comp = numcodecs_compressor(codec, level, 1)
        nbytes, t_enc, t_dec = 0, 0.0, 0.0
        for codes, _, _ in groups:
            (r, c), _ = chunk_layout(codes.shape[1], 1, 64)
            for i in range(0, codes.shape[0], r):
                for j in range(0, codes.shape[1], c):
                    chunk = np.ascontiguousarray(codes[i : i + r, j : j + c])
                    if comp is None:
                        nbytes += chunk.nbytes + 4
                        continue
                    enc, te = _timed(comp.encode, chunk)
                    _, td = _timed(comp.decode, enc)
                    t_enc, t_dec = t_enc + te, t_dec + td
                    nbytes += len(enc) + 4
        out.append({"format": fmt, "coder": label, "code_bits_per_value": 8 * nbytes / kept, "scale_bits_per_value": scale_bits,
                    "bits_per_kept_value": 8 * nbytes / kept + scale_bits,
                    "encode_ns_per_value": 1e9 * t_enc / kept if comp else 0.0, "decode_ns_per_value": 1e9 * t_dec / kept if comp else 0.0})
    try:
        import constriction
    except ImportError:  # optional: measured where it installs
        return out
    bits, t_enc, t_dec = 0, 0.0, 0.0
    for codes, _, k in groups:
        for r in range(codes.shape[0]):
            (b, (comp, model, n)), te = _timed(lambda row: _ans_row(_symbols(row, fmt, k)[0], alphabet), codes[r : r + 1])
            dec, td = _timed(lambda c: constriction.stream.stack.AnsCoder(c).decode(model, n), comp)
            sym = _symbols(codes[r : r + 1], fmt, k)[0]
            t_enc, t_dec = t_enc + te, t_dec + td
            assert np.array_equal(dec, sym)
            bits += b
    out.append({"format": fmt, "coder": "rANS order-0, table per row (constriction)", "code_bits_per_value": bits / kept,
                "scale_bits_per_value": scale_bits, "bits_per_kept_value": bits / kept + scale_bits,
                "encode_ns_per_value": 1e9 * t_enc / kept, "decode_ns_per_value": 1e9 * t_dec / kept})
    return out


# ---- entry point ------------------------------------------------------------------------------
def run(*, quick: bool, device: str = "cpu", plots: str | None = None, out: str | None = None, models: dict | None = None,
        workdir: str | None = None) -> dict:
    specs = models if models is not None else (QUICK if quick else FULL)
    root = Path(tempfile.mkdtemp(prefix="ds-values-", dir=workdir))
    errors, blocks, entropy = [], [], []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, spec in specs.items():
            t0 = time.perf_counter()
            reader = record_updates(name, spec, root / name)
            if spec.get("sum_error", True):
                errors += [dict(r, model=name) for r in sum_error(reader)]
            rows = _rows(reader, min(spec["entropy_steps"], reader.committed_steps))
            blocks += [dict(r, model=name) for r in block_sweep(rows)]
            for fmt in ("int8", "int4"):
                entropy += [dict(r, model=name, steps=min(spec["entropy_steps"], reader.committed_steps)) for r in entropy_sweep(rows, fmt)]
            print(f"[values] {name}: {reader.committed_steps} steps, measured in {time.perf_counter() - t0:.1f} s")
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(root, ignore_errors=True)
    if errors:
        cols = ["model", "format", "steps"] + [k for k in errors[0] if k.startswith("rel_err_T")] + ["coherence"]
        print_table(errors, cols, title="Σ decoded updates vs Σ float32 updates (relative L2 error after T steps; coherence ~1: unbiased, >>1: a bias)")
    print_table(blocks, ["model", "block", "rel_err_per_step", "bits_per_kept_value", "scale_bits_per_value"],
                title="int4 scale block: per-step error and stored bits per kept value (codes + scales, blosc-lz4)")
    print_table(entropy, ["model", "format", "coder", "code_bits_per_value", "bits_per_kept_value", "encode_ns_per_value", "decode_ns_per_value"],
                title="entropy coding of the codes (scales add scale_bits_per_value to every row)")
    return {"rows": errors + blocks + entropy, "sum_error": errors, "blocks": blocks, "entropy": entropy}
