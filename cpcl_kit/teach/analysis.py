"""Analysis helpers for the notebooks: a shared CPCL run, its stage snapshots, tables.

Everything returns tensors on the CPU or pandas DataFrames; the figures live in ``plots``.
``shared_run`` trains one CPCL run per configuration into ``out_dir/runs/`` (named by
``runs.run_dir_name``) and reuses it when it is already finished, so the notebooks 04, 05, 06 and 08
of one ``make demo`` train it only once. While it trains it also keeps a few *stage snapshots* (the
two nets' weights at chosen iterations) for the classroom demo's "training stage" slider.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..constants import IGNORE_INDEX as IGNORE
from ..engine import runs
from ..method.cpcl import PseudoLabels


# ------------------------------------------------------------------------------------------------
# one shared CPCL run


def shared_run(cfg, out_dir, n_stages: int = 4, progress: bool = False, data=None):
    """The run of ``cfg`` that the notebooks share, in ``runs.notebook_run_dir(out_dir, cfg)``:
    trained once (with ``n_stages`` stage snapshots for notebook 08's slider), then reused, under
    the same-run rule (``train.run_or_load``). Returns a ``runs.RunResult`` with the nets in eval mode."""
    from ..engine.train import run_or_load

    run = run_or_load(cfg, runs.notebook_run_dir(out_dir, cfg), progress=progress, data=data,
                      stages=tuple(runs.stage_iterations(cfg, n_stages)))
    for net in run.nets:
        net.eval()
    return run


def stage_nets(run, device="cpu") -> dict[int, list]:
    """{iteration: nets in eval mode} for every stage snapshot of ``run`` (a ``RunResult``); a run
    without snapshots gives just its final nets."""
    last = run.config.iterations
    found = {it: runs.load_snapshot(p, device)[1] for it, p in runs.list_stages(run.out_dir).items()
             if it < last} if run.out_dir is not None else {}
    for net in run.nets:
        net.eval()
    found[last] = run.nets
    return dict(sorted(found.items()))


# ------------------------------------------------------------------------------------------------
# tables


def pixel_table(labels: PseudoLabels, masks: torch.Tensor | None = None) -> pd.DataFrame:
    """One row per pixel: conf1, conf2, agree, w_inter, w_union, y1, y2, union, truth and whether
    each label is correct (NaN where the true mask is unknown; ``inter_correct`` NaN off the
    intersection)."""
    cols = {"y1": labels.y1, "y2": labels.y2, "union": labels.union, "conf1": labels.conf1,
            "conf2": labels.conf2, "agree": labels.agree, "w_inter": labels.w_inter,
            "w_union": labels.w_union}
    df = pd.DataFrame({k: v.detach().cpu().reshape(-1).numpy() for k, v in cols.items()})
    if masks is not None:
        truth = masks.detach().cpu().reshape(-1).numpy()
        known = truth != IGNORE
        df["truth"] = truth
        for k in ("y1", "y2", "union"):
            df[f"{k}_correct"] = np.where(known, (df[k].to_numpy() == truth), np.nan)
        df["inter_correct"] = np.where(known & df["agree"].to_numpy(), df["y1_correct"], np.nan)
    return df


def label_quality(labels: PseudoLabels, masks: torch.Tensor) -> pd.DataFrame:
    """Per label kind (net 1, net 2, intersection, union): coverage (% of pixels with a label),
    accuracy against the true masks (% of labelled, known pixels) and mean loss weight (over the
    labelled pixels). A target's coverage counts the pixels that carry a label in it: the step
    leaves some without one (the padding of a warped student view, a pseudo-void band) even where
    the nets agree."""
    flat = lambda t: t.detach().cpu().reshape(-1)  # noqa: E731
    truth = flat(masks)
    known = truth != IGNORE
    rows = []
    for kind, label, weight in (("net 1 (y1)", labels.y1, None), ("net 2 (y2)", labels.y2, None),
                                ("intersection (net 1's target)", labels.inter, labels.w_inter),
                                ("union (net 2's target)", labels.union, labels.w_union)):
        label = flat(label)
        has = label != IGNORE
        sel = has & known
        rows.append({"label": kind, "coverage (%)": 100 * has.double().mean().item(),
                     "accuracy (%)": 100 * (label[sel] == truth[sel]).double().mean().item() if sel.any() else np.nan,
                     "mean weight": flat(weight)[has].double().mean().item() if weight is not None and has.any()
                     else np.nan})
    return pd.DataFrame(rows).round(2)


def label_quality_table(history: pd.DataFrame, last: int = 1) -> pd.DataFrame:
    """Coverage and accuracy of each label kind during training, from a run's history: the mean of
    the last ``last`` logged iterations that had the unsupervised loss on."""
    if "agreement" not in history:
        return pd.DataFrame(columns=["label", "coverage (%)", "accuracy (%)"])
    h = history.dropna(subset=["agreement"]).tail(last)
    get = lambda c: 100 * h[c].mean() if c in h else np.nan  # noqa: E731
    return pd.DataFrame([
        {"label": "net 1 (y1)", "coverage (%)": 100.0, "accuracy (%)": get("acc_y1")},
        {"label": "net 2 (y2)", "coverage (%)": 100.0, "accuracy (%)": get("acc_y2")},
        {"label": "intersection (net 1's target)", "coverage (%)": get("agreement"),
         "accuracy (%)": get("acc_inter")},
        {"label": "union (net 2's target)", "coverage (%)": 100.0, "accuracy (%)": get("acc_union")},
    ]).round(2)


def disagreeing_pixel(labels: PseudoLabels, class_names, masks: torch.Tensor | None = None,
                      index: int | None = None, seed: int = 0) -> dict:
    """One pixel where the two nets disagree and how the union rule decided it.

    Picks a seeded random disagreeing pixel (in scene ``index`` when given). Returns a dict: scene,
    row, col, the class ids y1, y2 and their names, the indicator of each, the adopted label and why, the confidences,
    the union weight and the true class (when ``masks`` is given). Empty dict if the nets agree
    everywhere."""
    dis = ~labels.agree
    if index is not None:
        keep = torch.zeros_like(dis)
        keep[index] = True
        dis = dis & keep
    dis = dis & (labels.union != IGNORE)  # not where the step gives no label
    if masks is not None and (dis & (masks != IGNORE)).any():
        dis = dis & (masks != IGNORE)  # where the truth is known, when there is such a pixel
    where = dis.nonzero()
    if len(where) == 0:
        return {}
    b, r, c = where[torch.randint(len(where), (1,), generator=torch.Generator().manual_seed(seed))].squeeze(0).tolist()
    y1, y2 = int(labels.y1[b, r, c]), int(labels.y2[b, r, c])
    i1, i2 = float(labels.indicator[y1]), float(labels.indicator[y2])
    chosen = int(labels.union[b, r, c])
    out = {"scene": b, "row": r, "col": c, "y1": y1, "y2": y2,
           "net 1 says": class_names[y1], "net 2 says": class_names[y2],
           "Ĩ[net 1's class]": round(i1, 4), "Ĩ[net 2's class]": round(i2, 4),
           "conf 1": round(float(labels.conf1[b, r, c]), 3), "conf 2": round(float(labels.conf2[b, r, c]), 3),
           "union label": class_names[chosen],
           "taken from": "net 1" if chosen == y1 else "net 2",
           "union weight": round(float(labels.w_union[b, r, c]), 3)}
    if masks is not None:
        t = int(masks[b, r, c])
        out["true class"] = class_names[t] if t != IGNORE else "unknown"
        out["union right?"] = "unknown" if t == IGNORE else ("yes" if chosen == t else "no")
    return out


def reliability_table(conf, correct, bins: int = 10, lo: float = 0.0) -> pd.DataFrame:
    """Confidence bins over [lo, 1]: mean confidence, accuracy and pixel count per bin (NaN
    entries of ``correct`` are dropped)."""
    conf = np.asarray(torch.as_tensor(conf).detach().cpu().reshape(-1), dtype=float)
    correct = np.asarray(torch.as_tensor(correct).detach().cpu().reshape(-1), dtype=float)
    ok = ~np.isnan(correct)
    conf, correct = conf[ok], correct[ok]
    edges = np.linspace(lo, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    rows = []
    for k in range(bins):
        sel = which == k
        rows.append({"bin_lo": edges[k], "bin_hi": edges[k + 1], "count": int(sel.sum()),
                     "mean_conf": conf[sel].mean() if sel.any() else np.nan,
                     "accuracy": correct[sel].mean() if sel.any() else np.nan})
    return pd.DataFrame(rows)


def expected_calibration_error(table: pd.DataFrame) -> float:
    """ECE: the count-weighted mean |accuracy − confidence| over the bins of ``reliability_table``."""
    t = table[table["count"] > 0]
    if t.empty:
        return float("nan")
    return float((t["count"] * (t["accuracy"] - t["mean_conf"]).abs()).sum() / t["count"].sum())


def accuracy_by_weight(weights, correct, quantiles: int = 4) -> pd.DataFrame:
    """Pixels split by their weight ω into about ``quantiles`` groups of about equal size: the
    weight range, pixel count, wrong labels and pseudo-label accuracy (%) of each group (NaN entries
    of ``correct`` are dropped). Pixels of equal weight stay in one group, and a weight that alone
    holds a group's worth of pixels (ω = 1 at float precision, say) is a group of its own. Weights
    bunch just under 1, so the ranges are written with as many decimals as it takes for every cut
    to read differently, and for none under 1 to read as 1."""
    w = np.asarray(torch.as_tensor(weights).detach().cpu().reshape(-1), dtype=float)
    c = np.asarray(torch.as_tensor(correct).detach().cpu().reshape(-1), dtype=float)
    ok = ~np.isnan(c)
    w, c = w[ok], c[ok]
    if not len(w):
        return pd.DataFrame(columns=["weight range", "pixels", "wrong labels", "accuracy (%)"])
    values, inverse, counts = np.unique(w, return_inverse=True, return_counts=True)
    target = len(w) / quantiles
    bucket = np.floor((np.cumsum(counts) - counts) / target + 1e-9).astype(int)  # by the pixels below
    heavy = counts >= target
    new = np.r_[True, (bucket[1:] != bucket[:-1]) | heavy[1:] | heavy[:-1]]
    group = (np.cumsum(new) - 1)[inverse.reshape(-1)]
    # group k holds starts[k] <= ω < starts[k + 1]; the last one up to the largest weight
    starts = values[new]
    edges = np.r_[starts, values[-1]]

    def reads_apart(d: int) -> bool:
        shown = np.round(edges, d)
        return len(np.unique(shown)) == len(np.unique(edges)) and not (shown[edges < 1] >= 1).any()

    d = next((d for d in range(2, 9) if reads_apart(d)), 9)
    rows = []
    for k, lo in enumerate(starts):
        sel = group == k
        last = k == len(starts) - 1
        hi = edges[k + 1]
        rows.append({"weight range": f"= {lo:.{d}f}" if w[sel].min() == w[sel].max() else
                     f"[{lo:.{d}f}, {hi:.{d}f}{']' if last else ')'}",
                     "pixels": int(sel.sum()), "wrong labels": int((c[sel] < 0.5).sum()),
                     "accuracy (%)": round(100 * c[sel].mean(), 1)})
    return pd.DataFrame(rows)


def class_report(net, data, n: int | None = None, seed: int = 0) -> pd.DataFrame:
    """Per class, why a net scores what it does on the validation set: how many labeled training
    images contain the class, its IoU (%; NaN when no scene shows it), the share of its pixels the
    net finds (%), and the *other* class its pixels are most often predicted as, with that share
    (%). A class with few labeled images (mistaken for background) or one mistaken for a similar
    class shows up here. ``n=None`` scores every validation image, as the run's metrics do, so the
    IoU column is the run's; ``n`` scores that many, drawn with ``seed``. Reads the labeled set once
    (its masks, with their training augmentation)."""
    from torch.utils.data import Subset

    from ..engine.evaluate import evaluate

    names = list(data.class_names)
    c = len(names)
    seen = np.zeros(c, dtype=int)
    for i in range(len(data.labeled)):
        present = torch.as_tensor(data.labeled[i][1]).unique()
        seen[present[present < c].numpy()] += 1
    val = data.val
    if n is not None:  # the n scenes predict_scenes would pick
        val = Subset(val, torch.randperm(len(val), generator=torch.Generator().manual_seed(seed))[:n].tolist())
    cm = evaluate(net, val, c, progress=False)["confusion"].double()
    rows = cm.sum(1)
    iou = torch.where(rows > 0, cm.diag() / (rows + cm.sum(0) - cm.diag()).clamp(min=1), float("nan"))
    off = cm - torch.diag(cm.diag())  # where each class's pixels go when the net gets them wrong
    top = off.argmax(1)
    missed = off.sum(1) > 0
    return pd.DataFrame({
        "labeled images with it": seen,
        "IoU (%)": (100 * iou).numpy(),
        "found (%)": (100 * cm.diag() / rows.clamp(min=1)).numpy(),
        "most often mistaken for": [names[k] if missed[i] else "-" for i, k in enumerate(top.tolist())],
        "share of its pixels (%)": (100 * off.max(1).values / rows.clamp(min=1)).numpy(),
    }, index=pd.Index(names, name="class")).round(1)


# ------------------------------------------------------------------------------------------------
# sentences computed from a run, so that prose never claims what the run decides

# A change of the validation mIoU smaller than this (points) over a stretch of training reads as flat.
FLAT_POINTS = 1.0


def curve_trend(run) -> str:
    """One sentence on ``run``'s validation curve (``eval_every``; a ``runs.RunResult``): where it
    starts and ends, how many points it gained over the last quarter of the evaluated iterations, and
    whether that reads as still rising, flat (within ``FLAT_POINTS``) or falling."""
    rows = run.metrics.get("val_curve") or (runs.read_val_curve(run.out_dir).to_dict("records")
                                            if run.out_dir is not None else [])
    curve = pd.DataFrame(rows, columns=None if rows else ["iteration", "miou"]).dropna(subset=["miou"])
    if len(curve) < 3:
        return "this run was evaluated too rarely during training to tell a trend (eval_every)"
    curve = curve.sort_values("iteration")
    it, miou = curve["iteration"].to_numpy(), 100 * curve["miou"].to_numpy()
    quarter = it[-1] - (it[-1] - it[0]) / 4
    k = int(np.searchsorted(it, quarter))  # the first evaluation of the last quarter
    k = min(k, len(it) - 2)
    gain = miou[-1] - miou[k]
    trend = ("still rising: training stopped before the curve flattened" if gain >= FLAT_POINTS else
             "falling" if gain <= -FLAT_POINTS else "flat")
    return (f"validation mIoU {miou[0]:.1f} % at iteration {it[0]}, {miou[-1]:.1f} % at iteration {it[-1]}; "
            f"{gain:+.1f} points since iteration {it[k]}, the last quarter of training: {trend}")
