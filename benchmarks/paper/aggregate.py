"""Mean and standard deviation over seeds, per configuration (model, batch size, regime).

Runs of one configuration have the same structure (same keys, same sweep
points), so they are aggregated leaf by leaf: every number becomes
``{"mean", "std", "min", "max", "n"}`` (std with ddof=1; NaNs, e.g. an absent class, are
left out), lists are aggregated element-wise, and anything else is kept when
all seeds agree.
"""

from __future__ import annotations

import math
from numbers import Real

from .runs import config_key

SKIP = ("seed", "timings", "seconds", "train_seconds")


def stat(values) -> dict:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    n = len(vals)
    if n == 0:
        return {"mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    mean = sum(vals) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "min": min(vals), "max": max(vals), "n": n}


def _is_num(v) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool)


def combine(items: list):
    present = [i for i in items if i is not None]
    if not present:
        return None
    first = present[0]
    if all(isinstance(i, dict) for i in present):
        # Union of keys; a key only some seeds have (extra stores) is aggregated over those seeds.
        keys = list(dict.fromkeys(k for i in present for k in i))
        return {k: combine([i.get(k) for i in present]) for k in keys if k not in SKIP}
    if all(isinstance(i, list) for i in present) and len({len(i) for i in present}) == 1:
        return [combine(list(col)) for col in zip(*present)]
    if all(_is_num(i) for i in present):
        return stat(present)
    return first if all(i == first for i in present) else list(present)


def summarize(records: list[dict]) -> dict[str, dict]:
    """{config key: aggregated record}, in the order configurations first appear."""
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(config_key(r["model"], r["batch_size"], r["regime"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        agg = combine(rs)
        agg["seeds"] = [r["seed"] for r in rs]
        agg["seconds"] = stat(r["seconds"] for r in rs)
        out[key] = agg
    return out


def mean(node) -> float:
    """The mean of an aggregated leaf (NaN if missing)."""
    if isinstance(node, dict) and "mean" in node:
        return node["mean"]
    return math.nan
