"""Watching a run: evaluation during training (eval_every) and TensorBoard logging (tblog).

Neither may change what a run computes: the weights, optimizer state and RNG state of a run with
both on equal those of the same run with both off, bit for bit (CPU)."""

import dataclasses
import json
import shutil

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch

matplotlib.use("Agg")

from cpcl_kit.config import make_config  # noqa: E402
from cpcl_kit.data import palette
from cpcl_kit.data.digits import DIGIT_CLASS_NAMES  # noqa: E402
from cpcl_kit.engine import runs, tblog  # noqa: E402
from cpcl_kit.engine.train import run_or_load, train  # noqa: E402
from cpcl_kit.errors import KitError  # noqa: E402
from cpcl_kit.method import scenes
from cpcl_kit.method.cpcl import pseudo_supervision  # noqa: E402
from cpcl_kit.teach import plots

# The GPU machine may have no tensorboard (nothing is installed there): only the tests that read
# event files need it; without it the runs write none and the rest still holds.
needs_tb = pytest.mark.skipif(not tblog.available(), reason="needs the tensorboard package")

WATCHED = dict(eval_every=3, tensorboard=True, tb_image_every=6)
UNWATCHED = dict(eval_every=0, tensorboard=False)


def _events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    ea.Reload()
    return ea


def _state(folder) -> dict:
    return torch.load(folder / runs.CHECKPOINT, weights_only=True)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """The smoke CPCL run twice: watched (evaluations every 3 iterations, TensorBoard with images)
    and not watched."""
    base = tmp_path_factory.mktemp("watch")
    out = {}
    for name, over in (("on", WATCHED), ("off", UNWATCHED)):
        cfg = make_config("smoke", **over)
        out[name] = (train(cfg, out_dir=base / name, progress=False), base / name)
    return out


def test_watching_changes_no_weight_no_optimizer_state_and_no_rng_state(two_runs):
    (on, on_dir), (off, off_dir) = two_runs["on"], two_runs["off"]
    for a, b in zip(on.nets, off.nets):
        sa, sb = a.state_dict(), b.state_dict()  # parameters and BatchNorm buffers
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    s_on, s_off = _state(on_dir), _state(off_dir)
    assert torch.equal(s_on["rng_cpu"], s_off["rng_cpu"])
    for o1, o2 in zip(s_on["optimizers"], s_off["optimizers"]):
        for k, st in o1["state"].items():
            assert all(torch.equal(v, o2["state"][k][n]) for n, v in st.items() if torch.is_tensor(v))
    pd.testing.assert_frame_equal(on.history.drop(columns="seconds"), off.history.drop(columns="seconds"))
    assert on.metrics["miou"] == off.metrics["miou"]


def test_the_validation_curve_ends_with_the_reported_evaluation(two_runs):
    (on, on_dir), (off, off_dir) = two_runs["on"], two_runs["off"]
    curve = on.metrics["val_curve"]
    assert [r["iteration"] for r in curve] == [3, 6, 9, 12]
    assert curve[-1]["miou"] == on.metrics["miou"]  # the last point is the run's own evaluation
    best = max(curve, key=lambda r: r["miou"])
    assert on.metrics["best_on_val"] == {"miou": best["miou"], "iteration": best["iteration"],
                                         "note": "chosen on the validation set; the kit reports the last iteration"}
    assert runs.read_val_curve(on_dir).to_dict("records") == curve
    assert json.loads((on_dir / runs.METRICS).read_text())["val_curve"] == curve
    assert "val_curve" not in off.metrics and "best_on_val" not in off.metrics
    assert not (off_dir / runs.VAL_CURVE).exists() and not list(off_dir.glob("events.out.tfevents*"))


@needs_tb
def test_tensorboard_holds_the_history_and_the_evaluations(two_runs):
    on, on_dir = two_runs["on"]
    ea = _events(on_dir)
    names = on.history.columns
    tags = {tblog.scalar_tag(k, DIGIT_CLASS_NAMES): k for k in names}
    assert {"loss/loss", "schedule/lr", "schedule/lambda", "pseudo_labels/agreement"} <= set(ea.Tags()["scalars"])
    for tag, col in tags.items():
        if tag is None:
            continue
        rows = on.history.dropna(subset=[col])
        got = [(e.step, e.value) for e in ea.Scalars(tag)]
        assert got == [(int(i), float(np.float32(v))) for i, v in zip(rows["iteration"], rows[col])], tag
    val = [(e.step, e.value) for e in ea.Scalars("val/miou")]
    assert val == [(r["iteration"], float(np.float32(r["miou"]))) for r in on.metrics["val_curve"]]


@needs_tb
def test_the_pseudo_label_image_is_the_kits_panels_of_fixed_scenes(two_runs):
    from cpcl_kit.data import build_data
    from cpcl_kit.method.scenes import pseudo_labels_on_scenes
    from PIL import Image
    import io

    on, on_dir = two_runs["on"]
    images = _events(on_dir).Images("pseudo_labels")
    assert [i.step for i in images] == [6, 12]
    got = np.asarray(Image.open(io.BytesIO(images[-1].encoded_image_string)).convert("RGB"), dtype=float)
    # the final nets are the nets of iteration 12
    x, m, labels = pseudo_labels_on_scenes(on.nets, build_data(on.config), on.config, n=tblog.SCENES, seed=0)
    want = scenes.pseudo_label_panels(x, m, labels, on.config.num_classes) * 255
    assert got.shape == want.shape and np.abs(got - want).max() <= 1.0


@needs_tb
def test_the_pseudo_label_image_of_a_small_folder_changes_nothing(tmp_path):
    """A folder with two unlabeled images gives CutMix one scene: the image is drawn from two (one
    image cannot pass train-mode BatchNorm's image pooling), and the nets' weights, BatchNorm
    statistics and modes and torch's random state are as they were."""
    import copy

    from folder_tree import make_tree

    from cpcl_kit.data import build_data
    from cpcl_kit.engine.trainer import nets_for

    root = make_tree(tmp_path / "t", n=6, masked=4)  # 1 held out for validation, 3 labeled, 2 unlabeled
    cfg = make_config("smoke", dataset="folder", data_root=str(root), backbone_weights="none")
    data = build_data(cfg)
    assert len(data.unlabeled) == 2 and cfg.cutmix_boxes > 0 and cfg.teacher_bn == "train"
    torch.manual_seed(0)
    nets = nets_for(cfg)
    nets[1].eval()  # one of each mode, both kept
    weights = [copy.deepcopy(n.state_dict()) for n in nets]
    rng = torch.get_rng_state()
    board = tblog.Board(cfg, tmp_path / "run", 0, data.class_names)
    board.pseudo_labels(cfg.iterations, nets, data)
    board.close()
    assert torch.equal(torch.get_rng_state(), rng)
    assert [n.training for n in nets] == [True, False]
    for net, before in zip(nets, weights):
        after = net.state_dict()
        assert all(torch.equal(after[k], before[k]) for k in before)
    (image,) = _events(tmp_path / "run").Images("pseudo_labels")
    assert image.step == cfg.iterations and image.height > 0


def test_a_resumed_run_continues_the_same_curves(tmp_path):
    """An attempt killed after its checkpoint at 6 had logged (and evaluated) up to 12: resumed
    from 6, TensorBoard and the validation curve hold each iteration once, with the resumed values."""
    cfg = make_config("smoke", eval_every=3, tb_image_every=0)
    run = tmp_path / "run"
    train(cfg, out_dir=run, progress=False, stop_at=6)
    kept = tmp_path / "checkpoint-at-6.pt"
    shutil.copyfile(run / runs.CHECKPOINT, kept)
    assert [r["iteration"] for r in _state(run)["val_curve"]] == [3, 6]
    train(cfg, out_dir=run, resume=True, progress=False)
    shutil.copyfile(kept, run / runs.CHECKPOINT)  # back to the checkpoint, as if killed after 12
    (run / runs.METRICS).unlink()
    res = train(cfg, out_dir=run, resume=True, progress=False)
    straight = train(cfg, out_dir=tmp_path / "straight", progress=False)
    assert res.metrics["val_curve"] == straight.metrics["val_curve"]
    assert res.metrics["miou"] == straight.metrics["miou"]
    if not tblog.available():
        return
    ea = _events(run)
    for tag in ("loss/loss", "val/miou", "schedule/lr"):
        steps = [e.step for e in ea.Scalars(tag)]
        assert steps == sorted(set(steps)), tag
    assert [(e.step, e.value) for e in ea.Scalars("loss/loss")] == \
        [(e.step, e.value) for e in _events(tmp_path / "straight").Scalars("loss/loss")]


def test_changing_only_what_is_watched_reuses_a_finished_run(two_runs, monkeypatch):
    """eval_every, tensorboard and tb_image_every are bookkeeping: the same run, the same folder
    name; a finished run is loaded as it is (its curve is the one it was trained with)."""
    off, off_dir = two_runs["off"]
    monkeypatch.setattr("cpcl_kit.engine.train.train", lambda *a, **k: pytest.fail("trained again"))
    cfg = dataclasses.replace(off.config, **WATCHED)
    assert runs.run_dir_name(cfg) == runs.run_dir_name(off.config)
    loaded = run_or_load(cfg, off_dir, progress=False, nets=False)
    assert loaded.metrics == off.metrics
    # the committed noise table of the benchmark preset still holds for it
    from cpcl_kit.experiments import noise

    assert noise.for_preset("benchmark") is not None
    assert make_config("benchmark").eval_every > 0


def test_best_on_val_takes_the_earliest_of_equal_bests():
    curve = [{"iteration": 2, "miou": 0.5}, {"iteration": 4, "miou": 0.7}, {"iteration": 6, "miou": 0.7},
             {"iteration": 8, "miou": 0.6}]
    assert runs.best_on_val(curve)["iteration"] == 4 and runs.best_on_val(curve)["miou"] == 0.7
    assert runs.best_on_val([]) is None


def test_eval_curve_marks_the_last_and_the_best_point():
    fig = plots.eval_curve(pd.DataFrame({"iteration": [300, 600, 900], "miou": [0.40, 0.55, 0.50]}))
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any("last iteration (reported): 50.0" in t for t in texts)
    assert any("chosen on the validation set: 55.0 (iteration 600)" in t for t in texts)
    empty = plots.eval_curve([])
    assert "no validation evaluation" in empty.axes[0].texts[0].get_text()
    # the last point is the best: one marker that says so, not a star hiding a square
    fig = plots.eval_curve(pd.DataFrame({"iteration": [300, 600], "miou": [0.40, 0.55]}))
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert texts == ["validation mIoU", "last iteration (reported), also the best: 55.0"]


def test_eval_curve_of_a_run_without_evaluations_shows_its_last_iteration(two_runs):
    off, off_dir = two_runs["off"]
    for run in (off, off_dir):
        texts = [t.get_text() for t in plots.eval_curve(run).axes[0].get_legend().get_texts()]
        assert texts == ["validation mIoU", f"last iteration (reported): {100 * off.metrics['miou']:.1f}"]
    on, on_dir = two_runs["on"]
    pd.testing.assert_frame_equal(plots._val_curve_table(on), plots._val_curve_table(on_dir))


def test_pseudo_label_panels_are_the_class_colours_and_weights():
    g = torch.Generator().manual_seed(0)
    labels = pseudo_supervision(torch.randn(2, 5, 8, 8, generator=g), torch.randn(2, 5, 8, 8, generator=g))
    images, masks = torch.rand(2, 3, 8, 8, generator=g), torch.randint(0, 5, (2, 8, 8), generator=g)
    grid = scenes.pseudo_label_panels(images, masks, labels, 5, gap=2)
    assert grid.shape == (2 * 8 + 2, 8 * 8 + 7 * 2, 3)
    pal = palette.class_palette(5)
    tile = lambda row, col: grid[row * 10: row * 10 + 8, col * 10: col * 10 + 8]  # noqa: E731
    assert np.allclose(tile(1, 2), pal[labels.y1[1].numpy()])       # net 1's label
    assert np.allclose(tile(0, 4), pal[labels.inter[0].numpy()])    # the intersection, grey off it
    viridis = matplotlib.colormaps["viridis"]
    assert np.allclose(tile(0, 7), viridis(labels.w_union[0].numpy())[..., :3], atol=1e-6)


@needs_tb
def test_no_board_without_the_package_or_the_setting(monkeypatch, tmp_path):
    cfg = make_config("smoke")
    assert tblog.open_board(cfg, tmp_path, 0, ["a"]).enabled
    assert not tblog.open_board(cfg, tmp_path, 0, ["a"], main=False).enabled  # rank > 0
    assert not tblog.open_board(dataclasses.replace(cfg, tensorboard=False), tmp_path, 0, ["a"]).enabled
    monkeypatch.setattr(tblog, "available", lambda: False)
    assert not tblog.open_board(cfg, tmp_path, 0, ["a"]).enabled


@pytest.mark.parametrize("key", ["eval_every", "tb_image_every"])
def test_a_negative_interval_is_refused(key, capsys):
    with pytest.raises(KitError, match=rf"{key}: expected 0 \(off\) or a number of iterations, got -1"):
        make_config("smoke", **{key: -1})
    from cpcl_kit.cli import main

    assert main(["train", "--out", "x", "--set", f"{key}=-1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{key}: expected 0" in err
