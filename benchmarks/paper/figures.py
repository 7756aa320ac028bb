"""Figures 1, 2 and 4 as PNG files (mean over seeds, shaded or barred ± std)."""

from __future__ import annotations

from pathlib import Path

from benchmarks.common import matplotlib_pyplot

from .aggregate import mean
from .config import PaperConfig
from .runs import config_key

BLUE, RED, GREY = "#1f77b4", "#d62728", "#7f7f7f"
MODE_STYLE = {"dense": ("k", "conventional (dense)"), "random": (BLUE, "random, layer-wise"),
              "magnitude": ("#ff7f0e", "magnitude, layer-wise"), "global": ("#2ca02c", "global")}


def _ms(nodes):
    return [n["mean"] for n in nodes], [n["std"] for n in nodes]


def _grid(plt, rows: int, cols: int, width: float = 4.0, height: float = 3.0):
    # At least 8 inches wide so that the legend below the panels fits (quick mode has one column).
    fig, axes = plt.subplots(rows, cols, figsize=(max(8.0, width * cols), height * rows + 0.6), squeeze=False,
                             layout="constrained")
    return fig, axes


def _panels(cfg: PaperConfig, summary: dict, batch_sizes=None):
    """(row label, [(column label, aggregated record or None)]) for every (batch size, regime) row."""
    rows = []
    for bs in batch_sizes or cfg.batch_sizes:
        for regime in cfg.regimes:
            rows.append((f"batch {bs}, {regime}", [(m, summary.get(config_key(m, bs, regime))) for m in cfg.models]))
    return rows


def figure1(cfg: PaperConfig, summary: dict, path: Path) -> Path:
    plt = matplotlib_pyplot()
    rows = _panels(cfg, summary)
    fig, axes = _grid(plt, len(rows), len(cfg.models))
    for i, (row_label, cols) in enumerate(rows):
        for j, (model, agg) in enumerate(cols):
            ax = axes[i][j]
            if agg is None:
                ax.set_axis_off()
                continue
            e = [x["mean"] for x in agg["curve"]["epoch"]]
            last = e[-1]
            after = [last + k + 1 for k in range(len(agg["unlearning_curve"]["aul"]["target"]))]
            for what, color in (("target", RED), ("retained", BLUE)):
                m, s = _ms(agg["curve"][what])
                ax.plot(e, m, color=color, lw=1.5)
                ax.fill_between(e, [a - b for a, b in zip(m, s)], [a + b for a, b in zip(m, s)], color=color, alpha=0.15)
                for method, key, ls in (("aul", what, "--"), ("partial", what, "-"), ("partial", what + "_bn_kept", "-.")):
                    if key not in agg["unlearning_curve"][method]:
                        continue
                    m2, s2 = _ms(agg["unlearning_curve"][method][key])
                    xs, ys = [last] + after, [m[-1]] + m2
                    ax.plot(xs, ys, color=color, ls=ls, lw=1.5 if ls != "-." else 1.0)
                    if ls != "-.":
                        ax.fill_between(after, [a - b for a, b in zip(m2, s2)], [a + b for a, b in zip(m2, s2)],
                                        color=color, alpha=0.1)
            ax.axvline(last, color=GREY, ls=":", lw=1)
            ax.set_ylim(-0.03, 1.03)
            ax.set_title(f"{model} | {row_label}", fontsize=9)
            ax.set_xlabel("epoch; after the line: epochs rewound", fontsize=7)
            ax.set_ylabel("test accuracy", fontsize=8)
    handles = [plt.Line2D([], [], color=RED, label="targeted (class %d)" % cfg.target_class),
               plt.Line2D([], [], color=BLUE, label="retained (other classes)"),
               plt.Line2D([], [], color="k", ls="--", label="conventional amnesiac"),
               plt.Line2D([], [], color="k", ls="-", label="partial amnesiac (paper plan)"),
               plt.Line2D([], [], color="k", ls="-.", lw=1.0, label="partial, BatchNorm statistics kept")]
    fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def figure2(cfg: PaperConfig, summary: dict, path: Path) -> Path:
    plt = matplotlib_pyplot()
    rows = _panels(cfg, summary)
    fig, axes = _grid(plt, len(rows), len(cfg.models))
    for i, (row_label, cols) in enumerate(rows):
        for j, (model, agg) in enumerate(cols):
            ax = axes[i][j]
            if agg is None:
                ax.set_axis_off()
                continue
            sweep = agg["sparsity"]
            labels = [f"{mean(r['rate']):.0%}" for r in sweep] + ["paper\n90→50"]
            ret = [r["retained"] for r in sweep] + [agg["methods"]["partial"]["retained"]]
            tgt = [r["target"] for r in sweep] + [agg["methods"]["partial"]["target"]]
            colors = [BLUE if mean(t) <= cfg.zero_threshold else RED for t in tgt]
            xs = range(len(labels))
            ax.bar(xs, [mean(r) for r in ret], yerr=[r["std"] for r in ret], color=colors, alpha=0.8, capsize=2)
            ax.plot(xs, [mean(t) for t in tgt], "k^", ms=4)
            if "partial_bn_kept" in agg["methods"]:
                bn = [mean(r["retained_bn_kept"]) for r in sweep] + [mean(agg["methods"]["partial_bn_kept"]["retained"])]
                ax.plot(xs, bn, "o", mfc="none", mec="k", ms=5)
            ax.axhline(mean(agg["before"]["retained"]), color=GREY, ls="--", lw=1)
            ax.set_xticks(list(xs), labels, fontsize=7)
            ax.set_ylim(0, 1.05)
            ax.set_title(f"{model} | {row_label}", fontsize=9)
            ax.set_xlabel("sparsity of weight updates (last: paper plan)", fontsize=7)
            ax.set_ylabel("retained test accuracy", fontsize=8)
    handles = [plt.Rectangle((0, 0), 1, 1, color=BLUE, alpha=0.8, label=f"targeted acc <= {cfg.zero_threshold:.0%}"),
               plt.Rectangle((0, 0), 1, 1, color=RED, alpha=0.8, label=f"targeted acc > {cfg.zero_threshold:.0%} (not erased)"),
               plt.Line2D([], [], color="k", marker="^", ls="", label="targeted accuracy"),
               plt.Line2D([], [], color="k", marker="o", mfc="none", ls="", label="retained, BatchNorm statistics kept"),
               plt.Line2D([], [], color=GREY, ls="--", label="retained before unlearning")]
    fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def figure4(cfg: PaperConfig, summary: dict, path: Path) -> Path:
    plt = matplotlib_pyplot()
    rows = _panels(cfg, summary, cfg.affected_batch_sizes)
    fig, axes = _grid(plt, len(rows), len(cfg.models))
    for i, (row_label, cols) in enumerate(rows):
        for j, (model, agg) in enumerate(cols):
            ax = axes[i][j]
            if agg is None or "affected" not in agg:
                ax.set_axis_off()
                continue
            for mode in cfg.affected_modes:
                pts = [r for r in agg["affected"] if r["mode"] == mode]
                xs = [100 * mean(r["affected_fraction"]) for r in pts]
                m, s = _ms([r["test"] for r in pts])
                color, label = MODE_STYLE[mode]
                ax.errorbar(xs, m, yerr=s, color=color, marker="o", ms=3, lw=1.2, capsize=2, label=label)
                if pts and "test_bn_kept" in pts[0]:
                    ax.plot(xs, [mean(r["test_bn_kept"]) for r in pts], color=color, ls=":", marker="o", mfc="none", ms=3, lw=1.0)
            ax.axhline(mean(agg["before"]["test"]), color=GREY, ls="--", lw=1)
            ax.set_xlim(0, 102)
            ax.set_ylim(0, 1.05)
            ax.set_title(f"{model} | {row_label}", fontsize=9)
            ax.set_xlabel("affected batches (% of training steps)", fontsize=7)
            ax.set_ylabel("test accuracy after forgetting", fontsize=8)
    handles = [plt.Line2D([], [], color=c, marker="o", label=lab) for c, lab in MODE_STYLE.values()]
    handles.append(plt.Line2D([], [], color="k", ls=":", marker="o", mfc="none", label="BatchNorm statistics kept"))
    handles.append(plt.Line2D([], [], color=GREY, ls="--", label="before unlearning"))
    fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_figures(cfg: PaperConfig, summary: dict, out: Path) -> dict[str, str]:
    return {
        "figure1": figure1(cfg, summary, out / "figure1.png").name,
        "figure2": figure2(cfg, summary, out / "figure2.png").name,
        "figure4": figure4(cfg, summary, out / "figure4.png").name,
    }
