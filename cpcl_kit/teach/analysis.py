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
from ..method.scenes import predict_scenes


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
    accuracy against the true masks (% of labelled, known pixels) and mean loss weight."""
    px = pixel_table(labels, masks)
    known = px["truth"] != IGNORE
    rows = []
    for kind, correct, covered, weight in (
            ("net 1 (y1)", "y1_correct", None, None),
            ("net 2 (y2)", "y2_correct", None, None),
            ("intersection (net 1's target)", "inter_correct", "agree", "w_inter"),
            ("union (net 2's target)", "union_correct", None, "w_union")):
        cov = px[covered] if covered else pd.Series(True, index=px.index)
        sel = cov & known
        rows.append({"label": kind, "coverage (%)": 100 * cov.mean(),
                     "accuracy (%)": 100 * px.loc[sel, correct].mean() if sel.any() else np.nan,
                     "mean weight": px.loc[cov, weight].mean() if weight else np.nan})
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
    """Pixels split into weight quantiles: weight range, pixel count and pseudo-label accuracy (%)."""
    w = np.asarray(torch.as_tensor(weights).detach().cpu().reshape(-1), dtype=float)
    c = np.asarray(torch.as_tensor(correct).detach().cpu().reshape(-1), dtype=float)
    ok = ~np.isnan(c)
    df = pd.DataFrame({"weight": w[ok], "correct": c[ok]})
    if df.empty:
        return pd.DataFrame(columns=["weight range", "pixels", "accuracy (%)"])
    df["q"] = pd.qcut(df["weight"].rank(method="first"), quantiles, labels=False)
    g = df.groupby("q")
    return pd.DataFrame({
        "weight range": [f"{a:.2f}–{b:.2f}" for a, b in zip(g["weight"].min(), g["weight"].max())],
        "pixels": g.size().to_numpy(),
        "accuracy (%)": (100 * g["correct"].mean()).round(1).to_numpy()})


def class_report(net, data, n: int = 100, seed: int = 0) -> pd.DataFrame:
    """Per class, why a net scores what it does on ``n`` validation scenes: how many labeled training
    images contain the class, its IoU there (%; NaN when no scene shows it), and the class its pixels are most often predicted as
    with that share (%). A class with few labeled images, or one mistaken for a similar class, shows
    up here. Reads the labeled set once (its masks, with their training augmentation)."""
    from torch.utils.data import Subset

    from ..engine.evaluate import evaluate

    names = list(data.class_names)
    c = len(names)
    seen = np.zeros(c, dtype=int)
    for i in range(len(data.labeled)):
        present = torch.as_tensor(data.labeled[i][1]).unique()
        seen[present[present < c].numpy()] += 1
    # the n scenes predict_scenes would pick, scored a few at a time (real images are large)
    order = torch.randperm(len(data.val), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    cm = evaluate(net, Subset(data.val, order), c, progress=False)["confusion"].double()
    rows = cm.sum(1)
    iou = torch.where(rows > 0, cm.diag() / (rows + cm.sum(0) - cm.diag()).clamp(min=1), float("nan"))
    top = cm.argmax(1)
    return pd.DataFrame({
        "labeled images with it": seen,
        "IoU (%)": (100 * iou).numpy(),
        "its pixels predicted as": [names[k] if rows[i] > 0 else "-" for i, k in enumerate(top.tolist())],
        "share (%)": (100 * cm.max(1).values / rows.clamp(min=1)).numpy(),
    }, index=pd.Index(names, name="class")).round(1)
