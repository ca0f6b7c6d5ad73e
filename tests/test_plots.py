"""Every figure function draws a non-empty Figure headless (Agg) from small synthetic inputs."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from cpcl_kit.data import palette
from cpcl_kit.method.cpcl import pseudo_supervision  # noqa: E402
from cpcl_kit.teach import analysis, plots  # noqa: E402

C = 4
NAMES = ["background", "a", "b", "c"]


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def history(n=8, sup_only=3, with_truth=True):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        it = 2 * (i + 1)
        row = {"iteration": it, "lr": 1e-3 * (1 - i / n), "lambda": 0.0 if i < sup_only else 1.0,
               "loss": 3 - 0.1 * i, "sup1": 1.5 - 0.05 * i, "sup2": 1.4 - 0.05 * i, "seconds": i}
        if i >= sup_only:
            row.update(unsup1=0.2, unsup2=0.5, agreement=0.3 + 0.05 * i, w_inter=0.5, w_union=0.45,
                       w_agree=0.6, w_disagree=0.4)
            ind = rng.random(C)
            for c in range(C):
                row[f"ind_{c}"] = ind[c] / ind.sum()
                row[f"inter_frac_{c}"] = np.nan if c == 2 else rng.random()
            if with_truth:
                row.update(acc_union=0.5, acc_y1=0.45, acc_y2=0.5, acc_inter=0.7 + 0.01 * i)
        rows.append(row)
    return pd.DataFrame(rows)


def labels_and_masks(b=2, h=12, w=12):
    g = torch.Generator().manual_seed(0)
    t1, t2 = torch.randn(b, C, h, w, generator=g), torch.randn(b, C, h, w, generator=g)
    masks = torch.randint(0, C, (b, h, w), generator=g)
    masks[0, :2] = 255
    return torch.randn(b, 3, h, w, generator=g), masks, pseudo_supervision(t1, t2)


def drawn(fig) -> bool:
    """A Figure with at least one axes that holds something, and that renders to a non-blank image."""
    assert isinstance(fig, matplotlib.figure.Figure)
    assert fig.axes
    fig.canvas.draw()
    img = np.asarray(fig.canvas.buffer_rgba())
    return img.shape[0] > 50 and img.shape[1] > 50 and img[..., :3].std() > 1


def test_history_figures():
    h = history()
    assert drawn(plots.learning_curves(h))
    assert drawn(plots.coverage_curves(h))
    assert drawn(plots.coverage_heatmap(h, NAMES))
    assert drawn(plots.indicator_over_training(h, NAMES))
    assert drawn(plots.indicator_over_training(h, NAMES, kind="lines"))
    assert drawn(plots.weights_over_training(h))


def test_history_figures_without_pseudo_labels():
    """A supervised run's history (no label statistics) still gives a figure that says so."""
    h = history(sup_only=99)[["iteration", "lr", "lambda", "loss", "sup1", "seconds"]]
    for fig in (plots.learning_curves(h), plots.coverage_curves(h), plots.coverage_heatmap(h, NAMES),
                plots.indicator_over_training(h, NAMES), plots.weights_over_training(h)):
        assert drawn(fig)
    assert drawn(plots.coverage_curves(history(with_truth=False)))


def test_weighting_surface_both_rules():
    assert len(plots.weighting_surface(11).axes) >= 2
    assert drawn(plots.weighting_surface(4, union_rule="confidence"))
    with pytest.raises(ValueError):
        plots.weighting_surface(4, union_rule="nope")


def test_weight_figures_from_pseudo_labels():
    images, masks, labels = labels_and_masks()
    px = analysis.pixel_table(labels, masks)
    assert drawn(plots.weight_distributions(px["w_union"], px["union_correct"]))
    assert drawn(plots.weight_distributions(labels.w_inter, px["inter_correct"], label="intersection label"))
    assert drawn(plots.reliability_diagram(labels.conf1, px["y1_correct"], bins=5, lo=1 / C))
    assert drawn(plots.weight_distributions([], []))  # nothing known: a figure that says so


def test_overlays_and_indicator_bars():
    images, masks, labels = labels_and_masks()
    pick = analysis.disagreeing_pixel(labels, NAMES, masks)
    fig = plots.prediction_overlays(images, masks, labels, [0, 1], NAMES, threshold=0.3,
                                    mark=(pick["scene"], pick["row"], pick["col"]), title="t")
    assert drawn(fig)
    assert len(fig.axes) >= 16
    assert drawn(plots.prediction_overlays(images, masks, labels, 1, NAMES))
    assert drawn(plots.indicator_bars(labels.indicator, NAMES, highlight={0: "net 1", 3: "net 2"}))
    assert drawn(plots.prediction_grid(images, masks, {"net 1": labels.y1, "net 2": labels.y2}, NAMES, title="t"))


def test_palette_is_consistent():
    pal = palette.class_palette(11)
    assert pal.shape == (256, 3)
    assert np.allclose(pal[0], 0) and np.allclose(pal[255], palette.IGNORE_GREY)
    assert len({tuple(p) for p in pal[:11]}) == 11
    assert len({tuple(p) for p in palette.class_palette(21)[:21]}) == 21
    assert palette.colourise(torch.tensor([[0, 255]]), 11).shape == (1, 2, 3)


def ablation_table():
    rows = [{"variant": v, "labeled": f, "seed": s, "miou": 0.3 + 0.05 * i + 0.01 * s}
            for i, v in enumerate(["supervised", "cpcl", "inter_only"]) for f in ["1/16"] for s in range(3)]
    return pd.DataFrame(rows)


def test_ablation_figures():
    t = ablation_table()
    assert drawn(plots.ablation_bars(t))
    two = pd.concat([t, t.assign(labeled="1/8", miou=t["miou"] + 0.1)])
    assert drawn(plots.ablation_bars(two))
    assert drawn(plots.ablation_bars(t.iloc[:0]))
    long = pd.DataFrame([{"variant": v, "seed": s, "class": n, "iou": 0.1 * k + 0.01 * s}
                         for v in ["cpcl", "supervised"] for s in range(2) for k, n in enumerate(NAMES)])
    assert drawn(plots.per_class_iou(long, NAMES))
    metrics = {"per_class_iou": [0.9, None, 0.5, 0.2], "class_names": NAMES, "method": "cpcl"}
    assert drawn(plots.per_class_iou(metrics))
    assert drawn(plots.per_class_iou({"cpcl": metrics, "cps": metrics}, NAMES))
    wide = pd.DataFrame({"supervised": [0.9, None, 0.5, 0.2], "cpcl": [0.9, 0.1, 0.6, 0.3]}, index=NAMES)
    assert drawn(plots.per_class_iou(wide))
    assert drawn(plots.per_class_iou(wide["cpcl"].to_frame("cpcl")))


def test_save_writes_png(tmp_path):
    path = plots.save(plots.learning_curves(history()), tmp_path, "curves")
    assert path == tmp_path / "figures" / "curves.png" and path.stat().st_size > 1000


def test_hidden_lines_finds_a_line_under_another(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1], lw=2, label="below")
    ax.plot([0, 1], [0, 1], lw=2, label="on top")
    assert plots.hidden_lines(fig) == ["axes: 'below' under 'on top'"]
    with pytest.warns(plots.HiddenLineWarning, match="lines: axes: 'below' under 'on top'"):
        plots.save(fig, tmp_path, "lines")
    ax.lines[1].set_linestyle("--")
    assert plots.hidden_lines(fig) == []


def test_no_line_is_hidden_when_the_curves_coincide():
    """The worst case for each training-history figure: every curve that can coincide does (a
    supervised run's total loss is its CE; union accuracy equals net 2's; ω_inter = ω_union = the
    agreeing pixels' weight; agreement at 100 %). Every line stays visible."""
    h = history()
    h["w_union"] = h["w_agree"] = h["w_inter"] = h["w_disagree"] = 0.5
    h["acc_union"] = h["acc_y2"] = h["acc_y1"] = h["acc_inter"] = 0.6
    h.loc[h["agreement"].notna(), "agreement"] = 1.0
    sup = h[["iteration", "lr", "lambda", "loss", "sup1", "seconds"]].assign(loss=h["sup1"])
    for fig in (plots.learning_curves(h), plots.learning_curves(sup), plots.coverage_curves(h),
                plots.weights_over_training(h)):
        assert plots.hidden_lines(fig) == []


def test_course_figures():
    """The two-net loop diagram names its recipe's student view; the student-view grid shows the
    CutMix columns only when the recipe mixes."""
    fig = plots.cpcl_loop("affine warp")
    assert drawn(fig) and any("affine warp" in t.get_text() for t in fig.axes[0].texts)
    u = torch.randn(2, 3, 12, 12)
    truth = torch.randint(0, C, (2, 12, 12))
    plain = plots.student_view_grid(u, u, truth, NAMES, void=truth == 0)
    mixed = plots.student_view_grid(u, u, truth, NAMES, u1=u, mask=torch.ones(2, 1, 12, 12))
    assert drawn(plain) and drawn(mixed) and len(mixed.axes) == len(plain.axes) + 2 * 2


def sparse_history(n=48, classes=8, per_row=3, seed=0):
    """A long run's logged rows, each one batch that holds only ``per_row`` of the classes (the
    others NaN), as a batch of a few digit scenes does."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        present = set(rng.choice(np.arange(1, classes), per_row - 1, replace=False)) | {0}
        ind = rng.random(classes) * [c in present for c in range(classes)]
        row = {"iteration": 20 * (i + 1), "agreement": 0.9, "acc_union": 0.9, "acc_inter": 0.95,
               "acc_y1": 0.89, "acc_y2": 0.9}
        for c in range(classes):
            row[f"inter_frac_{c}"] = rng.random() if c in present else np.nan
            row[f"ind_{c}"] = ind[c] / ind.sum()
        rows.append(row)
    return pd.DataFrame(rows), [f"class {c}" for c in range(classes)]


def test_heatmaps_pool_logged_batches_so_few_cells_are_empty():
    """One logged batch holds three of eight classes: row by row most cells are empty; pooled into at
    most 12 columns of consecutive batches, few are, and each cell is the mean of the batches that
    hold the class."""
    h, names = sparse_history()
    rows_alone, one = plots._class_by_iteration(h, "inter_frac_", names, max_cols=10_000)
    pooled, width = plots._class_by_iteration(h, "inter_frac_", names)
    assert one == "1" and width == "4" and pooled.shape == (8, 12)
    assert rows_alone.isna().to_numpy().mean() > 0.6 > 0.3 > pooled.isna().to_numpy().mean()
    assert pooled.columns.tolist() == h["iteration"].iloc[3::4].tolist()  # labelled by the last batch
    assert pooled.iloc[3, 0] == pytest.approx(h["inter_frac_3"].iloc[:4].mean()) or np.isnan(pooled.iloc[3, 0])
    uneven, sizes = plots._class_by_iteration(h.iloc[:30], "inter_frac_", names)
    assert sizes == "2–3" and uneven.shape[1] == 12
    fig = plots.coverage_heatmap(h, names)
    ax = fig.axes[0]
    assert drawn(fig) and "4 logged batches" in ax.get_xlabel()
    assert not any(line.get_visible() for line in ax.get_xgridlines() + ax.get_ygridlines())


def test_indicator_heatmap_leaves_absent_classes_empty():
    """Ĩ_c is 0 on a batch where neither net predicts c: that batch leaves the cell empty instead of
    pulling its mean towards "undisputed"."""
    h, names = sparse_history(n=12)
    fig = plots.indicator_over_training(h, names)
    table, _ = plots._class_by_iteration(plots._indicator_where_present(h, len(names)), "ind_", names)
    assert np.isnan(table.to_numpy()).sum() == h[[f"inter_frac_{c}" for c in range(8)]].isna().to_numpy().sum()
    assert (table.loc["class 0"] > 0).all()
    assert drawn(fig) and drawn(plots.indicator_over_training(h, names, kind="lines"))


def test_coverage_axes_are_scaled_to_the_data():
    """Accuracies of 89-95 % on a 0-100 axis would squeeze into one line: each axis spans the data
    with a margin, the legend names each line's value, and no line hides another."""
    h, _ = sparse_history()
    fig = plots.coverage_curves(h)
    a1, a2 = fig.axes[:2]
    assert 80 < a1.get_ylim()[0] < 90 < 100 < a1.get_ylim()[1] < 105
    assert 80 < a2.get_ylim()[0] < 89 and 95 < a2.get_ylim()[1] < 100
    labels = [t.get_text() for t in a2.get_legend().get_texts()]
    assert "union: 90.0 %" in labels and "intersection: 95.0 %" in labels and "net 1 alone: 89.0 %" in labels
    assert plots.hidden_lines(fig) == []


def rendered(fig) -> np.ndarray:
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)


def test_marked_pixel_shows_on_a_red_class():
    """The disputed pixel's ring is visible where everything around it is class 3, drawn red: white
    and black pixels appear around the mark in the panel of net 1's labels."""
    b, h, w = 1, 16, 16
    logits = torch.zeros(b, C, h, w)
    logits[:, 3] = 5.0  # both nets say class 3 everywhere
    labels = pseudo_supervision(logits, logits.clone())
    masks = torch.full((b, h, w), 3)
    images = torch.zeros(b, 3, h, w)
    names = ["background", "a", "b", "c"]
    fig = plots.prediction_overlays(images, masks, labels, [0], names, mark=(0, 8, 8))
    img = rendered(fig)
    ax = fig.axes[2]  # net 1's labels: all red
    x, y = ax.transData.transform((8, 8))
    row = img.shape[0] - int(y)
    patch = img[row - 12:row + 13, int(x) - 12:int(x) + 13]
    assert np.allclose(palette.class_palette(4)[3] * 255, img[row - 30, int(x)], atol=3)  # the panel is red
    assert (patch.min(-1) > 235).any() and (patch.max(-1) < 30).any()  # a white and a black ring


def test_indicator_bars_outline_shows_on_a_red_bar():
    ind = torch.tensor([0.1, 0.2, 0.3, 0.4])
    fig = plots.indicator_bars(ind, NAMES, highlight={3: "net 1's class", 0: "net 2's class"})
    outlines = [p for p in fig.axes[0].patches if p.get_facecolor()[3] == 0]
    edges = {tuple(np.round(p.get_edgecolor()[:3], 2)) for p in outlines}
    assert edges == {(1.0, 1.0, 1.0), (0.0, 0.0, 0.0)}  # black over white: visible on red and on black
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["net 1's class", "net 2's class"]


def test_weighting_surface_labels_stay_inside_their_panels():
    for rule, classes in (("disagreement", 11), ("confidence", 4)):
        fig = plots.weighting_surface(classes, union_rule=rule)
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes[:2]:
            box = ax.get_window_extent(renderer)
            texts = [t for t in ax.texts if t.get_text()]
            assert len(texts) >= 3
            for t in texts:
                e = t.get_window_extent(renderer)
                assert box.x0 <= e.x0 and e.x1 <= box.x1 and box.y0 <= e.y0 and e.y1 <= box.y1, t.get_text()


def test_loop_diagram_uses_the_notebooks_symbols():
    """Notebook 04 writes p for the teachers' softmax and q for the students': the diagram too."""
    texts = " ".join(t.get_text() for t in plots.cpcl_loop().axes[0].texts)
    assert "CE(q_1(x_l), y_l) + CE(q_2(x_l), y_l)" in texts and "CE(p" not in texts
    assert "softmax $p_1$, $p_2$" in texts and "\\ell^{\\cap}" in texts
