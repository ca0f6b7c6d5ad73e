"""Analysis helpers: tables from pseudo labels, the disagreement decision, the shared run and its stages."""

import numpy as np
import pandas as pd
import pytest
import torch

from cpcl_kit.config import PRESETS, make_config
from cpcl_kit.engine import runs
from cpcl_kit.errors import KitError
from cpcl_kit.method import scenes
from cpcl_kit.method.cpcl import pseudo_supervision
from cpcl_kit.teach import analysis

NAMES = ["background", "a", "b", "c"]


@pytest.fixture
def one_thread():
    """Train with one torch thread: on a shared 2-core machine, two spinning OpenMP threads per
    process are several times slower than one when other processes compete for the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def labels_and_masks(b=2, h=10, w=10, c=4):
    g = torch.Generator().manual_seed(1)
    t1, t2 = torch.randn(b, c, h, w, generator=g), torch.randn(b, c, h, w, generator=g)
    masks = torch.randint(0, c, (b, h, w), generator=g)
    masks[0, 0] = 255
    return masks, pseudo_supervision(t1, t2)


def test_pixel_table_and_label_quality():
    masks, labels = labels_and_masks()
    px = analysis.pixel_table(labels, masks)
    assert len(px) == masks.numel()
    unknown = px["truth"] == 255
    assert px.loc[unknown, "union_correct"].isna().all()
    assert px.loc[~px["agree"], "inter_correct"].isna().all()
    assert (px.loc[~unknown, "y1_correct"] == (px.loc[~unknown, "y1"] == px.loc[~unknown, "truth"])).all()
    q = analysis.label_quality(labels, masks).set_index("label")
    agree = labels.agree.float().mean().item()
    assert q.loc["intersection (net 1's target)", "coverage (%)"] == pytest.approx(100 * agree, abs=0.01)
    assert q.loc["union (net 2's target)", "coverage (%)"] == 100
    known = masks != 255
    acc = ((labels.union == masks) & known).sum().item() / known.sum().item()
    assert q.loc["union (net 2's target)", "accuracy (%)"] == pytest.approx(100 * acc, abs=0.01)
    # pixels the step leaves without a label (a warped view's padding) count in neither target
    import dataclasses

    void = torch.zeros_like(masks, dtype=torch.bool)
    void[:, :2] = True
    voided = dataclasses.replace(labels, inter=labels.inter.masked_fill(void, 255),
                                 union=labels.union.masked_fill(void, 255))
    q = analysis.label_quality(voided, masks).set_index("label")
    has = ~void & known
    assert q.loc["union (net 2's target)", "coverage (%)"] == pytest.approx(100 * (~void).float().mean().item(), abs=0.01)
    acc = ((labels.union == masks) & has).sum().item() / has.sum().item()
    assert q.loc["union (net 2's target)", "accuracy (%)"] == pytest.approx(100 * acc, abs=0.01)
    inter_cov = (labels.agree & ~void).float().mean().item()
    assert q.loc["intersection (net 1's target)", "coverage (%)"] == pytest.approx(100 * inter_cov, abs=0.01)


def test_disagreeing_pixel_explains_the_union_rule():
    masks, labels = labels_and_masks()
    for seed in range(5):
        p = analysis.disagreeing_pixel(labels, NAMES, masks, seed=seed)
        assert p["y1"] != p["y2"]
        net1_wins = p["Ĩ[net 1's class]"] > p["Ĩ[net 2's class]"]
        assert p["union label"] == NAMES[p["y1"] if net1_wins else p["y2"]]
        assert p["taken from"] == ("net 1" if net1_wins else "net 2")
        assert p["union weight"] == pytest.approx(p["conf 1"] if net1_wins else p["conf 2"], abs=1e-3)
    assert analysis.disagreeing_pixel(labels, NAMES, index=1)["scene"] == 1
    same = pseudo_supervision(torch.ones(1, 4, 3, 3), torch.ones(1, 4, 3, 3))
    assert analysis.disagreeing_pixel(same, NAMES) == {}


def test_reliability_and_weight_tables():
    conf = np.array([0.1, 0.15, 0.55, 0.6, 0.95, 0.99])
    correct = np.array([0, 0, 1, 0, 1, np.nan])
    t = analysis.reliability_table(conf, correct, bins=2)
    assert list(t["count"]) == [2, 3] and t["accuracy"].tolist() == pytest.approx([0, 2 / 3])
    ece = analysis.expected_calibration_error(t)
    assert ece == pytest.approx((2 * 0.125 + 3 * abs(2 / 3 - 0.7)) / 5)
    w = analysis.accuracy_by_weight(np.arange(8) / 8, np.array([0, 0, 0, 0, 1, 1, 1, 1.0]), quantiles=2)
    assert w["accuracy (%)"].tolist() == [0.0, 100.0] and w["pixels"].tolist() == [4, 4]


def test_accuracy_by_weight_tells_weights_near_1_apart():
    """Weights bunch just under 1: the groups' ranges read differently from one another and no
    weight under 1 reads as 1; a weight that alone holds many pixels (exactly 1) is one group."""
    rng = np.random.default_rng(0)
    w = 1 - 10 ** -rng.uniform(0.5, 6, 4000)
    correct = (rng.random(4000) < w).astype(float)
    t = analysis.accuracy_by_weight(w, correct)
    assert len(t) == 4 and t["pixels"].sum() == 4000 and t["weight range"].is_unique
    assert t["pixels"].min() == t["pixels"].max() == 1000
    shown = [float(x) for r in t["weight range"] for x in r.strip("[])").split(", ")]
    assert len(set(shown)) == 5 and max(shown) < 1 and shown[1] > 0.9  # three of four cuts above 0.9
    assert t["wrong labels"].sum() == int((correct == 0).sum())
    cuts = [*np.sort(w)[::1000], 2]  # each group's first weight, then above every weight
    assert t["accuracy (%)"].tolist() == pytest.approx(
        [100 * correct[(w >= lo) & (w < hi)].mean() for lo, hi in zip(cuts, cuts[1:])], abs=0.05)
    tied = np.where(rng.random(4000) < 0.6, 1.0, w)
    t = analysis.accuracy_by_weight(tied, correct)
    assert t["weight range"].iloc[-1].startswith("= ") and float(t["weight range"].iloc[-1][2:]) == 1
    assert t["pixels"].iloc[-1] == (tied == 1).sum() and t["weight range"].is_unique


def test_label_quality_table_from_history():
    h = pd.DataFrame({"iteration": [2, 4, 6], "agreement": [np.nan, 0.4, 0.6], "acc_inter": [np.nan, 0.8, 0.9],
                      "acc_union": [np.nan, 0.5, 0.7], "acc_y1": [np.nan, 0.5, 0.6], "acc_y2": [np.nan, 0.5, 0.6]})
    t = analysis.label_quality_table(h, last=2).set_index("label")
    assert t.loc["intersection (net 1's target)", "coverage (%)"] == 50
    assert t.loc["union (net 2's target)", "accuracy (%)"] == 60
    assert analysis.label_quality_table(h[["iteration"]]).empty


def test_stage_iterations():
    cfg = make_config("smoke")
    assert runs.stage_iterations(cfg, 3) == [4, 8, 12]  # pseudo labels on, between, last
    assert runs.stage_iterations(cfg, 1) == [12]
    assert runs.stage_iterations(make_config("demo", iterations=240, sup_only_iters=120), 4) == [120, 160, 200, 240]
    with pytest.raises(KitError):
        runs.stage_iterations(cfg, 0)


def test_shared_run_stages_reuse_and_pseudo_labels(tmp_path, monkeypatch, one_thread):
    cfg = make_config("smoke", iterations=6, n_train_scenes=32, n_val_scenes=4)
    run = analysis.shared_run(cfg, tmp_path, n_stages=3)
    folder = tmp_path / "runs" / "cpcl_smoke_1-16_seed0__n_train_scenes-32__n_val_scenes-4__iterations-6"
    assert run.out_dir == folder and (folder / "metrics.json").exists()
    assert list(runs.list_stages(folder)) == [4, 5]  # the last stage is the run's checkpoint
    assert run.history["iteration"].max() == 6

    import cpcl_kit.engine.train as train_module

    monkeypatch.setattr(train_module, "train", lambda *a, **k: pytest.fail("a finished run was retrained"))
    again = analysis.shared_run(cfg, tmp_path)
    assert again.metrics["miou"] == run.metrics["miou"]
    nets_at = analysis.stage_nets(again)
    assert list(nets_at) == [4, 5, 6] and all(not n.training for nets in nets_at.values() for n in nets)
    other = make_config("smoke", iterations=6, n_train_scenes=32, n_val_scenes=4, reweight=False)
    assert runs.notebook_run_dir(tmp_path, other) != folder  # another run: another kit-named folder
    with pytest.raises(KitError, match=r"other settings \(reweight: folder True, now False\)"):
        train_module.run_or_load(other, folder)  # and a folder of other settings is never reused

    from cpcl_kit.data import build_data

    data = build_data(cfg)
    images, masks, labels = scenes.pseudo_labels_on_scenes(again.nets, data, cfg, n=3, seed=0)
    assert images.shape == (3, 3, 64, 64) and masks.shape == labels.union.shape == (3, 64, 64)
    again_labels = scenes.pseudo_labels_on_scenes(again.nets, data, cfg, n=3, seed=0)[2]
    assert torch.equal(labels.union, again_labels.union)  # same scenes, same labels
    assert all(not n.training for n in again.nets)  # the nets are left as they were
    mixed = scenes.pseudo_labels_on_scenes(again.nets, data, make_config("smoke", cutmix_boxes=3), n=2, seed=0)
    assert mixed[0].shape == (2, 3, 64, 64) and mixed[2].inter.shape == (2, 64, 64)
    imgs, truth, pred = scenes.predict_scenes(again.nets[0], data.val, n=2)
    assert pred.shape == truth.shape == (2, 64, 64) and pred.dtype == torch.long
    with pytest.raises(KitError, match="two nets"):
        scenes.pseudo_labels_on_scenes(again.nets[:1], data, cfg)


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("method", ["cps", "cpcl"])
def test_notebook_pseudo_labels_are_the_training_steps(preset, method, one_thread):
    """The labels the notebooks show are those a training step of the preset's recipe builds on the
    same scenes with the same generator: CutMix boxes, student view, teachers' BatchNorm mode, union
    rule, weights and voided pixels alike. BatchNorm momentum 0 keeps the step's supervised forward
    passes from moving the running statistics the eval-mode teachers use."""
    from cpcl_kit.data.loaders import Batch
    from cpcl_kit import registry
    from cpcl_kit.method.variants import without
    from cpcl_kit.nets.deeplab import build_nets

    small = dict(backbone="resnet18_w16", backbone_weights="none", head_channels=16, crop=32, output_stride=8,
                 dilation="torchvision", method=method, dataset="digits", eval_crop=None)
    cfg = make_config(preset, small)
    torch.manual_seed(0)
    nets = build_nets(cfg)
    for m in (m for net in nets for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        m.momentum = 0.0
    g = torch.Generator().manual_seed(5)
    items = [(torch.randn(3, 32, 32, generator=g), torch.randint(0, 11, (32, 32), generator=g)) for _ in range(6)]
    images, truth, labels = scenes.pseudo_labels_on_scenes(nets, items, cfg, n=2, seed=3)

    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(3))[:4 if cfg.cutmix_boxes else 2]
    x, y = torch.stack([items[i][0] for i in order]), torch.stack([items[i][1] for i in order])
    u1, m1 = (x[2:], y[2:]) if cfg.cutmix_boxes else (None, None)
    for net in nets:
        net.train()
    step = registry.method(method).step(nets, Batch(x[:2], y[:2], x[:2], y[:2], u1, m1), cfg, 1.0,
                                        torch.Generator().manual_seed(3))
    assert torch.equal(step.mixed_truth, truth)
    void = truth == 255 if cfg.student_aug == "affine" else None
    inter, union = without(void, step.labels.inter, step.labels.union)
    for name, want in [("y1", step.labels.y1), ("y2", step.labels.y2), ("inter", inter), ("union", union),
                       ("w_union", step.labels.w_union)]:
        assert torch.equal(getattr(labels, name), want), name


def test_class_report_counts_and_confusions():
    """A 'net' that calls every pixel 1: its report names 1 as what background's and digit 2's pixels
    are mistaken for (all of them), nothing for class 1, which it finds whole, and counts the labeled
    images per class; without n it scores every validation scene, as the run's metrics do."""
    from types import SimpleNamespace

    names = ["background", "1", "2"]
    masks = [torch.tensor([[0, 1], [1, 1]]), torch.tensor([[0, 2], [2, 2]]), torch.tensor([[0, 0], [0, 1]])]
    items = [(torch.zeros(3, 2, 2), m) for m in masks]

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):  # class 1 everywhere
            return torch.stack([torch.zeros(x.shape[0], 2, 2), torch.ones(x.shape[0], 2, 2),
                                torch.zeros(x.shape[0], 2, 2)], 1)

    data = SimpleNamespace(labeled=items[:2], val=items, class_names=names)
    report = analysis.class_report(Net(), data)
    assert report["labeled images with it"].tolist() == [2, 1, 1]
    assert report["most often mistaken for"].tolist() == ["1", "-", "1"]
    assert report["share of its pixels (%)"].tolist() == [100.0, 0.0, 100.0]
    assert report["found (%)"].tolist() == [0.0, 100.0, 0.0]
    pd.testing.assert_frame_equal(report, analysis.class_report(Net(), data, n=3))
    assert report.loc["1", "IoU (%)"] == round(100 * 4 / 12, 1) and report.loc["2", "IoU (%)"] == 0


def test_curve_trend_reads_the_last_quarter():
    """Rising, flat and falling curves by hand: the sentence names the start, the end and the gain
    since the first evaluation of the last quarter of training."""
    from types import SimpleNamespace

    def run(mious):
        curve = [{"iteration": 100 * (i + 1), "miou": m} for i, m in enumerate(mious)]
        return SimpleNamespace(metrics={"val_curve": curve}, out_dir=None)

    rising = analysis.curve_trend(run([0.5, 0.6, 0.65, 0.7, 0.72, 0.75, 0.78, 0.8, 0.82]))
    assert "50.0 % at iteration 100, 82.0 % at iteration 900" in rising
    assert "+4.0 points since iteration 700" in rising and "still rising" in rising
    assert "flat" in analysis.curve_trend(run([0.5, 0.7, 0.8, 0.8, 0.805]))
    assert "falling" in analysis.curve_trend(run([0.5, 0.7, 0.8, 0.78, 0.76]))
    assert "too rarely" in analysis.curve_trend(run([0.5]))
