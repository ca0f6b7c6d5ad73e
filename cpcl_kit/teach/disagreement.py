"""Where the two nets disagree, and whether the union rule settles it right (notebook 07).

CPCL's two targets differ only on the pixels where the nets disagree: net 1 drops them, net 2 takes
the label of the class the pair disputes more (docs/method.md §3). So what CPCL adds over CPS is
decided there. These functions cut a batch of pseudo labels by the true mask — foreground vs
background, digit edges vs interiors, per class — and report how much disagreement each part holds,
which net's label the union takes there and how often that label is right; ``per_class_gain`` sets
the IoU gains of two methods over a baseline side by side.

All inputs are label maps ``[B, H, W]`` (long) on any device; pixels whose true label is
``ignore_index`` are left out. Tables are pandas DataFrames, percentages in 0..100.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import torch


from ..constants import IGNORE_INDEX
from ..data.outlines import boundary_band

BACKGROUND = 0  # class id of the background in the digit scenes and VOC (Cityscapes has none)
REGIONS = ("all", "foreground", "background", "edge", "interior")


def edge_mask(truth: torch.Tensor, width: int = 1, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """bool [B, H, W]: known pixels with a pixel of another label, or an ignored one, within
    ``width`` (the (2·width + 1)² square around it). Ignored pixels never are edges, but they make
    their neighbours edges: the masks leave a void band round each object (VOC's boundaries, the
    digit scenes' ``void_band``), so on an unmixed scene two classes never touch and the band is
    where the boundary is. The image border is not an edge."""
    if width < 1:
        raise ValueError(f"width: expected at least 1, got {width}")
    t = truth.long()
    # the ignore value counts as one more label here, so that the void band makes its neighbours edges
    return boundary_band(t, width) & (t != ignore_index)


def region_masks(truth: torch.Tensor, background: int | None = BACKGROUND, width: int = 1,
                 ignore_index: int = IGNORE_INDEX) -> dict[str, torch.Tensor]:
    """{region: bool [B, H, W]} over the known pixels: all, foreground / background (by the true
    class; none when ``background`` is None) and edge / interior (``edge_mask``)."""
    known = truth != ignore_index
    edge = edge_mask(truth, width, ignore_index)
    out = {"all": known}
    if background is not None:
        out["foreground"] = known & (truth != background)
        out["background"] = known & (truth == background)
    out["edge"], out["interior"] = edge, known & ~edge
    return out


def _stats(sel: torch.Tensor, y1, y2, union, truth, total_dis: int) -> dict:
    dis = sel & (y1 != y2)
    n, d = int(sel.sum()), int(dis.sum())

    def pct(a: int, b: int) -> float:
        return 100.0 * a / b if b else float("nan")

    return {"pixels": n, "disagree (%)": pct(d, n), "of all disagreement (%)": pct(d, total_dis),
            "union takes net 1 (%)": pct(int((dis & (union == y1)).sum()), d),
            "union right (%)": pct(int((dis & (union == truth)).sum()), d),
            "net 1 right (%)": pct(int((dis & (y1 == truth)).sum()), d),
            "net 2 right (%)": pct(int((dis & (y2 == truth)).sum()), d),
            "neither right (%)": pct(int((dis & (y1 != truth) & (y2 != truth)).sum()), d)}


def where_they_disagree(y1: torch.Tensor, y2: torch.Tensor, union: torch.Tensor, truth: torch.Tensor,
                        background: int | None = BACKGROUND, width: int = 1,
                        ignore_index: int = IGNORE_INDEX) -> pd.DataFrame:
    """One row per region (``REGIONS``): its known pixels, the share of them where y1 != y2, its
    share of all the disagreement, and on its disagreeing pixels: how often the union label is
    net 1's, how often the union / net 1 / net 2 label is right, and how often neither is (where
    no rule could pick right). Edge and interior split the same pixels as foreground and
    background, so each pair's "of all disagreement" sums to 100."""
    y1, y2, union, truth = (t.detach().long().cpu() for t in (y1, y2, union, truth))
    masks = region_masks(truth, background, width, ignore_index)
    total = int((masks["all"] & (y1 != y2)).sum())
    rows = [{"region": name, **_stats(sel, y1, y2, union, truth, total)} for name, sel in masks.items()]
    return pd.DataFrame(rows).set_index("region")


def disagreement_by_class(y1: torch.Tensor, y2: torch.Tensor, union: torch.Tensor, truth: torch.Tensor,
                          class_names, ignore_index: int = IGNORE_INDEX) -> pd.DataFrame:
    """One row per true class: its pixels, the share where the nets disagree, its share of all
    disagreement, and on those pixels which label the union takes and how often each is right."""
    y1, y2, union, truth = (t.detach().long().cpu() for t in (y1, y2, union, truth))
    known = truth != ignore_index
    total = int((known & (y1 != y2)).sum())
    rows = [{"class": name, **_stats(known & (truth == c), y1, y2, union, truth, total)}
            for c, name in enumerate(class_names)]
    return pd.DataFrame(rows).set_index("class")


def per_class_gain(per_class_iou: dict[str, list], class_names, baseline: str = "supervised") -> pd.DataFrame:
    """Per class: the baseline's IoU (%) and each other method's gain over it (points).

    ``per_class_iou``: {method: per-class IoU in 0..1 (None or NaN where a class is absent)}, e.g.
    from runs' metrics.json; a method given as several lists (seeds) is averaged first."""
    def mean(v) -> np.ndarray:
        a = np.array([[np.nan if x is None else x for x in row] for row in
                      (v if v and isinstance(v[0], (list, tuple, np.ndarray)) else [v])], dtype=float)
        with warnings.catch_warnings():  # a class absent in every seed stays NaN, quietly
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(a, axis=0)

    if baseline not in per_class_iou:
        raise KeyError(f"baseline {baseline!r} not among {', '.join(per_class_iou)}")
    base = 100 * mean(per_class_iou[baseline])
    out = pd.DataFrame({f"{baseline} IoU (%)": base}, index=pd.Index(list(class_names), name="class"))
    for name, values in per_class_iou.items():
        if name != baseline:
            out[f"{name} − {baseline}"] = 100 * mean(values) - base
    return out.round(2)


def on_scenes(nets, data, cfg, n_batches: int = 8, batch: int = 8, seed: int = 0,
              width: int = 2) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(``where_they_disagree``, ``disagreement_by_class``) for a two-net run on its unlabeled
    scenes: ``n_batches`` batches of ``batch`` scenes as ``cfg``'s training step builds them (CutMix,
    student view, teachers: ``method.scenes.pseudo_labels_on_scenes``; the indicator per batch, as in
    training). For a CPS run the union column says what CPCL's rule would have picked from the same
    two predictions."""
    from ..method.scenes import pseudo_labels_on_scenes

    parts = [pseudo_labels_on_scenes(nets, data, cfg, n=batch, seed=seed + k) for k in range(n_batches)]
    cat = lambda get: torch.cat([get(p) for p in parts])  # noqa: E731
    y1, y2, union = cat(lambda p: p[2].y1), cat(lambda p: p[2].y2), cat(lambda p: p[2].union)
    truth = cat(lambda p: p[1])
    names = getattr(data, "class_names", None) or [str(c) for c in range(int(truth[truth != IGNORE_INDEX].max()) + 1)]
    return (where_they_disagree(y1, y2, union, truth, width=width),
            disagreement_by_class(y1, y2, union, truth, names))


def compare_runs(runs_by_name: dict, data, n_batches: int = 8, batch: int = 8, seed: int = 0,
                 width: int = 2) -> tuple[dict, pd.DataFrame]:
    """``on_scenes`` for several two-net runs ({name: RunResult}) on the same unlabeled scenes:
    ({name: region table}, one per-class table with a (run, column) header). Each run's batches are
    built by its own recipe (``run.config``): the pixels its students learnt from."""
    regions, classes = {}, {}
    for name, run in runs_by_name.items():
        regions[name], classes[name] = on_scenes(run.nets, data, run.config, n_batches, batch, seed, width=width)
    cols = ["disagree (%)", "of all disagreement (%)", "union right (%)"]
    return regions, pd.concat({k: v[cols] for k, v in classes.items()}, axis=1).round(1)


def runs_at_hand(preset: str, out_dir, grid_folder, seed: int = 0) -> tuple[dict, str]:
    """The two-net runs with nets that notebook 07 can look at, and a sentence saying which they are:
    ({"CPS": RunResult, "CPCL": RunResult} or a part of it, sentence).

    In order: the prepared set's CPS and CPCL runs (``prepared.two_net_runs``: when ``preset`` shows
    it and it is there), else the live grid's in ``grid_folder``, else the CPCL run that notebooks
    04-06 and 08 share in ``out_dir/runs`` (``runs.notebook_run_dir``), which ``make demo`` has
    trained by the time 07 runs. Empty (and a sentence saying what to run) when none is finished."""
    from pathlib import Path

    from ..engine import runs
    from ..experiments import prepared
    from ..files import shown_path
    from .notebook import notebook_config

    found = {name.upper(): run for name, run in prepared.two_net_runs(seed, grid_folder, preset).items()}
    if found:
        first = next(iter(found.values()))
        where = ("the live grid's" if Path(first.out_dir).parent == Path(grid_folder)
                 else "the prepared run set's (make prepared)")
    else:
        shared = runs.notebook_run_dir(out_dir, notebook_config(preset, method="cpcl", seed=seed))
        if runs.is_finished(shared) and runs.has_checkpoint(shared):
            found, where = {"CPCL": runs.load_run(shared)}, "the CPCL run notebooks 04-06 and 08 share"
    if not found:
        return {}, (f"no CPS or CPCL run with nets here: notebook 04 trains the shared CPCL run of the {preset} "
                    f"preset into {shown_path(Path(out_dir) / 'runs')}/, `make prepared` the prepared set's "
                    f"CPS and CPCL runs; run either, then this cell again")
    cfg = next(iter(found.values())).config
    text = (f"{' and '.join(found)} from {where} ({cfg.preset} preset, seed {cfg.seed}, {cfg.iterations} "
            f"iterations)")
    if "CPS" not in found:
        text += ("; no CPS run is at hand (`make prepared` trains one), so only CPCL's nets are shown: where "
                 "its own two nets disagree and what its union rule makes of it")
    return found, text + "."
