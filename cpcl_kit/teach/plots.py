"""Figures for the notebooks. Every function returns a matplotlib Figure, readable when projected.

Classes have one colour everywhere (``data.palette.class_palette``: background black, digits tab10, ignore grey).
Training-history figures take the ``history`` DataFrame of a run (``train.RunResult.history`` or
``history.csv``); pseudo-label figures take a ``cpcl.PseudoLabels`` (see
``method.scenes.pseudo_labels_on_scenes``); ablation figures take ``ablate.collect``'s table.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch

from ..constants import IGNORE_INDEX
from ..data.palette import IGNORE_GREY, class_palette, colourise
from ..data.transforms import display_image
from ..method.scenes import OVERLAY_TITLES, overlay_panels


@contextmanager
def style():
    """``with plots.style():`` draws in the kit's look (seaborn's whitegrid theme, notebook sizes);
    the user's matplotlib settings are back as they were afterwards. Every figure function of this
    module draws inside it; importing the module changes nothing."""
    # rc_context restores every rcParam on exit, "interactive" included: a Jupyter kernel's inline
    # backend turns that on after the first figure, and losing it there would stop every later
    # figure from showing. Keep whatever it is now.
    interactive = plt.isinteractive()
    try:
        with plt.rc_context():
            sns.set_theme(context="notebook", style="whitegrid")
            yield
    finally:
        plt.interactive(interactive)


def _styled(fn):
    """Run a figure function inside ``style()``."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with style():
            return fn(*args, **kwargs)
    return wrapper


class HiddenLineWarning(UserWarning):
    """A saved figure has a line that another line covers entirely (``hidden_lines``)."""


def save(fig, out_dir, name: str):
    """Save ``fig`` as ``out_dir/figures/name.png`` (the demo collects these), atomically. Warns
    (``HiddenLineWarning``) for every line of ``fig`` that another covers entirely."""
    import warnings
    from pathlib import Path

    from ..files import write_atomic

    for hidden in hidden_lines(fig):
        warnings.warn(f"{name}: {hidden}", HiddenLineWarning, stacklevel=2)

    return write_atomic(Path(out_dir) / "figures" / f"{name}.png",
                        lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))


def show(fig, out_dir, name: str) -> None:
    """Save ``fig`` as ``save`` does and show it here, once: inline in a notebook (papermill, the
    exported HTML and JupyterLab alike), nowhere in a script. Returns nothing, so a cell that ends
    with it shows the figure and not the saved file's path."""
    save(fig, out_dir, name)
    if _in_kernel():
        from IPython.display import display

        display(fig)
    # Closed, so the inline backend does not draw it a second time at the end of the cell.
    plt.close(fig)


def _in_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


@_styled
def parameter_bars(table: pd.DataFrame, title: str = "Parameters per part"):
    """Bar chart of a ``summary.parameter_table``."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    sns.barplot(data=table, x="part", y="millions", hue="part", ax=ax, legend=False)
    for i, row in table.iterrows():
        ax.text(i, row["millions"], f"{row['millions']:.2f} M\n{row['percent']:.0f} %", ha="center", va="bottom", fontsize=9)
    ax.set(ylabel="parameters (millions)", xlabel="", title=title)
    ax.set_ylim(0, table["millions"].max() * 1.3)
    fig.tight_layout()
    return fig


@_styled
def feature_maps(image: torch.Tensor, feats: dict[str, torch.Tensor], stages=("layer1", "layer2", "layer3", "layer4", "aspp", "decoder")):
    """The input image and the channel-mean activation of each stage (one row)."""
    n = len(stages) + 1
    fig, axes = plt.subplots(1, n, figsize=(2.2 * n, 2.6))
    img = image.detach().float().cpu()
    if img.min() < 0:  # normalised: undo roughly for display
        img = (img - img.min()) / (img.max() - img.min() + 1e-8)
    axes[0].imshow(img.permute(1, 2, 0).numpy())
    axes[0].set_title("input")
    for ax, name in zip(axes[1:], stages):
        f = feats[name][0].detach().float().abs().mean(0).cpu().numpy()
        shown = ax.imshow(f, cmap="magma")
        ax.set_title(f"{name}\n{feats[name].shape[1]} ch, {f.shape[0]}x{f.shape[1]}", fontsize=9)
        fig.colorbar(shown, ax=ax, orientation="horizontal", fraction=0.06, pad=0.04,
                     label="mean |activation|").ax.tick_params(labelsize=7)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------------
# shared pieces: the class legend, arrays, empty panels


@_styled
def class_legend(fig, class_names, ignore: bool = True, y: float = 0.0):
    """A one-row legend of the class colours (and grey 'ignore') under the figure."""
    from matplotlib.patches import Patch

    pal = class_palette(len(class_names))
    handles = [Patch(facecolor=pal[c], edgecolor="0.3", label=n) for c, n in enumerate(class_names)]
    if ignore:
        handles.append(Patch(facecolor=IGNORE_GREY, edgecolor="0.3", label="ignore / no label"))
    fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, y),
               ncol=min(len(handles), 12), frameon=False, fontsize=9)


def _np(x) -> np.ndarray:
    return np.asarray(torch.as_tensor(x).detach().cpu().reshape(-1), dtype=float)


def _nothing(ax, text: str):
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=11, color="0.35")
    ax.set_xticks([])
    ax.set_yticks([])


def _label_rows(history: pd.DataFrame) -> pd.DataFrame:
    """History rows logged while the unsupervised loss was on (they carry pseudo-label stats)."""
    if history is None or "agreement" not in history:
        return pd.DataFrame()
    return history.dropna(subset=["agreement"])


def _shade_supervised_start(ax, history: pd.DataFrame):
    """Grey band over the iterations before the pseudo labels switch on (lambda = 0)."""
    rows = _label_rows(history)
    if rows.empty or "iteration" not in history:
        return
    first = rows["iteration"].min()
    if first > history["iteration"].min():
        ax.axvspan(0, first, color="0.9", zorder=0, label="supervised only (λ = 0)")


# ------------------------------------------------------------------------------------------------
# training curves


@_styled
def learning_curves(history: pd.DataFrame, title: str = "Learning curves"):
    """Losses over iterations: supervised CE of each net (left), unsupervised losses and λ (right)."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.4))
    if history is None or history.empty:
        _nothing(a1, "no history")
        _nothing(a2, "no history")
        fig.suptitle(title)
        return fig
    x = history["iteration"]
    # A supervised run's total loss is its one CE: drawn once, not twice on top of itself.
    one = "loss" in history and "sup1" in history and np.allclose(history["loss"], history["sup1"], equal_nan=True)
    for col, name, ls, lw in (("loss", "total loss", "-", 2.6), ("sup1", "supervised CE, net 1", "-", 1.6),
                              ("sup2", "supervised CE, net 2", "--", 1.6)):
        if col in history and not (one and col == "loss"):
            a1.plot(x, history[col], ls=ls, lw=lw, marker="o" if len(x) < 30 else None,
                    label=name + (" (= the total loss)" if one and col == "sup1" else ""))
    a1.set(xlabel="iteration", ylabel="loss (cross-entropy, nats)",
           title="Supervised loss" if one else "Total and supervised losses")
    a1.legend(fontsize=9)
    unsup = [c for c in ("unsup1", "unsup2") if c in history and history[c].notna().any()]
    if unsup:
        for col, name in (("unsup1", "unsup. loss, net 1 (intersection in CPCL)"),
                          ("unsup2", "unsup. loss, net 2 (union in CPCL)")):
            if col in unsup:
                a2.plot(x, history[col], marker="o" if len(x) < 30 else None, label=name)
        a2.set(xlabel="iteration", ylabel="weighted CE (nats)", title="Unsupervised losses and their weight λ")
        if "lambda" in history:
            tw = a2.twinx()
            tw.plot(x, history["lambda"], color="0.4", ls="--", label="λ (right axis)")
            tw.set_ylabel("λ (unsupervised loss weight)")
            tw.grid(False)
            tw.set_ylim(bottom=0)
            h1, l1 = a2.get_legend_handles_labels()
            h2, l2 = tw.get_legend_handles_labels()
            # below the axes, clear of the x label: inside, the legend would cover the λ ramp
            a2.legend(h1 + h2, l1 + l2, fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=2)
        else:
            a2.legend(fontsize=9)
    elif "lr" in history:
        a2.plot(x, history["lr"], color="C4")
        a2.set(xlabel="iteration", ylabel="learning rate", title="Learning-rate schedule")
    else:
        _nothing(a2, "no unsupervised loss in this run")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _val_curve_table(run) -> pd.DataFrame:
    """The validation curve of ``run`` (a ``RunResult``, a run folder, a DataFrame or a list of rows
    with ``iteration`` and ``miou``), sorted by iteration; a finished run's last evaluation included."""
    import json
    from pathlib import Path

    from ..engine import runs

    if isinstance(run, (str, Path)):
        folder = Path(run)
        metrics = json.loads((folder / runs.METRICS).read_text()) if runs.is_finished(folder) else {}
        rows = metrics.get("val_curve") or runs.read_val_curve(folder).to_dict("records")
        if not rows and "miou" in metrics:
            rows = [{"iteration": metrics.get("iterations"), "miou": metrics["miou"]}]
    elif isinstance(run, runs.RunResult):
        rows = run.metrics.get("val_curve") or (runs.read_val_curve(run.out_dir).to_dict("records")
                                                if run.out_dir is not None else [])
        if not rows and "miou" in run.metrics:
            rows = [{"iteration": run.config.iterations, "miou": run.metrics["miou"]}]
    else:
        rows = run.to_dict("records") if isinstance(run, pd.DataFrame) else list(run or [])
    table = pd.DataFrame(rows, columns=None if rows else ["iteration", "miou"])
    return table.dropna(subset=["miou"]).sort_values("iteration").reset_index(drop=True)


@_styled
def eval_curve(run, title: str = "Validation mIoU during training"):
    """Validation mIoU (× 100) over the iterations of one run (``eval_every``; see
    ``_val_curve_table`` for what ``run`` may be). The last point is what the kit reports; the best
    point is marked as what it is, a choice made on the validation set itself, so its height
    flatters the run (no held-out set is left to confirm it)."""
    table = _val_curve_table(run)
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    if table.empty:
        _nothing(ax, "no validation evaluation in this run")
        ax.set_title(title)
        return fig
    x, y = table["iteration"], 100 * table["miou"]
    ax.plot(x, y, marker="o", color="C0", label="validation mIoU")
    last = table.iloc[-1]
    best = table.loc[table["miou"].idxmax()]
    if len(table) > 1 and best["iteration"] != last["iteration"]:
        ax.plot([best["iteration"]], [100 * best["miou"]], "*", ms=15, color="C3",
                label=f"best, chosen on the validation set: {100 * best['miou']:.1f} "
                      f"(iteration {int(best['iteration'])})")
        ax.plot([last["iteration"]], [100 * last["miou"]], "s", ms=10, color="C1",
                label=f"last iteration (reported): {100 * last['miou']:.1f}")
    else:  # one marker, never one hidden under the other
        also = ", also the best" if len(table) > 1 else ""
        ax.plot([last["iteration"]], [100 * last["miou"]], "s", ms=10, color="C1",
                label=f"last iteration (reported){also}: {100 * last['miou']:.1f}")
    ax.set(xlabel="iteration", ylabel="mIoU on the validation set (%)", title=title)
    ax.legend(fontsize=9, loc="lower right")
    fig.tight_layout()
    return fig


def _smoothing(n: int, bins: int = 12) -> int:
    """Logged batches per running-mean window for ``n`` logged rows: each row is one batch of a few
    scenes, too noisy to read alone, so a long run's curves average about ``n / bins`` neighbouring
    rows (1: no smoothing, every row drawn as it is)."""
    return max(1, int(round(n / bins)))


def _data_limits(values, include=(), margin: float = 0.1, min_pad: float = 1.0, floor: float | None = 0.0):
    """(low, high) for an axis scaled to the finite ``values`` (and ``include``) with a margin of
    ``margin`` of their range, at least ``min_pad``, and not below ``floor``: a fixed 0-100 axis
    would squeeze a gap of a few points into one line."""
    v = np.concatenate([np.asarray(values, dtype=float).ravel(), np.asarray(include, dtype=float).ravel()])
    v = v[np.isfinite(v)]
    if not len(v):
        return None
    pad = max(margin * (v.max() - v.min()), min_pad)
    low = v.min() - pad
    return (low if floor is None else max(floor, low), v.max() + pad)


def _smoothed_curve(ax, x, y, k: int, label: str, **line):
    """``y`` over ``x`` as a line; with ``k`` > 1 the line is a centred running mean over ``k`` rows
    and the single rows are faint dots (a scatter, so no line is drawn twice). ``label`` may hold
    ``{last}``: the mean of the last ``k`` rows. Returns the line's values."""
    y = pd.Series(np.asarray(y, dtype=float), index=np.asarray(x))
    last = y.dropna().tail(k).mean()
    if k > 1:
        ax.scatter(y.index, y.to_numpy(), s=9, color=line.get("color"), alpha=0.3, lw=0, zorder=1)
        y = y.rolling(k, center=True, min_periods=1).mean()
    ax.plot(y.index, y.to_numpy(), marker="o" if k == 1 and len(y) < 30 else None, zorder=3,
            label=label.format(last=last), **line)
    return y


@_styled
def coverage_curves(history: pd.DataFrame):
    """Over training: the share of unlabeled pixels that carry an intersection label (where the nets
    agree) vs a union label (all of them), and each label kind's accuracy against the true masks.
    Each logged value is one batch: on a long run the lines are running means over a few logged
    batches (the batches themselves as faint dots), the legend gives each line's mean over the last
    of them, and both y axes are scaled to the data so a gap of a few points stays visible."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.4))
    rows = _label_rows(history)
    if rows.empty:
        _nothing(a1, "no pseudo labels in this run\n(supervised only, or λ was 0 throughout)")
        _nothing(a2, "no pseudo labels in this run")
        fig.suptitle("Pseudo-label coverage and accuracy")
        return fig
    x = rows["iteration"]
    k = _smoothing(len(rows))
    last = f"mean of the last {k} logged batches" if k > 1 else "the last logged batch"
    for ax in (a1, a2):
        _shade_supervised_start(ax, history)
    a1.axhline(100, color="C1", lw=3, label="union (every pixel): 100 %")
    _smoothed_curve(a1, x, 100 * rows["agreement"], k, "intersection (nets agree): {last:.1f} %", color="C0", lw=2.0)
    a1.set(xlabel="iteration", ylabel="unlabeled pixels with a label (%)",
           ylim=_data_limits(100 * rows["agreement"], [100]), xlim=(0, history["iteration"].max()),
           title="Coverage: how many pixels get a label")
    # The union label is net 2's wherever net 2's class wins, so its curve can lie on net 2's: the
    # single nets are drawn thinner and dashed on top, so neither line hides the other.
    kinds = (("acc_union", "union", "C1", "-", 4.0), ("acc_inter", "intersection", "C0", "-", 2.4),
             ("acc_y1", "net 1 alone", "C2", "--", 1.4), ("acc_y2", "net 2 alone", "C3", "--", 1.4))
    shown = [kind for kind in kinds if kind[0] in rows and rows[kind[0]].notna().any()]
    for col, name, colour, ls, lw in shown:
        _smoothed_curve(a2, x, 100 * rows[col], k, name + ": {last:.1f} %", color=colour, ls=ls, lw=lw)
    if shown:
        a2.set(xlabel="iteration", ylabel="accuracy vs true masks (%)",
               ylim=_data_limits(100 * rows[[kind[0] for kind in shown]].to_numpy(), floor=0, min_pad=1),
               xlim=(0, history["iteration"].max()), title="Accuracy of each kind of pseudo label")
    else:
        _nothing(a2, "no true masks for the unlabeled images")
    # Below the axes: inside, a legend would cover the curves the scaled axis spreads over the panel.
    for ax in (a1, a2) if shown else (a1,):
        # borderaxespad (in font sizes) clears the tick labels and the x label whatever the axes' height
        ax.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, 0), borderaxespad=4.4, ncol=2,
                  title=f"values: {last}", title_fontsize=9)
    smooth = f"\n(lines: running mean over {k} logged batches; dots: single batches)" if k > 1 else ""
    fig.suptitle(f"Conservative (intersection) vs progressive (union) pseudo labels{smooth}")
    fig.tight_layout()
    return fig


def _class_by_iteration(history, prefix: str, class_names, max_cols: int = 12) -> tuple[pd.DataFrame, str]:
    """(classes x iterations table of the per-class columns ``prefix<c>``, logged rows per column:
    "1", "8" or "7–8").

    Each logged row is one batch of a few scenes, which holds few of the classes: alone, most of a
    class's cells would be empty. Consecutive rows are pooled into at most ``max_cols`` columns of
    equal size (within one row), labelled by their last iteration; a cell is the mean over the
    pooled rows where the class has a value. History keeps a share per batch but not its pixel
    count, so each batch that holds the class counts once. NaN only where none of the pooled
    batches holds the class."""
    rows = _label_rows(history)
    cols = [f"{prefix}{c}" for c in range(len(class_names)) if f"{prefix}{c}" in rows]
    if rows.empty or not cols:
        return pd.DataFrame(), "1"
    n = len(rows)
    group = np.arange(n) * min(max_cols, n) // n
    table = rows[cols].astype(float).groupby(group).mean().T
    table.index = [class_names[int(c[len(prefix):])] for c in cols]
    table.columns = rows["iteration"].astype(int).groupby(group).max().tolist()
    sizes = np.bincount(group)
    return table, str(sizes.min()) if sizes.min() == sizes.max() else f"{sizes.min()}–{sizes.max()}"


def _heatmap(table: pd.DataFrame, ax, cbar_label: str, vmin=None, vmax=None, cmap="viridis", fmt_pct=False,
             width: str = "1"):
    ax.set_facecolor(IGNORE_GREY)
    sns.heatmap(table, ax=ax, vmin=vmin, vmax=vmax, cmap=cmap, cbar_kws={"label": cbar_label},
                linewidths=0.3, linecolor="white")
    # The theme's grid would run through the empty (grey) cells, which no mesh covers.
    ax.grid(False)
    ax.set(xlabel="iteration" if width == "1" else f"iteration (each column: {width} logged batches, "
                                                    f"labelled by the last)", ylabel="class")
    ax.tick_params(axis="x", rotation=0)
    ax.tick_params(axis="y", rotation=0)
    if table.shape[1] > 12:
        step = int(np.ceil(table.shape[1] / 12))
        ax.set_xticks(np.arange(0, table.shape[1], step) + 0.5)
        ax.set_xticklabels(table.columns[::step])


@_styled
def coverage_heatmap(history: pd.DataFrame, class_names):
    """Per class and over training: of the pixels whose union label is class c, the share that also
    carries an intersection label (the nets agree), pooled over consecutive logged batches
    (``_class_by_iteration``). Grey: no pixel of that class in the union label of those batches."""
    table, width = _class_by_iteration(history, "inter_frac_", class_names)
    fig, ax = plt.subplots(figsize=(min(3 + 0.6 * max(table.shape[1], 8), 14), 0.42 * len(class_names) + 1.8))
    if table.empty:
        _nothing(ax, "no pseudo labels in this run")
    else:
        pooled = "\n(mean over the batches\nthat hold the class)" if width != "1" else ""
        _heatmap(100 * table, ax, f"% of the class's union pixels\nalso in the intersection{pooled}", 0, 100,
                 width=width)
    ax.set_title("Which classes the intersection keeps (grey: class absent from the union label)")
    fig.tight_layout()
    return fig


def _indicator_where_present(history: pd.DataFrame, num_classes: int) -> pd.DataFrame:
    """``history`` with ind_c set to NaN on the logged batches where neither net predicts class c:
    there Ĩ_c is 0 because the class is absent, not because the nets agree on it, and a mean over
    batches would read such zeros as "undisputed". Absent: Ĩ_c = 0 and no union pixel of c
    (inter_frac_c NaN); a class the nets agree on everywhere keeps its 0."""
    h = history.copy()
    for c in range(num_classes):
        ind, frac = f"ind_{c}", f"inter_frac_{c}"
        if ind in h and frac in h:
            h.loc[(h[ind] == 0) & h[frac].isna() & h["agreement"].notna(), ind] = np.nan
    return h


@_styled
def indicator_over_training(history: pd.DataFrame, class_names, kind: str = "heatmap"):
    """The class-wise disagreement indicator Ĩ_c over training, as a heatmap (classes x iterations,
    pooled over consecutive logged batches as ``coverage_heatmap`` is, so their columns match) or as
    one line per class in the class colours (every logged batch). Batches where neither net predicts
    a class leave its cell empty (grey) or its line broken."""
    if history is not None and "agreement" in history:
        history = _indicator_where_present(history, len(class_names))
    table, width = _class_by_iteration(history, "ind_", class_names, max_cols=12 if kind == "heatmap" else 10_000)
    if kind == "heatmap":
        fig, ax = plt.subplots(figsize=(min(3 + 0.6 * max(table.shape[1], 8), 14), 0.42 * len(class_names) + 1.8))
        if table.empty:
            _nothing(ax, "no pseudo labels in this run")
        else:
            _heatmap(table, ax, "Ĩ_c (normalised; sums to 1)" + ("\n(mean over the batches)" if width != "1" else ""),
                     0, None, cmap="magma", width=width)
    elif kind == "lines":
        fig, ax = plt.subplots(figsize=(10, 4.2))
        if table.empty:
            _nothing(ax, "no pseudo labels in this run")
        else:
            pal = class_palette(len(class_names))
            for c, name in enumerate(class_names):
                if name in table.index:
                    ax.plot(table.columns, table.loc[name], color=pal[c] if c else "0.2", label=name, lw=2)
            ax.set(xlabel="iteration", ylabel="Ĩ_c (normalised; sums to 1)")
            ax.legend(ncol=2, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    else:
        raise ValueError(f"kind: expected 'heatmap' or 'lines', got {kind!r}")
    ax.set_title("Class-wise disagreement indicator over training (higher = more disputed; the union\n"
                 f"label favours the more disputed class; {'grey' if kind == 'heatmap' else 'gaps'}: "
                 "neither net predicts the class)")
    fig.tight_layout()
    return fig


@_styled
def weights_over_training(history: pd.DataFrame):
    """Mean loss weights over training: intersection and union targets, agreeing vs disagreeing
    pixels. As in ``coverage_curves``: running means over a few logged batches on a long run (the
    batches as faint dots), and a y axis scaled to the data."""
    rows = _label_rows(history)
    fig, ax = plt.subplots(figsize=(10, 3.8))
    if rows.empty:
        _nothing(ax, "no pseudo labels in this run")
    else:
        _shade_supervised_start(ax, history)
        k = _smoothing(len(rows))
        # ω_inter and ω_union share their values on agreeing pixels and can coincide: the thicker
        # line goes first, the thinner and dashed ones on top of it.
        kinds = [kind for kind in (("w_union", "ω_union (net 2's target, all pixels)", "C0", "-", 4.0),
                                   ("w_inter", "ω_inter (net 1's target, all pixels)", "C1", "-", 1.8),
                                   ("w_agree", "on agreeing pixels", "C2", "--", 1.8),
                                   ("w_disagree", "on disagreeing pixels", "C3", ":", 2.2)) if kind[0] in rows]
        for col, name, colour, ls, lw in kinds:
            _smoothed_curve(ax, rows["iteration"], rows[col], k, name + (": {last:.3f}"), color=colour, ls=ls, lw=lw)
        low, high = _data_limits(rows[[kind[0] for kind in kinds]].to_numpy(), min_pad=0.02)
        ax.set(xlabel="iteration", ylabel="mean loss weight ω", ylim=(low, min(high, 1.02)),
               xlim=(0, history["iteration"].max()))
        ax.legend(fontsize=9, loc="center left", bbox_to_anchor=(1.01, 0.5),
                  title=f"values: mean of the last {k} logged batches" if k > 1 else "values: the last logged batch",
                  title_fontsize=9)
    smooth = "" if rows.empty or k == 1 else f"\n(lines: running mean over {k} logged batches; dots: single batches)"
    ax.set_title("Confidence weights over training" + smooth)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------------
# the weighting rule and whether it tracks correctness


@_styled
def weighting_surface(num_classes: int = 11, union_rule: str = "disagreement"):
    """CPCL's pixel weight as a function of the two teachers' confidences c1, c2 (max softmax, in
    [1/C, 1]). Left: agreeing pixels, ω = (c1 + c2)/2. Right: disagreeing pixels whose union label is
    net 1's class. Under the disagreement rule the indicator picked that class whatever the
    confidences, so ω = c1 even where net 2 was surer (above the diagonal, marked): there the union
    takes the less sure net's class and the lower weight c1 tempers that choice. Under the
    confidence rule the union follows net 1 only where c1 > c2 and ω = max(c1, c2)."""
    lo = 1 / num_classes
    c = np.linspace(lo, 1, 121)
    c1, c2 = np.meshgrid(c, c)
    fig, axes = plt.subplots(1, 2, figsize=(11.5, 5.0), sharey=True)
    levels = np.linspace(0, 1, 21)
    if union_rule == "disagreement":
        right = c1
        rtitle = ("Disagreeing pixel, the union takes net 1's class\n"
                  "(its class more disputed, Ĩ[y₁] > Ĩ[y₂]): ω = c₁")
        notes = ((lo + 0.04, 0.96, "net 2 was surer (c₂ > c₁):\nthe union still takes net 1's\n"
                                     "class, at the lower weight c₁"),
                 (0.96, lo + 0.04, "net 1 was surer:\nω = c₁ ≥ c₂"))
    elif union_rule == "confidence":
        right = np.maximum(c1, c2)
        rtitle = "Disagreeing pixel, confidence rule: the union\ntakes the surer net's class, ω = max(c₁, c₂)"
        notes = ()
    else:
        raise ValueError(f"union_rule: expected 'disagreement' or 'confidence', got {union_rule!r}")
    shown = [v for v in (0.25, 0.5, 0.75, 0.9) if v > lo + 0.02]
    for ax, w, title, at in ((axes[0], (c1 + c2) / 2, "Agreeing pixel (both targets):\nω = (c₁ + c₂) / 2",
                              [(v, v) for v in shown]),
                             (axes[1], right, rtitle, [(v, lo + 0.4 * (v - lo)) for v in shown])):
        cs = ax.contourf(c1, c2, w, levels=levels, cmap="viridis", vmin=0, vmax=1)
        lines = ax.contour(c1, c2, w, levels=shown, colors="white", linewidths=1)
        # Labels placed well inside the panel: left to matplotlib, the 0.75 label sat on the frame
        # and was cut in half.
        ax.clabel(lines, fmt="%.2f", fontsize=9, manual=at)
        ax.set(xlabel="net 1's confidence c₁ (max softmax)", title=title, aspect="equal", xlim=(lo, 1), ylim=(lo, 1))
        ax.grid(False)
    for x, y, text in notes:
        axes[1].text(x, y, text, ha="left" if y > 0.5 else "right", va="top" if y > 0.5 else "bottom",
                     fontsize=9, bbox=dict(boxstyle="round,pad=0.3", fc="white", ec="0.5", alpha=0.85))
    if notes:
        axes[1].plot([lo, 1], [lo, 1], color="white", ls="--", lw=1.5)
        axes[1].fill_between([lo, 1], [lo, 1], [1, 1], facecolor="none", hatch="//", edgecolor=(1, 1, 1, 0.5), lw=0)
    axes[0].set_ylabel("net 2's confidence c₂ (max softmax)")
    fig.colorbar(cs, ax=axes, label="loss weight ω of the pixel", shrink=0.9)
    fig.suptitle(f"Dynamic confidence re-weighting ({num_classes} classes: confidence ≥ 1/{num_classes})", y=1.02)
    return fig


@_styled
def weight_distributions(weights, correct, label: str = "union label", bins: int = 20):
    """Histogram of the loss weights on pixels whose pseudo label is correct vs wrong (each group
    normalised to 100 %); NaN entries of ``correct`` (unknown truth, or no label) are dropped."""
    w, ok = _np(weights), _np(correct)
    keep = ~np.isnan(ok)
    w, good = w[keep], ok[keep] > 0.5
    fig, ax = plt.subplots(figsize=(8, 3.8))
    if not len(w):
        _nothing(ax, "no pixels with a known true class")
    else:
        names = {True: f"correct (mean ω {w[good].mean():.2f})" if good.any() else "correct",
                 False: f"wrong (mean ω {w[~good].mean():.2f})" if (~good).any() else "wrong"}
        df = pd.DataFrame({"weight": w, "pseudo label": [names[g] for g in good]})
        colours = {names[True]: "C2", names[False]: "C3"}
        sns.histplot(df, x="weight", hue="pseudo label", stat="percent", common_norm=False, bins=bins,
                     binrange=(0, 1), element="step", palette=colours, ax=ax,
                     hue_order=[k for k in colours if k in set(df["pseudo label"])])
        for g in (True, False):
            if (good == g).any():
                ax.axvline(w[good == g].mean(), color=colours[names[g]], ls="--", lw=2)
        ax.set(xlabel="loss weight ω", ylabel="% of the group's pixels", xlim=(0, 1))
    n_ok, n_bad = int(good.sum()), int((~good).sum())
    ax.set_title(f"Does a high weight mean a correct {label}? ({n_ok} correct, {n_bad} wrong pixels)")
    fig.tight_layout()
    return fig


@_styled
def reliability_diagram(conf, correct, bins: int = 10, lo: float = 0.0, label: str = "net 1"):
    """Confidence vs accuracy in ``bins`` equal-width bins over [lo, 1]; the diagonal is a perfectly
    calibrated net; the lower panel counts the pixels per bin. Title: expected calibration error."""
    from .analysis import expected_calibration_error, reliability_table

    table = reliability_table(conf, correct, bins=bins, lo=lo)
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(6, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    width = (1 - lo) / bins
    centres = (table["bin_lo"] + table["bin_hi"]) / 2
    a1.bar(centres, 100 * table["accuracy"].fillna(0), width=width * 0.95, color="C0", edgecolor="0.2",
           label="accuracy in the bin")
    a1.plot([lo, 1], [100 * lo, 100], color="C3", ls="--", lw=2, label="perfect calibration")
    a1.plot(table["mean_conf"], 100 * table["accuracy"], "o", color="C1", label="(mean confidence, accuracy)")
    a1.set(ylabel="pseudo-label accuracy (%)", ylim=(0, 102), xlim=(lo, 1))
    a1.legend(fontsize=9, loc="upper left")
    ece = expected_calibration_error(table)
    a1.set_title(f"Reliability of {label}'s confidence (ECE = {100 * ece:.1f} points)")
    a2.bar(centres, table["count"], width=width * 0.95, color="0.6", edgecolor="0.2")
    # Most pixels sit in the last bin, which flattens the others: their counts are written out, so
    # a bar of the upper panel can be weighed by how many pixels it holds.
    for x, n in zip(centres, table["count"]):
        a2.annotate(f"{n:,}", (x, n), xytext=(0, 2), textcoords="offset points", ha="center", va="bottom", fontsize=7)
    a2.set(xlabel="confidence (max softmax)", ylabel="pixels", ylim=(0, max(table["count"].max(), 1) * 1.35))
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------------
# the disagreement indicator of one batch, and pseudo labels on images


@_styled
def indicator_bars(indicator, class_names, highlight: dict | None = None,
                   title: str = "Class-wise disagreement indicator Ĩ of this batch"):
    """Ĩ_c per class as bars in the class colours; ``highlight`` {class index: note} marks classes
    (e.g. the two labels of a disagreeing pixel)."""
    ind = _np(indicator)
    pal = class_palette(len(class_names))
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(class_names) + 2), 3.8))
    x = np.arange(len(ind))
    ax.bar(x, ind, color=[pal[c] for c in x], edgecolor="0.2")
    # The marked classes are told apart by their outline and named in a legend: notes written over
    # the bars collide when the two classes stand side by side.
    # A black outline over a white one shows on every class colour, the red and black bars included.
    for (c, note), ls in zip((highlight or {}).items(), ("-", "--", ":", "-.")):
        ax.bar([c], [ind[c]], color="none", edgecolor="white", lw=5)
        ax.bar([c], [ind[c]], color="none", edgecolor="black", lw=2.5, ls=ls, label=note)
    if highlight:
        ax.legend(fontsize=10, loc="upper right")
    ax.set_xticks(x)
    ax.set_xticklabels(class_names, rotation=45 if max(len(n) for n in class_names) > 3 else 0, ha="right"
                       if max(len(n) for n in class_names) > 3 else "center")
    ax.set(xlabel="class", ylabel="Ĩ_c (sums to 1)", title=title)
    ax.set_ylim(0, max(ind.max() * 1.4, 1e-3))
    fig.tight_layout()
    return fig


@_styled
def prediction_grid(images, masks, predictions: dict, class_names, title: str | None = None):
    """One row per scene: the image, its true mask and each named prediction ({name: [n,H,W]}),
    in the class colours (grey = ignore)."""
    n, c = len(images), len(class_names)
    cols = ["image", "true mask"] + list(predictions)
    fig, axes = plt.subplots(n, len(cols), figsize=(2.0 * len(cols), 2.1 * n + 0.8), squeeze=False)
    for r in range(n):
        axes[r, 0].imshow(display_image(images[r]))
        axes[r, 1].imshow(colourise(masks[r], c), interpolation="nearest")
        for k, pred in enumerate(predictions.values(), start=2):
            axes[r, k].imshow(colourise(pred[r], c), interpolation="nearest")
    for k, name in enumerate(cols):
        axes[0, k].set_title(name, fontsize=10)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.1 if n == 1 else 0.06, 1, 1))
    class_legend(fig, class_names)
    return fig


@_styled
def prediction_overlays(images, masks, labels, index, class_names, threshold: float = 0.0,
                        mark: tuple | None = None, title: str | None = None, row_names=None):
    """Image, true mask, net 1's and net 2's labels, the intersection label (net 1's target), the
    union label (net 2's target) and their loss weights, in the class colours (grey = no label /
    ignore). ``index``: a list of scenes (one row each) or one scene (an int: a larger 2 x 4 layout,
    for projecting). ``threshold`` > 0 greys out pseudo labels whose weight is below it (CPCL itself
    uses no threshold). ``mark=(scene, row, col)`` rings one pixel (white in black). ``row_names``:
    one name per row instead of "scene b"."""
    single = isinstance(index, (int, np.integer))
    idx = [int(index)] if single else [int(i) for i in index]
    c = len(class_names)
    cmap = plt.get_cmap("viridis").with_extremes(bad=IGNORE_GREY)
    if single:
        fig, grid = plt.subplots(2, 4, figsize=(11, 6.4), squeeze=False)
        rows = [grid.ravel()]
    else:
        fig, grid = plt.subplots(len(idx), 8, figsize=(15.6, 2.15 * len(idx) + 0.9), squeeze=False)
        rows = list(grid)
    for axes, b in zip(rows, idx):
        for k, (ax, (panel, is_weight)) in enumerate(zip(axes, overlay_panels(images, masks, labels, b, c, threshold))):
            if is_weight:
                im = ax.imshow(panel, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            else:
                ax.imshow(panel, interpolation="nearest")
            if single or b == idx[0]:
                sep = "\n"  # a title of one line collides with its neighbour once enlarged
                ax.set_title(OVERLAY_TITLES[k] + (f"{sep}(ω ≥ {threshold:.2f})" if threshold > 0 and k in (4, 5) else ""),
                             fontsize=11 if single else 10)
            if mark is not None and mark[0] == b:
                # A white ring inside a black one shows on every class colour (a red ring vanished
                # on class 3), and is drawn unclipped so a pixel at the border keeps its whole ring.
                for ms, colour, mew in ((13, "black", 4.5), (13, "white", 2.0)):
                    ax.plot(mark[2], mark[1], "o", ms=ms, mfc="none", mec=colour, mew=mew, clip_on=False,
                            label="the disputed pixel")
        agree = 100 * labels.agree[b].float().mean().item()
        name = row_names[idx.index(b)] if row_names else f"scene {b}"
        axes[0].set_ylabel(f"{name}\nnets agree on {agree:.0f} %", fontsize=10)
    for ax in grid.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.1 if len(idx) == 1 else 0.06, 0.93, 1))
    cax = fig.add_axes([0.94, 0.25, 0.012, 0.5])
    fig.colorbar(im, cax=cax, label="loss weight ω")
    class_legend(fig, class_names)
    return fig


# ------------------------------------------------------------------------------------------------
# ablations and per-class results


def _variant_order(names) -> list:
    from ..experiments.ablate import VARIANTS

    names = list(dict.fromkeys(names))
    return [v for v in VARIANTS if v in names] + [v for v in names if v not in VARIANTS]


@_styled
def ablation_bars(table: pd.DataFrame, metric: str = "miou", title: str | None = None):
    """``metric`` (× 100) per variant: bars = mean over seeds, ticks = ± 1 standard deviation, dots =
    single seeds; one colour per labeled fraction when the table holds several."""
    fig, ax = plt.subplots(figsize=(max(6, 1.25 * table["variant"].nunique() + 2), 4.4))
    if table.empty or metric not in table:
        _nothing(ax, "no finished runs")
        return fig
    df = table.copy()
    col = {"miou": "mIoU (%)", "digit_miou": "digit-only mIoU (%)", "pixel_acc": "pixel accuracy (%)"}.get(metric, metric)
    df[col] = 100 * df[metric].astype(float)
    df["labeled"] = df["labeled"].astype(str)
    order = _variant_order(df["variant"])
    hue = "labeled" if df["labeled"].nunique() > 1 else None
    sns.barplot(df, x="variant", y=col, hue=hue, order=order, errorbar="sd", capsize=0.15,
                color=None if hue else "C0", alpha=0.85, ax=ax, err_kws={"linewidth": 1.5})
    sns.stripplot(df, x="variant", y=col, hue=hue, order=order, dodge=bool(hue), color="0.15",
                  size=5, ax=ax, legend=False, palette=None if not hue else ["0.15"] * df["labeled"].nunique())
    if not hue:
        stats = df.groupby("variant")[col].agg(["mean", "std", "max"]).fillna(0)
        for i, v in enumerate(order):
            top = max(stats.loc[v, "mean"] + stats.loc[v, "std"], stats.loc[v, "max"])
            ax.annotate(f"{stats.loc[v, 'mean']:.1f}", (i, top), xytext=(0, 4), textcoords="offset points",
                        ha="center", va="bottom", fontsize=10, fontweight="bold")
    ax.set_ylim(0, max(ax.get_ylim()[1], df[col].max()) * 1.12)
    seeds = df.groupby(["variant", "labeled"]).size().max()
    spread = "; ticks: ± 1 sd" if seeds > 1 else " (one seed: no spread to show)"
    ax.set(xlabel="", title=title or f"{col} per variant (bars: mean of {seeds} seed(s){spread}; dots: single runs)")
    ax.tick_params(axis="x", rotation=20)
    if hue:
        ax.legend(title="labeled fraction", fontsize=9)
    fig.tight_layout()
    return fig


def _per_class_long(data, class_names) -> pd.DataFrame:
    if isinstance(data, dict) and "per_class_iou" in data:
        data = {data.get("method", "run"): data}
    if isinstance(data, dict):
        rows = []
        for name, m in data.items():
            names = class_names or m.get("class_names") or [str(i) for i in range(len(m["per_class_iou"]))]
            rows += [{"variant": name, "class": n, "iou": np.nan if v is None else v}
                     for n, v in zip(names, m["per_class_iou"])]
        return pd.DataFrame(rows)
    if isinstance(data, pd.Series):
        data = data.to_frame(data.name or "run")
    if isinstance(data, pd.DataFrame):
        if "iou" in data and "class" in data:  # long: one row per (run, class)
            df = data.copy()
            if "variant" not in df:
                df["variant"] = "run"
            return df
        wide = data.copy()  # wide: index = classes, one column per run
        wide.index = [str(i) for i in wide.index]
        wide.index.name = "class"
        return (wide.reset_index().melt(id_vars="class", var_name="variant", value_name="iou")
                .assign(iou=lambda d: pd.to_numeric(d["iou"], errors="coerce")))
    raise ValueError("per_class_iou: expected a metrics dict, {name: metrics dict}, a long table "
                     "(class, iou[, variant]) or a wide one (classes x runs)")


@_styled
def per_class_iou(data, class_names=None, title: str = "Per-class IoU on the validation set"):
    """Per-class IoU (%) as grouped bars. ``data``: a run's metrics dict, a dict {name: metrics},
    a wide table (index = classes, one column per run; None/NaN = class absent), or a long table with
    columns class, iou (and variant; several rows per variant and class, e.g. seeds, give ± 1 sd
    ticks) such as ``ablate.per_class(folder)``."""
    df = _per_class_long(data, class_names)
    df["IoU (%)"] = 100 * df["iou"].astype(float)
    order = list(dict.fromkeys(class_names or df["class"].tolist()))
    variants = _variant_order(df["variant"])
    fig, ax = plt.subplots(figsize=(max(8, 0.75 * len(order) * max(1, len(variants)) ** 0.5 + 2), 4.2))
    sns.barplot(df, x="class", y="IoU (%)", hue="variant", order=order, hue_order=variants,
                errorbar="sd", ax=ax, err_kws={"linewidth": 1.2})
    ax.set(xlabel="class", ylim=(0, 100), title=title)
    ax.legend(title="", fontsize=9, ncol=min(4, len(variants)), loc="upper right")
    if max(len(str(n)) for n in order) > 3:
        ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------------
# data (notebook 01)


def _bare(ax):
    ax.set_xticks([])
    ax.set_yticks([])


@_styled
def scene_gallery(images, masks, class_names, k: int = 8):
    """The first ``k`` scenes (top row) over their masks (bottom row), with the class legend."""
    k = min(k, len(images))
    fig, axes = plt.subplots(2, k, figsize=(1.6 * k, 3.8), squeeze=False)
    for i in range(k):
        axes[0, i].imshow(display_image(images[i]))
        axes[1, i].imshow(colourise(masks[i], len(class_names)), interpolation="nearest")
    for ax in axes.flat:
        _bare(ax)
    axes[0, 0].set_ylabel("image")
    axes[1, 0].set_ylabel("mask")
    class_legend(fig, class_names)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


@_styled
def class_frequencies(masks_by_split: dict, class_names) -> tuple:
    """Pixel share (%) of every class per split, as a log-scale bar chart and a DataFrame."""
    rows = []
    for split, masks in masks_by_split.items():
        counts = np.bincount(np.asarray(masks).ravel(), minlength=256)[: len(class_names)]
        rows += [{"class": n, "pixel share (%)": 100 * c / counts.sum(), "split": split}
                 for n, c in zip(class_names, counts)]
    table = pd.DataFrame(rows)
    fig, ax = plt.subplots(figsize=(9, 3.2))
    sns.barplot(data=table, x="class", y="pixel share (%)", hue="split", ax=ax)
    ax.set_yscale("log")  # background dwarfs every digit; a log axis keeps the digits readable
    shares = table["pixel share (%)"]
    low = 10 ** np.floor(np.log10(shares[shares > 0].min())) if (shares > 0).any() else 1.0
    ticks = [t for t in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100) if t >= low]
    ax.set_yticks(ticks, labels=[f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set(ylim=(low, 100), title="Class pixel frequencies (log scale)")
    fig.tight_layout()
    return fig, table


@_styled
def augmentation_grid(image, mask, recipes: dict, class_names, k: int = 4):
    """For each named joint transform: the original and ``k`` random draws (image row, mask row).
    Draw j runs under ``torch.manual_seed(j)``, as the loader seeds every sample."""
    fig, axes = plt.subplots(2 * len(recipes), k + 1, figsize=(1.7 * (k + 1), 3.6 * len(recipes)),
                             squeeze=False)
    c = len(class_names)
    for r, (name, tf) in enumerate(recipes.items()):
        axes[2 * r, 0].imshow(display_image(image.permute(1, 2, 0).numpy() if image.dtype == torch.uint8 else image))
        axes[2 * r + 1, 0].imshow(colourise(mask, c), interpolation="nearest")
        axes[2 * r, 0].set_ylabel(f"{name}\nimage", fontsize=9)
        axes[2 * r + 1, 0].set_ylabel(f"{name}\nmask", fontsize=9)
        axes[2 * r, 0].set_title("original", fontsize=9)
        for j in range(k):
            axes[2 * r, j + 1].set_title(f"draw {j + 1}", fontsize=9)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(j)
                x, y = tf(image, mask)
            axes[2 * r, j + 1].imshow(display_image(x))
            axes[2 * r + 1, j + 1].imshow(colourise(y, c), interpolation="nearest")
    for ax in axes.flat:
        _bare(ax)
    class_legend(fig, class_names)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


@_styled
def student_view_grid(u0, view, truth, class_names, u1=None, mask=None, void=None, rows: int = 3,
                      title: str | None = None):
    """What the students see, one scene a row: u0 (the teachers' image), u1 and the CutMix mask M
    when the recipe mixes (1 = from u1), the students' view and its true mask, grey where the step
    gives no pseudo label (``void``: pixels warped in from outside the scene)."""
    shown_truth = truth if void is None else truth.masked_fill(void, IGNORE_INDEX)
    columns = {"u0: the teachers' image": u0}
    if mask is not None:
        columns.update({"u1": u1, "CutMix mask M (white: u1)": mask})
    columns.update({"the students' view": view, "its true mask (grey: no label)": shown_truth})
    rows = min(rows, len(u0))
    fig, axes = plt.subplots(rows, len(columns), figsize=(2.3 * len(columns), 2.3 * rows + 0.6), squeeze=False)
    for col, (name, t) in enumerate(columns.items()):
        axes[0, col].set_title(name, fontsize=10)
        for r in range(rows):
            ax = axes[r, col]
            if t.dim() == 4 and t.shape[1] == 1:
                ax.imshow(t[r, 0], cmap="gray", vmin=0, vmax=1)
            elif t.dim() == 3:
                ax.imshow(colourise(t[r], len(class_names)), interpolation="nearest")
            else:
                ax.imshow(display_image(t[r]))
            _bare(ax)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


@_styled
def cpcl_loop(student_view: str = "CutMix boxes", title: str = "One CPCL iteration"):
    """The two-net loop as a diagram, in notebook 04's symbols: the labeled batch trains both nets
    (students' softmax q₁, q₂); on the unlabeled batch both nets act as teachers (no gradient,
    softmax p₁, p₂), their labels become the intersection (net 1's target) and the union (net 2's
    target), and both nets, as students, learn them on ``student_view``."""
    import textwrap

    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    fig, ax = plt.subplots(figsize=(13, 5.6))
    ax.set(xlim=(0, 13), ylim=(-0.5, 6.1))
    ax.axis("off")
    # p is always a teacher's softmax and q a student's, as in the notebook's formulas.
    view = textwrap.fill(student_view, 36)
    boxes = {
        "lab": (0.2, 4.9, "labeled batch\n$x_l$, true masks $y_l$", "0.92"),
        "sup": (4.6, 4.9, "net 1, net 2 predict $x_l$ (with gradient):\nsoftmax $q_1(x_l)$, $q_2(x_l)$", "#d9e8f5"),
        "ce": (9.2, 4.9, "$\\ell_{sup} = CE(q_1(x_l), y_l) + CE(q_2(x_l), y_l)$", "#d9e8f5"),
        "unl": (0.2, 2.7, "unlabeled batch\n$u_0$ ($u_1$ too\nfor CutMix)", "0.92"),
        "teach": (3.2, 2.7, "TEACHERS (no gradient)\nnet 1, net 2 predict $u_0$:\nsoftmax $p_1$, $p_2$", "#fde9c9"),
        "lab12": (6.1, 2.7, "labels $y_k = \\arg\\max\\, p_k$\nconfidences $c_k = \\max\\, p_k$", "#fde9c9"),
        "inter": (9.2, 3.4, "intersection $\\hat y^{\\cap}$: $y_1$ where $y_1 = y_2$\nweights $\\omega^{\\cap}$",
                  "#e3f1dc"),
        "union": (9.2, 2.0, "union $\\hat y^{\\cup}$: every pixel, $\\tilde I$ settles\n"
                            "disagreements; weights $\\omega^{\\cup}$", "#e3f1dc"),
        "view": (0.2, 0.4, f"the students' view\n{view}", "0.92"),
        "stud": (4.6, 0.4, "STUDENTS (with gradient)\nnet 1, net 2 predict the view:\nsoftmax $q_1$, $q_2$", "#d9e8f5"),
        "unsup": (9.2, 0.4, "$q_1$ learns $\\hat y^{\\cap}$, $q_2$ learns $\\hat y^{\\cup}$:\n"
                            "$\\lambda(\\ell^{\\cap} + \\ell^{\\cup})$", "#d9e8f5"),
    }
    centre = {}
    for key, (x, y, text, colour) in boxes.items():
        w = {"ce": 3.6, "inter": 3.6, "union": 3.6, "unsup": 3.6, "unl": 2.6, "teach": 2.6, "lab12": 2.5}.get(key, 3.4)
        h = 1.0
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.08", fc=colour, ec="0.3"))
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=10)
        centre[key] = (x, y, w, h)

    def arrow(a, b, text="", side="right"):
        xa, ya, wa, ha = centre[a]
        xb, yb, wb, hb = centre[b]
        if side == "right":
            start, end = (xa + wa + 0.1, ya + ha / 2), (xb - 0.1, yb + hb / 2)
        else:  # straight down, so the arrow does not cross its own note
            x = min(xa + wa, xb + wb) / 2 + max(xa, xb) / 2
            start, end = (x, ya - 0.1), (x, yb + hb + 0.1)
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=14, color="0.25", lw=1.4))
        if text:
            ax.text(start[0] + 0.15, (start[1] + end[1]) / 2, text, ha="left", va="center", fontsize=9, color="0.25")

    arrow("lab", "sup")
    arrow("sup", "ce")
    arrow("unl", "teach")
    arrow("teach", "lab12")
    arrow("lab12", "inter")
    arrow("lab12", "union")
    arrow("unl", "view", "same images, perturbed", side="down")
    arrow("view", "stud")
    arrow("stud", "unsup")
    ax.annotate("", xy=(11.0, 1.5), xytext=(11.0, 2.0),
                arrowprops=dict(arrowstyle="-|>", color="C2", lw=1.6))
    ax.text(11.15, 1.62, "targets", color="C2", fontsize=9)
    ax.text(6.5, -0.25, "loss $L = \\ell_{sup} + \\lambda(\\ell^{\\cap} + \\ell^{\\cup})$; one optimizer step "
            "per net", ha="center", fontsize=11, fontweight="bold")
    ax.set_title(title, loc="left")
    return fig


def for_projector(fig, scale: float = 1.25):
    """``fig`` with every text ``scale`` times larger, for a projected screen (the classroom demo)."""
    from matplotlib.text import Text

    for text in fig.findobj(Text):
        text.set_fontsize(text.get_fontsize() * scale)
    return fig


def hidden_lines(fig) -> list[str]:
    """Lines of ``fig`` that another line covers entirely: the same points, drawn later, solid and at
    least as wide. A figure should have none (draw the wider line first, or dash the later one)."""
    hidden = []
    for ax in fig.axes:
        lines = ax.get_lines()
        for i, low in enumerate(lines):
            x0, y0 = (np.asarray(v, dtype=float) for v in low.get_data())
            for top in lines[i + 1:]:
                x1, y1 = (np.asarray(v, dtype=float) for v in top.get_data())
                same = x0.shape == x1.shape and np.allclose(x0, x1, equal_nan=True) and np.allclose(y0, y1, equal_nan=True)
                if same and top.get_linestyle() == "-" and top.get_linewidth() >= low.get_linewidth() \
                        and (top.get_alpha() is None or top.get_alpha() >= 1) and top.get_visible():
                    hidden.append(f"{ax.get_title() or 'axes'}: {low.get_label()!r} under {top.get_label()!r}")
                    break
    return hidden


@_styled
def disagreement_regions(tables: dict, title: str = "Where the two nets disagree"):
    """Two panels from ``disagreement.where_they_disagree`` tables, one per method ({name: table}):
    the share of each region's pixels the nets disagree on, and how often the union label is right
    there."""
    rows = []
    for name, tab in tables.items():
        for region, r in tab.drop(index="all", errors="ignore").iterrows():
            rows.append({"run": name, "region": region, "disagree (%)": r["disagree (%)"],
                         "union right (%)": r["union right (%)"], "net 1 right (%)": r["net 1 right (%)"],
                         "net 2 right (%)": r["net 2 right (%)"]})
    df = pd.DataFrame(rows)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    if df.empty:
        for ax in axes:
            _nothing(ax, "no disagreement")
        return fig
    sns.barplot(data=df, x="region", y="disagree (%)", hue="run", ax=axes[0])
    axes[0].set(xlabel="", title="pixels where y1 ≠ y2")
    sns.barplot(data=df, x="region", y="union right (%)", hue="run", ax=axes[1])
    axes[1].set(xlabel="", ylim=(0, 100), title="of those: union label right")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


@_styled
def paired_differences(table: pd.DataFrame, baseline: str = "CPCL", title: str | None = None):
    """Each variant minus ``baseline`` from ``ablate.paired``'s table (one row per variant and
    fraction): the single seeds as dots, the mean as a diamond with its paired 95 % interval as a
    bar, and, where the table has a ``floor`` column, ± that float-order floor shaded behind the row.
    The axis spans the data and 0, so a small difference is not squeezed against a zero baseline."""
    from ..experiments.ablate import HIGH, LOW

    rows = table.reset_index() if len(table) else table
    if len(rows):  # the variants in the kit's order (the paper's ablations first), whatever the table's
        order = {v: i for i, v in enumerate(_variant_order(rows["variant"]))}
        rows = rows.sort_values("variant", key=lambda c: c.map(order), kind="stable").reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(9, 1.6 + 0.55 * max(1, len(rows))))
    if rows.empty:
        _nothing(ax, "no variant paired with the baseline yet")
        return fig
    names = [f"{r.variant} ({r.labeled})" if rows["labeled"].nunique() > 1 else str(r.variant)
             for r in rows.itertuples()]
    seeds = [c for c in rows.columns if str(c).startswith("seed ")]
    seen = set()

    def once(label):  # each legend entry once, from the first row that draws it
        return None if label in seen else seen.add(label) or label

    for i, (_, r) in enumerate(rows.iterrows()):
        if "floor" in rows and pd.notna(r["floor"]):
            ax.add_patch(plt.Rectangle((-r["floor"], i - 0.4), 2 * r["floor"], 0.8, color="0.9", zorder=0,
                                       label=once("± float-order floor")))
        values = r[seeds].dropna().astype(float)
        ax.scatter(values, [i] * len(values), s=22, color="0.35", zorder=3, label=once("single seeds"))
        if pd.notna(r[LOW]):
            ax.plot([r[LOW], r[HIGH]], [i, i], color="C0", lw=2.5, zorder=2, label=once("paired 95 % interval"))
        ax.scatter([r["mean"]], [i], marker="D", s=60, color="C0", zorder=4, label=once("mean"))
    ax.axvline(0, color="0.2", lw=1)
    ax.set_yticks(range(len(rows)), names)
    ax.invert_yaxis()
    ax.set(xlabel=f"mIoU minus {baseline}'s on the same seed (points)",
           title=title or f"Each variant minus {baseline}, paired by seed")
    ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the rows, never over them
    fig.tight_layout()
    return fig
