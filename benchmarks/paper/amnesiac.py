"""Amnesiac experiments on one run: conventional vs partial, every plan from one dense store.

Every experiment starts from the trained weights and a store whose ledger is
empty: :class:`Forgetter` deletes the store's ``ledger/`` folder and loads the
trained state into its working model before each ``forget`` call. The model
then has exactly the fingerprint the store recorded at the end of training,
so no ``force=True`` is needed, and no step counts as "already subtracted" by
an earlier, unrelated experiment. (Copying the store per experiment would do
the same at the cost of a copy; deleting the ledger is what a fresh store has.)

BatchNorm statistics. The store records the change of every floating-point
buffer and never prunes it, so every request also subtracts the running
means/variances' per-step changes. Those are exponential moving averages: a
step's recorded change is not its contribution to the final value (later
steps decay it by (1 - momentum) each), so subtracting the changes of a few
early steps moves the statistics far from anything training produced. For
models with such buffers every result is therefore also evaluated with the
trained buffers put back (keys ``*_bn_kept``) -- what a store recorded with
``record_buffers=False`` would give, and presumably what the paper did (its
stored "model updates" are parameter updates). No second forget is needed.
"""

from __future__ import annotations


import numpy as np
import torch

from deltastore.format import build_groups
from deltastore.plan import PruningPlan
from unlearning.evaluation import evaluate
from unlearning.forget import forget
from unlearning.ledger import LEDGER_DIR
from unlearning.partial_updates import derive_seed

from .config import PaperConfig
from .metrics import class_metrics, sample_metrics, test_accuracies
from .runs import DENSE, Run


class Forgetter:
    """Independent forget requests against one store of a run."""

    def __init__(self, run: Run, store: str = DENSE):
        self.run = run
        self.reader = run.reader(store)
        self.model = run.fresh_model()

        self.buffers = [n for n, b in self.model.named_buffers() if b.is_floating_point()]

    def __call__(self, sample_ids, plan: PruningPlan | None):
        self.reader.io.delete_prefix(LEDGER_DIR)
        self.model.load_state_dict(self.run.trained)
        receipt = forget(self.model, self.reader, sample_ids, plan=plan, device=self.run.device)
        return self.model, receipt

    def keep_trained_buffers(self, model) -> bool:
        """Put the trained floating-point buffers back into ``model``; False if it has none."""
        if not self.buffers:
            return False
        with torch.no_grad():
            for name, b in model.named_buffers():
                if name in self.buffers:
                    b.copy_(self.run.trained[name])
        return True


def plan_for(cfg: PaperConfig, mode: str) -> PruningPlan | None:
    """None (conventional, dense) or the paper's layer-wise schedule in ``mode``."""
    return None if mode == "dense" else cfg.paper_plan(mode)


def kept_fraction(reader, plan: PruningPlan | None) -> dict:
    """Fraction of update entries a store recorded with ``plan`` keeps: all tensors, and weights only."""
    specs = list(reader.manifest.tensors)
    if plan is None:
        return {"all": 1.0, "weights": 1.0}
    groups = build_groups(specs, plan)
    n = sum(g.n for g in groups)
    k = sum(g.k for g in groups)
    w_names = {s.name for s in specs if s.prunable_by_default}
    w_n = sum(s.numel for s in specs if s.name in w_names)
    rates = plan.rates(specs)
    w_k = sum(s.numel * (1.0 - rates[s.name]) for s in specs if s.name in w_names)
    return {"all": k / n, "weights": w_k / w_n}


def class_ids(run: Run, target_class: int) -> torch.Tensor:
    return run.data.ids_train[run.data.positions_of_class(target_class)]


def class_request(cfg: PaperConfig, run: Run, fg: Forgetter) -> tuple[dict, dict]:
    """Table 1/2 rows of the amnesiac methods: conventional (dense) and partial (paper plan, random).

    Also returns the unlearned weights (CPU), for the checks of Figure 1's rewind.
    """
    ids = class_ids(run, cfg.target_class)
    out, states = {}, {}
    for name, plan in (("aul", None), ("partial", cfg.paper_plan())):
        model, receipt = fg(ids, plan)
        out[name] = {**class_metrics(model, run.data, cfg.target_class, device=run.device),
                     "steps": len(receipt.steps), "seconds": receipt.seconds}
        states[name] = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        if fg.keep_trained_buffers(model):
            out[f"{name}_bn_kept"] = class_metrics(model, run.data, cfg.target_class, device=run.device)
    return out, states


def unlearning_curve(cfg: PaperConfig, run: Run, fg: Forgetter, forgotten: dict) -> dict:
    """Figure 1 after the request: the affected updates subtracted one training epoch at a time.

    Newest epoch first (rewinding training); after the last one the model is
    the ``forget`` result in ``forgotten`` (from :func:`class_request`), which
    is checked (``max_abs_diff_to_forget``).
    """
    ids = class_ids(run, cfg.target_class)
    steps, _ = fg.reader.index.lookup(ids)
    bounds = np.cumsum([0] + run.steps_per_epoch)
    out = {}
    for name, plan in (("aul", None), ("partial", cfg.paper_plan())):
        model = fg.model
        fg.reader.io.delete_prefix(LEDGER_DIR)
        model.load_state_dict(run.trained)
        named = {**dict(model.named_parameters()), **dict(model.named_buffers())}
        curve = {"target": [], "retained": []}
        if fg.buffers:
            curve.update(target_bn_kept=[], retained_bn_kept=[])
        for e in reversed(range(len(run.batches))):
            todo = [int(s) for s in steps if bounds[e] <= s < bounds[e + 1]]
            if todo:
                upd = fg.reader.sum_updates(todo, device=run.device, plan=plan).updates
                with torch.no_grad():
                    for tname, u in upd.items():
                        named[tname].sub_(u.to(named[tname].device))
            cm = test_accuracies(model, run.data, cfg.target_class, device=run.device)
            curve["target"].append(cm["target"])
            curve["retained"].append(cm["retained"])
            if fg.buffers:
                rewound = {n: named[n].detach().clone() for n in fg.buffers}
                fg.keep_trained_buffers(model)
                cm = test_accuracies(model, run.data, cfg.target_class, device=run.device)
                curve["target_bn_kept"].append(cm["target"])
                curve["retained_bn_kept"].append(cm["retained"])
                with torch.no_grad():
                    for n, v in rewound.items():
                        named[n].copy_(v)
        diff = max(float((v.detach().cpu().float() - forgotten[name][k].float()).abs().max())
                   for k, v in model.state_dict().items() if v.is_floating_point())
        out[name] = {**curve, "max_abs_diff_to_forget": diff}
    return out


def sparsity_sweep(cfg: PaperConfig, run: Run, fg: Forgetter, conventional: dict) -> list[dict]:
    """Figure 2: uniform random pruning of the weight updates at each rate, one dense recording.

    Rate 0 is conventional amnesiac unlearning: its metrics come from ``conventional``
    (:func:`class_request`'s result), not recomputed.
    """
    ids = class_ids(run, cfg.target_class)
    rows = []
    for rate in cfg.sparsity_rates:
        plan = None if rate == 0 else PruningPlan.uniform(rate)
        row = {"rate": rate, "sparsity_all": 1.0 - kept_fraction(fg.reader, plan)["all"]}
        if plan is None:
            cm = conventional["aul"]
            if "aul_bn_kept" in conventional:
                row.update(target_bn_kept=conventional["aul_bn_kept"]["target"],
                           retained_bn_kept=conventional["aul_bn_kept"]["retained"])
        else:
            model, _ = fg(ids, plan)
            cm = test_accuracies(model, run.data, cfg.target_class, device=run.device)
            if fg.keep_trained_buffers(model):
                bn = test_accuracies(model, run.data, cfg.target_class, device=run.device)
                row.update(target_bn_kept=bn["target"], retained_bn_kept=bn["retained"])
        rows.append({**row, "target": cm["target"], "retained": cm["retained"]})
    return rows


def request_order(run: Run) -> torch.Tensor:
    """A seeded permutation of the train positions; requests of n samples take its first n (nested)."""
    g = torch.Generator().manual_seed(derive_seed(run.seed, "paper-sample-requests") & 0xFFFFFFFF)
    return torch.randperm(run.data.y_train.numel(), generator=g)


def affected_sweep(cfg: PaperConfig, run: Run, fg: Forgetter) -> list[dict]:
    """Figure 4: random-sample requests of growing size, each pruning mode at the paper's schedule."""
    order = request_order(run)
    total = sum(run.steps_per_epoch)
    rows = []
    for n in cfg.affected_sizes:
        pos = order[:n].sort().values
        ids = run.data.ids_train[pos]
        for mode in cfg.affected_modes:
            model, receipt = fg(ids, plan_for(cfg, mode))
            row = {"n_samples": n, "mode": mode, "steps": len(receipt.steps), "affected_fraction": len(receipt.steps) / total,
                   **sample_metrics(model, run.data, pos, device=run.device)}
            if fg.keep_trained_buffers(model):
                row.update({f"{k}_bn_kept": v for k, v in sample_metrics(model, run.data, pos, device=run.device).items()})
            rows.append(row)
    return rows


def sample_requests(cfg: PaperConfig, run: Run, fg: Forgetter, retrain_fn) -> list[dict]:
    """1 / 5 / 10 % random-sample requests: accuracies and the three MIA measures vs a retrained model."""
    order = request_order(run)
    n_train = run.data.y_train.numel()
    total = sum(run.steps_per_epoch)
    trained = run.fresh_model()
    rows = []
    for frac in cfg.sample_fractions:
        n = max(1, round(frac * n_train))
        pos = order[:n].sort().values
        ids = run.data.ids_train[pos]
        reference = retrain_fn(pos)
        row = {"fraction": frac, "n_samples": n}
        row["retrained"] = _mia_row(reference, run, pos)
        row["before"] = _mia_row(trained, run, pos)
        for name, plan in (("aul", None), ("partial", cfg.paper_plan())):
            model, receipt = fg(ids, plan)
            row[name] = _mia_row(model, run, pos)
            row["affected_fraction"] = len(receipt.steps) / total
            if fg.keep_trained_buffers(model):
                row[f"{name}_bn_kept"] = _mia_row(model, run, pos)
        rows.append(row)
    return rows


def _mia_row(model, run: Run, pos: torch.Tensor) -> dict:
    ev = evaluate(model, run.data, pos, seed=run.seed, device=run.device)
    return {
        "forget": ev["forget_acc"], "retain": ev["retain_acc"], "test": ev["test_acc"],
        "mia_loss_logreg": ev["mia_loss_logreg"], "mia_efficacy_svc": ev["mia_efficacy_svc"],
        "mia_loss_auc": ev["mia_loss_auc"],
    }


def engine_checks(cfg: PaperConfig, run: Run, fg: Forgetter) -> dict:
    """Invariant 5 end to end, and the default int8 format against float32, on the class request."""
    if "paper-float32" not in run.stores:
        return {}
    ids = class_ids(run, cfg.target_class)
    model, _ = fg(ids, cfg.paper_plan())
    unlearn_time = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out = {"unlearn_time": class_metrics(model, run.data, cfg.target_class, device=run.device)}
    for store in ("paper-float32", "paper-int8"):
        other = Forgetter(run, store)
        m, _ = other(ids, None)
        out[store] = class_metrics(m, run.data, cfg.target_class, device=run.device)
        out[store]["max_abs_diff_to_unlearn_time"] = max(
            float((m.state_dict()[k].float() - v.float()).abs().max()) for k, v in unlearn_time.items() if v.is_floating_point()
        )
    return out


def storage(cfg: PaperConfig, run: Run) -> dict:
    """Bytes of each store of the run: on disk (compressed, with index) and raw values."""
    out = {}
    for name, path in run.stores.items():
        reader = run.reader(name)
        m = reader.manifest
        itemsize = {"float32": 4, "bfloat16": 2, "float16": 2, "int8": 1}[m.value_dtype]
        values = sum(g.k for g in m.groups) * reader.committed_steps
        out[name] = {"disk_bytes": reader.nbytes_stored()["total"], "raw_value_bytes": values * itemsize,
                     "values": values, "plan": m.plan.describe(), "value_dtype": m.value_dtype}
    dense = run.reader(DENSE)
    out["paper_kept_fraction"] = kept_fraction(dense, cfg.paper_plan())
    out["dense_float32_raw_bytes"] = out[DENSE]["raw_value_bytes"]
    # What a store recorded with the paper's plan holds, from the dense one: kept fraction x raw bytes.
    out["paper_float32_raw_bytes_estimate"] = out[DENSE]["raw_value_bytes"] * out["paper_kept_fraction"]["all"]
    out["model_bytes"] = sum(v.numel() * v.element_size() for v in run.trained.values())
    return out
