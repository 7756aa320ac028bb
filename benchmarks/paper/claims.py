"""The paper's claims, each checked against the aggregated numbers with a stated rule.

A claim is checked per configuration (model, batch size, regime) on seed
means; the verdict is "reproduced" if it holds in every configuration,
"partly" if in some, "not reproduced" if in none. "Zero" targeted accuracy
means <= ``zero_threshold``; "comparable" means within ``comparable`` and
"better" means by more than ``comparable`` (absolute, accuracy in [0, 1]).

Claims about amnesiac unlearning are checked twice: on the models the engine
produces, and with the trained BatchNorm statistics kept (``*_bn_kept``, see
:mod:`.amnesiac`); the two differ only for models with BatchNorm.
"""

from __future__ import annotations

from .aggregate import mean
from .config import PaperConfig

BN = "_bn_kept"


def _pct(x: float) -> str:
    return "nan" if x != x else f"{100 * x:.1f}"


def _verdict(held: list[str], keys: list[str]) -> str:
    if keys and len(held) == len(keys):
        return "reproduced"
    return "partly" if held else "not reproduced"


def _get(node, path):
    for p in path:
        if not isinstance(node, dict) or p not in node:
            return None
        node = node[p]
    return node


def _method(agg: dict, name: str, variant: str) -> dict:
    """``agg["methods"][name + variant]``, falling back to ``name`` (models without BatchNorm)."""
    return agg["methods"].get(name + variant, agg["methods"][name])


def _val(row: dict, key: str, variant: str) -> float:
    """A sweep row's ``key + variant`` (fallback ``key``), as a mean."""
    return mean(row.get(key + variant, row[key]))


def _amnesiac_tests(cfg: PaperConfig):
    z, c = cfg.zero_threshold, cfg.comparable

    def erases(agg, v):
        t = mean(_method(agg, "partial", v)["target"])
        return t <= z, f"targeted {_pct(mean(agg['before']['target']))} -> {_pct(t)} %"

    def preserves(agg, v):
        p = _method(agg, "partial", v)
        t, r = mean(p["target"]), mean(p["retained"])
        ref = mean(agg["methods"]["retrain"]["retained"])
        return (t <= z and r >= ref - c), f"partial retained {_pct(r)} % (retraining {_pct(ref)} %), targeted {_pct(t)} %"

    def conventional_drops(agg, v):
        b, r = mean(agg["before"]["retained"]), mean(_method(agg, "aul", v)["retained"])
        return r < b - 0.10, f"conventional retained {_pct(b)} -> {_pct(r)} %"

    def partial_beats_conventional(agg, v):
        p, a = _method(agg, "partial", v), _method(agg, "aul", v)
        pt, pr, at, ar = mean(p["target"]), mean(p["retained"]), mean(a["target"]), mean(a["retained"])
        ok = pt <= z and pr > ar + c
        return ok, f"partial {_pct(pr)} % (targeted {_pct(pt)}) vs conventional {_pct(ar)} % (targeted {_pct(at)})"

    def beats_baselines(agg, v):
        if "sisa" not in agg["methods"]:
            return None
        p = _method(agg, "partial", v)
        pt, pr = mean(p["target"]), mean(p["retained"])
        sr, fr = mean(agg["methods"]["sisa"]["retained"]), mean(agg["methods"]["fmul"]["retained"])
        ok = pt <= z and pr >= max(sr, fr) - c
        return ok, f"partial {_pct(pr)} % (targeted {_pct(pt)}), SISA {_pct(sr)} %, FMUL {_pct(fr)} %"

    def sparsity(agg, v):
        ok_rates = [r for r in agg["sparsity"] if _val(r, "target", v) <= z]
        nonzero = [r for r in ok_rates if mean(r["rate"]) > 0]
        if not nonzero:
            return False, "no sparsity > 0 reaches zero targeted accuracy" + ("" if ok_rates else " (not even 0 %, conventional)")
        best = max(nonzero, key=lambda r: mean(r["rate"]))
        ref = mean(agg["methods"]["retrain"]["retained"])
        ret = _val(best, "retained", v)
        return ret >= ref - c, (f"largest zero-target sparsity {mean(best['rate']):.0%}: retained {_pct(ret)} % "
                                f"(retraining {_pct(ref)} %)")

    def random_best(agg, v):
        if "affected" not in agg:
            return None
        by: dict[str, list[float]] = {}
        for r in agg["affected"]:
            by.setdefault(r["mode"], []).append(_val(r, "test", v))
        avg = {k: sum(x) / len(x) for k, x in by.items()}
        ok = all(avg["random"] >= avg[k] - 1e-9 for k in ("magnitude", "global") if k in avg)
        return ok, "mean test accuracy over request sizes: " + ", ".join(f"{k} {_pct(x)}" for k, x in avg.items())

    def conventional_degrades(agg, v):
        if "affected" not in agg:
            return None
        pts = [r for r in agg["affected"] if r["mode"] == "dense"]
        lo, hi = pts[0], pts[-1]
        ok = _val(hi, "test", v) < _val(lo, "test", v) - 0.10
        return ok, (f"{_pct(mean(lo['affected_fraction']))} % of steps: {_pct(_val(lo, 'test', v))} %, "
                    f"{_pct(mean(hi['affected_fraction']))} % of steps: {_pct(_val(hi, 'test', v))} %")

    return erases, preserves, conventional_drops, partial_beats_conventional, beats_baselines, sparsity, random_best, conventional_degrades


def _updates_test(cfg: PaperConfig, alg: str):
    z, c = cfg.zero_threshold, cfg.comparable

    def test(agg, v):
        u = agg["updates"][alg]
        nm, pm = u["naive_matched"], u["partial_matched"]
        nr, pr = mean(nm["retained"]), mean(pm["retained"])
        both = mean(nm["target"]) <= z and mean(pm["target"]) <= z
        ok = both and pr > nr + c
        same = (f"same lr × epochs: naive {_pct(mean(u['naive']['retained']))} % (targeted {_pct(mean(u['naive']['target']))}), "
                f"partial {_pct(mean(u['partial']['retained']))} % (targeted {_pct(mean(u['partial']['target']))})")
        matched = (f"matched: naive {_pct(nr)} % (targeted {_pct(mean(nm['target']))}, {mean(nm['epochs']):.0f} epochs), "
                   f"partial {_pct(pr)} % (targeted {_pct(mean(pm['target']))}, {mean(pm['epochs']):.0f} epochs)")
        return ok, f"{matched}; {same}" + ("" if both else "; not both at zero")

    return test


def check_claims(cfg: PaperConfig, summary: dict) -> list[dict]:
    erases, preserves, drops, beats_aul, beats_base, sparsity, random_best, degrades = _amnesiac_tests(cfg)
    claims = [
        ("abstract", "Partial amnesiac unlearning erases the targeted data: targeted accuracy zero (paper schedule, random pruning, no fine-tuning).", erases, True),
        ("abstract", "It preserves model efficacy: with the targeted data erased, retained accuracy comparable to retraining (within 2 points), without fine-tuning.", preserves, True),
        ("abstract", "Conventional amnesiac unlearning without fine-tuning degrades retained accuracy (by > 10 points).", drops, True),
        ("abstract", "Unlike conventional amnesiac unlearning, partial amnesiac unlearning needs no fine-tuning: it erases the targeted data with better (> 2 points) retained accuracy.", beats_aul, True),
        ("abstract / §5.4.3", "Storing layer-wise pruned updates needs much less storage (paper: ~75 % less than dense): raw float32 values at least 75 % fewer.", _storage_test, False),
        ("abstract", "Layer-wise partial updates make label-flipping unlearning preserve retained accuracy better (> 2 points, both at zero targeted accuracy) than naive label flipping.", _updates_test(cfg, "label_flip"), False),
        ("abstract", "Layer-wise partial updates make gradient-ascent unlearning preserve retained accuracy better (> 2 points, both at zero targeted accuracy) than naive gradient ascent.", _updates_test(cfg, "gradient_ascent"), False),
        ("Table 1", "With targeted accuracy at zero, partial amnesiac unlearning matches or beats SISA and FMUL (no repair) on retained accuracy.", beats_base, True),
        ("Figure 2", "The updates can be pruned beyond 0 % while still erasing the targeted data, with retained accuracy comparable to retraining.", sparsity, True),
        ("Figure 4", "Random layer-wise pruning preserves accuracy better than magnitude and global pruning (mean over request sizes).", random_best, True),
        ("Figure 4", "Conventional amnesiac unlearning degrades (> 10 points) as the share of affected batches grows.", degrades, True),
    ]
    out = []
    for source, text, test, amnesiac in claims:
        entry = {"source": source, "claim": text}
        for suffix, variant in (("", ""), ("_bn_kept", BN)) if amnesiac else (("", ""),):
            held, keys, ev = [], [], []
            for key, agg in summary.items():
                res = test(agg, variant)
                if res is None:
                    continue
                ok, note = res
                keys.append(key)
                held.append(key) if ok else None
                ev.append(f"{key}: {note} {'✓' if ok else '✗'}")
            entry.update({f"verdict{suffix}": _verdict(held, keys), f"holds_in{suffix}": held, f"checked{suffix}": keys,
                          f"evidence{suffix}": ev})
        out.append(entry)
    return out


def _storage_test(agg, variant):
    st = agg.get("storage")
    if not st or "paper_float32_raw_bytes_estimate" not in st:
        return None
    dense = mean(st["dense_float32_raw_bytes"])
    paper = mean(st["paper_float32_raw_bytes_estimate"])
    saving = 1 - paper / dense
    disk = ""
    if "paper-int8" in st:
        d_disk = mean(_get(st, ("dense-float32", "disk_bytes")))
        p_disk = mean(_get(st, ("paper-int8", "disk_bytes")))
        disk = f"; on disk, paper plan in int8 vs dense float32: {100 * (1 - p_disk / d_disk):.0f} % less"
    return saving >= 0.75, f"raw float32 values {100 * saving:.0f} % less{disk}"
